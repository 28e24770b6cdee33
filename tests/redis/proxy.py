"""A TCP relay on loopback in front of Redis that a test can slow down, take down, bring back.

``delay`` holds every chunk of bytes, in both directions, that long before passing it on: a
Redis that answers, but late (an overloaded server, a congested link). ``down()`` closes the
listener and every relayed connection, so clients see resets and refused connections: what
they see when Redis stops; ``up()`` listens again on the same port.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import struct
import threading
import time

_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER 0: close with a reset, as a crash would
_STOP = b""


class _Pipe:
    """One direction of one relayed connection: read, hold for the delay, then send."""

    def __init__(self, proxy: DelayProxy, source: socket.socket, sink: socket.socket) -> None:
        self._proxy = proxy
        self._source = source
        self._sink = sink
        self._queue: queue.Queue[tuple[float, bytes]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._send, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self._source.recv(65536)
            except OSError:
                data = _STOP
            self._queue.put((time.monotonic() + self._proxy.delay, data))
            if not data:
                return

    def _send(self) -> None:
        while True:
            due, data = self._queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if not data:
                self._proxy.drop(self._source, self._sink)
                return
            try:
                self._sink.sendall(data)
            except OSError:
                self._proxy.drop(self._source, self._sink)
                return


class DelayProxy:
    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 6379)) -> None:
        self._target = target
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.delay = 0.0
        self.db = 0  # the database number ``url`` names
        self.port = 0
        self.accepted = 0
        self.up()

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/{self.db}"

    def up(self) -> None:
        """Accept connections (again, on the same port)."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Refuse new connections and reset every open one."""
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, set()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for sock in sockets:
            _reset(sock)

    close = down

    def drop(self, *socks: socket.socket) -> None:
        with self._lock:
            for sock in socks:
                self._sockets.discard(sock)
        for sock in socks:
            _reset(sock)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed
            try:
                upstream = socket.create_connection(self._target, timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    _reset(client)
                    _reset(upstream)
                    return
                self._sockets.update((client, upstream))
                self.accepted += 1
            _Pipe(self, client, upstream)
            _Pipe(self, upstream, client)


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
