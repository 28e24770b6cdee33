"""The agent's client for the broker, async (:class:`AsyncDeputyClient`) and sync
(:class:`DeputyClient`). Both build requests, read answers and retry through the same
I/O-free code (``_wire``); they differ only in how they wait."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from types import MappingProxyType, TracebackType
from typing import Literal

import httpx

from deputy.clock import Clock, SystemClock
from deputy.sdk.agent._dpop import Binding
from deputy.sdk.agent._wire import (
    ACCESS_TOKEN,
    ID_TOKEN,
    JWT_BEARER,
    Call,
    Effect,
    Endpoints,
    ExchangeCall,
    Flow,
    IssueCall,
    Issued,
    Presentation,
    Target,
    call_flow,
    metadata_flow,
    run_async,
    run_sync,
)
from deputy.sdk.agent.credentials import Credential, RenewalPolicy
from deputy.sdk.agent.errors import BrokerResponseInvalid
from deputy.sdk.agent.execution import Execution
from deputy.sdk.agent.retry import RetryPolicy
from deputy.sdk.agent.token_sources import StaticTokenSource, TokenSource
from deputy.sdk.dpop import DpopKey
from deputy.sdk.errors import SdkError

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)

Tools = Sequence[str] | Mapping[str, Sequence[str]]
Targets = str | Sequence[str]
Scope = str | Sequence[str] | None
WorkloadProof = Literal["actor_token", "client_assertion", "both"]


def _base_url(url: str, allow_http: bool) -> str:
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"the broker URL must be an absolute http(s) URL, not {url!r}")
    if parsed.query or parsed.fragment:
        raise ValueError("the broker URL must not have a query or a fragment")
    if parsed.scheme == "http" and not allow_http and not _loopback(parsed.host):
        raise ValueError(
            "the broker is sent workload and user tokens: use https, or pass allow_http=True "
            "where the network itself is protected (e.g. a mesh with mTLS)"
        )
    return str(parsed).rstrip("/")


def _issuer_url(issuer: str) -> str:
    """The broker's issuer (its public URL): only named in DPoP proofs, never sent to."""
    parsed = httpx.URL(issuer)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"issuer must be the broker's absolute http(s) URL, not {issuer!r}")
    if parsed.query or parsed.fragment:
        raise ValueError("issuer must not have a query or a fragment")
    return str(parsed).rstrip("/")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _names(values: Targets, what: str) -> tuple[str, ...]:
    names = (values,) if isinstance(values, str) else tuple(values)
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"every {what} must be a non-empty string")
    return names


def _tools(tools: Tools) -> tuple[tuple[str, ...], Mapping[str, tuple[str, ...]] | None]:
    if isinstance(tools, str):
        raise TypeError("tools is a list of tool names or a map of tool to scopes, not a string")
    if isinstance(tools, Mapping):
        scopes = {tool: _names(granted, "scope") for tool, granted in tools.items()}
        names: tuple[str, ...] = _names(tuple(scopes), "tool")
    else:
        names, scopes = _names(tools, "tool"), None
    if not names:
        raise ValueError("tools must name at least one tool")
    if len(set(names)) != len(names):
        raise ValueError("tools must not name a tool twice")
    return names, None if scopes is None else MappingProxyType(scopes)


def _scope(scope: Scope) -> str | None:
    if scope is None:
        return None
    return " ".join(_names(scope.split() if isinstance(scope, str) else scope, "scope")) or None


class _CallRenewer:
    """Renews a credential by sending its call again for that tool alone."""

    def __init__(
        self,
        call: Call,
        run: Callable[[Call], Issued],
        arun: Callable[[Call], Awaitable[Issued]],
    ) -> None:
        self._call = call
        self._run = run
        self._arun = arun

    def renew(self, stale: Credential) -> Credential:
        return self._pick(self._run(self._call.narrow(stale)), stale)

    async def arenew(self, stale: Credential) -> Credential:
        return self._pick(await self._arun(self._call.narrow(stale)), stale)

    @staticmethod
    def _pick(issued: Issued, stale: Credential) -> Credential:
        fresh = issued.credentials.get(stale.tool)
        if fresh is None or len(issued.credentials) != 1:
            raise BrokerResponseInvalid(
                f"renewing the {stale.tool!r} credential gave {sorted(issued.credentials)}"
            )
        return fresh


class _ClientBase:
    """Configuration, request building and answer handling shared by both clients."""

    def __init__(
        self,
        url: str,
        workload_token: TokenSource | str,
        *,
        agent_id: str | None,
        timeout: float | httpx.Timeout,
        retry: RetryPolicy | None,
        renewal: RenewalPolicy | None,
        clock: Clock | None,
        workload_proof: WorkloadProof,
        client_assertion_type: str,
        allow_http: bool,
        dpop: bool,
        issuer: str | None,
    ) -> None:
        if workload_proof not in ("actor_token", "client_assertion", "both"):
            raise ValueError("workload_proof is actor_token, client_assertion or both")
        timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self._target = Target(_base_url(url, allow_http), timeout)
        self._source: TokenSource = (
            StaticTokenSource(workload_token) if isinstance(workload_token, str) else workload_token
        )
        self._agent_id = agent_id
        self._retry = retry or RetryPolicy()
        self._renewal = renewal or RenewalPolicy()
        self._clock = clock or SystemClock()
        self._presentation = Presentation(
            actor_token=workload_proof != "client_assertion",
            client_assertion_type=None
            if workload_proof == "actor_token"
            else client_assertion_type,
        )
        self._dpop = dpop
        self._endpoints = None if issuer is None else Endpoints.of_issuer(_issuer_url(issuer))

    @property
    def url(self) -> str:
        return self._target.url

    @property
    def dpop(self) -> bool:
        """Whether executions are DPoP-bound unless a call says otherwise."""
        return self._dpop

    def _wants_dpop(self, dpop: bool | None) -> bool:
        return self._dpop if dpop is None else dpop

    def _metadata_flow(self) -> Generator[Effect, object, Endpoints]:
        return metadata_flow(self._target, self._retry, self._clock)

    @staticmethod
    def _bound(call: Call, endpoints: Endpoints) -> Call:
        """``call`` binding its credentials to a key made for this execution alone."""
        return call.bind(Binding(DpopKey(), endpoints.url(call.path)))

    def _issue_call(
        self,
        tools: Tools,
        *,
        agent_id: str | None,
        user_token: str | None,
        user_id: str | None,
        ttl_seconds: int | None,
        workflow: str | None,
    ) -> IssueCall:
        agent = agent_id or self._agent_id
        if not agent:
            raise ValueError("agent_id (this agent instance) is required, here or on the client")
        if ttl_seconds is not None and (
            not isinstance(ttl_seconds, int) or isinstance(ttl_seconds, bool) or ttl_seconds <= 0
        ):
            raise ValueError("ttl_seconds must be a positive whole number of seconds")
        names, scopes = _tools(tools)
        return IssueCall(agent, names, scopes, user_token, user_id, ttl_seconds, workflow)

    def _exchange_call(
        self,
        *,
        subject_token: str,
        subject_token_type: str,
        resource: Targets,
        audience: Targets,
        scope: Scope,
        workflow: str | None,
        requested_token_type: str | None,
    ) -> ExchangeCall:
        if not subject_token:
            raise ValueError("subject_token is required")
        return ExchangeCall(
            subject_token,
            subject_token_type,
            self._presentation,
            resource=_names(resource, "resource"),
            audience=_names(audience, "audience"),
            scope=_scope(scope),
            workflow=workflow,
            requested_token_type=requested_token_type,
        )

    def _delegate_call(
        self,
        credential: Credential | str,
        *,
        resource: Targets | None,
        audience: Targets,
        scope: Scope,
        workflow: str | None,
    ) -> ExchangeCall:
        if isinstance(credential, Credential):
            token = credential.access_token
            if resource is None and not audience:
                resource = credential.audience
        else:
            token = credential
        return self._exchange_call(
            subject_token=token,
            subject_token_type=ACCESS_TOKEN,
            resource=() if resource is None else resource,
            audience=audience,
            scope=scope,
            workflow=workflow,
            requested_token_type=None,
        )

    def _flow(self, call: Call) -> Flow:
        return call_flow(call, self._target, self._retry, self._clock)

    def _execution(self, issued: Issued, call: Call, renewer: _CallRenewer) -> Execution:
        return Execution(
            issued.execution_id,
            issued.decision_id,
            issued.credentials,
            renewer=renewer,
            clock=self._clock,
            renewal=self._renewal,
            dpop_key=None if call.binding is None else call.binding.key,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class AsyncDeputyClient(_ClientBase):
    """Asks the broker for credentials, from async code.

    ``workload_token`` is a :class:`TokenSource` (or a fixed token): the agent's own
    identity, asked for on every call. ``agent_id`` is this agent instance's id, the default
    for :meth:`open_execution`. ``http`` is an ``httpx.AsyncClient`` to send through (not
    closed by this client); without one, the client makes its own. Every request carries
    ``timeout``. ``retry`` bounds the retries of an unavailable broker and ``sleep`` is how
    they wait. ``renewal`` says when the :meth:`Execution.auth` of a credential renews it;
    ``clock`` times credentials. At the token endpoint the workload token goes as
    ``actor_token`` (default), as a client assertion of ``client_assertion_type`` (use
    ``JWT_SPIFFE`` for a JWT-SVID), or ``both``.

    With ``dpop=True`` (or ``dpop=True`` on a call), each execution's credentials are bound
    to a key made for that execution alone (RFC 9449): the broker is sent a proof of it,
    the credentials carry its thumbprint, and :meth:`Execution.auth` sends them with
    ``Authorization: DPoP`` and a fresh proof per request. A proof names the broker
    endpoint by its public URL, under the broker's ``issuer``: pass it, or it is read once
    from the broker's metadata (``/.well-known/oauth-authorization-server``).

    Credentials from this client renew themselves in ``httpx.AsyncClient`` requests; use
    :class:`DeputyClient` for ``httpx.Client``.
    """

    def __init__(
        self,
        url: str,
        workload_token: TokenSource | str,
        *,
        agent_id: str | None = None,
        http: httpx.AsyncClient | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        renewal: RenewalPolicy | None = None,
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        workload_proof: WorkloadProof = "actor_token",
        client_assertion_type: str = JWT_BEARER,
        allow_http: bool = False,
        dpop: bool = False,
        issuer: str | None = None,
    ) -> None:
        super().__init__(
            url,
            workload_token,
            agent_id=agent_id,
            timeout=timeout,
            retry=retry,
            renewal=renewal,
            clock=clock,
            workload_proof=workload_proof,
            client_assertion_type=client_assertion_type,
            allow_http=allow_http,
            dpop=dpop,
            issuer=issuer,
        )
        self._http = http or httpx.AsyncClient(timeout=self._target.timeout)
        self._owns_http = http is None
        self._sleep = sleep

    async def open_execution(
        self,
        tools: Tools,
        *,
        user_token: str | None = None,
        user_id: str | None = None,
        ttl_seconds: int | None = None,
        agent_id: str | None = None,
        workflow: str | None = None,
        dpop: bool | None = None,
    ) -> Execution:
        """``POST /issue``: one credential per tool, for the user of ``user_token`` (or
        ``user_id``, where a workflow lets the agent assert it), valid ``ttl_seconds``;
        bound to a new DPoP key if ``dpop`` (by default, as the client says)."""
        return await self._open(
            self._issue_call(
                tools,
                agent_id=agent_id,
                user_token=user_token,
                user_id=user_id,
                ttl_seconds=ttl_seconds,
                workflow=workflow,
            ),
            dpop,
        )

    async def exchange(
        self,
        *,
        subject_token: str,
        subject_token_type: str = ID_TOKEN,
        resource: Targets = (),
        audience: Targets = (),
        scope: Scope = None,
        workflow: str | None = None,
        requested_token_type: str | None = None,
        dpop: bool | None = None,
    ) -> Execution:
        """RFC 8693 token exchange: credentials for ``subject_token``'s user (an ID token by
        default, or a Deputy credential with ``ACCESS_TOKEN``), one per tool that a
        ``resource`` or ``audience`` names."""
        return await self._open(
            self._exchange_call(
                subject_token=subject_token,
                subject_token_type=subject_token_type,
                resource=resource,
                audience=audience,
                scope=scope,
                workflow=workflow,
                requested_token_type=requested_token_type,
            ),
            dpop,
        )

    async def delegate(
        self,
        credential: Credential | str,
        *,
        resource: Targets | None = None,
        audience: Targets = (),
        scope: Scope = None,
        workflow: str | None = None,
        dpop: bool | None = None,
    ) -> Execution:
        """As a sub-agent, exchange a credential this agent was handed for one of its own
        (same execution, narrower or equal rights). Without a target, a
        :class:`Credential`'s own audience is asked for."""
        return await self._open(
            self._delegate_call(
                credential, resource=resource, audience=audience, scope=scope, workflow=workflow
            ),
            dpop,
        )

    async def _open(self, call: Call, dpop: bool | None) -> Execution:
        if self._wants_dpop(dpop):
            call = self._bound(call, await self._aendpoints())
        issued = await self._arun(call)
        return self._execution(issued, call, _CallRenewer(call, self._run_blocking, self._arun))

    async def _aendpoints(self) -> Endpoints:
        if self._endpoints is None:
            self._endpoints = await run_async(
                self._metadata_flow(), self._http, self._source, self._sleep
            )
        return self._endpoints

    async def _arun(self, call: Call) -> Issued:
        return await run_async(self._flow(call), self._http, self._source, self._sleep)

    def _run_blocking(self, call: Call) -> Issued:
        raise SdkError(
            "a credential from AsyncDeputyClient renews in httpx.AsyncClient requests only; "
            "use DeputyClient for httpx.Client"
        )

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncDeputyClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class DeputyClient(_ClientBase):
    """Asks the broker for credentials, from blocking code: the same as
    :class:`AsyncDeputyClient`, with ``http`` an ``httpx.Client`` and a blocking ``sleep``.

    Credentials from this client renew themselves in ``httpx.Client`` requests, and in
    ``httpx.AsyncClient`` requests too (the broker call then runs in a worker thread).
    """

    def __init__(
        self,
        url: str,
        workload_token: TokenSource | str,
        *,
        agent_id: str | None = None,
        http: httpx.Client | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        renewal: RenewalPolicy | None = None,
        clock: Clock | None = None,
        sleep: Callable[[float], object] = time.sleep,
        workload_proof: WorkloadProof = "actor_token",
        client_assertion_type: str = JWT_BEARER,
        allow_http: bool = False,
        dpop: bool = False,
        issuer: str | None = None,
    ) -> None:
        super().__init__(
            url,
            workload_token,
            agent_id=agent_id,
            timeout=timeout,
            retry=retry,
            renewal=renewal,
            clock=clock,
            workload_proof=workload_proof,
            client_assertion_type=client_assertion_type,
            allow_http=allow_http,
            dpop=dpop,
            issuer=issuer,
        )
        self._http = http or httpx.Client(timeout=self._target.timeout)
        self._owns_http = http is None
        self._sleep = sleep

    def open_execution(
        self,
        tools: Tools,
        *,
        user_token: str | None = None,
        user_id: str | None = None,
        ttl_seconds: int | None = None,
        agent_id: str | None = None,
        workflow: str | None = None,
        dpop: bool | None = None,
    ) -> Execution:
        """See :meth:`AsyncDeputyClient.open_execution`."""
        return self._open(
            self._issue_call(
                tools,
                agent_id=agent_id,
                user_token=user_token,
                user_id=user_id,
                ttl_seconds=ttl_seconds,
                workflow=workflow,
            ),
            dpop,
        )

    def exchange(
        self,
        *,
        subject_token: str,
        subject_token_type: str = ID_TOKEN,
        resource: Targets = (),
        audience: Targets = (),
        scope: Scope = None,
        workflow: str | None = None,
        requested_token_type: str | None = None,
        dpop: bool | None = None,
    ) -> Execution:
        """See :meth:`AsyncDeputyClient.exchange`."""
        return self._open(
            self._exchange_call(
                subject_token=subject_token,
                subject_token_type=subject_token_type,
                resource=resource,
                audience=audience,
                scope=scope,
                workflow=workflow,
                requested_token_type=requested_token_type,
            ),
            dpop,
        )

    def delegate(
        self,
        credential: Credential | str,
        *,
        resource: Targets | None = None,
        audience: Targets = (),
        scope: Scope = None,
        workflow: str | None = None,
        dpop: bool | None = None,
    ) -> Execution:
        """See :meth:`AsyncDeputyClient.delegate`."""
        return self._open(
            self._delegate_call(
                credential, resource=resource, audience=audience, scope=scope, workflow=workflow
            ),
            dpop,
        )

    def _open(self, call: Call, dpop: bool | None) -> Execution:
        if self._wants_dpop(dpop):
            if self._endpoints is None:
                self._endpoints = run_sync(
                    self._metadata_flow(), self._http, self._source, self._sleep
                )
            call = self._bound(call, self._endpoints)
        return self._execution(self._run(call), call, _CallRenewer(call, self._run, self._arun))

    def _run(self, call: Call) -> Issued:
        return run_sync(self._flow(call), self._http, self._source, self._sleep)

    async def _arun(self, call: Call) -> Issued:
        return await asyncio.to_thread(self._run, call)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> DeputyClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
