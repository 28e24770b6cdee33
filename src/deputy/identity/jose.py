"""Strict compact JWS (RFC 7515 §7.1) parsing and JWT (RFC 7519) claim checks."""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from joserfc.jwk import ECKey, Key, RSAKey
from joserfc.jws import JWSRegistry

from deputy.errors import TokenRejected
from deputy.identity.strict_json import StrictJsonError, load_object

MAX_NUMERIC_DATE = 2**53  # beyond this a float loses whole seconds
MAX_TOKEN_BYTES = 16 * 1024
LEEWAY_SECONDS = 30
MAX_JSON_DEPTH = 16
MAX_KID_LENGTH = 128
MAX_AUDIENCES = 32
MAX_SUBJECT_LENGTH = 255

ALLOWED_ASYMMETRIC_ALGS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}
)

_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_KID = re.compile(r"[A-Za-z0-9._~:+=-]+")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")

# RFC 7518 §3.4: the curve each ES algorithm is bound to, and that curve's group order n
# (FIPS 186-4 §D.1.2) for the 0 < r, s < n range check.
_EC_CURVES: dict[str, tuple[str, int]] = {
    "ES256": (
        "P-256",
        0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    ),
    "ES384": (
        "P-384",
        int(
            "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
            "581A0DB248B0A77AECEC196ACCC52973",
            16,
        ),
    ),
    "ES512": (
        "P-521",
        int(
            "01" + "F" * 64 + "FA51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409",
            16,
        ),
    ),
}


@dataclass(frozen=True, slots=True)
class ParsedJwt:
    """A compact JWS whose structure was checked; its signature and claims are not yet."""

    header: Mapping[str, Any]
    claims: Mapping[str, Any]
    signing_input: bytes
    signature: bytes
    alg: str
    kid: str | None


def client_safe(value: object, limit: int = 64) -> str:
    """Quote an untrusted value for a reason: printable ASCII only, truncated."""
    text = value if isinstance(value, str) else type(value).__name__
    if not _PRINTABLE.fullmatch(text):
        return "(unprintable)"
    if len(text) > limit:
        text = text[:limit] + "..."
    return repr(text)


def split_compact(token: object) -> tuple[str, str, str]:
    """The three segments of a JWS Compact Serialization (RFC 7515 §7.1), or a refusal."""
    if not isinstance(token, str):
        raise TokenRejected("token is not a string")
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenRejected(f"token is larger than {MAX_TOKEN_BYTES} bytes")
    if not token.isascii():
        raise TokenRejected("token is not ASCII")
    if token.startswith("{"):
        raise TokenRejected("JWS JSON serialization is not accepted")
    segments = token.split(".")
    if len(segments) == 5:
        raise TokenRejected("encrypted tokens (JWE) are not accepted")
    if len(segments) != 3:
        raise TokenRejected("token must have three segments")
    header_b64, claims_b64, signature_b64 = segments
    if not signature_b64:
        raise TokenRejected("token has no signature")
    return header_b64, claims_b64, signature_b64


def parse_compact(token: str) -> ParsedJwt:
    """Parse a JWS Compact Serialization (RFC 7515 §7.1) and refuse anything unusual."""
    header_b64, claims_b64, signature_b64 = split_compact(token)
    header = _decode_object(header_b64, "header")
    alg, kid = _check_header(header)
    claims = _decode_object(claims_b64, "claims")
    signature = _b64decode(signature_b64, "signature")
    return ParsedJwt(
        header=header,
        claims=claims,
        signing_input=f"{header_b64}.{claims_b64}".encode("ascii"),
        signature=signature,
        alg=alg,
        kid=kid,
    )


def _b64decode(segment: str, what: str) -> bytes:
    """RFC 7515 §2 base64url without padding; canonical encodings only."""
    if not _SEGMENT.fullmatch(segment) or len(segment) % 4 == 1:
        raise TokenRejected(f"{what} is not base64url")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise TokenRejected(f"{what} is not base64url") from None
    # Non-zero trailing bits decode to the same bytes; only the canonical form is accepted.
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != segment.encode("ascii"):
        raise TokenRejected(f"{what} is not canonical base64url")
    return raw


def _decode_object(segment: str, what: str) -> dict[str, Any]:
    try:
        return load_object(_b64decode(segment, what), max_depth=MAX_JSON_DEPTH)
    except StrictJsonError as exc:
        raise TokenRejected(f"{what} {exc}") from None


def _check_header(header: Mapping[str, Any]) -> tuple[str, str | None]:
    """RFC 7515 §4.1: ``alg`` required, ``crit`` understood or rejected, ``kid`` a safe index."""
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise TokenRejected("header has no alg")
    if alg.lower() == "none":
        raise TokenRejected("alg 'none' is not allowed")
    if "crit" in header:
        # RFC 7515 §4.1.11: we understand no extensions, so any crit is fatal.
        raise TokenRejected("crit header names extensions that are not supported")
    if "b64" in header and header["b64"] is not True:
        raise TokenRejected("unencoded payloads (b64) are not accepted")
    kid = header.get("kid")
    if kid is None and "kid" not in header:
        return alg, None
    if not isinstance(kid, str):
        raise TokenRejected("kid is not a string")
    if not kid or len(kid) > MAX_KID_LENGTH or not _KID.fullmatch(kid):
        raise TokenRejected("kid is not a valid key id")
    return alg, kid


def check_type(header: Mapping[str, Any], forbidden: frozenset[str]) -> None:
    """Refuse a token whose ``typ`` (RFC 7515 §4.1.9, compared case-insensitively) is forbidden."""
    typ = header.get("typ")
    if typ is None:
        return
    if not isinstance(typ, str):
        raise TokenRejected("typ is not a string")
    # RFC 7515 §4.1.9: "application/" may be omitted, so compare without it.
    media = typ.lower().removeprefix("application/")
    if media in {name.lower().removeprefix("application/") for name in forbidden}:
        raise TokenRejected(f"token type {client_safe(typ)} is not accepted here")


def verify_signature(parsed: ParsedJwt, key: Key, allowed_algs: frozenset[str]) -> None:
    """RFC 7515 §5.2 validation with an explicit algorithm allow-list and key binding."""
    alg = parsed.alg
    if alg not in allowed_algs or alg not in ALLOWED_ASYMMETRIC_ALGS:
        raise TokenRejected(f"algorithm {client_safe(alg, 16)} is not allowed")
    if alg.startswith(("RS", "PS")):
        if not isinstance(key, RSAKey):
            raise TokenRejected("key type does not match the algorithm")
    else:
        curve, order = _EC_CURVES[alg]
        if not isinstance(key, ECKey) or key.curve_name != curve:
            raise TokenRejected("key type does not match the algorithm")
        _check_ec_signature(parsed.signature, key, order)
    declared = key.get("alg")
    if declared is not None and declared != alg:
        # RFC 7517 §4.4: a key that names its algorithm is used with that one only.
        raise TokenRejected("key is not for this algorithm")
    try:
        valid = JWSRegistry.algorithms[alg].verify(parsed.signing_input, parsed.signature, key)
    except (ValueError, TypeError):
        valid = False
    if not valid:
        raise TokenRejected("signature does not verify")


def _check_ec_signature(signature: bytes, key: ECKey, order: int) -> None:
    """RFC 7518 §3.4: R || S, each the coordinate size; SEC 1 §4.1.4: 0 < r, s < n."""
    size = (key.curve_key_size + 7) // 8
    if len(signature) != 2 * size:
        raise TokenRejected("signature does not verify")
    r = int.from_bytes(signature[:size], "big")
    s = int.from_bytes(signature[size:], "big")
    if not (0 < r < order and 0 < s < order):
        raise TokenRejected("signature does not verify")


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate (RFC 7519 §2): a finite number within ``MAX_NUMERIC_DATE``."""
    value = claims.get(name)
    if value is None and name not in claims:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenRejected(f"{name} is not a number")
    # Checked before any float conversion: 10**400 must be refused, not overflow.
    if not -MAX_NUMERIC_DATE <= value <= MAX_NUMERIC_DATE or not math.isfinite(value):
        raise TokenRejected(f"{name} is not a number")
    return float(value)


def check_time(claims: Mapping[str, Any], now: float, *, require_exp: bool = True) -> None:
    """RFC 7519 §4.1.4-6: exp in the future (no leeway); nbf and iat not beyond the leeway."""
    exp = _number(claims, "exp")
    if exp is None:
        if require_exp:
            raise TokenRejected("token has no exp")
    elif exp <= now:
        raise TokenRejected("token expired")
    nbf = _number(claims, "nbf")
    if nbf is not None and nbf > now + LEEWAY_SECONDS:
        raise TokenRejected("token is not yet valid (nbf)")
    iat = _number(claims, "iat")
    if iat is not None and iat > now + LEEWAY_SECONDS:
        raise TokenRejected("token was issued in the future (iat)")


def check_audience(claims: Mapping[str, Any], expected: str) -> None:
    """RFC 7519 §4.1.3: ``aud`` is a string or array of strings that contains ``expected``."""
    aud = claims.get("aud")
    if aud is None:
        raise TokenRejected("token has no aud")
    if isinstance(aud, str):
        audiences = [aud]
    elif isinstance(aud, list):
        if len(aud) > MAX_AUDIENCES:
            raise TokenRejected(f"aud has more than {MAX_AUDIENCES} entries")
        if not all(isinstance(item, str) for item in aud):
            raise TokenRejected("aud entries must be strings")
        audiences = aud
    else:
        raise TokenRejected("aud is not a string or a list of strings")
    if expected not in audiences:
        raise TokenRejected(f"audience does not include {expected!r}")


def expiry(claims: Mapping[str, Any]) -> float:
    """The ``exp`` of claims that already passed :func:`check_time`."""
    exp = _number(claims, "exp")
    if exp is None:
        raise TokenRejected("token has no exp")
    return exp


def check_subject(claims: Mapping[str, Any]) -> str:
    """RFC 7519 §4.1.2: ``sub`` as a non-empty string of at most MAX_SUBJECT_LENGTH."""
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise TokenRejected("token has no sub")
    if len(sub) > MAX_SUBJECT_LENGTH:
        raise TokenRejected(f"sub is longer than {MAX_SUBJECT_LENGTH} characters")
    return sub


def check_algorithms(algorithms: frozenset[str]) -> None:
    """Raise ``ValueError`` unless a configured allow-list is a non-empty asymmetric subset."""
    if not algorithms or not algorithms <= ALLOWED_ASYMMETRIC_ALGS:
        raise ValueError(
            f"algorithms must be a non-empty subset of {sorted(ALLOWED_ASYMMETRIC_ALGS)}"
        )


def check_trust(audience: str, algorithms: frozenset[str]) -> None:
    """What every configured issuer needs: an audience and an allow-list of algorithms."""
    if not audience:
        raise ValueError("audience must not be empty")
    check_algorithms(algorithms)


class KeyLookup(Protocol):
    """Where the verification key for a ``kid`` comes from (a configured issuer's key set)."""

    async def key(self, kid: str | None) -> Key: ...


async def verify_for_issuer(
    parsed: ParsedJwt, *, audience: str, keys: KeyLookup, algorithms: frozenset[str], now: float
) -> None:
    """Cheap claim checks first, then the key lookup (which may fetch), then the signature."""
    if parsed.alg not in algorithms:
        raise TokenRejected(f"algorithm {client_safe(parsed.alg, 16)} is not allowed")
    check_time(parsed.claims, now)
    check_audience(parsed.claims, audience)
    verify_signature(parsed, await keys.key(parsed.kid), algorithms)
