"""Faults under three `deputy serve` replicas behind nginx, sharing PostgreSQL and Redis.

PostgreSQL itself (a server of the test's own) is stopped mid-load and started again: clients
see only 200 or 503 with Retry-After, within the store's bounds; every replica answers 200
again on its own; every credential handed out has exactly one record and the chains verify.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from deputy.devtools.broker_process import BrokerProcess
from deputy.store.postgres import upgrade
from deputy.store.postgres.connect import Timeouts
from tests.integration.deployment import Deployment, write_deployment
from tests.postgres.cluster import (
    Answer,
    assert_unavailable,
    credential_ids,
    issue,
    issue_at,
    jti_of,
    replicas_behind_nginx,
    verified_records,
)
from tests.postgres.server_process import PostgresServer, StopMode
from tests.redis.conftest import prefix as prefix  # the fixtures, for the replicas' counters
from tests.redis.conftest import redis_url as redis_url

if TYPE_CHECKING:
    from pathlib import Path

CLIENTS = 4
_STORE = Timeouts()
# The store's longest wait on a request (an append: three calls and a connect), with room for
# a loaded machine: no answer may take longer, whatever PostgreSQL does.
ANSWER_BOUND_SECONDS = 3 * _STORE.call + _STORE.connect + 9.0
RECOVERY_SECONDS = 60.0
WAIT_SECONDS = 120.0


class Load:
    """Clients issuing through the balancer, one request after another each, until stopped."""

    def __init__(self, d: Deployment, url: str, clients: int = CLIENTS) -> None:
        self._d = d
        self._url = url
        self._lock = threading.Lock()
        self._answers: list[Answer] = []
        self._stopping = threading.Event()
        self._pool = ThreadPoolExecutor(clients)
        self._clients: list[Future[None]] = [self._pool.submit(self._run) for _ in range(clients)]

    def _run(self) -> None:
        with httpx.Client(base_url=self._url, timeout=4 * ANSWER_BOUND_SECONDS) as client:
            while not self._stopping.is_set():
                answer = issue(self._d, client)
                with self._lock:
                    self._answers.append(answer)

    def answers(self) -> list[Answer]:
        with self._lock:
            return list(self._answers)

    def wait_for(self, what: str, enough: Callable[[list[Answer]], bool]) -> None:
        """Poll until ``enough`` holds for the answers so far; a client's error ends it."""
        deadline = time.monotonic() + WAIT_SECONDS
        while not enough(self.answers()):
            for client in self._clients:
                if client.done():
                    client.result()  # raises what ended the client
            statuses = Counter(a.status for a in self.answers())
            assert time.monotonic() < deadline, f"no {what} within {WAIT_SECONDS} s: {statuses}"
            time.sleep(0.05)

    def stop(self) -> list[Answer]:
        self._stopping.set()
        try:
            for client in self._clients:
                client.result(timeout=8 * ANSWER_BOUND_SECONDS)
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)
        return self.answers()


def first_200(d: Deployment, replica: BrokerProcess, timeout: float) -> Answer:
    """Ask ``replica`` directly until it issues; only 503s may come before."""
    deadline = time.monotonic() + timeout
    while (answer := issue_at(d, replica.url)).status != 200:
        assert_unavailable(answer)
        assert time.monotonic() < deadline, f"{replica.url} still 503 after {timeout} s"
        time.sleep(0.2)
    return answer


def readiness(replica: BrokerProcess) -> tuple[int, dict[str, Any]]:
    response = httpx.get(replica.url + "/readyz", timeout=10)
    document: dict[str, Any] = response.json()
    return response.status_code, document


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server this test may stop; stopped and deleted however the test ends."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_stopped_under_three_replicas_then_started_again(
    own_postgres: PostgresServer, redis_url: str, prefix: str, tmp_path: Path, mode: StopMode
) -> None:
    """``pg_ctl stop`` mid-load, then ``pg_ctl start`` on the same port: 200 or 503 with
    Retry-After only, each within the store's bounds; 503 alone while the server is down;
    each replica issues again without a restart; one record per credential handed out."""
    storage = own_postgres.create_database("deputy")
    upgrade(storage)

    def mutate(doc: dict[str, Any]) -> None:
        doc["storage"] = storage
        doc["counters"] = redis_url
        doc["counters_prefix"] = prefix

    d = write_deployment(tmp_path, mutate)
    with replicas_behind_nginx(d, tmp_path) as (replicas, balanced):
        load = Load(d, balanced)
        try:
            load.wait_for("20 credentials", lambda a: sum(x.status == 200 for x in a) >= 20)
            own_postgres.stop(mode)
            stopped = time.monotonic()
            # Each replica, asked directly: 503 with Retry-After, and not ready.
            probes = [issue_at(d, r.url) for r in replicas]
            for probe in probes:
                assert_unavailable(probe)
            for replica in replicas:
                status, ready = readiness(replica)
                assert status == 503 and "audit_store" in ready["not_ready"], ready
            load.wait_for(
                "30 answers and 2 s while stopped",
                lambda a: (
                    sum(x.sent > stopped for x in a) >= 30 and time.monotonic() - stopped >= 2
                ),
            )
            restarting = time.monotonic()
            own_postgres.start()
            # Each replica on its own, asked directly (not through the balancer): 200 again.
            recovered = [first_200(d, r, RECOVERY_SECONDS) for r in replicas]
            for replica in replicas:
                status, ready = readiness(replica)
                assert status == 200, ready
            started = time.monotonic()
            load.wait_for(
                "20 credentials after the restart",
                lambda a: sum(x.status == 200 and x.sent > started for x in a) >= 20,
            )
        finally:
            answers = load.stop()

    statuses = Counter(a.status for a in answers)
    assert set(statuses) <= {200, 503}, statuses
    for answer in answers:
        if answer.status == 503:
            assert_unavailable(answer)
    slowest = max(a.took for a in answers)
    assert slowest < ANSWER_BOUND_SECONDS, f"an answer took {slowest:.1f} s"
    # Asked and answered while the server was down: refused, every one.
    while_down = [a for a in answers if a.sent > stopped and a.sent + a.took < restarting]
    assert len(while_down) >= 30 and {a.status for a in while_down} == {503}

    handed_out = [jti_of(a.body["access_token"]) for a in [*answers, *recovered] if a.status == 200]
    assert len(set(handed_out)) == len(handed_out)
    recorded = credential_ids(verified_records(d))
    assert {jti: recorded[jti] for jti in handed_out if recorded[jti] != 1} == {}
    # A record whose credential never left can only be one of a commit cut off by the stop
    # (its outcome unknown to the replica, which answered 503).
    assert len(set(recorded) - set(handed_out)) <= statuses[503] + len(probes)
