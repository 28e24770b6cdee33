"""Faults under three `deputy serve` replicas behind nginx, sharing PostgreSQL and Redis.

PostgreSQL itself (a server of the test's own) is stopped mid-load and started again: clients
see only 200 or 503 with Retry-After, within the store's bounds; every replica answers 200
again on its own; every credential handed out has exactly one record and the chains verify.

The user IdP's JWKS endpoint goes down: every replica keeps issuing on its cached keys, an
unknown kid is refused without a storm of fetches, past the configured staleness bound the
IdP's users get 503 (other issuers' requests still 200), and its return ends the outage.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from deputy.clock import SystemClock
from deputy.devtools.broker_process import BrokerProcess
from deputy.devtools.signer import LocalIdp
from deputy.store.postgres import upgrade
from deputy.store.postgres.connect import Timeouts
from tests.integration.deployment import Deployment, write_deployment
from tests.integration.scrape import sample, samples
from tests.postgres.cluster import (
    REPLICAS,
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


STALENESS_SECONDS = 60  # jwks.max_staleness_seconds: the smallest the configuration allows
REFETCH_SECONDS = 30  # at most one fetch of an issuer's keys per 30 s, per replica


class _JwksHandler(BaseHTTPRequestHandler):
    server: _JwksServer

    def do_GET(self) -> None:
        if self.path != "/jwks.json":
            self.send_error(404)
            return
        body = self.server.endpoint.answer()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _JwksServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, endpoint: JwksEndpoint) -> None:
        super().__init__(("127.0.0.1", port), _JwksHandler)
        self.endpoint = endpoint


class JwksEndpoint:
    """An IdP's JWKS over HTTP on loopback; down, its port refuses connections; up again, it
    serves on the same port. Counts the fetches it answered."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.fetches = 0
        self._lock = threading.Lock()
        self._server: _JwksServer | None = _JwksServer(0, self)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/jwks.json"
        self._thread = self._serve(self._server)

    def answer(self) -> bytes:
        with self._lock:
            self.fetches += 1
            return json.dumps(self.document).encode()

    def _serve(self, server: _JwksServer) -> threading.Thread:
        thread = threading.Thread(target=server.serve_forever, name="jwks", daemon=True)
        thread.start()
        return thread

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = None

    def up(self) -> None:
        if self._server is None:
            self._server = _JwksServer(self.port, self)
            self._thread = self._serve(self._server)


@pytest.fixture
def jwks_endpoint() -> Iterator[JwksEndpoint]:
    endpoint = JwksEndpoint()
    try:
        yield endpoint
    finally:
        endpoint.down()


def issue_asserted(d: Deployment, replica: BrokerProcess) -> httpx.Response:
    """The billing agent names its user itself (`asserted`): no user IdP is involved."""
    body = {"agent_id": "billing-1", "user_id": "u", "tools": ["customer_data_api"]}
    headers = {"Authorization": f"Bearer {d.svid('/agents/billing')}"}
    return httpx.post(replica.url + "/issue", json=body, headers=headers, timeout=60)


def failed_fetches(replica: BrokerProcess) -> int:
    """Failed key-set fetches since the replica started (only the IdP's URL can fail here)."""
    text = httpx.get(replica.url + "/metrics", timeout=10).text
    found = sample(samples(text), "deputy_key_set_fetches_total", result="error")
    assert found is not None
    return int(found)


def fetches_allowed(since: float) -> int:
    """Fetches one replica may have tried since ``since``: one per refetch interval."""
    return int((time.monotonic() - since) // REFETCH_SECONDS)


def test_idp_jwks_down_under_three_replicas(
    jwks_endpoint: JwksEndpoint, pg_url: str, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    """The user IdP's JWKS endpoint refuses connections: cached keys serve every replica up
    to the staleness bound, an unknown kid is a 400 costing at most one fetch per 30 s, past
    the bound that IdP's users get 503 with Retry-After (and nobody else), and when the
    endpoint is back each replica issues again on its own."""
    endpoint = jwks_endpoint

    def mutate(doc: dict[str, Any]) -> None:
        doc["users"][0]["jwks"] = endpoint.url
        doc["jwks"] = {"max_staleness_seconds": STALENESS_SECONDS}
        doc["metrics"] = {"enabled": True}
        doc["storage"] = pg_url
        doc["counters"] = redis_url
        doc["counters_prefix"] = prefix

    d = write_deployment(tmp_path, mutate)
    endpoint.document = d.idp.jwks()
    # The same issuer and audience, signing with a key the IdP never published.
    stranger = LocalIdp(SystemClock(), d.idp.issuer, d.idp.audience, d.idp.tier_claim)
    answers: list[Answer] = []
    asserted: list[httpx.Response] = []

    def ask(url: str, idp: LocalIdp | None = None) -> Answer:
        answers.append(issue_at(d, url, idp))
        return answers[-1]

    def assert_unknown_kid_refused(replica: BrokerProcess) -> None:
        answer = ask(replica.url, stranger)
        assert answer.status == 400, answer
        assert answer.body["error"] == "invalid_request"
        assert answer.body["error_description"] == "subject_token rejected: unknown key id"

    with replicas_behind_nginx(d, tmp_path) as (replicas, balanced):
        assert endpoint.fetches == REPLICAS  # each fetched the keys once, at start
        # Past each replica's refetch interval, one request each refreshes its keys: from
        # here on every replica's keys are as old as these requests.
        time.sleep(REFETCH_SECONDS + 1)
        refreshes = [ask(r.url) for r in replicas]
        assert [a.status for a in refreshes] == [200] * REPLICAS
        assert endpoint.fetches == 2 * REPLICAS
        refreshed = [a.sent for a in refreshes]  # each replica's keys: fetched after this
        fresh_until = [a.sent + a.took + STALENESS_SECONDS for a in refreshes]  # stale after
        endpoint.down()

        # Within the refetch interval: cached keys issue, unknown kids get 400, no fetch.
        for replica in replicas:
            assert ask(replica.url).status == 200
            for _ in range(5):
                assert_unknown_kid_refused(replica)
        assert [ask(balanced).status for _ in range(6)] == [200] * 6
        for replica, since in zip(replicas, refreshed, strict=True):
            assert failed_fetches(replica) <= fetches_allowed(since)

        # Past it, a flood of unknown kids costs each replica one failed fetch, not ten.
        time.sleep(max(0.0, refreshed[-1] + REFETCH_SECONDS + 1 - time.monotonic()))
        for replica, since in zip(replicas, refreshed, strict=True):
            for _ in range(10):
                assert_unknown_kid_refused(replica)
            assert ask(replica.url).status == 200
            assert 1 <= failed_fetches(replica) <= fetches_allowed(since)

        # Past the staleness bound each replica fails closed, for this IdP's users only:
        # 503 with Retry-After; never a 200 on keys older than the bound.
        for replica, since, until in zip(replicas, refreshed, fresh_until, strict=True):
            while (answer := ask(replica.url)).status == 200:
                assert answer.sent <= until, f"{replica.url} issued on keys past the bound"
                time.sleep(0.2)
            assert_unavailable(answer)
            assert answer.retry_after == "1"
            assert answer.sent + answer.took >= since + STALENESS_SECONDS
            assert_unavailable(ask(replica.url, stranger))  # no key set: 503, not a 400
            asserted.append(issue_asserted(d, replica))
            assert asserted[-1].status_code == 200, asserted[-1].text
            assert failed_fetches(replica) <= fetches_allowed(since)
        for _ in range(6):
            assert_unavailable(ask(balanced))

        # The endpoint back: each replica, asked directly, issues again within its next
        # refetch interval, without a restart.
        fetched_before, back = endpoint.fetches, time.monotonic()
        endpoint.up()
        for replica in replicas:
            deadline = time.monotonic() + REFETCH_SECONDS + 30
            while (answer := ask(replica.url)).status != 200:
                assert_unavailable(answer)
                assert time.monotonic() < deadline, f"{replica.url} still 503 with keys back"
                time.sleep(0.2)
        refetched = endpoint.fetches - fetched_before
        assert REPLICAS <= refetched <= REPLICAS * (1 + fetches_allowed(back))
        assert [ask(balanced).status for _ in range(6)] == [200] * 6

    # One record per decision (the 400s and 503s too), one per credential handed out.
    records = verified_records(d)
    statuses = Counter(a.status for a in answers) + Counter(r.status_code for r in asserted)
    assert Counter(r["status"] for r in records) == statuses
    recorded = credential_ids(records)
    handed_out = [jti_of(a.body["access_token"]) for a in answers if a.status == 200]
    handed_out += [
        jti_of(c["access_token"]) for r in asserted for c in r.json()["credentials"].values()
    ]
    assert sorted(recorded.elements()) == sorted(handed_out)
