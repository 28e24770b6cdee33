"""A real Redis for every test here; each test gets a key prefix of its own, deleted after.

The server is ``redis://127.0.0.1:6379/0`` unless ``DEPUTY_TEST_REDIS`` names another. When
it cannot be reached every test here fails with that message: they never skip, so a CI run
without Redis cannot pass unnoticed.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

import redis
from deputy.store.redis.connection import redacted
from tests.redis.proxy import DelayProxy

REDIS_URL = os.environ.get("DEPUTY_TEST_REDIS", "redis://127.0.0.1:6379/0")
_HERE = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "redis: needs a real Redis server; fails (never skips) without one"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.redis)


def admin() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL, socket_timeout=3, socket_connect_timeout=3)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The server's URL, once it has answered; a loud failure otherwise."""
    try:
        with admin() as client:
            client.ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis is not reachable at {redacted(REDIS_URL)}: {exc}. The tests in tests/redis"
            " need a real server: start it, or point DEPUTY_TEST_REDIS at one.",
            pytrace=False,
        )
    return REDIS_URL


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test uses; every key under it is deleted afterwards."""
    value = f"deputy-test:{secrets.token_hex(6)}:"
    yield value
    delete_prefix(value)


def delete_prefix(value: str) -> int:
    """Delete every key under ``value`` (what a Redis restarted empty has lost); how many."""
    with admin() as client:
        keys = list(client.scan_iter(match=f"{value}*", count=1000))
        if keys:
            client.delete(*keys)
    return len(keys)


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
