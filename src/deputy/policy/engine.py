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
class Subject:
    """Who the credentials are for, as established before policy runs."""

    workload_id: str
    user_id: str | None
    tier: str | None
    delegation: str  # "user_token" | "asserted"
    claimed_user_id: str | None = None  # what the request body said, if anything


def decide(
    policy: Policy,
    workflow: Workflow,
    subject: Subject,
    tools: Mapping[str, tuple[str, ...] | None],
    ttl_seconds: int | None,
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
                )
            )
            continue
        scopes = tuple(sorted(allowed)) if requested is None else requested
        beyond = sorted(set(scopes) - allowed)
        if beyond:
            reasons.append(
                Reason(
                    "workflow.scopes",
                    f"scopes {', '.join(beyond)} for tool '{name}' exceed what workflow "
                    f"'{workflow.name}' grants ({', '.join(sorted(allowed))})",
                )
            )
            continue
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
