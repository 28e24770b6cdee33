"""Results of successful token verifications, keyed by the token's SHA-256, until their exp."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TypeVar

from deputy.clock import Clock

_T = TypeVar("_T")


@dataclass(slots=True)
class CacheStats:
    """Lookups answered from a cache and lookups that had to do the work, since start."""

    hits: int = 0
    misses: int = 0


class VerifiedTokenCache:
    """Bounded, expiring memo of verified tokens; never holds a raw token."""

    def __init__(self, clock: Clock, max_entries: int = 10_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._clock = clock
        self._max_entries = max_entries
        # Insertion order is age order, so the first entry is the oldest.
        self._entries: dict[bytes, tuple[float, object]] = {}
        self.stats = CacheStats()

    @staticmethod
    def _digest(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()

    def get(self, token: str, *, count: bool = True) -> object | None:
        """The verified result for ``token`` while the clock is before its expiry.

        ``count=False`` for a look that is not a lookup (a verification follows either way),
        so :attr:`stats` counts each verification once.
        """
        digest = self._digest(token)
        entry = self._entries.get(digest)
        if entry is not None and self._clock.now() >= entry[0]:
            del self._entries[digest]
            entry = None
        if count:
            if entry is None:
                self.stats.misses += 1
            else:
                self.stats.hits += 1
        return None if entry is None else entry[1]

    def get_as(
        self, token: object, kind: type[_T], max_bytes: int, *, count: bool = True
    ) -> _T | None:
        """Like :meth:`get`, for a plausible token and a result of type ``kind`` only."""
        if not isinstance(token, str) or len(token) > max_bytes:
            return None
        hit = self.get(token, count=count)
        return hit if isinstance(hit, kind) else None

    def put(self, token: str, value: object, expires_at: float) -> None:
        """Remember ``value`` until ``expires_at``; the oldest entry goes when full."""
        if self._clock.now() >= expires_at:
            return
        digest = self._digest(token)
        self._entries.pop(digest, None)
        while len(self._entries) >= self._max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[digest] = (expires_at, value)

    def __len__(self) -> int:
        return len(self._entries)
