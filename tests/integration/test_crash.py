"""SIGKILL under load: every credential a client received has a committed audit record."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from deputy.audit.log import AuditFilter
from deputy.store.sqlite.audit_reader import open_audit_reader
from tests.integration.deployment import Deployment, write_deployment

READY_TIMEOUT_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start(d: Deployment, port: int) -> subprocess.Popen[bytes]:
    log = d.directory / "broker.log"
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "deputy",
                "serve",
                "--config",
                str(d.config_path),
                "--port",
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"broker did not start: {log.read_text()}")


def wait_for_writer_exit(d: Deployment) -> None:
    """The broker's audit writer finishes what it was sent once its parent is gone."""
    marker = str(d.settings.data_dir).encode()
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
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
    port = free_port()
    proc = start(d, port)
    url = f"http://127.0.0.1:{port}/issue"
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
                if r.status_code == 200:
                    creds = r.json()["credentials"]
                    with lock:
                        received.extend(c["access_token"] for c in creds.values())
                        if len(received) >= 300:
                            enough.set()
                elif r.status_code != 429:
                    raise AssertionError(r.text)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    assert enough.wait(timeout=120)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for t in threads:
        t.join(timeout=30)
    wait_for_writer_exit(d)

    import jwt as pyjwt

    jtis = {pyjwt.decode(t, options={"verify_signature": False})["jti"] for t in received}
    log = open_audit_reader(d.settings.data_dir)
    missing = [j for j in jtis if not list(log.query(AuditFilter(jti=j, limit=1)))]
    report = log.verify()
    assert missing == []
    assert report.ok, report.problem
    assert report.records >= len(jtis) // 2

    # a restart carries on the same chain
    proc = start(d, port)
    try:
        r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {svid}"})
        assert r.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    after = log.verify()
    assert after.ok and after.records == report.records + 1
