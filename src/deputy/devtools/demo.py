"""`deputy demo`: one customer-support execution, its denials, its audit trail."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
from joserfc import jwt
from joserfc.jwk import KeySet

from deputy.audit.log import AuditFilter
from deputy.clock import SystemClock
from deputy.config import load_settings
from deputy.devtools.broker_thread import BrokerThread
from deputy.devtools.example import ExampleIdentities, example_config, write_example_trust
from deputy.server.wiring import revoke_now
from deputy.store.sqlite.audit_reader import open_audit_reader

MARKER = ".deputy-demo"
SUPPORT_AGENT = "/agents/support/triage"
ESCALATION_SA = "system:serviceaccount:support:escalation"
RESEARCH_AGENT = "/agents/research/r1"
CRM = "https://crm.internal"


def _section(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)))


def prepare(directory: Path) -> tuple[Path, ExampleIdentities]:
    """A fresh demo directory: the example config and trust files for run-time keys."""
    if directory.exists():
        if not (directory / MARKER).exists():
            raise SystemExit(f"{directory} exists and is not a demo directory; pick another --dir")
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / MARKER).write_text("created by `deputy demo`; safe to delete\n")
    config = directory / "deputy.yaml"
    config.write_text(example_config())
    return config, write_example_trust(directory, SystemClock())


def _show_denial(label: str, response: httpx.Response) -> None:
    body = response.json()
    print(f"- {label}: {response.status_code} {body['error']}")
    for reason in body.get("reasons", []):
        print(f"    {reason['rule']}: {reason['message']}")
    if "reasons" not in body:
        print(f"    {body['error_description']}")
    if "retry-after" in response.headers:
        print(f"    Retry-After: {response.headers['retry-after']} s")


async def seed_snippet(
    url: str, agent_instance_id: str, user_context: dict[str, str], agent_workload_token: str
) -> dict[str, Any]:
    """The seed's client code, verbatim but for the URL."""
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{url}/issue",
            json={
                "agent_id": agent_instance_id,
                "user_id": user_context["user_id"],
                "tools": ["customer_data_api", "ticketing_api"],
                "ttl_seconds": 300,
            },
            headers={"Authorization": f"Bearer {agent_workload_token}"},
        )
        credentials: dict[str, Any] = response.json()["credentials"]
        return credentials


def _exchange_form(
    subject: str, kind: str, actor: str, resource: str, scope: str | None = None
) -> dict[str, str]:
    """An RFC 8693 exchange; ``kind`` is ``id_token`` (a user's) or ``access_token`` (Deputy's)."""
    form = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": subject,
        "subject_token_type": f"urn:ietf:params:oauth:token-type:{kind}",
        "actor_token": actor,
        "actor_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "resource": resource,
    }
    if scope is not None:
        form["scope"] = scope
    return form


def _exchange(
    http: httpx.Client, subject: str, kind: str, actor: str, resource: str, scope: str | None = None
) -> dict[str, Any]:
    response = http.post(
        "/oauth2/token", data=_exchange_form(subject, kind, actor, resource, scope)
    )
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def run_demo(directory: Path) -> int:
    config, identities = prepare(directory.resolve())
    idp, svids = identities.idp, identities.svids
    settings = load_settings(config)
    with BrokerThread(settings) as broker, httpx.Client(base_url=broker.url) as http:
        print(f"Deputy broker on {broker.url} (config {config})")
        jwks = KeySet.import_key_set(http.get("/.well-known/jwks.json").json())
        svid = svids.jwt_svid(SUPPORT_AGENT)
        alice = idp.user_token("alice", "pro")

        def issue(body: dict[str, Any], token: str = svid) -> httpx.Response:
            return http.post("/issue", json=body, headers={"Authorization": f"Bearer {token}"})

        _section("1. customer-support execution for alice (pro), agent instance triage-7f9c")
        response = issue(
            {
                "agent_id": "triage-7f9c",
                "user_id": "alice",
                "user_token": alice,
                "tools": ["customer_data_api", "pricing_api", "ticketing_api"],
                "ttl_seconds": 300,
            }
        )
        response.raise_for_status()
        issued = response.json()
        execution = issued["execution_id"]
        print(f"execution {execution}, decision {issued['decision_id']}")
        steps = {
            "customer_data_api": "CRM lookup",
            "pricing_api": "pricing",
            "ticketing_api": "ticket",
        }
        for tool, cred in issued["credentials"].items():
            token = jwt.decode(cred["access_token"], jwks, algorithms=["ES256", "ES384"])
            print(
                f"\n{steps[tool]} → {tool}: {cred['token_type']}, expires_in "
                f"{cred['expires_in']} s, verified against the published JWKS"
            )
            print("  header: " + json.dumps(dict(token.header)))
            print("  claims: " + json.dumps(token.claims, indent=2).replace("\n", "\n  "))

        _section("2. denials")
        bob_free = idp.user_token("bob", "free")
        base = {
            "agent_id": "triage-7f9c",
            "user_id": "alice",
            "user_token": alice,
            "tools": ["pricing_api"],
        }
        _show_denial(
            "tool outside the workflow",
            issue({**base, "tools": ["customer_data_api", "payments_api"]}),
        )
        _show_denial(
            "scope beyond the workflow's grant",
            issue({**base, "tools": {"customer_data_api": ["accounts:write"]}}),
        )
        _show_denial("TTL over the bound", issue({**base, "ttl_seconds": 3600}))
        _show_denial(
            "free-tier user",
            issue(
                {
                    "agent_id": "triage-7f9c",
                    "user_id": "bob",
                    "user_token": bob_free,
                    "tools": ["pricing_api"],
                }
            ),
        )
        _show_denial(
            "another user's token", issue({**base, "user_token": idp.user_token("mallory", "pro")})
        )
        carol = idp.user_token("carol", "enterprise")
        carol_body = {"agent_id": "triage-7f9c", "user_token": carol, "tools": ["ticketing_api"]}
        allowed = 0
        while (response := issue(carol_body)).status_code == 200:
            allowed += 1
        print(f"- (carol got {allowed} ticketing credentials today)")
        _show_denial("rate limit", response)
        _show_denial("forged workload token", issue(base, token=svid[:-4] + "AAAA"))

        _section("3. asserted delegation: the seed's client snippet, verbatim")
        k8s_token = identities.k8s_token(ESCALATION_SA)
        creds = asyncio.run(
            seed_snippet(broker.url, "escalation-5d2a", {"user_id": "dave"}, k8s_token)
        )
        for tool, cred in creds.items():
            print(f"- {tool}: scope '{cred['scope']}', audience {cred['audience']}")

        _section("4. RFC 8693: a sub-agent continues the execution, then the kill switch")
        parent = _exchange(http, alice, "id_token", svid, CRM, "accounts:read")
        print(f"support agent: {parent['issued_token_type']} for {parent['audience']}")
        research_svid = svids.jwt_svid(RESEARCH_AGENT)
        child = _exchange(http, parent["access_token"], "access_token", research_svid, CRM)
        claims = jwt.decode(child["access_token"], jwks, algorithms=["ES256", "ES384"]).claims
        print("research sub-agent's credential, as the CRM sees it:")
        shown = ("sub", "aud", "scope", "client_id", "act", "execution_id", "workflow")
        print("  " + json.dumps({k: claims[k] for k in shown}, indent=2).replace("\n", "\n  "))
        outcome = asyncio.run(
            revoke_now(settings, "execution_id", parent["execution_id"], "demo: incident drill")
        )
        print(
            f"deputy revoke --execution {parent['execution_id']}: "
            f"{outcome.live.credentials} live credentials revoked"
        )
        again = http.post(
            "/oauth2/token",
            data=_exchange_form(parent["access_token"], "access_token", research_svid, CRM),
        )
        _show_denial("exchanging a revoked credential", again)

        _section(f"5. audit trail of execution {execution}")
        for stored in broker.broker.audit_reader.query(AuditFilter(execution_id=execution)):
            r = stored.record
            print(
                f"#{stored.seq} {r['outcome']} {r['workflow']} workload={r['workload_id']} "
                f"instance={r['agent_instance']} user={r['user_id']} ({r['delegation']})"
            )
            for c in r["credentials"]:
                print(f"    {c['tool']}: jti={c['jti']} aud={c['audience']} scope='{c['scope']}'")
            print(f"    hash {stored.hash[:16]}… ← prev {stored.prev_hash[:16]}…")
        decisions = list(
            broker.broker.audit_reader.query(AuditFilter(agent_instance="triage-7f9c"))
        )
        denied = sum(1 for s in decisions if s.record["outcome"] == "deny")
        print(f"agent instance triage-7f9c: {len(decisions)} decisions, {denied} denied")

    _section("6. audit verify")
    report = open_audit_reader(settings.data_dir).verify()
    print(
        f"chain {'ok' if report.ok else 'BROKEN'}: {report.records} records"
        + ("" if report.ok else f", first bad record {report.first_bad_seq}: {report.problem}")
    )
    print(f"\nTry: deputy audit query --config {config} --execution {execution}")
    return 0 if report.ok else 1
