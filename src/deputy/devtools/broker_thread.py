"""Run a broker on a loopback port in a background thread (demo and tests)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from types import TracebackType

import httpx
import uvicorn

from deputy.clock import Clock, SystemClock
from deputy.config.settings import Settings
from deputy.server.app import create_app
from deputy.server.wiring import build_broker

STARTUP_TIMEOUT_SECONDS = 20.0


class BrokerThread:
    """A real broker over real HTTP on 127.0.0.1, as a context manager."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.clock = clock or SystemClock()
        self.broker = build_broker(settings, self.clock)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(self.broker, self.clock), log_level="warning", access_log=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="deputy-broker", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._sock]))

    def __enter__(self) -> BrokerThread:
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if not self._thread.is_alive():
                break
            time.sleep(0.05)
        self.__exit__(None, None, None)
        raise RuntimeError("the broker did not become ready")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()
