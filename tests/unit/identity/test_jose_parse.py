"""parse_compact: structure, base64url, JSON and header rules, before any key is touched."""

from __future__ import annotations

from typing import Any

import pytest

from deputy.errors import TokenRejected
from deputy.identity.jose import (
    MAX_TOKEN_BYTES,
    parse_compact,
)

from .tokens import (
    b64,
    dumps,
    ec_key,
    sign,
    signature_of,
    svid_claims,
    with_header,
)

GOOD_HEADER = b64(dumps({"alg": "ES256", "kid": "k1"}))
GOOD_CLAIMS = b64(dumps({"sub": "x"}))
GOOD_SIG = b64(b"\x01" * 64)


def rejected(token: Any, reason: str) -> None:
    with pytest.raises(TokenRejected) as caught:
        parse_compact(token)
    assert reason in caught.value.reason
    assert not isinstance(token, str) or len(token) < 8 or token not in caught.value.reason


def test_parses_a_good_token() -> None:
    token = sign(svid_claims(), ec_key("svid"), kid="k1")
    parsed = parse_compact(token)
    assert parsed.alg == "ES256"
    assert parsed.kid == "k1"
    assert parsed.claims["sub"] == svid_claims()["sub"]
    assert parsed.signing_input == token.rpartition(".")[0].encode()
    assert parsed.signature == signature_of(token)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_in_any_casing(alg: str) -> None:
    rejected(with_header({"alg": alg}, {"sub": "x"}, b"x"), "alg 'none' is not allowed")


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ({}, "header has no alg"),
        ({"alg": 256}, "header has no alg"),
        ({"alg": None}, "header has no alg"),
        ({"alg": "ES256", "crit": ["exp"]}, "crit"),
        ({"alg": "ES256", "crit": []}, "crit"),
        ({"alg": "ES256", "b64": False, "crit": ["b64"]}, "crit"),
        ({"alg": "ES256", "b64": False}, "unencoded payloads"),
        ({"alg": "ES256", "kid": "../../etc/passwd"}, "kid is not a valid key id"),
        ({"alg": "ES256", "kid": "' OR 1=1 --"}, "kid is not a valid key id"),
        ({"alg": "ES256", "kid": "a/b"}, "kid is not a valid key id"),
        ({"alg": "ES256", "kid": "key 1"}, "kid is not a valid key id"),
        ({"alg": "ES256", "kid": ""}, "kid is not a valid key id"),
        ({"alg": "ES256", "kid": "k" * 10_000}, "kid is not a valid key id"),
        ({"alg": "ES256", "kid": 1}, "kid is not a string"),
        ({"alg": "ES256", "kid": ["k1"]}, "kid is not a string"),
        ({"alg": "ES256", "kid": None}, "kid is not a string"),
        ({"alg": "ES256", "kid": {"k": 1}}, "kid is not a string"),
    ],
    ids=[
        "no-alg",
        "alg-int",
        "alg-null",
        "crit-exp",
        "crit-empty",
        "crit-b64",
        "b64-false",
        "kid-traversal",
        "kid-sql",
        "kid-slash",
        "kid-space",
        "kid-empty",
        "kid-10kb",
        "kid-int",
        "kid-list",
        "kid-null",
        "kid-object",
    ],
)
def test_header_rejections(header: dict[str, Any], reason: str) -> None:
    rejected(with_header(header, {"sub": "x"}), reason)


def test_kid_with_every_allowed_character_is_accepted() -> None:
    kid = "Abc-1.2_3~4:5+6=7"
    assert parse_compact(with_header({"alg": "ES256", "kid": kid}, {})).kid == kid


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (b"a.b.c", "not a string"),
        (None, "not a string"),
        ("a" * (MAX_TOKEN_BYTES + 1), "larger than"),
        ("a." * 1_000_000, "larger than"),
        (f"{GOOD_HEADER}.{GOOD_CLAIMS}.{GOOD_SIG}é", "not ASCII"),
        (f"{GOOD_HEADER}.{GOOD_CLAIMS}", "three segments"),
        (f"{GOOD_HEADER}.{GOOD_CLAIMS}.{GOOD_SIG}.{GOOD_SIG}", "three segments"),
        (f"{GOOD_HEADER}.{GOOD_CLAIMS}.{GOOD_SIG}.{GOOD_SIG}.{GOOD_SIG}", "JWE"),
        ("", "three segments"),
        ("..", "no signature"),
        (f"{GOOD_HEADER}.{GOOD_CLAIMS}.", "no signature"),
        (f".{GOOD_CLAIMS}.{GOOD_SIG}", "header is not base64url"),
        (f"{GOOD_HEADER}..{GOOD_SIG}", "claims is not base64url"),
        (
            '{"payload":"' + GOOD_CLAIMS + '","signatures":[{"protected":"'
            f'{GOOD_HEADER}","signature":"{GOOD_SIG}"' + "}]}",
            "JSON serialization",
        ),
        (
            '{"payload":"' + GOOD_CLAIMS + '","protected":"'
            f'{GOOD_HEADER}","signature":"{GOOD_SIG}"' + "}",
            "JSON serialization",
        ),
    ],
    ids=[
        "bytes",
        "none",
        "over-16kb",
        "two-megabytes",
        "non-ascii",
        "two-segments",
        "four-segments",
        "jwe-five-segments",
        "empty",
        "all-empty",
        "signature-stripped",
        "header-empty",
        "claims-empty",
        "json-serialization-general",
        "json-serialization-flattened",
    ],
)
def test_structure_rejections(token: Any, reason: str) -> None:
    rejected(token, reason)


def _corrupt(segment: str, how: str) -> str:
    if how == "padding":
        return segment + "=" * (-len(segment) % 4 or 2)
    if how == "plus":
        return segment[:-2] + "+" + segment[-1]
    if how == "slash":
        return segment[:-2] + "/" + segment[-1]
    if how == "space":
        return segment[:4] + " " + segment[4:]
    if how == "newline":
        return segment[:4] + "\n" + segment[4:]
    if how == "tab":
        return segment + "\t"
    if how == "bad-length":
        return segment + "A" * ((1 - len(segment)) % 4 or 4)
    raise AssertionError(how)


@pytest.mark.parametrize("position", [0, 1, 2], ids=["header", "claims", "signature"])
@pytest.mark.parametrize(
    "how", ["padding", "plus", "slash", "space", "newline", "tab", "bad-length"]
)
def test_base64url_must_be_strict(position: int, how: str) -> None:
    segments = [b64(dumps({"alg": "ES256", "kid": "k1"})), b64(dumps({"s": 1})), b64(b"x" * 64)]
    segments[position] = _corrupt(segments[position], how)
    with pytest.raises(TokenRejected, match="base64url"):
        parse_compact(".".join(segments))


@pytest.mark.parametrize("position", [0, 1, 2], ids=["header", "claims", "signature"])
def test_non_canonical_trailing_bits(position: int) -> None:
    raw = [dumps({"alg": "ES256", "kid": "k1"}), dumps({"sub": "x"}), b"\x00" * 64]
    segments = [b64(part) for part in raw]
    # Each of these lengths leaves unused low bits in the last character; set one of them.
    assert all(len(part) % 3 != 0 for part in raw)
    last = segments[position][-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    segments[position] = segments[position][:-1] + alphabet[alphabet.index(last) + 1]
    with pytest.raises(TokenRejected, match="not canonical base64url"):
        parse_compact(".".join(segments))


@pytest.mark.parametrize(
    ("header_json", "claims_json", "reason"),
    [
        (b'{"alg":"ES256","alg":"none"}', b"{}", "header has a duplicate member"),
        (b'{"alg":"ES256","kid":"a","kid":"b"}', b"{}", "header has a duplicate member"),
        (b'{"alg":"ES256"}', b'{"sub":"a","sub":"b"}', "claims has a duplicate member"),
        (b'{"alg":"ES256"}', b'{"act":{"sub":"a","sub":"b"}}', "claims has a duplicate member"),
        (b'{"alg":"ES256"}', b'{"x":[[{"k":1,"k":2}]]}', "claims has a duplicate member"),
        (b'{"alg":"ES256","x":{"a":1,"a":1}}', b"{}", "header has a duplicate member"),
        (b'["alg","ES256"]', b"{}", "header is not a JSON object"),
        (b'{"alg":"ES256"}', b'"sub"', "claims is not a JSON object"),
        (b'{"alg":"ES256"}', b"[]", "claims is not a JSON object"),
        (b'{"alg":"ES256"}', b"{", "claims is not valid JSON"),
        (b'{"alg":"ES256"}', b'{"exp":NaN}', "claims has a non-finite number"),
        (b'{"alg":"ES256"}', b'{"exp":-Infinity}', "claims has a non-finite number"),
        (b'{"alg":"ES256"}', b'{"exp":1}{"exp":2}', "claims is not valid JSON"),
        (b'{"alg":"ES256"}', b'{"sub":"\\ud800"}', "claims has an invalid string"),
        (b'{"alg":"ES256"}', b'{"\\udfff":1}', "claims has an invalid string"),
        (b'{"alg":"ES256"}', b'{"sub":"\xff"}', "claims is not UTF-8"),
        (b'{"alg":"ES256"}', b'{"n":' + b"9" * 5000 + b"}", "claims is not valid JSON"),
    ],
    ids=[
        "header-duplicate-alg",
        "header-duplicate-kid",
        "claims-duplicate-sub",
        "claims-duplicate-nested",
        "claims-duplicate-in-array",
        "header-duplicate-nested",
        "header-array",
        "claims-string",
        "claims-array",
        "claims-truncated",
        "claims-nan",
        "claims-infinity",
        "claims-two-objects",
        "claims-lone-surrogate",
        "claims-lone-surrogate-name",
        "claims-not-utf8",
        "claims-huge-integer",
    ],
)
def test_json_rejections(header_json: bytes, claims_json: bytes, reason: str) -> None:
    rejected(f"{b64(header_json)}.{b64(claims_json)}.{GOOD_SIG}", reason)


@pytest.mark.parametrize("where", ["header", "claims"])
@pytest.mark.parametrize("depth", [17, 5_000], ids=["just-too-deep", "5000-deep"])
def test_deep_nesting_is_rejected_without_recursion_error(where: str, depth: int) -> None:
    nested = b'{"x":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"
    header, claims = b'{"alg":"ES256"}', b"{}"
    if where == "header":
        header = nested[:-1] + b',"alg":"ES256"}'
    else:
        claims = nested
    rejected(f"{b64(header)}.{b64(claims)}.{GOOD_SIG}", f"{where} is nested too deeply")


def test_nesting_up_to_the_limit_and_brackets_in_strings_are_fine() -> None:
    claims = b'{"x":' + b"[" * 15 + b"]" * 15 + b',"s":"[[[[[[[[[[[[[[[[[[[[\\"[[[[["}'
    parsed = parse_compact(f"{GOOD_HEADER}.{b64(claims)}.{GOOD_SIG}")
    assert parsed.claims["s"].startswith("[[[")
