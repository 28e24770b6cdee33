"""The audit record of one decision, allowed or denied."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class IssuedCredential:
    """What the audit keeps of a minted credential: never the token itself."""

    jti: str
    tool: str
    audience: str
    scope: str
    category: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One decision with full attribution (``SECURITY.md`` "Audit").

    ``outcome`` is ``allow`` or ``deny``. Every field is plain data so the record can be
    canonically serialised for the hash chain; nothing here may hold a token or key.
    """

    decision_id: str
    time: float
    endpoint: str
    outcome: str
    status: int
    request_id: str
    client_address: str | None
    error: str | None = None
    workload_id: str | None = None
    workload_issuer: str | None = None
    agent_instance: str | None = None
    user_id: str | None = None
    user_issuer: str | None = None
    delegation: str | None = None
    tier: str | None = None
    workflow: str | None = None
    execution_id: str | None = None
    tools_requested: dict[str, list[str]] = field(default_factory=dict)
    ttl_seconds: int | None = None
    credentials: tuple[IssuedCredential, ...] = ()
    reasons: tuple[dict[str, str], ...] = ()
    policy_version: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["credentials"] = [asdict(c) for c in self.credentials]
        out["reasons"] = [dict(r) for r in self.reasons]
        return out


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record as the log holds it: its place in the chain and the chain hashes."""

    seq: int
    record: dict[str, Any]
    prev_hash: str
    hash: str
