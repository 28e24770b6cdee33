"""KeySet: what a JWKS or SPIFFE bundle contributes, and what it may not contain."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import ECKey, OctKey, RSAKey

from deputy.identity import KeySet

from .tokens import b64, ec_key, jwks, rsa_key


def test_jwks_by_kid() -> None:
    keys = KeySet.from_jwks(jwks(("a", ec_key("svid")), ("b", rsa_key("k8s"))))
    assert len(keys) == 2
    assert keys.kids == frozenset({"a", "b"})
    assert isinstance(keys.get("a"), ECKey)
    assert isinstance(keys.get("b"), RSAKey)
    assert keys.get("c") is None
    assert keys.get(None) is None  # several keys: a kid is needed
    assert "a" in repr(keys)


def test_spiffe_bundle_takes_jwt_svid_keys_and_skips_x509_svid() -> None:
    bundle = {
        "spiffe_sequence": 7,
        "spiffe_refresh_hint": 300,
        "keys": [
            {**ec_key("svid").as_dict(private=False), "kid": "jwt", "use": "jwt-svid"},
            {
                **ec_key("svid-ca").as_dict(private=False),
                "kid": "ca",
                "use": "x509-svid",
                "x5c": ["MIIB"],
            },
            {**rsa_key("k8s").as_dict(private=False), "kid": "sig", "use": "sig"},
            {**ec_key("other").as_dict(private=False), "kid": "enc", "use": "enc"},
        ],
    }
    assert KeySet.from_jwks(bundle).kids == frozenset({"jwt", "sig"})


@pytest.mark.parametrize(
    "private",
    [lambda: ec_key("svid"), lambda: rsa_key("k8s")],
    ids=["ec", "rsa"],
)
def test_private_keys_are_a_config_error(private: Any) -> None:
    document = {"keys": [{**private().as_dict(private=True), "kid": "x"}]}
    with pytest.raises(ValueError, match="private key material"):
        KeySet.from_jwks(document)


def test_symmetric_and_okp_keys_are_skipped() -> None:
    document = {
        "keys": [
            {**OctKey.generate_key(256).as_dict(), "kid": "hmac"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {**ec_key("svid").as_dict(private=False), "kid": "ec"},
            {**ec_key("x").as_dict(private=False), "kid": "ops", "key_ops": ["encrypt"]},
        ]
    }
    assert KeySet.from_jwks(document).kids == frozenset({"ec"})


def test_single_key_without_kid_is_usable_without_kid() -> None:
    keys = KeySet.from_jwks(jwks((None, ec_key("svid"))))
    assert keys.get(None) is not None
    assert keys.get("anything") is None


def test_key_without_kid_among_several_is_refused() -> None:
    with pytest.raises(ValueError, match="without 'kid'"):
        KeySet.from_jwks(jwks((None, ec_key("svid")), ("b", ec_key("other"))))


def test_duplicate_kids_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate kid 'a'"):
        KeySet.from_jwks(jwks(("a", ec_key("svid")), ("a", ec_key("other"))))


def test_certificate_members_never_reach_the_key() -> None:
    document = jwks(("a", ec_key("svid")), x5u="https://evil.example/cert", x5c=["MIIB"])
    key = KeySet.from_jwks(document).get("a")
    assert key is not None
    assert "x5u" not in key.as_dict() and "x5c" not in key.as_dict()


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "not a JSON object"),
        ({}, "no 'keys' list"),
        ({"keys": {"a": 1}}, "no 'keys' list"),
        ({"keys": ["x"]}, "key 0 is not a JSON object"),
        ({"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}, "not a valid EC JWK"),
        ({"keys": [{"kty": "RSA", "n": b64(b"\xff" * 256)}]}, "not a valid RSA JWK"),
        ({"keys": [{"kty": "EC", "kid": 5}]}, "'kid' that is not a non-empty string"),
        ({"keys": [{"kty": "EC", "kid": "a", "alg": 5}]}, "'alg' that is not a string"),
    ],
    ids=[
        "array",
        "no-keys",
        "keys-object",
        "entry-string",
        "ec-not-on-curve",
        "rsa-no-exponent",
        "kid-int",
        "alg-int",
    ],
)
def test_malformed_documents(document: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KeySet.from_jwks(document)


def test_weak_rsa_keys_are_refused() -> None:
    numbers = rsa.generate_private_key(65537, 1024).public_key().public_numbers()  # noqa: S505
    weak = {"kty": "RSA", "kid": "weak", "n": _b64int(numbers.n), "e": _b64int(numbers.e)}
    with pytest.raises(ValueError, match="shorter than 2048 bits"):
        KeySet.from_jwks({"keys": [weak]})


def _b64int(value: int) -> str:
    return b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def test_key_set_is_immutable() -> None:
    keys = KeySet.from_jwks(jwks(("a", ec_key("svid"))))
    with pytest.raises(TypeError):
        keys._keys["b"] = ec_key("other")  # type: ignore[index]
