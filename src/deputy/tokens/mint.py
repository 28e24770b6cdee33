"""Minting RFC 9068 JWT access tokens, one per granted tool."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from joserfc import jwt

from deputy.tokens.key_ring import KeyRing

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


def new_jti() -> str:
    return secrets.token_urlsafe(16)


class Minter:
    """Signs credentials with the key ring's active key."""

    def __init__(self, key_ring: KeyRing, issuer: str) -> None:
        self._key_ring = key_ring
        self._issuer = issuer

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
        jti = new_jti()
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
        header = {"alg": key.alg, "typ": TOKEN_TYPE_HEADER, "kid": key.kid}
        token = jwt.encode(header, claims, key.key, algorithms=[key.alg])
        return Credential(tool, jti, audience, scope, category, issued_at, expires_at, token)
