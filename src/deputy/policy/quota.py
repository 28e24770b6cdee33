"""Daily per-user, per-category issuance limits, taken atomically."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

SECONDS_PER_DAY = 86_400


def utc_day(now: float) -> int:
    """The UTC day number of ``now``: days since the epoch."""
    return int(now // SECONDS_PER_DAY)


def seconds_until_next_day(now: float) -> int:
    return max(1, int((utc_day(now) + 1) * SECONDS_PER_DAY - now))


@dataclass(frozen=True, slots=True)
class QuotaDemand:
    """``amount`` more issuances in ``category`` for a user, under ``limit`` per day.

    A user is named by who vouched for it (``issuer``: the user IdP, or the asserting
    workload) and its id there, so an asserting agent cannot spend a verified user's quota.
    """

    issuer: str
    user_id: str
    category: str
    amount: int
    limit: int

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.issuer, self.user_id, self.category)


class QuotaStore(Protocol):
    """Counters per (UTC day, user, category). ``consume`` is all-or-nothing.

    The methods are coroutines: a store shared by several replicas lives across the network
    (Redis), and the issuance path runs on the event loop, which a blocking call would stall
    for every request under way. An awaited call lets the loop serve other requests while
    one waits for its counters, and lets the store bound its wait (``asyncio.timeout``)
    without a thread per call. A store that cannot answer raises
    :class:`deputy.errors.StoreUnavailable` (the service answers 503 with ``Retry-After``);
    it never answers from a guess or a per-process fallback.
    """

    async def consume(self, day: int, demands: tuple[QuotaDemand, ...]) -> tuple[QuotaDemand, ...]:
        """Take every demand, or none; return the demands that would exceed their limit."""
        ...

    async def exceeded(self, day: int, demands: tuple[QuotaDemand, ...]) -> tuple[QuotaDemand, ...]:
        """Which demands would exceed their limit, without taking anything."""
        ...

    async def refund(self, day: int, demands: tuple[QuotaDemand, ...]) -> None:
        """Give back what ``consume`` took for a request that issued nothing."""
        ...


Seed = Callable[[int], Mapping[tuple[str, str, str], int]]
"""What the audit log says a UTC day has issued so far, per (user issuer, user id, category)."""


class MemoryQuotaStore:
    """Counters for one broker process, seeded from the audit log's committed credentials.

    The audit log is the durable truth: a reservation that never reached a committed record
    is lost on a crash together with its credentials, so a restart recounts exactly.
    The seed (a read of the audit database) runs in a worker thread, so that reading a day's
    counts never stalls the event loop; taking and giving back happen under a lock with no
    await in between, so ``consume`` stays all-or-nothing for every thread and coroutine.
    """

    def __init__(self, seed: Seed) -> None:
        self._seed = seed
        self._lock = threading.Lock()
        self._day: int | None = None
        self._counts: dict[tuple[str, str, str], int] = {}

    async def _install(self, day: int) -> None:
        """Make ``day`` the counted day, seeded from the audit log, unless it already is.

        Callers check ``self._day`` again under the lock: another day may have been
        installed by the time they take it.
        """
        if self._day != day:
            seeded = dict(await asyncio.to_thread(self._seed, day))
            with self._lock:
                # Another caller may have installed this day while the seed was read.
                if self._day != day:
                    self._counts = seeded
                    self._day = day

    def _over(
        self, counts: Mapping[tuple[str, str, str], int], demands: tuple[QuotaDemand, ...]
    ) -> tuple[QuotaDemand, ...]:
        return tuple(d for d in demands if counts.get(d.key, 0) + d.amount > d.limit)

    async def consume(self, day: int, demands: tuple[QuotaDemand, ...]) -> tuple[QuotaDemand, ...]:
        while True:
            await self._install(day)
            with self._lock:
                if self._day != day:
                    continue  # another day was installed meanwhile: seed this one again
                counts = self._counts
                over = self._over(counts, demands)
                if not over:
                    for d in demands:
                        key = d.key
                        counts[key] = counts.get(key, 0) + d.amount
                return over

    async def exceeded(self, day: int, demands: tuple[QuotaDemand, ...]) -> tuple[QuotaDemand, ...]:
        while True:
            await self._install(day)
            with self._lock:
                if self._day == day:
                    return self._over(self._counts, demands)

    async def refund(self, day: int, demands: tuple[QuotaDemand, ...]) -> None:
        with self._lock:
            if self._day != day:
                return
            for d in demands:
                key = d.key
                self._counts[key] = max(0, self._counts.get(key, 0) - d.amount)
