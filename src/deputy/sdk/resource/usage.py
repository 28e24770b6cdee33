"""Reporting each use of a credential to the broker, so its audit joins issuance with use.

:class:`UsageReporter` queues reports in memory (never blocking the request, never raising)
and sends them in batches to the broker's usage endpoint, authenticated as a configured
client with HTTP Basic. A batch that cannot be delivered is kept and sent again on the next
flush. The queue is bounded: when full, the oldest report is dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass

import httpx

from deputy.clock import Clock, SystemClock
from deputy.sdk.resource.credential import VerifiedCredential

USAGE_PATH = "/usage"
MAX_OPERATION_LENGTH = 256
MAX_BATCH = 500  # the most the broker takes in one report
HTTP_TIMEOUT_SECONDS = 5.0

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Use:
    jti: str
    operation: str
    outcome: int
    time: float

    def as_json(self) -> dict[str, object]:
        return {
            "jti": self.jti,
            "operation": self.operation,
            "outcome": self.outcome,
            "time": self.time,
        }


def operation_text(operation: str) -> str:
    """What the broker accepts: printable, at most 256 characters, never empty."""
    text = "".join(c if c.isprintable() else "?" for c in operation[:MAX_OPERATION_LENGTH])
    return text or "-"


class UsageReporter:
    """Batches uses of credentials and reports them to the broker in the background.

    ``report`` only appends to a bounded in-memory queue. ``start`` runs a task that flushes
    every ``flush_interval`` seconds; ``flush`` sends what is queued now; ``aclose`` stops the
    task and flushes what is left. ``dropped`` counts reports lost to a full queue or refused
    by the broker as malformed or unauthorised (4xx), ``refused`` the uses the broker did not
    accept (credentials not minted for this client's APIs), ``sent`` those it recorded.
    """

    def __init__(
        self,
        broker_url: str,
        client_id: str,
        client_secret: str,
        *,
        flush_interval: float = 1.0,
        max_batch: int = 100,
        max_queue: int = 10_000,
        http_client: httpx.AsyncClient | None = None,
        clock: Clock | None = None,
    ) -> None:
        if flush_interval <= 0:
            raise ValueError("flush_interval must be > 0")
        if not 1 <= max_batch <= MAX_BATCH:
            raise ValueError(f"max_batch must be 1 to {MAX_BATCH}")
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        self._url = broker_url.rstrip("/") + USAGE_PATH
        self._auth = httpx.BasicAuth(client_id, client_secret)
        self._interval = flush_interval
        self._max_batch = max_batch
        self._max_queue = max_queue
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(
            timeout=HTTP_TIMEOUT_SECONDS, follow_redirects=False
        )
        self._clock: Clock = clock or SystemClock()
        self._queue: deque[_Use] = deque()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.refused = 0
        self.sent = 0

    def __repr__(self) -> str:
        return f"UsageReporter({self._url!r}, pending={len(self._queue)})"

    @property
    def pending(self) -> int:
        """Reports queued and not yet delivered."""
        return len(self._queue)

    def report(self, credential: VerifiedCredential, operation: str, outcome: int) -> None:
        """Queue one use of ``credential``; never blocks, never raises."""
        try:
            if isinstance(outcome, bool) or not 100 <= int(outcome) <= 599:
                self.dropped += 1
                return
            text = operation_text(str(operation))
            self._queue.append(_Use(credential.jti, text, int(outcome), self._clock.now()))
            while len(self._queue) > self._max_queue:
                self._queue.popleft()
                self.dropped += 1
        except Exception:  # a report must never break the request it describes
            self.dropped += 1

    async def start(self) -> None:
        """Flush every ``flush_interval`` seconds in the background until :meth:`aclose`."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except Exception:  # the next turn tries again; the queue stays bounded
                _log.warning("usage flush failed unexpectedly", exc_info=True)

    async def flush(self) -> bool:
        """Send everything queued, batch by batch; False if a batch is kept for a retry."""
        async with self._lock:
            while self._queue:
                size = min(self._max_batch, len(self._queue))
                batch = [self._queue.popleft() for _ in range(size)]
                if not await self._send(batch):
                    # Back at the front, in order, for the next flush; still bounded.
                    self._queue.extendleft(reversed(batch))
                    while len(self._queue) > self._max_queue:
                        self._queue.popleft()
                        self.dropped += 1
                    return False
        return True

    async def _send(self, batch: list[_Use]) -> bool:
        """True when the batch is settled (recorded, or refused for good)."""
        try:
            response = await self._http.post(
                self._url, json={"uses": [u.as_json() for u in batch]}, auth=self._auth
            )
        except Exception as exc:  # kept and retried, whatever went wrong
            _log.warning("usage report failed (%s); retrying later", type(exc).__name__)
            return False
        status = response.status_code
        if status == 200:
            try:
                body = response.json()
                self.sent += int(body["recorded"])
                self.refused += int(body["refused"])
            except (ValueError, KeyError, TypeError):
                _log.warning("usage report answered with an unexpected body")
            return True
        if status == 429 or status >= 500:
            _log.warning("usage report answered %d; retrying later", status)
            return False
        _log.warning("usage report refused with %d; %d uses dropped", status, len(batch))
        self.dropped += len(batch)
        return True

    async def aclose(self) -> None:
        """Stop the background task, flush what is left, and close the HTTP client it made."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self.flush()
        finally:
            if self._owns_http:
                await self._http.aclose()
