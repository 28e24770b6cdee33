"""``parse_form``: strict ``application/x-www-form-urlencoded`` bodies (RFC 6749 App. B)."""

from __future__ import annotations

import pytest

from deputy.errors import InvalidRequest
from deputy.oauth.form import MAX_FORM_BYTES, MAX_FORM_FIELDS, MAX_REPEATS, Form, parse_form

FORM = "application/x-www-form-urlencoded"


def parse(body: bytes, repeatable: frozenset[str] = frozenset()) -> Form:
    return parse_form(body, FORM, repeatable=repeatable)


def rejected(body: bytes, content_type: str | None = FORM, **kw: frozenset[str]) -> str:
    with pytest.raises(InvalidRequest) as caught:
        parse_form(body, content_type, **kw)
    assert caught.value.error == "invalid_request"
    return caught.value.description


# --- content type --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [None, "", "application/json", "text/plain", "multipart/form-data; boundary=x"],
    ids=["missing", "empty", "json", "text", "multipart"],
)
def test_wrong_or_missing_content_type(content_type: str | None) -> None:
    assert rejected(b"a=1", content_type) == "the body must be application/x-www-form-urlencoded"


@pytest.mark.parametrize(
    "content_type",
    [
        FORM,
        f"{FORM}; charset=UTF-8",
        f"{FORM};charset=utf-8",
        "Application/X-WWW-Form-URLEncoded",
        f"  {FORM}  ",
    ],
    ids=["plain", "charset", "charset-no-space", "mixed-case", "padded"],
)
def test_accepted_content_types(content_type: str) -> None:
    assert parse_form(b"grant_type=x", content_type).get("grant_type") == "x"


# --- decoding ------------------------------------------------------------------------------


def test_empty_body_is_empty_form() -> None:
    form = parse(b"")
    assert form.values == {}
    assert form.get("grant_type") is None
    assert "grant_type" not in form


def test_plus_decodes_to_space() -> None:
    assert parse(b"scope=a+b%20c").get("scope") == "a b c"


def test_percent_encoded_utf8_is_decoded() -> None:
    assert parse(b"name=caf%C3%A9&who=%E2%9C%93").values == {"name": ("café",), "who": ("✓",)}


def test_percent_encoded_name_is_decoded() -> None:
    assert parse(b"client%5Fid=abc").get("client_id") == "abc"


@pytest.mark.parametrize("body", [b"a=%ff", b"a=%C3", b"a=%C3%28", b"%ff=1"])
def test_invalid_percent_encoded_utf8(body: bytes) -> None:
    assert rejected(body) == "the body is not a valid form"


@pytest.mark.parametrize("body", ["name=café".encode(), b"a=\xff", "n=✓".encode()])
def test_raw_non_ascii_bytes_are_rejected(body: bytes) -> None:
    assert rejected(body) == "the body is not a valid form"


@pytest.mark.parametrize("body", [b"a=1&&b=2", b"a=1&", b"novalue", b"&"])
def test_malformed_fields_are_rejected(body: bytes) -> None:
    assert rejected(body) == "the body is not a valid form"


@pytest.mark.parametrize(
    ("body", "name"),
    [
        (b"a=x%00y", "a"),
        (b"a=x%0ay", "a"),
        (b"a=%0D%0A", "a"),
        (b"a=%09", "a"),
        (b"a=%7F", "a"),
        (b"k%00=v", "k\x00"),
    ],
    ids=["nul", "lf", "crlf", "tab", "del", "in-name"],
)
def test_control_characters_are_rejected(body: bytes, name: str) -> None:
    assert rejected(body) == f"parameter {name!r} holds non-printable characters"


# --- empty values --------------------------------------------------------------------------


def test_empty_value_is_treated_as_absent() -> None:
    form = parse(b"scope=&grant_type=x")
    assert form.get("scope") is None
    assert "scope" not in form
    assert form.all("scope") == ()
    assert form.values == {"grant_type": ("x",)}


def test_empty_value_does_not_count_as_a_repeat() -> None:
    form = parse(b"scope=&scope=a&scope=")
    assert form.values == {"scope": ("a",)}


# --- repeats -------------------------------------------------------------------------------


def test_repeated_non_repeatable_parameter_is_rejected() -> None:
    assert rejected(b"scope=a&scope=b") == "parameter 'scope' is repeated"


def test_repeatable_parameter_keeps_every_value_in_order() -> None:
    form = parse(b"resource=r1&resource=r2&scope=s", repeatable=frozenset({"resource"}))
    assert form.all("resource") == ("r1", "r2")
    assert form.get("resource") == "r1"
    assert form.all("scope") == ("s",)


def test_repeatable_allowed_up_to_max_repeats() -> None:
    body = "&".join(f"resource=r{i}" for i in range(MAX_REPEATS)).encode()
    form = parse(body, repeatable=frozenset({"resource"}))
    assert form.all("resource") == tuple(f"r{i}" for i in range(MAX_REPEATS))


def test_repeatable_beyond_max_repeats_is_rejected() -> None:
    body = "&".join(f"resource=r{i}" for i in range(MAX_REPEATS + 1)).encode()
    assert rejected(body, repeatable=frozenset({"resource"})) == (
        "parameter 'resource' is repeated too often"
    )


# --- limits --------------------------------------------------------------------------------


def test_max_fields_allowed() -> None:
    body = "&".join(f"f{i}=v" for i in range(MAX_FORM_FIELDS)).encode()
    assert len(parse(body).values) == MAX_FORM_FIELDS


def test_too_many_fields_are_rejected() -> None:
    body = "&".join(f"f{i}=v" for i in range(MAX_FORM_FIELDS + 1)).encode()
    assert rejected(body) == "the body is not a valid form"


def test_body_of_exactly_max_bytes_is_accepted() -> None:
    body = b"a=" + b"x" * (MAX_FORM_BYTES - 2)
    assert len(body) == MAX_FORM_BYTES
    assert parse(body).get("a") == "x" * (MAX_FORM_BYTES - 2)


def test_oversized_body_is_rejected() -> None:
    body = b"a=" + b"x" * (MAX_FORM_BYTES - 1)
    assert rejected(body) == f"the body exceeds {MAX_FORM_BYTES} bytes"
