"""The verifier against a real broker over loopback: its metadata, keys, credentials and feed."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from deputy.clock import FakeClock
from deputy.devtools.broker_thread import BrokerThread
from deputy.sdk.errors import CredentialRejected
from deputy.sdk.resource import DeputyAuthMiddleware, DeputyVerifier
from tests.integration.deployment import Deployment, running, write_deployment
from tests.integration.oauth_client import (
    CRM,
    PRICING,
    RESEARCH_ID,
    SUPPORT_ID,
    alice_credential,
    new_secret,
    sub_agent_exchange,
    with_clients,
)

ISSUER = "https://deputy.internal"
SECRETS = {"crm-api": new_secret()[0], "security-team": new_secret()[0]}
ADMIN_AUTH = ("security-team", SECRETS["security-team"])
Broker = tuple[BrokerThread, httpx.Client]


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    return write_deployment(tmp_path, with_clients(SECRETS))


@pytest.fixture
def deputy(deployment: Deployment) -> Iterator[Broker]:
    with running(deployment) as pair:
        yield pair


class Recorder:
    """The verifier's own HTTP client, remembering what it asked and what it was told."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []
        self.client = httpx.AsyncClient(timeout=10, event_hooks={"response": [self.record]})

    async def record(self, response: httpx.Response) -> None:
        self.seen.append((response.request.url.path, response.status_code))


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    recorder = Recorder()
    yield recorder
    await recorder.client.aclose()


@pytest.fixture
async def verifier(deputy: Broker, recorder: Recorder) -> AsyncIterator[DeputyVerifier]:
    server, _ = deputy
    verifier = DeputyVerifier(ISSUER, CRM, base_url=server.url, http_client=recorder.client)
    yield verifier
    await verifier.aclose()


def kill(client: httpx.Client, **selector: str) -> None:
    response = client.post("/admin/revocations", json={**selector}, auth=ADMIN_AUTH)
    assert response.status_code == 200, response.text


def child_of(d: Deployment, client: httpx.Client, parent: str) -> str:
    response = sub_agent_exchange(d, client, parent, scope="accounts:read")
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


async def test_a_broker_credential_says_who_for_whom_and_which_execution(
    deployment: Deployment, deputy: Broker, verifier: DeputyVerifier, recorder: Recorder
) -> None:
    _, client = deputy
    issued: dict[str, Any] = alice_credential(deployment, client, scope="accounts:read")
    credential = await verifier.verify(issued["access_token"])
    assert credential.user == "alice"
    assert credential.agent == SUPPORT_ID
    assert credential.actors == (SUPPORT_ID,)
    assert credential.scopes == {"accounts:read"}
    assert credential.audience == CRM
    assert credential.workflow == "customer-support"
    assert credential.delegation == "user_token"
    assert credential.execution_id and credential.execution_id.startswith("exe_")
    assert credential.decision_id
    assert credential.expires_at == credential.claims["exp"]
    assert [path for path, _ in recorder.seen] == [
        "/.well-known/oauth-authorization-server",
        "/revocations",
        "/.well-known/jwks.json",
    ]
    assert verifier.metadata is not None and verifier.metadata.algorithms == {"ES256"}


async def test_a_credential_for_another_api_is_refused(
    deployment: Deployment, deputy: Broker, verifier: DeputyVerifier
) -> None:
    _, client = deputy
    pricing = alice_credential(deployment, client, resource=PRICING)["access_token"]
    with pytest.raises(CredentialRejected, match="audience does not include"):
        await verifier.verify(pricing)


@pytest.mark.parametrize("revoke", ["parent_jti", "support_workload", "execution"])
async def test_kill_switch_reaches_a_sub_agents_cached_credential(
    deployment: Deployment, deputy: Broker, verifier: DeputyVerifier, revoke: str
) -> None:
    _, client = deputy
    parent = alice_credential(deployment, client, scope="accounts:read")["access_token"]
    child = child_of(deployment, client, parent)
    seen = await verifier.verify(child)
    assert seen.actors == (RESEARCH_ID, SUPPORT_ID)
    parent_jti = (await verifier.verify(parent)).jti
    assert seen.claims["delegated_from"] == [parent_jti]
    assert await verifier.verify(child) is seen  # warm
    if revoke == "parent_jti":
        kill(client, jti=parent_jti)
    elif revoke == "support_workload":
        kill(client, workload_id=SUPPORT_ID)
    else:
        assert seen.execution_id is not None
        kill(client, execution_id=seen.execution_id)
    await verifier.refresh()
    with pytest.raises(CredentialRejected, match="revoked"):
        await verifier.verify(child)


async def test_the_feed_is_revalidated_with_304(
    deployment: Deployment, deputy: Broker, verifier: DeputyVerifier, recorder: Recorder
) -> None:
    _, client = deputy
    await verifier.refresh()
    await verifier.refresh()
    kill(client, execution_id="exe_unrelated")
    await verifier.refresh()
    await verifier.refresh()
    assert [status for path, status in recorder.seen if path == "/revocations"] == [
        200,
        304,
        200,
        304,
    ]


async def test_when_the_broker_goes_away_verification_fails_closed(tmp_path: Path) -> None:
    d = write_deployment(tmp_path)
    clock = FakeClock(time.time())
    async with httpx.AsyncClient(timeout=5) as http:
        with running(d) as (server, client):
            verifier = DeputyVerifier(
                ISSUER, CRM, base_url=server.url, http_client=http, clock=clock
            )
            token = alice_credential(d, client)["access_token"]
            assert (await verifier.verify(token)).user == "alice"
        clock.advance(30)
        assert (await verifier.verify(token)).user == "alice"  # within max_staleness
        clock.advance(31)
        with pytest.raises(CredentialRejected) as caught:
            await verifier.verify(token)
        assert (caught.value.error, caught.value.status) == ("temporarily_unavailable", 503)
        await verifier.aclose()


async def test_the_middleware_in_front_of_an_app(
    deployment: Deployment, deputy: Broker, verifier: DeputyVerifier
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = scope["state"]["deputy"].user.encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    guarded = DeputyAuthMiddleware(app, verifier, required_scopes=["accounts:read"])
    _, client = deputy
    token = alice_credential(deployment, client, scope="accounts:read")["access_token"]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=guarded), base_url="https://crm.internal"
    ) as http:
        ok = await http.get("/accounts/1", headers={"Authorization": f"Bearer {token}"})
        assert (ok.status_code, ok.text) == (200, "alice")
        document = (await http.get("/.well-known/oauth-protected-resource")).json()
        assert document["resource"] == CRM
        assert document["authorization_servers"] == [ISSUER]
