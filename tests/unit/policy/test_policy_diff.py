from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from deputy.config.loader import parse_settings
from deputy.policy.diff import diff_policies
from deputy.policy.model import Policy, policy_from_settings

EXAMPLE = Path(__file__).parents[3] / "examples" / "deputy.yaml"
Mutation = Callable[[dict[str, Any]], None]


def policy(mutate: Mutation | None = None) -> Policy:
    document = yaml.safe_load(EXAMPLE.read_text())
    if mutate:
        mutate(document)
    return policy_from_settings(parse_settings(document, EXAMPLE.parent))


def wf(doc: dict[str, Any], name: str = "customer-support") -> dict[str, Any]:
    w: dict[str, Any] = doc["workflows"][name]
    return w


def lines(mutate: Mutation, before: Mutation | None = None) -> list[str]:
    return [c.line for c in diff_policies(policy(before), policy(mutate)).changes]


CS = "workflow customer-support"
SUPPORT = "spiffe://prod.example/agents/support/*"


def test_same_policy_has_no_changes() -> None:
    result = diff_policies(policy(), policy())
    assert result.changes == () and result.widening == ()
    assert result.old_version == result.new_version


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: wf(d)["tools"].update(customer_data_api=["accounts:read", "accounts:write"]),
            [f"+ {CS}: {SUPPORT} gain customer_data_api [accounts:write]"],
        ),
        (
            lambda d: wf(d)["tools"].update(ticketing_api=["tickets:read"]),
            [f"- {CS}: {SUPPORT} lose ticketing_api [tickets:write]"],
        ),
        (
            lambda d: wf(d)["tools"].pop("pricing_api"),
            [f"- {CS}: {SUPPORT} lose tool pricing_api [rates:read]"],
        ),
        (
            lambda d: wf(d, "support-research")["tools"].update(pricing_api=["rates:read"]),
            [
                "+ workflow support-research: spiffe://prod.example/agents/research/* "
                "gain tool pricing_api [rates:read]"
            ],
        ),
        (
            lambda d: wf(d).pop("tiers"),
            [f"+ {CS}: tiers restriction [enterprise, pro] removed: any tier"],
        ),
        (
            lambda d: wf(d).update(tiers=["pro", "enterprise", "free"]),
            [f"+ {CS}: tiers added: free"],
        ),
        (lambda d: wf(d).update(tiers=["enterprise"]), [f"- {CS}: tiers removed: pro"]),
        (
            lambda d: wf(d).update(delegation="asserted", tiers=None),
            [f"+ {CS}: delegation user_token -> asserted: now acts for any user (asserted)"],
        ),
        (
            lambda d: wf(d, "nightly-billing").update(delegation="user_token"),
            [
                "- workflow nightly-billing: delegation asserted -> user_token: "
                "now acts for users of any tier"
            ],
        ),
        (
            lambda d: wf(d, "price-sync").update(delegation="asserted"),
            [
                "+ workflow price-sync: delegation none -> asserted: "
                "now acts for any user (asserted)"
            ],
        ),
        (
            lambda d: wf(d).update(ttl={"default": 300, "max": 1800}),
            [f"+ {CS}: ttl.max 900s -> 1800s (longer lifetimes)"],
        ),
        (
            lambda d: wf(d).update(ttl={"default": 300, "max": 600}),
            [f"- {CS}: ttl.max 900s -> 600s (shorter lifetimes)"],
        ),
        (
            lambda d: wf(d)["rate_limits"].update(ticketing=40),
            [f"+ {CS}: rate limit ticketing 20/day -> 40/day"],
        ),
        (
            lambda d: wf(d)["rate_limits"].update(ticketing=10),
            [f"- {CS}: rate limit ticketing 20/day -> 10/day"],
        ),
        (
            lambda d: wf(d)["rate_limits"].pop("ticketing"),
            [f"+ {CS}: rate limit ticketing 20/day removed: unlimited"],
        ),
        (
            lambda d: wf(d)["rate_limits"].update(pricing=5),
            [f"- {CS}: rate limit pricing 5/day introduced (was unlimited)"],
        ),
        (
            lambda d: wf(d, "support-research").update(delegate_to=["spiffe://prod.example/x"]),
            ["+ workflow support-research: may delegate to spiffe://prod.example/x"],
        ),
        (
            lambda d: wf(d).pop("delegate_to"),
            [f"- {CS}: may no longer delegate to spiffe://prod.example/agents/research/*"],
        ),
        (
            lambda d: wf(d).update(require_dpop=True),
            [f"- {CS}: require_dpop false -> true (credentials bound to a key)"],
        ),
        (
            lambda d: wf(d)["agents"].append("spiffe://prod.example/agents/sales/*"),
            [
                f"+ {CS}: agent pattern spiffe://prod.example/agents/sales/* added: gains "
                "customer_data_api [accounts:read]; pricing_api [rates:read]; "
                "ticketing_api [tickets:read, tickets:write]"
            ],
        ),
        (
            lambda d: d["workflows"].update(
                audit={
                    "agents": ["spiffe://prod.example/agents/audit"],
                    "delegation": "none",
                    "tools": {"pricing_api": ["rates:read"]},
                }
            ),
            [
                "+ workflow audit: added: spiffe://prod.example/agents/audit get "
                "pricing_api [rates:read] for itself, no user, ttl.max 900s"
            ],
        ),
        (
            lambda d: d["workflows"].pop("price-sync"),
            [
                "- workflow price-sync: removed: spiffe://prod.example/agents/price-sync "
                "lose pricing_api [rates:read]"
            ],
        ),
        (lambda d: d.update(max_delegation_depth=6), ["+ policy: max_delegation_depth 4 -> 6"]),
        (
            lambda d: d["tools"]["pricing_api"].update(audience="https://pricing2.internal"),
            ["+ tool pricing_api: audience https://pricing.internal -> https://pricing2.internal"],
        ),
    ],
)
def test_each_rule(mutate: Mutation, expected: list[str]) -> None:
    assert lines(mutate) == expected


def test_reverse_changes_flip_direction() -> None:
    def dpop(d: dict[str, Any]) -> None:
        wf(d).update(require_dpop=True)

    def no_tiers(d: dict[str, Any]) -> None:
        wf(d).pop("tiers")

    assert lines(lambda d: None, before=dpop) == [
        f"+ {CS}: require_dpop true -> false (bearer credentials)"
    ]
    assert lines(lambda d: None, before=no_tiers) == [
        f"- {CS}: tiers restricted to [enterprise, pro] (was any tier)"
    ]


def test_json_and_widening_summary() -> None:
    def mixed(d: dict[str, Any]) -> None:
        wf(d).update(require_dpop=True, ttl={"default": 300, "max": 1200})

    result = diff_policies(policy(), policy(mixed))
    assert [c.widening for c in result.changes] == [True, False]
    data = result.as_dict()
    assert data["widening"] is True
    assert data["changes"] == [
        {
            "direction": "widening",
            "subject": CS,
            "aspect": "ttl.max",
            "message": "ttl.max 900s -> 1200s (longer lifetimes)",
        },
        {
            "direction": "narrowing",
            "subject": CS,
            "aspect": "require_dpop",
            "message": "require_dpop false -> true (credentials bound to a key)",
        },
    ]
