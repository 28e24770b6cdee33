"""The resource server's parser gives the verdicts of ``deputy.identity.jose.parse_compact``."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from deputy.errors import TokenRejected
from deputy.identity.jose import MAX_JSON_DEPTH, MAX_TOKEN_BYTES, ParsedJwt, parse_compact
from deputy.sdk.resource._compact import HeaderCache, parse
from tests.unit.identity.tokens import b64, dumps, ec_key, sign

HEADER = b64(dumps({"alg": "ES256", "typ": "at+jwt", "kid": "k1"}))
CLAIMS = b64(dumps({"sub": "alice", "act": {"sub": "a"}, "aud": ["x"]}))
SIG = b64(b"\x01" * 64)
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def nested(depth: int, kind: str) -> bytes:
    """A JSON object whose deepest container is at ``depth``."""
    inner = "1"
    for _ in range(depth - 1):
        inner = f'{{"a":{inner}}}' if kind == "object" else f"[{inner}]"
    return f'{{"n":{inner}}}'.encode()


JSON_TEXTS: list[bytes] = [
    b"{}",
    b'{"sub":"x"}',
    b' {"sub":"x"} ',
    b'{"sub":"x"}\n',
    b"\xef\xbb\xbf{}",
    b'{"a":1,"a":2}',
    b'{"a":{"b":1,"b":1}}',
    b'{"a":[{"k":1,"k":2}]}',
    b'{"a":NaN}',
    b'{"a":Infinity}',
    b'{"a":-Infinity}',
    b'{"a":1e400}',
    b'{"a":' + b"9" * 5000 + b"}",
    b'{"a":"\\ud800"}',
    b'{"\\udfff":1}',
    b'{"a":"\\ud83d\\ude00"}',
    b'{"a":"\\u0041"}',
    b'{"a":"\\\\u0041"}',
    '{"a":"é"}'.encode(),
    b'{"a":"\xff"}',
    b'{"a":"\xed\xa0\x80"}',
    b"[]",
    b'"x"',
    b"1",
    b"null",
    b"{",
    b'{"a":1}{"b":2}',
    b'{"a":"[[[[[[[[[[[[[[[[[[[[[[["}',
    b'{"a":"{{{{{{{{{{{{{{{{{{{{{{{{{{{{"}',
    b'{"a":"\\"[[[[[[[[[[[[[[[[[[[[[[[[[["}',
    b"[" * 40000,
    b'{"a":' + b"[" * 5000,
    b'{"a":' + b"[" * 3000 + b"]" * 3000 + b"}",
    *(nested(depth, kind) for depth in (15, 16, 17, 40) for kind in ("object", "array")),
]


def corrupt(segment: str, how: str) -> str:
    if how == "padding":
        return segment + "=" * (-len(segment) % 4 or 2)
    if how == "plus":
        return segment[:-2] + "+" + segment[-1]
    if how == "space":
        return segment[:4] + " " + segment[4:]
    if how == "bad-length":
        return segment + "A" * ((1 - len(segment)) % 4 or 4)
    if how == "trailing-bits":
        return segment[:-1] + ALPHABET[ALPHABET.index(segment[-1]) + 1]
    raise AssertionError(how)


def corpus() -> list[Any]:
    tokens: list[Any] = [
        None,
        b"a.b.c",
        7,
        "",
        "..",
        "a.b",
        "a.b.c.d",
        "a.b.c.d.e",
        "a.b.",
        "é.b.c",
    ]
    tokens += ["a" * (MAX_TOKEN_BYTES + 1), '{"payload":"e30"}', f"{HEADER}.{CLAIMS}.{SIG}"]
    tokens.append(sign({"sub": "x"}, ec_key("compact"), kid="k1", typ="at+jwt"))
    for text in JSON_TEXTS:
        tokens.append(f"{HEADER}.{b64(text)}.{SIG}")
        tokens.append(f"{b64(text)}.{CLAIMS}.{SIG}")
    for header in (
        {},
        {"alg": 1},
        {"alg": "none"},
        {"alg": "nOnE"},
        {"alg": "ES256", "crit": []},
        {"alg": "ES256", "b64": False},
        {"alg": "ES256", "b64": True},
        {"alg": "ES256", "kid": None},
        {"alg": "ES256", "kid": ""},
        {"alg": "ES256", "kid": "a/b"},
        {"alg": "ES256", "kid": "k" * 129},
        {"alg": "ES256", "kid": "Abc-1.2_3~4:5+6=7"},
        {"alg": "HS256", "kid": "k1"},
    ):
        tokens.append(f"{b64(dumps(header))}.{CLAIMS}.{SIG}")
    segments = [b64(dumps({"alg": "ES256", "kid": "k1"})), b64(dumps({"s": 1})), b64(b"x" * 64)]
    for position, how in itertools.product(
        range(3), ["padding", "plus", "space", "bad-length", "trailing-bits"]
    ):
        changed = list(segments)
        changed[position] = corrupt(changed[position], how)
        tokens.append(".".join(changed))
    return tokens


def outcome(parser: Any, token: Any) -> tuple[str, Any]:
    try:
        parsed: ParsedJwt = parser(token)
    except TokenRejected:
        return "rejected", None
    return "accepted", (
        dict(parsed.header),
        parsed.claims,
        parsed.signing_input,
        parsed.signature,
        parsed.alg,
        parsed.kid,
    )


@pytest.mark.parametrize("token", corpus())
def test_same_verdict_and_content_as_the_reference(token: Any) -> None:
    headers = HeaderCache()
    reference = outcome(parse_compact, token)
    assert outcome(lambda t: parse(t, headers), token) == reference
    # Again, with the header now cached when it was acceptable.
    assert outcome(lambda t: parse(t, headers), token) == reference


def test_the_corpus_reaches_both_verdicts_and_the_depth_limit() -> None:
    verdicts = [outcome(parse_compact, t)[0] for t in corpus()]
    assert verdicts.count("accepted") >= 10 and verdicts.count("rejected") >= 60
    assert MAX_JSON_DEPTH == 16  # nested(16) is accepted, nested(17) refused


def test_a_cached_header_cannot_be_changed_by_a_caller() -> None:
    headers = HeaderCache()
    parsed = parse(f"{HEADER}.{CLAIMS}.{SIG}", headers)
    with pytest.raises(TypeError):
        parsed.header["alg"] = "none"  # type: ignore[index]
    assert parse(f"{HEADER}.{CLAIMS}.{SIG}", headers).header["alg"] == "ES256"


def test_the_header_cache_stays_small() -> None:
    headers = HeaderCache()
    for i in range(200):
        header = b64(dumps({"alg": "ES256", "kid": f"k{i}"}))
        assert parse(f"{header}.{CLAIMS}.{SIG}", headers).kid == f"k{i}"
    assert len(headers._entries) <= 64
