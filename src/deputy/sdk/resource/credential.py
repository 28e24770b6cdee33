"""What a verified Deputy credential tells the API it was presented to."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from deputy.sdk.errors import CredentialRejected


@dataclass(frozen=True, slots=True)
class VerifiedCredential:
    """An unexpired, unrevoked RFC 9068 access token minted by Deputy for this API.

    ``actors`` are the agents, newest first: the RFC 8693 ``act`` chain, or only the agent
    when the credential has no ``act`` (an agent acting as itself). ``claims`` holds every
    signed claim and is left out of ``repr``. ``jkt`` is set for a DPoP-bound credential,
    which was verified with a proof of its key.
    """

    user: str  # sub: the user the agents act for
    agent: str  # client_id: the agent workload that holds and presents the credential
    agent_instance: str | None
    execution_id: str | None
    actors: tuple[str, ...]
    scopes: frozenset[str]
    jti: str
    audience: str
    expires_at: int
    workflow: str | None
    delegation: str | None
    decision_id: str | None
    claims: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def jkt(self) -> str | None:
        """The thumbprint of the key a DPoP-bound credential is bound to (``cnf.jkt``, RFC
        9449 §6): the key whose proof must come with each use. None for a bearer one."""
        cnf = self.claims.get("cnf")
        jkt = cnf.get("jkt") if isinstance(cnf, Mapping) else None
        return jkt if isinstance(jkt, str) else None

    def missing_scopes(self, required: Iterable[str]) -> tuple[str, ...]:
        """The scopes of ``required`` this credential does not carry, in their order."""
        return tuple(s for s in required if s not in self.scopes)

    def require_scopes(self, required: Iterable[str]) -> None:
        """Raise 403 ``insufficient_scope`` (RFC 6750 §3.1) unless every scope is granted."""
        missing = self.missing_scopes(required)
        if missing:
            raise CredentialRejected(
                "insufficient_scope",
                f"the credential lacks the scope {' '.join(missing)}",
                status=403,
            )
