"""`deputy policy` and `deputy blast-radius` on real files and a real broker's ledger."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import typer
import yaml
from typer.testing import CliRunner, Result

from deputy.cli import blast_radius, policy
from deputy.cli.main import app as deputy_app
from deputy.config import load_settings
from deputy.devtools.broker_thread import BrokerThread
from deputy.policy.model import policy_from_settings
from tests.integration.deployment import Deployment, running, write_deployment
from tests.integration.oauth_client import (
    JWT_SPIFFE,
    RESEARCH_ID,
    SUPPORT_ID,
    TICKETS,
    alice_credential,
    sub_agent_exchange,
)

EXAMPLE = Path(__file__).parents[2] / "examples" / "deputy.yaml"

app = typer.Typer()
app.add_typer(policy.app, name="policy")
app.command(name="blast-radius")(blast_radius.blast_radius)


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def config(
    tmp_path: Path, name: str, mutate: Callable[[dict[str, Any]], None] | None = None
) -> str:
    document = yaml.safe_load(EXAMPLE.read_text())
    if mutate:
        mutate(document)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document))
    return str(path)


def test_policy_check_valid_and_invalid(tmp_path: Path) -> None:
    good = config(tmp_path, "good.yaml")
    result = run("policy", "check", good)
    version = policy_from_settings(load_settings(Path(good))).version
    assert result.exit_code == 0
    assert result.stdout == f"{good}: valid: 3 tools, 5 workflows (policy {version})\n"

    def bad_scope(d: dict[str, Any]) -> None:
        d["workflows"]["customer-support"]["tools"]["pricing_api"] = ["rates:write"]
        d["workflows"]["price-sync"]["colour"] = "red"

    bad = run("policy", "check", config(tmp_path, "bad.yaml", bad_scope))
    assert bad.exit_code == 2 and bad.stdout == ""
    assert bad.stderr.splitlines() == [
        "error: invalid configuration:",
        "  workflows.price-sync.colour: unknown key; remove it or check its spelling",
    ]
    missing = run("policy", "check", str(tmp_path / "nope.yaml"))
    assert missing.exit_code == 2 and "cannot read config file" in missing.stderr


def test_policy_diff_gates_widening(tmp_path: Path) -> None:
    old = config(tmp_path, "old.yaml")

    def widen(d: dict[str, Any]) -> None:
        cs = d["workflows"]["customer-support"]
        cs["tools"]["customer_data_api"] = ["accounts:read", "accounts:write"]
        cs["require_dpop"] = True

    wider = config(tmp_path, "wider.yaml", widen)
    result = run("policy", "diff", old, wider)
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "+ workflow customer-support: spiffe://prod.example/agents/support/* gain "
        "customer_data_api [accounts:write]",
        "- workflow customer-support: require_dpop false -> true (credentials bound to a key)",
    ]
    assert result.stderr == (
        "error: 1 widening change(s); review them and pass --allow-widening to accept\n"
    )
    assert run("policy", "diff", old, wider, "--allow-widening").exit_code == 0

    as_json = run("policy", "diff", old, wider, "--json")
    assert as_json.exit_code == 1
    data = json.loads(as_json.stdout)
    assert data["widening"] is True
    assert [c["direction"] for c in data["changes"]] == ["widening", "narrowing"]

    # The reverse drops DPoP again, which widens; a shorter lifetime alone passes the gate.
    back = run("policy", "diff", wider, old)
    assert back.exit_code == 1 and [line[0] for line in back.stdout.splitlines()] == ["-", "+"]

    def shorter(d: dict[str, Any]) -> None:
        d["workflows"]["customer-support"]["ttl"] = {"default": 300, "max": 600}

    narrowed = run("policy", "diff", old, config(tmp_path, "narrow.yaml", shorter))
    assert (narrowed.exit_code, narrowed.stderr) == (0, "")
    assert narrowed.stdout == (
        "- workflow customer-support: ttl.max 900s -> 600s (shorter lifetimes)\n"
    )
    same = run("policy", "diff", old, old)
    assert (same.exit_code, same.stdout) == (0, "no permission changes\n")
    invalid = run("policy", "diff", old, str(tmp_path / "nope.yaml"))
    assert invalid.exit_code == 2


def test_blast_radius_without_a_ledger(tmp_path: Path) -> None:
    path = config(tmp_path, "deputy.yaml")
    result = run("blast-radius", "spiffe://prod.example/agents/support/*", "--config", path)
    assert result.exit_code == 0, result.output
    version = policy_from_settings(load_settings(Path(path))).version
    assert result.stdout.splitlines() == [
        f"blast radius of spiffe://prod.example/agents/support/* (pattern; policy {version})",
        "workflow customer-support (agents spiffe://prod.example/agents/support/*)",
        "  for: users with a verified user token of tier enterprise, pro",
        "  tool: customer_data_api [accounts:read] at https://crm.internal",
        "  tool: pricing_api [rates:read] at https://pricing.internal",
        "  tool: ticketing_api [tickets:read tickets:write] at https://tickets.internal",
        "  max lifetime: 900s",
        "  max credentials per user per day: customer-data 100, pricing unlimited, ticketing 20",
        "  may delegate to: spiffe://prod.example/agents/research/*",
        "  dpop: not required",
        "in all: customer_data_api [accounts:read]; pricing_api [rates:read]; "
        "ticketing_api [tickets:read tickets:write]; max lifetime 900s",
        "accepted as a sub-agent by: none (max delegation depth 4)",
        "workloads active while live credentials were issued: none",
        "live now: 0 unexpired unrevoked credentials for 0 users",
    ]
    assert not (tmp_path / ".deputy").exists()  # reading created nothing

    billing = run("blast-radius", "spiffe://prod.example/agents/billing", "--config", path)
    assert "acts for ANY user (asserted delegation)" in billing.stdout.splitlines()
    nothing = run("blast-radius", "spiffe://elsewhere/x", "--config", path)
    assert "no workflow admits it" in nothing.stdout
    both = run("blast-radius", "x", "--user", "alice", "--config", path)
    assert both.exit_code == 2


def test_blast_radius_counts_live_unrevoked_credentials(
    deployment: Deployment, broker: tuple[BrokerThread, httpx.Client]
) -> None:
    _, client = broker
    crm = alice_credential(deployment, client)["access_token"]
    alice_credential(deployment, client, resource=TICKETS, scope="tickets:read")
    alice_credential(deployment, client)
    # The holder revokes one of its CRM credentials.
    revoked = client.post(
        "/oauth2/revoke",
        data={
            "token": crm,
            "client_assertion_type": JWT_SPIFFE,
            "client_assertion": deployment.svid(),
        },
    )
    assert revoked.status_code == 200, revoked.text
    path = str(deployment.config_path)

    result = run("blast-radius", SUPPORT_ID, "--config", path)
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert out[0].startswith(f"blast radius of {SUPPORT_ID} (workload id; policy ")
    assert f"workloads active while live credentials were issued: {SUPPORT_ID}" in out
    assert out[-1].startswith(
        "live now: 2 unexpired unrevoked credentials for 1 user "
        "(customer_data_api 1, ticketing_api 1), latest expiry "
    )
    assert out[-1].endswith("; 1 revoked not counted")

    data = json.loads(
        run("blast-radius", "spiffe://prod.example/**", "--config", path, "--json").stdout
    )
    assert data["live"]["credentials"] == 2 and data["live"]["revoked"] == 1
    assert data["live"]["workloads"] == [SUPPORT_ID] and data["any_user"] is True
    alice = json.loads(
        run("blast-radius", "--user", "alice", "--tier", "pro", "--json", "--config", path).stdout
    )
    assert sorted(w["workflow"] for w in alice["workflows"]) == [
        "customer-support",
        "nightly-billing",
        "support-research",
        "ticket-escalation",
    ]
    assert (alice["live"]["credentials"], alice["live"]["users"]) == (2, 1)
    bob = run("blast-radius", "--user", "bob", "--tier", "free", "--config", path)
    assert bob.exit_code == 0
    lines = bob.stdout.splitlines()
    assert lines[0].startswith("agents that can act for user bob (tier free; policy ")
    assert [line for line in lines if line.startswith("workflow ")] == [
        "workflow nightly-billing (agents spiffe://prod.example/agents/billing)",
        "workflow ticket-escalation "
        "(agents https://k8s.example/cluster-1#system:serviceaccount:support:escalation)",
    ]
    assert lines[-1] == "live now: 0 unexpired unrevoked credentials for 0 users"


def test_a_revoked_parent_covers_a_sub_agents_credentials_in_its_blast_radius(
    deployment: Deployment, broker: tuple[BrokerThread, httpx.Client]
) -> None:
    _, client = broker
    parent = alice_credential(deployment, client)["access_token"]
    child = sub_agent_exchange(deployment, client, parent)
    assert child.status_code == 200, child.text
    path = str(deployment.config_path)
    for target in (RESEARCH_ID, "spiffe://prod.example/agents/research/*"):
        live = json.loads(run("blast-radius", target, "--config", path, "--json").stdout)["live"]
        assert (live["credentials"], live["revoked"]) == (1, 0)
    # Revoking the support agent's credential (another workload's) covers what was derived.
    revoked = client.post(
        "/oauth2/revoke",
        data={
            "token": parent,
            "client_assertion_type": JWT_SPIFFE,
            "client_assertion": deployment.svid(),
        },
    )
    assert revoked.status_code == 200, revoked.text
    for target in (RESEARCH_ID, "spiffe://prod.example/agents/research/*"):
        live = json.loads(run("blast-radius", target, "--config", path, "--json").stdout)["live"]
        assert (live["credentials"], live["revoked"]) == (0, 1)


def test_drift_reports_unissued_grants_and_a_narrower_policy(tmp_path: Path) -> None:
    d = write_deployment(tmp_path)
    with running(d) as (_, client):
        alice_credential(d, client, scope="accounts:read")  # customer_data_api only
    result = CliRunner().invoke(
        deputy_app, ["drift", "--config", str(d.config_path), "--since", "1h"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert (
        "workflow customer-support: 1 credential; tool pricing_api never issued; "
        "tool ticketing_api never issued"
    ) in lines
    assert "workflow price-sync: no credential issued in the window" in lines
    assert "suggested policy (review before applying):" in lines
    assert "-      pricing_api:" in lines and "-  price-sync:" in lines
    as_json = CliRunner().invoke(
        deputy_app, ["drift", "--config", str(d.config_path), "--since", "1h", "--json"]
    )
    document = json.loads(as_json.output)
    support = next(w for w in document["workflows"] if w["workflow"] == "customer-support")
    assert support == {
        "workflow": "customer-support",
        "credentials": 1,
        "unissued_tools": ["pricing_api", "ticketing_api"],
        "unissued_scopes": {},
        "unused_tools": [],
    }
    assert document["uses_reported"] is False
    assert "(no API reported uses in the window: drift counts issuance only)" in lines
