"""Compact JWS parsing for the resource server: the rules of ``deputy.identity.jose``, faster.

A resource server parses every request's credential, so this parser keeps every rule of
:func:`deputy.identity.jose.parse_compact` (the tests hold the two to the same verdicts) and
only spends less on the common case: the protected header of one signing key is the same
segment on every credential, so its checked form is kept; nesting is measured with C-speed
counts before any walk; and a claims set with ``\\u`` escapes goes through the reference
strict JSON loader unchanged.
"""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from deputy.errors import TokenRejected
from deputy.identity.jose import MAX_JSON_DEPTH, MAX_KID_LENGTH, ParsedJwt, split_compact
from deputy.identity.strict_json import StrictJsonError, load_object

_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_KID = re.compile(r"[A-Za-z0-9._~:+=-]+")
# The last character of a canonical segment leaves no unused bits set (RFC 4648 §3.5):
# 4 spare bits when the length is 2 mod 4, 2 when it is 3 mod 4.
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_CANONICAL_LAST = {
    2: frozenset(_ALPHABET[i] for i in range(0, 64, 16)),
    3: frozenset(_ALPHABET[i] for i in range(0, 64, 4)),
}
_HEADER_CACHE_SIZE = 64
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


class HeaderCache:
    """Checked protected headers by their encoded segment; a handful per issuer."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[str, tuple[Mapping[str, Any], str, str | None]] = {}

    def get(self, segment: str) -> tuple[Mapping[str, Any], str, str | None]:
        found = self._entries.get(segment)
        if found is None:
            header = _decode_object(segment, "header")
            alg, kid = _check_header(header)
            found = (MappingProxyType(header), alg, kid)
            if len(self._entries) >= _HEADER_CACHE_SIZE:
                self._entries.clear()
            self._entries[segment] = found
        return found


def parse(token: object, headers: HeaderCache) -> ParsedJwt:
    """A JWS Compact Serialization (RFC 7515 §7.1), refused on anything unusual."""
    header_b64, claims_b64, signature_b64 = split_compact(token)
    header, alg, kid = headers.get(header_b64)
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
    size = len(segment) % 4
    if size == 1 or not _SEGMENT.fullmatch(segment):
        raise TokenRejected(f"{what} is not base64url")
    if size and segment[-1] not in _CANONICAL_LAST[size]:
        raise TokenRejected(f"{what} is not canonical base64url")
    padded = (segment + "=" * (-size % 4)).encode("ascii")
    return binascii.a2b_base64(padded.translate(_FROM_URLSAFE))


def _decode_object(segment: str, what: str) -> dict[str, Any]:
    raw = _b64decode(segment, what)
    try:
        return _load_object(raw)
    except StrictJsonError as exc:
        raise TokenRejected(f"{what} {exc}") from None


def _load_object(raw: bytes) -> dict[str, Any]:
    """``strict_json.load_object`` with the common case (no escapes, shallow) made cheap."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise StrictJsonError("is not UTF-8") from None
    if "\\u" in text:
        # Escapes may spell lone surrogates: the reference loader checks every string.
        return load_object(raw, max_depth=MAX_JSON_DEPTH)
    try:
        value = _DECODER.decode(text)
    except StrictJsonError:
        raise
    except RecursionError:
        raise StrictJsonError("is nested too deeply") from None
    except ValueError:
        raise StrictJsonError("is not valid JSON") from None
    if not isinstance(value, dict):
        raise StrictJsonError("is not a JSON object")
    # Brackets inside strings only overcount, so few brackets means shallow enough.
    if text.count("{") + text.count("[") > MAX_JSON_DEPTH and _depth(value) > MAX_JSON_DEPTH:
        raise StrictJsonError("is nested too deeply")
    return value


def _depth(value: dict[str, Any]) -> int:
    """The deepest container nesting of a parsed value (the object itself is 1)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            break
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return deepest


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = dict(pairs)
    if len(out) != len(pairs):
        raise StrictJsonError("has a duplicate member")
    return out


def _no_constant(name: str) -> Any:
    raise StrictJsonError("has a non-finite number")


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_members, parse_constant=_no_constant)


def _check_header(header: Mapping[str, Any]) -> tuple[str, str | None]:
    """RFC 7515 §4.1: ``alg`` required, ``crit`` understood or rejected, ``kid`` a safe index."""
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise TokenRejected("header has no alg")
    if alg.lower() == "none":
        raise TokenRejected("alg 'none' is not allowed")
    if "crit" in header:
        raise TokenRejected("crit header names extensions that are not supported")
    if "b64" in header and header["b64"] is not True:
        raise TokenRejected("unencoded payloads (b64) are not accepted")
    if "kid" not in header:
        return alg, None
    kid = header["kid"]
    if not isinstance(kid, str):
        raise TokenRejected("kid is not a string")
    if not kid or len(kid) > MAX_KID_LENGTH or not _KID.fullmatch(kid):
        raise TokenRejected("kid is not a valid key id")
    return alg, kid
