"""DPoP (RFC 9449) at the API: the refusals that need a ``DPoP`` challenge, server nonces
kept without server state, and the URL a request's proof must name.

Nothing here imports a web framework.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from deputy.clock import Clock
from deputy.sdk.errors import CredentialRejected
from deputy.tokens.dpop import b64url

DEFAULT_NONCE_WINDOW = 60.0  # seconds: a nonce is good in its window and the next one
MIN_SECRET_BYTES = 32
_NONCE_BYTES = 18  # 144 bits of MAC: base64url without padding


class DpopRejected(CredentialRejected):
    """A refusal answered with a ``DPoP`` challenge (RFC 9449 §7.1) rather than ``Bearer``.

    ``error`` is ``invalid_dpop_proof`` (the proof breaks a rule of RFC 9449 §4.3, or was
    not signed by the credential's key), ``use_dpop_nonce`` (the proof lacks a current
    server nonce: ``nonce`` is the one to use, sent as ``DPoP-Nonce``), ``invalid_token``
    (the credential itself, or a bound credential presented as a Bearer token),
    ``invalid_request`` (a malformed ``Authorization: DPoP``), or
    ``temporarily_unavailable``.
    """

    def __init__(
        self, error: str, description: str, *, status: int = 401, nonce: str | None = None
    ) -> None:
        super().__init__(error, description, status=status)
        self.nonce = nonce

    @classmethod
    def of(cls, error: CredentialRejected) -> DpopRejected:
        """``error``, answered with a DPoP challenge."""
        if isinstance(error, DpopRejected):
            return error
        return cls(error.error, error.description, status=error.status)


class DpopNonces:
    """Server nonces for DPoP proofs (RFC 9449 §9) that need no server state.

    A nonce is an HMAC of the current time window (``window`` seconds) and of ``context``
    (the API's audience), so it is accepted during its own window and the next one, then
    refused. Replicas of one API that share ``secret`` (at least 32 bytes) accept each
    other's nonces; without one, a random secret is made for this process.
    """

    __slots__ = ("_cache", "_clock", "_context", "_secret", "_window")

    def __init__(
        self,
        clock: Clock,
        *,
        secret: bytes | None = None,
        context: str = "",
        window: float = DEFAULT_NONCE_WINDOW,
    ) -> None:
        if secret is not None and len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the DPoP nonce secret must be at least {MIN_SECRET_BYTES} bytes")
        if not (math.isfinite(window) and window > 0):
            raise ValueError("the DPoP nonce window must be a positive number of seconds")
        self._clock = clock
        self._secret = secret if secret is not None else secrets.token_bytes(MIN_SECRET_BYTES)
        self._context = context.encode("utf-8")
        self._window = window
        self._cache: tuple[int, str] | None = None

    def __repr__(self) -> str:
        return f"DpopNonces(window={self._window!r})"

    def _index(self) -> int:
        return math.floor(self._clock.now() / self._window)

    def _nonce(self, index: int) -> str:
        cached = self._cache
        if cached is not None and cached[0] == index:
            return cached[1]
        message = b"deputy-dpop-nonce\x00" + self._context + b"\x00" + str(index).encode()
        mac = hmac.new(self._secret, message, hashlib.sha256).digest()[:_NONCE_BYTES]
        nonce = b64url(mac)
        if index == self._index():
            self._cache = (index, nonce)
        return nonce

    def current(self) -> str:
        """The nonce to hand out now."""
        return self._nonce(self._index())

    def valid(self, nonce: object) -> bool:
        """Whether ``nonce`` was handed out in this window or the one before."""
        if not isinstance(nonce, str) or len(nonce) > 2 * _NONCE_BYTES or not nonce.isascii():
            return False
        index = self._index()
        return any(
            hmac.compare_digest(nonce.encode("ascii"), self._nonce(i).encode("ascii"))
            for i in (index, index - 1)
        )


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def request_url(scope: Mapping[str, Any], public_url: str | None = None) -> str:
    """The URL of an ASGI request without its query: what its DPoP proof's ``htu`` names.

    With ``public_url`` (the public URL of the application's root, as agents call it:
    scheme, host, and any path prefix before the app), it is ``public_url`` plus the path
    within the app. Without it, it is rebuilt from the request: its scheme, its ``Host``
    header (else the server address) and its path as sent (``raw_path``), which behind a
    proxy that rewrites any of them is not what the agent called — pass ``public_url``.
    """
    raw = scope.get("raw_path")
    if isinstance(raw, bytes) and raw:
        path = raw.decode("latin-1").split("?", 1)[0]
    else:
        path = quote(str(scope.get("path", "")) or "/", safe="/:@!$&'()*+,;=-._~%")
    if public_url is not None:
        root = quote(str(scope.get("root_path", "")), safe="/:@!$&'()*+,;=-._~%")
        if root and (path == root or path.startswith(root + "/")):
            path = path[len(root) :]
        return public_url.rstrip("/") + (path or "/")
    scheme = str(scope.get("scheme", "http"))
    host = _header(scope.get("headers", ()), b"host")
    if not host:
        server = scope.get("server")
        if server and server[1] is not None:
            host = f"{server[0]}:{server[1]}"
        elif server:
            host = str(server[0])
        else:
            host = "localhost"
    return f"{scheme}://{host}{path}"


def public_base(url: str) -> str:
    """Check a public URL option: absolute http(s), no query or fragment."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"public_url must be an absolute http(s) URL, not {url!r}")
    if parts.query or parts.fragment:
        raise ValueError("public_url must not have a query or a fragment")
    return url.rstrip("/")
