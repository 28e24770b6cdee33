"""MCP with Deputy, end to end on loopback: a real broker, an MCP server built with the
official SDK (streamable HTTP under uvicorn) and the SDK's MCP client using Deputy auth."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import httpx2
import pytest
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, ListToolsResult, TextContent

from deputy.clock import FakeClock
from deputy.devtools.broker_thread import BrokerThread
from deputy.sdk.agent import AsyncDeputyClient, Credential, CredentialAuth
from deputy.sdk.errors import PolicyDenied, SdkError
from deputy.sdk.mcp import (
    DeputyAccessToken,
    DeputyTokenVerifier,
    McpAuth,
    ToolScopes,
    deputy_mcp_auth,
    mcp_auth_settings,
)
from deputy.sdk.resource import DeputyVerifier
from tests.integration.deployment import Deployment, running, write_deployment
from tests.sdk.agent.support import CRM, ISSUER, SUPPORT_ID
from tests.sdk.mcp_support import (
    TOOL_SCOPES,
    Calls,
    LoopbackSocket,
    crm_server,
    mcp_client,
    serve_mcp,
)

MCP_TOOL = "crm_mcp"
Broker = tuple[BrokerThread, httpx.Client]


@pytest.fixture
def listening() -> Iterator[LoopbackSocket]:
    sock = LoopbackSocket()
    yield sock
    sock.sock.close()


@pytest.fixture
def mcp_url(listening: LoopbackSocket) -> str:
    return f"{listening.base_url}/mcp"


@pytest.fixture
def deployment(tmp_path: Path, mcp_url: str) -> Deployment:
    """The example deployment with the MCP server as a tool: the support workflow may read."""

    def mutate(doc: dict[str, Any]) -> None:
        doc["tools"][MCP_TOOL] = {
            "audience": mcp_url,
            "category": "customer-data",
            "scopes": ["accounts:read", "accounts:write"],
        }
        doc["workflows"]["customer-support"]["tools"][MCP_TOOL] = ["accounts:read"]

    return write_deployment(tmp_path, mutate)


@pytest.fixture
def broker(deployment: Deployment) -> Iterator[Broker]:
    with running(deployment) as pair:
        yield pair


@pytest.fixture
def calls(broker: Broker, listening: LoopbackSocket, mcp_url: str) -> Iterator[Calls]:
    """The CRM MCP server, serving on ``mcp_url``; what its tools did."""
    server, _ = broker
    deputy = DeputyTokenVerifier(
        DeputyVerifier(ISSUER, mcp_url, base_url=server.url), tool_scopes=TOOL_SCOPES
    )
    seen = Calls()
    with serve_mcp(crm_server(deputy, ISSUER, mcp_url, seen), listening):
        yield seen


@pytest.fixture
async def agent(broker: Broker, deployment: Deployment) -> AsyncIterator[AsyncDeputyClient]:
    server, _ = broker
    async with AsyncDeputyClient(server.url, deployment.svid(), agent_id="triage-1") as client:
        yield client


def alice(d: Deployment) -> str:
    return d.idp.user_token("alice", "pro")


def text_of(result: CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, TextContent))


async def test_an_allowed_tool_call_sees_the_user_agent_and_execution(
    deployment: Deployment, agent: AsyncDeputyClient, calls: Calls, mcp_url: str
) -> None:
    auth = await deputy_mcp_auth(agent, resource=mcp_url, user_token=alice(deployment))
    assert auth.tool == MCP_TOOL and auth.credential.audience == mcp_url
    assert auth.credential.scope == "accounts:read"
    statuses: list[int] = []
    async with mcp_client(mcp_url, auth, statuses) as mcp:
        listed = await mcp.list_tools()
        result = await mcp.call_tool("read_account", {"account_id": "42"})
    # update_account needs accounts:write: not offered to this credential.
    assert [t.name for t in listed.tools] == ["read_account", "close_account"]
    assert not result.is_error, text_of(result)
    assert result.structured_content == {
        "account": "42",
        "user": "alice",
        "agent": SUPPORT_ID,
        "execution_id": auth.credential.execution_id,
        "logged_user": "alice",  # bound for DeputyLogFilter while the request runs
    }
    assert statuses and all(s < 300 for s in statuses)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_tool_needing_a_scope_the_credential_lacks_is_refused_naming_it(
    deployment: Deployment,
    agent: AsyncDeputyClient,
    calls: Calls,
    mcp_url: str,
    mode: str,
) -> None:
    auth = await deputy_mcp_auth(agent, resource=mcp_url, user_token=alice(deployment))
    statuses: list[int] = []
    async with mcp_client(mcp_url, auth, statuses, mode=mode) as mcp:
        by_middleware = await mcp.call_tool("update_account", {"account_id": "42", "plan": "pro"})
        by_the_tool = await mcp.call_tool("close_account", {"account_id": "42"})
        still_fine = await mcp.call_tool("read_account", {"account_id": "42"})
    assert by_middleware.is_error
    assert text_of(by_middleware) == (
        "refused by Deputy: update_account needs the scope accounts:write, "
        "which the credential lacks"
    )
    assert by_the_tool.is_error
    assert text_of(by_the_tool) == (  # the SDK's prefix for a ToolError
        "Error executing tool close_account: "
        "refused by Deputy: the credential lacks the scope accounts:write"
    )
    assert not still_fine.is_error
    assert calls.updated == [] and calls.closed == []
    assert all(s < 300 for s in statuses)  # refused as tool errors, not at the HTTP level


async def test_a_credential_for_another_audience_is_refused(
    deployment: Deployment, agent: AsyncDeputyClient, calls: Calls, mcp_url: str
) -> None:
    crm = await agent.exchange(subject_token=alice(deployment), resource=CRM)
    auth = McpAuth(crm.auth("customer_data_api"))
    statuses: list[int] = []
    with pytest.raises(ExceptionGroup) as caught:  # from the client's task groups
        async with mcp_client(mcp_url, auth, statuses) as mcp:
            await mcp.call_tool("read_account", {"account_id": "42"})
    assert caught.group_contains(MCPError, match="error response", depth=2)
    assert statuses and set(statuses) == {401}
    # At the HTTP level: 401 invalid_token, pointing at the RFC 9728 metadata.
    token = crm.credentials["customer_data_api"].access_token
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(
            mcp_url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert 'error="invalid_token"' in challenge
    metadata = mcp_url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
    assert f'resource_metadata="{metadata}"' in challenge


async def test_the_broker_will_not_grant_a_scope_the_workflow_does_not(
    deployment: Deployment, agent: AsyncDeputyClient, mcp_url: str
) -> None:
    with pytest.raises(PolicyDenied):
        await deputy_mcp_auth(
            agent, resource=mcp_url, user_token=alice(deployment), scope="accounts:write"
        )


async def test_the_protected_resource_metadata_names_deputy(
    calls: Calls, listening: LoopbackSocket, mcp_url: str
) -> None:
    async with httpx.AsyncClient(base_url=listening.base_url, timeout=30) as http:
        document = (await http.get("/.well-known/oauth-protected-resource/mcp")).json()
        anonymous = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert document == {
        "resource": mcp_url,
        "authorization_servers": [ISSUER],
        "scopes_supported": ["accounts:read"],
        "bearer_methods_supported": ["header"],
    }
    assert anonymous.status_code == 401
    assert (
        f'resource_metadata="{listening.base_url}/.well-known/oauth-protected-resource/mcp"'
        in anonymous.headers["www-authenticate"]
    )


async def test_the_credential_renews_under_the_mcp_client(
    broker: Broker, deployment: Deployment, calls: Calls, mcp_url: str
) -> None:
    server, _ = broker
    clock = FakeClock()
    async with AsyncDeputyClient(server.url, deployment.svid(), clock=clock) as client:
        auth = await deputy_mcp_auth(client, resource=mcp_url, user_token=alice(deployment))
        first = auth.credential
        statuses: list[int] = []
        async with mcp_client(mcp_url, auth, statuses) as mcp:
            before = await mcp.call_tool("read_account", {"account_id": "1"})
            clock.advance(290)  # of 300 s: due for renewal
            after = await mcp.call_tool("read_account", {"account_id": "1"})
    assert auth.credential is not first
    assert auth.credential.decision_id != first.decision_id
    assert before.structured_content and after.structured_content
    assert before.structured_content["execution_id"] == first.execution_id
    assert after.structured_content["execution_id"] == auth.credential.execution_id


async def test_the_token_verifier_maps_a_credential_and_refuses_others(
    broker: Broker, deployment: Deployment, agent: AsyncDeputyClient, mcp_url: str
) -> None:
    server, _ = broker
    issued = await agent.exchange(subject_token=alice(deployment), resource=mcp_url)
    token = issued.credentials[MCP_TOOL].access_token
    crm = await agent.exchange(subject_token=alice(deployment), resource=CRM)
    async with DeputyTokenVerifier(DeputyVerifier(ISSUER, mcp_url, base_url=server.url)) as deputy:
        access = await deputy.verify_token(token)
        assert isinstance(access, DeputyAccessToken)
        assert access.client_id == SUPPORT_ID and access.subject == "alice"
        assert access.scopes == ["accounts:read"] and access.resource == mcp_url
        assert access.expires_at == access.credential.expires_at
        assert access.claims is not None and access.claims["iss"] == ISSUER
        assert access.claims["act"] == {"sub": SUPPORT_ID}
        assert access.claims["execution_id"] == issued.execution_id
        assert access.credential.user == "alice"
        assert token not in repr(access) and "credential" not in access.model_dump()
        assert await deputy.verify_token(crm.credentials["customer_data_api"].access_token) is None
        assert await deputy.verify_token("not.a.token") is None


def test_tool_scopes_are_lists_of_scope_tokens() -> None:
    guard = ToolScopes({"update": ["accounts:write", "accounts:read", "accounts:write"]})
    assert guard.tool_scopes == {"update": ("accounts:write", "accounts:read")}
    assert guard.missing("update", ["accounts:read"]) == ("accounts:write",)
    assert guard.missing("unlisted", []) == ()
    with pytest.raises(TypeError, match="not a string"):
        ToolScopes({"update": "accounts:write"})
    with pytest.raises(ValueError, match="scope token"):
        ToolScopes({"update": ["accounts:write accounts:read"]})


def test_auth_settings_leave_the_audience_to_the_deputy_verifier() -> None:
    settings = mcp_auth_settings(ISSUER, "https://crm-mcp.internal/mcp")
    assert str(settings.issuer_url) == ISSUER
    assert str(settings.resource_server_url) == "https://crm-mcp.internal/mcp"
    assert settings.validate_token_resource is False and settings.required_scopes is None


def test_mcp_auth_is_for_async_clients() -> None:
    credential = Credential(
        "crm_mcp", "a.b.c", "accounts:read", "https://crm-mcp.internal/mcp", 0, 1e12, "e", "d"
    )
    auth = McpAuth(CredentialAuth(credential))
    assert "a.b.c" not in repr(auth)
    transport = httpx2.MockTransport(lambda request: httpx2.Response(200))
    with (
        httpx2.Client(auth=auth, transport=transport) as http,
        pytest.raises(SdkError, match="AsyncClient"),
    ):
        http.get("https://crm-mcp.internal/mcp")


async def test_the_middleware_reads_scopes_from_any_access_token() -> None:
    schema = {"type": "object"}
    listing = {
        "tools": [
            {"name": "read_account", "inputSchema": schema},
            {"name": "update_account", "inputSchema": schema},
        ]
    }

    async def handler(ctx: Any) -> Any:
        return ListToolsResult.model_validate(listing) if ctx.params == {"model": 1} else listing

    def request(method: str, **params: Any) -> Any:
        return SimpleNamespace(method=method, params=params, protocol_version="2025-11-25")

    guard = ToolScopes(TOOL_SCOPES)
    # No access token at all (a server without auth): only tools needing no scope.
    refused = await guard(request("tools/call", name="read_account"), handler)
    assert refused["isError"] is True and "accounts:read" in refused["content"][0]["text"]
    assert (await guard(request("tools/list"), handler))["tools"] == []
    # A token from another verifier: its scopes count; no Deputy credential is bound.
    reader = AccessToken(token="t", client_id="c", scopes=["accounts:read"])
    reset = auth_context_var.set(AuthenticatedUser(reader))
    try:
        listed = await guard(request("tools/list"), handler)
        assert [t["name"] for t in listed["tools"]] == ["read_account"]
        as_model = await guard(request("tools/list", model=1), handler)
        assert [t.name for t in as_model.tools] == ["read_account"]
        shown = await ToolScopes(TOOL_SCOPES, hide_refused=False)(request("tools/list"), handler)
        assert shown == listing
        assert await guard(request("tools/call", name="read_account"), handler) is listing
    finally:
        auth_context_var.reset(reset)
