"""Embedded audit log for one process: a writer thread group-commits what is appended."""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from deputy.audit.record import DecisionRecord
from deputy.clock import Clock
from deputy.errors import StoreUnavailable
from deputy.store.log_front import ReaderFront
from deputy.store.sqlite.audit_reader import DB_FILE, UNAVAILABLE, SqliteAuditReader, open_head_key
from deputy.store.sqlite.audit_writer import SqliteAuditWriter
from deputy.tokens.mint import TokenSigner

_log = logging.getLogger(__name__)

_Pending = tuple[DecisionRecord, asyncio.AbstractEventLoop, "asyncio.Future[None]"]
_Settlement = tuple["asyncio.Future[None]", BaseException | None]


class SqliteAuditLog(ReaderFront):
    """Append-only, hash-chained decision log in one SQLite file (WAL, ``synchronous=FULL``)."""

    reader: SqliteAuditReader

    def __init__(
        self,
        path: Path,
        head_key: bytes,
        *,
        clock: Clock | None = None,
        busy_timeout_ms: int = 2000,
        max_batch: int = 256,
        on_connect: Callable[[sqlite3.Connection], None] | None = None,
        signer: TokenSigner | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._writer = SqliteAuditWriter(
            path, head_key, clock=clock, busy_timeout_ms=busy_timeout_ms, on_connect=on_connect
        )
        self._max_batch = max_batch
        self._signer = signer
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self.reader = SqliteAuditReader(path, head_key, busy_timeout_ms=busy_timeout_ms)
        self._thread = threading.Thread(target=self._serve, name="deputy-audit-writer", daemon=True)
        self._thread.start()

    @property
    def commits(self) -> int:
        """Transactions committed so far by the writer (one per batch)."""
        return self._writer.commits

    async def append(
        self, record: DecisionRecord, claims: Sequence[Mapping[str, Any]] = ()
    ) -> tuple[str, ...]:
        """Commit ``record``, then sign ``claims`` with the signer (see ``AuditLog``)."""
        if claims and self._signer is None:
            raise ValueError("this audit log has no signer for credentials")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._closed:
                raise StoreUnavailable(UNAVAILABLE)
            self._queue.put((record, loop, future))
        await future
        if not claims:
            return ()
        assert self._signer is not None
        return tuple(self._signer.sign(dict(c)) for c in claims)

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
        self._settle(leftovers, [StoreUnavailable(UNAVAILABLE) for _ in leftovers])

    async def aclose(self) -> None:
        self.close()

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
            self._writer.close()

    def _write(self, batch: list[_Pending]) -> None:
        self._settle(batch, self._writer.write([record for record, _, _ in batch]))

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
