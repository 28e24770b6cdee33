"""UserVerifier: the user comes from a verified token of a configured issuer."""

from __future__ import annotations

from typing import Any

import pytest

from deputy.clock import FakeClock
from deputy.errors import TokenRejected
from deputy.identity import (
    JwksCache,
    Principal,
    UserIssuerTrust,
    UserVerifier,
    VerifiedTokenCache,
)

from .conftest import Verifiers
from .tokens import (
    AUDIENCE,
    DEPUTY_ISSUER,
    DROP,
    NOW,
    USER_ISSUER,
    FakeKeySource,
    ec_key,
    key_set,
    rsa_key,
    sign,
    svid_claims,
    user_claims,
    with_header,
)


def user_token(claims: dict[str, Any] | None = None, **header: Any) -> str:
    header.setdefault("kid", "u1")
    header.setdefault("alg", "RS256")
    return sign(user_claims() if claims is None else claims, rsa_key("idp"), **header)


async def rejects(verifiers: Verifiers, token: Any, reason: str) -> None:
    with pytest.raises(TokenRejected) as caught:
        await verifiers.user.verify(token)
    assert reason in caught.value.reason, caught.value.reason


async def test_user_token_gives_a_principal(verifiers: Verifiers) -> None:
    principal = await verifiers.user.verify(user_token())
    assert principal == Principal(
        user_id="alice", issuer=USER_ISSUER, how="user_token", tier="gold", expires_at=NOW + 900
    )


async def test_ec_signed_user_token_and_no_tier(verifiers: Verifiers) -> None:
    token = sign(user_claims(tier=DROP), ec_key("idp"), kid="u2")
    assert (await verifiers.user.verify(token)).tier is None


@pytest.mark.parametrize("tier", [7, ["gold"], None, True, {"name": "gold"}])
async def test_tier_must_be_a_string(verifiers: Verifiers, tier: Any) -> None:
    await rejects(verifiers, user_token(user_claims(tier=tier)), "claim 'tier' is not a string")


@pytest.mark.parametrize(
    "iss",
    [USER_ISSUER + "/", USER_ISSUER.upper(), "https://login.example.com.evil", "https://login"],
    ids=["trailing-slash", "uppercase", "suffix", "prefix"],
)
async def test_issuer_is_compared_exactly(verifiers: Verifiers, iss: str) -> None:
    await rejects(verifiers, user_token(user_claims(iss=iss)), "unknown issuer")
    assert verifiers.user_source.fetches == 0


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"iss": DROP}, "token has no iss"),
        ({"iss": DEPUTY_ISSUER}, "issued by Deputy"),
        ({"sub": DROP}, "token has no sub"),
        ({"sub": ""}, "token has no sub"),
        ({"sub": "a" * 256}, "sub is longer than 255"),
        ({"aud": DROP}, "token has no aud"),
        ({"aud": "account"}, "audience does not include 'deputy'"),
        ({"aud": ["account", "api"]}, "audience does not include 'deputy'"),
        ({"exp": DROP}, "token has no exp"),
        ({"exp": NOW - 1}, "token expired"),
        ({"exp": "9999999999"}, "exp is not a number"),
        ({"nbf": NOW + 31}, "not yet valid"),
    ],
    ids=[
        "no-iss",
        "deputy-issuer",
        "no-sub",
        "empty-sub",
        "long-sub",
        "no-aud",
        "other-aud",
        "list-without-aud",
        "no-exp",
        "expired",
        "exp-string",
        "nbf-future",
    ],
)
async def test_claim_rejections(verifiers: Verifiers, changes: dict[str, Any], reason: str) -> None:
    await rejects(verifiers, user_token(user_claims(**changes)), reason)


async def test_audience_in_a_list_is_accepted(verifiers: Verifiers) -> None:
    await verifiers.user.verify(user_token(user_claims(aud=["account", AUDIENCE])))


@pytest.mark.parametrize("typ", ["dpop+jwt", "DPoP+JWT", "application/dpop+jwt"])
async def test_dpop_proof_is_not_a_user_token(verifiers: Verifiers, typ: str) -> None:
    await rejects(verifiers, user_token(typ=typ), "is not accepted here")


@pytest.mark.parametrize("alg", ["none", "NoNe"])
async def test_alg_none(verifiers: Verifiers, alg: str) -> None:
    await rejects(verifiers, with_header({"alg": alg}, user_claims()), "'none'")


async def test_workload_key_cannot_sign_user_tokens(verifiers: Verifiers) -> None:
    token = sign(user_claims(), ec_key("svid"), kid="u2")
    await rejects(verifiers, token, "signature does not verify")


async def test_alg_outside_allow_list(verifiers: Verifiers) -> None:
    await rejects(verifiers, with_header({"alg": "HS256", "kid": "u1"}, user_claims()), "HS256")


async def test_jwt_svid_is_not_a_user_token(verifiers: Verifiers) -> None:
    await rejects(verifiers, sign(svid_claims(), ec_key("svid")), "token has no iss")


async def test_unknown_kid(verifiers: Verifiers) -> None:
    await rejects(verifiers, user_token(kid="rotated-away"), "unknown key id")


async def test_cache(verifiers: Verifiers, clock: FakeClock) -> None:
    cache = VerifiedTokenCache(clock)
    source = FakeKeySource(key_set(("u1", rsa_key("idp"))))
    trust = UserIssuerTrust(USER_ISSUER, AUDIENCE, JwksCache(source, clock), tier_claim="tier")
    verifier = UserVerifier([trust], clock, cache=cache)
    token = user_token()
    first = await verifier.verify(token)
    clock.advance(600)  # past the key refresh interval: a real verification would fetch
    assert await verifier.verify(token) is first
    assert source.fetches == 1
    clock.advance(300)
    with pytest.raises(TokenRejected, match="token expired"):
        await verifier.verify(token)


def test_configuration_errors(clock: FakeClock) -> None:
    keys = JwksCache(FakeKeySource(key_set(("u1", rsa_key("idp")))), clock)
    with pytest.raises(ValueError, match="issuer"):
        UserIssuerTrust("", AUDIENCE, keys)
    with pytest.raises(ValueError, match="subset"):
        UserIssuerTrust(USER_ISSUER, AUDIENCE, keys, algorithms=frozenset({"none"}))
    trust = UserIssuerTrust(USER_ISSUER, AUDIENCE, keys)
    with pytest.raises(ValueError, match="configured twice"):
        UserVerifier([trust, trust], clock)
