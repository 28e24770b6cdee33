"""Embedded audit log: one writer thread group-commits hash-chained records to SQLite."""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from deputy.audit.chain import GENESIS_HASH, ChainHead, link_hash, record_body
from deputy.audit.log import AuditFilter, ChainReport
from deputy.audit.record import DecisionRecord, StoredRecord
from deputy.clock import Clock, SystemClock
from deputy.errors import StoreUnavailable
from deputy.store.sqlite.audit_reader import DB_FILE, UNAVAILABLE, SqliteAuditReader, open_head_key
from deputy.store.sqlite.audit_tables import (
    INSERT_CREDENTIAL,
    INSERT_RECORD,
    READ_HEAD,
    SCHEMA,
    SCHEMA_VERSION,
    WRITE_HEAD,
    head_from_row,
    insert_rows,
)

MIN_KEY_BYTES = 16
_UNAVAILABLE = UNAVAILABLE

_log = logging.getLogger(__name__)

_Pending = tuple[DecisionRecord, asyncio.AbstractEventLoop, "asyncio.Future[None]"]
_Settlement = tuple["asyncio.Future[None]", BaseException | None]


class _HeadInvalid(Exception):
    """The stored chain head is missing or forged; appending would hide the tampering."""


class SqliteAuditLog:
    """Append-only, hash-chained decision log in one SQLite file (WAL, ``synchronous=FULL``)."""

    def __init__(
        self,
        path: Path,
        head_key: bytes,
        *,
        clock: Clock | None = None,
        busy_timeout_ms: int = 2000,
        max_batch: int = 256,
        on_connect: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        if len(head_key) < MIN_KEY_BYTES:
            raise ValueError(f"audit head key must be at least {MIN_KEY_BYTES} bytes")
        if max_batch < 1 or busy_timeout_ms < 0:
            raise ValueError("max_batch must be >= 1 and busy_timeout_ms >= 0")
        self._path = path
        self._head_key = head_key
        self._clock: Clock = clock or SystemClock()
        self._timeout = busy_timeout_ms / 1000
        self._max_batch = max_batch
        self._on_connect = on_connect
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._commits = 0
        self._conn: sqlite3.Connection | None = None
        self._init_schema()
        self.reader = SqliteAuditReader(path, head_key, busy_timeout_ms=busy_timeout_ms)
        self._thread = threading.Thread(target=self._serve, name="deputy-audit-writer", daemon=True)
        self._thread.start()

    @property
    def commits(self) -> int:
        """Transactions committed so far by the writer (one per batch)."""
        return self._commits

    async def append(self, record: DecisionRecord) -> None:
        """Return once the record is durably committed; raise ``StoreUnavailable`` if not."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._closed:
                raise StoreUnavailable(_UNAVAILABLE)
            self._queue.put((record, loop, future))
        await future

    def close(self) -> None:
        """Commit everything already appended, then stop the writer thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join()
        leftovers: list[_Pending] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                leftovers.append(item)
        self._settle(leftovers, [StoreUnavailable(_UNAVAILABLE) for _ in leftovers])

    async def aclose(self) -> None:
        self.close()

    def __enter__(self) -> SqliteAuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def query(self, audit_filter: AuditFilter) -> Iterator[StoredRecord]:
        return self.reader.query(audit_filter)

    def verify(self) -> ChainReport:
        return self.reader.verify()

    def issued_counts(self, since: float) -> dict[tuple[str, str, str], int]:
        return self.reader.issued_counts(since)

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
            raise StoreUnavailable(_UNAVAILABLE) from exc
        try:
            conn.execute("BEGIN IMMEDIATE")
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version == 0:
                for statement in SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreUnavailable(_UNAVAILABLE) from exc
        finally:
            conn.close()
        if version not in (0, SCHEMA_VERSION):
            raise StoreUnavailable(f"audit store schema version {version} is not supported")

    def _serve(self) -> None:
        try:
            stop = False
            while not stop:
                first = self._queue.get()
                if first is None:
                    break
                batch = [first]
                while len(batch) < self._max_batch:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stop = True
                        break
                    batch.append(item)
                self._write(batch)
        finally:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _write(self, batch: list[_Pending]) -> None:
        try:
            results = self._commit(batch)
        except sqlite3.IntegrityError as exc:
            if len(batch) > 1:
                # One duplicate id must not fail its neighbours: retry them one by one.
                for item in batch:
                    self._write([item])
                return
            results = [self._unavailable(exc) for _ in batch]
        except Exception as exc:  # the writer must outlive any one failed batch
            results = [self._unavailable(exc) for _ in batch]
        self._settle(batch, results)

    def _unavailable(self, cause: BaseException) -> StoreUnavailable:
        _log.warning("audit append failed: %s", cause)
        error = StoreUnavailable(_UNAVAILABLE)
        error.__cause__ = cause
        return error

    def _commit(self, batch: list[_Pending]) -> list[BaseException | None]:
        if self._conn is None:
            self._conn = self._connect()
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            seq, prev_hash = self._tip(conn)
            results: list[BaseException | None] = [None] * len(batch)
            records: list[tuple[Any, ...]] = []
            credentials: list[tuple[Any, ...]] = []
            logged_at = self._clock.now()
            for index, (record, _, _) in enumerate(batch):
                try:
                    body = record_body(record, logged_at)
                except (TypeError, ValueError) as exc:
                    results[index] = exc
                    continue
                seq += 1
                hash_ = link_hash(seq, prev_hash, body)
                records.append(
                    (
                        seq,
                        record.decision_id,
                        record.time,
                        record.outcome,
                        record.execution_id,
                        record.agent_instance,
                        record.workload_id,
                        record.user_id,
                        body.decode("ascii"),
                        prev_hash,
                        hash_,
                    )
                )
                prev_hash = hash_
                credentials.extend(
                    (
                        c.jti,
                        seq,
                        record.user_issuer,
                        record.user_id,
                        c.category,
                        c.tool,
                        c.expires_at,
                        record.time,
                    )
                    for c in record.credentials
                )
            if records:
                # One statement per table and batch: every step releases and retakes the GIL.
                conn.execute(insert_rows(INSERT_RECORD, len(records)), _flat(records))
                if credentials:
                    conn.execute(
                        insert_rows(INSERT_CREDENTIAL, len(credentials)), _flat(credentials)
                    )
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
        self._commits += 1
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

    @staticmethod
    def _settle(batch: list[_Pending], results: list[BaseException | None]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Settlement]] = {}
        for (_, loop, future), result in zip(batch, results, strict=True):
            by_loop.setdefault(loop, []).append((future, result))
        for loop, settlements in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, settlements)
            except RuntimeError:
                _log.warning("audit append finished after its event loop closed")


def _flat(rows: list[tuple[Any, ...]]) -> list[Any]:
    return [value for row in rows for value in row]


def _resolve(settlements: list[_Settlement]) -> None:
    for future, error in settlements:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def open_audit_log(
    data_dir: Path, *, clock: Clock | None = None, busy_timeout_ms: int = 2000
) -> SqliteAuditLog:
    """Open (or create) the audit log in ``data_dir`` with its head key beside it."""
    key = open_head_key(data_dir)
    return SqliteAuditLog(data_dir / DB_FILE, key, clock=clock, busy_timeout_ms=busy_timeout_ms)
