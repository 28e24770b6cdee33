"""MCP servers that accept Deputy credentials, and MCP clients that present them.

Needs ``deputy[mcp]`` (the official ``mcp`` SDK, 2.x: ``MCPServer``, server middleware).

Server side: the MCP server is a resource server whose audience is its own URL (a Deputy
tool with ``audience: https://crm-mcp.internal/mcp``). :class:`DeputyTokenVerifier` is the
SDK's ``TokenVerifier``; :func:`mcp_auth_settings` makes the server publish its RFC 9728
protected-resource metadata naming Deputy; the verifier's :attr:`~DeputyTokenVerifier.
middleware` enforces the scopes each MCP tool needs::

    deputy = DeputyTokenVerifier(
        DeputyVerifier("https://deputy.internal", "https://crm-mcp.internal/mcp"),
        tool_scopes={"read_account": ["accounts:read"], "update_account": ["accounts:write"]},
    )
    server = MCPServer(
        "crm",
        token_verifier=deputy,
        auth=mcp_auth_settings("https://deputy.internal", "https://crm-mcp.internal/mcp"),
        middleware=[deputy.middleware],
        lifespan=deputy.lifespan,
    )

    @server.tool()
    async def read_account(account_id: str) -> dict[str, str]:
        credential = require_scopes()  # the caller's VerifiedCredential (no extra scope)
        return {"account": account_id, "user": credential.user}

Any request without a valid credential for this audience is answered ``401`` by the SDK's
bearer middleware, including while the broker cannot be reached (the SDK's verifier
interface can only accept or refuse, so the verifier's fail-closed ``503`` becomes a
``401``). DPoP-bound credentials are refused too: the SDK's middleware reads only
``Authorization: Bearer`` and hands the verifier the token alone, with nothing to check a
proof against; ask Deputy for bearer credentials for MCP servers. A tool whose scopes the
credential lacks is not listed, and calling it answers a tool error (``isError``) naming
the missing scope, which the model reads; the tool itself does not run.

Client side: :func:`deputy_mcp_auth` asks Deputy for a credential for the MCP server's URL
(RFC 8693 exchange with ``resource``) and returns an ``httpx2.Auth`` (the HTTP client the
``mcp`` SDK uses) that sends it, renews it before it expires and retries once after a
``401``, like :meth:`Execution.auth <deputy.sdk.agent.Execution.auth>`::

    auth = await deputy_mcp_auth(
        agent, resource="https://crm-mcp.internal/mcp", user_token=alice_id_token
    )
    async with (
        httpx2.AsyncClient(auth=auth) as http,
        Client(streamable_http_client("https://crm-mcp.internal/mcp", http_client=http)) as mcp,
    ):
        await mcp.call_tool("read_account", {"account_id": "42"})
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterable, Mapping
from contextlib import asynccontextmanager
from contextvars import Token
from types import MappingProxyType, TracebackType
from typing import Any

import httpx
import httpx2
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, ListToolsResult, TextContent
from mcp_types.methods import serialize_server_result
from pydantic import Field, InstanceOf

from deputy.sdk.agent import ID_TOKEN, AsyncDeputyClient, Credential, CredentialAuth
from deputy.sdk.agent.errors import BrokerResponseInvalid
from deputy.sdk.errors import CredentialRejected, SdkError
from deputy.sdk.resource.credential import VerifiedCredential
from deputy.sdk.resource.logging import bind_credential
from deputy.sdk.resource.verifier import DeputyVerifier

__all__ = [
    "DeputyAccessToken",
    "DeputyTokenVerifier",
    "McpAuth",
    "ToolScopes",
    "current_credential",
    "deputy_mcp_auth",
    "mcp_auth_settings",
    "require_scopes",
]

logger = logging.getLogger("deputy.sdk.mcp")


# Server side.


class DeputyAccessToken(AccessToken):
    """The ``mcp`` SDK's view of a Deputy credential, with the credential itself.

    ``client_id`` is the agent workload that presents it, ``subject`` the user it acts
    for, ``resource`` its audience; ``claims`` holds every signed claim (``iss``, ``act``,
    ``execution_id``...). The token and the credential are left out of ``repr``.
    """

    token: str = Field(repr=False)
    credential: InstanceOf[VerifiedCredential] = Field(repr=False, exclude=True)


class DeputyTokenVerifier:
    """The ``mcp`` SDK's ``TokenVerifier``, accepting Deputy credentials for one MCP server.

    ``verifier`` is configured for the MCP server's audience (its URL as the Deputy tool
    names it): the issuer, signature, time, audience and revocation checks are its own.
    Any refusal is ``None``, which the SDK answers with ``401``. ``tool_scopes`` maps MCP
    tool names to the scopes each needs; :attr:`middleware` enforces it.

    The verifier belongs to the event loop that serves the MCP server: start it there,
    e.g. with ``MCPServer(..., lifespan=deputy.lifespan)`` or ``async with deputy``.
    """

    def __init__(
        self,
        verifier: DeputyVerifier,
        *,
        tool_scopes: Mapping[str, Iterable[str]] = MappingProxyType({}),
        hide_refused_tools: bool = True,
    ) -> None:
        self._verifier = verifier
        self._middleware = ToolScopes(tool_scopes, hide_refused=hide_refused_tools)

    @property
    def verifier(self) -> DeputyVerifier:
        return self._verifier

    @property
    def tool_scopes(self) -> Mapping[str, tuple[str, ...]]:
        return self._middleware.tool_scopes

    @property
    def middleware(self) -> ToolScopes:
        """The server middleware enforcing :attr:`tool_scopes` (``MCPServer(middleware=[...])``)."""
        return self._middleware

    async def verify_token(self, token: str) -> AccessToken | None:
        """The credential as the SDK's ``AccessToken``, or ``None`` when it is refused."""
        try:
            credential = await self._verifier.verify(token)
        except CredentialRejected as exc:
            log = logger.warning if exc.status >= 500 else logger.info
            log("MCP request refused: %s: %s", exc.error, exc.description)
            return None
        return DeputyAccessToken(
            token=token,
            client_id=credential.agent,
            scopes=sorted(credential.scopes),
            expires_at=credential.expires_at,
            resource=credential.audience,
            subject=credential.user,
            claims=dict(credential.claims),
            credential=credential,
        )

    async def start(self) -> None:
        await self._verifier.start()

    async def aclose(self) -> None:
        await self._verifier.aclose()

    @asynccontextmanager
    async def lifespan(self, server: object) -> AsyncIterator[dict[str, Any]]:
        """An ``MCPServer`` lifespan: the verifier runs while the server does."""
        async with self:
            yield {}

    async def __aenter__(self) -> DeputyTokenVerifier:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"DeputyTokenVerifier({self._verifier!r}, tool_scopes={dict(self.tool_scopes)!r})"


class ToolScopes:
    """Server middleware (``MCPServer(middleware=[...])``): the scopes each MCP tool needs.

    A ``tools/call`` of a tool whose scopes the request's credential does not all carry is
    answered with a tool error naming the missing scopes, without running the tool; with
    ``hide_refused``, ``tools/list`` leaves such tools out. Tools not in ``tool_scopes``
    need no more than the server-wide ``required_scopes``. The request's Deputy credential
    is bound for :class:`~deputy.sdk.resource.DeputyLogFilter` while the request runs.

    The scopes are read from the SDK's access token, so this works behind any
    ``TokenVerifier``; a request without one (no auth configured) gets only the tools that
    need no scope.
    """

    def __init__(
        self, tool_scopes: Mapping[str, Iterable[str]], *, hide_refused: bool = True
    ) -> None:
        scopes: dict[str, tuple[str, ...]] = {}
        for tool, needed in tool_scopes.items():
            if isinstance(needed, str):
                raise TypeError(f"the scopes of tool {tool!r} are a list of scopes, not a string")
            scopes[tool] = tuple(dict.fromkeys(needed))
            if not all(isinstance(s, str) and s and " " not in s for s in scopes[tool]):
                raise ValueError(f"every scope of tool {tool!r} must be a non-empty scope token")
        self._tool_scopes: Mapping[str, tuple[str, ...]] = MappingProxyType(scopes)
        self._hide = hide_refused

    @property
    def tool_scopes(self) -> Mapping[str, tuple[str, ...]]:
        return self._tool_scopes

    def missing(self, tool: str, granted: Iterable[str]) -> tuple[str, ...]:
        """The scopes ``tool`` needs that are not ``granted``, in their declared order."""
        have = frozenset(granted)
        return tuple(s for s in self._tool_scopes.get(tool, ()) if s not in have)

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        token = get_access_token()
        granted = frozenset(token.scopes) if token is not None else frozenset[str]()
        if ctx.method == "tools/call":
            name = (ctx.params or {}).get("name")
            missing = self.missing(name, granted) if isinstance(name, str) else ()
            if missing:
                logger.info("MCP tool %r refused: missing scope %s", name, " ".join(missing))
                return _tool_error(ctx.protocol_version, _refusal(str(name), missing))
        bound: Token[VerifiedCredential | None] | None = None
        if isinstance(token, DeputyAccessToken):
            bound = bind_credential(token.credential)
        try:
            result = await call_next(ctx)
        finally:
            if bound is not None:
                bound.var.reset(bound)
        if ctx.method == "tools/list" and self._hide:
            return self._listed(result, granted)
        return result

    def _listed(self, result: HandlerResult, granted: frozenset[str]) -> HandlerResult:
        """A ``tools/list`` result without the tools ``granted`` does not cover."""
        if isinstance(result, ListToolsResult):
            kept = [t for t in result.tools if not self.missing(t.name, granted)]
            return result.model_copy(update={"tools": kept})
        if isinstance(result, dict) and isinstance(result.get("tools"), list):
            tools = [
                t
                for t in result["tools"]
                if not (isinstance(t, dict) and self.missing(str(t.get("name")), granted))
            ]
            return {**result, "tools": tools}
        return result

    def __repr__(self) -> str:
        return f"ToolScopes({dict(self._tool_scopes)!r})"


def _refusal(tool: str, missing: Iterable[str]) -> str:
    return (
        f"refused by Deputy: {tool} needs the scope {' '.join(missing)}, which the credential lacks"
    )


def _tool_error(version: str, message: str) -> dict[str, Any]:
    """A ``tools/call`` error result, in the wire shape of the connection's protocol version."""
    result = CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)
    data = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    try:
        return serialize_server_result("tools/call", version, data)
    except (KeyError, ValueError):  # a version this mcp_types does not know: send it as is
        return data


def current_credential() -> VerifiedCredential | None:
    """The Deputy credential of the MCP request being served, if it carries one."""
    token = get_access_token()
    return token.credential if isinstance(token, DeputyAccessToken) else None


def require_scopes(*scopes: str) -> VerifiedCredential:
    """Inside an MCP tool: the request's Deputy credential, which must carry ``scopes``.

    Raises the SDK's ``ToolError`` (a tool error the model reads) naming the missing
    scopes, or when the request carries no Deputy credential.
    """
    credential = current_credential()
    if credential is None:
        raise ToolError("refused by Deputy: the request carries no Deputy credential")
    missing = credential.missing_scopes(scopes)
    if missing:
        raise ToolError(f"refused by Deputy: the credential lacks the scope {' '.join(missing)}")
    return credential


def mcp_auth_settings(
    issuer: str,
    resource_server_url: str,
    *,
    required_scopes: Iterable[str] = (),
    validate_token_resource: bool = False,
    service_documentation_url: str | None = None,
) -> AuthSettings:
    """``MCPServer(auth=...)`` for an MCP server whose credentials Deputy mints.

    The server then serves RFC 9728 protected-resource metadata for ``resource_server_url``
    (at ``/.well-known/oauth-protected-resource`` + its path) naming ``issuer`` as its
    authorization server and ``required_scopes`` as its scopes, points every ``401`` at
    it, and answers ``403`` to a credential without every one of ``required_scopes``.

    The audience is checked by the :class:`DeputyVerifier` (exactly, as RFC 9068 asks), so
    the SDK's own resource check is off by default; turn it on (``validate_token_resource``)
    only when the Deputy tool's audience is ``resource_server_url`` itself.
    """
    scopes = list(dict.fromkeys(required_scopes))
    # Validated from strings, so that the model keeps a path-less URL as it is: an issuer
    # is compared exactly (RFC 8414 §3.3), and a trailing slash would make it another one.
    return AuthSettings.model_validate(
        {
            "issuer_url": issuer,
            "resource_server_url": resource_server_url,
            "required_scopes": scopes or None,
            "validate_token_resource": validate_token_resource,
            "service_documentation_url": service_documentation_url,
        }
    )


# Client side.


class McpAuth(httpx2.Auth):
    """The ``httpx2.Auth`` for an MCP client: a Deputy :class:`CredentialAuth` in ``httpx2``.

    The ``mcp`` SDK's HTTP client is ``httpx2``, not ``httpx``; this runs the agent SDK's
    auth flow for each request on an ``httpx`` copy of it (renewal before expiry, DPoP
    proofs, one retry after a ``401``), puts the headers the flow sets on the ``httpx2``
    request, and hands the flow each answer's status and headers. Async clients only (the
    ``mcp`` client is async; so are the credentials of :class:`AsyncDeputyClient`).
    """

    requires_request_body = True

    def __init__(self, auth: CredentialAuth) -> None:
        self._auth = auth

    @property
    def tool(self) -> str:
        """The Deputy tool (API) the credential is for."""
        return self._auth.tool

    @property
    def credential(self) -> Credential:
        """The credential held now (renewals replace it)."""
        return self._auth.credential

    def sync_auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response]:
        raise SdkError("McpAuth works with httpx2.AsyncClient only, as the mcp client does")

    async def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        shadow = httpx.Request(
            request.method,
            str(request.url),
            headers=request.headers.multi_items(),
            content=await request.aread(),
        )
        flow = self._auth.async_auth_flow(shadow)
        sent = await anext(flow)
        while True:
            # The flow's headers, whole: it may set (Authorization, DPoP) and drop some.
            request.headers = httpx2.Headers(sent.headers.multi_items())
            response = yield request
            answer = httpx.Response(
                response.status_code, headers=response.headers.multi_items(), request=sent
            )
            try:
                sent = await flow.asend(answer)
            except StopAsyncIteration:
                return

    def __repr__(self) -> str:
        return f"McpAuth({self._auth!r})"


async def deputy_mcp_auth(
    client: AsyncDeputyClient,
    *,
    resource: str,
    user_token: str,
    subject_token_type: str = ID_TOKEN,
    scope: str | Iterable[str] | None = None,
    workflow: str | None = None,
) -> McpAuth:
    """A Deputy credential for the MCP server at ``resource``, as the MCP client's auth.

    ``resource`` is the MCP server's URL as its Deputy tool's audience (the ``resource`` of
    its RFC 9728 metadata). The credential comes from an RFC 8693 exchange of
    ``user_token`` (the user's ID token by default) with ``resource`` as the RFC 8707
    target, for ``scope`` (default: what the workflow grants); the broker's refusals are
    raised (:class:`~deputy.sdk.errors.PolicyDenied` with its reasons...). Renewals
    exchange again on the same terms.
    """
    execution = await client.exchange(
        subject_token=user_token,
        subject_token_type=subject_token_type,
        resource=resource,
        scope=None if scope is None else (scope if isinstance(scope, str) else list(scope)),
        workflow=workflow,
    )
    if len(execution.tools) != 1:
        raise BrokerResponseInvalid(
            f"asking for {resource!r} gave credentials for {sorted(execution.tools)}"
        )
    return McpAuth(execution.auth(execution.tools[0]))
