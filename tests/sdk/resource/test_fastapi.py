"""The FastAPI dependencies: Depends(...) is all an endpoint needs; RFC 6750 refusals.

No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations,
and these endpoints are defined inside functions.
"""

import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI

from deputy.sdk.resource import (
    DeputyAuthMiddleware,
    DeputyVerifier,
    VerifiedCredential,
    current_credential,
)
from deputy.sdk.resource.fastapi import DeputyResource, require_scope

from .local import FEED_PATH, METADATA_PATH, LocalBroker

METADATA = "https://crm.example/.well-known/oauth-protected-resource"


def build(deputy: DeputyResource) -> FastAPI:
    app = FastAPI()

    @app.get("/accounts/{account_id}")
    async def read_account(
        account_id: str,
        who: Annotated[VerifiedCredential, Depends(deputy.require_scope("accounts:read"))],
    ) -> dict[str, object]:
        return {"account": account_id, "user": who.user, "actors": list(who.actors)}

    @app.post("/accounts/{account_id}")
    async def write_account(
        who: Annotated[
            VerifiedCredential, Depends(deputy.require_scope("accounts:read", "accounts:write"))
        ],
    ) -> dict[str, str]:
        return {"user": who.user}

    @app.get("/me")
    def me(who: Annotated[VerifiedCredential, Depends(deputy.credential)]) -> dict[str, object]:
        bound = current_credential()  # a sync endpoint runs in a worker thread
        return {"agent": who.agent, "bound": bound is not None and bound.jti == who.jti}

    return app


@pytest.fixture
async def http(verifier: DeputyVerifier) -> AsyncIterator[httpx.AsyncClient]:
    app = build(DeputyResource(verifier))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api.test"
    ) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_an_endpoint_gets_the_verified_credential(
    http: httpx.AsyncClient, broker: LocalBroker
) -> None:
    response = await http.get("/accounts/42", headers=bearer(broker.mint()))
    assert response.status_code == 200, response.text
    assert response.json() == {
        "account": "42",
        "user": "alice",
        "actors": [
            "spiffe://prod.example/agents/research/r1",
            "spiffe://prod.example/agents/support/triage",
        ],
    }
    me = await http.get("/me", headers=bearer(broker.mint()))
    assert me.json() == {"agent": "spiffe://prod.example/agents/research/r1", "bound": True}


async def test_refusals_carry_the_rfc_6750_challenge(
    http: httpx.AsyncClient, broker: LocalBroker
) -> None:
    missing = await http.get("/accounts/42")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == f'Bearer resource_metadata="{METADATA}"'

    invalid = await http.get("/accounts/42", headers=bearer("eHl6.eHl6.eHl6"))
    assert invalid.status_code == 401
    assert invalid.headers["www-authenticate"] == (
        'Bearer error="invalid_token", error_description="header is not valid JSON", '
        f'resource_metadata="{METADATA}"'
    )
    assert invalid.json() == {
        "detail": {"error": "invalid_token", "error_description": "header is not valid JSON"}
    }

    scoped = await http.post("/accounts/42", headers=bearer(broker.mint()))
    assert scoped.status_code == 403
    assert scoped.headers["www-authenticate"] == (
        'Bearer error="insufficient_scope", '
        'error_description="the credential lacks the scope accounts:write", '
        f'scope="accounts:read accounts:write", resource_metadata="{METADATA}"'
    )

    twice = await http.get(
        "/me", headers=[("Authorization", "Bearer a.b.c"), ("Authorization", "Bearer a.b.c")]
    )
    assert twice.status_code == 400
    assert twice.headers["www-authenticate"].startswith('Bearer error="invalid_request"')


async def test_a_broker_outage_is_a_503(http: httpx.AsyncClient, broker: LocalBroker) -> None:
    broker.status[METADATA_PATH] = 503
    response = await http.get("/me", headers=bearer(broker.mint()))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"


async def test_behind_the_middleware_its_credential_is_used(
    verifier: DeputyVerifier, broker: LocalBroker
) -> None:
    deputy = DeputyResource(verifier)
    app = build(deputy)

    @app.get("/scoped")
    async def scoped(
        who: Annotated[VerifiedCredential, Depends(require_scope("accounts:read"))],
    ) -> dict[str, str]:
        return {"user": who.user}

    @app.get("/healthz")
    async def health(
        who: Annotated[VerifiedCredential, Depends(require_scope())],
    ) -> dict[str, str]:
        return {"user": who.user}

    app.add_middleware(DeputyAuthMiddleware, verifier=verifier, exempt_paths=["/healthz"])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api.test"
    ) as http:
        token = broker.mint()
        for path in ("/accounts/1", "/scoped", "/me"):
            assert (await http.get(path, headers=bearer(token))).status_code == 200
        assert broker.count(FEED_PATH) == 1
        refused = await http.get("/scoped", headers=bearer(broker.mint(broker.claims(scope=""))))
        assert refused.status_code == 403
        assert 'scope="accounts:read"' in refused.headers["www-authenticate"]
        exempt = await http.get("/healthz")  # no credential where the middleware let it pass
        assert exempt.status_code == 401
        assert exempt.headers["www-authenticate"] == f'Bearer resource_metadata="{METADATA}"'
        document = await http.get("/.well-known/oauth-protected-resource")
        assert document.json()["authorization_servers"] == ["https://deputy.example"]


async def test_require_scope_without_the_middleware_is_a_configuration_error() -> None:
    app = FastAPI()

    @app.get("/")
    async def index(who: Annotated[VerifiedCredential, Depends(require_scope("a"))]) -> None:
        raise AssertionError("unreachable")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
        with pytest.raises(RuntimeError, match="DeputyAuthMiddleware"):
            await http.get("/")


async def test_lifespan_starts_and_stops_the_verifier(broker: LocalBroker) -> None:
    client = broker.client()
    deputy = DeputyResource(broker.verifier(http_client=client))
    app = FastAPI(lifespan=deputy.lifespan)
    async with app.router.lifespan_context(app):
        assert broker.count(FEED_PATH) == 1
        assert deputy.verifier._poller is not None
    assert deputy.verifier._poller is None
    await client.aclose()


def test_only_the_fastapi_module_imports_a_web_framework() -> None:
    check = (
        "import sys, deputy.sdk.resource, deputy.sdk.resource.asgi, deputy.sdk.resource.logging\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('fastapi', 'starlette', 'uvicorn', 'pydantic'))\n"
        "assert not loaded, loaded\n"
        "import deputy.sdk.resource.fastapi\n"
        "assert 'fastapi' in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
