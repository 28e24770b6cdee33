"""``resolve_targets``: OAuth ``resource``/``audience`` and ``scope`` mapped onto tools."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from deputy.errors import InvalidScope, InvalidTarget
from deputy.policy.model import Policy, Tool, Workflow
from deputy.policy.targets import resolve_targets

CRM = "https://crm.example"
TICKETS = "https://tickets.example"
SHARED = "https://shared.example"

TOOLS = {
    "crm": Tool("crm", CRM, "data", frozenset({"crm:read", "crm:write", "common:read"})),
    "tickets": Tool("tickets", TICKETS, "data", frozenset({"tickets:read", "common:read"})),
    "mail_a": Tool("mail_a", SHARED, "comms", frozenset({"mail:send"})),
    "mail_b": Tool("mail_b", SHARED, "comms", frozenset({"mail:send", "mail:read"})),
    "payments": Tool("payments", "https://pay.example", "money", frozenset({"pay:charge"})),
}


def workflow(tools: Mapping[str, frozenset[str]]) -> Workflow:
    return Workflow(
        name="wf",
        agents=("spiffe://ex/agents/*",),
        delegation="none",
        tiers=None,
        tools=tools,
        ttl_default=300,
        ttl_max=900,
    )


POLICY = Policy(tools=TOOLS, workflows={}, version="v-test")
SUPPORT = workflow(
    {
        "crm": frozenset({"crm:read", "crm:write", "common:read"}),
        "tickets": frozenset({"tickets:read", "common:read"}),
        "mail_a": frozenset({"mail:send"}),
    }
)
BOTH_MAILS = workflow(
    {"mail_a": frozenset({"mail:send"}), "mail_b": frozenset({"mail:send", "mail:read"})}
)


def resolve(
    targets: tuple[str, ...], scopes: tuple[str, ...] | None, wf: Workflow = SUPPORT
) -> Mapping[str, tuple[str, ...] | None]:
    return resolve_targets(POLICY, wf, targets, scopes)


# --- by target -----------------------------------------------------------------------------


def test_target_by_audience() -> None:
    assert dict(resolve((CRM,), None)) == {"crm": None}


def test_target_by_tool_name() -> None:
    assert dict(resolve(("tickets",), None)) == {"tickets": None}


def test_targets_keep_request_order() -> None:
    assert list(resolve((TICKETS, "crm"), None)) == ["tickets", "crm"]


def test_duplicate_targets_collapse_to_one_tool() -> None:
    assert dict(resolve((CRM, "crm", CRM), None)) == {"crm": None}


def test_unknown_target_is_invalid_target() -> None:
    with pytest.raises(InvalidTarget) as caught:
        resolve(("https://nowhere.example",), None)
    assert caught.value.description == "no tool has the audience or name 'https://nowhere.example'"
    assert caught.value.error == "invalid_target"


def test_unknown_target_is_truncated_in_description() -> None:
    with pytest.raises(InvalidTarget) as caught:
        resolve(("x" * 500,), None)
    assert caught.value.description == f"no tool has the audience or name {'x' * 128!r}"


def test_target_shared_by_two_declared_tools_names_both() -> None:
    with pytest.raises(InvalidTarget) as caught:
        resolve((SHARED,), None, wf=BOTH_MAILS)
    assert caught.value.description == (
        f"target {SHARED!r} names several tools (mail_a, mail_b); name one"
    )


def test_shared_target_resolves_to_the_one_declared_tool() -> None:
    # mail_b shares the audience but SUPPORT declares only mail_a.
    assert dict(resolve((SHARED,), None)) == {"mail_a": None}


def test_shared_target_with_tool_name_disambiguates() -> None:
    assert dict(resolve(("mail_b",), None, wf=BOTH_MAILS)) == {"mail_b": None}


def test_undeclared_existing_tool_is_passed_through() -> None:
    # The decision, not target resolution, reports it (rule workflow.tools).
    assert dict(resolve(("payments",), None)) == {"payments": None}
    assert dict(resolve(("https://pay.example",), ("pay:charge",))) == {"payments": ("pay:charge",)}


# --- scopes distributed over targets -------------------------------------------------------


def test_scopes_go_to_the_tools_that_know_them() -> None:
    out = resolve((CRM, TICKETS), ("crm:read", "tickets:read", "crm:write"))
    assert dict(out) == {"crm": ("crm:read", "crm:write"), "tickets": ("tickets:read",)}


def test_scope_known_to_several_targets_goes_to_each() -> None:
    out = resolve((CRM, TICKETS), ("common:read",))
    assert dict(out) == {"crm": ("common:read",), "tickets": ("common:read",)}


def test_scope_of_no_target_is_invalid_scope() -> None:
    with pytest.raises(InvalidScope) as caught:
        resolve((CRM,), ("crm:read", "tickets:read", "mail:send"))
    assert caught.value.description == (
        "scope(s) tickets:read, mail:send belong to none of the requested targets (crm)"
    )
    assert caught.value.error == "invalid_scope"


def test_target_without_any_requested_scope_is_invalid_scope() -> None:
    with pytest.raises(InvalidScope) as caught:
        resolve((CRM, TICKETS), ("crm:read",))
    assert caught.value.description == "no requested scope applies to tool 'tickets'"


def test_scopes_none_maps_every_tool_to_none() -> None:
    out = resolve((CRM, TICKETS, SHARED), None)
    assert dict(out) == {"crm": None, "tickets": None, "mail_a": None}


# --- no target: tools inferred from scopes -------------------------------------------------


def test_no_target_infers_one_tool_per_scope() -> None:
    out = resolve((), ("tickets:read", "crm:read", "crm:write"))
    assert dict(out) == {"tickets": ("tickets:read",), "crm": ("crm:read", "crm:write")}
    assert list(out) == ["tickets", "crm"]


def test_no_target_scope_held_by_several_tools_is_invalid_target() -> None:
    with pytest.raises(InvalidTarget) as caught:
        resolve((), ("common:read",))
    assert caught.value.description == (
        "scope 'common:read' is granted by several tools (crm, tickets) of workflow 'wf'; "
        "name the tool with `resource` or `audience`"
    )


def test_no_target_scope_held_by_no_tool_is_invalid_target() -> None:
    with pytest.raises(InvalidTarget) as caught:
        resolve((), ("crm:read", "pay:charge"))
    assert caught.value.description == (
        "scope 'pay:charge' is granted by no tool of workflow 'wf'; "
        "name the tool with `resource` or `audience`"
    )


def test_no_target_and_no_scopes_is_invalid_target() -> None:
    with pytest.raises(InvalidTarget) as caught:
        resolve((), None)
    assert caught.value.description == "name at least one `resource` or `audience` (or a `scope`)"


def test_no_target_and_empty_scopes_is_invalid_target() -> None:
    with pytest.raises(InvalidTarget):
        resolve((), ())
