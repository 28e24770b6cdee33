"""The agent SDK against a real broker on loopback: executions, renewal, denials, exchange."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest

from deputy.audit.log import AuditFilter
from deputy.clock import FakeClock
from deputy.devtools.broker_thread import BrokerThread
from deputy.sdk.agent import (
    JWT_SPIFFE,
    AsyncDeputyClient,
    BrokerRefused,
    Credential,
    DeputyClient,
    Execution,
    FileTokenSource,
    PolicyDenied,
    RateLimited,
    RetryPolicy,
    SdkError,
)
from tests.integration.deployment import Deployment, running, write_deployment
from tests.sdk.agent.support import (
    CRM,
    PRICING,
    RESEARCH,
    RESEARCH_ID,
    SUPPORT_ID,
    TICKETS,
    Flavor,
    ToolApi,
)

Broker = tuple[BrokerThread, httpx.Client]
ALL_TOOLS = ["customer_data_api", "pricing_api", "ticketing_api"]


def records(server: BrokerThread) -> list[dict[str, Any]]:
    return [s.record for s in server.broker.audit_reader.query(AuditFilter())]


def claims_of(token: str) -> dict[str, Any]:
    return pyjwt.decode(token, options={"verify_signature": False})


async def test_open_execution_gives_one_credential_per_tool(
    deployment: Deployment, broker: Broker, flavor: Flavor
) -> None:
    server, _ = broker
    clock = FakeClock()
    client = flavor.client(server.url, deployment.svid(), agent_id="triage-1", clock=clock)
    execution: Execution = await flavor.run(
        client.open_execution(
            ALL_TOOLS, user_token=deployment.idp.user_token("alice", "pro"), ttl_seconds=300
        )
    )
    assert set(execution.credentials) == set(ALL_TOOLS)
    audiences = {t: c.audience for t, c in execution.credentials.items()}
    assert audiences == {"customer_data_api": CRM, "pricing_api": PRICING, "ticketing_api": TICKETS}
    crm = execution.credentials["customer_data_api"]
    assert crm.scope == "accounts:read" and crm.scopes == ("accounts:read",)
    assert crm.issued_at == clock.now() and 299 <= crm.expires_at - clock.now() <= 300
    assert crm.execution_id == execution.execution_id and crm.decision_id == execution.decision_id
    claims = claims_of(crm.access_token)
    assert claims["sub"] == "alice" and claims["agent_instance"] == "triage-1"
    assert claims["execution_id"] == execution.execution_id
    assert claims["act"] == {"sub": SUPPORT_ID}
    # Tokens stay out of every repr.
    for text in (repr(execution), repr(crm), repr(execution.auth("customer_data_api"))):
        assert crm.access_token not in text and "access_token" not in text
    [record] = records(server)
    assert record["decision_id"] == execution.decision_id and record["outcome"] == "allow"


async def test_tools_as_a_map_narrow_the_scopes(
    deployment: Deployment, broker: Broker, flavor: Flavor
) -> None:
    server, _ = broker
    client = flavor.client(server.url, deployment.svid())
    execution = await flavor.run(
        client.open_execution(
            {"ticketing_api": ["tickets:read"]},
            user_token=deployment.idp.user_token("alice", "pro"),
            agent_id="triage-2",
        )
    )
    assert execution.credentials["ticketing_api"].scope == "tickets:read"


async def test_auth_attaches_each_tools_credential(
    deployment: Deployment, broker: Broker, jwks: dict[str, Any], flavor: Flavor
) -> None:
    server, _ = broker
    client = flavor.client(server.url, deployment.svid(), agent_id="triage-1")
    execution = await flavor.run(
        client.open_execution(ALL_TOOLS, user_token=deployment.idp.user_token("alice", "pro"))
    )
    crm, tickets = ToolApi(jwks, CRM), ToolApi(jwks, TICKETS)
    answer = await flavor.request(crm, execution.auth("customer_data_api"))
    assert answer.status_code == 200 and answer.json() == {"sub": "alice", "scope": "accounts:read"}
    answer = await flavor.request(tickets, execution.auth("ticketing_api"))
    assert answer.status_code == 200
    assert crm.tokens == [execution.credentials["customer_data_api"].access_token]
    assert tickets.tokens == [execution.credentials["ticketing_api"].access_token]
    # The CRM's credential is worthless at the ticketing API.
    answer = await flavor.request(tickets, execution.auth("customer_data_api"))
    assert answer.status_code == 401
    assert execution.auth("ticketing_api") is execution.auth("ticketing_api")
    with pytest.raises(KeyError, match="no credential for tool 'billing_api'"):
        execution.auth("billing_api")


async def test_credential_is_renewed_shortly_before_expiry(
    deployment: Deployment, broker: Broker, jwks: dict[str, Any], flavor: Flavor
) -> None:
    server, _ = broker
    clock = FakeClock()
    client = flavor.client(server.url, deployment.svid(), agent_id="triage-1", clock=clock)
    execution = await flavor.run(
        client.open_execution(
            ["customer_data_api", "ticketing_api"],
            user_token=deployment.idp.user_token("alice", "pro"),
            ttl_seconds=300,
        )
    )
    auth, first = execution.auth("customer_data_api"), execution.credentials["customer_data_api"]
    api = ToolApi(jwks, CRM)
    clock.advance(260)  # 40 s left: more than the 30 s margin
    assert (await flavor.request(api, auth)).status_code == 200
    clock.advance(15)  # 25 s left: due
    assert (await flavor.request(api, auth)).status_code == 200
    clock.advance(5)
    assert (await flavor.request(api, auth)).status_code == 200
    renewed = auth.credential
    assert api.tokens == [first.access_token, renewed.access_token, renewed.access_token]
    assert renewed.access_token != first.access_token
    assert renewed.issued_at == clock.now() - 5 and renewed.tool == "customer_data_api"
    # A renewal is a new decision for this tool alone, on the same terms.
    assert renewed.execution_id != execution.execution_id
    assert renewed.decision_id != execution.decision_id
    assert api.claims[1]["agent_instance"] == "triage-1" and api.claims[1]["sub"] == "alice"
    assert api.claims[1]["exp"] - api.claims[1]["iat"] == 300
    _, renewal = records(server)
    assert [c["tool"] for c in renewal["credentials"]] == ["customer_data_api"]
    assert renewal["decision_id"] == renewed.decision_id
    # What was issued stays as issued; the other tool was not touched.
    assert execution.credentials["customer_data_api"] is first
    assert execution.auth("ticketing_api").credential is execution.credentials["ticketing_api"]


async def test_a_401_renews_once_and_resends(
    deployment: Deployment, broker: Broker, jwks: dict[str, Any], flavor: Flavor
) -> None:
    server, _ = broker
    client = flavor.client(server.url, deployment.svid(), agent_id="triage-1")
    execution = await flavor.run(
        client.open_execution(["customer_data_api"], user_token=deployment.idp.user_token("alice"))
    )
    api = ToolApi(jwks, CRM, reject_first=1)
    auth = execution.auth("customer_data_api")
    answer = await flavor.request(api, auth, "POST", json={"note": "called twice"})
    assert answer.status_code == 200
    assert len(api.tokens) == 2 and api.tokens[0] != api.tokens[1]
    assert api.tokens[1] == auth.credential.access_token
    assert api.bodies[0] == api.bodies[1] == b'{"note":"called twice"}'
    assert len(records(server)) == 2


async def test_a_second_401_is_returned_not_retried(
    deployment: Deployment, broker: Broker, jwks: dict[str, Any], flavor: Flavor
) -> None:
    server, _ = broker
    client = flavor.client(server.url, deployment.svid(), agent_id="triage-1")
    execution = await flavor.run(
        client.open_execution(["customer_data_api"], user_token=deployment.idp.user_token("alice"))
    )
    api = ToolApi(jwks, CRM, always_reject=True)
    answer = await flavor.request(api, execution.auth("customer_data_api"))
    assert answer.status_code == 401
    assert len(api.tokens) == 2 and len(records(server)) == 2


async def test_denial_raises_policy_denied_with_the_reasons(
    deployment: Deployment, broker: Broker, flavor: Flavor
) -> None:
    server, _ = broker
    client = flavor.client(server.url, deployment.svid(RESEARCH), agent_id="r1")
    with pytest.raises(PolicyDenied) as caught:
        await flavor.run(
            client.open_execution(
                ["ticketing_api"], user_token=deployment.idp.user_token("alice", "pro")
            )
        )
    err = caught.value
    assert err.status == 403 and err.error == "access_denied"
    assert [r.rule for r in err.reasons] == ["workflow.tools"]
    assert "ticketing_api" in err.reasons[0].message
    assert flavor.sleeps == []


async def test_a_rejected_user_token_is_a_broker_refusal(
    deployment: Deployment, broker: Broker, flavor: Flavor
) -> None:
    server, _ = broker
    client = flavor.client(server.url, deployment.svid(), agent_id="triage-1")
    with pytest.raises(BrokerRefused) as caught:
        await flavor.run(client.open_execution(["pricing_api"], user_token="not-a-token"))
    assert caught.value.status == 400 and caught.value.error == "invalid_request"
    assert not isinstance(caught.value, PolicyDenied)


async def test_daily_limit_raises_rate_limited_at_once(tmp_path: Path, flavor: Flavor) -> None:
    def one_a_day(doc: dict[str, Any]) -> None:
        doc["workflows"]["customer-support"]["rate_limits"] = {"customer-data": 1}

    clock = FakeClock(time.time())  # the broker's: fixes the Retry-After it answers
    to_next_day = max(1, int((clock.now() // 86400 + 1) * 86400 - clock.now()))
    deployment = write_deployment(tmp_path, one_a_day)
    with running(deployment, clock) as (server, _):
        # Any daily limit's Retry-After (at least 1 s) is beyond this budget.
        client = flavor.client(
            server.url,
            deployment.svid(),
            agent_id="triage-1",
            retry=RetryPolicy(max_total_wait=0.5),
        )
        user = deployment.idp.user_token("alice", "pro")
        await flavor.run(client.open_execution(["customer_data_api"], user_token=user))
        with pytest.raises(RateLimited) as caught:
            await flavor.run(client.open_execution(["customer_data_api"], user_token=user))
        assert len(records(server)) == 2  # read while the broker (and its store) is open
    err: Any = caught.value
    assert err.status == 429 and err.error == "rate_limited"
    assert err.retry_after == to_next_day
    assert [r.rule for r in err.reasons] == ["rate_limit"]
    assert flavor.sleeps == []  # a wait beyond the retry budget is not waited for


async def test_exchange_and_sub_agent_delegation(
    deployment: Deployment, broker: Broker, jwks: dict[str, Any], flavor: Flavor
) -> None:
    server, _ = broker
    support = flavor.client(server.url, deployment.svid())
    parent: Execution = await flavor.run(
        support.exchange(subject_token=deployment.idp.user_token("alice", "pro"), resource=CRM)
    )
    assert list(parent.credentials) == ["customer_data_api"]
    handed: Credential = parent.credentials["customer_data_api"]
    assert handed.scope == "accounts:read" and handed.audience == CRM
    assert claims_of(handed.access_token)["act"] == {"sub": SUPPORT_ID}

    research = flavor.client(server.url, deployment.svid(RESEARCH))
    child: Execution = await flavor.run(research.delegate(handed))
    assert child.execution_id == parent.execution_id
    mine = child.credentials["customer_data_api"]
    assert mine.access_token != handed.access_token and mine.expires_at <= handed.expires_at
    claims = claims_of(mine.access_token)
    assert claims["client_id"] == RESEARCH_ID and claims["workflow"] == "support-research"
    assert claims["act"] == {"sub": RESEARCH_ID, "act": {"sub": SUPPORT_ID}}
    api = ToolApi(jwks, CRM)
    assert (await flavor.request(api, child.auth("customer_data_api"))).status_code == 200
    assert [r["parent_actors"] for r in records(server)] == [[], [SUPPORT_ID]]


async def test_exchange_by_client_assertion_naming_tools_by_audience(
    deployment: Deployment, broker: Broker, flavor: Flavor
) -> None:
    server, _ = broker
    client = flavor.client(
        server.url,
        deployment.svid(),
        workload_proof="client_assertion",
        client_assertion_type=JWT_SPIFFE,
    )
    execution = await flavor.run(
        client.exchange(
            subject_token=deployment.idp.user_token("alice", "pro"),
            audience=["pricing_api", "ticketing_api"],
            scope=["rates:read", "tickets:read"],
        )
    )
    assert {t: c.scope for t, c in execution.credentials.items()} == {
        "pricing_api": "rates:read",
        "ticketing_api": "tickets:read",
    }


async def test_exchanged_credential_renews_by_exchanging_again(
    deployment: Deployment, broker: Broker, jwks: dict[str, Any], flavor: Flavor
) -> None:
    server, _ = broker
    clock = FakeClock()
    client = flavor.client(server.url, deployment.svid(), clock=clock)
    execution = await flavor.run(
        client.exchange(
            subject_token=deployment.idp.user_token("alice", "pro"),
            resource=[CRM, TICKETS],
            scope="accounts:read tickets:write",
        )
    )
    auth = execution.auth("ticketing_api")
    clock.advance(290)
    api = ToolApi(jwks, TICKETS)
    assert (await flavor.request(api, auth)).status_code == 200
    assert auth.credential.scope == "tickets:write" and api.claims[0]["scope"] == "tickets:write"
    assert auth.credential.decision_id != execution.decision_id
    renewal = records(server)[-1]
    assert [c["tool"] for c in renewal["credentials"]] == ["ticketing_api"]


async def test_a_refused_renewal_is_raised_from_the_request(
    deployment: Deployment, broker: Broker, jwks: dict[str, Any], flavor: Flavor
) -> None:
    server, http = broker
    clock = FakeClock()
    support = flavor.client(server.url, deployment.svid())
    parent = await flavor.run(
        support.exchange(subject_token=deployment.idp.user_token("alice"), resource=CRM)
    )
    handed = parent.credentials["customer_data_api"]
    research = flavor.client(server.url, deployment.svid(RESEARCH), clock=clock)
    child = await flavor.run(research.delegate(handed))
    # The support agent revokes what it handed on: exchanging it again is refused.
    revoked = http.post(
        "/oauth2/revoke",
        data={
            "token": handed.access_token,
            "client_assertion_type": JWT_SPIFFE,
            "client_assertion": deployment.svid(),
        },
    )
    assert revoked.status_code == 200
    clock.advance(110)
    api = ToolApi(jwks, CRM)
    with pytest.raises(BrokerRefused) as caught:
        await flavor.request(api, child.auth("customer_data_api"))
    assert caught.value.error == "invalid_request" and "revoked" in caught.value.description
    assert api.tokens == []


async def test_token_file_is_reread_when_the_agent_token_rotates(
    deployment: Deployment, broker: Broker, tmp_path: Path, flavor: Flavor
) -> None:
    server, _ = broker
    token_file = tmp_path / "token"
    token_file.write_text(deployment.k8s_token(pod="escalation-a") + "\n")
    client = flavor.client(server.url, FileTokenSource(token_file), agent_id="escalation-1")
    first = await flavor.run(client.open_execution(["ticketing_api"], user_id="dave"))
    token_file.write_text(deployment.k8s_token(pod="escalation-bb"))
    second = await flavor.run(client.open_execution(["ticketing_api"], user_id="dave"))
    assert first.credentials["ticketing_api"].scope == "tickets:write"
    assert [r["workload_instance"] for r in records(server)] == ["escalation-a", "escalation-bb"]
    assert claims_of(second.credentials["ticketing_api"].access_token)["sub"] == "dave"


async def test_no_token_reaches_the_logs(
    deployment: Deployment,
    broker: Broker,
    jwks: dict[str, Any],
    flavor: Flavor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server, _ = broker
    clock = FakeClock()
    workload, user = deployment.svid(), deployment.idp.user_token("alice", "pro")
    client = flavor.client(server.url, workload, agent_id="triage-1", clock=clock)
    execution = await flavor.run(client.open_execution(["customer_data_api"], user_token=user))
    auth = execution.auth("customer_data_api")
    clock.advance(280)
    await flavor.request(ToolApi(jwks, CRM), auth)
    assert "renewed the customer_data_api credential" in caplog.text
    for secret in (
        workload,
        user,
        execution.credentials["customer_data_api"].access_token,
        auth.credential.access_token,
    ):
        assert secret not in caplog.text


async def test_sync_client_credentials_renew_in_an_async_http_client(
    deployment: Deployment, broker: Broker, jwks: dict[str, Any]
) -> None:
    server, _ = broker
    clock = FakeClock()
    with DeputyClient(server.url, deployment.svid(), agent_id="triage-1", clock=clock) as client:
        execution = client.open_execution(
            ["customer_data_api"], user_token=deployment.idp.user_token("alice")
        )
        clock.advance(290)
        api = ToolApi(jwks, CRM)
        async with httpx.AsyncClient(
            transport=httpx.MockTransport(api.handle), auth=execution.auth("customer_data_api")
        ) as http:
            assert (await http.get(CRM + "/accounts/1")).status_code == 200
        assert api.tokens == [execution.auth("customer_data_api").credential.access_token]
        assert api.tokens[0] != execution.credentials["customer_data_api"].access_token


async def test_async_client_credentials_do_not_renew_in_a_sync_http_client(
    deployment: Deployment, broker: Broker, jwks: dict[str, Any]
) -> None:
    server, _ = broker
    clock = FakeClock()
    async with AsyncDeputyClient(
        server.url, deployment.svid(), agent_id="triage-1", clock=clock
    ) as client:
        execution = await client.open_execution(
            ["customer_data_api"], user_token=deployment.idp.user_token("alice")
        )
    api = ToolApi(jwks, CRM)
    auth = execution.auth("customer_data_api")
    with httpx.Client(transport=httpx.MockTransport(api.handle), auth=auth) as http:
        assert http.get(CRM + "/accounts/1").status_code == 200  # not due: no broker call
        clock.advance(290)
        with pytest.raises(SdkError, match=r"use DeputyClient for httpx\.Client"):
            http.get(CRM + "/accounts/1")
