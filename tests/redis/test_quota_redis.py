"""RedisQuotaStore on a real Redis: all-or-nothing, exact across replicas, expiring, seeded."""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest

from deputy.errors import StoreUnavailable
from deputy.policy.quota import SECONDS_PER_DAY, QuotaDemand, utc_day
from deputy.store.redis import RedisConnection, RedisQuotaStore
from deputy.store.redis.quota import EXPIRY_MARGIN_SECONDS
from tests.redis.conftest import admin, delete_prefix
from tests.redis.workers import DAY, consume_burst, demand, replica_process

IDP = "https://idp.example"
Counts = Mapping[tuple[str, str, str], int]


@pytest.fixture
async def stores(redis_url: str, prefix: str) -> AsyncIterator[Callable[..., RedisQuotaStore]]:
    """Makes stores on the test's prefix; closes them after."""
    made: list[RedisQuotaStore] = []

    def make(**kw: Any) -> RedisQuotaStore:
        store = RedisQuotaStore(redis_url, prefix=prefix, **kw)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()


def value(key: str) -> int | None:
    with admin() as client:
        raw = client.get(key)
    return None if raw is None else int(raw)


def keys_under(prefix: str) -> set[str]:
    with admin() as client:
        return {k.decode() for k in client.scan_iter(match=f"{prefix}*", count=1000)}


async def test_consume_up_to_the_limit_then_refuse(
    stores: Callable[..., RedisQuotaStore],
) -> None:
    store = stores()
    d = demand(limit=3)
    assert [await store.consume(DAY, (d,)) for _ in range(4)] == [(), (), (), (d,)]
    assert await store.exceeded(DAY, (d,)) == (d,)
    assert value(store.counter_key(DAY, d)) == 3  # the refused request took nothing


async def test_exceeded_takes_nothing(stores: Callable[..., RedisQuotaStore]) -> None:
    store = stores()
    d = demand(limit=2)
    assert [await store.exceeded(DAY, (d,)) for _ in range(5)] == [()] * 5
    assert value(store.counter_key(DAY, d)) is None
    assert [await store.consume(DAY, (d,)) for _ in range(3)] == [(), (), (d,)]


async def test_all_or_nothing_across_categories(
    stores: Callable[..., RedisQuotaStore],
) -> None:
    store = stores()
    tickets, pricing, data = demand(5, "ticketing"), demand(2, "pricing"), demand(9, "data")
    assert await store.consume(DAY, (pricing,)) == ()
    assert await store.consume(DAY, (pricing,)) == ()
    # pricing is full: none of the three is taken, and only pricing is named
    assert await store.consume(DAY, (tickets, pricing, data)) == (pricing,)
    assert value(store.counter_key(DAY, tickets)) is None
    assert value(store.counter_key(DAY, data)) is None
    assert value(store.counter_key(DAY, pricing)) == 2
    # several over at once are all named, in request order
    big_tickets = QuotaDemand(IDP, "alice", "ticketing", 6, 5)
    assert await store.consume(DAY, (big_tickets, data, pricing)) == (big_tickets, pricing)
    assert await store.consume(DAY, (tickets, data)) == ()
    assert value(store.counter_key(DAY, tickets)) == 1
    assert value(store.counter_key(DAY, data)) == 1


async def test_amounts_and_repeated_counters_add_up(
    stores: Callable[..., RedisQuotaStore],
) -> None:
    store = stores()
    three = QuotaDemand(IDP, "alice", "ticketing", 3, 5)
    assert await store.consume(DAY, (three,)) == ()
    assert await store.consume(DAY, (three,)) == (three,)
    two = QuotaDemand(IDP, "alice", "ticketing", 2, 5)
    # the same counter twice in one request counts twice
    one = QuotaDemand(IDP, "alice", "ticketing", 1, 5)
    assert await store.consume(DAY, (one, one, one)) == (one, one, one)
    assert await store.consume(DAY, (two,)) == ()
    assert value(store.counter_key(DAY, two)) == 5


async def test_counters_are_per_user_issuer_and_category(
    stores: Callable[..., RedisQuotaStore],
) -> None:
    store = stores()
    alice = demand(1)
    asserted = QuotaDemand("spiffe://prod.example/agents/billing", "alice", "ticketing", 1, 1)
    bob = demand(1, user="bob")
    other = demand(1, category="pricing")
    for d in (alice, asserted, bob, other):
        assert await store.consume(DAY, (d,)) == ()
        assert await store.consume(DAY, (d,)) == (d,)
    assert len({store.counter_key(DAY, d) for d in (alice, asserted, bob, other)}) == 4


async def test_key_layout_is_unambiguous(
    stores: Callable[..., RedisQuotaStore], prefix: str
) -> None:
    store = stores()
    tricky = QuotaDemand("https://idp:8443/a", "x:y", "c%3A", 1, 9)
    assert (
        store.counter_key(7, tricky) == f"{prefix}quota:7:https%3A%2F%2Fidp%3A8443%2Fa:x%3Ay:c%253A"
    )
    # ':' inside a part can never make two users share a counter
    a = QuotaDemand(IDP, "u:v", "w", 1, 1)
    b = QuotaDemand(IDP, "u", "v:w", 1, 1)
    assert store.counter_key(7, a) != store.counter_key(7, b)
    assert await store.consume(DAY, (a,)) == () and await store.consume(DAY, (b,)) == ()
    assert store.marker_key(7) == f"{prefix}quota:7:seeded"


async def test_refund_gives_back_and_never_goes_below_zero(
    stores: Callable[..., RedisQuotaStore],
) -> None:
    store = stores()
    d = QuotaDemand(IDP, "alice", "ticketing", 2, 3)
    assert await store.consume(DAY, (d,)) == ()
    await store.refund(DAY, (d,))
    assert value(store.counter_key(DAY, d)) == 0
    await store.refund(DAY, (d,))
    assert value(store.counter_key(DAY, d)) == 0
    with admin() as client:
        assert client.expiretime(store.counter_key(DAY, d)) == store.expires_at(DAY)  # kept
    # a refund of a counter that does not exist creates nothing
    await store.refund(DAY, (demand(3, user="nobody"),))
    assert value(store.counter_key(DAY, demand(3, user="nobody"))) is None
    assert await store.consume(DAY, (d,)) == ()


async def test_nothing_to_count_needs_no_redis(closed_port: int) -> None:
    store = RedisQuotaStore(f"redis://127.0.0.1:{closed_port}/0")
    assert await store.consume(DAY, ()) == ()
    assert await store.exceeded(DAY, ()) == ()
    await store.refund(DAY, ())


async def test_every_key_of_a_day_expires_after_the_day_ends(
    stores: Callable[..., RedisQuotaStore], prefix: str
) -> None:
    store = stores(seed=lambda day: {(IDP, "bob", "ticketing"): 1})
    assert store.expires_at(DAY) == (DAY + 1) * SECONDS_PER_DAY + EXPIRY_MARGIN_SECONDS
    assert await store.consume(DAY, (demand(5),)) == ()
    with admin() as client:
        for key in keys_under(prefix):
            assert client.expiretime(key) == store.expires_at(DAY), key


async def test_a_day_rolls_over_to_fresh_counters(
    stores: Callable[..., RedisQuotaStore], prefix: str
) -> None:
    """Each day has counters of its own; the old day's vanish when they expire."""
    now = time.time()
    today = utc_day(now)
    # The margin that makes yesterday's keys expire 1.5 s from now.
    margin = round(now - today * SECONDS_PER_DAY + 1.5)
    store = stores(expiry_margin=margin)
    d = demand(1)
    assert await store.consume(today - 1, (d,)) == ()
    assert await store.consume(today - 1, (d,)) == (d,)
    assert await store.consume(today, (d,)) == ()  # a new day: a fresh counter
    yesterday = store.counter_key(today - 1, d)
    assert value(yesterday) == 1
    deadline = time.monotonic() + 5
    while value(yesterday) is not None:
        assert time.monotonic() < deadline, "yesterday's counter did not expire"
        await asyncio.sleep(0.1)
    # A replica whose clock still says yesterday cannot count from zero: it fails closed.
    with pytest.raises(StoreUnavailable):
        await store.consume(today - 1, (d,))
    assert value(yesterday) is None


async def test_script_is_loaded_again_after_a_script_flush(
    stores: Callable[..., RedisQuotaStore],
) -> None:
    """EVALSHA answers NOSCRIPT after Redis restarts or SCRIPT FLUSH: EVAL runs it."""
    store = stores()
    d = demand(2)
    assert await store.consume(DAY, (d,)) == ()
    with admin() as client:
        client.script_flush()
    assert await store.consume(DAY, (d,)) == ()
    assert await store.consume(DAY, (d,)) == (d,)


# --- exact under concurrency --------------------------------------------------------------


async def test_many_concurrent_requests_on_three_replicas_get_exactly_the_limit(
    stores: Callable[..., RedisQuotaStore],
) -> None:
    replicas = [stores() for _ in range(3)]
    granted = await consume_burst(replicas, 40, (demand(50),))
    assert granted == 50
    assert value(replicas[0].counter_key(DAY, demand(50))) == 50


def test_three_replicas_in_threads_with_loops_of_their_own_get_exactly_the_limit(
    redis_url: str, prefix: str
) -> None:
    granted: list[int] = []
    barrier = threading.Barrier(3)

    def replica() -> None:
        async def run() -> int:
            # Exactness is under test here, not the deadline (test_faults_redis.py): three
            # event loops in one process on a loaded machine can take longer than 0.5 s.
            store = RedisQuotaStore(redis_url, prefix=prefix, timeout=1.0)
            try:
                await store.connection.ping()
                barrier.wait()
                return await consume_burst([store], 30, (demand(41),))
            finally:
                await store.aclose()

        granted.append(asyncio.run(run()))

    threads = [threading.Thread(target=replica) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 3 and sum(granted) == 41


def test_replicas_in_several_processes_get_exactly_the_limit(redis_url: str, prefix: str) -> None:
    processes, instances, attempts, limit = 3, 2, 25, 37
    start_at = time.time() + 4  # after every process has started and connected
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=spawn) as pool:
        futures = [
            pool.submit(
                replica_process, redis_url, prefix, instances, attempts, limit, start_at, DAY
            )
            for _ in range(processes)
        ]
        granted = [f.result(timeout=60) for f in futures]
    assert sum(granted) == limit, granted
    assert value(RedisQuotaStore(redis_url, prefix=prefix).counter_key(DAY, demand(limit))) == limit


async def test_all_or_nothing_holds_under_concurrency(
    stores: Callable[..., RedisQuotaStore],
) -> None:
    """Requests taking two categories: the tighter one decides, the other is never
    taken by a refused request."""
    replicas = [stores() for _ in range(3)]
    tight, loose = demand(20, "ticketing"), demand(1000, "data")
    granted = await consume_burst(replicas, 30, (tight, loose))
    assert granted == 20
    assert value(replicas[0].counter_key(DAY, tight)) == 20
    assert value(replicas[0].counter_key(DAY, loose)) == 20


# --- seeding from the audit log -----------------------------------------------------------


class AuditCounts:
    """What an audit log reader's ``issued_counts`` would say, counting its calls."""

    def __init__(self, counts: Counts, *, delay: float = 0.0) -> None:
        self.counts = dict(counts)
        self.delay = delay
        self.calls: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, day: int) -> Counts:
        with self._lock:
            self.calls.append(day)
        time.sleep(self.delay)
        return dict(self.counts)


async def test_a_day_is_seeded_from_the_audit_log_before_anything_is_taken(
    stores: Callable[..., RedisQuotaStore],
) -> None:
    audit = AuditCounts({(IDP, "alice", "ticketing"): 3, (IDP, "bob", "pricing"): 7})
    store = stores(seed=audit)
    d = demand(5)
    assert [await store.consume(DAY, (d,)) for _ in range(3)] == [(), (), (d,)]
    assert audit.calls == [DAY]  # once for the day, not per request
    bob_at_8, bob_at_7 = demand(8, "pricing", "bob"), demand(7, "pricing", "bob")
    assert await store.exceeded(DAY, (bob_at_8,)) == ()  # 7 seeded + 1 fits under 8
    assert await store.exceeded(DAY, (bob_at_7,)) == (bob_at_7,)
    assert value(store.marker_key(DAY)) == 2  # the marker notes how many counters it seeded


async def test_a_redis_that_lost_its_counters_is_seeded_again(
    stores: Callable[..., RedisQuotaStore], prefix: str
) -> None:
    """Redis restarted empty mid-day: the users' counts come back from the audit log."""
    audit = AuditCounts({})
    store = stores(seed=audit)
    d = demand(4)
    for _ in range(3):
        assert await store.consume(DAY, (d,)) == ()
        audit.counts[d.key] = audit.counts.get(d.key, 0) + 1  # each was recorded
    assert delete_prefix(prefix) >= 2  # counter and marker gone, as after a restart
    assert await store.consume(DAY, (d,)) == ()  # 3 recounted + 1 = the limit
    assert await store.consume(DAY, (d,)) == (d,)
    assert audit.calls == [DAY, DAY]


async def test_replicas_seed_a_day_once_and_stay_exact(
    stores: Callable[..., RedisQuotaStore],
) -> None:
    audit = AuditCounts({(IDP, "alice", "ticketing"): 5}, delay=0.3)
    replicas = [stores(seed=audit) for _ in range(3)]
    granted = await consume_burst(replicas, 10, (demand(12),))
    assert granted == 7
    assert audit.calls == [DAY]  # one replica seeded under the lock; the others waited


async def test_waiting_for_another_replicas_seed_fails_closed_within_a_second(
    stores: Callable[..., RedisQuotaStore],
) -> None:
    """A replica that died while seeding holds the lock until it expires: 503 meanwhile."""
    audit = AuditCounts({})
    store = stores(seed=audit)
    with admin() as client:
        client.set(store.lock_key(DAY), "a-dead-replica", ex=30)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await store.consume(DAY, (demand(3),))
    assert time.monotonic() - started < 1.0
    assert audit.calls == []
    with admin() as client:
        client.delete(store.lock_key(DAY))  # as when it expires
    assert await store.consume(DAY, (demand(3),)) == ()
    assert audit.calls == [DAY]


async def test_a_seed_that_fails_fails_closed_and_releases_the_lock(
    stores: Callable[..., RedisQuotaStore],
) -> None:
    broken = True

    def seed(day: int) -> Counts:
        if broken:
            raise StoreUnavailable("audit store unavailable")
        return {(IDP, "alice", "ticketing"): 2}

    store = stores(seed=seed)
    with pytest.raises(StoreUnavailable):
        await store.consume(DAY, (demand(3),))
    assert value(store.lock_key(DAY)) is None and value(store.marker_key(DAY)) is None
    broken = False
    assert await store.consume(DAY, (demand(3),)) == ()
    assert await store.consume(DAY, (demand(3),)) == (demand(3),)


async def test_a_refund_while_the_day_is_unseeded_changes_nothing(
    stores: Callable[..., RedisQuotaStore], prefix: str
) -> None:
    """The seed counts only recorded credentials: a refunded request is not among them."""
    store = stores(seed=AuditCounts({(IDP, "alice", "ticketing"): 2}))
    await store.refund(DAY, (demand(3),))
    assert keys_under(prefix) == set()
    assert await store.consume(DAY, (demand(3),)) == ()
    assert value(store.counter_key(DAY, demand(3))) == 3


async def test_seeding_keeps_the_larger_count(
    stores: Callable[..., RedisQuotaStore],
) -> None:
    """A counter that survived (only the marker was lost) keeps reservations not yet
    recorded: the seed never lowers it, and seeding twice never adds up."""
    store = stores(seed=AuditCounts({(IDP, "alice", "ticketing"): 2, (IDP, "bob", "ticketing"): 4}))
    alice, bob = demand(9), demand(9, user="bob")
    with admin() as client:
        client.set(store.counter_key(DAY, alice), 5)
        client.set(store.counter_key(DAY, bob), 1)
    assert await store.exceeded(DAY, (alice, bob)) == ()
    assert value(store.counter_key(DAY, alice)) == 5
    assert value(store.counter_key(DAY, bob)) == 4
    with admin() as client:
        client.delete(store.marker_key(DAY))
    assert await store.exceeded(DAY, (alice, bob)) == ()
    assert value(store.counter_key(DAY, alice)) == 5
    assert value(store.counter_key(DAY, bob)) == 4


async def test_a_large_day_is_seeded_in_batches(stores: Callable[..., RedisQuotaStore]) -> None:
    counts = {(IDP, f"user-{i}", "ticketing"): 1 + i % 3 for i in range(1234)}
    store = stores(seed=AuditCounts(counts))
    assert await store.consume(DAY, (demand(3, user="user-0"),)) == ()
    assert await store.consume(DAY, (demand(3, user="user-2"),)) == (demand(3, user="user-2"),)
    assert value(store.marker_key(DAY)) == 1234
    assert value(store.counter_key(DAY, demand(1, user="user-1233"))) == 1


async def test_a_shared_connection_serves_several_stores(redis_url: str, prefix: str) -> None:
    connection = RedisConnection(redis_url)
    try:
        a = RedisQuotaStore(connection, prefix=prefix)
        b = RedisQuotaStore(connection, prefix=prefix)
        assert await a.consume(DAY, (demand(1),)) == ()
        assert await b.consume(DAY, (demand(1),)) == (demand(1),)
    finally:
        await connection.aclose()


def test_bad_urls_and_timeouts_are_refused() -> None:
    from deputy.errors import ConfigError

    with pytest.raises(ConfigError, match="redis://"):
        RedisQuotaStore("http://127.0.0.1:6379")
    with pytest.raises(ConfigError, match=r"at most 1\.0 s"):
        RedisQuotaStore("redis://127.0.0.1:6379", timeout=5)
    connection = RedisConnection("redis://user:s3cret@127.0.0.1:6379/2")
    assert "s3cret" not in repr(connection) and "user" not in repr(connection)
