"""Scope drift: what policy grants that no credential in a window was issued for."""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from deputy.policy.model import Policy


@dataclass(frozen=True, slots=True)
class Issued:
    """One credential the audit log shows: under which workflow, for which tool and scopes."""

    workflow: str
    tool: str
    scopes: frozenset[str]
    count: int = 1  # credentials issued with exactly these


@dataclass(frozen=True, slots=True)
class Used:
    """One reported use of a credential issued under ``workflow`` for ``tool``."""

    workflow: str
    tool: str


@dataclass(frozen=True, slots=True)
class WorkflowDrift:
    """A workflow's grants that went unused in the window."""

    workflow: str
    credentials: int  # issued under it in the window
    unissued_tools: tuple[str, ...]  # granted, never issued
    unissued_scopes: Mapping[str, tuple[str, ...]]  # tool -> granted scopes never issued
    unused_tools: tuple[str, ...] = ()  # issued, but no use reported (when uses are reported)

    @property
    def drifted(self) -> bool:
        return bool(self.unissued_tools or self.unissued_scopes or self.unused_tools)

    def narrowed_tools(self, granted: Mapping[str, frozenset[str]]) -> dict[str, list[str]]:
        """The workflow's ``tools`` with only what was issued and used (the suggestion)."""
        return {
            tool: sorted(scopes - set(self.unissued_scopes.get(tool, ())))
            for tool, scopes in granted.items()
            if tool not in self.unissued_tools and tool not in self.unused_tools
        }


def drift(
    policy: Policy, issued: Iterable[Issued], used: Iterable[Used] | None = None
) -> list[WorkflowDrift]:
    """Per workflow (in policy order), the tools and scopes granted but never issued, and,
    when APIs report uses (``used`` given), the tools issued but never used."""
    reported: dict[str, set[str]] | None = None
    if used is not None:
        reported = {}
        for use in used:
            reported.setdefault(use.workflow, set()).add(use.tool)
    seen_by: dict[str, dict[str, set[str]]] = {name: {} for name in policy.workflows}
    counts = dict.fromkeys(policy.workflows, 0)
    for credential in issued:
        if credential.workflow not in seen_by:
            continue  # a workflow since removed from the policy
        counts[credential.workflow] += credential.count
        seen_by[credential.workflow].setdefault(credential.tool, set()).update(credential.scopes)
    report: list[WorkflowDrift] = []
    for name, workflow in policy.workflows.items():
        seen = seen_by[name]
        unissued_tools = tuple(sorted(t for t in workflow.tools if t not in seen))
        unissued_scopes = {
            tool: tuple(sorted(granted - seen[tool]))
            for tool, granted in sorted(workflow.tools.items())
            if tool in seen and granted - seen[tool]
        }
        unused: tuple[str, ...] = ()
        if reported is not None:
            unused = tuple(sorted(t for t in seen if t not in reported.get(name, set())))
        report.append(WorkflowDrift(name, counts[name], unissued_tools, unissued_scopes, unused))
    return report


def suggested(document: dict[str, Any], policy: Policy, report: list[WorkflowDrift]) -> Any:
    """The config with each workflow narrowed to what was issued; unused ones removed."""
    narrowed = copy.deepcopy(document)
    workflows = narrowed.get("workflows", {})
    for entry in report:
        if not entry.drifted or entry.workflow not in workflows:
            continue
        tools = entry.narrowed_tools(policy.workflows[entry.workflow].tools)
        if entry.credentials == 0 or not tools:
            del workflows[entry.workflow]
            continue
        section = workflows[entry.workflow]
        section["tools"] = tools
        categories = {policy.tools[t].category for t in tools}
        limits = section.get("rate_limits")
        if isinstance(limits, dict):
            section["rate_limits"] = {c: n for c, n in limits.items() if c in categories}
    return narrowed


def _dump(document: Any) -> list[str]:
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False).splitlines(True)


def document_diff(old: Any, new: Any, old_name: str, new_name: str) -> str:
    """A unified diff of two config documents as YAML; empty when they are the same."""
    return "".join(difflib.unified_diff(_dump(old), _dump(new), old_name, new_name))
