"""Compare two policies: every permission gained (widening) or lost (narrowing).

Rules, each change classified on its own:

* a workflow, an agent pattern, a tool, a scope or a ``delegate_to`` pattern added widens;
  removed, it narrows;
* tiers: a tier added, or the ``tiers`` restriction removed (any tier), widens; a tier
  removed, or a restriction introduced, narrows (compared when both sides use ``user_token``;
  otherwise the delegation change says it all);
* delegation, from strictest to widest: ``user_token`` (a verified user token for each
  credential) < ``none`` (the agent acts as itself, whenever it likes) < ``asserted`` (the
  agent names any user); a move up widens, down narrows;
* ``ttl.max`` up widens, down narrows (``ttl.default`` is bounded by it and not compared);
* a rate limit raised or removed (unlimited) widens; lowered or introduced narrows;
* ``require_dpop`` true -> false widens, false -> true narrows;
* ``max_delegation_depth`` up widens, down narrows;
* a tool's audience or category changed widens (credentials valid at another API; quotas
  are kept per category, so a new one may escape a limit).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from deputy.policy.model import Policy, Workflow

DELEGATION_RANK = {"user_token": 0, "none": 1, "asserted": 2}


@dataclass(frozen=True, slots=True)
class Change:
    """One permission gained or lost."""

    widening: bool
    subject: str  # "workflow <name>", "tool <name>" or "policy"
    aspect: str  # what changed: workflow, agents, tools, scopes, tiers, delegation, ...
    message: str

    @property
    def line(self) -> str:
        return f"{'+' if self.widening else '-'} {self.subject}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {
            "direction": "widening" if self.widening else "narrowing",
            "subject": self.subject,
            "aspect": self.aspect,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class PolicyDiff:
    old_version: str
    new_version: str
    changes: tuple[Change, ...]

    @property
    def widening(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.widening)

    def as_dict(self) -> dict[str, object]:
        return {
            "old_version": self.old_version,
            "new_version": self.new_version,
            "widening": bool(self.widening),
            "changes": [c.as_dict() for c in self.changes],
        }


def _list(items: Iterable[str]) -> str:
    return ", ".join(sorted(items))


def _grants(w: Workflow) -> str:
    return "; ".join(f"{t} [{_list(s)}]" for t, s in sorted(w.tools.items()))


def _for_whom(w: Workflow) -> str:
    if w.delegation == "asserted":
        return "any user (asserted)"
    if w.delegation == "none":
        return "itself, no user"
    return f"users of tier {_list(w.tiers)}" if w.tiers is not None else "users of any tier"


def diff_policies(old: Policy, new: Policy) -> PolicyDiff:
    changes: list[Change] = []
    if new.max_delegation_depth != old.max_delegation_depth:
        changes.append(
            Change(
                new.max_delegation_depth > old.max_delegation_depth,
                "policy",
                "max_delegation_depth",
                f"max_delegation_depth {old.max_delegation_depth} -> {new.max_delegation_depth}",
            )
        )
    for name in sorted(set(old.tools) & set(new.tools)):
        o, n = old.tools[name], new.tools[name]
        if o.audience != n.audience:
            changes.append(
                Change(True, f"tool {name}", "audience", f"audience {o.audience} -> {n.audience}")
            )
        if o.category != n.category:
            changes.append(
                Change(True, f"tool {name}", "category", f"category {o.category} -> {n.category}")
            )
    for name in sorted(set(old.workflows) | set(new.workflows)):
        subject = f"workflow {name}"
        if name not in old.workflows:
            w = new.workflows[name]
            changes.append(
                Change(
                    True,
                    subject,
                    "workflow",
                    f"added: {_list(w.agents)} get {_grants(w)} for {_for_whom(w)}, "
                    f"ttl.max {w.ttl_max}s",
                )
            )
        elif name not in new.workflows:
            w = old.workflows[name]
            changes.append(
                Change(False, subject, "workflow", f"removed: {_list(w.agents)} lose {_grants(w)}")
            )
        else:
            changes.extend(_workflow_changes(subject, old.workflows[name], new.workflows[name]))
    return PolicyDiff(old.version, new.version, tuple(changes))


def _workflow_changes(subject: str, o: Workflow, n: Workflow) -> list[Change]:
    out: list[Change] = []

    def add(widening: bool, aspect: str, message: str) -> None:
        out.append(Change(widening, subject, aspect, message))

    for p in sorted(set(n.agents) - set(o.agents)):
        add(True, "agents", f"agent pattern {p} added: gains {_grants(n)}")
    for p in sorted(set(o.agents) - set(n.agents)):
        add(False, "agents", f"agent pattern {p} removed: loses {_grants(o)}")

    for tool in sorted(set(o.tools) | set(n.tools)):
        before, after = o.tools.get(tool, frozenset()), n.tools.get(tool, frozenset())
        gained, lost = after - before, before - after
        if tool not in o.tools:
            add(True, "tools", f"{_list(n.agents)} gain tool {tool} [{_list(after)}]")
        elif tool not in n.tools:
            add(False, "tools", f"{_list(o.agents)} lose tool {tool} [{_list(before)}]")
        else:
            if gained:
                add(True, "scopes", f"{_list(n.agents)} gain {tool} [{_list(gained)}]")
            if lost:
                add(False, "scopes", f"{_list(o.agents)} lose {tool} [{_list(lost)}]")

    if o.delegation != n.delegation:
        wider = DELEGATION_RANK[n.delegation] > DELEGATION_RANK[o.delegation]
        add(
            wider,
            "delegation",
            f"delegation {o.delegation} -> {n.delegation}: now acts for {_for_whom(n)}",
        )
    elif o.delegation == "user_token" and o.tiers != n.tiers:
        if n.tiers is None:
            add(True, "tiers", f"tiers restriction [{_list(o.tiers or ())}] removed: any tier")
        elif o.tiers is None:
            add(False, "tiers", f"tiers restricted to [{_list(n.tiers)}] (was any tier)")
        else:
            if n.tiers - o.tiers:
                add(True, "tiers", f"tiers added: {_list(n.tiers - o.tiers)}")
            if o.tiers - n.tiers:
                add(False, "tiers", f"tiers removed: {_list(o.tiers - n.tiers)}")

    if n.ttl_max != o.ttl_max:
        longer = n.ttl_max > o.ttl_max
        add(
            longer,
            "ttl.max",
            f"ttl.max {o.ttl_max}s -> {n.ttl_max}s ({'longer' if longer else 'shorter'} lifetimes)",
        )

    for category in sorted(set(o.rate_limits) | set(n.rate_limits)):
        lo, ln = o.rate_limits.get(category), n.rate_limits.get(category)
        if lo == ln:
            continue
        if ln is None:
            add(True, "rate_limits", f"rate limit {category} {lo}/day removed: unlimited")
        elif lo is None:
            add(False, "rate_limits", f"rate limit {category} {ln}/day introduced (was unlimited)")
        else:
            add(ln > lo, "rate_limits", f"rate limit {category} {lo}/day -> {ln}/day")

    for p in sorted(set(n.delegate_to) - set(o.delegate_to)):
        add(True, "delegate_to", f"may delegate to {p}")
    for p in sorted(set(o.delegate_to) - set(n.delegate_to)):
        add(False, "delegate_to", f"may no longer delegate to {p}")

    if o.require_dpop != n.require_dpop:
        if n.require_dpop:
            add(False, "require_dpop", "require_dpop false -> true (credentials bound to a key)")
        else:
            add(True, "require_dpop", "require_dpop true -> false (bearer credentials)")
    return out
