"""Memories of single-use ids: client assertion and DPoP proof ``jti``s."""

from __future__ import annotations

import heapq
import math
from typing import Protocol

from deputy.clock import Clock


class ReplayGuard(Protocol):
    """Remembers single-use ids until they expire, so that a second use is refused.

    ``first_use`` is a coroutine because a guard shared by several replicas (Redis) answers
    over the network, and its callers (client authentication, DPoP checks) run on the event
    loop. A guard that cannot answer raises :class:`deputy.errors.StoreUnavailable`: the
    caller refuses the request with 503 rather than accept an id it could not record.
    """

    async def first_use(self, key: str, expires_at: float) -> bool:
        """Record ``key`` until ``expires_at``; False if seen before, already expired, or
        there is no room to remember it (see ``full``)."""
        ...

    @property
    def full(self) -> bool:
        """Whether new ids are refused for lack of room (never, for a guard without a bound)."""
        ...


class ReplayCache:
    """Remembers single-use ids (assertion or proof ``jti``) until they expire, in bounded memory.

    When full it refuses new ids rather than evicting unexpired ones, which would let a
    captured assertion or proof be replayed. It serves one process: replicas share a
    :class:`ReplayGuard` of their own (``deputy.store.redis.RedisReplayCache``).
    """

    def __init__(self, clock: Clock, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._clock = clock
        self._max_entries = max_entries
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    async def first_use(self, key: str, expires_at: float) -> bool:
        """Record ``key`` until ``expires_at``; False if seen, already expired, or full."""
        if not math.isfinite(expires_at):
            raise ValueError("expires_at must be finite")
        now = self._clock.now()
        self._purge(now)
        if key in self._expiry:
            return False
        if expires_at <= now or len(self._expiry) >= self._max_entries:
            # An expired entry could not be remembered, so it is refused like a replay.
            return False
        self._expiry[key] = expires_at
        heapq.heappush(self._heap, (expires_at, key))
        return True

    @property
    def full(self) -> bool:
        return len(self._expiry) >= self._max_entries

    def __len__(self) -> int:
        return len(self._expiry)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is remembered and not yet expired."""
        expires_at = self._expiry.get(key) if isinstance(key, str) else None
        return expires_at is not None and expires_at > self._clock.now()

    def _purge(self, now: float) -> None:
        # Each live key has exactly one heap entry, pushed when it was recorded.
        while self._heap and self._heap[0][0] <= now:
            _, key = heapq.heappop(self._heap)
            del self._expiry[key]
