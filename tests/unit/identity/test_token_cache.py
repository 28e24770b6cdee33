"""VerifiedTokenCache: hashed keys, expiry on the fake clock, bounded size."""

from __future__ import annotations

from deputy.clock import FakeClock
from deputy.identity import VerifiedTokenCache

from .tokens import NOW


def test_returns_value_until_expiry(clock: FakeClock) -> None:
    cache = VerifiedTokenCache(clock)
    value = object()
    cache.put("token-a", value, NOW + 10)
    assert cache.get("token-a") is value
    assert cache.get("token-b") is None
    clock.advance(9.9)
    assert cache.get("token-a") is value
    clock.advance(0.1)
    assert cache.get("token-a") is None
    assert len(cache) == 0


def test_already_expired_results_are_not_stored(clock: FakeClock) -> None:
    cache = VerifiedTokenCache(clock)
    cache.put("token", "v", NOW)
    assert len(cache) == 0


def test_never_stores_the_raw_token(clock: FakeClock) -> None:
    cache = VerifiedTokenCache(clock)
    token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
    cache.put(token, "result", NOW + 60)
    stored = cache._entries
    assert all(isinstance(key, bytes) and len(key) == 32 for key in stored)
    assert token not in repr(stored)
    assert token.encode() not in b"".join(stored)


def test_evicts_the_oldest_when_full(clock: FakeClock) -> None:
    cache = VerifiedTokenCache(clock, max_entries=3)
    for name in "abcd":
        cache.put(name, name, NOW + 60)
    assert len(cache) == 3
    assert cache.get("a") is None
    assert [cache.get(name) for name in "bcd"] == ["b", "c", "d"]


def test_put_again_refreshes_position(clock: FakeClock) -> None:
    cache = VerifiedTokenCache(clock, max_entries=2)
    cache.put("a", 1, NOW + 60)
    cache.put("b", 2, NOW + 60)
    cache.put("a", 3, NOW + 60)
    cache.put("c", 4, NOW + 60)
    assert cache.get("b") is None
    assert cache.get("a") == 3
