"""OAuth targets (RFC 8707 ``resource``, RFC 8693 ``audience``) and ``scope``, as tools."""

from __future__ import annotations

from collections.abc import Mapping

from deputy.errors import InvalidScope, InvalidTarget
from deputy.policy.model import Policy, Tool, Workflow

ToolScopes = Mapping[str, tuple[str, ...] | None]


def _tool_for(policy: Policy, workflow: Workflow, target: str) -> str:
    """The tool a target names: by its audience, or by its name.

    A target several tools share resolves to the one the workflow declares; a target no tool
    answers to is an ``invalid_target``.
    """
    named = [t for t in policy.tools.values() if target in (t.audience, t.name)]
    if not named:
        raise InvalidTarget(f"no tool has the audience or name {target[:128]!r}")
    declared = [t for t in named if t.name in workflow.tools]
    if len(declared) > 1:
        names = ", ".join(sorted(t.name for t in declared))
        raise InvalidTarget(f"target {target[:128]!r} names several tools ({names}); name one")
    # An undeclared tool is passed on, so the decision names the rule it breaks.
    return (declared or named)[0].name


def _tools_for_scopes(workflow: Workflow, scopes: tuple[str, ...]) -> list[str]:
    """With no target, each scope picks the workflow's one tool that grants it."""
    names: list[str] = []
    for scope in scopes:
        holders = sorted(t for t, allowed in workflow.tools.items() if scope in allowed)
        if len(holders) != 1:
            which = "no tool" if not holders else f"several tools ({', '.join(holders)})"
            raise InvalidTarget(
                f"scope {scope!r} is granted by {which} of workflow '{workflow.name}'; "
                "name the tool with `resource` or `audience`"
            )
        if holders[0] not in names:
            names.append(holders[0])
    return names


def resolve_targets(
    policy: Policy,
    workflow: Workflow,
    targets: tuple[str, ...],
    scopes: tuple[str, ...] | None,
) -> ToolScopes:
    """Map targets and a flat scope list to tools, each with the requested scopes it knows.

    Every requested scope must belong to one of the targets (``invalid_scope`` otherwise), and
    every target must get at least one of them; without ``scope`` each tool gets the
    workflow's scopes. One credential is minted per tool.
    """
    if targets:
        names = list(dict.fromkeys(_tool_for(policy, workflow, t) for t in targets))
    elif scopes:
        names = _tools_for_scopes(workflow, scopes)
    else:
        raise InvalidTarget("name at least one `resource` or `audience` (or a `scope`)")
    if scopes is None:
        return dict.fromkeys(names)
    tools: dict[str, Tool] = {n: policy.tools[n] for n in names}
    unplaced = [s for s in scopes if not any(s in t.scopes for t in tools.values())]
    if unplaced:
        raise InvalidScope(
            f"scope(s) {', '.join(unplaced)} belong to none of the requested targets "
            f"({', '.join(names)})"
        )
    out: dict[str, tuple[str, ...] | None] = {}
    for name, tool in tools.items():
        mine = tuple(s for s in scopes if s in tool.scopes)
        if not mine:
            raise InvalidScope(f"no requested scope applies to tool '{name}'")
        out[name] = mine
    return out
