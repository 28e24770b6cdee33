"""Minting RFC 9068 JWT access tokens, one per granted tool."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from joserfc.jws import JWSRegistry

from deputy.ids import IdSource
from deputy.tokens.key_ring import KeyRing, SigningKey

TOKEN_TYPE_HEADER = "at+jwt"  # noqa: S105 - RFC 9068 §2.1 media type, not a secret


@dataclass(frozen=True, slots=True)
class Credential:
    """One minted credential. ``token`` is excluded from ``repr`` so it never reaches a log."""

    tool: str
    jti: str
    audience: str
    scope: str
    category: str
    issued_at: int
    expires_at: int
    token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Attribution:
    """Who a credential is for and which execution and decision produced it."""

    user_id: str
    workload_id: str
    agent_instance: str
    execution_id: str
    workflow: str
    decision_id: str
    delegation: str


def b64url(data: bytes) -> bytes:
    """RFC 7515 §2 base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def compact_json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


class Minter:
    """Signs credentials with the key ring's active key."""

    def __init__(self, key_ring: KeyRing, issuer: str, ids: IdSource) -> None:
        self._key_ring = key_ring
        self._ids = ids
        self._issuer = issuer
        self._headers: dict[str, bytes] = {}

    def _header(self, key: SigningKey) -> bytes:
        """The encoded protected header, the same for every token of one key."""
        encoded = self._headers.get(key.kid)
        if encoded is None:
            header = {"alg": key.alg, "typ": TOKEN_TYPE_HEADER, "kid": key.kid}
            encoded = self._headers[key.kid] = b64url(compact_json(header))
        return encoded

    def sign(self, key: SigningKey, claims: dict[str, Any]) -> str:
        """RFC 7515 §7.1 compact serialization; the signature is joserfc's algorithm's."""
        signing_input = self._header(key) + b"." + b64url(compact_json(claims))
        signature = JWSRegistry.algorithms[key.alg].sign(signing_input, key.key)
        return (signing_input + b"." + b64url(signature)).decode("ascii")

    def mint(
        self,
        *,
        tool: str,
        audience: str,
        scope: str,
        category: str,
        who: Attribution,
        issued_at: int,
        expires_at: int,
    ) -> Credential:
        """RFC 9068 §2.2 claims plus RFC 8693 §4.1 ``act`` naming the agent workload."""
        key = self._key_ring.active()
        jti = self._ids.token()
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "sub": who.user_id,
            "aud": audience,
            "client_id": who.workload_id,
            "iat": issued_at,
            "exp": expires_at,
            "jti": jti,
            "scope": scope,
            "act": {"sub": who.workload_id},
            "agent_instance": who.agent_instance,
            "execution_id": who.execution_id,
            "workflow": who.workflow,
            "decision_id": who.decision_id,
            "delegation": who.delegation,
        }
        token = self.sign(key, claims)
        return Credential(tool, jti, audience, scope, category, issued_at, expires_at, token)
