from __future__ import annotations

import asyncio
import threading

from deputy.policy.quota import MemoryQuotaStore, QuotaDemand, seconds_until_next_day, utc_day


def demand(user: str = "alice", category: str = "ticketing", amount: int = 1, limit: int = 3):  # type: ignore[no-untyped-def]
    return QuotaDemand("https://idp.example", user, category, amount, limit)


async def test_consume_up_to_limit_then_refuse() -> None:
    store = MemoryQuotaStore(lambda day: {})
    assert [await store.consume(1, (demand(),)) for _ in range(4)][-1] == (demand(),)
    assert await store.exceeded(1, (demand(),)) == (demand(),)


async def test_all_or_nothing_across_categories() -> None:
    store = MemoryQuotaStore(lambda day: {("https://idp.example", "alice", "pricing"): 3})
    over = await store.consume(1, (demand(category="ticketing"), demand(category="pricing")))
    assert over == (demand(category="pricing"),)
    # ticketing was not taken: three more still fit
    assert all([await store.consume(1, (demand(),)) == () for _ in range(3)])


async def test_seeded_from_the_audit_and_reset_each_utc_day() -> None:
    seen: list[int] = []

    def seed(day: int) -> dict[tuple[str, str, str], int]:
        seen.append(day)
        return {("https://idp.example", "alice", "ticketing"): 3} if day == 1 else {}

    store = MemoryQuotaStore(seed)
    assert await store.consume(1, (demand(),)) == (demand(),)
    assert await store.consume(2, (demand(),)) == ()
    assert seen == [1, 2]


async def test_seeding_does_not_block_the_event_loop() -> None:
    """The seed (a read of the audit database) runs in a thread: the loop keeps serving."""
    release = threading.Event()

    def slow_seed(day: int) -> dict[tuple[str, str, str], int]:
        release.wait(5)
        return {}

    store = MemoryQuotaStore(slow_seed)
    consuming = asyncio.ensure_future(store.consume(1, (demand(),)))
    await asyncio.sleep(0.05)  # the loop runs while the seed waits
    assert not consuming.done()
    release.set()
    assert await consuming == ()


async def test_concurrent_first_requests_of_a_day_count_exactly() -> None:
    """Several requests may read the seed at once; the day is installed once, then counted."""
    store = MemoryQuotaStore(lambda day: {("https://idp.example", "alice", "ticketing"): 1})
    results = await asyncio.gather(*(store.consume(1, (demand(),)) for _ in range(10)))
    assert sum(r == () for r in results) == 2  # 1 seeded + 2 taken = the limit of 3


async def test_refund_gives_back() -> None:
    store = MemoryQuotaStore(lambda day: {})
    d = demand(amount=3)
    assert await store.consume(1, (d,)) == ()
    await store.refund(1, (d,))
    assert await store.consume(1, (d,)) == ()


def test_concurrent_consumers_never_pass_the_limit() -> None:
    store = MemoryQuotaStore(lambda day: {})
    granted = []
    barrier = threading.Barrier(16)

    def worker() -> None:
        async def run() -> None:
            for _ in range(50):
                if await store.consume(1, (demand(limit=100),)) == ():
                    granted.append(1)

        barrier.wait()
        asyncio.run(run())

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 100


def test_utc_day_boundaries() -> None:
    assert utc_day(86_399.9) == 0 and utc_day(86_400) == 1
    assert seconds_until_next_day(86_400 - 10) == 10
    assert seconds_until_next_day(86_400) == 86_400
