"""How often, and how long, the SDK waits for a broker that cannot answer now."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded, jittered retries of one broker call.

    Retried: ``503`` (and ``502``/``504`` from a proxy in front of the broker), a connection
    that could not be opened, and ``429`` only when it names a ``Retry-After``. A wait is the
    broker's ``Retry-After`` when it sends one, else exponential backoff from
    ``backoff_base`` up to ``backoff_max``; either is stretched by up to ``jitter`` (a
    fraction) so that many agents do not come back at once. At most ``max_attempts`` requests
    are sent, and the waits of one call add up to at most ``max_total_wait`` seconds: an
    answer whose ``Retry-After`` does not fit in what is left is raised at once (a daily
    rate limit, say). ``rng`` returns floats in ``[0, 1)``.
    """

    max_attempts: int = 3
    max_total_wait: float = 10.0
    backoff_base: float = 0.5
    backoff_max: float = 5.0
    jitter: float = 0.2
    rng: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if min(self.max_total_wait, self.backoff_base, self.backoff_max, self.jitter) < 0:
            raise ValueError("waits and jitter must not be negative")

    def delay(self, attempt: int, retry_after: float | None, waited: float) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or ``None`` to give up."""
        if attempt >= self.max_attempts:
            return None
        if retry_after is not None:
            base = retry_after
        else:
            base = min(self.backoff_base * 2 ** (attempt - 1), self.backoff_max)
        remaining = self.max_total_wait - waited
        if base > remaining:
            return None
        return min(base * (1 + self.jitter * self.rng()), remaining)
