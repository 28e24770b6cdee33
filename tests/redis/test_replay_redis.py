"""RedisReplayCache on a real Redis: one first use across replicas, expiry, its callers."""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from deputy.clock import FakeClock, SystemClock
from deputy.errors import InvalidClient
from deputy.identity import JwksCache
from deputy.identity.replay import ReplayGuard
from deputy.oauth.client_auth import JWT_BEARER_ASSERTION, ClientAuthenticator, ClientEntry
from deputy.oauth.form import Form
from deputy.sdk.dpop import DpopKey
from deputy.store.redis import RedisConnection, RedisReplayCache
from deputy.tokens.dpop import DpopVerifier
from tests.redis.conftest import admin
from tests.unit.identity.tokens import NOW, FakeKeySource, ec_key, key_set, sign


@pytest.fixture
async def guards(redis_url: str, prefix: str) -> AsyncIterator[Callable[..., RedisReplayCache]]:
    made: list[RedisReplayCache] = []

    def make(name: str = "dpop", **kw: Any) -> RedisReplayCache:
        guard = RedisReplayCache(redis_url, name=name, prefix=prefix, **kw)
        made.append(guard)
        return guard

    yield make
    for guard in made:
        await guard.aclose()


def pttl(key: str) -> int:
    with admin() as client:
        return int(client.pttl(key))


async def test_an_id_is_used_once_across_replicas(guards: Callable[..., RedisReplayCache]) -> None:
    a, b = guards(), guards()
    later = time.time() + 60
    assert await a.first_use("jkt:1", later) is True
    assert await b.first_use("jkt:1", later) is False
    assert await a.first_use("jkt:1", later) is False
    assert await b.first_use("jkt:2", later) is True
    assert not a.full and not b.full


async def test_concurrent_uses_of_one_id_on_two_replicas_let_exactly_one_through(
    guards: Callable[..., RedisReplayCache],
) -> None:
    a, b = guards(), guards()
    later = time.time() + 60
    answers = await asyncio.gather(*(g.first_use("same", later) for g in (a, b) * 25))
    assert answers.count(True) == 1


async def test_guards_with_other_names_are_apart(guards: Callable[..., RedisReplayCache]) -> None:
    dpop, clients = guards("dpop"), guards("client_assertion")
    later = time.time() + 60
    assert await dpop.first_use("x:1", later) is True
    assert await clients.first_use("x:1", later) is True
    assert dpop.key("x:1") != clients.key("x:1")


async def test_keys_are_hashes_of_the_ids(
    guards: Callable[..., RedisReplayCache], prefix: str
) -> None:
    guard = guards("dpop")
    hostile = "jkt:\x00\r\nDEL *" + "x" * 300
    assert await guard.first_use(hostile, time.time() + 60) is True
    digest = hashlib.sha256(hostile.encode()).hexdigest()
    assert guard.key(hostile) == f"{prefix}replay:dpop:{digest}"
    with admin() as client:
        assert [k.decode() for k in client.scan_iter(match=f"{prefix}*")] == [guard.key(hostile)]


async def test_an_id_is_remembered_until_it_expires_plus_the_margin(
    guards: Callable[..., RedisReplayCache],
) -> None:
    with_margin = guards(skew_margin=60)
    assert await with_margin.first_use("a", time.time() + 10) is True
    assert 69_000 < pttl(with_margin.key("a")) <= 70_000

    exact = guards(skew_margin=0)
    assert await exact.first_use("b", time.time() + 0.3) is True
    assert 0 < pttl(exact.key("b")) <= 300
    assert await exact.first_use("b", time.time() + 0.3) is False
    deadline = time.monotonic() + 3
    while pttl(exact.key("b")) != -2:  # -2: the key is gone
        assert time.monotonic() < deadline, "the id was not forgotten"
        await asyncio.sleep(0.05)
    assert await exact.first_use("b", time.time() + 0.3) is True  # expired: a new use


async def test_an_expired_id_is_refused_and_not_stored(
    guards: Callable[..., RedisReplayCache], prefix: str
) -> None:
    guard = guards(clock=FakeClock(NOW))
    assert await guard.first_use("old", NOW) is False
    assert await guard.first_use("older", NOW - 5) is False
    for bad in (math.inf, math.nan):
        with pytest.raises(ValueError, match="finite"):
            await guard.first_use("x", bad)
    with admin() as client:
        assert list(client.scan_iter(match=f"{prefix}*")) == []


async def test_the_clock_passed_in_decides_the_lifetime(
    guards: Callable[..., RedisReplayCache],
) -> None:
    guard = guards(clock=FakeClock(NOW), skew_margin=0)
    assert await guard.first_use("k", NOW + 5) is True
    assert 4_000 < pttl(guard.key("k")) <= 5_000


def test_it_is_a_replay_guard() -> None:
    guard: ReplayGuard = RedisReplayCache("redis://127.0.0.1:6379", name="dpop")
    assert guard.full is False
    with pytest.raises(ValueError, match="name"):
        RedisReplayCache("redis://127.0.0.1:6379", name="a:b")


# --- the callers: DPoP proofs and client assertions, on two replicas ----------------------

URL = "https://deputy.internal/oauth2/token"


async def test_a_dpop_proof_is_accepted_by_one_replica_only(
    guards: Callable[..., RedisReplayCache],
) -> None:
    from deputy.errors import TokenRejected

    clock = SystemClock()
    one = DpopVerifier(clock, guards("dpop"))
    two = DpopVerifier(clock, guards("dpop"))
    key = DpopKey(clock)
    proof = key.proof("POST", URL)
    assert (await one.verify(proof, method="POST", url=URL)).jkt == key.jkt
    with pytest.raises(TokenRejected, match="already used"):
        await two.verify(proof, method="POST", url=URL)
    assert (await two.verify(key.proof("POST", URL), method="POST", url=URL)).jkt == key.jkt


def _authenticator(connection: RedisConnection, prefix: str) -> ClientAuthenticator:
    clock = FakeClock(NOW)
    source = FakeKeySource(key_set(("c1", ec_key("client-rs-jwt"))))
    entry = ClientEntry("rs-jwt", frozenset(), False, keys=JwksCache(source, clock))
    guard = RedisReplayCache(connection, name="client_assertion", prefix=prefix, clock=clock)
    return ClientAuthenticator(
        [entry], clock, audiences=frozenset({"https://deputy.example"}), replay=guard
    )


def _assertion(jti: str) -> Form:
    claims = {
        "iss": "rs-jwt",
        "sub": "rs-jwt",
        "aud": "https://deputy.example",
        "exp": NOW + 60,
        "iat": NOW,
        "jti": jti,
    }
    token = sign(claims, ec_key("client-rs-jwt"), kid="c1")
    return Form({"client_assertion_type": (JWT_BEARER_ASSERTION,), "client_assertion": (token,)})


async def test_a_client_assertion_is_accepted_by_one_replica_only(
    redis_url: str, prefix: str
) -> None:
    connection = RedisConnection(redis_url)
    try:
        one, two = _authenticator(connection, prefix), _authenticator(connection, prefix)
        assert (await one.authenticate(None, _assertion("j-1"))).name == "rs-jwt"
        with pytest.raises(InvalidClient) as refused:
            await two.authenticate(None, _assertion("j-1"))
        assert "already used" in refused.value.debug
        assert (await two.authenticate(None, _assertion("j-2"))).name == "rs-jwt"
    finally:
        await connection.aclose()
