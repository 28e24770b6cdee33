"""One LangChain agent run = one Deputy execution, end to end.

A ``langchain-core`` agent loop, driven by a scripted chat model, calls two FastAPI tool
APIs protected by the resource SDK; the tools get the run's credentials from a real broker
on loopback. A tool outside the workflow is refused with the broker's reason.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool

from deputy.audit.log import AuditFilter
from deputy.devtools.broker_thread import BrokerThread
from deputy.sdk.agent import AsyncDeputyClient, StaticTokenSource
from deputy.sdk.errors import PolicyDenied
from deputy.sdk.langchain import DeputyRun, deputy_tool
from deputy.sdk.resource import (
    DeputyAuthMiddleware,
    DeputyLogFilter,
    DeputyVerifier,
    VerifiedCredential,
)
from deputy.sdk.resource.fastapi import require_scope
from tests.integration.deployment import Deployment, running, write_deployment

ISSUER = "https://deputy.internal"
CRM = "https://crm.internal"
PRICING = "https://pricing.internal"
SUPPORT = "spiffe://prod.example/agents/support/triage"


# --- two tool APIs, protected by the resource SDK -------------------------------------------


def tool_api(audience: str, broker_url: str, scope: str, path: str) -> FastAPI:
    verifier = DeputyVerifier(ISSUER, audience, base_url=broker_url)
    app = FastAPI()
    app.add_middleware(DeputyAuthMiddleware, verifier=verifier)
    log = logging.getLogger(f"api.{audience}")

    needs_scope = Depends(require_scope(scope))

    @app.get(path)
    async def handle(item: str, who: VerifiedCredential = needs_scope) -> dict[str, Any]:
        log.info("served %s", item)
        return {"item": item, "user": who.user, "agent": who.agent, "execution": who.execution_id}

    app.state.verifier = verifier
    return app


@deputy_tool("customer_data_api")
async def lookup_account(account_id: str, *, http: httpx.AsyncClient) -> dict[str, Any]:
    """Look up a customer's account by its id."""
    response = await http.get(f"{CRM}/accounts", params={"item": account_id})
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


@deputy_tool("pricing_api")
async def quote_price(plan: str, *, http: httpx.AsyncClient) -> dict[str, Any]:
    """Quote the price of a plan."""
    response = await http.get(f"{PRICING}/quote", params={"item": plan})
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


async def run_agent(model: FakeMessagesListChatModel, tools: Sequence[BaseTool]) -> list[Any]:
    """A minimal tool-calling loop: ask the model, run the tools it calls, until it answers."""
    by_name = {tool.name: tool for tool in tools}
    messages: list[BaseMessage] = [HumanMessage("What does account 42 pay for the pro plan?")]
    while True:
        reply = await model.ainvoke(messages)
        messages.append(reply)
        if not isinstance(reply, AIMessage) or not reply.tool_calls:
            return messages
        for call in reply.tool_calls:
            messages.append(await by_name[call["name"]].ainvoke(call))


def scripted_model() -> FakeMessagesListChatModel:
    return FakeMessagesListChatModel(
        responses=[
            AIMessage(
                content="",
                tool_calls=[
                    {"name": "lookup_account", "args": {"account_id": "42"}, "id": "c1"},
                    {"name": "quote_price", "args": {"plan": "pro"}, "id": "c2"},
                ],
            ),
            AIMessage(content="Account 42 is quoted."),
        ]
    )


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    return write_deployment(tmp_path)


@pytest.fixture
def broker(deployment: Deployment) -> Iterator[tuple[BrokerThread, httpx.Client]]:
    with running(deployment) as pair:
        yield pair


@pytest.fixture
async def apis(broker: tuple[BrokerThread, httpx.Client]) -> AsyncIterator[dict[str, FastAPI]]:
    server, _ = broker
    apps = {
        CRM: tool_api(CRM, server.url, "accounts:read", "/accounts"),
        PRICING: tool_api(PRICING, server.url, "rates:read", "/quote"),
    }
    for app in apps.values():
        await app.state.verifier.start()
    yield apps
    for app in apps.values():
        await app.state.verifier.aclose()


def http_to(apps: dict[str, FastAPI]) -> Any:
    """The run's HTTP clients reach the tool APIs in process."""

    def factory(auth: httpx.Auth) -> httpx.AsyncClient:
        mounts = {url: httpx.ASGITransport(app=app) for url, app in apps.items()}
        return httpx.AsyncClient(auth=auth, mounts=mounts)

    return factory


async def test_one_run_is_one_execution(
    deployment: Deployment,
    broker: tuple[BrokerThread, httpx.Client],
    apis: dict[str, FastAPI],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, _ = broker
    for name in ("api.https://crm.internal", "api.https://pricing.internal"):
        logging.getLogger(name).addFilter(DeputyLogFilter())
    caplog.set_level(logging.INFO)
    deputy = AsyncDeputyClient(
        server.url, StaticTokenSource(deputy_token := deputy_svid(deployment)), agent_id="run-1"
    )
    async with (
        deputy,
        DeputyRun(
            deputy,
            [lookup_account, quote_price],
            user_token=deployment.idp.user_token("alice", "pro"),
            http=http_to(apis),
        ) as run,
    ):
        messages = await run_agent(scripted_model(), run.tools)
    assert deputy_token not in caplog.text
    results = [m for m in messages if isinstance(m, ToolMessage)]
    assert [m.status for m in results] == ["success", "success"]
    for message, item in zip(results, ("42", "pro"), strict=True):
        assert json.loads(str(message.content)) == {
            "item": item,
            "user": "alice",
            "agent": SUPPORT,
            "execution": run.execution_id,
        }
    # The APIs' own log lines name the user, the agent and the execution.
    served = [r for r in caplog.records if r.getMessage().startswith("served")]
    assert [getattr(r, "deputy_execution", None) for r in served] == [run.execution_id] * 2
    assert {getattr(r, "deputy_user", None) for r in served} == {"alice"}
    # And Deputy's audit holds the one decision of this run.
    [stored] = server.broker.audit_reader.query(AuditFilter(execution_id=run.execution_id))
    assert {c["tool"] for c in stored.record["credentials"]} == {"customer_data_api", "pricing_api"}
    assert stored.record["agent_instance"] == "run-1"


async def test_a_tool_outside_the_workflow_is_refused_with_the_reason(
    deployment: Deployment, broker: tuple[BrokerThread, httpx.Client], apis: dict[str, FastAPI]
) -> None:
    server, _ = broker
    research = deployment.svid("/agents/research/r1")  # its workflow has customer_data_api only
    async with (
        AsyncDeputyClient(server.url, StaticTokenSource(research), agent_id="r-1") as deputy,
        DeputyRun(
            deputy,
            [lookup_account, quote_price],
            user_token=deployment.idp.user_token("alice", "pro"),
            http=http_to(apis),
        ) as run,
    ):
        messages = await run_agent(scripted_model(), run.tools)
    lookup, quote = (m for m in messages if isinstance(m, ToolMessage))
    assert lookup.status == "success" and json.loads(str(lookup.content))["user"] == "alice"
    assert quote.status == "error"
    assert "refused by Deputy: workflow.tools: tool 'pricing_api'" in str(quote.content)
    assert set(run.refused) == {"pricing_api"}
    decisions = [s.record["outcome"] for s in server.broker.audit_reader.query(AuditFilter())]
    assert decisions == ["deny", "allow"]  # the refusal, then the run without that tool


async def test_a_run_the_policy_refuses_as_a_whole_raises(
    deployment: Deployment, broker: tuple[BrokerThread, httpx.Client], apis: dict[str, FastAPI]
) -> None:
    server, _ = broker
    async with AsyncDeputyClient(
        server.url, StaticTokenSource(deputy_svid(deployment)), agent_id="run-2"
    ) as deputy:
        with pytest.raises(PolicyDenied) as denied:
            async with DeputyRun(
                deputy,
                [lookup_account],
                user_token=deployment.idp.user_token("bob", "free"),  # a tier it may not serve
                http=http_to(apis),
            ):
                pass
    assert [r.rule for r in denied.value.reasons] == ["workflow.tiers"]


def deputy_svid(deployment: Deployment) -> str:
    return deployment.svid("/agents/support/triage")
