"""The client against a scripted stand-in for the broker: retries, bounds, bad answers, wire."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from deputy.clock import FakeClock
from deputy.sdk.agent import (
    ACCESS_TOKEN,
    ID_TOKEN,
    JWT,
    JWT_BEARER,
    JWT_SPIFFE,
    AsyncDeputyClient,
    BrokerRefused,
    BrokerResponseInvalid,
    BrokerUnavailable,
    Credential,
    DeputyClient,
    EnvTokenSource,
    RateLimited,
    RetryPolicy,
    WorkloadTokenUnavailable,
)
from tests.sdk.agent.support import (
    CRM,
    MOCK_BROKER,
    TICKETS,
    EchoApi,
    Flavor,
    ScriptedBroker,
    credential_json,
    issue_json,
    ok,
    unavailable,
)

EXACT = RetryPolicy(jitter=0.0)


def issuing() -> Any:
    """An answer that issues a new credential per request, for the tools asked."""
    count = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal count
        count += 1
        body = json.loads(request.content)
        audiences = {"customer_data_api": CRM, "ticketing_api": TICKETS}
        credentials = {
            tool: credential_json(audience=audiences[tool], token=f"cred.{tool}.{count}")
            for tool in body["tools"]
        }
        return httpx.Response(
            200,
            json={
                "credentials": credentials,
                "execution_id": f"exe_{count}",
                "decision_id": f"dec_{count}",
            },
        )

    return answer


async def open_crm(flavor: Flavor, client: Any, **kw: Any) -> Any:
    return await flavor.run(client.open_execution(["customer_data_api"], agent_id="a-1", **kw))


# --- 503 and friends: bounded, jittered backoff ------------------------------------------


async def test_503_twice_then_success_after_two_waits(flavor: Flavor) -> None:
    broker = ScriptedBroker(unavailable(), unavailable(), ok())
    client = flavor.mock_client(broker, retry=EXACT)
    execution = await open_crm(flavor, client)
    assert execution.execution_id == "exe_1"
    assert flavor.sleeps == [1.0, 1.0] and len(broker.requests) == 3


async def test_always_503_gives_up_after_max_attempts(flavor: Flavor) -> None:
    broker = ScriptedBroker(unavailable())
    client = flavor.mock_client(broker, retry=EXACT)
    with pytest.raises(BrokerUnavailable) as caught:
        await open_crm(flavor, client)
    assert len(broker.requests) == 3 and flavor.sleeps == [1.0, 1.0]
    assert caught.value.retry_after == 1.0
    assert "503 temporarily_unavailable: the audit log is busy" in str(caught.value)


async def test_waits_are_jittered_upwards_within_bounds(flavor: Flavor) -> None:
    draws = iter([0.0, 0.5, 0.999])
    retry = RetryPolicy(max_attempts=4, jitter=0.2, rng=lambda: next(draws))
    client = flavor.mock_client(ScriptedBroker(unavailable()), retry=retry)
    with pytest.raises(BrokerUnavailable):
        await open_crm(flavor, client)
    assert flavor.sleeps == pytest.approx([1.0, 1.1, 1.1998])


async def test_without_retry_after_backoff_is_exponential_and_capped(flavor: Flavor) -> None:
    retry = RetryPolicy(
        max_attempts=5, jitter=0.0, backoff_base=0.5, backoff_max=1.5, max_total_wait=60
    )
    client = flavor.mock_client(ScriptedBroker(unavailable(retry_after=None)), retry=retry)
    with pytest.raises(BrokerUnavailable) as caught:
        await open_crm(flavor, client)
    assert flavor.sleeps == [0.5, 1.0, 1.5, 1.5]
    assert caught.value.retry_after is None


async def test_total_wait_is_bounded(flavor: Flavor) -> None:
    retry = RetryPolicy(max_attempts=10, max_total_wait=2.5, jitter=0.0)
    broker = ScriptedBroker(unavailable())
    client = flavor.mock_client(broker, retry=retry)
    with pytest.raises(BrokerUnavailable):
        await open_crm(flavor, client)
    assert flavor.sleeps == [1.0, 1.0] and len(broker.requests) == 3


async def test_retry_after_beyond_the_budget_is_raised_at_once(flavor: Flavor) -> None:
    broker = ScriptedBroker(unavailable(retry_after="30"))
    client = flavor.mock_client(broker)
    with pytest.raises(BrokerUnavailable) as caught:
        await open_crm(flavor, client)
    assert caught.value.retry_after == 30.0
    assert flavor.sleeps == [] and len(broker.requests) == 1


async def test_retry_after_as_an_http_date(flavor: Flavor) -> None:
    clock = FakeClock(1_800_000_000.0)
    when = format_datetime(datetime.fromtimestamp(clock.now() + 3, UTC), usegmt=True)
    broker = ScriptedBroker(unavailable(retry_after=when), ok())
    client = flavor.mock_client(broker, retry=EXACT, clock=clock)
    await open_crm(flavor, client)
    assert flavor.sleeps == [3.0]


async def test_a_proxy_502_is_retried_like_503(flavor: Flavor) -> None:
    broker = ScriptedBroker((502, b"<html>bad gateway</html>", {}), ok())
    client = flavor.mock_client(broker, retry=EXACT)
    await open_crm(flavor, client)
    assert flavor.sleeps == [0.5]


async def test_a_server_error_is_not_retried(flavor: Flavor) -> None:
    body = {"error": "server_error", "error_description": "internal error"}
    broker = ScriptedBroker((500, body, {}))
    client = flavor.mock_client(broker)
    with pytest.raises(BrokerRefused) as caught:
        await open_crm(flavor, client)
    assert caught.value.status == 500 and caught.value.error == "server_error"
    assert len(broker.requests) == 1


async def test_no_retry_policy_sends_once(flavor: Flavor) -> None:
    broker = ScriptedBroker(unavailable())
    client = flavor.mock_client(broker, retry=RetryPolicy(max_attempts=1))
    with pytest.raises(BrokerUnavailable):
        await open_crm(flavor, client)
    assert len(broker.requests) == 1 and flavor.sleeps == []


# --- 429 ---------------------------------------------------------------------------------


async def test_429_with_a_short_retry_after_is_retried(flavor: Flavor) -> None:
    limited = {"error": "rate_limited", "error_description": "slow down"}
    broker = ScriptedBroker((429, limited, {"Retry-After": "2"}), ok())
    client = flavor.mock_client(broker, retry=EXACT)
    await open_crm(flavor, client)
    assert flavor.sleeps == [2.0]


async def test_429_without_retry_after_is_raised_at_once(flavor: Flavor) -> None:
    limited = {
        "error": "rate_limited",
        "error_description": "daily issuance limit reached",
        "reasons": [{"rule": "rate_limit", "message": "alice reached 100"}],
    }
    broker = ScriptedBroker((429, limited, {}))
    client = flavor.mock_client(broker)
    with pytest.raises(RateLimited) as caught:
        await open_crm(flavor, client)
    err: Any = caught.value
    assert err.retry_after is None and [r.rule for r in err.reasons] == ["rate_limit"]
    assert flavor.sleeps == []


# --- transport failures ------------------------------------------------------------------


async def test_a_broker_that_cannot_be_reached_is_retried(flavor: Flavor) -> None:
    refused = httpx.ConnectError("connection refused")
    broker = ScriptedBroker(refused, refused, ok())
    client = flavor.mock_client(broker, retry=EXACT)
    await open_crm(flavor, client)
    assert flavor.sleeps == [0.5, 1.0]


async def test_a_broker_never_reached_is_unavailable(flavor: Flavor) -> None:
    broker = ScriptedBroker(httpx.ConnectError("connection refused"))
    client = flavor.mock_client(broker, retry=EXACT)
    with pytest.raises(BrokerUnavailable, match="could not be reached") as caught:
        await open_crm(flavor, client)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert len(broker.requests) == 3


async def test_a_read_timeout_is_not_resent(flavor: Flavor) -> None:
    # The broker may have issued (and counted) already: sending again is the caller's call.
    broker = ScriptedBroker(httpx.ReadTimeout("timed out"))
    client = flavor.mock_client(broker)
    with pytest.raises(BrokerUnavailable, match="ReadTimeout"):
        await open_crm(flavor, client)
    assert len(broker.requests) == 1 and flavor.sleeps == []


async def test_each_attempt_presents_the_current_workload_token(flavor: Flavor) -> None:
    environ = {"WL": "token-one"}

    def rotate(request: httpx.Request) -> httpx.Response:
        environ["WL"] = "token-two"
        return httpx.Response(
            503, json={"error": "temporarily_unavailable"}, headers={"Retry-After": "0"}
        )

    broker = ScriptedBroker(rotate, ok())
    client = flavor.client(
        MOCK_BROKER, EnvTokenSource("WL", environ), http=_http(flavor, broker), retry=EXACT
    )
    await open_crm(flavor, client)
    assert [r.headers["authorization"] for r in broker.requests] == [
        "Bearer token-one",
        "Bearer token-two",
    ]


async def test_no_workload_token_no_request(flavor: Flavor) -> None:
    broker = ScriptedBroker(ok())
    client = flavor.client(
        MOCK_BROKER,
        EnvTokenSource("DEPUTY_TEST_UNSET", {}),
        http=_http(flavor, broker),
    )
    with pytest.raises(WorkloadTokenUnavailable, match="DEPUTY_TEST_UNSET is not set"):
        await open_crm(flavor, client)
    assert broker.requests == []


def _http(flavor: Flavor, broker: ScriptedBroker) -> Any:
    transport = httpx.MockTransport(broker.handle)
    http = (
        httpx.AsyncClient(transport=transport)
        if flavor.is_async
        else httpx.Client(transport=transport)
    )
    flavor._own.append(http)
    return http


# --- malformed answers ---------------------------------------------------------------------


def _with(**changes: Any) -> dict[str, Any]:
    entry = credential_json(token="secret.token.value")
    entry.update(changes)
    return issue_json(entry)


MALFORMED = {
    "not json": b"<html>ok</html>",
    "a list": [],
    "no credentials": {"execution_id": "exe_1", "decision_id": "dec_1"},
    "empty credentials": {"credentials": {}, "execution_id": "exe_1", "decision_id": "dec_1"},
    "credential not an object": {
        "credentials": {"customer_data_api": "secret.token.value"},
        "execution_id": "exe_1",
        "decision_id": "dec_1",
    },
    "no execution id": {"credentials": issue_json()["credentials"], "decision_id": "dec_1"},
    "execution id a number": {**issue_json(), "execution_id": 7},
    "token a number": _with(access_token=12345),
    "token empty": _with(access_token=""),
    "token with a newline": _with(access_token="secret.token\nX-Injected: 1"),
    "not a bearer token": _with(token_type="DPoP"),
    "expires_in a string": _with(expires_in="300"),
    "expires_in negative": _with(expires_in=-1),
    "expires_in a boolean": _with(expires_in=True),
    "expires_in a float": _with(expires_in=300.5),
    "expires_at a string": _with(expires_at="soon"),
    "scope missing": {
        **issue_json(),
        "credentials": {
            "customer_data_api": {
                k: v for k, v in credential_json(token="secret.token.value").items() if k != "scope"
            }
        },
    },
    "audience empty": _with(audience=""),
    "another tool": issue_json(credential_json(audience=TICKETS, token="secret.token.value")),
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_answers_are_refused(flavor: Flavor, body: Any) -> None:
    broker = ScriptedBroker((200, body, {}))
    client = flavor.mock_client(broker)
    with pytest.raises(BrokerResponseInvalid) as caught:
        await open_crm(flavor, client)
    assert "secret.token" not in str(caught.value)
    assert len(broker.requests) == 1


async def test_an_unexpected_status_is_refused(flavor: Flavor) -> None:
    broker = ScriptedBroker((302, b"", {"Location": "https://elsewhere.example/issue"}))
    client = flavor.mock_client(broker)
    with pytest.raises(BrokerResponseInvalid, match="HTTP 302"):
        await open_crm(flavor, client)


async def test_an_error_body_that_is_not_oauth_still_raises(flavor: Flavor) -> None:
    client = flavor.mock_client(ScriptedBroker((404, b"not found", {})))
    with pytest.raises(BrokerRefused) as caught:
        await open_crm(flavor, client)
    assert caught.value.status == 404 and caught.value.error == "unknown_error"


# --- what goes on the wire -----------------------------------------------------------------


async def test_issue_request_on_the_wire(flavor: Flavor) -> None:
    broker = ScriptedBroker(ok())
    client = flavor.mock_client(broker, token="wl.jwt.sig", timeout=7.5)
    await flavor.run(
        client.open_execution(
            {"customer_data_api": ["accounts:read"]},
            agent_id="triage-9",
            user_token="user.jwt.sig",
            user_id="alice",
            ttl_seconds=120,
            workflow="customer-support",
        )
    )
    [request] = broker.requests
    assert request.method == "POST" and str(request.url) == MOCK_BROKER + "/issue"
    assert request.headers["authorization"] == "Bearer wl.jwt.sig"
    assert request.headers["user-agent"].startswith("deputy-sdk/")
    assert request.extensions["timeout"] == {"connect": 7.5, "read": 7.5, "write": 7.5, "pool": 7.5}
    assert json.loads(request.content) == {
        "agent_id": "triage-9",
        "tools": {"customer_data_api": ["accounts:read"]},
        "user_token": "user.jwt.sig",
        "user_id": "alice",
        "ttl_seconds": 120,
        "workflow": "customer-support",
    }


async def test_defaults_stay_off_the_wire_and_timeouts_are_always_set(flavor: Flavor) -> None:
    broker = ScriptedBroker(ok())
    client = flavor.mock_client(broker, agent_id="default-agent")
    await flavor.run(client.open_execution(["customer_data_api"], user_id="dave"))
    [request] = broker.requests
    assert json.loads(request.content) == {
        "agent_id": "default-agent",
        "tools": ["customer_data_api"],
        "user_id": "dave",
    }
    assert request.extensions["timeout"] == {
        "connect": 5.0,
        "read": 10.0,
        "write": 10.0,
        "pool": 10.0,
    }


def _form(request: httpx.Request) -> dict[str, list[str]]:
    return parse_qs(request.content.decode())


def _exchange_answer() -> tuple[int, Any, dict[str, str]]:
    first = {**credential_json(token="cred.crm"), "issued_token_type": ACCESS_TOKEN}
    second = {
        **credential_json(audience=TICKETS, token="cred.tickets", scope="tickets:read"),
        "issued_token_type": ACCESS_TOKEN,
    }
    body = {
        **first,
        "credentials": {"customer_data_api": first, "ticketing_api": second},
        "execution_id": "exe_9",
        "decision_id": "dec_9",
    }
    return 200, body, {}


async def test_exchange_request_on_the_wire(flavor: Flavor) -> None:
    broker = ScriptedBroker(_exchange_answer())
    client = flavor.mock_client(
        broker, token="wl.jwt.sig", workload_proof="both", client_assertion_type=JWT_SPIFFE
    )
    execution = await flavor.run(
        client.exchange(
            subject_token="user.jwt.sig",
            resource=[CRM, TICKETS],
            audience="ticketing_api",
            scope=["accounts:read", "tickets:read"],
            workflow="customer-support",
            requested_token_type=JWT,
        )
    )
    assert set(execution.credentials) == {"customer_data_api", "ticketing_api"}
    [request] = broker.requests
    assert str(request.url) == MOCK_BROKER + "/oauth2/token"
    assert "authorization" not in request.headers
    assert _form(request) == {
        "grant_type": ["urn:ietf:params:oauth:grant-type:token-exchange"],
        "subject_token": ["user.jwt.sig"],
        "subject_token_type": [ID_TOKEN],
        "actor_token": ["wl.jwt.sig"],
        "actor_token_type": [JWT],
        "client_assertion": ["wl.jwt.sig"],
        "client_assertion_type": [JWT_SPIFFE],
        "resource": [CRM, TICKETS],
        "audience": ["ticketing_api"],
        "scope": ["accounts:read tickets:read"],
        "workflow": ["customer-support"],
        "requested_token_type": [JWT],
    }


async def test_client_assertion_alone(flavor: Flavor) -> None:
    broker = ScriptedBroker(_exchange_answer())
    client = flavor.mock_client(broker, token="wl.jwt.sig", workload_proof="client_assertion")
    await flavor.run(client.exchange(subject_token="user.jwt.sig", resource=[CRM, TICKETS]))
    form = _form(broker.requests[0])
    assert form["client_assertion_type"] == [JWT_BEARER] and "actor_token" not in form


async def test_delegate_exchanges_the_handed_credential_for_its_audience(flavor: Flavor) -> None:
    broker = ScriptedBroker(_exchange_answer())
    client = flavor.mock_client(broker, token="sub.agent.svid")
    handed = Credential(
        tool="customer_data_api",
        access_token="parent.cred.sig",
        scope="accounts:read",
        audience=CRM,
        issued_at=0.0,
        expires_at=300.0,
        execution_id="exe_9",
        decision_id="dec_8",
    )
    with pytest.raises(BrokerResponseInvalid, match="not for the resources asked"):
        # The stand-in answers with a ticketing credential too: not what was asked.
        await flavor.run(client.delegate(handed))
    form = _form(broker.requests[0])
    assert form["subject_token"] == ["parent.cred.sig"]
    assert form["subject_token_type"] == [ACCESS_TOKEN]
    assert form["resource"] == [CRM] and form["actor_token"] == ["sub.agent.svid"]
    await flavor.run(client.delegate("parent.cred.sig", audience="customer_data_api"))
    form = _form(broker.requests[1])
    assert "resource" not in form and form["audience"] == ["customer_data_api"]


# --- renewal against a broker that fails -----------------------------------------------------


async def test_while_the_broker_is_down_a_valid_credential_is_kept(flavor: Flavor) -> None:
    clock = FakeClock()
    broker = ScriptedBroker(ok(), unavailable())
    client = flavor.mock_client(broker, clock=clock, retry=RetryPolicy(max_attempts=1))
    execution = await open_crm(flavor, client)
    auth, api = execution.auth("customer_data_api"), EchoApi()
    clock.advance(280)  # due
    assert (await flavor.request(api, auth)).status_code == 200
    clock.advance(2)  # within the retry interval: the broker is not asked again
    assert (await flavor.request(api, auth)).status_code == 200
    assert api.tokens == ["cred.token.1", "cred.token.1"] and len(broker.requests) == 2
    clock.advance(5)
    await flavor.request(api, auth)
    assert len(broker.requests) == 3
    clock.advance(20)  # expired: nothing left to send
    with pytest.raises(BrokerUnavailable):
        await flavor.request(api, auth)
    assert len(api.tokens) == 3


async def test_concurrent_requests_share_one_renewal(flavor: Flavor) -> None:
    clock = FakeClock()
    broker = ScriptedBroker(issuing())
    client = flavor.mock_client(broker, clock=clock)
    execution = await open_crm(flavor, client)
    auth, api = execution.auth("customer_data_api"), EchoApi()
    clock.advance(290)
    transport = httpx.MockTransport(api.handle)
    if flavor.is_async:
        async with httpx.AsyncClient(transport=transport, auth=auth) as http:
            await asyncio.gather(*(http.get(CRM) for _ in range(8)))
    else:
        with httpx.Client(transport=transport, auth=auth) as http, ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: http.get(CRM), range(8)))
    assert len(broker.requests) == 2
    assert api.tokens == ["cred.customer_data_api.2"] * 8


async def test_renewal_asks_for_the_one_tool_on_the_same_terms(flavor: Flavor) -> None:
    clock = FakeClock()
    broker = ScriptedBroker(issuing())
    client = flavor.mock_client(broker, clock=clock)
    execution = await flavor.run(
        client.open_execution(
            ["customer_data_api", "ticketing_api"],
            agent_id="a-1",
            user_token="user.jwt.sig",
            ttl_seconds=300,
        )
    )
    clock.advance(290)
    await flavor.request(EchoApi(TICKETS), execution.auth("ticketing_api"))
    first, renewal = broker.json_bodies()
    assert first["tools"] == ["customer_data_api", "ticketing_api"]
    assert renewal == {**first, "tools": ["ticketing_api"]}
    renewed = execution.auth("ticketing_api").credential
    assert (renewed.execution_id, renewed.decision_id) == ("exe_2", "dec_2")


# --- construction ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [DeputyClient, AsyncDeputyClient])
async def test_tokens_go_to_the_broker_over_https_only(kind: Any) -> None:
    with pytest.raises(ValueError, match="use https"):
        kind("http://deputy.internal", "wl.jwt.sig")
    with pytest.raises(ValueError, match="absolute"):
        kind("deputy.internal/issue", "wl.jwt.sig")
    with pytest.raises(ValueError, match="query"):
        kind("https://deputy.internal/?x=1", "wl.jwt.sig")
    with pytest.raises(ValueError, match="workload_proof"):
        kind("https://deputy.internal", "t", workload_proof="header")
    accepted = {
        "http://127.0.0.1:8080/": ({}, "http://127.0.0.1:8080"),
        "http://localhost:8080": ({}, "http://localhost:8080"),
        "http://deputy.svc:8080": ({"allow_http": True}, "http://deputy.svc:8080"),
        "https://deputy.internal/base/": ({}, "https://deputy.internal/base"),
    }
    for url, (kw, normalised) in accepted.items():
        client = kind(url, "t", **kw)
        assert client.url == normalised
        await Flavor("async" if kind is AsyncDeputyClient else "sync", _clients=[client]).aclose()


async def test_arguments_are_checked_before_anything_is_sent(flavor: Flavor) -> None:
    broker = ScriptedBroker(ok())
    client = flavor.mock_client(broker)
    bad: list[tuple[type[Exception], str, dict[str, Any]]] = [
        (TypeError, "not a string", {"tools": "customer_data_api", "agent_id": "a"}),
        (ValueError, "at least one tool", {"tools": [], "agent_id": "a"}),
        (ValueError, "twice", {"tools": ["a", "a"], "agent_id": "a"}),
        (ValueError, "non-empty", {"tools": ["a", ""], "agent_id": "a"}),
        (ValueError, "agent_id", {"tools": ["a"]}),
        (ValueError, "ttl_seconds", {"tools": ["a"], "agent_id": "a", "ttl_seconds": 0}),
        (ValueError, "ttl_seconds", {"tools": ["a"], "agent_id": "a", "ttl_seconds": 1.5}),
    ]
    for kind, message, kw in bad:
        with pytest.raises(kind, match=message):
            await flavor.run(client.open_execution(**kw))
    with pytest.raises(ValueError, match="subject_token"):
        await flavor.run(client.exchange(subject_token="", resource=CRM))
    assert broker.requests == []
