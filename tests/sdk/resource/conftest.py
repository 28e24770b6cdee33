"""Fixtures: a fake clock, a broker answered in process, and a verifier wired to it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from deputy.clock import FakeClock
from deputy.sdk.resource import DeputyVerifier

from .local import NOW, LocalBroker


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def broker(clock: FakeClock) -> LocalBroker:
    return LocalBroker(clock)


@pytest.fixture
async def verifier(broker: LocalBroker) -> AsyncIterator[DeputyVerifier]:
    client = broker.client()
    v = broker.verifier(http_client=client)
    try:
        yield v
    finally:
        await v.aclose()
        await client.aclose()
