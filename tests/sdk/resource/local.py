"""A broker's public surface (metadata, JWKS, revocation feed) answered in process, and a
signer of RFC 9068 credentials, for verifier tests that need no running broker."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx
from joserfc.jwk import Key

from deputy.clock import FakeClock
from deputy.sdk.resource import DeputyVerifier
from tests.unit.identity.tokens import DROP, ec_key, jwks, sign

ISSUER = "https://deputy.example"
AUDIENCE = "https://crm.example"
NOW = 1_800_000_000.0
RESEARCH = "spiffe://prod.example/agents/research/r1"
SUPPORT = "spiffe://prod.example/agents/support/triage"
METADATA_PATH = "/.well-known/oauth-authorization-server"
JWKS_PATH = "/.well-known/jwks.json"
FEED_PATH = "/revocations"


class LocalBroker:
    """Answers like Deputy's metadata, JWKS and feed endpoints; records every request."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.keys: dict[str, Key] = {"k1": ec_key("broker-k1")}
        self.revocations: list[dict[str, Any]] = []
        self.metadata_changes: dict[str, Any] = {}
        self.feed_document: dict[str, Any] | None = None  # overrides the generated document
        self.status: dict[str, int] = {}  # path -> forced HTTP status
        self.requests: list[httpx.Request] = []

    # -- server side

    def metadata(self) -> dict[str, Any]:
        document = {
            "issuer": ISSUER,
            "jwks_uri": ISSUER + JWKS_PATH,
            "revocation_feed_endpoint": ISSUER + FEED_PATH,
            "access_token_signing_alg_values_supported": ["ES256"],
        }
        document.update(self.metadata_changes)
        return {k: v for k, v in document.items() if v is not DROP}

    def feed(self) -> dict[str, Any]:
        if self.feed_document is not None:
            return self.feed_document
        return {"issuer": ISSUER, "revocations": self.revocations}

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path in self.status:
            return httpx.Response(self.status[path])
        if path == METADATA_PATH:
            return httpx.Response(200, json=self.metadata())
        if path == JWKS_PATH:
            return httpx.Response(200, json=jwks(*self.keys.items(), alg="ES256", use="sig"))
        if path == FEED_PATH:
            document = self.feed()
            body = json.dumps(document).encode()
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            if request.headers.get("if-none-match") == etag:
                return httpx.Response(304, headers={"etag": etag})
            return httpx.Response(
                200, content=body, headers={"etag": etag, "content-type": "application/json"}
            )
        return httpx.Response(404)

    def count(self, path: str) -> int:
        return sum(1 for r in self.requests if r.url.path == path)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handler))

    def verifier(self, **options: Any) -> DeputyVerifier:
        options.setdefault("http_client", self.client())
        return DeputyVerifier(ISSUER, AUDIENCE, clock=self.clock, **options)

    def revoke(self, selector: str, value: str, issued_before: float | None = None) -> None:
        cut = int(self.clock.now() if issued_before is None else issued_before)
        self.revocations.append(
            {selector: value, "issued_before": cut, "expires_at": int(self.clock.now()) + 3600}
        )

    # -- credentials

    def claims(self, **changes: Any) -> dict[str, Any]:
        """A sub-agent's credential, as Deputy mints it; DROP leaves a claim out."""
        now = int(self.clock.now())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": "alice",
            "aud": AUDIENCE,
            "client_id": RESEARCH,
            "iat": now,
            "exp": now + 120,
            "jti": "jti-child",
            "scope": "accounts:read",
            "agent_instance": RESEARCH,
            "execution_id": "exe_1",
            "workflow": "support-research",
            "decision_id": "dec_1",
            "delegation": "user_token",
            "act": {"sub": RESEARCH, "act": {"sub": SUPPORT}},
            "delegated_from": ["jti-parent"],
        }
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not DROP}

    def mint(
        self,
        claims: dict[str, Any] | None = None,
        *,
        kid: str = "k1",
        key: Key | None = None,
        **header: Any,
    ) -> str:
        header.setdefault("typ", "at+jwt")
        header.setdefault("alg", "ES256")
        signing_key = key if key is not None else self.keys[kid]
        return sign(self.claims() if claims is None else claims, signing_key, kid=kid, **header)
