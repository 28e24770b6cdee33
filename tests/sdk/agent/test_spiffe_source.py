"""JWT-SVIDs from the SPIFFE Workload API (a real gRPC server on a unix socket) to the broker."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt as pyjwt
import pytest

from deputy.clock import FakeClock, SystemClock
from deputy.devtools.broker_thread import BrokerThread
from deputy.devtools.signer import SvidSigner
from deputy.sdk.agent import JWT_SPIFFE, SpiffeTokenSource, WorkloadTokenUnavailable
from tests.integration.deployment import Deployment
from tests.sdk.agent.support import CRM, SUPPORT_ID, Flavor
from tests.sdk.agent.workload_api import FakeWorkloadApi, workload_api_server

Broker = tuple[BrokerThread, httpx.Client]
SUPPORT = "/agents/support/triage"


@pytest.fixture
def workload_api(deployment: Deployment) -> FakeWorkloadApi:
    return FakeWorkloadApi(deployment.svids, SUPPORT)


@pytest.fixture
def socket(workload_api: FakeWorkloadApi) -> Iterator[str]:
    with workload_api_server(workload_api) as address:
        yield address


@pytest.fixture
def source(socket: str) -> Iterator[SpiffeTokenSource]:
    with SpiffeTokenSource("deputy", socket_path=socket) as made:
        yield made


async def test_jwt_svid_from_the_workload_api_opens_an_execution(
    deployment: Deployment,
    broker: Broker,
    workload_api: FakeWorkloadApi,
    source: SpiffeTokenSource,
    flavor: Flavor,
) -> None:
    server, _ = broker
    client = flavor.client(server.url, source, agent_id="triage-1")
    execution = await flavor.run(
        client.open_execution(["pricing_api"], user_token=deployment.idp.user_token("alice"))
    )
    assert execution.credentials["pricing_api"].scope == "rates:read"
    [seen] = workload_api.seen
    assert seen.audience == ["deputy"] and seen.spiffe_id == ""
    assert seen.workload_header == "true"  # the Workload API's required security header


async def test_jwt_svid_as_a_client_assertion_at_the_token_endpoint(
    deployment: Deployment, broker: Broker, source: SpiffeTokenSource, flavor: Flavor
) -> None:
    server, _ = broker
    client = flavor.client(
        server.url, source, workload_proof="client_assertion", client_assertion_type=JWT_SPIFFE
    )
    execution = await flavor.run(
        client.exchange(subject_token=deployment.idp.user_token("alice"), resource=CRM)
    )
    token = execution.credentials["customer_data_api"].access_token
    assert pyjwt.decode(token, options={"verify_signature": False})["client_id"] == SUPPORT_ID


async def test_svid_is_refreshed_at_half_its_lifetime(
    workload_api: FakeWorkloadApi, socket: str
) -> None:
    clock = FakeClock(time.time())
    with SpiffeTokenSource("deputy", socket_path=socket, clock=clock) as source:
        first = source.token()
        assert await source.atoken() == first and len(workload_api.seen) == 1
        clock.advance(149)
        assert source.token() == first and len(workload_api.seen) == 1
        clock.advance(2)
        second = await source.atoken()
        assert len(workload_api.seen) == 2 and second != first
        assert source.token() == second and len(workload_api.seen) == 2


async def test_a_failed_refresh_keeps_a_valid_svid_then_fails(
    workload_api: FakeWorkloadApi, socket: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(time.time())
    with SpiffeTokenSource("deputy", socket_path=socket, clock=clock, timeout=5) as source:
        held = source.token()
        workload_api.failing = True
        clock.advance(200)
        assert source.token() == held
        assert "refreshing the JWT-SVID failed" in caplog.text and held not in caplog.text
        clock.advance(101)  # expired
        with pytest.raises(WorkloadTokenUnavailable, match="gave no JWT-SVID"):
            await source.atoken()


def test_subject_names_one_of_several_identities(socket: str, workload_api: Any) -> None:
    with SpiffeTokenSource("deputy", socket_path=socket, subject=SUPPORT_ID) as source:
        source.token()
    assert workload_api.seen[0].spiffe_id == SUPPORT_ID


def test_socket_from_the_environment(
    socket: str, workload_api: FakeWorkloadApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPIFFE_ENDPOINT_SOCKET", socket)
    with SpiffeTokenSource() as source:
        token = source.token()
    claims = pyjwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == SUPPORT_ID and claims["aud"] == ["deputy"]


def test_no_workload_api_is_a_clear_error(tmp_path: Any) -> None:
    source = SpiffeTokenSource(socket_path=f"unix://{tmp_path}/none.sock")
    with pytest.raises(WorkloadTokenUnavailable, match="cannot reach the SPIFFE Workload API"):
        source.token()
    source.close()


def test_an_svid_for_another_audience_is_refused() -> None:
    api = FakeWorkloadApi(SvidSigner(SystemClock(), "prod.example"), SUPPORT, audience="other")
    with (
        workload_api_server(api) as address,
        SpiffeTokenSource("deputy", socket_path=address) as source,
        pytest.raises(WorkloadTokenUnavailable, match="gave no JWT-SVID"),
    ):
        source.token()


@dataclass
class Svid:
    token: str
    expiry: int


class InjectedClient:
    """Stands in for ``spiffe.WorkloadApiClient`` (``fetch_jwt_svid`` only)."""

    def __init__(self, *answers: Svid | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[set[str], Any, float | None]] = []
        self.closed = False

    def fetch_jwt_svid(self, audience: set[str], subject: Any = None, timeout: Any = None) -> Svid:
        self.calls.append((audience, subject, timeout))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self) -> None:
        self.closed = True


def test_an_injected_client_is_used_and_left_open(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    clock = FakeClock(1000.0)
    injected = InjectedClient(Svid("svid.one.sig", 1100), RuntimeError("socket closed"))
    with SpiffeTokenSource("deputy-prod", client=injected, clock=clock, timeout=2.0) as source:
        assert source.token() == "svid.one.sig"
        assert injected.calls == [({"deputy-prod"}, None, 2.0)]
        clock.advance(60)
        assert source.token() == "svid.one.sig"  # refresh failed; the held one is still valid
    assert not injected.closed
    assert "svid.one.sig" not in caplog.text


def test_refresh_fraction_is_checked() -> None:
    with pytest.raises(ValueError, match="refresh_fraction"):
        SpiffeTokenSource(refresh_fraction=0)
