"""RFC 9449 §4.3: every rule a DPoP proof must pass, and the agent's proof signer."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from deputy.clock import FakeClock
from deputy.errors import TokenRejected
from deputy.identity.replay import ReplayCache
from deputy.sdk.dpop import DpopKey
from deputy.tokens.dpop import (
    DpopVerifier,
    access_token_hash,
    b64url,
    normalize_url,
    thumbprint,
)
from tests.unit.identity.tokens import ec_key, sign

NOW = 1_800_000_000.0
URL = "https://deputy.internal/oauth2/token"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def verifier(clock: FakeClock) -> DpopVerifier:
    return DpopVerifier(clock, ReplayCache(clock))


def handmade(claims: dict[str, Any], **header: Any) -> str:
    """A proof signed by a test key, with any header members given."""
    key = ec_key("dpop")
    jwk = {k: v for k, v in key.as_dict(private=False).items() if k in ("kty", "crv", "x", "y")}
    fields: dict[str, Any] = {"typ": "dpop+jwt", "jwk": jwk, **header}
    return sign(claims, key, kid=None, **fields)


def claims(**extra: Any) -> dict[str, Any]:
    return {"htm": "POST", "htu": URL, "iat": int(NOW), "jti": "p-1", **extra}


def test_rfc7638_thumbprint_example() -> None:
    # RFC 7638 §3.1: the example RSA key and its SHA-256 thumbprint.
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6"
        "tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65Y"
        "GjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-b"
        "FTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


async def test_agent_key_signs_proofs_the_broker_accepts(
    verifier: DpopVerifier, clock: FakeClock
) -> None:
    key = DpopKey(clock)
    proof = key.proof("post", URL + "?x=1#frag")
    assert (await verifier.verify(proof, method="POST", url=URL)).jkt == key.jkt
    header = json.loads(_b64decode(proof.split(".")[0]))
    assert header == {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.public_jwk}
    assert repr(key) == f"DpopKey(jkt={key.jkt!r})"  # nothing of the private key
    presented = key.proof("GET", "https://crm.internal/accounts", access_token="at.x.y")
    claimed = json.loads(_b64decode(presented.split(".")[1]))
    assert claimed["ath"] == access_token_hash("at.x.y") and claimed["htm"] == "GET"
    bound = await verifier.verify(
        presented, method="GET", url="https://crm.internal/accounts", access_token="at.x.y"
    )
    assert bound.jkt == key.jkt


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


@pytest.mark.parametrize(
    ("proof", "words"),
    [
        (handmade(claims(), typ="JWT"), "typ must be dpop+jwt"),
        (sign(claims(), ec_key("dpop"), kid=None, typ="dpop+jwt"), "no jwk header"),
        (
            handmade(claims(), jwk={**ec_key("dpop").as_dict(private=True)}),
            "not acceptable",
        ),
        (handmade(claims(), jwk={"kty": "oct", "k": "c2VjcmV0"}), "not an EC or RSA public key"),
        (handmade(claims(htm="GET")), "htm must be POST"),
        (handmade(claims(htu="https://deputy.internal/issue")), "htu must be"),
        (handmade(claims(htu="http://deputy.internal/oauth2/token")), "htu must be"),
        (handmade(claims(iat=int(NOW) - 61)), "outside the accepted window"),
        (handmade(claims(iat=int(NOW) + 31)), "outside the accepted window"),
        (handmade(claims(iat="now")), "has no iat"),
        (handmade(claims(jti="")), "needs a jti"),
        (handmade({k: v for k, v in claims().items() if k != "jti"}), "needs a jti"),
        (handmade(claims(ath="x")), "only for proofs that present an access token"),
        ("not.a.proof", "base64url"),
    ],
    ids=[
        "typ",
        "no-jwk",
        "private-jwk",
        "symmetric-jwk",
        "htm",
        "htu-path",
        "htu-scheme",
        "too-old",
        "future",
        "iat-not-number",
        "empty-jti",
        "no-jti",
        "ath-unasked",
        "garbage",
    ],
)
async def test_proof_rules(verifier: DpopVerifier, proof: str, words: str) -> None:
    with pytest.raises(TokenRejected) as caught:
        await verifier.verify(proof, method="POST", url=URL)
    assert words in caught.value.reason


async def test_signature_must_verify_with_the_jwk_it_carries(verifier: DpopVerifier) -> None:
    other = ec_key("someone-else")
    jwk = {k: v for k, v in ec_key("dpop").as_dict(private=False).items() if k != "kid"}
    forged = sign(claims(), other, kid=None, typ="dpop+jwt", jwk=jwk)
    with pytest.raises(TokenRejected, match="signature does not verify"):
        await verifier.verify(forged, method="POST", url=URL)


async def test_replay_is_refused(verifier: DpopVerifier) -> None:
    proof = handmade(claims(jti="once"))
    await verifier.verify(proof, method="POST", url=URL)
    with pytest.raises(TokenRejected, match="already used"):
        await verifier.verify(proof, method="POST", url=URL)


async def test_access_token_binding(verifier: DpopVerifier) -> None:
    good = handmade(claims(jti="a1", ath=access_token_hash("tok")))
    assert (await verifier.verify(good, method="POST", url=URL, access_token="tok")).jkt
    with pytest.raises(TokenRejected, match="ath does not match"):
        await verifier.verify(
            handmade(claims(jti="a2")), method="POST", url=URL, access_token="tok"
        )
    with pytest.raises(TokenRejected, match="ath does not match"):
        other = handmade(claims(jti="a3", ath=access_token_hash("other")))
        await verifier.verify(other, method="POST", url=URL, access_token="tok")


async def test_server_nonce(verifier: DpopVerifier) -> None:
    with pytest.raises(TokenRejected, match="server's nonce"):
        await verifier.verify(handmade(claims(jti="n1")), method="POST", url=URL, nonce="n-42")
    proof = handmade(claims(jti="n2", nonce="n-42"))
    assert (await verifier.verify(proof, method="POST", url=URL, nonce="n-42")).jti == "n2"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("https://Deputy.Internal:443/oauth2/token?q=1#f", "https://deputy.internal/oauth2/token"),
        ("http://127.0.0.1:80", "http://127.0.0.1/"),
        ("https://[::1]:8443/x", "https://[::1]:8443/x"),
    ],
)
def test_htu_normalisation(a: str, b: str) -> None:
    assert normalize_url(a) == normalize_url(b)


def test_b64url_has_no_padding() -> None:
    assert b64url(b"\xff") == "_w"
