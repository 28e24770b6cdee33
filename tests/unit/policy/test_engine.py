from __future__ import annotations

from pathlib import Path

import pytest

from deputy.config import load_settings
from deputy.policy.engine import Subject, decide
from deputy.policy.model import Policy, compile_pattern, policy_from_settings

EXAMPLE = Path(__file__).parents[3] / "examples" / "deputy.yaml"
SUPPORT = "spiffe://prod.example/agents/support/triage"


@pytest.fixture(scope="module")
def policy() -> Policy:
    return policy_from_settings(load_settings(EXAMPLE))


def alice(workload: str = SUPPORT, tier: str | None = "pro", claimed: str | None = None) -> Subject:
    return Subject(workload, "alice", tier, "user_token", claimed)


@pytest.mark.parametrize(
    ("pattern", "workload", "matches"),
    [
        ("spiffe://prod.example/agents/support/*", SUPPORT, True),
        (
            "spiffe://prod.example/agents/support/*",
            "spiffe://prod.example/agents/support/a/b",
            False,
        ),
        ("spiffe://prod.example/agents/**", "spiffe://prod.example/agents/support/a/b", True),
        ("spiffe://prod.example/agents/billing", "spiffe://prod.example/agents/billing2", False),
        ("spiffe://prod.example/agents/billing", "spiffe://prod.example/agents/billing", True),
        ("spiffe://prod.example/a.b", "spiffe://prod.example/aXb", False),
        (
            "https://k8s.example/c1#system:serviceaccount:ns:*",
            "https://k8s.example/c1#system:serviceaccount:ns:agent",
            True,
        ),
    ],
    ids=[
        "one-segment",
        "star-not-across-slash",
        "double-star",
        "exact-no-prefix",
        "exact",
        "dot-is-literal",
        "oidc-naming",
    ],
)
def test_workload_patterns(pattern: str, workload: str, matches: bool) -> None:
    assert bool(compile_pattern(pattern).match(workload)) is matches


def test_allows_declared_tools_with_workflow_scopes(policy: Policy) -> None:
    wf = policy.workflows["customer-support"]
    d = decide(policy, wf, alice(), {"customer_data_api": None, "ticketing_api": None}, None)
    assert d.allow and d.reasons == ()
    assert [(g.tool.name, g.scope) for g in d.grants] == [
        ("customer_data_api", "accounts:read"),
        ("ticketing_api", "tickets:read tickets:write"),
    ]
    assert d.ttl == 300 and d.policy_version == policy.version


def test_narrower_scopes_are_granted_as_asked(policy: Policy) -> None:
    wf = policy.workflows["customer-support"]
    d = decide(policy, wf, alice(), {"ticketing_api": ("tickets:read",)}, 900)
    assert d.allow and d.grants[0].scope == "tickets:read" and d.ttl == 900


def test_denial_lists_every_failed_rule(policy: Policy) -> None:
    wf = policy.workflows["customer-support"]
    d = decide(
        policy,
        wf,
        alice(workload="spiffe://prod.example/agents/billing", tier="free", claimed="bob"),
        {"payments_api": None, "customer_data_api": ("accounts:write",)},
        901,
    )
    assert not d.allow and d.grants == ()
    assert [r.rule for r in d.reasons] == [
        "workflow.agents",
        "delegation.user",
        "workflow.tiers",
        "workflow.tools",
        "workflow.scopes",
        "ttl.max",
    ]
    assert "maximum of 900 seconds" in d.reasons[-1].message


@pytest.mark.parametrize("tier", [None, "free", "Pro"], ids=["no-tier", "free", "case-differs"])
def test_tier_must_be_listed_exactly(policy: Policy, tier: str | None) -> None:
    d = decide(
        policy, policy.workflows["customer-support"], alice(tier=tier), {"pricing_api": None}, None
    )
    assert [r.rule for r in d.reasons] == ["workflow.tiers"]


def test_workflow_without_tiers_ignores_tier(policy: Policy) -> None:
    wf = policy.workflows["nightly-billing"]
    subject = Subject("spiffe://prod.example/agents/billing", "u1", None, "asserted")
    assert decide(policy, wf, subject, {"customer_data_api": None}, 300).allow


def test_policy_version_changes_with_policy(policy: Policy) -> None:
    settings = load_settings(EXAMPLE)
    wf = settings.workflows["nightly-billing"].model_copy(update={"agents": ("spiffe://x/y",)})
    changed = settings.model_copy(
        update={"workflows": {**settings.workflows, "nightly-billing": wf}}
    )
    assert policy_from_settings(changed).version != policy.version
    assert policy_from_settings(settings).version == policy.version
