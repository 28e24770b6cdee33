"""The SQLite audit writer: one transaction per batch of hash-chained records."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deputy.audit.chain import GENESIS_HASH, ChainHead, link_hash, record_body
from deputy.audit.record import DecisionRecord, tools_of
from deputy.clock import Clock, SystemClock
from deputy.errors import StoreUnavailable
from deputy.store.sqlite.audit_reader import DB_FILE, UNAVAILABLE, open_head_key
from deputy.store.sqlite.audit_tables import (
    INSERT_CREDENTIAL,
    INSERT_RECORD,
    INSERT_RECORD_TOOL,
    INSERT_REVOCATION,
    INSERT_USE,
    MIGRATIONS,
    READ_HEAD,
    SCHEMA,
    SCHEMA_VERSION,
    WRITE_HEAD,
    head_from_row,
    insert_rows,
)

MIN_KEY_BYTES = 16
# Tool rows per INSERT: 2 values each, under SQLite's smallest default of 999 bound values.
_TOOL_ROWS_PER_INSERT = 400

_log = logging.getLogger(__name__)


class _HeadInvalid(Exception):
    """The stored chain head is missing or forged; appending would hide the tampering."""


class SqliteAuditWriter:
    """Appends batches to ``audit.db`` (WAL, ``synchronous=FULL``); one thread uses it."""

    def __init__(
        self,
        path: Path,
        head_key: bytes,
        *,
        clock: Clock | None = None,
        busy_timeout_ms: int = 2000,
        on_connect: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        if len(head_key) < MIN_KEY_BYTES:
            raise ValueError(f"audit head key must be at least {MIN_KEY_BYTES} bytes")
        if busy_timeout_ms < 0:
            raise ValueError("busy_timeout_ms must be >= 0")
        self._path = path
        self._head_key = head_key
        self._clock: Clock = clock or SystemClock()
        self._timeout = busy_timeout_ms / 1000
        self._on_connect = on_connect
        self._conn: sqlite3.Connection | None = None
        self.commits = 0
        self._init_schema()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as exc:  # closing checkpoints the WAL, which can fail too
                _log.warning("audit store close failed: %s", exc)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path,
            timeout=self._timeout,
            isolation_level=None,
            check_same_thread=False,
            cached_statements=512,
        )
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            if self._on_connect is not None:
                self._on_connect(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _init_schema(self) -> None:
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            raise StoreUnavailable(UNAVAILABLE) from exc
        try:
            conn.execute("BEGIN IMMEDIATE")
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version == 0:
                for statement in SCHEMA:
                    conn.execute(statement)
                version = 1
            if 0 < version < SCHEMA_VERSION:
                while version < SCHEMA_VERSION:
                    for step in MIGRATIONS[version]:
                        if isinstance(step, str):
                            conn.execute(step)
                        else:
                            step(conn)
                    version += 1
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreUnavailable(UNAVAILABLE) from exc
        finally:
            conn.close()
        if version not in (0, SCHEMA_VERSION):
            raise StoreUnavailable(f"audit store schema version {version} is not supported")

    def write(self, batch: list[DecisionRecord]) -> list[BaseException | None]:
        """Commit ``batch`` in one transaction; per record, ``None`` or why it was not."""
        try:
            return self._commit(batch)
        except sqlite3.IntegrityError as exc:
            if len(batch) > 1:
                # One duplicate id must not fail its neighbours: retry them one by one.
                return [self.write([record])[0] for record in batch]
            return [self._unavailable(exc)]
        except Exception as exc:  # the writer must outlive any one failed batch
            # After an I/O error a connection can stay broken: the next batch opens a new one.
            self.close()
            return [self._unavailable(exc) for _ in batch]

    def _unavailable(self, cause: BaseException) -> StoreUnavailable:
        _log.warning("audit append failed: %s", cause)
        error = StoreUnavailable(UNAVAILABLE)
        error.__cause__ = cause
        return error

    def _commit(self, batch: list[DecisionRecord]) -> list[BaseException | None]:
        if self._conn is None:
            self._conn = self._connect()
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            seq, prev_hash = self._tip(conn)
            results: list[BaseException | None] = [None] * len(batch)
            records: list[tuple[Any, ...]] = []
            credentials: list[tuple[Any, ...]] = []
            revocations: list[tuple[Any, ...]] = []
            uses: list[tuple[Any, ...]] = []
            tools: list[tuple[int, str]] = []
            logged_at = self._clock.now()
            for index, record in enumerate(batch):
                try:
                    body = record_body(record, logged_at)
                    rows = _Rows.of(record)
                except (TypeError, ValueError) as exc:  # this record alone cannot be written
                    results[index] = exc
                    continue
                seq += 1
                hash_ = link_hash(seq, prev_hash, body)
                records.append((seq, *rows.columns, body.decode("ascii"), prev_hash, hash_))
                prev_hash = hash_
                credentials.extend((jti, seq, *rest) for jti, *rest in rows.credentials)
                revocations.extend((seq, *row) for row in rows.revocations)
                uses.extend((seq, *row) for row in rows.uses)
                tools.extend((seq, tool) for tool in rows.tools)
            if records:
                # One statement per table and batch: every step releases and retakes the GIL.
                conn.execute(insert_rows(INSERT_RECORD, len(records)), _flat(records))
                if credentials:
                    conn.execute(
                        insert_rows(INSERT_CREDENTIAL, len(credentials)), _flat(credentials)
                    )
                if revocations:
                    conn.executemany(INSERT_REVOCATION, revocations)
                if uses:
                    conn.executemany(INSERT_USE, uses)
                for start in range(0, len(tools), _TOOL_ROWS_PER_INSERT):
                    chunk = tools[start : start + _TOOL_ROWS_PER_INSERT]
                    conn.execute(insert_rows(INSERT_RECORD_TOOL, len(chunk)), _flat(chunk))
                head = ChainHead.sign(self._head_key, seq, prev_hash)
                conn.execute(WRITE_HEAD, (head.seq, head.hash, head.mac))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    _log.warning("audit rollback failed; sqlite rolls back on the next begin")
            raise
        self.commits += 1
        return results

    def _tip(self, conn: sqlite3.Connection) -> tuple[int, str]:
        # Read inside the write transaction, so a failed batch or another writer never forks it.
        head = head_from_row(conn.execute(READ_HEAD).fetchone())
        if head is None:
            if conn.execute("SELECT 1 FROM records LIMIT 1").fetchone() is not None:
                raise _HeadInvalid("audit chain head is missing; run verify")
            return 0, GENESIS_HASH
        if not head.is_authentic(self._head_key):
            raise _HeadInvalid("audit chain head does not verify; run verify")
        return head.seq, head.hash


@dataclass(frozen=True, slots=True)
class _Rows:
    """One record's column values and derived rows (without its seq), each of its type."""

    columns: tuple[Any, ...]
    credentials: list[tuple[Any, ...]]
    revocations: list[tuple[Any, ...]]
    uses: list[tuple[Any, ...]]
    tools: list[str]

    @classmethod
    def of(cls, record: DecisionRecord) -> _Rows:
        """Raises ``TypeError`` or ``ValueError`` for a value its column cannot hold as it is
        hashed (SQLite would store a number in a text column, and cannot store text that is
        not valid Unicode): the record then fails alone, not the batch it came in."""
        user_id = _text(record.user_id, "user_id")
        time = _number(record.time, "time")
        columns = (
            _required(record.decision_id, "decision_id"),
            time,
            _required(record.outcome, "outcome"),
            _text(record.execution_id, "execution_id"),
            _text(record.agent_instance, "agent_instance"),
            _text(record.workload_id, "workload_id"),
            user_id,
        )
        issuer = _text(record.user_issuer, "user_issuer")
        workflow = _text(record.workflow, "workflow")
        credentials = [
            (
                _required(c.jti, "jti"),
                issuer,
                user_id,
                _text(c.category, "category"),
                _text(c.tool, "tool"),
                _integer(c.expires_at, "expires_at"),
                time,
                workflow,
                _text(c.scope, "scope"),
            )
            for c in record.credentials
        ]
        revocations = []
        if record.revocation is not None:
            r = record.revocation
            revocations.append(
                (
                    _required(r.get("selector"), "selector"),
                    _required(r.get("value"), "value"),
                    _integer(r.get("issued_before"), "issued_before"),
                    _integer(r.get("expires_at"), "expires_at"),
                )
            )
        reporter = _text(record.requested_by, "requested_by")
        uses = [
            (
                _required(u.get("jti"), "use jti"),
                _text(u.get("operation"), "operation"),
                _integer(u.get("outcome"), "use outcome"),
                _number(u.get("time"), "use time"),
                reporter,
            )
            for u in record.uses
        ]
        tools = tools_of(
            {
                "tools_requested": record.tools_requested,
                "credentials": [{"tool": c.tool} for c in record.credentials],
                "uses": list(record.uses),
            }
        )
        return cls(columns, credentials, revocations, uses, [_required(t, "tool") for t in tools])


def _text(value: Any, name: str) -> str | None:
    return None if value is None else _required(value, name)


def _required(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be text")
    value.encode("utf-8")  # UnicodeEncodeError (a ValueError) for a lone surrogate
    return value


def _integer(value: Any, name: str) -> int:
    if type(value) is not int:
        raise TypeError(f"{name} must be an integer")
    return value


def _number(value: Any, name: str) -> float | int:
    if type(value) not in (int, float):
        raise TypeError(f"{name} must be a number")
    return value  # type: ignore[no-any-return]


def _flat(rows: list[tuple[Any, ...]]) -> list[Any]:
    return [value for row in rows for value in row]


def open_audit_writer(data_dir: Path, *, clock: Clock | None = None) -> SqliteAuditWriter:
    """The writer of the audit log in ``data_dir``, with its head key beside it."""
    return SqliteAuditWriter(data_dir / DB_FILE, open_head_key(data_dir), clock=clock)
