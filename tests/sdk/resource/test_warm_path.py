"""The verified-token cache: the same token again skips the signature, never the other checks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from deputy.clock import FakeClock
from deputy.identity import jose
from deputy.sdk.errors import CredentialRejected
from deputy.sdk.resource import DeputyVerifier
from deputy.sdk.resource import verifier as verifier_module
from tests.unit.identity.tokens import ec_key

from .local import FEED_PATH, JWKS_PATH, LocalBroker


@pytest.fixture
def signatures(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts signature verifications (the cold path)."""
    seen: list[str] = []
    real: Callable[..., None] = jose.verify_signature

    def counting(parsed: Any, key: Any, algorithms: frozenset[str]) -> None:
        seen.append(parsed.claims["jti"])
        real(parsed, key, algorithms)

    monkeypatch.setattr(verifier_module, "verify_signature", counting)
    return seen


async def test_the_same_token_again_is_not_verified_again(
    broker: LocalBroker, verifier: DeputyVerifier, signatures: list[str]
) -> None:
    token = broker.mint()
    first = await verifier.verify(token)
    again = await verifier.verify("".join(token))  # another str object, same text
    assert again is first
    assert signatures == ["jti-child"]
    assert broker.count(JWKS_PATH) == 1 and broker.count(FEED_PATH) == 1


async def test_a_cached_token_still_expires(
    broker: LocalBroker, verifier: DeputyVerifier, clock: FakeClock, signatures: list[str]
) -> None:
    token = broker.mint(broker.claims(exp=int(clock.now()) + 3))
    assert await verifier.verify(token)
    clock.advance(2.9)
    assert await verifier.verify(token)
    clock.advance(0.1)
    with pytest.raises(CredentialRejected, match="token expired"):
        await verifier.verify(token)
    assert signatures == ["jti-child"]


async def test_the_cache_is_bounded_and_drops_its_oldest(
    broker: LocalBroker, signatures: list[str]
) -> None:
    client = broker.client()
    verifier = broker.verifier(http_client=client, cache_size=2)
    try:
        a, b, c = (broker.mint(broker.claims(jti=j)) for j in "abc")
        for token in (a, b, c, b, c, a):
            await verifier.verify(token)
        assert signatures == ["a", "b", "c", "a"]
    finally:
        await verifier.aclose()
        await client.aclose()


async def test_cache_size_zero_verifies_every_time(
    broker: LocalBroker, signatures: list[str]
) -> None:
    client = broker.client()
    verifier = broker.verifier(http_client=client, cache_size=0)
    try:
        token = broker.mint()
        for _ in range(3):
            await verifier.verify(token)
        assert signatures == ["jti-child"] * 3
    finally:
        await verifier.aclose()
        await client.aclose()


async def test_a_refused_token_is_not_remembered(
    broker: LocalBroker, verifier: DeputyVerifier, signatures: list[str]
) -> None:
    forged = broker.mint(key=ec_key("forger"))
    for _ in range(2):
        with pytest.raises(CredentialRejected, match="signature does not verify"):
            await verifier.verify(forged)
    assert signatures == ["jti-child", "jti-child"]


async def test_a_revocation_after_caching_is_honoured_at_the_next_call(
    broker: LocalBroker, verifier: DeputyVerifier, signatures: list[str]
) -> None:
    token = broker.mint()
    other = broker.mint(broker.claims(jti="other", execution_id="exe_2", delegated_from=[]))
    assert await verifier.verify(token) and await verifier.verify(other)
    broker.revoke("execution_id", "exe_1")
    await verifier.refresh()
    with pytest.raises(CredentialRejected, match="revoked"):
        await verifier.verify(token)
    assert (await verifier.verify(other)).jti == "other"
    assert signatures == ["jti-child", "other"]
