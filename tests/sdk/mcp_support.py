"""An MCP server built with the official SDK, guarded by Deputy, on a loopback port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer

from deputy.devtools.served import LoopbackServer, base_url, listening_socket
from deputy.sdk.mcp import DeputyTokenVerifier, mcp_auth_settings, require_scopes
from deputy.sdk.resource import current_credential as logged_credential

TOOL_SCOPES = {"read_account": ["accounts:read"], "update_account": ["accounts:write"]}


def serve_mcp(server: MCPServer[Any], listening: LoopbackSocket) -> LoopbackServer:
    """The server's streamable HTTP app under uvicorn, in a thread, on ``listening``."""
    return LoopbackServer(
        server.streamable_http_app(),
        sock=listening.sock,
        name="mcp-server",
        timeout_graceful_shutdown=5,
    )


class LoopbackSocket:
    """A listening socket on 127.0.0.1: its URL is known before anything serves on it.

    A client that connects before the server has started waits in the backlog until the
    server (its lifespan, and the Deputy verifier in it, done) accepts: no readiness polling.
    """

    def __init__(self) -> None:
        self.sock = listening_socket()
        self.base_url = base_url(self.sock)


@dataclass
class Calls:
    """What the tools saw, recorded in the server's thread."""

    updated: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)


def crm_server(deputy: DeputyTokenVerifier, issuer: str, url: str, calls: Calls) -> MCPServer[Any]:
    """A CRM MCP server: reading needs accounts:read, changing accounts:write."""
    server = MCPServer(
        "crm",
        token_verifier=deputy,
        auth=mcp_auth_settings(issuer, url, required_scopes=["accounts:read"]),
        middleware=[deputy.middleware],
        lifespan=deputy.lifespan,
        log_level="WARNING",
    )

    @server.tool()
    async def read_account(account_id: str) -> dict[str, str | None]:
        """Read a customer account."""
        credential = require_scopes("accounts:read")
        logged = logged_credential()
        return {
            "account": account_id,
            "user": credential.user,
            "agent": credential.agent,
            "execution_id": credential.execution_id,
            "logged_user": logged.user if logged else None,
        }

    @server.tool()
    async def update_account(account_id: str, plan: str) -> str:
        """Change a customer's plan (the middleware requires accounts:write)."""
        calls.updated.append(account_id)
        return f"{account_id} is now on {plan}"

    @server.tool()
    async def close_account(account_id: str) -> str:
        """Close a customer account (the tool itself requires accounts:write)."""
        require_scopes("accounts:write")
        calls.closed.append(account_id)
        return f"{account_id} is closed"

    return server


@asynccontextmanager
async def mcp_client(
    url: str, auth: httpx2.Auth | None, statuses: list[int], *, mode: str = "auto"
) -> AsyncIterator[Client]:
    """An MCP client session over streamable HTTP; ``statuses`` records every HTTP answer."""

    async def record(response: httpx2.Response) -> None:
        statuses.append(response.status_code)

    async with (
        httpx2.AsyncClient(auth=auth, timeout=30, event_hooks={"response": [record]}) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client
