"""DeputyVerifier: every RFC 9068 §4 rule refuses with invalid_token; the typed result."""

from __future__ import annotations

from typing import Any

import pytest
from joserfc.jwk import OctKey

from deputy.clock import FakeClock
from deputy.identity.jose import MAX_TOKEN_BYTES
from deputy.sdk.errors import CredentialRejected
from deputy.sdk.resource import DeputyVerifier, VerifiedCredential
from deputy.sdk.resource.verifier import REQUIRED_CLAIMS
from tests.unit.identity.tokens import DROP, b64, dumps, ec_key, rsa_key, sign, with_header

from .local import AUDIENCE, ISSUER, JWKS_PATH, RESEARCH, SUPPORT, LocalBroker


async def rejected(verifier: DeputyVerifier, token: Any, reason: str) -> CredentialRejected:
    with pytest.raises(CredentialRejected) as caught:
        await verifier.verify(token)
    error = caught.value
    assert (error.error, error.status) == ("invalid_token", 401)
    assert reason in error.description, error.description
    if isinstance(token, str) and len(token) > 20:
        assert token not in error.description and token[-20:] not in error.description
    return error


async def test_a_deputy_credential_gives_who_and_for_whom(
    broker: LocalBroker, verifier: DeputyVerifier
) -> None:
    credential = await verifier.verify(broker.mint())
    assert credential == VerifiedCredential(
        user="alice",
        agent=RESEARCH,
        agent_instance=RESEARCH,
        execution_id="exe_1",
        actors=(RESEARCH, SUPPORT),
        scopes=frozenset({"accounts:read"}),
        jti="jti-child",
        audience=AUDIENCE,
        expires_at=int(broker.clock.now()) + 120,
        workflow="support-research",
        delegation="user_token",
        decision_id="dec_1",
        claims={},
    )
    assert credential.claims["delegated_from"] == ["jti-parent"]
    assert "claims" not in repr(credential) and "jti-parent" not in repr(credential)
    with pytest.raises(TypeError):
        credential.claims["sub"] = "mallory"  # type: ignore[index]


async def test_an_agent_acting_as_itself_is_its_only_actor(
    broker: LocalBroker, verifier: DeputyVerifier
) -> None:
    token = broker.mint(
        broker.claims(
            sub="spiffe://prod.example/agents/price-sync",
            client_id="spiffe://prod.example/agents/price-sync",
            act=DROP,
            delegation="none",
            scope="rates:read accounts:read",
            delegated_from=DROP,
        )
    )
    credential = await verifier.verify(token)
    assert credential.actors == ("spiffe://prod.example/agents/price-sync",)
    assert credential.scopes == {"rates:read", "accounts:read"}
    assert credential.delegation == "none"


async def test_a_credential_without_scope_has_no_scopes(
    broker: LocalBroker, verifier: DeputyVerifier
) -> None:
    credential = await verifier.verify(broker.mint(broker.claims(scope=DROP)))
    assert credential.scopes == frozenset()
    assert credential.missing_scopes(["a", "b"]) == ("a", "b")


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt", "Application/At+Jwt"])
async def test_typ_at_jwt_in_any_case_with_or_without_application(
    broker: LocalBroker, verifier: DeputyVerifier, typ: str
) -> None:
    assert (await verifier.verify(broker.mint(typ=typ))).user == "alice"


@pytest.mark.parametrize("typ", [DROP, "JWT", "jwt", "at+jwt; x=1", "application/jwt", 1, None])
async def test_any_other_typ_is_refused(
    broker: LocalBroker, verifier: DeputyVerifier, typ: Any
) -> None:
    token = broker.mint(typ=typ) if typ is not DROP else _without_typ(broker)
    await rejected(verifier, token, "token type must be at+jwt")


def _without_typ(broker: LocalBroker) -> str:
    return sign(broker.claims(), broker.keys["k1"], kid="k1")


@pytest.mark.parametrize(
    "iss", ["https://deputy.example/", "https://DEPUTY.example", "https://other.example", 1]
)
async def test_iss_must_be_the_issuer_exactly(
    broker: LocalBroker, verifier: DeputyVerifier, iss: Any
) -> None:
    await rejected(verifier, broker.mint(broker.claims(iss=iss)), f"not issued by {ISSUER}")


@pytest.mark.parametrize(
    ("aud", "accepted"),
    [
        (AUDIENCE, True),
        ([AUDIENCE], True),
        (["https://pricing.example", AUDIENCE], True),
        ("https://pricing.example", False),
        (["https://pricing.example"], False),
        (AUDIENCE + "/", False),
        ([], False),
    ],
)
async def test_aud_must_name_this_api(
    broker: LocalBroker, verifier: DeputyVerifier, aud: Any, accepted: bool
) -> None:
    token = broker.mint(broker.claims(aud=aud))
    if accepted:
        assert (await verifier.verify(token)).audience == AUDIENCE
    else:
        await rejected(verifier, token, "audience does not include")


@pytest.mark.parametrize("aud", [1, [1], {"a": AUDIENCE}, [AUDIENCE] * 33])
async def test_aud_of_the_wrong_shape_is_refused(
    broker: LocalBroker, verifier: DeputyVerifier, aud: Any
) -> None:
    await rejected(verifier, broker.mint(broker.claims(aud=aud)), "aud")


async def test_expired_at_exp_with_no_leeway(
    broker: LocalBroker, verifier: DeputyVerifier, clock: FakeClock
) -> None:
    now = int(clock.now())
    await rejected(verifier, broker.mint(broker.claims(exp=now)), "token expired")
    await rejected(verifier, broker.mint(broker.claims(exp=now - 1, jti="j2")), "token expired")
    assert await verifier.verify(broker.mint(broker.claims(exp=now + 1, jti="j3")))


async def test_nbf_and_iat_may_be_ahead_by_the_fixed_leeway_only(
    broker: LocalBroker, verifier: DeputyVerifier, clock: FakeClock
) -> None:
    now = int(clock.now())
    assert await verifier.verify(broker.mint(broker.claims(nbf=now + 30, jti="a")))
    assert await verifier.verify(broker.mint(broker.claims(iat=now + 30, jti="b")))
    await rejected(verifier, broker.mint(broker.claims(nbf=now + 31, jti="c")), "not yet valid")
    await rejected(verifier, broker.mint(broker.claims(iat=now + 31, jti="d")), "in the future")


@pytest.mark.parametrize("name", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("value", ["1800000100", True, None, 10**400, [1]])
async def test_time_claims_must_be_numbers(
    broker: LocalBroker, verifier: DeputyVerifier, name: str, value: Any
) -> None:
    await rejected(verifier, broker.mint(broker.claims(**{name: value})), f"{name} is not a number")


@pytest.mark.parametrize("name", REQUIRED_CLAIMS)
async def test_every_required_claim_must_be_present(
    broker: LocalBroker, verifier: DeputyVerifier, name: str
) -> None:
    await rejected(verifier, broker.mint(broker.claims(**{name: DROP})), f"token has no {name}")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"sub": ""}, "token has no sub"),
        ({"sub": 7}, "token has no sub"),
        ({"sub": "x" * 256}, "sub is longer"),
        ({"jti": ""}, "jti is not a non-empty string"),
        ({"client_id": ["a"]}, "client_id is not a non-empty string"),
        ({"scope": ["accounts:read"]}, "scope is not a string"),
        ({"execution_id": 1}, "execution_id is not a string"),
        ({"agent_instance": {}}, "agent_instance is not a string"),
        ({"workflow": 1}, "workflow is not a string"),
        ({"act": "spiffe://x"}, "act is malformed"),
        ({"act": {"act": {"sub": "x"}}}, "act is malformed"),
        ({"delegated_from": "jti-parent"}, "delegated_from"),
        ({"delegated_from": ["a", 1]}, "delegated_from"),
        ({"delegated_from": ["a"] * 17}, "delegated_from"),
    ],
)
async def test_claims_of_the_wrong_type_are_refused(
    broker: LocalBroker, verifier: DeputyVerifier, changes: dict[str, Any], reason: str
) -> None:
    await rejected(verifier, broker.mint(broker.claims(**changes)), reason)


async def test_act_nested_too_deeply_is_refused(
    broker: LocalBroker, verifier: DeputyVerifier
) -> None:
    act: dict[str, Any] = {"sub": "a0"}
    for i in range(1, 17):
        act = {"sub": f"a{i}", "act": act}
    # Sixteen actors nest deeper than the JSON limit of a token, which refuses first.
    await rejected(verifier, broker.mint(broker.claims(act=act)), "nested too deeply")


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_alg_none_is_refused(verifier: DeputyVerifier, broker: LocalBroker, alg: str) -> None:
    token = with_header({"alg": alg, "typ": "at+jwt", "kid": "k1"}, broker.claims(), b"sig")
    await rejected(verifier, token, "alg 'none' is not allowed")


async def test_hmac_is_refused_without_touching_the_keys(
    broker: LocalBroker, verifier: DeputyVerifier
) -> None:
    secret = OctKey.generate_key(256)
    for alg in ("HS256", "HS384", "HS512"):
        token = sign(broker.claims(), secret, alg=alg, kid="k1", typ="at+jwt")
        await rejected(verifier, token, f"algorithm '{alg}' is not allowed")
    assert broker.count(JWKS_PATH) == 0


async def test_only_algorithms_the_broker_announces(
    broker: LocalBroker, verifier: DeputyVerifier
) -> None:
    broker.keys["r1"] = rsa_key("other")
    token = broker.mint(kid="r1", alg="RS256")
    await rejected(verifier, token, "algorithm 'RS256' is not allowed")
    broker.keys["e384"] = ec_key("p384", "P-384")
    await rejected(verifier, broker.mint(kid="e384", alg="ES384"), "'ES384' is not allowed")


async def test_a_forged_signature_is_refused(broker: LocalBroker, verifier: DeputyVerifier) -> None:
    forged = sign(broker.claims(), ec_key("mallory"), kid="k1", typ="at+jwt")
    await rejected(verifier, forged, "signature does not verify")
    head, _, signature = broker.mint().split(".")
    tampered = b64(dumps(broker.claims(sub="mallory")))
    await rejected(verifier, f"{head}.{tampered}.{signature}", "signature does not verify")


async def test_keys_in_the_token_header_are_never_used(
    broker: LocalBroker, verifier: DeputyVerifier
) -> None:
    mallory = ec_key("mallory")
    jwk = dict(mallory.as_dict(private=False))
    token = sign(broker.claims(), mallory, kid="mallory", typ="at+jwt", jwk=jwk)
    await rejected(verifier, token, "unknown key id")
    token = sign(broker.claims(), mallory, kid="k1", typ="at+jwt", jku="https://evil.example/k")
    await rejected(verifier, token, "signature does not verify")


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "token must have three segments"),
        ("garbage", "token must have three segments"),
        ("a.b", "token must have three segments"),
        ("a.b.c.d.e", "encrypted tokens (JWE) are not accepted"),
        ("a.b.", "token has no signature"),
        ("!!.e30.AA", "header is not base64url"),
        ('{"payload":"e30"}', "JWS JSON serialization"),
        ("é.b.c", "token is not ASCII"),
        (None, "token is not a string"),
        (42, "token is not a string"),
        (b"a.b.c", "token is not a string"),
    ],
)
async def test_garbage_is_refused(verifier: DeputyVerifier, token: Any, reason: str) -> None:
    await rejected(verifier, token, reason)


async def test_an_oversized_token_is_refused(broker: LocalBroker, verifier: DeputyVerifier) -> None:
    token = broker.mint(broker.claims(padding="x" * MAX_TOKEN_BYTES))
    await rejected(verifier, token, f"larger than {MAX_TOKEN_BYTES} bytes")


async def test_crit_headers_are_refused(broker: LocalBroker, verifier: DeputyVerifier) -> None:
    await rejected(verifier, broker.mint(crit=["exp"]), "crit")


async def test_unknown_kid_refetches_once_per_30_seconds_then_refuses(
    broker: LocalBroker, verifier: DeputyVerifier, clock: FakeClock
) -> None:
    assert await verifier.verify(broker.mint())
    assert broker.count(JWKS_PATH) == 1
    clock.advance(30)
    stranger = ec_key("stranger")
    for kid in ("k2", "k3", "k4"):
        await rejected(verifier, sign(broker.claims(), stranger, kid=kid, typ="at+jwt"), "unknown")
    assert broker.count(JWKS_PATH) == 2  # one refetch, then the rate limit holds
    clock.advance(29)
    await rejected(verifier, sign(broker.claims(), stranger, kid="k5", typ="at+jwt"), "unknown")
    assert broker.count(JWKS_PATH) == 2
    clock.advance(1)
    await rejected(verifier, sign(broker.claims(), stranger, kid="k6", typ="at+jwt"), "unknown")
    assert broker.count(JWKS_PATH) == 3


async def test_a_rotated_key_is_picked_up_with_one_fetch(
    broker: LocalBroker, verifier: DeputyVerifier, clock: FakeClock
) -> None:
    assert await verifier.verify(broker.mint())
    clock.advance(30)
    broker.keys["k2"] = ec_key("broker-k2")
    credential = await verifier.verify(broker.mint(broker.claims(jti="after"), kid="k2"))
    assert credential.jti == "after"
    assert broker.count(JWKS_PATH) == 2
    # The old key, still published during the overlap, still verifies.
    assert await verifier.verify(broker.mint(broker.claims(jti="old")))
    assert broker.count(JWKS_PATH) == 2


def test_configuration_is_checked() -> None:
    with pytest.raises(ValueError, match="issuer"):
        DeputyVerifier("", AUDIENCE)
    with pytest.raises(ValueError, match="trailing slash"):
        DeputyVerifier(ISSUER + "/", AUDIENCE)
    with pytest.raises(ValueError, match="audience"):
        DeputyVerifier(ISSUER, "")
    with pytest.raises(ValueError, match="refresh_interval"):
        DeputyVerifier(ISSUER, AUDIENCE, refresh_interval=0)
    with pytest.raises(ValueError, match="refresh_interval"):
        DeputyVerifier(ISSUER, AUDIENCE, refresh_interval=61, max_staleness=60)
    with pytest.raises(ValueError, match="cache_size"):
        DeputyVerifier(ISSUER, AUDIENCE, cache_size=-1)
    for algorithms in (["HS256"], ["none"], []):
        with pytest.raises(ValueError, match="algorithms"):
            DeputyVerifier(ISSUER, AUDIENCE, algorithms=algorithms)
