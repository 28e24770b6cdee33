"""LangChain tools that call APIs with Deputy credentials: one agent run, one execution.

Needs ``deputy[langchain]`` (``langchain-core``)::

    @deputy_tool("customer_data_api")
    async def lookup_account(account_id: str, *, http: httpx.AsyncClient) -> dict:
        \"\"\"Look up a customer account by id.\"\"\"
        return (await http.get(f"https://crm.internal/accounts/{account_id}")).json()

    async with DeputyRun(deputy, [lookup_account], user_token=user_token) as run:
        answer = await my_agent(model, run.tools)   # run.execution_id names it in every log

A run opens one Deputy execution for the APIs its tools need; each tool gets an
``httpx.AsyncClient`` (its ``http`` argument, hidden from the model) that carries that API's
credential and renews it. A tool the workflow does not allow is refused with the broker's
reason, as a tool error the model sees, while the others still work.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx
from langchain_core.tools import StructuredTool, ToolException
from langchain_core.tools.base import create_schema_from_function

from deputy.sdk.agent import AsyncDeputyClient, Execution
from deputy.sdk.errors import DenialReason, PolicyDenied

HTTP_ARGUMENT = "http"
ToolFunction = Callable[..., Awaitable[Any]]
HttpFactory = Callable[[httpx.Auth], httpx.AsyncClient]


class DeputyTool:
    """A tool function that needs a credential for one Deputy tool (one API)."""

    def __init__(
        self,
        func: ToolFunction,
        api: str,
        *,
        name: str | None = None,
        description: str | None = None,
    ) -> None:
        self.func = func
        self.api = api
        self.name = name or func.__name__
        self.description = description or (func.__doc__ or "").strip()
        if not self.description:
            raise ValueError(f"tool {self.name!r} needs a description (or a docstring)")
        self.args_schema = create_schema_from_function(self.name, func, filter_args=[HTTP_ARGUMENT])

    def bind(self, http: httpx.AsyncClient, execution_id: str) -> StructuredTool:
        """The LangChain tool for one run: ``http`` carries this run's credential."""
        return StructuredTool.from_function(
            coroutine=functools.partial(self.func, http=http),
            name=self.name,
            description=self.description,
            args_schema=self.args_schema,
            handle_tool_error=True,
            metadata={"deputy_execution_id": execution_id, "deputy_tool": self.api},
        )

    def refuse(self, reasons: Sequence[DenialReason], execution_id: str | None) -> StructuredTool:
        """The LangChain tool for a run the broker did not allow this API in."""
        message = "refused by Deputy: " + "; ".join(f"{r.rule}: {r.message}" for r in reasons)

        async def refused(**_: Any) -> Any:
            raise ToolException(message)

        return StructuredTool.from_function(
            coroutine=refused,
            name=self.name,
            description=self.description,
            args_schema=self.args_schema,
            handle_tool_error=True,
            metadata={"deputy_execution_id": execution_id, "deputy_tool": self.api},
        )


def deputy_tool(
    api: str, *, name: str | None = None, description: str | None = None
) -> Callable[[ToolFunction], DeputyTool]:
    """Mark an ``async def f(..., *, http)`` as a tool calling the Deputy tool ``api``."""

    def wrap(func: ToolFunction) -> DeputyTool:
        return DeputyTool(func, api, name=name, description=description)

    return wrap


def _default_http(auth: httpx.Auth) -> httpx.AsyncClient:
    return httpx.AsyncClient(auth=auth, timeout=httpx.Timeout(10.0, connect=5.0))


class DeputyRun:
    """One agent run: one Deputy execution for every API its tools call."""

    def __init__(
        self,
        deputy: AsyncDeputyClient,
        tools: Sequence[DeputyTool],
        *,
        user_token: str | None = None,
        user_id: str | None = None,
        ttl_seconds: int | None = None,
        agent_id: str | None = None,
        workflow: str | None = None,
        http: HttpFactory = _default_http,
    ) -> None:
        if len({t.name for t in tools}) != len(tools):
            raise ValueError("tool names must be unique within a run")
        self._deputy = deputy
        self._tools = tuple(tools)
        self._terms: dict[str, Any] = {
            "user_token": user_token,
            "user_id": user_id,
            "ttl_seconds": ttl_seconds,
            "agent_id": agent_id,
            "workflow": workflow,
        }
        self._http = http
        self._stack = contextlib.AsyncExitStack()
        self.execution: Execution | None = None
        self.refused: Mapping[str, tuple[DenialReason, ...]] = {}
        self.tools: list[StructuredTool] = []

    @property
    def execution_id(self) -> str | None:
        return self.execution.execution_id if self.execution is not None else None

    async def __aenter__(self) -> DeputyRun:
        apis = list(dict.fromkeys(t.api for t in self._tools))
        refused: dict[str, tuple[DenialReason, ...]] = {}
        try:
            self.execution = await self._deputy.open_execution(apis, **self._terms)
        except PolicyDenied as denial:
            # Tool-level refusals leave the other tools usable: ask again without them
            # (a second decision, audited like the first). Anything else refuses the run.
            if not denial.reasons or any(r.tool is None for r in denial.reasons):
                raise
            for reason in denial.reasons:
                refused[reason.tool or ""] = (*refused.get(reason.tool or "", ()), reason)
            allowed = [api for api in apis if api not in refused]
            if allowed:
                self.execution = await self._deputy.open_execution(allowed, **self._terms)
        self.refused = refused
        clients: dict[str, httpx.AsyncClient] = {}
        for tool in self._tools:
            if tool.api in refused:
                self.tools.append(tool.refuse(refused[tool.api], self.execution_id))
                continue
            assert self.execution is not None
            if tool.api not in clients:
                client = self._http(self.execution.auth(tool.api))
                clients[tool.api] = await self._stack.enter_async_context(client)
            self.tools.append(tool.bind(clients[tool.api], self.execution.execution_id))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()
