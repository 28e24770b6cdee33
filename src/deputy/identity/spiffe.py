"""SPIFFE IDs (SPIFFE-ID specification §2), validated on construction."""

from __future__ import annotations

import re

MAX_SPIFFE_ID_BYTES = 2048
MAX_TRUST_DOMAIN_LENGTH = 255
_SCHEME = "spiffe://"
# §2.1: lowercase letters, digits, dots, dashes and underscores only (no port, no userinfo).
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
# §2.2: letters, digits, dots, dashes and underscores; no percent-encoding.
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


class SpiffeId:
    """``spiffe://<trust domain>[/<path>]``; raises ``ValueError`` when not a valid SPIFFE ID."""

    __slots__ = ("_path", "_trust_domain")

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise ValueError("SPIFFE ID is not a string")
        if len(value.encode("utf-8", "replace")) > MAX_SPIFFE_ID_BYTES:
            raise ValueError(f"SPIFFE ID is longer than {MAX_SPIFFE_ID_BYTES} bytes")
        if not value.startswith(_SCHEME):
            raise ValueError("SPIFFE ID must start with 'spiffe://'")
        rest = value[len(_SCHEME) :]
        trust_domain, slash, path = rest.partition("/")
        check_trust_domain(trust_domain)
        if slash:
            for segment in path.split("/"):
                if not segment:
                    raise ValueError("SPIFFE ID path has an empty segment")
                if segment in {".", ".."}:
                    raise ValueError("SPIFFE ID path has a '.' or '..' segment")
                if not _SEGMENT.fullmatch(segment):
                    raise ValueError("SPIFFE ID path has characters outside [A-Za-z0-9._-]")
        self._trust_domain = trust_domain
        self._path = slash + path

    @property
    def trust_domain(self) -> str:
        return self._trust_domain

    @property
    def path(self) -> str:
        """The path with its leading "/", or "" for the trust domain's own ID."""
        return self._path

    def __str__(self) -> str:
        return f"{_SCHEME}{self._trust_domain}{self._path}"

    def __repr__(self) -> str:
        return f"SpiffeId({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SpiffeId) and str(other) == str(self)

    def __hash__(self) -> int:
        return hash(str(self))


def check_trust_domain(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a valid trust domain name (§2.1)."""
    if not name:
        raise ValueError("SPIFFE ID has no trust domain")
    if len(name) > MAX_TRUST_DOMAIN_LENGTH:
        raise ValueError(f"trust domain is longer than {MAX_TRUST_DOMAIN_LENGTH} characters")
    if not _TRUST_DOMAIN.fullmatch(name):
        raise ValueError("trust domain has characters outside [a-z0-9._-]")
