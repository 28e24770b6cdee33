"""The one place that decides: every rule is evaluated and every failure is reported."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from deputy.errors import Reason
from deputy.policy.model import Policy, Tool, Workflow


@dataclass(frozen=True, slots=True)
class Grant:
    """One tool with the scopes its credential will carry."""

    tool: Tool
    scopes: tuple[str, ...]

    @property
    def scope(self) -> str:
        return " ".join(self.scopes)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of policy: grants when allowed, every failed rule when not."""

    allow: bool
    workflow: str
    grants: tuple[Grant, ...]
    reasons: tuple[Reason, ...]
    ttl: int
    policy_version: str


@dataclass(frozen=True, slots=True)
class Chain:
    """A Deputy credential presented as the subject of a further exchange by a sub-agent."""

    actors: tuple[str, ...]  # its act chain, newest actor first
    workflow: str
    audience: str
    scopes: frozenset[str]
    delegation: str  # how its user was established: "user_token" | "asserted" | "none"


@dataclass(frozen=True, slots=True)
class Subject:
    """Who the credentials are for, as established before policy runs."""

    workload_id: str
    user_id: str | None
    tier: str | None
    delegation: str  # "user_token" | "asserted" | "none"
    claimed_user_id: str | None = None  # what the request body said, if anything
    may_act: str | None = None  # the one workload the subject token lets act (RFC 8693 §4.4)
    chain: Chain | None = None


# Which users a workflow accepts from a chain, by how the chain's user was established.
_CHAIN_USERS = {"user_token": {"user_token"}, "asserted": {"user_token", "asserted"}}


def _chain_reasons(policy: Policy, workflow: Workflow, subject: Subject) -> list[Reason]:
    """Delegation only narrows: allowed sub-agent, bounded depth, no cycle, same users."""
    chain = subject.chain
    assert chain is not None
    reasons: list[Reason] = []
    me = subject.workload_id
    parent = policy.workflows.get(chain.workflow)
    if parent is None or not parent.may_delegate_to(me):
        reasons.append(
            Reason(
                "delegation.sub_agents",
                f"workflow '{chain.workflow}' does not delegate to workload {me} "
                "(see its `delegate_to`)",
            )
        )
    if me in chain.actors:
        reasons.append(
            Reason("delegation.cycle", f"workload {me} is already in the delegation chain")
        )
    if len(chain.actors) + 1 > policy.max_delegation_depth:
        reasons.append(
            Reason(
                "delegation.depth",
                f"the chain would have {len(chain.actors) + 1} actors; the maximum is "
                f"{policy.max_delegation_depth}",
            )
        )
    if chain.delegation not in _CHAIN_USERS.get(workflow.delegation, set()):
        reasons.append(
            Reason(
                "delegation.user",
                f"workflow '{workflow.name}' ({workflow.delegation}) does not accept a chain "
                f"whose user was established by `{chain.delegation}`",
            )
        )
    return reasons


def decide(
    policy: Policy,
    workflow: Workflow,
    subject: Subject,
    tools: Mapping[str, tuple[str, ...] | None],
    ttl_seconds: int | None,
    *,
    dpop_bound: bool = False,
) -> Decision:
    """Evaluate every rule of ``workflow`` for this request (quota is checked separately)."""
    reasons: list[Reason] = []
    if not workflow.admits(subject.workload_id):
        reasons.append(
            Reason(
                "workflow.agents",
                f"workload {subject.workload_id} is not one of the agents of workflow "
                f"'{workflow.name}' ({', '.join(workflow.agents)})",
            )
        )
    if (
        subject.claimed_user_id is not None
        and subject.user_id is not None
        and subject.claimed_user_id != subject.user_id
    ):
        reasons.append(
            Reason(
                "delegation.user",
                "user_id in the request does not match the subject of the verified user_token",
            )
        )
    if subject.may_act is not None and subject.may_act != subject.workload_id:
        reasons.append(
            Reason(
                "delegation.may_act",
                f"the subject token lets only {subject.may_act} act for its subject",
            )
        )
    chain = subject.chain
    if chain is not None:
        reasons.extend(_chain_reasons(policy, workflow, subject))
    if workflow.require_dpop and not dpop_bound:
        reasons.append(
            Reason(
                "dpop.required",
                f"workflow '{workflow.name}' issues only DPoP-bound credentials: send a DPoP "
                "proof (RFC 9449)",
            )
        )
    if workflow.tiers is not None and subject.tier not in workflow.tiers:
        reasons.append(
            Reason(
                "workflow.tiers",
                f"user tier '{subject.tier}' may not trigger workflow '{workflow.name}' "
                f"(allowed: {', '.join(sorted(workflow.tiers))})",
            )
        )
    grants: list[Grant] = []
    for name, requested in tools.items():
        allowed = workflow.tools.get(name)
        tool = policy.tools.get(name)
        if allowed is None or tool is None:
            reasons.append(
                Reason(
                    "workflow.tools",
                    f"tool '{name}' is not in the declared tools of workflow '{workflow.name}' "
                    f"({', '.join(sorted(workflow.tools))})",
                    name,
                )
            )
            continue
        ceiling = allowed if chain is None else allowed & chain.scopes
        scopes = tuple(sorted(ceiling)) if requested is None else requested
        failed = False
        beyond = sorted(set(scopes) - allowed)
        if beyond:
            failed = True
            reasons.append(
                Reason(
                    "workflow.scopes",
                    f"scopes {', '.join(beyond)} for tool '{name}' exceed what workflow "
                    f"'{workflow.name}' grants ({', '.join(sorted(allowed))})",
                    name,
                )
            )
        if chain is not None:
            failed = _narrows(chain, tool, scopes, reasons) or failed
        if not failed:
            grants.append(Grant(tool, scopes))
    ttl = workflow.ttl_default if ttl_seconds is None else ttl_seconds
    if ttl > workflow.ttl_max:
        reasons.append(
            Reason(
                "ttl.max",
                f"ttl_seconds {ttl} exceeds the maximum of {workflow.ttl_max} seconds for "
                f"workflow '{workflow.name}'",
            )
        )
    return Decision(
        allow=not reasons,
        workflow=workflow.name,
        grants=tuple(grants) if not reasons else (),
        reasons=tuple(reasons),
        ttl=ttl,
        policy_version=policy.version,
    )


def _narrows(chain: Chain, tool: Tool, scopes: tuple[str, ...], reasons: list[Reason]) -> bool:
    """Append why ``tool`` with ``scopes`` is not within the parent credential; True if so."""
    failed = False
    if tool.audience != chain.audience:
        failed = True
        reasons.append(
            Reason(
                "delegation.audience",
                f"tool '{tool.name}' ({tool.audience}) is outside the audience of the subject "
                f"token ({chain.audience})",
                tool.name,
            )
        )
    beyond = sorted(set(scopes) - chain.scopes)
    if not scopes or beyond:
        failed = True
        reasons.append(
            Reason(
                "delegation.scopes",
                f"scopes for tool '{tool.name}' must be within the subject token's scopes "
                f"({', '.join(sorted(chain.scopes)) or 'none'})",
                tool.name,
            )
        )
    return failed
