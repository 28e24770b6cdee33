"""A stop under load: a broker (or its workers) must finish what it has started, then exit.

:func:`stop_under_load` keeps four clients issuing, opens one slow request (headers sent,
body held back), sends SIGTERM (or SIGINT), waits until the socket refuses, then lets the
slow request finish and collects what every client saw. The caller asserts what its broker
promises.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from deputy.devtools.broker_process import BrokerProcess
from tests.integration.deployment import Deployment

DEADLINE_SECONDS = 20.0
LOAD_THREADS = 4
LOADED_AFTER = 40  # answers before the stop comes


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    """Bytes received until ``marker`` has arrived or the peer closed the connection."""
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def read_to_end(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def wait_until_refused(port: int) -> None:
    """Bounded polling until the listening socket is closed: the shutdown has begun."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return
        time.sleep(0.02)
    raise AssertionError("the broker kept accepting connections after SIGTERM")


@dataclass
class Drained:
    """What the clients saw around a SIGTERM, and how the broker ended."""

    statuses: list[int] = field(default_factory=list)  # of the load's answers
    tokens: list[str] = field(default_factory=list)  # every credential the load was handed
    slow_head: bytes = b""  # the slow request's answer: status line and headers
    slow_body: dict[str, Any] = field(default_factory=dict)
    exit_status: int | None = None


def stop_under_load(d: Deployment, broker: BrokerProcess, signum: int = signal.SIGTERM) -> Drained:
    """Stop ``broker`` with ``signum`` while clients issue and one request is under way;
    what they saw."""
    svid, alice = d.svid(), d.idp.user_token("alice", "pro")
    body = {"agent_id": "a", "user_token": alice, "tools": ["pricing_api"]}
    seen = Drained()
    lock = threading.Lock()
    loaded = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=broker.url, timeout=30) as http:
            while True:
                try:
                    r = http.post("/issue", json=body, headers={"Authorization": f"Bearer {svid}"})
                except httpx.TransportError:
                    return  # the broker stopped taking requests
                with lock:
                    seen.statuses.append(r.status_code)
                    if r.status_code == 200:
                        credentials = r.json()["credentials"].values()
                        seen.tokens.extend(c["access_token"] for c in credentials)
                    if len(seen.statuses) >= LOADED_AFTER:
                        loaded.set()

    threads = [threading.Thread(target=load) for _ in range(LOAD_THREADS)]
    for t in threads:
        t.start()
    assert loaded.wait(timeout=60)

    # A slow client: headers sent, the app is reading the body (uvicorn says 100 Continue).
    payload = json.dumps(body).encode()
    slow = socket.create_connection(("127.0.0.1", broker.port), timeout=30)
    slow.sendall(
        (
            f"POST /issue HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {svid}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            "X-Request-ID: slow-1\r\nExpect: 100-continue\r\n\r\n"
        ).encode()
    )
    assert read_until(slow, b"\r\n\r\n").startswith(b"HTTP/1.1 100 Continue")

    broker.send(signum)
    wait_until_refused(broker.port)  # stopped accepting...
    slow.sendall(payload)  # ...yet the request under way still completes
    answer = read_to_end(slow)  # the broker closes the connection after this last answer
    slow.close()
    for t in threads:
        t.join(timeout=60)
    seen.exit_status = broker.wait(timeout=60)
    seen.slow_head, _, body_bytes = answer.partition(b"\r\n\r\n")
    assert seen.slow_head.startswith(b"HTTP/1.1 200"), answer
    seen.slow_body = json.loads(body_bytes)
    return seen
