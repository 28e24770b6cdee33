"""Minting RFC 9068 JWT access tokens, one per granted tool."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deputy.ids import IdSource
from deputy.tokens.key_ring import KeyRing, SigningKey
from deputy.tokens.signer import signer_for

TOKEN_TYPE_HEADER = "at+jwt"  # noqa: S105 - RFC 9068 §2.1 media type, not a secret


@dataclass(frozen=True, slots=True)
class Attribution:
    """Who a credential is for and which execution and decision produced it."""

    user_id: str
    actors: tuple[str, ...]  # the agent workload, then the agents it acts for, newest first
    agent_instance: str
    execution_id: str
    workflow: str
    decision_id: str
    delegation: str
    delegated_from: tuple[str, ...] = ()  # jtis of the credentials this one descends from
    jkt: str | None = None  # RFC 9449: bound to this key's thumbprint

    @property
    def act(self) -> dict[str, Any] | None:
        """RFC 8693 §4.1 nested ``act``: the newest actor outermost; none without delegation."""
        if self.delegation == "none":
            return None
        act: dict[str, Any] | None = None
        for actor in reversed(self.actors):
            act = {"sub": actor} if act is None else {"sub": actor, "act": act}
        return act


def b64url(data: bytes) -> bytes:
    """RFC 7515 §2 base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=")


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def compact_json(document: dict[str, Any]) -> bytes:
    return _ENCODER.encode(document).encode()


@dataclass(frozen=True, slots=True)
class CredentialDraft:
    """A credential before its signature: the claims, and what the audit keeps of it."""

    tool: str
    jti: str
    audience: str
    scope: str
    category: str
    issued_at: int
    expires_at: int
    claims: dict[str, Any] = field(repr=False)

    @property
    def token_type(self) -> str:
        """RFC 9449 §5: ``DPoP`` for a key-bound credential, else RFC 6750 ``Bearer``."""
        return "DPoP" if "cnf" in self.claims else "Bearer"

    def signed(self, token: str) -> Credential:
        return Credential(self, token)


@dataclass(frozen=True, slots=True)
class Credential:
    """A signed credential. ``token`` is excluded from ``repr`` so it never reaches a log."""

    draft: CredentialDraft
    token: str = field(repr=False)


class Minter:
    """Builds the claims of each credential; signing happens where the record is committed."""

    def __init__(self, issuer: str, ids: IdSource) -> None:
        self._ids = ids
        self._issuer = issuer

    def draft(
        self,
        *,
        tool: str,
        audience: str,
        scope: str,
        category: str,
        who: Attribution,
        issued_at: int,
        expires_at: int,
    ) -> CredentialDraft:
        """RFC 9068 §2.2 claims plus RFC 8693 §4.1 ``act`` naming the agents."""
        jti = self._ids.token()
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "sub": who.user_id,
            "aud": audience,
            "client_id": who.actors[0],
            "iat": issued_at,
            "exp": expires_at,
            "jti": jti,
            "scope": scope,
            "agent_instance": who.agent_instance,
            "execution_id": who.execution_id,
            "workflow": who.workflow,
            "decision_id": who.decision_id,
            "delegation": who.delegation,
        }
        act = who.act
        if act is not None:
            claims["act"] = act
        if who.jkt is not None:
            claims["cnf"] = {"jkt": who.jkt}
        if who.delegated_from:
            # Nearest first: revoking any of them revokes this credential too.
            claims["delegated_from"] = list(who.delegated_from)
        return CredentialDraft(tool, jti, audience, scope, category, issued_at, expires_at, claims)


class TokenSigner:
    """Signs claims as RFC 9068 JWTs with the key ring's active key."""

    def __init__(self, key_ring: KeyRing) -> None:
        self._key_ring = key_ring
        self._prepared: dict[str, tuple[bytes, Callable[[bytes], bytes]]] = {}

    def _prepare(self, key: SigningKey) -> tuple[bytes, Callable[[bytes], bytes]]:
        """The encoded protected header and the signer, made once per key."""
        prepared = self._prepared.get(key.kid)
        if prepared is None:
            header = {"alg": key.alg, "typ": TOKEN_TYPE_HEADER, "kid": key.kid}
            prepared = (b64url(compact_json(header)), signer_for(key.alg, key.key))
            self._prepared[key.kid] = prepared
        return prepared

    def sign(self, claims: dict[str, Any]) -> str:
        """RFC 7515 §7.1 compact serialization, signed by the active key."""
        header, signer = self._prepare(self._key_ring.active())
        signing_input = header + b"." + b64url(compact_json(claims))
        return (signing_input + b"." + b64url(signer(signing_input))).decode("ascii")
