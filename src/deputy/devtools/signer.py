"""Token signers with keys made at run time: a user IdP and a JWT-SVID signer."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey

from deputy.clock import Clock


class TokenSigner:
    """An ES256 key that signs JWTs and publishes its public JWKS."""

    def __init__(self, clock: Clock, *, kid: str | None = None) -> None:
        self.clock = clock
        self.key = ECKey.generate_key("P-256", private=True)
        self.kid = kid or secrets.token_hex(6)

    def jwks(self) -> dict[str, Any]:
        public = self.key.as_dict(private=False)
        public.update({"kid": self.kid, "alg": "ES256", "use": "sig"})
        return {"keys": [public]}

    def write_jwks(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.jwks(), indent=2))
        return path

    def sign(self, claims: dict[str, Any], *, header: dict[str, Any] | None = None) -> str:
        head = {"alg": "ES256", "kid": self.kid, "typ": "JWT", **(header or {})}
        return jwt.encode(head, claims, self.key, algorithms=["ES256"])


class LocalIdp(TokenSigner):
    """An OIDC provider for users: ID tokens with a tier claim."""

    def __init__(self, clock: Clock, issuer: str, audience: str, tier_claim: str = "plan") -> None:
        super().__init__(clock)
        self.issuer = issuer
        self.audience = audience
        self.tier_claim = tier_claim

    def user_token(self, user_id: str, tier: str | None = "pro", lifetime: int = 3600) -> str:
        now = int(self.clock.now())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": user_id,
            "aud": self.audience,
            "iat": now,
            "exp": now + lifetime,
        }
        if tier is not None:
            claims[self.tier_claim] = tier
        return self.sign(claims)


class SvidSigner(TokenSigner):
    """A SPIFFE trust domain's JWT-SVID signer; its JWKS doubles as the trust bundle."""

    def __init__(self, clock: Clock, trust_domain: str) -> None:
        super().__init__(clock)
        self.trust_domain = trust_domain

    def jwt_svid(self, path: str, audience: str = "deputy", lifetime: int = 300) -> str:
        now = int(self.clock.now())
        return self.sign(
            {
                "sub": f"spiffe://{self.trust_domain}{path}",
                "aud": [audience],
                "iat": now,
                "exp": now + lifetime,
            }
        )
