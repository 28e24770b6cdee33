"""``application/x-www-form-urlencoded`` request bodies (RFC 6749 Appendix B), strictly."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

from deputy.errors import InvalidRequest

MAX_FORM_BYTES = 64 * 1024
MAX_FORM_FIELDS = 64
MAX_REPEATS = 32


@dataclass(frozen=True, slots=True)
class Form:
    """Decoded parameters. Only ``repeatable`` names may appear more than once (RFC 6749 §3.2)."""

    values: Mapping[str, tuple[str, ...]]

    def get(self, name: str) -> str | None:
        found = self.values.get(name)
        return found[0] if found else None

    def all(self, name: str) -> tuple[str, ...]:
        return self.values.get(name, ())

    def __contains__(self, name: str) -> bool:
        return name in self.values


def parse_form(
    body: bytes, content_type: str | None, *, repeatable: frozenset[str] = frozenset()
) -> Form:
    """Parse a form body; an empty value counts as absent (RFC 6749 §3.1)."""
    media, _, parameters = (content_type or "").partition(";")
    if media.strip().lower() != "application/x-www-form-urlencoded":
        raise InvalidRequest("the body must be application/x-www-form-urlencoded")
    charset = parameters.strip().lower().removeprefix("charset=").strip('"')
    if parameters.strip() and charset not in ("utf-8", "utf8"):
        raise InvalidRequest("form bodies are UTF-8 (RFC 6749 Appendix B)")
    if len(body) > MAX_FORM_BYTES:
        raise InvalidRequest(f"the body exceeds {MAX_FORM_BYTES} bytes")
    try:
        pairs = parse_qsl(
            body.decode("ascii"),
            keep_blank_values=True,
            strict_parsing=bool(body),
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("the body is not a valid form") from None
    values: dict[str, list[str]] = {}
    for name, value in pairs:
        if not name:
            raise InvalidRequest("a parameter has no name")
        if not value:
            continue
        if not name.isprintable() or not value.isprintable():
            raise InvalidRequest(f"parameter {name[:32]!r} holds non-printable characters")
        seen = values.setdefault(name, [])
        if seen and name not in repeatable:
            raise InvalidRequest(f"parameter {name[:32]!r} is repeated")
        if len(seen) >= MAX_REPEATS:
            raise InvalidRequest(f"parameter {name[:32]!r} is repeated too often")
        seen.append(value)
    return Form({k: tuple(v) for k, v in values.items()})
