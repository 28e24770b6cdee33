"""An ASGI app under uvicorn on a loopback port, in a thread (tests, examples)."""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from typing import Any

import uvicorn


def listening_socket() -> socket.socket:
    """A socket listening on 127.0.0.1: its URL is known before anything serves on it."""
    # The protocol named explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets
    # whose proto says TCP, and without it every keep-alive response waits on a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def base_url(sock: socket.socket) -> str:
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


class LoopbackServer:
    """``app`` served on ``sock`` (a fresh listening socket by default), as a context manager.

    The socket listens before the server starts, so a client connecting early waits in the
    backlog until the app (and its lifespan) has started: no polling for readiness.
    """

    def __init__(
        self, app: Any, *, sock: socket.socket | None = None, name: str = "asgi", **options: Any
    ) -> None:
        self._sock = sock or listening_socket()
        self.url = base_url(self._sock)
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="on", **options
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        self._server.run(sockets=[self._sock])  # with the event loop `deputy serve` uses

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()
