"""Blast radius: everything a workload (or a user) exposes, from the policy and the ledger.

Pure computation: the ledger is passed in as a :class:`LedgerSnapshot` value.

Targets are workload-id globs in the policy's own syntax (``*`` one non-empty path segment,
``**`` across segments); a concrete id is the glob without wildcards. A workflow is in a
target's blast radius when some workload id matches both the target and one of the
workflow's agent patterns (:func:`patterns_overlap`, an exact test). For a concrete id this
is exactly :meth:`Workflow.admits`; for a pattern it reports every workflow that *could*
admit a workload the pattern names. The live part covers the workload ids seen in the ledger
that match the target.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from deputy.audit.revocation import CredentialFacts, Revocation, RevocationList
from deputy.policy.model import Policy, Workflow, compile_pattern

# --- glob overlap --------------------------------------------------------------------------
_NON_SLASH = "[^/]"
_ANY = "."
# A pattern as single-character tokens: (a literal character or a class, may repeat 0+ times).
_Token = tuple[str, bool]


def _tokens(pattern: str) -> tuple[_Token, ...]:
    out: list[_Token] = []
    for part in re.split(r"(\*\*|\*)", pattern):
        if part == "**":
            out.append((_ANY, True))
        elif part == "*":
            out.extend([(_NON_SLASH, False), (_NON_SLASH, True)])
        else:
            out.extend((char, False) for char in part)
    return tuple(out)


def _compatible(a: str, b: str) -> bool:
    """Whether some character is in both classes."""
    if _ANY in (a, b):
        return True
    if a == _NON_SLASH and b == _NON_SLASH:
        return True
    if a == _NON_SLASH:
        return b != "/"
    if b == _NON_SLASH:
        return a != "/"
    return a == b


def patterns_overlap(a: str, b: str) -> bool:
    """Whether some workload id matches both globs (a walk over the product automaton)."""
    ta, tb = _tokens(a), _tokens(b)
    seen: set[tuple[int, int]] = set()
    todo = [(0, 0)]
    while todo:
        i, j = todo.pop()
        if (i, j) in seen:
            continue
        seen.add((i, j))
        if i == len(ta) and j == len(tb):
            return True
        if i < len(ta) and ta[i][1]:
            todo.append((i + 1, j))  # a repeating token may match nothing
        if j < len(tb) and tb[j][1]:
            todo.append((i, j + 1))
        if i < len(ta) and j < len(tb) and _compatible(ta[i][0], tb[j][0]):
            todo.append((i if ta[i][1] else i + 1, j if tb[j][1] else j + 1))
    return False


def is_pattern(target: str) -> bool:
    return "*" in target


# --- the ledger, as a value ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LedgerCredential:
    """An issued credential as its audit record tells it."""

    jti: str
    tool: str
    issued_at: int
    expires_at: int
    workload_id: str | None
    user_id: str | None
    execution_id: str | None = None
    agent_instance: str | None = None
    parent_jti: str | None = None
    parent_actors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LedgerSnapshot:
    """Credentials that may still be unexpired, the revocations in force, workloads seen."""

    now: float
    credentials: tuple[LedgerCredential, ...] = ()
    revocations: tuple[Revocation, ...] = ()
    workloads_seen: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class LiveSummary:
    """Unexpired credentials: the unrevoked ones counted, the revoked ones apart."""

    credentials: int
    users: int
    revoked: int
    latest_expiry: int | None
    by_tool: tuple[tuple[str, int], ...]
    workloads: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "credentials": self.credentials,
            "users": self.users,
            "revoked": self.revoked,
            "latest_expiry": self.latest_expiry,
            "by_tool": dict(self.by_tool),
            "workloads": list(self.workloads),
        }


def _ancestors(c: LedgerCredential, parents: Mapping[str, str | None]) -> tuple[str, ...]:
    out: list[str] = []
    jti = c.parent_jti
    while jti is not None and jti not in out:
        out.append(jti)
        jti = parents.get(jti)
    return tuple(out)


def live_summary(ledger: LedgerSnapshot, selected: Iterable[LedgerCredential]) -> LiveSummary:
    """Count the unexpired credentials of ``selected``, minus those a revocation covers."""
    revocations = RevocationList()
    revocations.add(ledger.revocations)
    parents = {c.jti: c.parent_jti for c in ledger.credentials}
    live: list[LedgerCredential] = []
    revoked = 0
    for c in selected:
        if c.expires_at <= ledger.now:
            continue
        facts = CredentialFacts(
            jti=c.jti,
            issued_at=c.issued_at,
            execution_id=c.execution_id,
            agent_instance=c.agent_instance,
            actors=tuple(dict.fromkeys(a for a in (c.workload_id, *c.parent_actors) if a)),
            user_id=c.user_id,
            ancestors=_ancestors(c, parents),
        )
        if revocations.covers(facts) is not None:
            revoked += 1
        else:
            live.append(c)
    tools: dict[str, int] = {}
    for c in live:
        tools[c.tool] = tools.get(c.tool, 0) + 1
    return LiveSummary(
        credentials=len(live),
        users=len({c.user_id for c in live if c.user_id is not None}),
        revoked=revoked,
        latest_expiry=max((c.expires_at for c in live), default=None),
        by_tool=tuple(sorted(tools.items())),
        workloads=tuple(sorted({c.workload_id for c in live if c.workload_id is not None})),
    )


# --- what a workflow grants ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ToolGrant:
    tool: str
    audience: str
    scopes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Credentials per user per UTC day for a tool category; ``None`` is unlimited."""

    category: str
    per_day: int | None


@dataclass(frozen=True, slots=True)
class WorkflowReach:
    """What one workflow lets the agents it admits obtain, and for whom."""

    workflow: str
    agents: tuple[str, ...]  # its agent patterns that overlap the target
    delegation: str
    tiers: tuple[str, ...] | None
    tools: tuple[ToolGrant, ...]
    ttl_max: int
    rate_limits: tuple[RateLimit, ...]
    delegate_to: tuple[str, ...]
    require_dpop: bool

    @property
    def for_whom(self) -> str:
        if self.delegation == "asserted":
            return "any user (asserted by the agent, no user token)"
        if self.delegation == "none":
            return "itself, no user"
        if self.tiers is None:
            return "users with a verified user token, any tier"
        return f"users with a verified user token of tier {', '.join(self.tiers)}"

    def as_dict(self) -> dict[str, object]:
        return {
            "workflow": self.workflow,
            "agents": list(self.agents),
            "delegation": self.delegation,
            "for_whom": self.for_whom,
            "any_user": self.delegation == "asserted",
            "tiers": list(self.tiers) if self.tiers is not None else None,
            "tools": {
                t.tool: {"audience": t.audience, "scopes": list(t.scopes)} for t in self.tools
            },
            "ttl_max": self.ttl_max,
            "rate_limits": {r.category: r.per_day for r in self.rate_limits},
            "delegate_to": list(self.delegate_to),
            "require_dpop": self.require_dpop,
        }


def workflow_reach(policy: Policy, workflow: Workflow, agents: tuple[str, ...]) -> WorkflowReach:
    tools = tuple(
        ToolGrant(name, policy.tools[name].audience, tuple(sorted(scopes)))
        for name, scopes in sorted(workflow.tools.items())
        if name in policy.tools
    )
    categories = sorted({policy.tools[t.tool].category for t in tools})
    return WorkflowReach(
        workflow=workflow.name,
        agents=agents,
        delegation=workflow.delegation,
        tiers=tuple(sorted(workflow.tiers)) if workflow.tiers is not None else None,
        tools=tools,
        ttl_max=workflow.ttl_max,
        rate_limits=tuple(RateLimit(c, workflow.rate_limits.get(c)) for c in categories),
        delegate_to=workflow.delegate_to,
        require_dpop=workflow.require_dpop,
    )


# --- a workload's blast radius -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BlastRadius:
    """Everything the workloads a target names can obtain, and what they hold right now."""

    target: str
    pattern: bool
    policy_version: str
    workflows: tuple[WorkflowReach, ...]
    sub_agent_of: tuple[str, ...]  # workflows whose delegate_to admits the target
    max_delegation_depth: int
    workloads_seen: tuple[str, ...]  # ledger workload ids that match the target
    live: LiveSummary

    @property
    def scopes(self) -> dict[str, tuple[str, ...]]:
        """Every tool and scope obtainable through any of its workflows."""
        merged: dict[str, set[str]] = {}
        for w in self.workflows:
            for t in w.tools:
                merged.setdefault(t.tool, set()).update(t.scopes)
        return {tool: tuple(sorted(s)) for tool, s in sorted(merged.items())}

    @property
    def ttl_max(self) -> int | None:
        return max((w.ttl_max for w in self.workflows), default=None)

    @property
    def any_user(self) -> bool:
        return any(w.delegation == "asserted" for w in self.workflows)

    def as_dict(self) -> dict[str, object]:
        return {
            "target": self.target,
            "pattern": self.pattern,
            "policy_version": self.policy_version,
            "workflows": [w.as_dict() for w in self.workflows],
            "scopes": {k: list(v) for k, v in self.scopes.items()},
            "ttl_max": self.ttl_max,
            "any_user": self.any_user,
            "sub_agent_of": list(self.sub_agent_of),
            "max_delegation_depth": self.max_delegation_depth,
            "workloads_seen": list(self.workloads_seen),
            "live": self.live.as_dict(),
        }


def blast_radius(policy: Policy, target: str, ledger: LedgerSnapshot) -> BlastRadius:
    """The blast radius of a workload id or of a workload-id pattern."""
    reach = []
    for workflow in policy.workflows.values():
        agents = tuple(a for a in workflow.agents if patterns_overlap(target, a))
        if agents:
            reach.append(workflow_reach(policy, workflow, agents))
    sub_agent_of = tuple(
        w.name
        for w in policy.workflows.values()
        if any(patterns_overlap(target, d) for d in w.delegate_to)
    )
    matcher = compile_pattern(target)
    seen = tuple(sorted(w for w in ledger.workloads_seen if matcher.match(w)))
    selected = (
        c for c in ledger.credentials if c.workload_id is not None and matcher.match(c.workload_id)
    )
    return BlastRadius(
        target=target,
        pattern=is_pattern(target),
        policy_version=policy.version,
        workflows=tuple(reach),
        sub_agent_of=sub_agent_of,
        max_delegation_depth=policy.max_delegation_depth,
        workloads_seen=seen,
        live=live_summary(ledger, selected),
    )


# --- the reverse view: a user ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class UserReach:
    """Which agents can act for a user, with what, and what they hold for the user now."""

    user: str
    tier: str | None
    policy_version: str
    workflows: tuple[WorkflowReach, ...]
    live: LiveSummary

    def as_dict(self) -> dict[str, object]:
        return {
            "user": self.user,
            "tier": self.tier,
            "policy_version": self.policy_version,
            "workflows": [w.as_dict() for w in self.workflows],
            "live": self.live.as_dict(),
        }


def user_reach(policy: Policy, user: str, tier: str | None, ledger: LedgerSnapshot) -> UserReach:
    """Workflows that can act for ``user``: ``asserted`` ones for any user, ``user_token``
    ones whose tiers admit ``tier`` (all of them, with their tiers shown, if it is unknown)."""
    reach = []
    for w in policy.workflows.values():
        if w.delegation == "none":
            continue
        if tier is not None and w.tiers is not None and tier not in w.tiers:
            continue
        reach.append(workflow_reach(policy, w, w.agents))
    selected = (c for c in ledger.credentials if c.user_id == user)
    return UserReach(user, tier, policy.version, tuple(reach), live_summary(ledger, selected))
