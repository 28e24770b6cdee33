from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from deputy.devtools.broker_thread import BrokerThread
from tests.integration.deployment import Deployment, running, write_deployment
from tests.sdk.agent.support import Flavor

Broker = tuple[BrokerThread, httpx.Client]


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    return write_deployment(tmp_path)


@pytest.fixture
def broker(deployment: Deployment) -> Iterator[Broker]:
    with running(deployment) as pair:
        yield pair


@pytest.fixture
def jwks(broker: Broker) -> dict[str, Any]:
    _, http = broker
    keys: dict[str, Any] = http.get("/.well-known/jwks.json").json()
    return keys


@pytest.fixture(params=["sync", "async"])
async def flavor(request: pytest.FixtureRequest) -> AsyncIterator[Flavor]:
    chosen = Flavor(request.param)
    yield chosen
    await chosen.aclose()
