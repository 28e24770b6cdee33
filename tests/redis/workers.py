"""Replicas in other processes: each runs store instances of its own against one Redis."""

from __future__ import annotations

import asyncio
import time

from deputy.policy.quota import QuotaDemand, utc_day
from deputy.store.redis import RedisQuotaStore

DAY = utc_day(time.time())  # today: the keys of a day that has ended expire at once


def demand(limit: int, category: str = "ticketing", user: str = "alice") -> QuotaDemand:
    return QuotaDemand("https://idp.example", user, category, 1, limit)


async def consume_burst(
    stores: list[RedisQuotaStore],
    attempts: int,
    demands: tuple[QuotaDemand, ...],
    day: int = DAY,
) -> int:
    """``attempts`` concurrent requests on each store; how many were granted."""
    results = await asyncio.gather(
        *(store.consume(day, demands) for store in stores for _ in range(attempts))
    )
    return sum(over == () for over in results)


def replica_process(
    url: str, prefix: str, instances: int, attempts: int, limit: int, start_at: float, day: int
) -> int:
    """One process with ``instances`` stores, bursting at ``start_at`` (wall clock)."""

    async def run() -> int:
        # The longest deadline the store allows: exactness is under test, not the deadline.
        stores = [RedisQuotaStore(url, prefix=prefix, timeout=1.0) for _ in range(instances)]
        try:
            for store in stores:
                await store.connection.ping()  # connected before the start, to overlap
            await asyncio.sleep(max(0.0, start_at - time.time()))
            return await consume_burst(stores, attempts, (demand(limit),), day)
        finally:
            for store in stores:
                await store.aclose()

    return asyncio.run(run())
