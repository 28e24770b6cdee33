"""POST /issue over real HTTP on loopback, on the suite's store (tests/conftest.py) with
run-time keys."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
import jwt as pyjwt
import pytest

from deputy.audit.log import AuditFilter
from deputy.devtools.broker_thread import BrokerThread
from deputy.devtools.demo import seed_snippet
from tests.integration.deployment import Deployment

Broker = tuple[BrokerThread, httpx.Client]
ALL_TOOLS = ["customer_data_api", "pricing_api", "ticketing_api"]


def post(client: httpx.Client, token: str | None, body: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post("/issue", json=body, headers=headers)


def alice_body(d: Deployment, **extra: Any) -> dict[str, Any]:
    return {
        "agent_id": "triage-1",
        "user_id": "alice",
        "user_token": d.idp.user_token("alice", "pro"),
        "tools": ALL_TOOLS,
        **extra,
    }


def records(broker: BrokerThread) -> list[dict[str, Any]]:
    return [s.record for s in broker.broker.audit_reader.query(AuditFilter())]


def test_execution_gets_one_audience_restricted_credential_per_tool(
    deployment: Deployment, broker: Broker
) -> None:
    server, client = broker
    response = post(client, deployment.svid(), alice_body(deployment, ttl_seconds=600))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body["credentials"]) == set(ALL_TOOLS)
    jwks = pyjwt.PyJWKSet.from_dict(client.get("/.well-known/jwks.json").json())
    audiences = {
        "customer_data_api": "https://crm.internal",
        "pricing_api": "https://pricing.internal",
        "ticketing_api": "https://tickets.internal",
    }
    jtis = set()
    for tool, cred in body["credentials"].items():
        assert cred["token_type"] == "Bearer" and cred["audience"] == audiences[tool]
        assert cred["expires_in"] in (599, 600)
        header = pyjwt.get_unverified_header(cred["access_token"])
        assert header["typ"] == "at+jwt" and header["alg"] == "ES256"
        claims = pyjwt.decode(
            cred["access_token"],
            jwks[header["kid"]].key,
            algorithms=["ES256"],
            audience=audiences[tool],
            issuer="https://deputy.internal",
        )
        assert claims["sub"] == "alice"
        assert claims["act"] == {"sub": "spiffe://prod.example/agents/support/triage"}
        assert claims["client_id"] == "spiffe://prod.example/agents/support/triage"
        assert claims["agent_instance"] == "triage-1"
        assert claims["execution_id"] == body["execution_id"]
        assert claims["decision_id"] == body["decision_id"]
        assert claims["workflow"] == "customer-support"
        assert claims["exp"] - claims["iat"] == 600
        assert claims["scope"] == cred["scope"]
        jtis.add(claims["jti"])
    assert len(jtis) == 3
    [record] = records(server)
    assert record["outcome"] == "allow" and record["status"] == 200
    assert record["delegation"] == "user_token" and record["tier"] == "pro"
    assert record["user_issuer"] == "https://login.example.com"
    assert {c["jti"] for c in record["credentials"]} == jtis
    assert record["policy_version"] == server.broker.policy.version
    assert record["client_address"] == "127.0.0.1"
    dumped = json.dumps(record)
    for cred in body["credentials"].values():
        assert cred["access_token"] not in dumped


def test_seed_snippet_works_verbatim_against_an_asserted_workflow(
    deployment: Deployment, broker: Broker
) -> None:
    server, _ = broker
    token = deployment.k8s_token(pod="escalation-5d2a-x7k")
    creds = asyncio.run(seed_snippet(server.url, "escalation-1", {"user_id": "dave"}, token))
    assert {t: c["scope"] for t, c in creds.items()} == {
        "customer_data_api": "accounts:read",
        "ticketing_api": "tickets:write",
    }
    claims = pyjwt.decode(
        creds["ticketing_api"]["access_token"], options={"verify_signature": False}
    )
    assert claims["sub"] == "dave" and claims["delegation"] == "asserted"
    assert claims["act"]["sub"] == (
        "https://k8s.example/cluster-1#system:serviceaccount:support:escalation"
    )
    [record] = records(server)
    assert record["delegation"] == "asserted" and record["user_id"] == "dave"
    assert record["agent_instance"] == "escalation-1"
    assert record["workload_instance"] == "escalation-5d2a-x7k"


def test_credential_never_outlives_the_user_token(deployment: Deployment, broker: Broker) -> None:
    _, client = broker
    body = alice_body(deployment, ttl_seconds=900, tools=["pricing_api"])
    body["user_token"] = deployment.idp.user_token("alice", "pro", lifetime=120)
    cred = post(client, deployment.svid(), body).json()["credentials"]["pricing_api"]
    assert cred["expires_in"] <= 120


@pytest.mark.parametrize(
    ("change", "status", "error", "rules"),
    [
        (
            {"tools": ["customer_data_api", "payments_api"]},
            403,
            "access_denied",
            ["workflow.tools"],
        ),
        (
            {"tools": {"customer_data_api": ["accounts:write"]}},
            403,
            "access_denied",
            ["workflow.scopes"],
        ),
        ({"ttl_seconds": 901}, 403, "access_denied", ["ttl.max"]),
        ({"ttl_seconds": 0}, 400, "invalid_request", []),
        ({"ttl_seconds": "300"}, 400, "invalid_request", []),
        ({"user_id": "bob"}, 403, "access_denied", ["delegation.user"]),
        ({"workflow": "nightly-billing"}, 403, "access_denied", ["workflow.agents"]),
        ({"workflow": "no-such"}, 400, "invalid_request", []),
        ({"user_token": None}, 400, "invalid_request", []),
        ({"user_token": "not.a.token"}, 400, "invalid_request", []),
        ({"extra": 1}, 400, "invalid_request", []),
        (
            {"user_id": "bob", "ttl_seconds": 901, "tools": ["payments_api"]},
            403,
            "access_denied",
            ["delegation.user", "workflow.tools", "ttl.max"],
        ),
    ],
    ids=[
        "tool-outside",
        "scope-beyond",
        "ttl-over-max",
        "ttl-zero",
        "ttl-string",
        "other-user",
        "workflow-not-mine",
        "unknown-workflow",
        "user-token-missing",
        "user-token-garbage",
        "unknown-field",
        "every-rule-listed",
    ],
)
def test_denials_name_every_rule_and_are_audited(
    deployment: Deployment,
    broker: Broker,
    change: dict[str, Any],
    status: int,
    error: str,
    rules: list[str],
) -> None:
    server, client = broker
    body = {k: v for k, v in {**alice_body(deployment), **change}.items() if v is not None}
    response = post(client, deployment.svid(), body)
    assert response.status_code == status, response.text
    got = response.json()
    assert got["error"] == error
    assert [r["rule"] for r in got.get("reasons", [])] == rules
    assert "access_token" not in response.text
    [record] = records(server)
    assert record["outcome"] == "deny" and record["status"] == status
    assert record["error"] == error
    assert [r["rule"] for r in record["reasons"]] == rules


def test_free_tier_user_is_denied(deployment: Deployment, broker: Broker) -> None:
    _, client = broker
    body = alice_body(
        deployment, user_id="bob", user_token=deployment.idp.user_token("bob", "free")
    )
    response = post(client, deployment.svid(), body)
    assert response.status_code == 403
    assert [r["rule"] for r in response.json()["reasons"]] == ["workflow.tiers"]


def _forged(token: str) -> str:
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "spiffe://prod.example/agents/support/admin"
    edited = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{edited}.{sig}"


@pytest.mark.parametrize(
    "token",
    [
        None,
        "garbage",
        "forged",
        "expired",
        "wrong-audience",
        "deputy-credential",
        "user-token-as-workload",
    ],
)
def test_bad_workload_tokens_get_401_and_are_audited(
    deployment: Deployment, broker: Broker, token: str | None
) -> None:
    server, client = broker
    tokens = {
        "garbage": "garbage",
        "forged": _forged(deployment.svid()),
        "expired": deployment.svid(lifetime=-10),
        "wrong-audience": deployment.svid(audience="someone-else"),
        "user-token-as-workload": deployment.idp.user_token("alice"),
    }
    if token == "deputy-credential":
        ok = post(client, deployment.svid(), alice_body(deployment, tools=["pricing_api"]))
        tokens[token] = ok.json()["credentials"]["pricing_api"]["access_token"]
    response = post(client, tokens.get(token or ""), alice_body(deployment))
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_token"
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    last = records(server)[-1]
    assert last["status"] == 401 and last["outcome"] == "deny"
    assert last["workload_id"] is None


def test_ambiguous_workload_must_name_its_workflow(tmp_path: Any) -> None:
    from tests.integration.deployment import running, write_deployment

    def add_overlap(doc: dict[str, Any]) -> None:
        doc["workflows"]["support-lite"] = {
            "agents": ["spiffe://prod.example/agents/support/**"],
            "tools": {"pricing_api": ["rates:read"]},
            "tiers": ["pro"],
        }

    d = write_deployment(tmp_path, add_overlap)
    with running(d) as (_, client):
        body = alice_body(d, tools=["pricing_api"])
        response = post(client, d.svid(), body)
        assert response.status_code == 400
        assert "customer-support, support-lite" in response.json()["error_description"]
        assert post(client, d.svid(), {**body, "workflow": "support-lite"}).status_code == 200


def test_rate_limit_is_exact_under_concurrency(deployment: Deployment, broker: Broker) -> None:
    server, _ = broker
    token = deployment.idp.user_token("carol", "enterprise")
    svid = deployment.svid()

    async def one(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post(
            "/issue",
            headers={"Authorization": f"Bearer {svid}"},
            json={"agent_id": "a", "user_token": token, "tools": ["ticketing_api"]},
        )

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as c:
            return await asyncio.gather(*(one(c) for _ in range(50)))

    responses = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 20 and statuses.count(429) == 30
    limited = next(r for r in responses if r.status_code == 429)
    assert limited.json()["reasons"][0]["rule"] == "rate_limit"
    assert 0 < int(limited.headers["retry-after"]) <= 86_400
    issued = server.broker.audit_reader.issued_counts(0)
    assert issued == {("https://login.example.com", "carol", "ticketing"): 20}


def test_asserting_agent_cannot_spend_a_verified_users_quota(
    deployment: Deployment, broker: Broker
) -> None:
    _, client = broker
    k8s = deployment.k8s_token()
    asserted = {"agent_id": "esc-1", "user_id": "carol", "tools": ["ticketing_api"]}
    assert [post(client, k8s, asserted).status_code for _ in range(20)] == [200] * 20
    carol = {
        "agent_id": "a",
        "user_token": deployment.idp.user_token("carol", "pro"),
        "tools": ["ticketing_api"],
    }
    statuses = [post(client, deployment.svid(), carol).status_code for _ in range(21)]
    assert statuses == [200] * 20 + [429]


@pytest.mark.sqlite_only(
    "locks the SQLite file; PostgreSQL's lock and outage faults are in tests/postgres"
    " (test_faults_postgres.py, test_broker_postgres.py)"
)
def test_audit_store_locked_fails_closed_then_recovers(
    deployment: Deployment, broker: Broker
) -> None:
    import sqlite3

    server, client = broker
    carol = deployment.idp.user_token("carol", "pro")
    body = {"agent_id": "a", "user_token": carol, "tools": ["ticketing_api"]}
    locker = sqlite3.connect(deployment.settings.data_dir / "audit.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        response = post(client, deployment.svid(), body)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert response.status_code == 503
    assert response.json()["error"] == "temporarily_unavailable"
    assert response.headers["retry-after"] == "1"
    assert "access_token" not in response.text
    # no restart needed, and the failed attempt took no quota: 20 still fit today
    statuses = [post(client, deployment.svid(), body).status_code for _ in range(21)]
    assert statuses == [200] * 20 + [429]
    assert server.broker.audit_reader.verify().ok


def test_oversized_and_malformed_bodies(deployment: Deployment, broker: Broker) -> None:
    _, client = broker
    headers = {"Authorization": f"Bearer {deployment.svid()}"}
    big = client.post("/issue", content=b"{" + b" " * 70_000 + b"}", headers=headers)
    assert big.status_code == 400 and "exceeds" in big.json()["error_description"]
    dup = client.post("/issue", content=b'{"agent_id":"a","agent_id":"b"}', headers=headers)
    assert dup.status_code == 400 and "duplicate" in dup.json()["error_description"]


def test_metadata_jwks_and_health(broker: Broker) -> None:
    _, client = broker
    assert client.get("/healthz").json() == {"status": "ok"}
    meta = client.get("/.well-known/oauth-authorization-server").json()
    assert meta["issuer"] == "https://deputy.internal"
    assert meta["jwks_uri"] == "https://deputy.internal/.well-known/jwks.json"
    assert meta["access_token_signing_alg_values_supported"] == ["ES256"]
    keys = client.get("/.well-known/jwks.json").json()["keys"]
    assert len(keys) == 1 and keys[0]["kty"] == "EC" and "d" not in keys[0]


def test_issuer_keys_past_staleness_fail_closed_then_recover(tmp_path: Any) -> None:
    import time

    from deputy.clock import FakeClock
    from tests.integration.deployment import running, write_deployment

    clock = FakeClock(time.time())
    d = write_deployment(tmp_path, clock=clock)
    trust = tmp_path / "trust" / "login.jwks.json"
    with running(d, clock) as (_, client):
        assert post(client, d.svid(), alice_body(d, tools=["pricing_api"])).status_code == 200
        saved = trust.read_text()
        trust.unlink()  # the IdP's keys can no longer be fetched
        clock.advance(25 * 3600)  # past the 24 h staleness bound
        response = post(client, d.svid(), alice_body(d, tools=["pricing_api"]))
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "temporarily_unavailable"
        assert response.headers["retry-after"] == "1"
        trust.write_text(saved)
        clock.advance(31)  # the next refetch is allowed
        assert post(client, d.svid(), alice_body(d, tools=["pricing_api"])).status_code == 200


def test_unexpected_fault_is_a_recorded_500_without_credentials(
    deployment: Deployment, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, client = broker

    def broken_draft(**kwargs: Any) -> None:
        raise RuntimeError("clock of the realm on fire")

    monkeypatch.setattr(server.broker.service._minter, "draft", broken_draft)
    carol = deployment.idp.user_token("carol", "pro")
    body = {"agent_id": "a", "user_token": carol, "tools": ["ticketing_api"]}
    response = post(client, deployment.svid(), body)
    assert response.status_code == 500
    assert response.json() == {
        "error": "server_error",
        "error_description": "internal error; nothing was issued",
    }
    [record] = records(server)
    assert record["status"] == 500 and record["error"] == "server_error"
    assert record["credentials"] == []
    monkeypatch.undo()
    # the failed attempt took no quota
    statuses = [post(client, deployment.svid(), body).status_code for _ in range(21)]
    assert statuses == [200] * 20 + [429]


def test_counter_store_unavailable_fails_closed(
    deployment: Deployment, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deputy.errors import StoreUnavailable

    server, client = broker

    def unavailable(*args: Any) -> None:
        raise StoreUnavailable("counters unavailable")

    monkeypatch.setattr(server.broker.service._quota, "consume", unavailable)
    body = {
        "agent_id": "a",
        "user_token": deployment.idp.user_token("carol", "pro"),
        "tools": ["ticketing_api"],
    }
    response = post(client, deployment.svid(), body)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["error"] == "temporarily_unavailable"
    [record] = records(server)
    assert record["status"] == 503 and record["credentials"] == []


def test_two_authorization_headers_are_refused(deployment: Deployment, broker: Broker) -> None:
    _, client = broker
    headers = [("Authorization", "Bearer x"), ("Authorization", f"Bearer {deployment.svid()}")]
    response = client.post("/issue", json=alice_body(deployment), headers=headers)
    assert response.status_code == 401 and response.json()["error"] == "invalid_token"


def test_unverified_user_is_recorded_as_claimed_only(
    deployment: Deployment, broker: Broker
) -> None:
    server, client = broker
    body = alice_body(deployment, user_id="bob", user_token="not.a.token")
    assert post(client, deployment.svid(), body).status_code == 400
    [record] = records(server)
    assert record["user_id"] is None and record["claimed_user_id"] == "bob"
    assert record["delegation"] is None


@pytest.mark.sqlite_only("makes the SQLite files immutable (chattr +i) under the broker")
def test_read_only_audit_store_fails_closed_then_recovers(
    deployment: Deployment, broker: Broker
) -> None:
    import subprocess

    server, client = broker
    body = {
        "agent_id": "a",
        "user_token": deployment.idp.user_token("carol", "pro"),
        "tools": ["ticketing_api"],
    }
    assert post(client, deployment.svid(), body).status_code == 200
    files = [str(p) for p in deployment.settings.data_dir.glob("audit.db*")]
    subprocess.run(["chattr", "+i", *files], check=True)  # even root cannot write now
    try:
        response = post(client, deployment.svid(), body)
    finally:
        subprocess.run(["chattr", "-i", *files], check=True)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "access_token" not in response.text
    # no restart; the refused attempt took no quota: 19 more fit today, then 429
    statuses = [post(client, deployment.svid(), body).status_code for _ in range(20)]
    assert statuses == [200] * 19 + [429]
    assert server.broker.audit_reader.verify().ok


@pytest.mark.sqlite_only(
    "SQLite signs in its writer process; with PostgreSQL every replica signs in the broker"
    " and so holds the keys (docs/configuration.md)"
)
def test_the_broker_process_holds_no_private_signing_key(broker: Broker) -> None:
    server, client = broker
    keys = server.broker.key_ring.all_keys()
    assert keys and all(k.key.private_key is None for k in keys)
    assert client.get("/.well-known/jwks.json").json() == server.broker.key_ring.jwks()


def test_agent_acting_as_itself_names_no_user(deployment: Deployment, broker: Broker) -> None:
    server, client = broker
    agent = "spiffe://prod.example/agents/price-sync"
    svid = deployment.svid("/agents/price-sync")
    response = post(client, svid, {"agent_id": "ps-1", "tools": ["pricing_api"]})
    assert response.status_code == 200, response.text
    token = response.json()["credentials"]["pricing_api"]["access_token"]
    claims = pyjwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == agent and claims["delegation"] == "none" and "act" not in claims
    assert records(server)[-1]["user_id"] == agent
    named = post(client, svid, {"agent_id": "ps-1", "tools": ["pricing_api"], "user_id": "bob"})
    assert (named.status_code, named.json()["error"]) == (400, "invalid_request")
    assert "acts for no user" in named.json()["error_description"]
