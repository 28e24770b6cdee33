"""Helpers for the agent SDK tests: both client flavours, a tool API, a scripted broker."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt as pyjwt

from deputy.sdk.agent import AsyncDeputyClient, CredentialAuth, DeputyClient

ISSUER = "https://deputy.internal"
CRM = "https://crm.internal"
TICKETS = "https://tickets.internal"
PRICING = "https://pricing.internal"
SUPPORT_ID = "spiffe://prod.example/agents/support/triage"
RESEARCH = "/agents/research/r1"
RESEARCH_ID = "spiffe://prod.example/agents/research/r1"
MOCK_BROKER = "https://deputy.test"

Client = DeputyClient | AsyncDeputyClient


@dataclass
class Flavor:
    """The sync or the async client, driven from one async test body."""

    name: str
    sleeps: list[float] = field(default_factory=list)
    _own: list[httpx.Client | httpx.AsyncClient] = field(default_factory=list)
    _clients: list[Client] = field(default_factory=list)

    @property
    def is_async(self) -> bool:
        return self.name == "async"

    def client(self, url: str, workload_token: Any, **kw: Any) -> Client:
        """A Deputy client whose retry pauses are recorded in ``sleeps``, not slept."""
        client: Client
        if self.is_async:

            async def sleep(seconds: float) -> None:
                self.sleeps.append(seconds)

            client = AsyncDeputyClient(url, workload_token, sleep=sleep, **kw)
        else:
            client = DeputyClient(url, workload_token, sleep=self.sleeps.append, **kw)
        self._clients.append(client)
        return client

    def mock_client(
        self,
        broker: ScriptedBroker,
        token: str = "wl.token.x",  # noqa: S107
        **kw: Any,
    ) -> Client:
        """A Deputy client talking to a scripted stand-in for the broker."""
        transport = httpx.MockTransport(broker.handle)
        http = (
            httpx.AsyncClient(transport=transport)
            if self.is_async
            else httpx.Client(transport=transport)
        )
        self._own.append(http)
        return self.client(MOCK_BROKER, token, http=http, **kw)

    async def run(self, value: Any) -> Any:
        """The result of a client call, awaited if the client is async."""
        return await value if inspect.isawaitable(value) else value

    async def request(
        self, api: ToolApi | EchoApi, auth: CredentialAuth, method: str = "GET", **kw: Any
    ) -> httpx.Response:
        """A request to ``api`` through an httpx client of this flavour, with ``auth``."""
        transport = httpx.MockTransport(api.handle)
        if self.is_async:
            async with httpx.AsyncClient(transport=transport, auth=auth) as http:
                return await http.request(method, api.audience + "/accounts/42", **kw)
        with httpx.Client(transport=transport, auth=auth) as http:
            return http.request(method, api.audience + "/accounts/42", **kw)

    async def aclose(self) -> None:
        for client in self._clients:
            if isinstance(client, AsyncDeputyClient):
                await client.aclose()
            else:
                client.close()
        for http in self._own:
            if isinstance(http, httpx.AsyncClient):
                await http.aclose()
            else:
                http.close()


class ToolApi:
    """A downstream API that accepts only valid Deputy credentials for its own audience.

    It answers 401 to the first ``reject_first`` requests whatever they carry (a credential
    revoked behind the agent's back, say), or to every request with ``always_reject``.
    """

    def __init__(
        self, jwks: dict[str, Any], audience: str, *, reject_first: int = 0, always_reject=False
    ) -> None:
        self.keys = pyjwt.PyJWKSet.from_dict(jwks)
        self.audience = audience
        self.reject_first = reject_first
        self.always_reject = always_reject
        self.tokens: list[str] = []
        self.bodies: list[bytes] = []
        self.claims: list[dict[str, Any]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        self.tokens.append(token)
        self.bodies.append(request.content)
        challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        if scheme != "Bearer" or self.always_reject or len(self.tokens) <= self.reject_first:
            return httpx.Response(401, headers=challenge)
        try:
            header = pyjwt.get_unverified_header(token)
            claims = pyjwt.decode(
                token,
                self.keys[header["kid"]].key,
                algorithms=["ES256"],
                audience=self.audience,
                issuer=ISSUER,
            )
        except (pyjwt.InvalidTokenError, KeyError):
            return httpx.Response(401, headers=challenge)
        self.claims.append(claims)
        return httpx.Response(200, json={"sub": claims["sub"], "scope": claims["scope"]})


class EchoApi:
    """A downstream API that takes any bearer token and records it."""

    def __init__(self, audience: str = CRM) -> None:
        self.audience = audience
        self.tokens: list[str] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.tokens.append(request.headers.get("authorization", "").removeprefix("Bearer "))
        return httpx.Response(200, json={})


def credential_json(
    tool: str = "customer_data_api",
    audience: str = CRM,
    scope: str = "accounts:read",
    expires_in: int = 300,
    token: str = "cred.token.1",  # noqa: S107
) -> dict[str, Any]:
    return {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": expires_in,
        "scope": scope,
        "audience": audience,
    }


def issue_json(*credentials: dict[str, Any], execution: str = "exe_1") -> dict[str, Any]:
    entries = credentials or (credential_json(),)
    tools = {
        "https://crm.internal": "customer_data_api",
        "https://tickets.internal": "ticketing_api",
    }
    return {
        "credentials": {tools.get(c["audience"], "pricing_api"): c for c in entries},
        "execution_id": execution,
        "decision_id": f"dec_{execution}",
    }


Answer = tuple[int, Any, dict[str, str]] | Exception | Callable[[httpx.Request], httpx.Response]


class ScriptedBroker:
    """A stand-in for the broker that gives the scripted answers in order (the last repeats).

    An answer is ``(status, json body or raw bytes, headers)``, an exception to raise (as a
    transport failure would), or a function of the request.
    """

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(request)
        status, body, headers = answer
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.Response(
            status, content=content, headers={"Content-Type": "application/json", **headers}
        )

    def json_bodies(self) -> list[Any]:
        return [json.loads(r.content) for r in self.requests]


def ok(body: Any = None) -> tuple[int, Any, dict[str, str]]:
    return 200, issue_json() if body is None else body, {}


def unavailable(retry_after: str | None = "1") -> tuple[int, Any, dict[str, str]]:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    body = {"error": "temporarily_unavailable", "error_description": "the audit log is busy"}
    return 503, body, headers
