"""Usage reporting against a real broker: each use is audited and joined to its issuance."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from deputy.audit.log import AuditFilter
from deputy.cli.audit import timeline_lines
from deputy.cli.main import app as cli
from deputy.devtools.broker_thread import BrokerThread
from deputy.sdk.resource import DeputyAuthMiddleware, DeputyVerifier, UsageReporter
from tests.integration.deployment import Deployment, running, write_deployment
from tests.integration.oauth_client import (
    CRM,
    alice_credential,
    alice_exchange,
    new_secret,
    sub_agent_exchange,
    with_clients,
)

ISSUER = "https://deputy.internal"
SECRETS = {"crm-api": new_secret()[0], "security-team": new_secret()[0]}
CRM_AUTH = ("crm-api", SECRETS["crm-api"])
ADMIN_AUTH = ("security-team", SECRETS["security-team"])
Broker = tuple[BrokerThread, httpx.Client]
T = 1_800_000_000.5


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    return write_deployment(tmp_path, with_clients(SECRETS))


@pytest.fixture
def broker(deployment: Deployment) -> Iterator[Broker]:
    with running(deployment) as pair:
        yield pair


def crm_api() -> FastAPI:
    api = FastAPI()

    @api.get("/accounts/{account_id}")
    async def account(account_id: str) -> dict[str, str]:
        return {"id": account_id}

    return api


@pytest.fixture
async def reporter(broker: Broker) -> AsyncIterator[UsageReporter]:
    server, _ = broker
    usage = UsageReporter(server.url, *CRM_AUTH)
    yield usage
    await usage.aclose()


@pytest.fixture
async def api(broker: Broker, reporter: UsageReporter) -> AsyncIterator[httpx.AsyncClient]:
    server, _ = broker
    verifier = DeputyVerifier(ISSUER, CRM, base_url=server.url)
    guarded = DeputyAuthMiddleware(
        crm_api(), verifier, required_scopes=["accounts:read"], usage=reporter
    )
    transport = httpx.ASGITransport(app=guarded)
    async with httpx.AsyncClient(transport=transport, base_url="http://crm.test") as client:
        yield client
    await verifier.aclose()


def report(
    client: httpx.Client, uses: list[dict[str, Any]], auth: Any = CRM_AUTH
) -> httpx.Response:
    return client.post("/usage", json={"uses": uses}, auth=auth)


def use(jti: str, **overrides: Any) -> dict[str, Any]:
    return {"jti": jti, "operation": "GET /accounts/{id}", "outcome": 200, "time": T, **overrides}


def jti_of(credential: dict[str, Any]) -> str:
    claims = pyjwt.decode(credential["access_token"], options={"verify_signature": False})
    return str(claims["jti"])


def timeline(deployment: Deployment, execution: str, *extra: str) -> Any:
    args = ["audit", "timeline", "--config", str(deployment.config_path)]
    return CliRunner().invoke(cli, [*args, "--execution", execution, *extra])


async def test_each_call_is_reported_and_shown_under_its_credential(
    deployment: Deployment, broker: Broker, reporter: UsageReporter, api: httpx.AsyncClient
) -> None:
    server, client = broker
    credential = alice_credential(deployment, client, scope="accounts:read")
    execution, jti = credential["execution_id"], jti_of(credential)
    bearer = {"Authorization": f"Bearer {credential['access_token']}"}
    assert (await api.get("/accounts/42", headers=bearer)).status_code == 200
    assert (await api.get("/accounts/43", headers=bearer)).status_code == 200
    # A refused request is no use of a credential.
    assert (await api.get("/accounts/44")).status_code == 401
    assert reporter.pending == 2
    assert await reporter.flush() is True
    assert (reporter.pending, reporter.sent, reporter.refused, reporter.dropped) == (0, 2, 0, 0)

    [usage] = [
        s.record
        for s in server.broker.audit_reader.query(AuditFilter())
        if s.record["outcome"] == "usage"
    ]
    assert usage["endpoint"] == "/usage" and usage["requested_by"] == "client:crm-api"
    assert [(u["jti"], u["operation"], u["outcome"]) for u in usage["uses"]] == [
        (jti, "GET /accounts/{account_id}", 200)
    ] * 2
    assert usage["uses"][0]["tool"] == "customer_data_api"
    assert server.broker.audit_reader.verify().ok

    text = timeline(deployment, execution)
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert lines[0] == f"execution {execution}"
    assert "ALLOW  decision" in lines[1] and "workflow=customer-support" in lines[1]
    assert "user=alice" in lines[1]
    assert f"jti={jti}" in lines[2] and "tool=customer_data_api" in lines[2]
    assert "uses=2" in lines[2] and "scope=accounts:read" in lines[2]
    for line in lines[3:5]:
        assert line.lstrip().startswith("use ")
        assert "GET /accounts/{account_id}  -> 200  by=client:crm-api" in line
    assert len(lines) == 5

    as_json = timeline(deployment, execution, "--json")
    document = json.loads(as_json.output)
    assert document["execution_id"] == execution
    [decision] = document["records"]
    [minted] = decision["credentials"]
    assert minted["jti"] == jti and len(minted["uses"]) == 2
    assert minted["uses"][0]["reported_by"] == "client:crm-api"


def test_timeline_shows_sub_agents_and_revocations(deployment: Deployment, broker: Broker) -> None:
    _, client = broker
    parent = alice_credential(deployment, client, scope="accounts:read")
    child = sub_agent_exchange(deployment, client, parent["access_token"], scope="accounts:read")
    assert child.status_code == 200, child.text
    child_jti = jti_of(child.json())
    assert report(client, [use(child_jti, operation="POST /notes")]).json()["recorded"] == 1
    killed = client.post(
        "/admin/revocations",
        json={"execution_id": parent["execution_id"], "reason": "incident 42"},
        auth=ADMIN_AUTH,
    )
    assert killed.status_code == 200, killed.text
    lines = timeline(deployment, parent["execution_id"]).output.splitlines()
    assert "ALLOW  decision" in lines[1]
    assert "ALLOW  exchange" in lines[3] and f"from={jti_of(parent)}" in lines[3]
    assert f"jti={child_jti}" in lines[4] and "uses=1" in lines[4]
    assert "POST /notes  -> 200  by=client:crm-api" in lines[5]
    assert "REVOKE" in lines[6] and "reason=incident 42" in lines[6]
    assert len(lines) == 7
    missing = timeline(deployment, "exe_unknown")
    assert missing.exit_code == 1


def test_only_uses_of_the_clients_own_credentials_are_recorded(
    deployment: Deployment, broker: Broker
) -> None:
    server, client = broker
    crm = jti_of(alice_credential(deployment, client, scope="accounts:read"))
    pricing = alice_exchange(deployment, client, audience="pricing_api")
    assert pricing.status_code == 200, pricing.text
    other = jti_of(pricing.json())
    response = report(client, [use(crm), use(other), use("jti-never-issued")])
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["recorded"], body["refused"]) == (1, 2)
    assert body["decision_id"].startswith("use_")
    assert response.headers["cache-control"] == "no-store"
    # Nothing to record: no record at all.
    assert report(client, [use(other)]).json() == {
        "recorded": 0,
        "refused": 1,
        "decision_id": None,
    }
    # An admin client may report any credential.
    assert report(client, [use(other)], ADMIN_AUTH).json()["recorded"] == 1
    reported = [
        [u["jti"] for u in s.record["uses"]]
        for s in server.broker.audit_reader.query(AuditFilter())
        if s.record["outcome"] == "usage"
    ]
    assert reported == [[crm], [other]]
    metadata = client.get("/.well-known/oauth-authorization-server").json()
    assert metadata["usage_endpoint"] == ISSUER + "/usage"


def test_reports_need_a_configured_client(deployment: Deployment, broker: Broker) -> None:
    _, client = broker
    uses = [use("x")]
    assert client.post("/usage", json={"uses": uses}).status_code == 401
    assert report(client, uses, ("crm-api", "wrong")).status_code == 401
    assert report(client, uses, ("nobody", "x")).status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"uses": []},
        {"uses": [use("x")] * 501},
        {"uses": [use("x")], "extra": 1},
        {"uses": ["x"]},
        {"uses": [{**use("x"), "user": "alice"}]},
        {"uses": [{k: v for k, v in use("x").items() if k != "time"}]},
        {"uses": [use("")]},
        {"uses": [use("x", operation="GET /\n")]},
        {"uses": [use("x", operation="G" * 257)]},
        {"uses": [use("x", outcome=99)]},
        {"uses": [use("x", outcome=600)]},
        {"uses": [use("x", outcome=True)]},
        {"uses": [use("x", outcome="200")]},
        {"uses": [use("x", time="now")]},
        {"uses": [use("x", time=-1)]},
    ],
)
def test_malformed_reports_are_refused(
    deployment: Deployment, broker: Broker, body: object
) -> None:
    _, client = broker
    response = client.post("/usage", json=body, auth=CRM_AUTH)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"


def test_a_report_must_be_json(deployment: Deployment, broker: Broker) -> None:
    _, client = broker
    form = client.post("/usage", data={"uses": "x"}, auth=CRM_AUTH)
    assert form.status_code == 400
    broken = client.post(
        "/usage", content=b"{", headers={"content-type": "application/json"}, auth=CRM_AUTH
    )
    assert broken.status_code == 400


def test_every_timeline_field_is_escaped() -> None:
    hostile = "x\n#9 forged\u2028\x1b[2J"
    record = {
        "seq": 1,
        "time": T,
        "outcome": hostile,
        "status": 200,
        "workflow": hostile,
        "workload_id": hostile,
        "user_id": hostile,
        "parent_jti": hostile,
        "reasons": [{"rule": hostile, "message": hostile}],
        "credentials": [
            {
                "jti": hostile,
                "tool": hostile,
                "scope": hostile,
                "expires_at": hostile,
                "uses": [
                    {
                        "time": hostile,
                        "operation": hostile,
                        "outcome": hostile,
                        "reported_by": hostile,
                    }
                ],
            }
        ],
    }
    lines = list(timeline_lines([record]))
    assert len(lines) == 4
    for line in lines:
        assert line.isprintable() and "\\n#9 forged\\u2028\\x1b[2J" in line


async def test_drift_names_what_was_issued_but_never_used(
    deployment: Deployment, broker: Broker, reporter: UsageReporter, api: httpx.AsyncClient
) -> None:
    _, client = broker
    both = alice_credential(deployment, client, resource=[CRM, "https://tickets.internal"])
    crm = both["credentials"]["customer_data_api"]["access_token"]
    assert (await api.get("/accounts/42", headers={"Authorization": f"Bearer {crm}"})).is_success
    assert await reporter.flush() is True
    result = CliRunner().invoke(
        cli, ["drift", "--config", str(deployment.config_path), "--since", "1h"]
    )
    assert result.exit_code == 0, result.output
    assert (
        "workflow customer-support: 2 credentials; tool pricing_api never issued; "
        "tool ticketing_api issued but never used"
    ) in result.output.splitlines()
