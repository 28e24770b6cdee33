"""SIGKILL under load: every credential a client received has a committed audit record."""

from __future__ import annotations

import contextlib
import threading
import time
from contextlib import closing
from pathlib import Path

import httpx
import jwt as pyjwt

from deputy.audit.log import AuditFilter
from deputy.devtools.broker_process import BrokerProcess
from deputy.store.audit_store import open_reader
from tests.integration.deployment import Deployment, write_deployment

WRITER_EXIT_TIMEOUT_SECONDS = 30.0


def wait_for_writer_exit(d: Deployment) -> None:
    """The broker's audit writer finishes what it was sent once its parent is gone (SQLite:
    a process whose command line names the data dir; PostgreSQL has none to wait for)."""
    marker = str(d.settings.data_dir).encode()
    deadline = time.monotonic() + WRITER_EXIT_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        alive = False
        for proc in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes():
                    alive = True
        if not alive:
            return
        time.sleep(0.05)
    raise AssertionError("the audit writer did not exit after its broker was killed")


def test_sigkill_under_load_loses_no_record(tmp_path: Path) -> None:
    d = write_deployment(tmp_path)
    broker = BrokerProcess(d.config_path).start()
    url = f"{broker.url}/issue"
    svid, user = d.svid(), d.idp.user_token("alice", "pro")
    body = {"agent_id": "a", "user_token": user, "tools": ["pricing_api"]}
    received: list[str] = []
    lock = threading.Lock()
    enough = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=10) as http:
            while True:
                try:
                    r = http.post(url, json=body, headers={"Authorization": f"Bearer {svid}"})
                except httpx.TransportError:
                    return  # the broker is gone
                assert r.status_code == 200, r.text
                with lock:
                    received.extend(c["access_token"] for c in r.json()["credentials"].values())
                    if len(received) >= 300:
                        enough.set()

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    assert enough.wait(timeout=120)
    broker.kill()
    for t in threads:
        t.join(timeout=30)
    wait_for_writer_exit(d)

    jtis = {pyjwt.decode(t, options={"verify_signature": False})["jti"] for t in received}
    with closing(open_reader(d.settings)) as log:
        missing = [j for j in jtis if not list(log.query(AuditFilter(jti=j, limit=1)))]
        report = log.verify()
        assert missing == []
        assert report.ok, report.problem
        assert report.records >= len(jtis)

        # a restart carries on the log
        with BrokerProcess(d.config_path, broker.port):
            r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {svid}"})
            assert r.status_code == 200
        after = log.verify()
        assert after.ok and after.records == report.records + 1
