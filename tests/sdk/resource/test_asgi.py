"""DeputyAuthMiddleware: RFC 6750 answers, RFC 9728 metadata, what the app is handed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from deputy.clock import FakeClock
from deputy.sdk.resource import DeputyAuthMiddleware, DeputyVerifier, current_credential
from deputy.sdk.resource.asgi import CREDENTIAL_KEY, Message, Receive, Scope, Send

from .local import AUDIENCE, FEED_PATH, ISSUER, LocalBroker

METADATA = "https://crm.example/.well-known/oauth-protected-resource"


class EchoApp:
    """Answers 200 with what the middleware handed it."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope)
        credential = scope.get("state", {}).get("deputy")
        bound = current_credential()
        body = json.dumps(
            {
                "user": credential.user if credential else None,
                "same": credential is scope.get(CREDENTIAL_KEY) and credential is bound,
                "path": scope["path"],
            }
        ).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def app() -> EchoApp:
    return EchoApp()


@pytest.fixture
async def http(app: EchoApp, verifier: DeputyVerifier) -> AsyncIterator[httpx.AsyncClient]:
    guarded = DeputyAuthMiddleware(
        app, verifier, required_scopes=["accounts:read"], exempt_paths=["/healthz"]
    )
    transport = httpx.ASGITransport(app=guarded)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_valid_credential_reaches_the_app(
    http: httpx.AsyncClient, broker: LocalBroker, app: EchoApp
) -> None:
    response = await http.get("/accounts/42", headers=bearer(broker.mint()))
    assert response.status_code == 200
    assert response.json() == {"user": "alice", "same": True, "path": "/accounts/42"}
    assert app.scopes[0]["deputy.credential"].agent.endswith("/research/r1")
    assert current_credential() is None  # unbound once the request is done


async def test_the_scheme_name_is_case_insensitive(
    http: httpx.AsyncClient, broker: LocalBroker
) -> None:
    response = await http.get("/", headers={"Authorization": f"bEaReR   {broker.mint()}"})
    assert response.status_code == 200


async def test_no_credential_gets_a_bare_challenge(http: httpx.AsyncClient, app: EchoApp) -> None:
    for headers in ({}, {"Authorization": "Basic YWxpY2U6c2VjcmV0"}):
        response = await http.get("/accounts/42", headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == f'Bearer resource_metadata="{METADATA}"'
        assert response.headers["cache-control"] == "no-store"
        assert "error" not in response.json()
    assert app.scopes == []


async def test_an_invalid_token_gets_invalid_token(
    http: httpx.AsyncClient, broker: LocalBroker
) -> None:
    response = await http.get("/", headers=bearer("abc.def"))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == (
        'Bearer error="invalid_token", error_description="token must have three segments", '
        f'resource_metadata="{METADATA}"'
    )
    assert response.json() == {
        "error": "invalid_token",
        "error_description": "token must have three segments",
    }
    expired = broker.mint(broker.claims(exp=int(broker.clock.now()) - 1))
    response = await http.get("/", headers=bearer(expired))
    assert 'error_description="token expired"' in response.headers["www-authenticate"]


async def test_a_missing_scope_gets_insufficient_scope(
    http: httpx.AsyncClient, broker: LocalBroker, app: EchoApp
) -> None:
    token = broker.mint(broker.claims(scope="tickets:read"))
    response = await http.get("/", headers=bearer(token))
    assert response.status_code == 403
    assert response.headers["www-authenticate"] == (
        'Bearer error="insufficient_scope", '
        'error_description="the credential lacks the scope accounts:read", '
        f'scope="accounts:read", resource_metadata="{METADATA}"'
    )
    assert response.json()["error"] == "insufficient_scope"
    assert app.scopes == []


@pytest.mark.parametrize(
    ("headers", "description"),
    [
        ([("Authorization", "Bearer a.b.c"), ("Authorization", "Bearer a.b.c")], "more than one"),
        ([("Authorization", "Bearer")], "the Bearer credential is empty"),
        ([("Authorization", "Bearer    ")], "the Bearer credential is empty"),
        ([("Authorization", "Bearer a b")], "the Bearer credential is malformed"),
        ([("Authorization", 'Bearer "a.b.c"')], "the Bearer credential is malformed"),
    ],
)
async def test_a_malformed_authorization_header_is_invalid_request(
    http: httpx.AsyncClient, headers: list[tuple[str, str]], description: str
) -> None:
    response = await http.get("/", headers=headers)
    assert response.status_code == 400
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="invalid_request", error_description="')
    assert description in challenge
    assert challenge.endswith(f'resource_metadata="{METADATA}"')


async def test_an_unavailable_broker_is_a_503_with_retry_after(
    http: httpx.AsyncClient, broker: LocalBroker
) -> None:
    broker.status[FEED_PATH] = 503
    response = await http.get("/", headers=bearer(broker.mint()))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert "www-authenticate" not in response.headers
    assert response.json()["error"] == "temporarily_unavailable"


async def test_revocation_reaches_requests(
    http: httpx.AsyncClient, broker: LocalBroker, verifier: DeputyVerifier
) -> None:
    token = broker.mint()
    assert (await http.get("/", headers=bearer(token))).status_code == 200
    broker.revoke("workload_id", "spiffe://prod.example/agents/support/triage")
    await verifier.refresh()
    response = await http.get("/", headers=bearer(token))
    assert response.status_code == 401
    assert (
        'error_description="the credential has been revoked"'
        in response.headers["www-authenticate"]
    )


async def test_the_protected_resource_metadata_document(http: httpx.AsyncClient) -> None:
    response = await http.get("/.well-known/oauth-protected-resource")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "resource": AUDIENCE,
        "authorization_servers": [ISSUER],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["accounts:read"],
    }
    head = await http.head("/.well-known/oauth-protected-resource")
    assert head.status_code == 200 and head.content == b""
    post = await http.post("/.well-known/oauth-protected-resource")
    assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"


async def test_exempt_paths_pass_without_a_credential(
    http: httpx.AsyncClient, app: EchoApp
) -> None:
    response = await http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"user": None, "same": True, "path": "/healthz"}
    assert (await http.get("/healthz/x")).status_code == 401  # exact paths only


async def test_resource_with_a_path_and_a_realm(
    broker: LocalBroker, verifier: DeputyVerifier, app: EchoApp
) -> None:
    guarded = DeputyAuthMiddleware(
        app,
        verifier,
        resource="https://api.example/crm/",
        realm='crm "v1"',
        scopes_supported=["accounts:read", "accounts:write"],
        resource_name="CRM",
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=guarded), base_url="http://api.test"
    ) as http:
        response = await http.get("/")
        url = "https://api.example/.well-known/oauth-protected-resource/crm"
        assert response.headers["www-authenticate"] == (
            f'Bearer realm="crm ?v1?", resource_metadata="{url}"'
        )
        document = (await http.get("/.well-known/oauth-protected-resource/crm")).json()
        assert document["resource"] == "https://api.example/crm/"
        assert document["scopes_supported"] == ["accounts:read", "accounts:write"]
        assert document["resource_name"] == "CRM"
        # Without required scopes any scope will do.
        token = broker.mint(broker.claims(scope="tickets:read"))
        assert (await http.get("/", headers=bearer(token))).status_code == 200


async def test_an_audience_that_is_not_a_url_needs_a_resource(
    app: EchoApp, clock: FakeClock
) -> None:
    verifier = DeputyVerifier(ISSUER, "crm", clock=clock)
    with pytest.raises(ValueError, match="resource="):
        DeputyAuthMiddleware(app, verifier)
    assert DeputyAuthMiddleware(app, verifier, resource="https://crm.example").challenges
    await verifier.aclose()


async def test_websocket_without_a_credential_is_closed(verifier: DeputyVerifier) -> None:
    async def never(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("reached the app")

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    scope: dict[str, Any] = {"type": "websocket", "path": "/ws", "headers": []}
    await DeputyAuthMiddleware(never, verifier)(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": ""}]


async def test_lifespan_starts_and_closes_the_verifier(broker: LocalBroker) -> None:
    client = broker.client()
    verifier = broker.verifier(http_client=client)
    events: list[str] = []

    async def lifespan_app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            events.append(f"app:{message['type']}:{broker.count(FEED_PATH)}")
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive() -> Message:
        return inbox.pop(0)

    async def send(message: Message) -> None:
        events.append(f"server:{message['type']}")

    await DeputyAuthMiddleware(lifespan_app, verifier)({"type": "lifespan"}, receive, send)
    assert events == [
        "app:lifespan.startup:1",  # the feed was fetched before the app's own startup
        "server:lifespan.startup.complete",
        "app:lifespan.shutdown:1",
        "server:lifespan.shutdown.complete",
    ]
    assert verifier._poller is None
    await client.aclose()
