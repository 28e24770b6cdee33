"""Delegation-chain rules of ``decide``: a sub-agent's credentials only ever narrow."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from deputy.policy.engine import Chain, Decision, Subject, decide
from deputy.policy.model import Policy, Tool, Workflow

PARENT = "spiffe://ex/agents/triage"
SUB = "spiffe://ex/agents/sub/lookup"
OTHER = "spiffe://ex/agents/other"
CRM = "https://crm.example"
TICKETS = "https://tickets.example"

TOOLS = {
    "crm": Tool("crm", CRM, "data", frozenset({"crm:read", "crm:write"})),
    "tickets": Tool("tickets", TICKETS, "data", frozenset({"tickets:read", "tickets:write"})),
}


def workflow(
    name: str,
    *,
    agents: tuple[str, ...] = ("spiffe://ex/agents/sub/*",),
    delegation: str = "user_token",
    tools: Mapping[str, frozenset[str]] | None = None,
    delegate_to: tuple[str, ...] = (),
) -> Workflow:
    return Workflow(
        name=name,
        agents=agents,
        delegation=delegation,
        tiers=None,
        tools=tools
        if tools is not None
        else {
            "crm": frozenset({"crm:read", "crm:write"}),
            "tickets": frozenset({"tickets:read", "tickets:write"}),
        },
        ttl_default=300,
        ttl_max=900,
        delegate_to=delegate_to,
    )


TRIAGE = workflow(
    "triage",
    agents=(PARENT,),
    tools={"crm": frozenset({"crm:read", "crm:write"})},
    delegate_to=("spiffe://ex/agents/sub/*",),
)
LOOKUP = workflow("lookup")
LOOKUP_ASSERTED = workflow("lookup-asserted", delegation="asserted")
LOOKUP_NONE = workflow("lookup-none", delegation="none")


def make_policy(*extra: Workflow, max_depth: int = 4) -> Policy:
    flows = {w.name: w for w in (TRIAGE, LOOKUP, LOOKUP_ASSERTED, LOOKUP_NONE, *extra)}
    return Policy(tools=TOOLS, workflows=flows, version="v-test", max_delegation_depth=max_depth)


def chain(
    *,
    actors: tuple[str, ...] = (PARENT,),
    workflow: str = "triage",
    audience: str = CRM,
    scopes: frozenset[str] = frozenset({"crm:read"}),
    delegation: str = "user_token",
) -> Chain:
    return Chain(actors, workflow, audience, scopes, delegation)


def subject(
    c: Chain | None = None,
    *,
    workload: str = SUB,
    delegation: str = "user_token",
    may_act: str | None = None,
) -> Subject:
    return Subject(
        workload, "alice", None, delegation, may_act=may_act, chain=c if c is not None else chain()
    )


def run(
    s: Subject,
    tools: Mapping[str, tuple[str, ...] | None] | None = None,
    *,
    wf: Workflow = LOOKUP,
    policy: Policy | None = None,
) -> Decision:
    return decide(
        policy if policy is not None else make_policy(),
        wf,
        s,
        tools if tools is not None else {"crm": None},
        None,
    )


def rules(d: Decision) -> list[str]:
    return [r.rule for r in d.reasons]


# --- allowed narrowing ---------------------------------------------------------------------


def test_sub_agent_default_scopes_are_workflow_scopes_within_parent_scopes() -> None:
    d = run(subject())
    assert d.allow is True
    assert d.reasons == ()
    assert [(g.tool.name, g.scopes) for g in d.grants] == [("crm", ("crm:read",))]
    assert d.workflow == "lookup" and d.policy_version == "v-test" and d.ttl == 300


def test_sub_agent_default_scopes_keep_every_shared_scope_sorted() -> None:
    d = run(subject(chain(scopes=frozenset({"crm:write", "crm:read", "tickets:read"}))))
    assert d.allow is True
    assert d.grants[0].scopes == ("crm:read", "crm:write")
    assert d.grants[0].scope == "crm:read crm:write"


def test_sub_agent_may_request_a_subset_of_parent_scopes() -> None:
    c = chain(scopes=frozenset({"crm:read", "crm:write"}))
    d = run(subject(c), {"crm": ("crm:write",)})
    assert d.allow is True
    assert d.grants[0].scopes == ("crm:write",)


# --- delegation.sub_agents -----------------------------------------------------------------


def test_parent_workflow_that_does_not_delegate_to_actor() -> None:
    wf = workflow("lookup-other", agents=(OTHER,))
    d = run(subject(workload=OTHER), wf=wf, policy=make_policy(wf))
    assert d.allow is False
    assert rules(d) == ["delegation.sub_agents"]
    assert d.reasons[0].message == (
        f"workflow 'triage' does not delegate to workload {OTHER} (see its `delegate_to`)"
    )
    assert d.grants == ()


def test_parent_workflow_with_empty_delegate_to_admits_nobody() -> None:
    closed = workflow("closed", agents=(PARENT,), delegate_to=())
    d = run(subject(chain(workflow="closed")), policy=make_policy(closed))
    assert rules(d) == ["delegation.sub_agents"]


def test_parent_workflow_that_no_longer_exists() -> None:
    d = run(subject(chain(workflow="retired")))
    assert d.allow is False
    assert rules(d) == ["delegation.sub_agents"]
    assert "workflow 'retired'" in d.reasons[0].message


# --- delegation.cycle ----------------------------------------------------------------------


def test_actor_already_in_chain_is_a_cycle() -> None:
    d = run(subject(chain(actors=(PARENT, SUB))))
    assert d.allow is False
    assert rules(d) == ["delegation.cycle"]
    assert d.reasons[0].message == f"workload {SUB} is already in the delegation chain"


# --- delegation.depth ----------------------------------------------------------------------


def test_chain_exactly_at_max_depth_is_allowed() -> None:
    actors = (PARENT, "spiffe://ex/a2", "spiffe://ex/a3")  # plus SUB = 4 actors
    d = run(subject(chain(actors=actors)), policy=make_policy(max_depth=4))
    assert d.allow is True
    assert rules(d) == []


def test_chain_beyond_max_depth_is_refused() -> None:
    actors = (PARENT, "spiffe://ex/a2", "spiffe://ex/a3", "spiffe://ex/a4")
    d = run(subject(chain(actors=actors)), policy=make_policy(max_depth=4))
    assert d.allow is False
    assert rules(d) == ["delegation.depth"]
    assert d.reasons[0].message == "the chain would have 5 actors; the maximum is 4"


def test_max_depth_one_forbids_any_delegation() -> None:
    d = run(subject(), policy=make_policy(max_depth=1))
    assert rules(d) == ["delegation.depth"]


# --- delegation.user -----------------------------------------------------------------------


def test_user_token_workflow_refuses_asserted_chain() -> None:
    d = run(subject(chain(delegation="asserted")))
    assert d.allow is False
    assert rules(d) == ["delegation.user"]
    assert d.reasons[0].message == (
        "workflow 'lookup' (user_token) does not accept a chain whose user was established "
        "by `asserted`"
    )


def test_user_token_workflow_accepts_user_token_chain() -> None:
    assert run(subject(chain(delegation="user_token"))).allow is True


@pytest.mark.parametrize("chain_delegation", ["user_token", "asserted"])
def test_asserted_workflow_accepts_user_token_and_asserted_chains(chain_delegation: str) -> None:
    d = run(subject(chain(delegation=chain_delegation)), wf=LOOKUP_ASSERTED)
    assert d.allow is True
    assert rules(d) == []


@pytest.mark.parametrize("wf", [LOOKUP, LOOKUP_ASSERTED], ids=["user_token", "asserted"])
def test_chain_without_user_is_refused(wf: Workflow) -> None:
    d = run(subject(chain(delegation="none")), wf=wf)
    assert rules(d) == ["delegation.user"]


@pytest.mark.parametrize("chain_delegation", ["user_token", "asserted", "none"])
def test_none_workflow_refuses_every_chain(chain_delegation: str) -> None:
    d = run(subject(chain(delegation=chain_delegation)), wf=LOOKUP_NONE)
    assert d.allow is False
    assert rules(d) == ["delegation.user"]


# --- delegation.audience -------------------------------------------------------------------


def test_tool_outside_chain_audience_is_refused() -> None:
    c = chain(scopes=frozenset({"tickets:read"}))  # audience is still CRM
    d = run(subject(c), {"tickets": None})
    assert d.allow is False
    assert rules(d) == ["delegation.audience"]
    assert d.reasons[0].message == (
        f"tool 'tickets' ({TICKETS}) is outside the audience of the subject token ({CRM})"
    )
    assert d.grants == ()


def test_audience_and_empty_intersection_both_reported() -> None:
    d = run(subject(), {"tickets": None})  # parent holds only crm:read
    assert rules(d) == ["delegation.audience", "delegation.scopes"]


# --- delegation.scopes ---------------------------------------------------------------------


def test_requested_scopes_beyond_parent_are_refused() -> None:
    d = run(subject(), {"crm": ("crm:read", "crm:write")})
    assert d.allow is False
    assert rules(d) == ["delegation.scopes"]
    assert d.reasons[0].message == (
        "scopes for tool 'crm' must be within the subject token's scopes (crm:read)"
    )


def test_empty_intersection_of_workflow_and_parent_scopes_is_refused() -> None:
    narrow = workflow("narrow", tools={"crm": frozenset({"crm:write"})})
    d = run(subject(), wf=narrow, policy=make_policy(narrow))
    assert d.allow is False
    assert rules(d) == ["delegation.scopes"]


def test_empty_parent_scopes_reported_as_none() -> None:
    d = run(subject(chain(scopes=frozenset())))
    assert rules(d) == ["delegation.scopes"]
    assert d.reasons[0].message.endswith("subject token's scopes (none)")


def test_scopes_beyond_workflow_and_parent_report_both_rules() -> None:
    narrow = workflow("narrow", tools={"crm": frozenset({"crm:read"})})
    d = run(subject(), {"crm": ("crm:write",)}, wf=narrow, policy=make_policy(narrow))
    assert rules(d) == ["workflow.scopes", "delegation.scopes"]


# --- delegation.may_act --------------------------------------------------------------------


def test_may_act_naming_another_workload_is_refused() -> None:
    d = run(subject(may_act=OTHER))
    assert d.allow is False
    assert rules(d) == ["delegation.may_act"]
    assert d.reasons[0].message == f"the subject token lets only {OTHER} act for its subject"


def test_may_act_naming_this_workload_adds_no_reason() -> None:
    d = run(subject(may_act=SUB))
    assert d.allow is True
    assert d.reasons == ()


def test_may_act_applies_without_a_chain() -> None:
    s = Subject(SUB, "alice", None, "user_token", may_act=OTHER)
    d = decide(make_policy(), LOOKUP, s, {"crm": None}, None)
    assert rules(d) == ["delegation.may_act"]


# --- several rules at once -----------------------------------------------------------------


def test_every_failed_rule_is_listed_together_and_no_grant_is_made() -> None:
    actors = (PARENT, "spiffe://ex/a2", "spiffe://ex/a3", SUB)
    c = chain(actors=actors, workflow="retired", delegation="asserted")
    d = run(subject(c, may_act=OTHER), {"crm": ("crm:write",), "tickets": None})
    assert d.allow is False
    assert rules(d) == [
        "delegation.may_act",
        "delegation.sub_agents",
        "delegation.cycle",
        "delegation.depth",
        "delegation.user",
        "delegation.scopes",  # crm:write is not in the parent's scopes
        "delegation.audience",  # tickets is outside the parent's audience
        "delegation.scopes",  # and gets no scope at all
    ]
    assert d.grants == ()


def test_one_failing_tool_denies_the_grants_of_the_others() -> None:
    d = run(subject(), {"crm": None, "tickets": None})
    assert d.allow is False
    assert rules(d) == ["delegation.audience", "delegation.scopes"]
    assert d.grants == ()


# --- Workflow.may_delegate_to --------------------------------------------------------------


@pytest.mark.parametrize(
    ("delegate_to", "workload", "expected"),
    [
        ((), SUB, False),
        (("spiffe://ex/agents/sub/*",), SUB, True),
        (("spiffe://ex/agents/sub/*",), "spiffe://ex/agents/sub/a/b", False),
        (("spiffe://ex/agents/sub/*",), "spiffe://ex/agents/sub", False),
        (("spiffe://ex/agents/**",), "spiffe://ex/agents/sub/a/b", True),
        (("spiffe://ex/agents/**",), "spiffe://ex/other/x", False),
        ((SUB,), SUB, True),
        ((SUB,), SUB + "2", False),
        ((OTHER, "spiffe://ex/agents/sub/*"), SUB, True),
        ((OTHER, "spiffe://ex/agents/sub/*"), OTHER, True),
        ((OTHER, "spiffe://ex/agents/sub/*"), PARENT, False),
    ],
    ids=[
        "empty",
        "star",
        "star-not-across-slash",
        "star-needs-segment-prefix",
        "double-star",
        "double-star-prefix",
        "exact",
        "exact-no-prefix",
        "any-of-second",
        "any-of-first",
        "any-of-none",
    ],
)
def test_may_delegate_to(delegate_to: tuple[str, ...], workload: str, expected: bool) -> None:
    wf = workflow("w", delegate_to=delegate_to)
    assert wf.may_delegate_to(workload) is expected


def test_star_needs_a_non_empty_segment_and_no_agents_admit_no_one() -> None:
    wf = Workflow(
        "w",
        ("spiffe://ex/agents/*",),
        "user_token",
        None,
        {},
        1,
        1,
        delegate_to=("spiffe://ex/sub/*",),
    )
    assert wf.admits("spiffe://ex/agents/a") and not wf.admits("spiffe://ex/agents/")
    assert not wf.may_delegate_to("spiffe://ex/sub/")
    assert not Workflow("none", (), "none", None, {}, 1, 1).admits("anything")
