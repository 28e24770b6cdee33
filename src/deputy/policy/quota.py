"""Daily per-user, per-category issuance limits, taken atomically."""

from __future__ import annotations

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
    """Counters per (UTC day, user, category). ``consume`` is all-or-nothing."""

    def consume(self, day: int, demands: tuple[QuotaDemand, ...]) -> tuple[QuotaDemand, ...]:
        """Take every demand, or none; return the demands that would exceed their limit."""
        ...

    def exceeded(self, day: int, demands: tuple[QuotaDemand, ...]) -> tuple[QuotaDemand, ...]:
        """Which demands would exceed their limit, without taking anything."""
        ...

    def refund(self, day: int, demands: tuple[QuotaDemand, ...]) -> None: ...


class MemoryQuotaStore:
    """Counters for one broker process, seeded from the audit log's committed credentials.

    The audit log is the durable truth: a reservation that never reached a committed record
    is lost on a crash together with its credentials, so a restart recounts exactly.
    """

    def __init__(self, seed: Callable[[int], Mapping[tuple[str, str, str], int]]) -> None:
        self._seed = seed
        self._lock = threading.Lock()
        self._day: int | None = None
        self._counts: dict[tuple[str, str, str], int] = {}

    def _counts_for(self, day: int) -> dict[tuple[str, str, str], int]:
        if self._day != day:
            self._counts = dict(self._seed(day))
            self._day = day
        return self._counts

    def _over(
        self, counts: Mapping[tuple[str, str, str], int], demands: tuple[QuotaDemand, ...]
    ) -> tuple[QuotaDemand, ...]:
        return tuple(d for d in demands if counts.get(d.key, 0) + d.amount > d.limit)

    def consume(self, day: int, demands: tuple[QuotaDemand, ...]) -> tuple[QuotaDemand, ...]:
        with self._lock:
            counts = self._counts_for(day)
            over = self._over(counts, demands)
            if not over:
                for d in demands:
                    key = d.key
                    counts[key] = counts.get(key, 0) + d.amount
            return over

    def exceeded(self, day: int, demands: tuple[QuotaDemand, ...]) -> tuple[QuotaDemand, ...]:
        with self._lock:
            return self._over(self._counts_for(day), demands)

    def refund(self, day: int, demands: tuple[QuotaDemand, ...]) -> None:
        with self._lock:
            if self._day != day:
                return
            for d in demands:
                key = d.key
                self._counts[key] = max(0, self._counts.get(key, 0) - d.amount)
