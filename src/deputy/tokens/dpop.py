"""DPoP proofs (RFC 9449): checked at the broker when binding, and at APIs when presenting."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from deputy.clock import Clock
from deputy.errors import TokenRejected
from deputy.identity.jose import (
    ALLOWED_ASYMMETRIC_ALGS,
    LEEWAY_SECONDS,
    client_safe,
    parse_compact,
    verify_signature,
)
from deputy.identity.key_set import KeySet
from deputy.identity.replay import ReplayGuard

PROOF_TYPE = "dpop+jwt"
MAX_PROOF_AGE_SECONDS = 60  # how far in the past a proof's iat may be (RFC 9449 §11.1)
MAX_JTI_LENGTH = 256
# RFC 7638 §3.2: the required members, in lexicographic order, per key type.
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}
_DEFAULT_PORTS = {"http": 80, "https": 443}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK SHA-256 thumbprint, base64url: the ``jkt`` a credential is bound to."""
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")))
    if members is None or not all(isinstance(jwk.get(m), str) for m in members):
        raise TokenRejected("DPoP key must be an EC or RSA public JWK")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def access_token_hash(token: str) -> str:
    """RFC 9449 §4.2 ``ath``: base64url SHA-256 of the ASCII access token."""
    return b64url(hashlib.sha256(token.encode("ascii")).digest())


def normalize_url(url: str) -> str:
    """``htu`` comparison form (RFC 9449 §4.3 item 9): no query or fragment, RFC 3986 §6.2.2-3."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        raise TokenRejected("DPoP htu is not a valid URL") from None
    netloc = host if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    if ":" in host and not host.startswith("["):
        netloc = f"[{host}]" + netloc[len(host) :]
    return urlunsplit((scheme, netloc, parts.path or "/", "", ""))


@dataclass(frozen=True, slots=True)
class DpopProof:
    """A verified proof: the thumbprint of the key that signed it."""

    jkt: str
    jti: str
    issued_at: float


class DpopVerifier:
    """Checks every rule of RFC 9449 §4.3 for one request, and remembers proof ids (§11.1).

    ``verify`` is a coroutine because the proof ids may be remembered by a guard shared
    between replicas (Redis); such a guard that cannot answer raises
    :class:`deputy.errors.StoreUnavailable`, which callers answer with 503.
    """

    def __init__(
        self,
        clock: Clock,
        replay: ReplayGuard,
        *,
        max_age: int = MAX_PROOF_AGE_SECONDS,
        algorithms: frozenset[str] = ALLOWED_ASYMMETRIC_ALGS,
    ) -> None:
        self._clock = clock
        self._replay = replay
        self._max_age = max_age
        self._algorithms = algorithms

    async def verify(
        self,
        proof: str,
        *,
        method: str,
        url: str,
        access_token: str | None = None,
        nonce: str | None = None,
    ) -> DpopProof:
        """Raise :class:`TokenRejected` naming the first rule the proof breaks."""
        parsed = parse_compact(proof)  # §4.3 items 2, 4-5: one well-formed JWS, alg not none
        header, claims = parsed.header, parsed.claims
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower().removeprefix("application/") != PROOF_TYPE:
            raise TokenRejected(f"DPoP proof typ must be {PROOF_TYPE}")
        jwk = header.get("jwk")
        if not isinstance(jwk, dict):
            raise TokenRejected("DPoP proof has no jwk header")
        try:
            keys = KeySet.from_jwks({"keys": [jwk]})  # refuses private keys and weak RSA
        except ValueError as exc:
            raise TokenRejected(f"DPoP jwk is not acceptable: {exc}") from None
        key = keys.get(None)
        if key is None:
            raise TokenRejected("DPoP jwk is not an EC or RSA public key")
        verify_signature(parsed, key, self._algorithms)  # §4.3 items 6-7
        jti = claims.get("jti")
        if not isinstance(jti, str) or not 1 <= len(jti) <= MAX_JTI_LENGTH:
            raise TokenRejected(f"DPoP proof needs a jti of 1 to {MAX_JTI_LENGTH} characters")
        if claims.get("htm") != method:
            raise TokenRejected(f"DPoP htm must be {method}")
        htu = claims.get("htu")
        if not isinstance(htu, str) or normalize_url(htu) != normalize_url(url):
            raise TokenRejected(f"DPoP htu must be {client_safe(normalize_url(url), 200)}")
        iat = claims.get("iat")
        now = self._clock.now()
        if isinstance(iat, bool) or not isinstance(iat, int | float):
            raise TokenRejected("DPoP proof has no iat")
        if not now - self._max_age <= iat <= now + LEEWAY_SECONDS:
            raise TokenRejected("DPoP proof iat is outside the accepted window")
        if nonce is not None and claims.get("nonce") != nonce:
            raise TokenRejected("DPoP proof must carry the server's nonce")
        if access_token is not None:
            if claims.get("ath") != access_token_hash(access_token):
                raise TokenRejected("DPoP ath does not match the access token")
        elif "ath" in claims:
            raise TokenRejected("DPoP ath is only for proofs that present an access token")
        jkt = thumbprint(jwk)
        expires_at = float(iat) + self._max_age + LEEWAY_SECONDS
        if not await self._replay.first_use(f"{jkt}:{jti}", expires_at):
            raise TokenRejected("DPoP proof was already used")
        return DpopProof(jkt, jti, float(iat))
