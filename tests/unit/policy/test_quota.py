from __future__ import annotations

import threading

from deputy.policy.quota import MemoryQuotaStore, QuotaDemand, seconds_until_next_day, utc_day


def demand(user: str = "alice", category: str = "ticketing", amount: int = 1, limit: int = 3):  # type: ignore[no-untyped-def]
    return QuotaDemand("https://idp.example", user, category, amount, limit)


def test_consume_up_to_limit_then_refuse() -> None:
    store = MemoryQuotaStore(lambda day: {})
    assert [store.consume(1, (demand(),)) for _ in range(4)][-1] == (demand(),)
    assert store.exceeded(1, (demand(),)) == (demand(),)


def test_all_or_nothing_across_categories() -> None:
    store = MemoryQuotaStore(lambda day: {("https://idp.example", "alice", "pricing"): 3})
    over = store.consume(1, (demand(category="ticketing"), demand(category="pricing")))
    assert over == (demand(category="pricing"),)
    # ticketing was not taken: three more still fit
    assert all(store.consume(1, (demand(),)) == () for _ in range(3))


def test_seeded_from_the_audit_and_reset_each_utc_day() -> None:
    seen: list[int] = []

    def seed(day: int) -> dict[tuple[str, str, str], int]:
        seen.append(day)
        return {("https://idp.example", "alice", "ticketing"): 3} if day == 1 else {}

    store = MemoryQuotaStore(seed)
    assert store.consume(1, (demand(),)) == (demand(),)
    assert store.consume(2, (demand(),)) == ()
    assert seen == [1, 2]


def test_refund_gives_back() -> None:
    store = MemoryQuotaStore(lambda day: {})
    d = demand(amount=3)
    assert store.consume(1, (d,)) == ()
    store.refund(1, (d,))
    assert store.consume(1, (d,)) == ()


def test_concurrent_consumers_never_pass_the_limit() -> None:
    store = MemoryQuotaStore(lambda day: {})
    granted = []
    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        for _ in range(50):
            if store.consume(1, (demand(limit=100),)) == ():
                granted.append(1)

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
