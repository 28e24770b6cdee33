"""The agent's side of DPoP (RFC 9449): a key that never leaves the process, and its proofs."""

from __future__ import annotations

import json
import secrets
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from deputy.clock import Clock, SystemClock
from deputy.tokens.dpop import PROOF_TYPE, access_token_hash, b64url, thumbprint

_COORDINATE_BYTES = 32  # P-256


class DpopKey:
    """A P-256 key made in memory (one per execution); signs ES256 DPoP proofs."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._private = ec.generate_private_key(ec.SECP256R1())
        numbers = self._private.public_key().public_numbers()
        self.public_jwk: dict[str, str] = {
            "kty": "EC",
            "crv": "P-256",
            "x": b64url(numbers.x.to_bytes(_COORDINATE_BYTES, "big")),
            "y": b64url(numbers.y.to_bytes(_COORDINATE_BYTES, "big")),
        }
        self.jkt = thumbprint(self.public_jwk)
        self._header = b64url(
            json.dumps(
                {"typ": PROOF_TYPE, "alg": "ES256", "jwk": self.public_jwk}, separators=(",", ":")
            ).encode()
        )

    def __repr__(self) -> str:
        return f"DpopKey(jkt={self.jkt!r})"

    def proof(
        self,
        method: str,
        url: str,
        *,
        access_token: str | None = None,
        nonce: str | None = None,
    ) -> str:
        """RFC 9449 §4.2: ``htm``, ``htu`` (no query or fragment), ``iat``, ``jti``, and
        ``ath`` when presenting an access token, ``nonce`` when the server asked for one."""
        claims: dict[str, Any] = {
            "htm": method.upper(),
            "htu": url.split("#", 1)[0].split("?", 1)[0],
            "iat": int(self._clock.now()),
            "jti": secrets.token_urlsafe(16),
        }
        if access_token is not None:
            claims["ath"] = access_token_hash(access_token)
        if nonce is not None:
            claims["nonce"] = nonce
        payload = b64url(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = f"{self._header}.{payload}".encode("ascii")
        r, s = decode_dss_signature(self._private.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(_COORDINATE_BYTES, "big") + s.to_bytes(_COORDINATE_BYTES, "big")
        return f"{self._header}.{payload}.{b64url(signature)}"
