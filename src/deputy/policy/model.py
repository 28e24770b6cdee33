"""The policy as typed values: tools, workflows and the version that identifies them."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from deputy.config.settings import Settings


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Workload-id glob: ``*`` matches one non-empty path segment, ``**`` across segments."""
    parts = re.split(r"(\*\*|\*)", pattern)
    regex = "".join(
        ".*" if p == "**" else "[^/]+" if p == "*" else re.escape(p) for p in parts if p
    )
    return re.compile(f"^{regex}$")


@dataclass(frozen=True, slots=True)
class Tool:
    """An API an agent may get a credential for."""

    name: str
    audience: str
    category: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class Workflow:
    """Which agents may run it, for whom, with which tools, scopes, lifetimes and limits."""

    name: str
    agents: tuple[str, ...]
    delegation: str
    tiers: frozenset[str] | None
    tools: Mapping[str, frozenset[str]]
    ttl_default: int
    ttl_max: int
    rate_limits: Mapping[str, int] = field(default_factory=dict)
    delegate_to: tuple[str, ...] = ()
    require_dpop: bool = False

    @cached_property
    def _pattern(self) -> re.Pattern[str]:
        return _any_of(self.agents)

    @cached_property
    def _sub_agents(self) -> re.Pattern[str]:
        return _any_of(self.delegate_to)

    def admits(self, workload_id: str) -> bool:
        return bool(self.agents) and self._pattern.match(workload_id) is not None

    def may_delegate_to(self, workload_id: str) -> bool:
        """Whether a sub-agent may exchange this workflow's credentials for its own."""
        return bool(self.delegate_to) and self._sub_agents.match(workload_id) is not None


def _any_of(patterns: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{compile_pattern(p).pattern})" for p in patterns))


@dataclass(frozen=True)
class Policy:
    """Every tool and workflow, and a short hash of them recorded in each decision."""

    tools: Mapping[str, Tool]
    workflows: Mapping[str, Workflow]
    version: str
    max_delegation_depth: int = 4

    def workflows_for(self, workload_id: str) -> list[Workflow]:
        return [w for w in self.workflows.values() if w.admits(workload_id)]

    @property
    def max_ttl(self) -> int:
        return max(w.ttl_max for w in self.workflows.values())


def policy_from_settings(settings: Settings) -> Policy:
    """Build the policy from validated settings; its version hashes the policy sections."""
    tools = {
        name: Tool(name, t.audience, t.category, frozenset(t.scopes))
        for name, t in settings.tools.items()
    }
    workflows = {
        name: Workflow(
            name=name,
            agents=w.agents,
            delegation=w.delegation,
            tiers=frozenset(w.tiers) if w.tiers is not None else None,
            tools={t: frozenset(s) for t, s in w.tools.items()},
            ttl_default=w.ttl.default,
            ttl_max=w.ttl.max,
            rate_limits=dict(w.rate_limits),
            delegate_to=w.delegate_to,
            require_dpop=w.require_dpop,
        )
        for name, w in settings.workflows.items()
    }
    canonical = json.dumps(
        settings.model_dump(mode="json", include={"tools", "workflows", "max_delegation_depth"}),
        sort_keys=True,
    )
    version = hashlib.sha256(canonical.encode()).hexdigest()[:12]
    return Policy(
        tools=tools,
        workflows=workflows,
        version=version,
        max_delegation_depth=settings.max_delegation_depth,
    )
