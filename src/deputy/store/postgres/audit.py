"""The PostgreSQL audit log of one broker process (replica): group commit on a writer thread.

Appends from any event loop go to one writer thread, which takes everything pending (up to
``max_batch``), commits it to this process's chain in one transaction and wakes each waiting
request; only then are the claims of its credentials signed. Between batches the thread
checkpoints the chain heads into the registry now and then, and on close it retires its
chain. See ``docs/postgres-audit.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import URL

from deputy.audit.record import DecisionRecord
from deputy.clock import Clock
from deputy.errors import CommitOutcomeUnknown, StoreUnavailable
from deputy.store.log_front import ReaderFront
from deputy.store.postgres.connect import UNAVAILABLE, Timeouts, Watchdog
from deputy.store.postgres.reader import PostgresAuditReader
from deputy.store.postgres.writer import PostgresAuditWriter
from deputy.tokens.mint import TokenSigner

_log = logging.getLogger(__name__)

_Pending = tuple[DecisionRecord, asyncio.AbstractEventLoop, "asyncio.Future[None]"]


@dataclass(slots=True)
class _Call:
    """Work for the writer thread other than appending (opening the chain)."""

    work: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


_Item = _Pending | _Call | None


class PostgresAuditLog(ReaderFront):
    """``AuditLog`` on PostgreSQL: this process's own chain, shared tables with every replica."""

    reader: PostgresAuditReader

    def __init__(
        self,
        url: str | URL,
        head_key: bytes,
        *,
        signer: TokenSigner | None = None,
        clock: Clock | None = None,
        timeouts: Timeouts | None = None,
        max_batch: int = 256,
        checkpoint_seconds: float = 30.0,
        append_timeout: float | None = None,
        reader_pool_size: int = 4,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        limits = timeouts or Timeouts()
        self._watchdog = Watchdog()
        self._writer = PostgresAuditWriter(
            url,
            head_key,
            clock=clock,
            timeouts=limits,
            watchdog=self._watchdog,
            checkpoint_seconds=checkpoint_seconds,
        )
        self.reader = PostgresAuditReader(
            url, head_key, timeouts=limits, watchdog=self._watchdog, pool_size=reader_pool_size
        )
        self._signer = signer
        self._max_batch = max_batch
        # A batch ends within the call timeout (the watchdog sees to it); a record may wait
        # behind one batch, then take its own, plus a reconnect: past that it is in doubt.
        self._append_timeout = append_timeout or 3 * limits.call + limits.connect
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="deputy-pg-audit", daemon=True)
        self._thread.start()

    @property
    def commits(self) -> int:
        """Transactions committed so far by the writer (one per batch)."""
        return self._writer.commits

    @property
    def chain(self) -> int | None:
        """This writer's chain (None until registered)."""
        return self._writer.chain

    async def start(self) -> None:
        """Check the schema and register this process's chain now, not on the first append.

        Raises ``SchemaOutOfDate`` (naming ``deputy db upgrade``) or ``StoreUnavailable``;
        after the latter, appends try to register again.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._put(_Call(self._writer.open, loop, future))
        await future

    async def append(
        self, record: DecisionRecord, claims: Sequence[Mapping[str, Any]] = ()
    ) -> tuple[str, ...]:
        """Commit ``record``, then sign ``claims`` with the signer (see ``AuditLog``)."""
        if claims and self._signer is None:
            raise ValueError("this audit log has no signer for credentials")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        future.add_done_callback(_consume_outcome)
        self._put((record, loop, future))
        try:
            await asyncio.wait_for(asyncio.shield(future), self._append_timeout)
        except TimeoutError:
            _log.warning("audit append timed out; its record may yet be committed")
            raise CommitOutcomeUnknown(UNAVAILABLE) from None
        if not claims:
            return ()
        assert self._signer is not None
        try:
            return tuple(self._signer.sign(dict(c)) for c in claims)
        except Exception as exc:  # e.g. no active key: the record stands, nothing leaves
            _log.error("credential signing failed after commit: %s", exc)
            raise CommitOutcomeUnknown(UNAVAILABLE) from exc

    def _put(self, item: _Pending | _Call) -> None:
        with self._lock:
            if self._closed:
                raise StoreUnavailable(UNAVAILABLE)
            self._queue.put(item)

    def close(self) -> None:
        """Commit everything already appended, retire this chain, release the store."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join()
        leftovers: list[_Item] = []
        while True:
            try:
                leftovers.append(self._queue.get_nowait())
            except queue.Empty:
                break
        pending = [item for item in leftovers if isinstance(item, tuple)]
        _settle(pending, [StoreUnavailable(UNAVAILABLE) for _ in pending])
        for item in leftovers:
            if isinstance(item, _Call):
                _settle_call(item, None, StoreUnavailable(UNAVAILABLE))
        self.reader.close()
        self._watchdog.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    # -- the writer thread --------------------------------------------------------------

    def _serve(self) -> None:
        try:
            self._loop()
        finally:
            with contextlib.suppress(Exception):
                self._writer.retire()
            self._writer.close()

    def _loop(self) -> None:
        later: list[_Item] = []
        while True:
            if later:
                first = later.pop(0)
            else:
                try:
                    first = self._queue.get(timeout=self._writer.checkpoint_in())
                except queue.Empty:
                    self._writer.checkpoint()
                    continue
            if first is None:
                return
            if isinstance(first, _Call):
                self._call(first)
                continue
            batch: list[_Pending] = [first]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, tuple):
                    batch.append(item)
                else:  # the end, or a call: after this batch
                    later.append(item)
                    break
            _settle(batch, self._writer.write([record for record, _, _ in batch]))
            if self._writer.checkpoint_in() == 0.0:
                self._writer.checkpoint()

    def _call(self, call: _Call) -> None:
        try:
            result = call.work()
        except Exception as exc:
            _settle_call(call, None, exc)
        else:
            _settle_call(call, result, None)


def _consume_outcome(future: asyncio.Future[None]) -> None:
    """The answer may come after the caller gave up waiting; it must not go unread."""
    if not future.cancelled():
        future.exception()


def _settle(batch: list[_Pending], results: list[BaseException | None]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[None], Any]]] = {}
    for (_, loop, future), result in zip(batch, results, strict=True):
        by_loop.setdefault(loop, []).append((future, result))
    for loop, settlements in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, settlements)
        except RuntimeError:
            _log.warning("audit append finished after its event loop closed")


def _settle_call(call: _Call, result: Any, error: BaseException | None) -> None:
    try:
        call.loop.call_soon_threadsafe(_resolve, [(call.future, error or _Result(result))])
    except RuntimeError:
        _log.warning("audit store call finished after its event loop closed")


@dataclass(frozen=True, slots=True)
class _Result:
    value: Any


def _resolve(settlements: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, outcome in settlements:
        if future.done():
            continue
        if outcome is None:
            future.set_result(None)
        elif isinstance(outcome, _Result):
            future.set_result(outcome.value)
        else:
            future.set_exception(outcome)
