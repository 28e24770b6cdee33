"""Scope drift: what policy grants that no credential in a window was issued for."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from deputy.policy.model import Policy


@dataclass(frozen=True, slots=True)
class Issued:
    """One credential the audit log shows: under which workflow, for which tool and scopes."""

    workflow: str
    tool: str
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True)
class WorkflowDrift:
    """A workflow's grants that went unused in the window."""

    workflow: str
    credentials: int  # issued under it in the window
    unissued_tools: tuple[str, ...]  # granted, never issued
    unissued_scopes: Mapping[str, tuple[str, ...]]  # tool -> granted scopes never issued

    @property
    def drifted(self) -> bool:
        return bool(self.unissued_tools or self.unissued_scopes)

    def narrowed_tools(self, granted: Mapping[str, frozenset[str]]) -> dict[str, list[str]]:
        """The workflow's ``tools`` with only what was issued (the suggested policy)."""
        return {
            tool: sorted(scopes - set(self.unissued_scopes.get(tool, ())))
            for tool, scopes in granted.items()
            if tool not in self.unissued_tools
        }


def drift(policy: Policy, issued: Iterable[Issued]) -> list[WorkflowDrift]:
    """Per workflow (in policy order), the tools and scopes granted but never issued."""
    used: dict[str, dict[str, set[str]]] = {name: {} for name in policy.workflows}
    counts = dict.fromkeys(policy.workflows, 0)
    for credential in issued:
        if credential.workflow not in used:
            continue  # a workflow since removed from the policy
        counts[credential.workflow] += 1
        used[credential.workflow].setdefault(credential.tool, set()).update(credential.scopes)
    report: list[WorkflowDrift] = []
    for name, workflow in policy.workflows.items():
        seen = used[name]
        unissued_tools = tuple(sorted(t for t in workflow.tools if t not in seen))
        unissued_scopes = {
            tool: tuple(sorted(granted - seen[tool]))
            for tool, granted in sorted(workflow.tools.items())
            if tool in seen and granted - seen[tool]
        }
        report.append(WorkflowDrift(name, counts[name], unissued_tools, unissued_scopes))
    return report
