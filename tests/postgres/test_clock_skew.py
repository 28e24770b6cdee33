"""Replicas whose clocks disagree (libfaketime): within the 30 s leeway every replica accepts
what another issued; beyond it, a credential from a replica running ahead is refused as
issued in the future. Both replicas share PostgreSQL and Redis, and the chains verify."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from deputy.devtools.broker_process import BrokerProcess
from deputy.store.audit_store import open_reader
from tests.integration.deployment import Deployment, write_deployment
from tests.integration.oauth_client import alice_exchange, new_secret, with_clients
from tests.redis.conftest import delete_prefix
from tests.redis.conftest import redis_url as redis_url  # the fixture, for the replicas

ADMIN = ("security-team", new_secret()[0])
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def skewed(seconds: int) -> dict[str, str]:
    if not LIBFAKETIME.exists():
        pytest.fail("libfaketime is not installed: `make services` installs it (apt faketime)")
    # Wall clock only: monotonic time (timeouts, caches) stays true.
    extra = {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": f"{seconds:+d}s"}
    return {**os.environ, **extra, "DONT_FAKE_MONOTONIC": "1", "FAKETIME_NO_CACHE": "1"}


@pytest.fixture
def deployment(tmp_path: Path, pg_url: str, redis_url: str) -> Iterator[Deployment]:
    def mutate(doc: dict[str, Any]) -> None:
        with_clients({"crm-api": new_secret()[0], ADMIN[0]: ADMIN[1]})(doc)
        doc["storage"] = pg_url
        doc["counters"] = redis_url

    delete_prefix("deputy:quota:")
    yield write_deployment(tmp_path, mutate)
    delete_prefix("deputy:quota:")


def issued_by(d: Deployment, replica: BrokerProcess) -> str:
    with httpx.Client(base_url=replica.url, timeout=30) as client:
        response = alice_exchange(d, client, resource="https://crm.internal")
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])


def active_on(replica: BrokerProcess, token: str) -> bool:
    response = httpx.post(
        replica.url + "/oauth2/introspect", data={"token": token}, auth=ADMIN, timeout=10
    )
    assert response.status_code == 200, response.text
    return bool(response.json()["active"])


@pytest.mark.parametrize(("skew", "accepted"), [(20, True), (45, False)])
def test_credentials_cross_replicas_within_the_leeway_only(
    deployment: Deployment, tmp_path: Path, skew: int, accepted: bool
) -> None:
    d = deployment
    true = BrokerProcess(d.config_path, log=tmp_path / "true.log").start()
    try:
        ahead = BrokerProcess(d.config_path, log=tmp_path / "ahead.log", env=skewed(skew))
        ahead.start()
        try:
            from_ahead = issued_by(d, ahead)
            from_true = issued_by(d, true)
            assert active_on(ahead, from_true)  # issued in its past: always fine
            assert active_on(true, from_ahead) is accepted
        finally:
            ahead.stop()
    finally:
        true.stop()
    reader = open_reader(d.settings)
    try:
        assert reader.verify().ok
    finally:
        reader.close()
