"""`deputy serve` with two worker processes on one port, over PostgreSQL and Redis.

Which worker served a request is read from the audit store: every worker appends to a chain
of its own, registered in ``chain_registry`` with the pid of the process that writes it.
Requests are spread over both workers by keeping connections open to each (the kernel hands
each new connection to whichever worker accepts first).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import psycopg
import pytest
import yaml

from deputy.devtools.broker_process import BrokerProcess
from deputy.oauth.endpoints import JWKS_PATH
from deputy.store.audit_store import open_reader
from tests.integration.deployment import Deployment, write_deployment
from tests.integration.drain import stop_under_load, wait_until_refused
from tests.redis.conftest import prefix as prefix  # the fixtures, for the workers
from tests.redis.conftest import redis_url as redis_url

WORKERS = 2
PER_WORKER = 4  # connections held open to each worker
DEADLINE_SECONDS = 30.0
TICKETING_LIMIT = 20  # the example's daily ticketing limit per user


class Workers:
    """A broker started with ``server.workers: 2``, on a fresh database and Redis prefix."""

    def __init__(self, d: Deployment, pg_url: str, broker: BrokerProcess) -> None:
        self.d, self.pg_url, self.broker = d, pg_url, broker

    def log(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.broker.log.read_text().splitlines()]

    def wait_for_log(self, message: str, count: int) -> None:
        """Bounded polling until ``message`` has been logged ``count`` times (once a worker)."""
        deadline = time.monotonic() + DEADLINE_SECONDS
        while time.monotonic() < deadline:
            if sum(line["message"] == message for line in self.log()) >= count:
                return
            time.sleep(0.05)
        raise AssertionError(f"{message!r} not logged {count} times")

    def worker_pids(self) -> set[int]:
        return {line["pid"] for line in self.log() if line["message"] == "worker started"}

    def chain_pids(self) -> dict[int, int]:
        """Each audit chain and the pid of the worker that appends to it."""
        rows = self.sql("SELECT chain, body FROM chain_registry WHERE event = 'register'")
        return {int(chain): int(json.loads(str(body))["pid"]) for chain, body in rows}

    def pid_of(self, token: str) -> int:
        """The worker that issued ``token``: its record's chain, and that chain's pid."""
        jti = pyjwt.decode(token, options={"verify_signature": False})["jti"]
        ((chain,),) = self.sql(
            "SELECT r.chain FROM credentials c JOIN records r ON r.id = c.record_id "
            "WHERE c.jti = %s",
            jti,
        )
        return self.chain_pids()[int(str(chain))]

    def pids_for_user(self, user: str) -> set[int]:
        """The workers that decided ``user``'s requests, allowed or denied."""
        chains = self.chain_pids()
        rows = self.sql("SELECT DISTINCT chain FROM records WHERE user_id = %s", user)
        return {chains[int(str(chain))] for (chain,) in rows}

    def sql(self, statement: str, *params: object) -> list[tuple[object, ...]]:
        with psycopg.connect(self.pg_url, connect_timeout=3, autocommit=True) as conn:
            return list(conn.execute(statement.encode(), params))

    def issue(
        self, client: httpx.Client, user: str, tool: str, tier: str = "pro"
    ) -> httpx.Response:
        body = {"agent_id": "a", "user_token": self.d.idp.user_token(user, tier), "tools": [tool]}
        headers = {"Authorization": f"Bearer {self.d.svid()}"}
        return client.post("/issue", json=body, headers=headers)

    def connections(self) -> dict[int, list[httpx.Client]]:
        """Keep-alive clients, ``PER_WORKER`` to each worker (by pid), found by issuing."""
        found: dict[int, list[httpx.Client]] = {}
        probe = "probe"
        deadline = time.monotonic() + DEADLINE_SECONDS
        while time.monotonic() < deadline:
            if len(found) == WORKERS and all(len(c) >= PER_WORKER for c in found.values()):
                return found
            client = httpx.Client(base_url=self.broker.url, timeout=30)
            response = self.issue(client, probe, "pricing_api")
            assert response.status_code == 200, response.text
            token = response.json()["credentials"]["pricing_api"]["access_token"]
            found.setdefault(self.pid_of(token), []).append(client)
        raise AssertionError(f"connections reached only {sorted(found)}")


@pytest.fixture
def workers(tmp_path: Path, pg_url: str, redis_url: str, prefix: str) -> Iterator[Workers]:
    def mutate(doc: dict[str, Any]) -> None:
        doc.update(storage=pg_url, counters=redis_url, counters_prefix=prefix)
        doc["server"] = {"workers": WORKERS}

    d = write_deployment(tmp_path, mutate)
    broker = BrokerProcess(d.config_path).start()
    try:
        w = Workers(d, pg_url, broker)
        w.wait_for_log("broker ready", WORKERS)
        yield w
    finally:
        broker.stop()


def spread(
    clients: dict[int, list[httpx.Client]], count: int, call: Callable[[httpx.Client], int]
) -> list[int]:
    """``count`` calls, each thread on a connection of its own, threads on every worker."""
    pool = [c for cs in clients.values() for c in cs]
    share = [count // len(pool) + (i < count % len(pool)) for i in range(len(pool))]

    def run(i: int) -> list[int]:
        return [call(pool[i]) for _ in range(share[i])]

    with ThreadPoolExecutor(len(pool)) as executor:
        return [status for statuses in executor.map(run, range(len(pool))) for status in statuses]


def close(clients: dict[int, list[httpx.Client]]) -> None:
    for cs in clients.values():
        for c in cs:
            c.close()


def test_two_workers_serve_and_one_users_limit_is_exact_across_them(workers: Workers) -> None:
    pids = workers.worker_pids()
    assert len(pids) == WORKERS and workers.broker.pid not in pids
    clients = workers.connections()
    assert set(clients) == pids  # both workers answered, and only they did
    # Started together on an empty key store, they publish the one key set.
    published = [c.get(JWKS_PATH).json() for cs in clients.values() for c in cs]
    assert published[0]["keys"] and published.count(published[0]) == len(published)
    carol = "carol"

    statuses = spread(clients, 30, lambda c: workers.issue(c, carol, "ticketing_api").status_code)
    close(clients)

    assert sorted(statuses) == [200] * TICKETING_LIMIT + [429] * (30 - TICKETING_LIMIT)
    assert workers.pids_for_user(carol) == pids  # the limit held while both decided
    reader = open_reader(workers.d.settings)
    try:
        assert reader.verify().ok
    finally:
        reader.close()


def test_sighup_reloads_the_policy_in_every_worker(workers: Workers) -> None:
    bob = "bob"
    with httpx.Client(base_url=workers.broker.url, timeout=30) as client:
        assert workers.issue(client, bob, "pricing_api", "free").status_code == 403
    doc = yaml.safe_load(workers.d.config_path.read_text())
    doc["workflows"]["customer-support"]["tiers"].append("free")
    workers.d.config_path.write_text(yaml.safe_dump(doc))

    workers.broker.send(signal.SIGHUP)
    workers.wait_for_log("config reloaded", WORKERS)
    clients = workers.connections()
    statuses = spread(
        clients, 16, lambda c: workers.issue(c, bob, "pricing_api", "free").status_code
    )
    close(clients)

    assert statuses == [200] * 16
    assert workers.pids_for_user(bob) == workers.worker_pids()
    rows = workers.sql("SELECT outcome, body FROM records WHERE user_id = %s ORDER BY id", bob)
    versions = [(outcome, json.loads(str(body))["policy_version"]) for outcome, body in rows]
    assert [o for o, _ in versions] == ["deny"] + ["allow"] * 16
    assert len({v for _, v in versions[1:]}) == 1 and versions[0][1] != versions[1][1]
    reloaded = [line for line in workers.log() if line["message"] == "config reloaded"]
    assert len(reloaded) == WORKERS


def test_sigterm_drains_every_worker_and_exits_0(workers: Workers) -> None:
    d, broker = workers.d, workers.broker
    seen = stop_under_load(d, broker)
    tokens = [*seen.tokens, seen.slow_body["credentials"]["pricing_api"]["access_token"]]
    assert seen.exit_status == 0
    assert set(seen.statuses) == {200}
    assert {workers.pid_of(t) for t in tokens} <= workers.worker_pids()
    stopped = [line for line in workers.log() if line["message"] == "worker stopped"]
    assert sorted((line["pid"], line["status"]) for line in stopped) == sorted(
        (pid, 0) for pid in workers.worker_pids()
    )
    last = workers.log()[-1]
    assert (last["message"], last["clean"]) == ("workers stopped", True)
    reader = open_reader(d.settings)
    try:
        assert reader.verify().ok
    finally:
        reader.close()


def test_a_worker_that_dies_stops_the_other_and_the_broker_exits_1(workers: Workers) -> None:
    victim, survivor = sorted(workers.worker_pids())
    os.kill(victim, signal.SIGKILL)

    assert workers.broker.wait(timeout=60) == 1
    by_pid = {line.get("pid"): line for line in workers.log() if "status" in line}
    assert by_pid[victim]["message"] == "worker ended unexpectedly; stopping the others"
    assert by_pid[victim]["level"] == "error" and by_pid[victim]["status"] == -signal.SIGKILL
    assert by_pid[survivor]["message"] == "worker stopped" and by_pid[survivor]["status"] == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", workers.broker.port), timeout=5)


def test_workers_stop_when_their_parent_is_killed(workers: Workers) -> None:
    pids = workers.worker_pids()
    workers.broker.kill()  # SIGKILL: the parent cannot pass anything on

    wait_until_refused(workers.broker.port)
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline and any(running(pid) for pid in pids):
        time.sleep(0.05)
    assert not any(running(pid) for pid in pids)
    assert sum(line["message"] == "broker stopped" for line in workers.log()) == WORKERS


def running(pid: int) -> bool:
    """Whether ``pid`` is alive (an exited process not yet reaped by its new parent is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize(
    ("shared", "missing"),
    [((), "storage, counters"), (("storage",), "counters"), (("counters",), "storage")],
    ids=["sqlite-and-memory", "no-redis", "no-postgres"],
)
def test_more_than_one_worker_is_refused_without_shared_state(
    tmp_path: Path, pg_url: str, redis_url: str, shared: tuple[str, ...], missing: str
) -> None:
    urls = {"storage": pg_url, "counters": redis_url}
    d = write_deployment(tmp_path, lambda doc: doc.update({k: urls[k] for k in shared}))
    serve = [sys.executable, "-m", "deputy", "serve", "--config", str(d.config_path)]

    flag = subprocess.run([*serve, "--workers", "2"], capture_output=True, text=True, timeout=60)
    doc = yaml.safe_load(d.config_path.read_text())
    doc["server"] = {"workers": 3}
    d.config_path.write_text(yaml.safe_dump(doc))
    setting = subprocess.run(serve, capture_output=True, text=True, timeout=60)

    why = (
        "need `storage: postgresql://...` and `counters: redis://...` (not set: "
        f"{missing}): SQLite has one writer, and in-memory counters are per process, so "
        "every rate limit would be multiplied by"
    )
    assert flag.returncode == 2
    assert flag.stderr == f"error: 2 workers {why} 2\n"
    assert setting.returncode == 2
    assert f"server.workers: 3 workers {why} 3" in setting.stderr
    assert not (d.settings.data_dir / "audit.db").exists()  # nothing started
