"""JwksCache: refresh on age, rate-limited refetch on unknown kid, fail closed when stale."""

from __future__ import annotations

import asyncio

import pytest

from deputy.clock import FakeClock
from deputy.errors import TokenRejected
from deputy.identity import JwksCache, KeySet, KeySourceError

from .tokens import FakeKeySource, ec_key, key_set

ONE = key_set(("k1", ec_key("svid")))
ROTATED = key_set(("k1", ec_key("svid")), ("k2", ec_key("svid-next")))
DOWN = KeySourceError("https://idp.example/jwks: answered HTTP 503")


async def test_loads_on_first_use_and_reuses_until_refresh_interval(clock: FakeClock) -> None:
    source = FakeKeySource(ONE)
    cache = JwksCache(source, clock)
    assert await cache.key("k1") is ONE.get("k1")
    clock.advance(299)
    await cache.key("k1")
    assert source.fetches == 1
    clock.advance(1)
    await cache.key("k1")
    assert source.fetches == 2


async def test_unknown_kid_refetches_once_then_rejects(clock: FakeClock) -> None:
    source = FakeKeySource(ONE)
    cache = JwksCache(source, clock)
    await cache.load()
    clock.advance(31)
    with pytest.raises(TokenRejected, match="unknown key id"):
        await cache.key("random-1")
    assert source.fetches == 2
    clock.advance(10)
    with pytest.raises(TokenRejected, match="unknown key id"):
        await cache.key("random-2")
    assert source.fetches == 2  # within 30 s of the last fetch: no refetch
    clock.advance(20)
    with pytest.raises(TokenRejected, match="unknown key id"):
        await cache.key("random-3")
    assert source.fetches == 3


async def test_unknown_kid_right_after_load_does_not_refetch(clock: FakeClock) -> None:
    source = FakeKeySource(ONE)
    cache = JwksCache(source, clock)
    for kid in ("a", "b", "c"):
        with pytest.raises(TokenRejected, match="unknown key id"):
            await cache.key(kid)
    assert source.fetches == 1


async def test_rotated_key_is_found_by_refetch(clock: FakeClock) -> None:
    source = FakeKeySource(ONE, ROTATED)
    cache = JwksCache(source, clock)
    await cache.load()
    clock.advance(30)
    assert await cache.key("k2") is ROTATED.get("k2")
    assert await cache.key("k1") is ROTATED.get("k1")  # the previous key stays valid
    assert source.fetches == 2


async def test_failed_fetch_keeps_the_good_cache(clock: FakeClock) -> None:
    source = FakeKeySource(ONE, DOWN)
    cache = JwksCache(source, clock)
    await cache.load()
    clock.advance(301)
    assert await cache.key("k1") is ONE.get("k1")
    assert source.fetches == 2
    clock.advance(3600)
    assert await cache.key("k1") is ONE.get("k1")
    assert source.fetches == 3


@pytest.mark.parametrize(
    "failure",
    [DOWN, RuntimeError("bug in a source"), KeySet({})],
    ids=["source-error", "unexpected-exception", "empty-key-set"],
)
async def test_bad_fetches_never_replace_keys(clock: FakeClock, failure: object) -> None:
    source = FakeKeySource(ONE, failure)  # type: ignore[arg-type]
    cache = JwksCache(source, clock)
    await cache.load()
    clock.advance(301)
    assert await cache.key("k1") is ONE.get("k1")


async def test_fails_closed_past_max_staleness(clock: FakeClock) -> None:
    source = FakeKeySource(ONE, DOWN)
    cache = JwksCache(source, clock, max_staleness=3600)
    await cache.load()
    clock.advance(3600)
    await cache.key("k1")
    clock.advance(1)
    with pytest.raises(TokenRejected, match="stale"):
        await cache.key("k1")
    source.results = [ONE]
    clock.advance(30)
    assert await cache.key("k1") is ONE.get("k1")  # recovers once the source does


async def test_no_keys_at_all_is_a_rejection(clock: FakeClock) -> None:
    source = FakeKeySource(DOWN)
    cache = JwksCache(source, clock)
    with pytest.raises(TokenRejected, match="signing keys are unavailable"):
        await cache.key("k1")
    with pytest.raises(TokenRejected, match="signing keys are unavailable"):
        await cache.key("k1")
    assert source.fetches == 1  # a down source is not hammered


async def test_load_raises_on_failure(clock: FakeClock) -> None:
    with pytest.raises(KeySourceError, match="503"):
        await JwksCache(FakeKeySource(DOWN), clock).load()
    with pytest.raises(KeySourceError, match="no usable signing keys"):
        await JwksCache(FakeKeySource(KeySet({})), clock).load()
    with pytest.raises(KeySourceError, match="RuntimeError"):
        await JwksCache(FakeKeySource(RuntimeError("x")), clock).load()


async def test_kid_none_takes_the_only_key(clock: FakeClock) -> None:
    cache = JwksCache(FakeKeySource(ONE), clock)
    assert await cache.key(None) is ONE.get("k1")
    with pytest.raises(TokenRejected, match="unknown key id"):
        await JwksCache(FakeKeySource(ROTATED), clock).key(None)


class GatedSource:
    """A source whose fetch waits until the test opens the gate."""

    def __init__(self, result: KeySet) -> None:
        self.result = result
        self.gate = asyncio.Event()
        self.fetches = 0

    async def fetch(self) -> KeySet:
        self.fetches += 1
        await self.gate.wait()
        return self.result


async def test_concurrent_callers_share_one_fetch(clock: FakeClock) -> None:
    source = GatedSource(ONE)
    cache = JwksCache(source, clock)
    callers = [asyncio.create_task(cache.key("k1")) for _ in range(20)]
    await asyncio.sleep(0)
    source.gate.set()
    keys = await asyncio.gather(*callers)
    assert source.fetches == 1
    assert all(key is ONE.get("k1") for key in keys)


async def test_concurrent_unknown_kids_share_one_refetch(clock: FakeClock) -> None:
    source = GatedSource(ONE)
    source.gate.set()
    cache = JwksCache(source, clock)
    await cache.load()
    clock.advance(60)
    source.gate.clear()
    callers = [asyncio.create_task(cache.key(f"random-{i}")) for i in range(20)]
    await asyncio.sleep(0)
    source.gate.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert source.fetches == 2
    assert all(isinstance(result, TokenRejected) for result in results)


async def test_known_kid_does_not_wait_for_a_slow_refresh(clock: FakeClock) -> None:
    source = GatedSource(ONE)
    source.gate.set()
    cache = JwksCache(source, clock)
    await cache.load()
    clock.advance(301)
    source.gate.clear()
    refresher = asyncio.create_task(cache.key("k1"))
    for _ in range(3):  # the fetch starts within a few loop turns
        await asyncio.sleep(0)
    assert source.fetches == 2  # the refresh is in flight...
    assert await asyncio.wait_for(cache.key("k1"), 1) is ONE.get("k1")  # ...and not waited on
    source.gate.set()
    await refresher


class HangingSource:
    """A key endpoint that accepts the connection and never finishes answering."""

    async def fetch(self) -> KeySet:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_fetch_that_never_ends_is_cut_off_and_cached_keys_stay(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deputy.identity import jwks

    monkeypatch.setattr(jwks, "FETCH_DEADLINE_SECONDS", 0.05)
    cache = JwksCache(FakeKeySource(ONE), clock)
    await cache.load()
    cache._source = HangingSource()
    clock.advance(31)
    with pytest.raises(TokenRejected, match="unknown key id"):
        await cache.key("k9")  # refetch attempted, cut off at the deadline
    assert await cache.key("k1") is ONE.get("k1")
    with pytest.raises(KeySourceError, match="no answer within the deadline"):
        await cache.load()
