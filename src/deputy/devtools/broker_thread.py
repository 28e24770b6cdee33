"""Run a broker on a loopback port in a background thread (demo and tests)."""

from __future__ import annotations

import time
from types import TracebackType

import httpx

from deputy.clock import Clock, SystemClock
from deputy.config.settings import Settings
from deputy.devtools.served import LoopbackServer
from deputy.server.app import create_app
from deputy.server.wiring import build_broker

STARTUP_TIMEOUT_SECONDS = 20.0


class BrokerThread:
    """A real broker over real HTTP on 127.0.0.1, as a context manager."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.clock = clock or SystemClock()
        self.broker = build_broker(settings, self.clock)
        self._server = LoopbackServer(create_app(self.broker, self.clock), name="deputy-broker")
        self.url = self._server.url
        self.port: int = int(self.url.rsplit(":", 1)[1])

    def __enter__(self) -> BrokerThread:
        self._server.__enter__()
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if not self._server.alive:
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
        self._server.__exit__(exc_type, exc, tb)
