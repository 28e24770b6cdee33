"""The token endpoint over real HTTP: RFC 8693 exchange, delegation chains, client credentials."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest

from deputy.audit.log import AuditFilter
from deputy.devtools.broker_thread import BrokerThread
from deputy.sdk.dpop import DpopKey
from tests.integration.deployment import Deployment, running, write_deployment
from tests.integration.oauth_client import (
    ACCESS_TOKEN,
    CRM,
    ID_TOKEN,
    JWT,
    JWT_BEARER,
    JWT_SPIFFE,
    PRICING,
    RESEARCH,
    RESEARCH_ID,
    SUPPORT_ID,
    TICKETS,
    alice_credential,
    alice_exchange,
    exchange,
    sub_agent_exchange,
)

Broker = tuple[BrokerThread, httpx.Client]
ISSUER = "https://deputy.internal"


def claims_of(token: str) -> dict[str, Any]:
    return pyjwt.decode(token, options={"verify_signature": False})


def records(server: BrokerThread) -> list[dict[str, Any]]:
    return [s.record for s in server.broker.audit_reader.query(AuditFilter())]


def error_of(response: httpx.Response) -> tuple[int, str, list[str]]:
    body = response.json()
    return response.status_code, body["error"], [r["rule"] for r in body.get("reasons", [])]


def test_exchange_with_actor_token_is_rfc8693(deployment: Deployment, broker: Broker) -> None:
    server, client = broker
    response = alice_exchange(
        deployment,
        client,
        resource=CRM,
        scope="accounts:read",
    )
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["issued_token_type"] == ACCESS_TOKEN
    assert body["token_type"] == "Bearer" and body["scope"] == "accounts:read"
    assert body["audience"] == CRM and 295 <= body["expires_in"] <= 300
    assert list(body["credentials"]) == ["customer_data_api"]
    claims = claims_of(body["access_token"])
    assert claims["sub"] == "alice" and claims["aud"] == CRM
    assert claims["act"] == {"sub": SUPPORT_ID} and claims["client_id"] == SUPPORT_ID
    assert claims["execution_id"] == body["execution_id"]
    # No agent_id is sent at the token endpoint: the workload stands for its instance.
    assert claims["agent_instance"] == SUPPORT_ID
    [record] = records(server)
    assert record["endpoint"] == "/oauth2/token" and record["grant_type"] == "token_exchange"
    assert record["outcome"] == "allow" and record["user_id"] == "alice"
    assert body["access_token"] not in json.dumps(record)


def test_several_targets_get_one_credential_each(deployment: Deployment, broker: Broker) -> None:
    _, client = broker
    response = alice_exchange(
        deployment,
        client,
        resource=[TICKETS, CRM],
        audience="pricing_api",
        requested_token_type=JWT,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body["credentials"]) == ["ticketing_api", "customer_data_api", "pricing_api"]
    # The standard members describe the first target in request order.
    assert body["access_token"] == body["credentials"]["ticketing_api"]["access_token"]
    assert body["issued_token_type"] == JWT
    assert body["credentials"]["ticketing_api"]["scope"] == "tickets:read tickets:write"
    audiences = {c["audience"] for c in body["credentials"].values()}
    assert audiences == {TICKETS, CRM, PRICING}
    executions = {
        claims_of(c["access_token"])["execution_id"] for c in body["credentials"].values()
    }
    assert executions == {body["execution_id"]}


def test_scope_alone_picks_the_tools(deployment: Deployment, broker: Broker) -> None:
    _, client = broker
    response = alice_exchange(
        deployment,
        client,
        scope="rates:read tickets:read",
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert {t: c["scope"] for t, c in body["credentials"].items()} == {
        "pricing_api": "rates:read",
        "ticketing_api": "tickets:read",
    }


def test_client_assertion_authenticates_the_agent(deployment: Deployment, broker: Broker) -> None:
    _, client = broker
    user = deployment.idp.user_token("alice", "pro")
    for kind in (JWT_SPIFFE, JWT_BEARER):
        response = exchange(
            client, subject=user, assertion=deployment.svid(), assertion_type=kind, resource=CRM
        )
        assert response.status_code == 200, response.text
        assert claims_of(response.json()["access_token"])["act"] == {"sub": SUPPORT_ID}
    both = exchange(
        client,
        subject=user,
        actor=deployment.svid(),
        assertion=deployment.svid(),
        resource=CRM,
        client_id=SUPPORT_ID,
    )
    assert both.status_code == 200, both.text


def test_assertion_and_actor_token_must_name_the_same_workload(
    deployment: Deployment, broker: Broker
) -> None:
    _, client = broker
    response = exchange(
        client,
        subject=deployment.idp.user_token("alice", "pro"),
        actor=deployment.svid(RESEARCH),
        assertion=deployment.svid(),
        resource=CRM,
    )
    assert error_of(response) == (400, "invalid_request", [])
    assert "name different workloads" in response.json()["error_description"]


@pytest.mark.parametrize(
    ("params", "status", "error"),
    [
        ({"assertion": "not.a.jwt"}, 401, "invalid_client"),
        ({"assertion": "svid", "assertion_type": "urn:example:other"}, 400, "invalid_request"),
        ({"assertion": "k8s", "assertion_type": JWT_SPIFFE}, 401, "invalid_client"),
        ({"assertion": "svid", "client_id": "spiffe://prod.example/other"}, 401, "invalid_client"),
        ({}, 401, "invalid_client"),
    ],
    ids=["garbage", "unknown-assertion-type", "spiffe-type-not-svid", "client-id-other", "none"],
)
def test_agent_authentication_failures(
    deployment: Deployment, broker: Broker, params: dict[str, Any], status: int, error: str
) -> None:
    _, client = broker
    tokens = {"svid": deployment.svid(), "k8s": deployment.k8s_token()}
    if "assertion" in params:
        params["assertion"] = tokens.get(params["assertion"], params["assertion"])
    response = exchange(
        client, subject=deployment.idp.user_token("alice", "pro"), resource=CRM, **params
    )
    assert error_of(response)[:2] == (status, error), response.text
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer error=")
        assert response.headers["cache-control"] == "no-store"


def test_request_errors(deployment: Deployment, broker: Broker) -> None:
    server, client = broker
    user, actor = deployment.idp.user_token("alice", "pro"), deployment.svid()

    def code(response: httpx.Response) -> tuple[int, str]:
        return response.status_code, response.json()["error"]

    assert code(client.post("/oauth2/token", data={"grant_type": "password"})) == (
        400,
        "unsupported_grant_type",
    )
    assert code(client.post("/oauth2/token", data={})) == (400, "invalid_request")
    assert code(client.post("/oauth2/token", json={"grant_type": "x"})) == (400, "invalid_request")
    assert code(exchange(client, subject=None, actor=actor, resource=CRM)) == (
        400,
        "invalid_request",
    )
    assert code(exchange(client, subject="not.a.token", actor=actor, resource=CRM)) == (
        400,
        "invalid_request",
    )
    assert code(exchange(client, subject=user, actor=actor, subject_type="urn:x")) == (
        400,
        "invalid_request",
    )
    assert code(
        exchange(
            client,
            subject=user,
            actor=actor,
            resource=CRM,
            requested_token_type="urn:ietf:params:oauth:token-type:refresh_token",
        )
    ) == (400, "invalid_request")
    assert code(exchange(client, subject=user, actor=actor, resource="https://nowhere")) == (
        400,
        "invalid_target",
    )
    assert code(exchange(client, subject=user, actor=actor, resource="not a uri")) == (
        400,
        "invalid_target",
    )
    assert code(exchange(client, subject=user, actor=actor)) == (400, "invalid_target")
    assert code(exchange(client, subject=user, actor=actor, resource=CRM, scope="rates:read")) == (
        400,
        "invalid_scope",
    )
    # Every refusal is a recorded decision.
    assert all(r["outcome"] == "deny" for r in records(server))
    assert len(records(server)) == 11


@pytest.mark.parametrize(
    ("params", "error", "rules"),
    [
        ({"scope": "accounts:write"}, "invalid_scope", ["workflow.scopes"]),
        ({"tier": "free"}, "invalid_request", ["workflow.tiers"]),
        ({"agent": "/agents/unknown"}, "unauthorized_client", ["workflow.agents"]),
    ],
    ids=["scope-beyond-workflow", "tier", "agent-in-no-workflow"],
)
def test_policy_denials_use_token_endpoint_codes(
    deployment: Deployment, broker: Broker, params: dict[str, Any], error: str, rules: list[str]
) -> None:
    _, client = broker
    response = exchange(
        client,
        subject=deployment.idp.user_token("alice", params.pop("tier", "pro")),
        actor=deployment.svid(params.pop("agent", "/agents/support/triage")),
        resource=CRM,
        **params,
    )
    assert error_of(response) == (400, error, rules), response.text


def test_undeclared_tool_is_an_invalid_target(deployment: Deployment, broker: Broker) -> None:
    _, client = broker
    response = exchange(
        client,
        subject=deployment.idp.user_token("dave", "pro"),
        actor=deployment.svid("/agents/research/r1"),
        resource=PRICING,
    )
    assert error_of(response) == (400, "invalid_target", ["workflow.tools"])


def test_may_act_in_the_user_token_is_honoured(deployment: Deployment, broker: Broker) -> None:
    _, client = broker
    now = int(deployment.idp.clock.now())

    def user_token(may_act: dict[str, str]) -> str:
        return deployment.idp.sign(
            {
                "iss": deployment.idp.issuer,
                "sub": "alice",
                "aud": deployment.idp.audience,
                "iat": now,
                "exp": now + 600,
                "plan": "pro",
                "may_act": may_act,
            }
        )

    refused = exchange(
        client, subject=user_token({"sub": RESEARCH_ID}), actor=deployment.svid(), resource=CRM
    )
    assert error_of(refused) == (400, "invalid_request", ["delegation.may_act"])
    allowed = exchange(
        client, subject=user_token({"sub": SUPPORT_ID}), actor=deployment.svid(), resource=CRM
    )
    assert allowed.status_code == 200, allowed.text


# --- delegation chains -------------------------------------------------------------------


def test_sub_agent_exchange_nests_act_and_narrows(deployment: Deployment, broker: Broker) -> None:
    server, client = broker
    parent = alice_credential(deployment, client, scope="accounts:read")
    parent_claims = claims_of(parent["access_token"])
    response = sub_agent_exchange(deployment, client, parent["access_token"])
    assert response.status_code == 200, response.text
    child = claims_of(response.json()["access_token"])
    assert child["act"] == {"sub": RESEARCH_ID, "act": {"sub": SUPPORT_ID}}
    assert child["client_id"] == RESEARCH_ID and child["sub"] == "alice"
    assert child["scope"] == "accounts:read" and child["aud"] == CRM
    assert child["exp"] <= parent_claims["exp"] and child["exp"] - child["iat"] <= 120
    # The sub-agent continues the same execution; its decision is its own.
    assert child["execution_id"] == parent_claims["execution_id"]
    assert child["decision_id"] != parent_claims["decision_id"]
    assert child["workflow"] == "support-research"
    record = records(server)[-1]
    assert record["parent_jti"] == parent_claims["jti"]
    assert record["parent_actors"] == [SUPPORT_ID]
    assert record["user_issuer"] == "https://login.example.com" and record["tier"] == "pro"
    # The chained credential verifies with the published keys like any other.
    jwks = pyjwt.PyJWKSet.from_dict(client.get("/.well-known/jwks.json").json())
    kid = pyjwt.get_unverified_header(response.json()["access_token"])["kid"]
    pyjwt.decode(
        response.json()["access_token"],
        jwks[kid].key,
        algorithms=["ES256"],
        audience=CRM,
        issuer=ISSUER,
    )


def test_chain_cannot_widen(deployment: Deployment, broker: Broker) -> None:
    _, client = broker
    parent = alice_exchange(deployment, client, audience="pricing_api").json()["access_token"]
    wider = sub_agent_exchange(deployment, client, parent)
    status, error, rules = error_of(wider)
    assert (status, error) == (400, "invalid_target")
    assert "delegation.audience" in rules and "delegation.scopes" in rules


def test_chain_rules(tmp_path: Path) -> None:
    def mutate(doc: dict[str, Any]) -> None:
        doc["max_delegation_depth"] = 2
        research = doc["workflows"]["support-research"]
        research["delegate_to"] = ["spiffe://prod.example/agents/**"]
        research["tools"]["customer_data_api"] = ["accounts:read"]

    d = write_deployment(tmp_path, mutate)
    with running(d) as (_, client):
        parent = alice_credential(d, client, scope="accounts:read")["access_token"]
        # Not a sub-agent of customer-support.
        other = exchange(
            client,
            subject=parent,
            subject_type=ACCESS_TOKEN,
            actor=d.svid("/agents/support/other"),
            resource=CRM,
        )
        assert error_of(other) == (400, "invalid_request", ["delegation.sub_agents"])
        hop = exchange(
            client, subject=parent, subject_type=ACCESS_TOKEN, actor=d.svid(RESEARCH), resource=CRM
        )
        assert hop.status_code == 200, hop.text
        again = exchange(
            client,
            subject=hop.json()["access_token"],
            subject_type=ACCESS_TOKEN,
            actor=d.svid("/agents/research/r2"),
            resource=CRM,
        )
        assert error_of(again) == (400, "invalid_request", ["delegation.depth"])
        cycle = exchange(
            client,
            subject=hop.json()["access_token"],
            subject_type=ACCESS_TOKEN,
            actor=d.svid(RESEARCH),
            resource=CRM,
        )
        assert error_of(cycle) == (400, "invalid_request", ["delegation.cycle", "delegation.depth"])


def test_forged_or_expired_parent_is_refused(deployment: Deployment, broker: Broker) -> None:
    _, client = broker
    parent = alice_credential(deployment, client)["access_token"]
    head, body, sig = parent.split(".")
    forged = f"{head}.{body}.{sig[:-4]}AAAA"
    response = sub_agent_exchange(deployment, client, forged)
    assert error_of(response)[:2] == (400, "invalid_request")
    assert response.json()["error_description"].startswith("subject_token rejected")


# --- client credentials ------------------------------------------------------------------


def test_client_credentials_for_an_agent_acting_as_itself(
    deployment: Deployment, broker: Broker
) -> None:
    server, client = broker
    agent = "spiffe://prod.example/agents/price-sync"
    response = client.post(
        "/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": JWT_SPIFFE,
            "client_assertion": deployment.svid("/agents/price-sync"),
            "scope": "rates:read",
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "issued_token_type" not in body and body["token_type"] == "Bearer"
    claims = claims_of(body["access_token"])
    assert claims["sub"] == agent and claims["client_id"] == agent
    assert claims["delegation"] == "none" and "act" not in claims
    record = records(server)[-1]
    assert record["grant_type"] == "client_credentials" and record["delegation"] == "none"
    assert record["user_id"] == agent


def test_client_credentials_refused_where_agents_act_for_users(
    deployment: Deployment, broker: Broker
) -> None:
    _, client = broker
    response = client.post(
        "/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": JWT_SPIFFE,
            "client_assertion": deployment.svid(),
            "resource": CRM,
        },
    )
    assert error_of(response) == (400, "unauthorized_client", [])


def test_metadata_announces_the_endpoints(broker: Broker) -> None:
    _, client = broker
    meta = client.get("/.well-known/oauth-authorization-server").json()
    assert meta["token_endpoint"] == f"{ISSUER}/oauth2/token"
    assert meta["introspection_endpoint"] == f"{ISSUER}/oauth2/introspect"
    assert meta["revocation_endpoint"] == f"{ISSUER}/oauth2/revoke"
    assert meta["grant_types_supported"] == [
        "urn:ietf:params:oauth:grant-type:token-exchange",
        "client_credentials",
    ]
    assert meta["token_endpoint_auth_methods_supported"] == ["private_key_jwt", "none"]
    assert meta["client_assertion_types_supported"] == [JWT_BEARER, JWT_SPIFFE]
    assert meta["access_token_signing_alg_values_supported"] == ["ES256"]
    assert "accounts:read" in meta["scopes_supported"]


def test_workflow_parameter_picks_among_several(tmp_path: Path) -> None:
    def mutate(doc: dict[str, Any]) -> None:
        doc["workflows"]["research-two"] = {
            "agents": ["spiffe://prod.example/agents/research/*"],
            "tools": {"pricing_api": ["rates:read"]},
        }

    d = write_deployment(tmp_path, mutate)
    with running(d) as (_, client):
        parent = alice_credential(d, client, scope="accounts:read")["access_token"]
        ambiguous = sub_agent_exchange(d, client, parent)
        assert error_of(ambiguous) == (400, "invalid_request", [])
        assert "name one in `workflow`" in ambiguous.json()["error_description"]
        named = sub_agent_exchange(d, client, parent, workflow="support-research")
        assert named.status_code == 200, named.text
        assert claims_of(named.json()["access_token"])["workflow"] == "support-research"
        bad = sub_agent_exchange(d, client, parent, workflow="../etc")
        assert error_of(bad) == (400, "invalid_request", [])


def test_a_deputy_credential_is_not_an_id_token(deployment: Deployment, broker: Broker) -> None:
    _, client = broker
    parent = alice_credential(deployment, client)["access_token"]
    response = sub_agent_exchange(deployment, client, parent, subject_type=ID_TOKEN)
    assert error_of(response) == (400, "invalid_request", [])
    assert "not an ID token" in response.json()["error_description"]


def test_may_act_binds_the_whole_chain(deployment: Deployment, broker: Broker) -> None:
    _, client = broker
    now = int(deployment.idp.clock.now())
    user = deployment.idp.sign(
        {
            "iss": deployment.idp.issuer,
            "sub": "alice",
            "aud": deployment.idp.audience,
            "iat": now,
            "exp": now + 600,
            "plan": "pro",
            "may_act": {"sub": SUPPORT_ID},
        }
    )
    parent = exchange(client, subject=user, actor=deployment.svid(), resource=CRM)
    assert parent.status_code == 200, parent.text
    # Only the support agent may act for alice: not a sub-agent it hands the credential to.
    onward = sub_agent_exchange(deployment, client, parent.json()["access_token"])
    assert error_of(onward) == (400, "invalid_request", ["delegation.may_act"])


def test_client_assertion_must_be_for_deputy_alone(deployment: Deployment, broker: Broker) -> None:
    _, client = broker
    now = int(deployment.svids.clock.now())
    shared = deployment.svids.sign(
        {
            "sub": "spiffe://prod.example/agents/price-sync",
            "aud": ["https://crm.internal", "deputy"],
            "iat": now,
            "exp": now + 300,
        }
    )
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": JWT_SPIFFE,
        "client_assertion": shared,
        "scope": "rates:read",
    }
    response = client.post("/oauth2/token", data=form)
    assert error_of(response) == (401, "invalid_client", [])
    assert "only audience" in response.json()["error_description"]


def test_client_credentials_takes_no_subject(deployment: Deployment, broker: Broker) -> None:
    _, client = broker
    response = client.post(
        "/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": JWT_SPIFFE,
            "client_assertion": deployment.svid("/agents/price-sync"),
            "subject_token": deployment.idp.user_token("alice"),
            "subject_token_type": ID_TOKEN,
        },
    )
    assert error_of(response) == (400, "invalid_request", [])


# --- DPoP (RFC 9449) ---------------------------------------------------------------------


def test_dpop_binds_credentials_at_both_endpoints(deployment: Deployment, broker: Broker) -> None:
    server, client = broker
    key = DpopKey()
    response = alice_exchange(
        deployment,
        client,
        resource=CRM,
        headers={"DPoP": key.proof("POST", f"{ISSUER}/oauth2/token")},
    )
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "DPoP"
    assert claims_of(response.json()["access_token"])["cnf"] == {"jkt": key.jkt}
    assert records(server)[-1]["dpop_jkt"] == key.jkt
    issued = client.post(
        "/issue",
        json={
            "agent_id": "t-1",
            "user_token": deployment.idp.user_token("alice", "pro"),
            "tools": ["pricing_api"],
        },
        headers={
            "Authorization": f"Bearer {deployment.svid()}",
            "DPoP": key.proof("POST", f"{ISSUER}/issue"),
        },
    )
    assert issued.status_code == 200, issued.text
    credential = issued.json()["credentials"]["pricing_api"]
    assert credential["token_type"] == "DPoP"
    assert claims_of(credential["access_token"])["cnf"] == {"jkt": key.jkt}


def test_bad_or_replayed_dpop_proofs(deployment: Deployment, broker: Broker) -> None:
    _, client = broker
    key = DpopKey()
    proof = key.proof("POST", f"{ISSUER}/oauth2/token")
    assert alice_exchange(deployment, client, resource=CRM, headers={"DPoP": proof}).is_success
    replayed = alice_exchange(deployment, client, resource=CRM, headers={"DPoP": proof})
    assert error_of(replayed) == (400, "invalid_dpop_proof", [])
    assert "already used" in replayed.json()["error_description"]
    wrong_url = key.proof("POST", "https://elsewhere.example/oauth2/token")
    elsewhere = alice_exchange(deployment, client, resource=CRM, headers={"DPoP": wrong_url})
    assert error_of(elsewhere) == (400, "invalid_dpop_proof", [])
    two = alice_exchange(
        deployment,
        client,
        resource=CRM,
        headers=[
            ("DPoP", key.proof("POST", f"{ISSUER}/oauth2/token")),
            ("DPoP", key.proof("POST", f"{ISSUER}/oauth2/token")),
        ],
    )
    assert error_of(two) == (400, "invalid_dpop_proof", [])


def test_a_workflow_can_require_dpop(tmp_path: Path) -> None:
    def mutate(doc: dict[str, Any]) -> None:
        doc["workflows"]["customer-support"]["require_dpop"] = True

    d = write_deployment(tmp_path, mutate)
    with running(d) as (_, client):
        bearer = alice_exchange(d, client, resource=CRM)
        assert error_of(bearer) == (400, "invalid_dpop_proof", ["dpop.required"])
        key = DpopKey()
        bound = alice_exchange(
            d, client, resource=CRM, headers={"DPoP": key.proof("POST", f"{ISSUER}/oauth2/token")}
        )
        assert bound.status_code == 200 and bound.json()["token_type"] == "DPoP"
        at_issue = client.post(
            "/issue",
            json={
                "agent_id": "t-1",
                "user_token": d.idp.user_token("alice", "pro"),
                "tools": ["pricing_api"],
            },
            headers={"Authorization": f"Bearer {d.svid()}"},
        )
        assert error_of(at_issue) == (403, "access_denied", ["dpop.required"])
