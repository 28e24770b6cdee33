"""Strict JSON for untrusted input: RFC 8259 §4 unique member names, bounded nesting."""

from __future__ import annotations

import json
from typing import Any


class StrictJsonError(ValueError):
    """The text is not acceptable JSON; the message is client-safe."""


def load_object(data: bytes, *, max_depth: int) -> dict[str, Any]:
    """Parse UTF-8 ``data`` as one JSON object, refusing duplicates, NaN and deep nesting."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise StrictJsonError("is not UTF-8") from None
    # Measured before parsing so the recursive decoder never sees deep input.
    if _depth(text) > max_depth:
        raise StrictJsonError("is nested too deeply")
    try:
        value = json.loads(text, object_pairs_hook=_unique_members, parse_constant=_no_constant)
    except StrictJsonError:
        raise
    except (ValueError, RecursionError):
        raise StrictJsonError("is not valid JSON") from None
    if not isinstance(value, dict):
        raise StrictJsonError("is not a JSON object")
    _check_strings(value)
    return value


def _depth(text: str) -> int:
    """The deepest bracket nesting outside string literals."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise StrictJsonError("has a duplicate member")
        out[name] = value
    return out


def _no_constant(name: str) -> Any:
    raise StrictJsonError("has a non-finite number")


def _check_strings(value: Any) -> None:
    """Lone surrogates (``"\\ud800"``) decode fine but break every later UTF-8 encode."""
    if isinstance(value, str):
        _encodable(value)
    elif isinstance(value, dict):
        for name, item in value.items():
            _encodable(name)
            _check_strings(item)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item)


def _encodable(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise StrictJsonError("has an invalid string") from None
