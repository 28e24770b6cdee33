"""One Redis server for the broker's shared counters and replay guards, failing fast.

Every call is bounded: the socket connect and read timeouts are ``timeout`` seconds, the
client never retries, and the whole call (a script whose SHA Redis has forgotten takes two
round trips) runs under an ``asyncio.timeout`` of the same ``timeout``. Whatever goes
wrong (refused, reset, slow, an error reply, out of memory) comes out as
:class:`deputy.errors.StoreUnavailable`, which the service answers with 503 and
``Retry-After``. There is no fallback: a replica that counted on its own would multiply
every limit by the number of replicas.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from deputy.errors import ConfigError, StoreUnavailable

DEFAULT_TIMEOUT_SECONDS = 0.5
MAX_TIMEOUT_SECONDS = 1.0  # docs/security.md: a counter store fault is a 503 within 1 s
SCHEMES = frozenset({"redis", "rediss", "unix"})
UNAVAILABLE = "counter store unavailable"
LOG_EVERY_SECONDS = 10.0  # during an outage, one warning per interval, not one per request

T = TypeVar("T")
_log = logging.getLogger(__name__)


def redacted(url: str) -> str:
    """``url`` without its user and password, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


async def command(client: Redis, *args: str | bytes | int | float) -> Any:
    """One Redis command (redis-py leaves ``execute_command`` untyped)."""
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


class Script:
    """A Lua script run with ``EVALSHA``, falling back to ``EVAL`` when Redis answers
    ``NOSCRIPT`` (after a restart or ``SCRIPT FLUSH``); ``EVAL`` caches it again."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8"), usedforsecurity=False).hexdigest()

    async def run(
        self, client: Redis, keys: Sequence[str], args: Sequence[str | int | float]
    ) -> Any:
        try:
            return await command(client, "EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await command(client, "EVAL", self.source, len(keys), *keys, *args)

    def on(
        self, keys: Sequence[str], args: Sequence[str | int | float]
    ) -> Callable[[Redis], Awaitable[Any]]:
        """The script with these keys and arguments, for :meth:`RedisConnection.run`."""
        return lambda client: self.run(client, keys, args)


class RedisConnection:
    """The Redis server at ``url``, shared by the quota store and the replay guards.

    No I/O happens here: a client is made for each event loop on its first call (a client's
    connections belong to the loop that opened them), and reconnects on its own once Redis
    is back, so the same object recovers without being rebuilt.
    """

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        try:
            scheme = urlsplit(url).scheme
        except ValueError:
            scheme = ""
        if scheme not in SCHEMES:
            raise ConfigError(
                "counters: expected a redis://, rediss:// or unix:// URL, "
                f"got {scheme or 'no'} scheme"
            )
        if not 0 < timeout <= MAX_TIMEOUT_SECONDS:
            raise ConfigError(
                f"counters: the Redis timeout must be above 0 and at most {MAX_TIMEOUT_SECONDS} s"
            )
        self._url = url
        self._timeout = timeout
        self._lock = threading.Lock()
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Redis] = (
            weakref.WeakKeyDictionary()
        )
        self._logged_at = -math.inf
        self._unlogged = 0

    @property
    def timeout(self) -> float:
        """The longest any one call waits, in seconds."""
        return self._timeout

    def __repr__(self) -> str:
        return f"RedisConnection({redacted(self._url)!r}, timeout={self._timeout})"

    def _client(self) -> Redis:
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.get(loop)
            if client is None:
                client = Redis.from_url(
                    self._url,
                    socket_timeout=self._timeout,
                    socket_connect_timeout=self._timeout,
                    retry=Retry(NoBackoff(), 0),
                    health_check_interval=0,
                )
                self._clients[loop] = client
        return client

    async def run(self, operation: Callable[[Redis], Awaitable[T]]) -> T:
        """``operation`` on this loop's client, within ``timeout``; else ``StoreUnavailable``."""
        try:
            async with asyncio.timeout(self._timeout):
                return await operation(self._client())
        except (RedisError, OSError, TimeoutError) as exc:
            # TimeoutError: the overall deadline (or a socket timeout) passed.
            self._log_failure(exc)
            raise StoreUnavailable(UNAVAILABLE) from exc

    def _log_failure(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._logged_at < LOG_EVERY_SECONDS:
            self._unlogged += 1
            return
        self._logged_at, unlogged, self._unlogged = now, self._unlogged, 0
        _log.warning(
            "%s at %s: %s%s; requests fail closed with 503 (%d more failures since the last"
            " warning)",
            UNAVAILABLE,
            redacted(self._url),
            type(exc).__name__,
            f": {exc}" if str(exc) else "",
            unlogged,
        )

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless Redis answers now (for readiness checks)."""
        await self.run(lambda client: command(client, "PING"))

    async def aclose(self) -> None:
        """Close the client of the running loop (clients of other loops close with them)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.pop(loop, None)
        if client is not None:
            await client.aclose()


def connect_redis(url: str, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> RedisConnection:
    """The connection for a ``counters: redis://...`` setting (connects on first use)."""
    return RedisConnection(url, timeout=timeout)
