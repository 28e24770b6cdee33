"""verify_signature and the claim checks of the JWS core."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
from joserfc.jwk import ECKey, OctKey
from joserfc.jws import JWSRegistry

from deputy.errors import TokenRejected
from deputy.identity.jose import (
    _EC_CURVES,
    ALLOWED_ASYMMETRIC_ALGS,
    LEEWAY_SECONDS,
    check_audience,
    check_time,
    check_type,
    parse_compact,
    verify_signature,
)

from .tokens import (
    NOW,
    b64,
    dumps,
    ec_key,
    replace_signature,
    rsa_key,
    sign,
    sign_segments,
    signature_of,
    with_header,
)

GOOD_HEADER = b64(dumps({"alg": "ES256", "kid": "k1"}))
GOOD_CLAIMS = b64(dumps({"sub": "x"}))
GOOD_SIG = b64(b"\x01" * 64)


# --- signatures ---------------------------------------------------------------------------


def verify(token: str, key: Any, algs: frozenset[str] = ALLOWED_ASYMMETRIC_ALGS) -> None:
    verify_signature(parse_compact(token), key, algs)


SIGNERS = {
    "ES256": lambda: ec_key("svid"),
    "ES384": lambda: ec_key("p384", "P-384"),
    "ES512": lambda: ec_key("p521", "P-521"),
    "RS256": lambda: rsa_key("k8s"),
    "RS384": lambda: rsa_key("k8s"),
    "RS512": lambda: rsa_key("k8s"),
    "PS256": lambda: rsa_key("k8s"),
    "PS384": lambda: rsa_key("k8s"),
    "PS512": lambda: rsa_key("k8s"),
}


@pytest.mark.parametrize("alg", sorted(SIGNERS))
def test_every_allowed_algorithm_verifies(alg: str) -> None:
    private = SIGNERS[alg]()
    public = type(private).import_key(private.as_dict(private=False))
    verify(sign({"sub": "x"}, private, alg=alg), public)


@pytest.mark.parametrize("secret_from", ["rsa", "ec"])
def test_hs256_keyed_with_the_public_key_is_rejected(secret_from: str) -> None:
    """RS/HS confusion: the attacker HMACs with the PEM of the public key."""
    public = rsa_key("k8s") if secret_from == "rsa" else ec_key("svid")
    secret = public.as_pem(private=False)
    header, claims = b64(dumps({"alg": "HS256", "kid": "r1"})), b64(dumps({"sub": "x"}))
    mac = hmac.new(secret, f"{header}.{claims}".encode(), hashlib.sha256).digest()
    token = f"{header}.{claims}.{b64(mac)}"
    with pytest.raises(TokenRejected, match="algorithm 'HS256' is not allowed"):
        verify(token, public)
    # Even a caller that wrongly allows HS256 cannot get an HMAC check out of verify_signature.
    with pytest.raises(TokenRejected, match="algorithm 'HS256' is not allowed"):
        verify(token, OctKey.import_key(b"s" * 32), frozenset({"HS256"}))


@pytest.mark.parametrize("alg", ["EdDSA", "ES256K", "HS384", "RS1", "Ed25519", "es256"])
def test_algorithms_outside_the_allow_list(alg: str) -> None:
    token = with_header({"alg": alg, "kid": "k1"}, {"sub": "x"}, b"\x01" * 64)
    with pytest.raises(TokenRejected, match="is not allowed"):
        verify(token, ec_key("svid"))


def test_es256k_with_a_secp256k1_key_is_rejected() -> None:
    attacker = ECKey.generate_key("secp256k1")
    with pytest.raises(TokenRejected, match="algorithm 'ES256K' is not allowed"):
        verify(sign({"sub": "x"}, attacker, alg="ES256K"), attacker)


def test_per_issuer_allow_list_is_honoured() -> None:
    token = sign({"sub": "x"}, rsa_key("k8s"), alg="RS256")
    with pytest.raises(TokenRejected, match="algorithm 'RS256' is not allowed"):
        verify(token, rsa_key("k8s"), frozenset({"ES256"}))


@pytest.mark.parametrize(
    ("alg", "signer", "verifier"),
    [
        ("RS256", lambda: rsa_key("k8s"), lambda: ec_key("svid")),
        ("ES256", lambda: ec_key("svid"), lambda: rsa_key("k8s")),
        ("ES384", lambda: ec_key("p384", "P-384"), lambda: ec_key("svid")),
        ("ES256", lambda: ec_key("svid"), lambda: ec_key("p384", "P-384")),
    ],
    ids=["rsa-alg-ec-key", "ec-alg-rsa-key", "es384-p256-key", "es256-p384-key"],
)
def test_key_type_must_match_the_algorithm(alg: str, signer: Any, verifier: Any) -> None:
    with pytest.raises(TokenRejected, match="key type does not match"):
        verify(sign({"sub": "x"}, signer(), alg=alg), verifier())


def test_key_with_declared_alg_is_used_with_that_alg_only() -> None:
    public = rsa_key("k8s").as_dict(private=False)
    key = type(rsa_key("k8s")).import_key({**public, "alg": "PS256"})
    verify(sign({"sub": "x"}, rsa_key("k8s"), alg="PS256"), key)
    with pytest.raises(TokenRejected, match="key is not for this algorithm"):
        verify(sign({"sub": "x"}, rsa_key("k8s"), alg="RS256"), key)


def _tamper(token: str, how: str) -> str:
    header, claims, signature = token.split(".")
    raw = signature_of(token)
    if how == "truncated":
        return replace_signature(token, raw[:-1])
    if how == "from-another-token":
        other = sign({"sub": "y", "aud": "deputy"}, ec_key("svid"))
        return f"{header}.{claims}.{other.split('.')[2]}"
    if how == "payload-edited":
        return f"{header}.{b64(dumps({'sub': 'x', 'aud': 'other'}))}.{signature}"
    if how == "header-edited":
        return f"{b64(dumps({'alg': 'ES256', 'kid': 'k2'}))}.{claims}.{signature}"
    if how == "flipped-bit":
        return replace_signature(token, bytes([raw[0] ^ 1]) + raw[1:])
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how", ["truncated", "from-another-token", "payload-edited", "header-edited", "flipped-bit"]
)
def test_signature_tampering(how: str) -> None:
    token = sign({"sub": "x", "aud": "deputy"}, ec_key("svid"))
    verify(token, ec_key("svid"))
    with pytest.raises(TokenRejected, match="signature does not verify"):
        verify(_tamper(token, how), ec_key("svid"))


def test_rsa_signature_truncated_or_swapped() -> None:
    key = rsa_key("k8s")
    token = sign({"sub": "x"}, key, alg="RS256")
    for signature in (signature_of(token)[:-1], signature_of(token) + b"\x00", b"\x00" * 256):
        with pytest.raises(TokenRejected, match="signature does not verify"):
            verify(replace_signature(token, signature), key)


P256_ORDER = _EC_CURVES["ES256"][1]


@pytest.mark.parametrize(
    ("r", "s"),
    [
        (0, 1),
        (1, 0),
        (0, 0),
        (P256_ORDER, 1),
        (1, P256_ORDER),
        (1, P256_ORDER + 1),
        (2**256 - 1, 2**256 - 1),
    ],
    ids=["r-zero", "s-zero", "both-zero", "r-equals-n", "s-equals-n", "s-above-n", "all-ones"],
)
def test_ecdsa_r_and_s_out_of_range(r: int, s: int) -> None:
    token = sign({"sub": "x"}, ec_key("svid"))
    forged = replace_signature(token, r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    with pytest.raises(TokenRejected, match="signature does not verify"):
        verify(forged, ec_key("svid"))


@pytest.mark.parametrize("length", [0, 1, 63, 65, 72, 128])
def test_ecdsa_signature_of_the_wrong_length(length: int) -> None:
    token = sign({"sub": "x"}, ec_key("svid"))
    real = signature_of(token)
    forged = (real * 3)[:length]
    if length == 0:
        with pytest.raises(TokenRejected, match="no signature"):
            parse_compact(replace_signature(token, forged))
        return
    with pytest.raises(TokenRejected, match="signature does not verify"):
        verify(replace_signature(token, forged), ec_key("svid"))


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512"])
def test_curve_orders_are_right(alg: str) -> None:
    """(r, n - s) is valid whenever (r, s) is, so this pins each group order constant."""
    curve, order = _EC_CURVES[alg]
    key = ECKey.generate_key(curve)
    algorithm = JWSRegistry.algorithms[alg]
    signature = algorithm.sign(b"message", key)
    size = len(signature) // 2
    r, s = signature[:size], int.from_bytes(signature[size:], "big")
    assert algorithm.verify(b"message", r + (order - s).to_bytes(size, "big"), key)


def test_sign_segments_helper_matches_sign() -> None:
    header, claims = b64(dumps({"alg": "ES256"})), b64(dumps({}))
    verify(sign_segments(header, claims, ec_key("svid"), "ES256"), ec_key("svid"))


# --- claims -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({}, "token has no exp"),
        ({"exp": NOW - 1}, "token expired"),
        ({"exp": NOW}, "token expired"),
        ({"exp": "9999999999"}, "exp is not a number"),
        ({"exp": True}, "exp is not a number"),
        ({"exp": None}, "exp is not a number"),
        ({"exp": [NOW + 60]}, "exp is not a number"),
        ({"exp": float("inf")}, "exp is not a number"),
        ({"exp": 10**400}, "exp is not a number"),
        ({"exp": NOW + 60, "nbf": -(10**400)}, "nbf is not a number"),
        ({"exp": NOW + 60, "iat": 2**53 + 1}, "iat is not a number"),
        ({"exp": NOW + 60, "nbf": NOW + LEEWAY_SECONDS + 1}, "not yet valid"),
        ({"exp": NOW + 60, "iat": NOW + LEEWAY_SECONDS + 1}, "issued in the future"),
        ({"exp": NOW + 60, "nbf": "0"}, "nbf is not a number"),
        ({"exp": NOW + 60, "iat": False}, "iat is not a number"),
    ],
    ids=[
        "exp-missing",
        "exp-past",
        "exp-now",
        "exp-string",
        "exp-bool",
        "exp-null",
        "exp-list",
        "exp-infinite",
        "exp-beyond-float",
        "nbf-beyond-float",
        "iat-beyond-numeric-date",
        "nbf-beyond-leeway",
        "iat-beyond-leeway",
        "nbf-string",
        "iat-bool",
    ],
)
def test_time_rejections(claims: dict[str, Any], reason: str) -> None:
    with pytest.raises(TokenRejected, match=reason):
        check_time(claims, NOW)


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": NOW + 1},
        {"exp": int(NOW) + 60, "nbf": NOW + LEEWAY_SECONDS, "iat": NOW + LEEWAY_SECONDS},
        {"exp": NOW + 60, "nbf": NOW - 3600, "iat": NOW - 3600},
    ],
    ids=["exp-just-ahead", "nbf-iat-within-leeway", "nbf-iat-past"],
)
def test_time_accepted(claims: dict[str, Any]) -> None:
    check_time(claims, NOW)


def test_exp_can_be_optional() -> None:
    check_time({}, NOW, require_exp=False)
    with pytest.raises(TokenRejected, match="token expired"):
        check_time({"exp": NOW - 1}, NOW, require_exp=False)


@pytest.mark.parametrize(
    ("aud", "reason"),
    [
        (None, "token has no aud"),
        ("other", "audience does not include 'deputy'"),
        ("Deputy", "audience does not include 'deputy'"),
        (["a", "b"], "audience does not include 'deputy'"),
        ([], "audience does not include 'deputy'"),
        (["deputy", 1], "aud entries must be strings"),
        ([["deputy"]], "aud entries must be strings"),
        ({"deputy": True}, "not a string or a list"),
        (7, "not a string or a list"),
        (["x"] * 33 + ["deputy"], "more than 32 entries"),
        (["deputy"] * 2_000, "more than 32 entries"),
    ],
    ids=[
        "missing",
        "other",
        "case-differs",
        "list-without",
        "empty-list",
        "list-with-int",
        "nested-list",
        "object",
        "number",
        "33-entries",
        "huge-array",
    ],
)
def test_audience_rejections(aud: Any, reason: str) -> None:
    claims = {} if aud is None else {"aud": aud}
    with pytest.raises(TokenRejected, match=reason):
        check_audience(claims, "deputy")


@pytest.mark.parametrize(
    "aud", ["deputy", ["deputy"], ["other", "deputy"], ["x"] * 31 + ["deputy"]]
)
def test_audience_accepted(aud: Any) -> None:
    check_audience({"aud": aud}, "deputy")


@pytest.mark.parametrize(
    "typ", ["at+jwt", "AT+JWT", "application/at+jwt", "Application/At+JWT", "dpop+jwt"]
)
def test_forbidden_types(typ: str) -> None:
    with pytest.raises(TokenRejected, match="is not accepted here"):
        check_type({"typ": typ}, frozenset({"at+jwt", "application/dpop+jwt"}))


def test_allowed_and_malformed_types() -> None:
    check_type({}, frozenset({"at+jwt"}))
    check_type({"typ": "JWT"}, frozenset({"at+jwt"}))
    with pytest.raises(TokenRejected, match="typ is not a string"):
        check_type({"typ": ["at+jwt"]}, frozenset({"at+jwt"}))
