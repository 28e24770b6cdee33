"""The audit record of one decision, allowed or denied."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
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

    ``outcome`` is ``allow`` or ``deny`` (``revoke`` for a revocation, ``usage`` for
    reported uses of credentials). Every field is plain data so the record can be
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
    agent_instance: str | None = None  # the request's agent_id (self-asserted)
    workload_instance: str | None = None  # the instance the workload token attests, if any
    user_id: str | None = None
    user_issuer: str | None = None
    claimed_user_id: str | None = None  # what the request said, verified or not
    delegation: str | None = None
    tier: str | None = None
    workflow: str | None = None
    execution_id: str | None = None
    tools_requested: dict[str, list[str]] = field(default_factory=dict)
    ttl_seconds: int | None = None
    credentials: tuple[IssuedCredential, ...] = ()
    reasons: tuple[dict[str, str], ...] = ()
    policy_version: str | None = None
    grant_type: str | None = None  # token endpoint grants; None for /issue
    parent_jti: str | None = None  # the credential a sub-agent exchanged (delegation chain)
    parent_actors: tuple[str, ...] = ()  # that credential's act chain, newest first
    may_act: str | None = None  # the one workload the user's token let act (kept down a chain)
    dpop_jkt: str | None = None  # the key the credentials are bound to (RFC 9449 cnf.jkt)
    requested_by: str | None = None  # who asked for a revocation
    revocation: dict[str, Any] | None = None  # selector, value, issued_before, expires_at
    # Reported uses of credentials: jti, tool, operation, outcome (HTTP status), time.
    uses: tuple[dict[str, Any], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["credentials"] = [asdict(c) for c in self.credentials]
        out["reasons"] = [dict(r) for r in self.reasons]
        out["parent_actors"] = list(self.parent_actors)
        out["uses"] = [dict(u) for u in self.uses]
        return out

    def as_tuple(self) -> tuple[Any, ...]:
        """The field values in order, credentials as plain tuples: cheap to pickle."""
        values = [getattr(self, name) for name in _FIELDS]
        values[_CREDENTIALS] = tuple(
            (c.jti, c.tool, c.audience, c.scope, c.category, c.expires_at) for c in self.credentials
        )
        return tuple(values)

    @classmethod
    def from_tuple(cls, values: tuple[Any, ...]) -> DecisionRecord:
        """The inverse of :meth:`as_tuple`."""
        fields_ = list(values)
        fields_[_CREDENTIALS] = tuple(IssuedCredential(*c) for c in values[_CREDENTIALS])
        return cls(*fields_)


_FIELDS = tuple(f.name for f in fields(DecisionRecord))
_CREDENTIALS = _FIELDS.index("credentials")


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record as the log holds it: its place in the chain and the chain hashes.

    ``seq`` is the global order. A store with one chain per writer (PostgreSQL) also gives
    the chain and the record's place in it, which its link hash binds; the single-chain
    store (SQLite) leaves them ``None``.
    """

    seq: int
    record: dict[str, Any]
    prev_hash: str
    hash: str
    chain: int | None = None
    chain_seq: int | None = None


def tools_of(body: dict[str, Any]) -> set[str]:
    """The tools a stored record body concerns: the keys of ``tools_requested`` and the text
    ``tool`` of each credential and use, once each. What a filter by tool finds a record by,
    so every store derives its tool rows (and verify checks them) with this one rule."""
    tools: set[str] = set()
    requested = body.get("tools_requested")
    if isinstance(requested, dict):
        tools.update(requested)
    for name in ("credentials", "uses"):
        entries = body.get(name)
        if isinstance(entries, list):
            tools.update(
                e["tool"] for e in entries if isinstance(e, dict) and isinstance(e.get("tool"), str)
            )
    return tools
