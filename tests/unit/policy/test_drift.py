"""Scope drift: grants nobody was issued in a window."""

from __future__ import annotations

from deputy.policy.drift import Issued, Used, drift
from deputy.policy.model import Policy, Tool, Workflow

CRM = Tool("crm", "https://crm.internal", "customer-data", frozenset({"read", "write"}))
PRICING = Tool("pricing", "https://pricing.internal", "pricing", frozenset({"rates"}))
SUPPORT = Workflow(
    "support",
    ("spiffe://ex/agents/support/*",),
    "user_token",
    None,
    {"crm": frozenset({"read", "write"}), "pricing": frozenset({"rates"})},
    300,
    900,
)
BILLING = Workflow(
    "billing", ("spiffe://ex/billing",), "asserted", None, {"crm": frozenset({"read"})}, 300, 300
)
POLICY = Policy({"crm": CRM, "pricing": PRICING}, {"support": SUPPORT, "billing": BILLING}, "v1")


def test_unissued_tools_and_scopes_per_workflow() -> None:
    issued = [
        Issued("support", "crm", frozenset({"read"})),
        Issued("support", "crm", frozenset({"read"})),
        Issued("gone", "crm", frozenset({"write"})),  # a workflow no longer in the policy
    ]
    support, billing = drift(POLICY, issued)
    assert (support.workflow, support.credentials) == ("support", 2)
    assert support.unissued_tools == ("pricing",)
    assert dict(support.unissued_scopes) == {"crm": ("write",)}
    assert support.narrowed_tools(SUPPORT.tools) == {"crm": ["read"]}
    assert (billing.credentials, billing.unissued_tools, billing.drifted) == (0, ("crm",), True)


def test_every_grant_used_is_no_drift() -> None:
    issued = [
        Issued("support", "crm", frozenset({"read", "write"})),
        Issued("support", "pricing", frozenset({"rates"})),
        Issued("billing", "crm", frozenset({"read"})),
    ]
    assert [e.drifted for e in drift(POLICY, issued)] == [False, False]


def test_issued_but_never_used_when_uses_are_reported() -> None:
    issued = [
        Issued("support", "crm", frozenset({"read", "write"})),
        Issued("support", "pricing", frozenset({"rates"})),
    ]
    support, _ = drift(POLICY, issued, [Used("support", "crm")])
    assert support.unused_tools == ("pricing",) and support.drifted
    assert support.narrowed_tools(SUPPORT.tools) == {"crm": ["read", "write"]}
    # Without any use reported, nothing is called unused.
    assert drift(POLICY, issued)[0].unused_tools == ()
