"""The PostgreSQL audit writer: one chain per writer, one transaction per batch.

A writer registers a chain of its own when it opens (an entry in the hash-chained, MAC'd
``chain_registry``) and from then on appends only to that chain: the only row it locks per
batch is its own chain head, so writers on several replicas never wait for each other.
Records get a global ``id`` (their place in queries and exports) from a sequence before they
are hashed; the link binds chain, place in the chain and global id. Revocation rows are the
one exception to "never wait": their ids must be in commit order (``revocations_after``), so
a batch that carries a revocation takes an advisory lock for its last statements.

One thread uses a writer (``PostgresAuditLog`` runs it); nothing here is thread-safe.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from sqlalchemy import (
    Connection,
    Engine,
    Table,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError

from deputy.audit.chain import GENESIS_HASH, canonical_json, record_body
from deputy.audit.record import DecisionRecord, tools_of
from deputy.clock import Clock, SystemClock
from deputy.errors import CommitOutcomeUnknown, StoreUnavailable
from deputy.store.postgres.chains import (
    CHECKPOINT,
    REGISTER,
    RETIRE,
    Head,
    record_link,
    registry_link,
)
from deputy.store.postgres.connect import (
    UNAVAILABLE,
    Timeouts,
    Watchdog,
    driver_connection,
    make_engine,
)
from deputy.store.postgres.schema import SchemaOutOfDate, check_schema
from deputy.store.postgres.tables import (
    chain_anchors,
    chain_heads,
    chain_registry,
    chain_registry_head,
    credentials,
    record_tools,
    records,
    revocations,
    stored_text,
    uses,
)

MIN_KEY_BYTES = 16
REVOCATION_LOCK = 0x6465707574790001  # pg_advisory_xact_lock key: revocation ids in commit order
_RETRY_WITHIN_SECONDS = 1.0  # a stale connection fails at once; a hung server does not

_log = logging.getLogger(__name__)

_LOCK_HEAD_AND_TAKE_IDS = text(
    "SELECT h.seq, h.hash, h.mac,"
    " ARRAY(SELECT nextval(pg_get_serial_sequence('records', 'id'))"
    " FROM generate_series(1, :n)) AS ids"
    " FROM chain_heads h WHERE h.chain = :chain FOR UPDATE OF h"
)
# The heads no registry entry has witnessed at their current seq yet.
_UNANCHORED_HEADS = text(
    "SELECT h.chain, h.seq, h.hash FROM chain_heads h"
    " LEFT JOIN LATERAL (SELECT a.seq FROM chain_anchors a WHERE a.chain = h.chain"
    " ORDER BY a.registry_seq DESC LIMIT 1) last ON true"
    " WHERE last.seq IS DISTINCT FROM h.seq ORDER BY h.chain"
)


class HeadInvalid(StoreUnavailable):
    """A chain head (or the registry head) is missing or forged; appending would hide it."""


class _CommitInDoubt(Exception):
    """The connection went away while COMMIT was under way."""


@dataclass(slots=True)
class _Prepared:
    """One record made ready to write: everything but its chain place, id and hash."""

    decision_id: str
    body: bytes
    columns: dict[str, Any]
    credentials: list[dict[str, Any]] = field(default_factory=list)
    revocation: dict[str, Any] | None = None
    uses: list[dict[str, Any]] = field(default_factory=list)
    tools: list[str] = field(default_factory=list)


def _text_or_none(value: Any, name: str) -> Any:
    if value is None or isinstance(value, str):
        return stored_text(value)
    raise TypeError(f"{name} must be text")


def _integer(value: Any, name: str) -> int:
    if type(value) is not int:
        raise TypeError(f"{name} must be an integer")
    return value


def _number(value: Any, name: str) -> float:
    if type(value) not in (int, float):
        raise TypeError(f"{name} must be a number")
    return float(value)


def prepare(record: DecisionRecord, logged_at: float) -> _Prepared:
    """Serialise ``record`` and derive its rows; raises (for this record alone) if it cannot be.

    Values must have the types their columns hold: what PostgreSQL would convert on the way
    in (a float into an integer column) would no longer match the hashed body.
    """
    body = record_body(record, logged_at)
    columns = {
        "decision_id": _text_or_none(record.decision_id, "decision_id"),
        "time": _number(record.time, "time"),
        "outcome": _text_or_none(record.outcome, "outcome"),
        "execution_id": _text_or_none(record.execution_id, "execution_id"),
        "agent_instance": _text_or_none(record.agent_instance, "agent_instance"),
        "workload_id": _text_or_none(record.workload_id, "workload_id"),
        "user_id": _text_or_none(record.user_id, "user_id"),
    }
    if columns["decision_id"] is None or columns["outcome"] is None:
        raise TypeError("decision_id and outcome are required")
    prepared = _Prepared(record.decision_id, body, columns)
    issuer = _text_or_none(record.user_issuer, "user_issuer")
    workflow = _text_or_none(record.workflow, "workflow")
    for c in record.credentials:
        prepared.credentials.append(
            {
                "jti": _text_or_none(c.jti, "jti"),
                "user_issuer": issuer,
                "user_id": columns["user_id"],
                "category": _text_or_none(c.category, "category"),
                "tool": _text_or_none(c.tool, "tool"),
                "expires_at": _integer(c.expires_at, "expires_at"),
                "issued_at": columns["time"],
                "workflow": workflow,
                "scope": _text_or_none(c.scope, "scope"),
            }
        )
    if record.revocation is not None:
        r = record.revocation
        prepared.revocation = {
            "selector": _text_or_none(r["selector"], "selector"),
            "value": _text_or_none(r["value"], "value"),
            "issued_before": _integer(r["issued_before"], "issued_before"),
            "expires_at": _integer(r["expires_at"], "expires_at"),
        }
    reporter = _text_or_none(record.requested_by, "requested_by")
    for u in record.uses:
        prepared.uses.append(
            {
                "jti": _text_or_none(u["jti"], "use jti"),
                "operation": _text_or_none(u["operation"], "operation"),
                "outcome": _integer(u["outcome"], "use outcome"),
                "time": _number(u["time"], "use time"),
                "reported_by": reporter,
            }
        )
    tools = tools_of(
        {
            "tools_requested": record.tools_requested,
            "credentials": [{"tool": c.tool} for c in record.credentials],
            "uses": list(record.uses),
        }
    )
    prepared.tools = sorted(stored_text(tool) for tool in tools)
    return prepared


class PostgresAuditWriter:
    """Appends batches to this writer's chain; registers, checkpoints and retires the chain."""

    def __init__(
        self,
        url: str | URL,
        head_key: bytes,
        *,
        clock: Clock | None = None,
        timeouts: Timeouts | None = None,
        watchdog: Watchdog | None = None,
        checkpoint_seconds: float = 30.0,
        application_name: str = "deputy audit writer",
    ) -> None:
        if len(head_key) < MIN_KEY_BYTES:
            raise ValueError(f"audit head key must be at least {MIN_KEY_BYTES} bytes")
        self._key = head_key
        self._clock: Clock = clock or SystemClock()
        self._timeouts = timeouts or Timeouts()
        self._engine: Engine = make_engine(
            url, self._timeouts, application_name=application_name, pooled=False
        )
        self._own_watchdog = watchdog is None
        self._watchdog = watchdog or Watchdog()
        self._checkpoint_seconds = checkpoint_seconds
        self._conn: Connection | None = None
        self.chain: int | None = None
        self.seq = 0  # this chain's last committed seq, as far as this writer knows
        self._checkpointed = 0
        self._last_checkpoint = time.monotonic()
        self._retired = False
        self._stage = "idle"
        self._ids: list[int] = []
        self._pending_seq = 0
        self.commits = 0

    # -- connection ---------------------------------------------------------------------

    def _connection(self) -> tuple[Connection, bool]:
        if self._conn is not None and not self._conn.invalidated:
            return self._conn, False
        self._discard()
        self._conn = self._engine.connect()
        return self._conn, True

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()
                conn.close()
            except Exception as exc:  # a broken connection may fail to close; it is gone anyway
                _log.debug("discarding a PostgreSQL connection failed: %s", exc)

    def close(self) -> None:
        self._discard()
        self._engine.dispose()
        if self._own_watchdog:
            self._watchdog.close()

    def _run(self, work: Any, *, retry_stale: bool = True) -> Any:
        """``work(conn)`` in one transaction under the watchdog; a stale connection (closed by a
        PostgreSQL restart, found so at once) is replaced and the work tried once more."""
        for attempt in (0, 1):
            conn, fresh = self._connection()
            started = time.monotonic()
            self._stage = "statements"
            try:
                with (
                    self._watchdog.guard(driver_connection(conn), self._timeouts.call),
                    conn.begin(),
                ):
                    result = work(conn)
                    self._stage = "commit"  # the transaction commits as the block ends
                return result
            except DBAPIError as exc:
                disconnect = _is_disconnect(exc, conn)
                if self._stage == "commit" and disconnect:
                    self._discard()
                    raise _CommitInDoubt() from exc
                if not isinstance(exc, IntegrityError | DataError):
                    self._discard()  # a broken connection may stay broken: the next is new
                quick = time.monotonic() - started < _RETRY_WITHIN_SECONDS
                if retry_stale and attempt == 0 and not fresh and disconnect and quick:
                    _log.info("PostgreSQL connection was closed; reconnecting")
                    continue
                raise
            except SQLAlchemyError:
                self._discard()
                raise
            finally:
                self._stage = "idle"
        raise AssertionError("unreachable")

    # -- the chain ----------------------------------------------------------------------

    def open(self) -> int:
        """Check the schema and register this writer's chain (once); returns the chain."""
        if self.chain is not None:
            return self.chain
        try:
            self.chain = self._run(self._register)
        except (SchemaOutOfDate, HeadInvalid):
            raise
        except (SQLAlchemyError, _CommitInDoubt) as exc:
            # In doubt: a chain may have been registered that this writer will never use;
            # verify accepts a registered chain with no records.
            raise _unavailable(exc) from exc
        self.seq = self._checkpointed = 0
        self._last_checkpoint = time.monotonic()
        _log.info("audit chain %s registered", self.chain)
        return self.chain

    def _register(self, conn: Connection) -> int:
        check_schema(conn)
        seq, prev = self._lock_registry(conn)
        chain = seq + 1
        anchors = self._unanchored(conn)
        head = Head.sign(self._key, chain, 0, GENESIS_HASH)
        conn.execute(
            insert(chain_heads).values(chain=chain, seq=head.seq, hash=head.hash, mac=head.mac)
        )
        self._append_registry(
            conn,
            seq + 1,
            prev,
            REGISTER,
            chain,
            anchors,
            host=socket.gethostname(),
            pid=os.getpid(),
            nonce=secrets.token_hex(8),
        )
        return chain

    def _lock_registry(self, conn: Connection) -> tuple[int, str]:
        row = conn.execute(
            select(chain_registry_head.c.seq, chain_registry_head.c.hash, chain_registry_head.c.mac)
            .where(chain_registry_head.c.id == 1)
            .with_for_update()
        ).first()
        if row is None:
            raise HeadInvalid("audit chain registry head is missing; run verify")
        if row.seq is None:
            if conn.execute(select(chain_registry.c.seq).limit(1)).first() is not None:
                raise HeadInvalid("audit chain registry head is missing; run verify")
            return 0, GENESIS_HASH
        head = Head(None, row.seq, row.hash, row.mac)
        if not head.is_authentic(self._key):
            raise HeadInvalid("audit chain registry head does not verify; run verify")
        return head.seq, head.hash

    def _unanchored(self, conn: Connection) -> list[list[Any]]:
        return [[c, s, h] for c, s, h in conn.execute(_UNANCHORED_HEADS)]

    def _append_registry(
        self,
        conn: Connection,
        seq: int,
        prev: str,
        event: str,
        chain: int,
        anchors: list[list[Any]],
        **extra: Any,
    ) -> None:
        now = self._clock.now()
        body = canonical_json(
            {"event": event, "chain": chain, "time": now, "anchors": anchors, **extra}
        )
        hash_ = registry_link(seq, prev, body)
        conn.execute(
            insert(chain_registry).values(
                seq=seq,
                event=event,
                chain=chain,
                time=now,
                body=body.decode("ascii"),
                prev_hash=prev,
                hash=hash_,
            )
        )
        if anchors:
            conn.execute(
                insert(chain_anchors),
                [{"registry_seq": seq, "chain": c, "seq": s, "hash": h} for c, s, h in anchors],
            )
        head = Head.sign(self._key, None, seq, hash_)
        conn.execute(
            update(chain_registry_head)
            .where(chain_registry_head.c.id == 1)
            .values(seq=head.seq, hash=head.hash, mac=head.mac)
        )

    def checkpoint_in(self) -> float | None:
        """Seconds until a checkpoint is due (None: nothing new to witness)."""
        if self.chain is None or self._retired or self.seq == self._checkpointed:
            return None
        return max(0.0, self._last_checkpoint + self._checkpoint_seconds - time.monotonic())

    def checkpoint(self) -> bool:
        """Witness every chain head that moved since it was last witnessed, in the registry.

        The registry head is the one row writers share, taken only here, at registration
        and at retirement: never per batch. Returns whether an entry was written.
        """
        if self.chain is None or self._retired:
            return False
        chain, seq = self.chain, self.seq

        def work(conn: Connection) -> bool:
            reg_seq, prev = self._lock_registry(conn)
            anchors = self._unanchored(conn)
            if not anchors:
                return False
            self._append_registry(conn, reg_seq + 1, prev, CHECKPOINT, chain, anchors)
            return True

        self._last_checkpoint = time.monotonic()
        try:
            written = bool(self._run(work))
        except (SQLAlchemyError, _CommitInDoubt, StoreUnavailable) as exc:
            _log.warning("audit checkpoint failed: %s", exc)
            return False
        self._checkpointed = seq
        return written

    def retire(self) -> bool:
        """Close this chain for good: the registry records its last record."""
        if self.chain is None or self._retired:
            return False
        chain = self.chain

        def work(conn: Connection) -> None:
            reg_seq, prev = self._lock_registry(conn)
            head = self._own_head(conn)
            anchors = [a for a in self._unanchored(conn) if a[0] != chain]
            anchors.append([chain, head.seq, head.hash])
            anchors.sort()
            self._append_registry(conn, reg_seq + 1, prev, RETIRE, chain, anchors)

        try:
            self._run(work)
        except (SQLAlchemyError, _CommitInDoubt, StoreUnavailable) as exc:
            _log.warning("audit chain %s could not be retired: %s", chain, exc)
            return False
        self._retired = True
        return True

    def _own_head(self, conn: Connection, *, ids: int = 0) -> Head:
        row = conn.execute(_LOCK_HEAD_AND_TAKE_IDS, {"chain": self.chain, "n": ids}).first()
        if row is None:
            raise HeadInvalid("audit chain head is missing; run verify")
        head = Head(self.chain, row.seq, row.hash, row.mac)
        if not head.is_authentic(self._key):
            raise HeadInvalid("audit chain head does not verify; run verify")
        self._ids = sorted(row.ids)
        return head

    # -- appending ----------------------------------------------------------------------

    def write(self, batch: Sequence[DecisionRecord]) -> list[BaseException | None]:
        """Commit ``batch`` in one transaction; per record, ``None`` or why it was not.

        A record that cannot be serialised fails alone; so does one the database refuses
        (a duplicate decision id or jti): the rest are written one by one.
        """
        results: list[BaseException | None] = [None] * len(batch)
        logged_at = self._clock.now()
        ready: list[tuple[int, _Prepared]] = []
        for index, record in enumerate(batch):
            try:
                ready.append((index, prepare(record, logged_at)))
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                results[index] = exc if isinstance(exc, TypeError | ValueError) else TypeError(exc)
        if not ready:
            return results
        if self._retired:
            error = StoreUnavailable(UNAVAILABLE)
            for index, _ in ready:
                results[index] = error
            return results
        try:
            self.open()
        except Exception as exc:
            for index, _ in ready:
                results[index] = _unavailable(exc)
            return results
        outcomes = self._write([item for _, item in ready])
        for (index, _), outcome in zip(ready, outcomes, strict=True):
            results[index] = outcome
        return results

    def _write(self, items: list[_Prepared]) -> list[BaseException | None]:
        try:
            self._run(lambda conn: self._insert(conn, items))
        except (IntegrityError, DataError) as exc:
            if len(items) > 1:
                return [self._write([item])[0] for item in items]
            return [_unavailable(exc)]
        except _CommitInDoubt as exc:
            return self._settle_in_doubt(items, exc)
        except Exception as exc:  # the writer must outlive any one failed batch
            return [_unavailable(exc) for _ in items]
        self.commits += 1
        self.seq = self._pending_seq
        return [None] * len(items)

    def _insert(self, conn: Connection, items: list[_Prepared]) -> None:
        assert self.chain is not None
        chain = self.chain
        head = self._own_head(conn, ids=len(items))
        seq, prev = head.seq, head.hash
        record_rows: list[dict[str, Any]] = []
        credential_rows: list[dict[str, Any]] = []
        revocation_rows: list[dict[str, Any]] = []
        use_rows: list[dict[str, Any]] = []
        tool_rows: list[dict[str, Any]] = []
        for item, record_id in zip(items, self._ids, strict=True):
            seq += 1
            hash_ = record_link(chain, seq, record_id, prev, item.body)
            record_rows.append(
                {
                    "id": record_id,
                    "chain": chain,
                    "chain_seq": seq,
                    **item.columns,
                    "body": item.body.decode("ascii"),
                    "prev_hash": prev,
                    "hash": hash_,
                }
            )
            prev = hash_
            credential_rows += ({"record_id": record_id, **c} for c in item.credentials)
            if item.revocation is not None:
                revocation_rows.append({"record_id": record_id, **item.revocation})
            use_rows += ({"record_id": record_id, **u} for u in item.uses)
            tool_rows += ({"record_id": record_id, "tool": t} for t in item.tools)
        _insert_rows(conn, records, record_rows)
        _insert_rows(conn, credentials, credential_rows)
        _insert_rows(conn, uses, use_rows)
        _insert_rows(conn, record_tools, tool_rows)
        if revocation_rows:
            # Held to commit: revocation ids are taken (and made visible) in commit order.
            conn.execute(select(func.pg_advisory_xact_lock(REVOCATION_LOCK)))
            _insert_rows(conn, revocations, revocation_rows)
        new_head = Head.sign(self._key, chain, seq, prev)
        conn.execute(
            update(chain_heads)
            .where(chain_heads.c.chain == chain)
            .values(seq=new_head.seq, hash=new_head.hash, mac=new_head.mac)
        )
        self._pending_seq = seq

    def _settle_in_doubt(
        self, items: list[_Prepared], cause: BaseException
    ) -> list[BaseException | None]:
        """The connection broke during COMMIT: the batch is in the log, or not, as a whole.

        Found on a new connection: committed. Not found (or no answer): the commit may yet
        land (a backend still finishing it), so the outcome stays unknown.
        """
        try:
            found = self._run(
                lambda conn: conn.execute(
                    select(func.count())
                    .select_from(records)
                    .where(records.c.decision_id.in_([stored_text(i.decision_id) for i in items]))
                ).scalar_one(),
                retry_stale=False,
            )
        except Exception as exc:
            _log.warning("audit commit outcome unknown: %s", exc)
            found = None
        if found == len(items):
            self.commits += 1
            self.seq = self._pending_seq
            return [None] * len(items)
        _log.warning("audit commit outcome unknown (%s)", cause.__cause__ or cause)
        error = CommitOutcomeUnknown(UNAVAILABLE)
        error.__cause__ = cause.__cause__ or cause
        return [error] * len(items)


def _insert_rows(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """All ``rows`` with one COPY, in the transaction of ``conn``.

    The cheapest way in for both sides: executemany would have the server run a statement
    per row, and a multi-row INSERT costs the client a parse (and SQLAlchemy a compile) of a
    statement as long as the batch. Column names come from the table's metadata; values
    travel as data, never as SQL. Driver errors are raised as SQLAlchemy's, like any other.
    """
    if not rows:
        return
    names = tuple(rows[0])
    statement = _copy_statement(table, names)
    try:
        with driver_connection(conn).cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(tuple(row[name] for name in names))
    except psycopg.Error as exc:
        raise DBAPIError.instance(statement, None, exc, psycopg.Error) from exc


def _copy_statement(table: Table, names: tuple[str, ...]) -> str:
    columns = ", ".join(f'"{table.columns[name].name}"' for name in names)  # KeyError: no column
    return f'COPY "{table.name}" ({columns}) FROM STDIN'


def _is_disconnect(exc: DBAPIError, conn: Connection) -> bool:
    if exc.connection_invalidated or conn.invalidated:
        return True
    try:
        raw = driver_connection(conn)
    except Exception:
        return True
    return bool(getattr(raw, "closed", False) or getattr(raw, "broken", False))


def _unavailable(cause: BaseException) -> StoreUnavailable:
    error = StoreUnavailable(UNAVAILABLE)
    _log.warning("audit append failed: %s", cause)
    error.__cause__ = cause
    return error
