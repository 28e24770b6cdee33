from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deputy.devtools.broker_thread import BrokerThread
from tests.integration.deployment import Deployment, running, write_deployment


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    return write_deployment(tmp_path)


@pytest.fixture
def broker(deployment: Deployment) -> Iterator[tuple[BrokerThread, httpx.Client]]:
    with running(deployment) as pair:
        yield pair
