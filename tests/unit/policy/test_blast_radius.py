from __future__ import annotations

from pathlib import Path

import pytest

from deputy.audit.revocation import Revocation
from deputy.config import load_settings
from deputy.policy.blast_radius import (
    LedgerCredential,
    LedgerSnapshot,
    blast_radius,
    live_summary,
    patterns_overlap,
    user_reach,
)
from deputy.policy.model import Policy, compile_pattern, policy_from_settings

EXAMPLE = Path(__file__).parents[3] / "examples" / "deputy.yaml"
SUPPORT = "spiffe://prod.example/agents/support/triage"
RESEARCH = "spiffe://prod.example/agents/research/r1"
NOW = 1_000_000.0


@pytest.fixture(scope="module")
def policy() -> Policy:
    return policy_from_settings(load_settings(EXAMPLE))


def cred(
    jti: str, workload: str = SUPPORT, user: str | None = "alice", **kw: object
) -> LedgerCredential:
    fields: dict[str, object] = {
        "tool": "customer_data_api",
        "issued_at": 999_900,
        "expires_at": 1_000_200,
    }
    fields.update(kw)
    return LedgerCredential(jti=jti, workload_id=workload, user_id=user, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("spiffe://p/agents/support/*", SUPPORT.replace("prod.example", "p"), True),
        ("spiffe://p/agents/support/*", "spiffe://p/agents/support/a/b", False),
        ("spiffe://p/agents/support/*", "spiffe://p/agents/*/x", True),
        ("spiffe://p/agents/support/*", "spiffe://p/agents/research/*", False),
        ("spiffe://p/agents/**", "spiffe://p/agents/support/*", True),
        ("spiffe://p/agents/*", "spiffe://p/agents/", False),  # * is one non-empty segment
        ("spiffe://p/agents/**", "spiffe://p/agents/", True),
        ("spiffe://p/a*", "spiffe://p/*b", True),  # "spiffe://p/ab"
        ("spiffe://p/*", "spiffe://p/a/b", False),
        ("spiffe://p/**/x", "spiffe://p/*/*/x", True),
        ("spiffe://p/billing", "spiffe://p/billing2", False),
        ("https://k/c#sa:ns:*", "https://k/c#sa:ns:agent", True),
    ],
)
def test_patterns_overlap_exactly(a: str, b: str, overlap: bool) -> None:
    assert patterns_overlap(a, b) is overlap
    assert patterns_overlap(b, a) is overlap
    if "*" not in b:  # a concrete id overlaps a pattern exactly when the pattern matches it
        assert (compile_pattern(a).match(b) is not None) is overlap


def test_concrete_workload_gets_what_its_workflow_grants(policy: Policy) -> None:
    radius = blast_radius(policy, SUPPORT, LedgerSnapshot(NOW))
    assert not radius.pattern
    [w] = radius.workflows
    assert w.workflow == "customer-support" and w.agents == (
        "spiffe://prod.example/agents/support/*",
    )
    assert w.for_whom == "users with a verified user token of tier enterprise, pro"
    assert radius.scopes == {
        "customer_data_api": ("accounts:read",),
        "pricing_api": ("rates:read",),
        "ticketing_api": ("tickets:read", "tickets:write"),
    }
    assert radius.ttl_max == 900 and not radius.any_user
    assert [(r.category, r.per_day) for r in w.rate_limits] == [
        ("customer-data", 100),
        ("pricing", None),
        ("ticketing", 20),
    ]
    assert w.delegate_to == ("spiffe://prod.example/agents/research/*",)
    assert radius.sub_agent_of == () and not w.require_dpop


def test_sub_agent_is_accepted_by_the_workflow_delegating_to_it(policy: Policy) -> None:
    radius = blast_radius(policy, RESEARCH, LedgerSnapshot(NOW))
    assert [w.workflow for w in radius.workflows] == ["support-research"]
    assert radius.sub_agent_of == ("customer-support",)


def test_pattern_reaches_every_workflow_that_could_admit_a_match(policy: Policy) -> None:
    radius = blast_radius(policy, "spiffe://prod.example/agents/**", LedgerSnapshot(NOW))
    assert [w.workflow for w in radius.workflows] == [
        "customer-support",
        "support-research",
        "nightly-billing",
        "price-sync",
    ]
    assert radius.any_user and radius.ttl_max == 900
    by_name = {w.workflow: w for w in radius.workflows}
    assert by_name["nightly-billing"].for_whom.startswith("any user")
    assert by_name["price-sync"].for_whom == "itself, no user"
    assert radius.sub_agent_of == ("customer-support",)


def test_unknown_workload_has_no_reach(policy: Policy) -> None:
    radius = blast_radius(policy, "spiffe://other.example/x", LedgerSnapshot(NOW))
    assert radius.workflows == () and radius.ttl_max is None and radius.scopes == {}


def test_live_counts_unexpired_credentials_of_matching_workloads(policy: Policy) -> None:
    other = "spiffe://prod.example/agents/support/other"
    ledger = LedgerSnapshot(
        NOW,
        credentials=(
            cred("a"),
            cred("b", user="bob", tool="pricing_api"),
            cred("old", expires_at=int(NOW)),  # expired now
            cred("c", workload=other),
            cred("r", workload=RESEARCH),
        ),
        workloads_seen=frozenset({SUPPORT, other, RESEARCH}),
    )
    one = blast_radius(policy, SUPPORT, ledger).live
    assert (one.credentials, one.users, one.revoked) == (2, 2, 0)
    assert one.by_tool == (("customer_data_api", 1), ("pricing_api", 1))
    assert one.latest_expiry == 1_000_200
    group = blast_radius(policy, "spiffe://prod.example/agents/support/*", ledger)
    assert group.workloads_seen == (other, SUPPORT)
    assert (group.live.credentials, group.live.users) == (3, 2)


def test_revoked_credentials_are_not_counted_live() -> None:
    ledger = LedgerSnapshot(
        NOW,
        credentials=(
            cred("a"),
            cred("child", workload=RESEARCH, parent_jti="a", parent_actors=(SUPPORT,)),
            cred("b", execution_id="exec-1"),
            cred("late", execution_id="exec-1", issued_at=999_990),
            cred("c"),
        ),
        revocations=(
            Revocation("jti", "a", 999_950, 1_000_300, 1),  # and what was exchanged from it
            Revocation("execution_id", "exec-1", 999_950, 1_000_300, 2),  # issued until then
        ),
    )
    live = live_summary(ledger, ledger.credentials)
    assert (live.credentials, live.revoked) == (2, 3)  # "late" and "c"
    killed = LedgerSnapshot(
        NOW, ledger.credentials, (Revocation("workload_id", SUPPORT, 999_950, 1_000_300),)
    )
    # The kill switch on a workload reaches its sub-agent's credential through the act chain.
    assert live_summary(killed, killed.credentials).revoked == 5 - 1  # only "late" survives


def test_user_view_lists_asserted_workflows_and_filters_tiers(policy: Policy) -> None:
    ledger = LedgerSnapshot(NOW, credentials=(cred("a"), cred("b", user="bob")))
    free = user_reach(policy, "alice", "free", ledger)
    assert [w.workflow for w in free.workflows] == ["nightly-billing", "ticket-escalation"]
    assert all(w.delegation == "asserted" for w in free.workflows)
    pro = user_reach(policy, "alice", "pro", ledger)
    assert [w.workflow for w in pro.workflows] == [
        "customer-support",
        "support-research",
        "nightly-billing",
        "ticket-escalation",
    ]
    unknown_tier = user_reach(policy, "alice", None, ledger)
    assert [w.workflow for w in unknown_tier.workflows] == [w.workflow for w in pro.workflows]
    assert (pro.live.credentials, pro.live.users) == (1, 1)
