"""A real Redis for every test here; each test gets a key prefix of its own, deleted after.

The server is the one ``tests/services.py`` names (``DEPUTY_TEST_REDIS``). When it cannot be
reached every test here fails with that message: they never skip, so a CI run without Redis
cannot pass unnoticed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis.proxy import DelayProxy
from tests.services import delete_prefix, new_prefix, require_redis
from tests.services import redis_admin as admin

__all__ = ["admin", "delete_prefix"]  # for the tests that use the server directly

_HERE = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "redis: needs a real Redis server; fails (never skips) without one"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.redis)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The server's URL, once it has answered; a loud failure otherwise."""
    return require_redis("The tests in tests/redis")


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test uses; every key under it is deleted afterwards."""
    value = new_prefix()
    yield value
    delete_prefix(value)


@pytest.fixture
def proxy(redis_url: str) -> Iterator[DelayProxy]:
    """A relay to the test server that the test can slow down or take down."""
    from urllib.parse import urlsplit

    parts = urlsplit(redis_url)
    relay = DelayProxy((parts.hostname or "127.0.0.1", parts.port or 6379))
    relay.db = int(parts.path.strip("/") or 0)
    try:
        yield relay
    finally:
        relay.close()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
