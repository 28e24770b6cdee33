"""Introspection, revocation, the kill switch and the revocation feed over real HTTP."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from typer.testing import CliRunner

from deputy.audit.log import AuditFilter
from deputy.cli.main import app
from deputy.clock import FakeClock, SystemClock
from deputy.devtools.broker_thread import BrokerThread
from deputy.devtools.signer import TokenSigner
from tests.integration.deployment import Deployment, running, write_deployment
from tests.integration.oauth_client import (
    CRM,
    JWT_SPIFFE,
    RESEARCH,
    SUPPORT_ID,
    alice_credential,
    alice_exchange,
    new_secret,
    sub_agent_exchange,
    with_clients,
)

Broker = tuple[BrokerThread, httpx.Client]
SECRETS = {"crm-api": new_secret()[0], "security-team": new_secret()[0]}
CRM_AUTH = ("crm-api", SECRETS["crm-api"])
ADMIN_AUTH = ("security-team", SECRETS["security-team"])


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    return write_deployment(tmp_path, with_clients(SECRETS))


@pytest.fixture
def broker(deployment: Deployment) -> Iterator[Broker]:
    with running(deployment) as pair:
        yield pair


def introspect(client: httpx.Client, token: str, auth: Any = CRM_AUTH) -> httpx.Response:
    return client.post("/oauth2/introspect", data={"token": token}, auth=auth)


def active(client: httpx.Client, token: str, auth: Any = ADMIN_AUTH) -> bool:
    response = introspect(client, token, auth)
    assert response.status_code == 200, response.text
    return bool(response.json()["active"])


def holder_revoke(client: httpx.Client, token: str, assertion: str) -> httpx.Response:
    return client.post(
        "/oauth2/revoke",
        data={
            "token": token,
            "token_type_hint": "access_token",
            "client_assertion_type": JWT_SPIFFE,
            "client_assertion": assertion,
        },
    )


def kill(client: httpx.Client, body: dict[str, Any], auth: Any = ADMIN_AUTH) -> httpx.Response:
    return client.post("/admin/revocations", json=body, auth=auth)


def records(server: BrokerThread) -> list[dict[str, Any]]:
    return [s.record for s in server.broker.audit_reader.query(AuditFilter())]


# --- introspection -----------------------------------------------------------------------


def test_resource_server_sees_claims_of_its_own_credentials(
    deployment: Deployment, broker: Broker
) -> None:
    _, client = broker
    parent = alice_credential(deployment, client, scope="accounts:read")
    child = sub_agent_exchange(deployment, client, parent["access_token"]).json()
    response = introspect(client, child["access_token"])
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["active"] is True and body["token_type"] == "Bearer"
    assert body["sub"] == "alice" and body["aud"] == CRM and body["scope"] == "accounts:read"
    assert body["act"] == {
        "sub": "spiffe://prod.example/agents/research/r1",
        "act": {"sub": SUPPORT_ID},
    }
    assert body["iss"] == "https://deputy.internal" and isinstance(body["exp"], int)
    # client_secret_post works as well as Basic.
    posted = client.post(
        "/oauth2/introspect",
        data={
            "token": child["access_token"],
            "client_id": "crm-api",
            "client_secret": SECRETS["crm-api"],
        },
    )
    assert posted.json()["active"] is True


def test_other_tokens_are_inactive(deployment: Deployment, broker: Broker) -> None:
    _, client = broker
    pricing = alice_exchange(deployment, client, audience="pricing_api").json()["access_token"]
    # Another API's credential, a user's token, garbage: nothing is learnt about them.
    for token in (pricing, deployment.idp.user_token("alice"), "garbage", deployment.svid()):
        assert introspect(client, token).json() == {"active": False}
    # An operator sees any credential.
    assert introspect(client, pricing, ADMIN_AUTH).json()["aud"] == "https://pricing.internal"


def test_introspection_requires_client_authentication(broker: Broker) -> None:
    _, client = broker
    unauthenticated = client.post("/oauth2/introspect", data={"token": "x"})
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["error"] == "invalid_client"
    assert "www-authenticate" in unauthenticated.headers
    assert unauthenticated.headers["www-authenticate"].startswith("Bearer ")
    wrong = introspect(client, "x", ("crm-api", "not-the-secret"))
    unknown = introspect(client, "x", ("nobody", "secret"))
    assert wrong.status_code == unknown.status_code == 401
    # RFC 6749 §5.2: the challenge names the scheme the client used.
    assert wrong.headers["www-authenticate"] == 'Basic realm="deputy", charset="UTF-8"'
    assert wrong.json() == unknown.json()  # client names cannot be probed
    missing = client.post("/oauth2/introspect", data={}, auth=CRM_AUTH)
    assert (missing.status_code, missing.json()["error"]) == (400, "invalid_request")


# --- revocation by the holder ------------------------------------------------------------


def test_holder_revokes_its_credential(deployment: Deployment, broker: Broker) -> None:
    server, client = broker
    token = alice_credential(deployment, client)["access_token"]
    jti = pyjwt.decode(token, options={"verify_signature": False})["jti"]
    first = client.get("/revocations")
    assert first.status_code == 200 and first.json()["revocations"] == []
    assert first.headers.get_list("cache-control") == ["no-cache"]
    etag = first.headers["etag"]
    assert client.get("/revocations", headers={"if-none-match": etag}).status_code == 304
    # Another agent cannot revoke it; an unknown token is no error (RFC 7009 §2.2).
    other = holder_revoke(client, token, deployment.svid(RESEARCH))
    assert (other.status_code, other.json()["error"]) == (400, "unauthorized_client")
    assert holder_revoke(client, "garbage", deployment.svid()).status_code == 200
    assert active(client, token)
    response = holder_revoke(client, token, deployment.svid())
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    assert not active(client, token)
    feed = client.get("/revocations", headers={"if-none-match": etag})
    assert feed.status_code == 200 and feed.headers["etag"] != etag
    [entry] = feed.json()["revocations"]
    assert entry["jti"] == jti and entry["expires_at"] >= int(time.time())
    revoke_record = records(server)[-1]
    assert revoke_record["outcome"] == "revoke"
    assert revoke_record["requested_by"] == f"workload:{SUPPORT_ID}"
    assert revoke_record["revocation"]["selector"] == "jti"
    assert token not in json.dumps(revoke_record)


def test_resource_server_may_not_revoke(deployment: Deployment, broker: Broker) -> None:
    _, client = broker
    token = alice_credential(deployment, client)["access_token"]
    response = client.post("/oauth2/revoke", data={"token": token}, auth=CRM_AUTH)
    assert (response.status_code, response.json()["error"]) == (400, "unauthorized_client")
    by_admin = client.post("/oauth2/revoke", data={"token": token}, auth=ADMIN_AUTH)
    assert by_admin.status_code == 200
    assert not active(client, token)


# --- the kill switch ---------------------------------------------------------------------


def test_kill_an_execution_reaches_its_sub_agents(deployment: Deployment, broker: Broker) -> None:
    server, client = broker
    parent = alice_credential(deployment, client, resource=[CRM, "https://tickets.internal"])
    child = sub_agent_exchange(deployment, client, parent["access_token"]).json()
    bystander = alice_credential(deployment, client)["access_token"]
    tokens = [c["access_token"] for c in parent["credentials"].values()] + [child["access_token"]]
    assert all(active(client, t) for t in tokens)
    response = kill(client, {"execution_id": parent["execution_id"], "reason": "incident 42"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["revoked"]["execution_id"] == parent["execution_id"]
    assert body["live_credentials"] == 3 and body["users"] == 1
    assert not any(active(client, t) for t in tokens)
    assert active(client, bystander)
    # A revoked credential cannot be exchanged further.
    again = sub_agent_exchange(deployment, client, parent["access_token"])
    assert (again.status_code, again.json()["error"]) == (400, "invalid_request")
    assert "revoked" in again.json()["error_description"]
    record = next(r for r in records(server) if r["outcome"] == "revoke")
    # A forensic query for the execution finds its revocation too.
    by_execution = server.broker.audit_reader.query(
        AuditFilter(execution_id=parent["execution_id"])
    )
    assert [s.record["outcome"] for s in by_execution] == ["allow", "allow", "revoke"]
    assert record["requested_by"] == "client:security-team"
    assert record["revocation"]["reason"] == "incident 42"
    assert record["endpoint"] == "/admin/revocations"


def test_kill_a_workload_reaches_what_it_handed_on(deployment: Deployment, broker: Broker) -> None:
    _, client = broker
    parent = alice_credential(deployment, client, scope="accounts:read")["access_token"]
    child = sub_agent_exchange(deployment, client, parent).json()["access_token"]
    assert kill(client, {"workload_id": SUPPORT_ID}).status_code == 200
    assert not active(client, parent) and not active(client, child)


@pytest.mark.parametrize(
    ("body", "auth", "status", "error"),
    [
        ({"execution_id": "x"}, CRM_AUTH, 400, "unauthorized_client"),
        ({"execution_id": "x"}, None, 401, "invalid_client"),
        ({}, ADMIN_AUTH, 400, "invalid_request"),
        ({"execution_id": "x", "user_id": "y"}, ADMIN_AUTH, 400, "invalid_request"),
        ({"tenant": "x"}, ADMIN_AUTH, 400, "invalid_request"),
        ({"user_id": 7}, ADMIN_AUTH, 400, "invalid_request"),
        ({"user_id": "a\nb"}, ADMIN_AUTH, 400, "invalid_request"),
    ],
    ids=["not-admin", "no-auth", "no-selector", "two-selectors", "unknown", "not-string", "ctl"],
)
def test_kill_switch_refusals(
    broker: Broker, body: dict[str, Any], auth: Any, status: int, error: str
) -> None:
    _, client = broker
    response = kill(client, body, auth)
    assert (response.status_code, response.json()["error"]) == (status, error)


def test_kill_covers_only_credentials_issued_until_then(tmp_path: Path) -> None:
    clock = FakeClock(time.time())
    d = write_deployment(tmp_path, with_clients(SECRETS), clock)
    with running(d, clock) as (_, client):
        before = alice_credential(d, client)["access_token"]
        assert kill(client, {"user_id": "alice"}).status_code == 200
        clock.advance(2)
        after = alice_credential(d, client)["access_token"]
        assert not active(client, before) and active(client, after)
        feed = client.get("/revocations").json()["revocations"]
        assert [e["user_id"] for e in feed] == ["alice"]
        # Entries leave the feed once nothing they cover can still be valid: here within the
        # longest lifetime policy allows (900 s), which outlasts every credential in the ledger.
        [entry] = feed
        assert entry["expires_at"] == entry["issued_before"] + 900
        clock.advance(900)
        assert client.get("/revocations").json()["revocations"] == []


def test_cli_revoke_takes_effect_on_the_running_broker(
    deployment: Deployment, broker: Broker
) -> None:
    server, client = broker
    body = alice_credential(deployment, client)
    token = body["access_token"]
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "revoke",
            "--config",
            str(deployment.config_path),
            "--instance",
            SUPPORT_ID,
            "--reason",
            "pod compromised",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "1 live credential(s) for 1 user(s)" in result.output
    assert not active(client, token)
    record = records(server)[-1]
    assert record["endpoint"] == "cli:revoke" and record["requested_by"].startswith("cli:")
    listed = runner.invoke(
        app,
        ["audit", "query", "--config", str(deployment.config_path), "--agent-instance", SUPPORT_ID],
    )
    assert listed.exit_code == 0, listed.output
    assert f"REVOKE  agent_instance={SUPPORT_ID}  by=cli:" in listed.output
    assert "reason=pod compromised" in listed.output
    usage = runner.invoke(
        app, ["revoke", "--config", str(deployment.config_path), "--user", "a", "--jti", "b"]
    )
    assert usage.exit_code == 2 and "exactly one" in usage.output


def test_revoking_a_credential_revokes_what_was_exchanged_from_it(
    deployment: Deployment, broker: Broker
) -> None:
    _, client = broker
    parent = alice_credential(deployment, client, scope="accounts:read")["access_token"]
    child = sub_agent_exchange(deployment, client, parent).json()["access_token"]
    claims = pyjwt.decode(child, options={"verify_signature": False})
    assert claims["delegated_from"] == [
        pyjwt.decode(parent, options={"verify_signature": False})["jti"]
    ]
    assert holder_revoke(client, parent, deployment.svid()).status_code == 200
    assert not active(client, parent) and not active(client, child)


def test_admin_json_only(broker: Broker) -> None:
    _, client = broker
    response = client.post(
        "/admin/revocations",
        content=b'{"user_id": "alice"}',
        headers={"content-type": "text/plain"},
        auth=ADMIN_AUTH,
    )
    assert (response.status_code, response.json()["error"]) == (400, "invalid_request")


def test_an_operator_revokes_with_a_jwt_assertion(tmp_path: Path) -> None:
    operator = TokenSigner(SystemClock())

    def mutate(doc: dict[str, Any]) -> None:
        with_clients(SECRETS)(doc)
        doc["clients"]["ops-jwt"] = {"jwks": "trust/ops.jwks.json", "admin": True}

    operator.write_jwks(tmp_path / "trust" / "ops.jwks.json")
    d = write_deployment(tmp_path, mutate)
    with running(d) as (_, client):
        token = alice_credential(d, client)["access_token"]
        now = int(time.time())
        assertion = operator.sign(
            {
                "iss": "ops-jwt",
                "sub": "ops-jwt",
                "aud": "https://deputy.internal/oauth2/revoke",
                "iat": now,
                "exp": now + 60,
                "jti": secrets.token_hex(8),
            }
        )
        response = client.post(
            "/oauth2/revoke",
            data={
                "token": token,
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion,
            },
        )
        assert response.status_code == 200, response.text
        assert not active(client, token)
