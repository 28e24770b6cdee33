"""Reading the PostgreSQL audit: forensic queries, exports, verification, the ledger.

Implements ``AuditReader`` and ``Ledger`` (``audit/log.py``) over a small pool of
connections that are pinged before use, so a PostgreSQL restart costs no failed call once
the server is back. Lookups on the request path (the ledger) are bounded by the short
timeouts and the watchdog; reports (queries, exports, verify) by the report timeout.
A ``seq`` here is a record's global id: its place in queries, pages and exports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    and_,
    exists,
    func,
    literal,
    or_,
    select,
    text,
)
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from deputy.audit.chain import GENESIS_HASH
from deputy.audit.log import AuditFilter, ChainReport, LedgerEntry, LiveCredentials
from deputy.audit.record import StoredRecord
from deputy.audit.revocation import Revocation
from deputy.errors import StoreUnavailable
from deputy.store.postgres.connect import (
    UNAVAILABLE,
    Timeouts,
    Watchdog,
    driver_connection,
    make_engine,
)
from deputy.store.postgres.schema import check_schema
from deputy.store.postgres.tables import (
    EQUALITY_FILTERS,
    chain_anchors,
    chain_heads,
    chain_registry,
    chain_registry_head,
    credentials,
    record_tools,
    records,
    revocations,
    stored_text,
    text_value,
    uses,
)
from deputy.store.postgres.verify import AuditVerifier

_T = TypeVar("_T")
_LAST_CHAR = "\U0010ffff"  # sorts after any character in byte order (collation "C")
_RECORD_SELECTORS = frozenset(EQUALITY_FILTERS)
_FETCH = 1000  # rows per round trip of a streamed read


def select_records(audit_filter: AuditFilter) -> Select[Any]:
    """The statement that selects a filter's records by global id (or newest first).

    Every equality index is ``(column, id)`` and the tool index ``(tool, record_id)``, so the
    one that leads lists its records in id order and a page needs no sort. A tool leads
    (through a join) only when nothing narrower is given; otherwise it is checked per record.
    """
    r = records
    clauses: list[ColumnElement[bool]] = []
    for column in EQUALITY_FILTERS:
        value = getattr(audit_filter, column)
        if value is not None:
            clauses.append(r.c[column] == stored_text(value))
    if audit_filter.jti is not None:
        clauses.append(
            r.c.id.in_(
                select(credentials.c.record_id).where(
                    credentials.c.jti == stored_text(audit_filter.jti)
                )
            )
        )
    if audit_filter.workload_prefix:
        prefix = stored_text(audit_filter.workload_prefix)
        clauses += [r.c.workload_id >= prefix, r.c.workload_id < prefix + _LAST_CHAR]
    order: Any = r.c.id
    source: Any = r
    if audit_filter.tool is not None:
        tool = stored_text(audit_filter.tool)
        if clauses:
            clauses.append(
                exists().where(record_tools.c.tool == tool, record_tools.c.record_id == r.c.id)
            )
        else:
            source = record_tools.join(r, record_tools.c.record_id == r.c.id)
            clauses.append(record_tools.c.tool == tool)
            order = record_tools.c.record_id
    if audit_filter.outcome is not None:
        clauses.append(r.c.outcome == stored_text(audit_filter.outcome))
    if audit_filter.since is not None:
        clauses.append(r.c.time >= audit_filter.since)
    if audit_filter.before_seq is not None:
        clauses.append(order < audit_filter.before_seq)
    statement = (
        select(r.c.id, r.c.body, r.c.prev_hash, r.c.hash)
        .select_from(source)
        .where(*clauses)
        .order_by(order.desc() if audit_filter.newest_first else order)
        .limit(max(audit_filter.limit, 0))
    )
    return statement


def select_export(since: float | None, until: float | None) -> Select[Any]:
    clauses: list[ColumnElement[bool]] = []
    if since is not None:
        clauses.append(records.c.time >= since)
    if until is not None:
        clauses.append(records.c.time < until)
    return (
        select(
            records.c.id,
            records.c.body,
            records.c.prev_hash,
            records.c.hash,
            records.c.chain,
            records.c.chain_seq,
        )
        .where(*clauses)
        .order_by(records.c.id)
    )


def _stored(row: Any) -> StoredRecord:
    return StoredRecord(seq=row[0], record=json.loads(row[1]), prev_hash=row[2], hash=row[3])


def _exported(row: Any) -> StoredRecord:
    """A record with its chain and place in it, which a line re-verified offline needs."""
    return StoredRecord(
        seq=row[0],
        record=json.loads(row[1]),
        prev_hash=row[2],
        hash=row[3],
        chain=row[4],
        chain_seq=row[5],
    )


class PostgresAuditReader:
    """Read access to the audit tables; safe to use from several threads at once."""

    def __init__(
        self,
        url: str | URL,
        head_key: bytes,
        *,
        timeouts: Timeouts | None = None,
        watchdog: Watchdog | None = None,
        pool_size: int = 4,
        application_name: str = "deputy audit reader",
    ) -> None:
        self._key = head_key
        self._timeouts = timeouts or Timeouts()
        self._engine: Engine = make_engine(
            url, self._timeouts, application_name=application_name, pool_size=pool_size
        )
        self._own_watchdog = watchdog is None
        self._watchdog = watchdog or Watchdog("deputy-pg-reader-watchdog")
        self._closed = False

    def close(self) -> None:
        """Release the pool; a later call raises ``StoreUnavailable`` (a disposed engine would
        quietly open a new pool that nothing closes)."""
        self._closed = True
        self._engine.dispose()
        if self._own_watchdog:
            self._watchdog.close()

    def __enter__(self) -> PostgresAuditReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Connection]:
        """A pooled connection that answered a ping within the call timeout.

        The ping runs under the watchdog (a pool's own pre-ping could wait for ever on a
        server that stopped answering); a connection a PostgreSQL restart closed fails it
        at once, which invalidates the pool, and the next connection is a new one.
        """
        if self._closed:
            raise StoreUnavailable(f"{UNAVAILABLE}: the reader is closed")
        for attempt in (0, 1):
            conn = self._engine.connect()
            started = time.monotonic()
            try:
                with self._watchdog.guard(driver_connection(conn), self._timeouts.call):
                    conn.exec_driver_sql("SELECT 1")
                    conn.rollback()
            except DBAPIError as exc:
                conn.close()
                quick = time.monotonic() - started < self._timeouts.call / 2
                if attempt == 0 and exc.connection_invalidated and quick:
                    continue
                raise
            break
        try:
            yield conn
        finally:
            conn.close()

    def _lookup(self, work: Callable[[Connection], _T]) -> _T:
        """A short call on the request path: short timeouts, cut by the watchdog."""
        try:
            with self._connect() as conn:
                with self._watchdog.guard(driver_connection(conn), self._timeouts.call):
                    result = work(conn)
                conn.rollback()
                return result
        except SQLAlchemyError as exc:
            raise StoreUnavailable(UNAVAILABLE) from exc

    @contextlib.contextmanager
    def _report(self, *, snapshot: bool = False) -> Iterator[Connection]:
        """A connection for a long read: the report timeout, one snapshot if asked."""
        try:
            with self._connect() as conn:
                if snapshot:
                    conn = conn.execution_options(
                        isolation_level="REPEATABLE READ", postgresql_readonly=True
                    )
                with conn.begin():
                    ms = int(self._timeouts.report * 1000)
                    conn.execute(text(f"SET LOCAL statement_timeout = {ms}"))
                    yield conn
        except SQLAlchemyError as exc:
            raise StoreUnavailable(UNAVAILABLE) from exc

    def _report_rows(self, statement: Any) -> list[Any]:
        with (
            self._report() as conn,
            self._watchdog.guard(driver_connection(conn), self._timeouts.report),
        ):
            return list(conn.execute(statement))

    def check_schema(self) -> None:
        """Raise ``SchemaOutOfDate`` (naming ``deputy db upgrade``) unless at the head revision."""
        self._lookup(check_schema)

    # -- AuditReader --------------------------------------------------------------------

    def query(self, audit_filter: AuditFilter) -> Iterator[StoredRecord]:
        """Records matching the filter, by global id (``newest_first``: descending)."""
        rows = self._report_rows(select_records(audit_filter))
        for row in rows:
            yield _stored(row)

    def export(
        self, since: float | None = None, until: float | None = None
    ) -> Iterator[StoredRecord]:
        """Every record with ``since <= time < until`` by global id, streamed from one snapshot."""
        with self._report(snapshot=True) as conn:
            result = conn.execution_options(stream_results=True, yield_per=_FETCH).execute(
                select_export(since, until)
            )
            try:
                for row in result:
                    yield _exported(row)
            except SQLAlchemyError as exc:
                raise StoreUnavailable(UNAVAILABLE) from exc
            finally:
                result.close()

    def verify(self) -> ChainReport:
        """Check the registry, every chain and every derived row, from one snapshot."""
        verifier = AuditVerifier(self._key)
        with self._report(snapshot=True) as conn, contextlib.ExitStack() as cursors:
            stream = conn.execution_options(stream_results=True, yield_per=_FETCH)

            def rows(statement: Any) -> Iterator[tuple[Any, ...]]:
                result = stream.execute(statement)
                cursors.callback(result.close)  # server-side cursors, closed however verify ends
                return (tuple(row) for row in result)

            registry_head = conn.execute(
                select(
                    chain_registry_head.c.seq, chain_registry_head.c.hash, chain_registry_head.c.mac
                ).where(chain_registry_head.c.id == 1)
            ).first()
            entries = rows(
                select(
                    chain_registry.c.seq,
                    chain_registry.c.event,
                    chain_registry.c.chain,
                    chain_registry.c.time,
                    chain_registry.c.body,
                    chain_registry.c.prev_hash,
                    chain_registry.c.hash,
                ).order_by(chain_registry.c.seq)
            )
            anchors = rows(
                select(
                    chain_anchors.c.registry_seq,
                    chain_anchors.c.chain,
                    chain_anchors.c.seq,
                    chain_anchors.c.hash,
                ).order_by(chain_anchors.c.registry_seq, chain_anchors.c.chain)
            )
            if not verifier.registry(
                tuple(registry_head) if registry_head is not None else None, entries, anchors
            ):
                return verifier.report()
            verifier.heads(
                tuple(row)
                for row in conn.execute(
                    select(
                        chain_heads.c.chain,
                        chain_heads.c.seq,
                        chain_heads.c.hash,
                        chain_heads.c.mac,
                    )
                )
            )
            c, v, u, t = credentials, revocations, uses, record_tools
            verifier.derived(
                rows(
                    select(
                        c.c.record_id,
                        c.c.jti,
                        c.c.user_issuer,
                        c.c.user_id,
                        c.c.category,
                        c.c.tool,
                        c.c.expires_at,
                        c.c.issued_at,
                        c.c.workflow,
                        c.c.scope,
                    ).order_by(c.c.record_id, c.c.jti)
                ),
                rows(
                    select(
                        v.c.record_id, v.c.selector, v.c.value, v.c.issued_before, v.c.expires_at
                    ).order_by(v.c.record_id, v.c.id)
                ),
                rows(
                    select(
                        u.c.record_id,
                        u.c.jti,
                        u.c.operation,
                        u.c.outcome,
                        u.c.time,
                        u.c.reported_by,
                    ).order_by(u.c.record_id, u.c.id)
                ),
                rows(select(t.c.record_id, t.c.tool).order_by(t.c.record_id, t.c.tool)),
            )
            r = records
            for row in rows(
                select(
                    r.c.id,
                    r.c.chain,
                    r.c.chain_seq,
                    r.c.body,
                    r.c.prev_hash,
                    r.c.hash,
                    r.c.decision_id,
                    r.c.time,
                    r.c.outcome,
                    r.c.execution_id,
                    r.c.agent_instance,
                    r.c.workload_id,
                    r.c.user_id,
                ).order_by(r.c.id)
            ):
                if not verifier.record(row):
                    break
            verifier.finish_records()
            if not verifier.failed:
                verifier.anchor_mismatch(conn.execute(_BAD_ANCHOR).first())
        return verifier.report()

    def issued_counts(self, since: float) -> dict[tuple[str, str, str], int]:
        """Credentials issued since ``since`` per (user issuer, user id, tool category)."""
        c = credentials
        statement = (
            select(c.c.user_issuer, c.c.user_id, c.c.category, func.count())
            .where(
                c.c.issued_at >= since,
                c.c.user_issuer.is_not(None),
                c.c.user_id.is_not(None),
                c.c.category.is_not(None),
            )
            .group_by(c.c.user_issuer, c.c.user_id, c.c.category)
        )
        return {
            (text_value(issuer), text_value(user), text_value(category)): n
            for issuer, user, category, n in self._report_rows(statement)
        }

    def oldest_live_issue(self, now: float) -> float | None:
        """When the oldest credential still unexpired at ``now`` was issued (one index)."""
        statement = select(func.min(credentials.c.issued_at)).where(credentials.c.expires_at > now)
        rows = self._report_rows(statement)
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    def issued_grants(self, since: float) -> list[tuple[str, str, str, int]]:
        """(workflow, tool, scope, credentials) issued since ``since``."""
        c = credentials
        statement = (
            select(c.c.workflow, c.c.tool, c.c.scope, func.count())
            .where(c.c.issued_at >= since, c.c.workflow.is_not(None))
            .group_by(c.c.workflow, c.c.tool, c.c.scope)
        )
        return [
            (text_value(w), text_value(t), text_value(s), n)
            for w, t, s, n in self._report_rows(statement)
        ]

    def used_grants(self, since: float) -> set[tuple[str, str]] | None:
        """(workflow, tool) of credentials issued since ``since`` that APIs reported a use of
        in records since then; ``None`` when no API reported any use in that time."""
        reported = select(literal(1)).where(records.c.outcome == "usage", records.c.time >= since)
        if not self._report_rows(reported.limit(1)):
            return None
        c, u, r = credentials, uses, records
        statement = (
            select(c.c.workflow, c.c.tool)
            .distinct()
            .select_from(u.join(c, c.c.jti == u.c.jti).join(r, r.c.id == u.c.record_id))
            .where(r.c.time >= since, c.c.issued_at >= since, c.c.workflow.is_not(None))
        )
        return {(text_value(w), text_value(t)) for w, t in self._report_rows(statement)}

    # -- beyond the protocol (as the SQLite reader) -------------------------------------

    def decision(self, decision_id: str) -> StoredRecord | None:
        """The record of ``decision_id`` (unique index), or ``None``."""
        statement = select(records.c.id, records.c.body, records.c.prev_hash, records.c.hash).where(
            records.c.decision_id == stored_text(decision_id)
        )
        row = self._lookup(lambda conn: conn.execute(statement).first())
        return None if row is None else _stored(row)

    def committed(self, decision_id: str) -> bool:
        """Whether the record of ``decision_id`` is in the log."""
        statement = select(literal(1)).where(records.c.decision_id == stored_text(decision_id))
        return self._lookup(lambda conn: conn.execute(statement).first()) is not None

    def uses_of(self, jtis: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """The reported uses of each credential in ``jtis``, in time order (index on jti)."""
        wanted = list(dict.fromkeys(jtis))
        found: dict[str, list[dict[str, Any]]] = {jti: [] for jti in wanted}
        if not wanted:
            return found
        u = uses
        statement = (
            select(u.c.jti, u.c.operation, u.c.outcome, u.c.time, u.c.reported_by, u.c.record_id)
            .where(u.c.jti.in_([stored_text(j) for j in wanted]))
            .order_by(u.c.time, u.c.id)
        )
        for jti, operation, outcome, at, reported_by, record_id in self._report_rows(statement):
            found[text_value(jti)].append(
                {
                    "operation": text_value(operation),
                    "outcome": outcome,
                    "time": at,
                    "reported_by": text_value(reported_by),
                    "seq": record_id,
                }
            )
        return found

    # -- Ledger -------------------------------------------------------------------------

    async def credential(self, jti: str) -> LedgerEntry | None:
        """The credential ``jti`` with what its record says of its user and execution."""
        statement = (
            select(credentials.c.tool, credentials.c.expires_at, records.c.body)
            .select_from(credentials.join(records, records.c.id == credentials.c.record_id))
            .where(credentials.c.jti == stored_text(jti))
        )
        row = await asyncio.to_thread(self._lookup, lambda conn: conn.execute(statement).first())
        if row is None:
            return None
        tool, expires_at, body = row
        data = json.loads(body)
        audiences = [
            c.get("audience")
            for c in data.get("credentials") or ()
            if isinstance(c, dict) and c.get("jti") == jti
        ]
        return LedgerEntry(
            jti=jti,
            tool=text_value(tool),
            expires_at=expires_at,
            user_issuer=data.get("user_issuer"),
            user_id=data.get("user_id"),
            tier=data.get("tier"),
            delegation=data.get("delegation"),
            workflow=data.get("workflow"),
            execution_id=data.get("execution_id"),
            workload_id=data.get("workload_id"),
            may_act=data.get("may_act"),
            audience=audiences[0] if audiences else None,
        )

    async def live(self, selector: str, value: str, now: float) -> LiveCredentials:
        """Unexpired credentials whose record (or, for ``jti``, which itself) ``selector`` names."""
        if selector == "jti":
            where: ColumnElement[bool] = credentials.c.jti == stored_text(value)
        elif selector in _RECORD_SELECTORS:
            where = records.c[selector] == stored_text(value)
        else:
            raise ValueError(f"unknown selector {selector!r}")
        statement = (
            select(
                func.count(),
                func.count(records.c.user_id.distinct()),
                func.max(credentials.c.expires_at),
            )
            .select_from(credentials.join(records, records.c.id == credentials.c.record_id))
            .where(where, credentials.c.expires_at > now)
        )
        row = await asyncio.to_thread(self._lookup, lambda conn: conn.execute(statement).one())
        return LiveCredentials(row[0], row[1], row[2])

    async def revocations_after(self, last_id: int, now: float) -> list[Revocation]:
        """Unexpired revocations with an id above ``last_id``, in id (= commit) order."""
        v = revocations
        statement = (
            select(v.c.id, v.c.selector, v.c.value, v.c.issued_before, v.c.expires_at)
            .where(v.c.id > last_id, v.c.expires_at > now)
            .order_by(v.c.id)
        )
        rows = await asyncio.to_thread(self._lookup, lambda conn: list(conn.execute(statement)))
        return [
            Revocation(text_value(sel), text_value(value), before, exp, id_)
            for id_, sel, value, before, exp in rows
        ]


# The first anchor that no record matches: a chain rolled back (or rewritten) below a point
# the registry witnessed. Records themselves are verified first, so their hashes are sound.
_a, _r = chain_anchors.alias("a"), records.alias("r")
_BAD_ANCHOR = (
    select(_a.c.registry_seq, _a.c.chain, _a.c.seq, _r.c.id)
    .select_from(_a.outerjoin(_r, and_(_r.c.chain == _a.c.chain, _r.c.chain_seq == _a.c.seq)))
    .where(
        or_(
            and_(_a.c.seq == 0, _a.c.hash != GENESIS_HASH),
            and_(_a.c.seq != 0, or_(_r.c.id.is_(None), _r.c.hash != _a.c.hash)),
        )
    )
    .order_by(_a.c.registry_seq, _a.c.chain)
    .limit(1)
)
