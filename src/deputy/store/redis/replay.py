"""Single-use ids (client assertion and DPoP proof ``jti``s) remembered in Redis.

One ``SET key 1 NX PX ttl`` per id: Redis answers OK to exactly one of any number of
replicas presenting the same id, and forgets it when it expires. Keys are
``{prefix}replay:{name}:{sha256 of the id}``, so an id chosen by a client never shapes a key.
"""

from __future__ import annotations

import hashlib
import math

from deputy.clock import Clock, SystemClock
from deputy.store.redis.connection import DEFAULT_TIMEOUT_SECONDS, RedisConnection, command

SKEW_MARGIN_SECONDS = 60.0


class RedisReplayCache:
    """The :class:`deputy.identity.replay.ReplayGuard` that every replica shares.

    ``name`` keeps guards apart on one server (``client_assertion``, ``dpop``). An id is
    remembered ``skew_margin`` seconds beyond its ``expires_at`` (by this replica's clock),
    so that a replica whose clock lags still finds it while it thinks the id is valid.
    A call that Redis does not answer within ``timeout`` raises ``StoreUnavailable``; the
    callers refuse the request (503) rather than accept an id they could not record. There
    is no bound on the number of ids but Redis's memory (run it with ``noeviction``: an
    evicted id could be replayed); ``full`` is therefore always False.
    """

    def __init__(
        self,
        url: str | RedisConnection,
        *,
        name: str,
        prefix: str = "deputy:",
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        clock: Clock | None = None,
        skew_margin: float = SKEW_MARGIN_SECONDS,
    ) -> None:
        if not name or ":" in name:
            raise ValueError("name must be non-empty and without ':'")
        if not isinstance(url, RedisConnection):
            url = RedisConnection(url, timeout=timeout)
        self._redis = url
        self._prefix = f"{prefix}replay:{name}:"
        self._clock: Clock = clock or SystemClock()
        self._skew_margin = skew_margin

    @property
    def connection(self) -> RedisConnection:
        return self._redis

    @property
    def full(self) -> bool:
        return False

    def key(self, key: str) -> str:
        """The Redis key that remembers ``key``."""
        return self._prefix + hashlib.sha256(key.encode("utf-8")).hexdigest()

    async def first_use(self, key: str, expires_at: float) -> bool:
        """Record ``key`` until ``expires_at`` (plus the margin); False if seen or expired."""
        if not math.isfinite(expires_at):
            raise ValueError("expires_at must be finite")
        remaining = expires_at - self._clock.now()
        if remaining <= 0:
            return False  # an expired id could not be remembered: refused like a replay
        ttl_ms = math.ceil((remaining + self._skew_margin) * 1000)
        stored = self.key(key)
        answer = await self._redis.run(
            lambda client: command(client, "SET", stored, b"1", "NX", "PX", ttl_ms)
        )
        return bool(answer)

    async def aclose(self) -> None:
        await self._redis.aclose()
