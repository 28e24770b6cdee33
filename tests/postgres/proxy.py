"""A TCP relay in front of PostgreSQL that a test can take down, bring back, or freeze.

Taking it down closes every relayed connection and refuses new ones: what clients see when
PostgreSQL restarts. Freezing keeps every connection open and relays nothing: a server that
accepts bytes and never answers (a stopped process, a hung host).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading

_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER 0: close with a reset, as a crash would


class Proxy:
    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432)) -> None:
        self._target = target
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._peers: dict[socket.socket, socket.socket] = {}
        self._frozen = False
        self._closed = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._listener: socket.socket | None = None
        self.port = 0
        self.up()
        self._thread = threading.Thread(target=self._run, name="pg-proxy", daemon=True)
        self._thread.start()

    def url(self, database_url: str) -> str:
        from sqlalchemy.engine import make_url

        return (
            make_url(database_url)
            .set(host="127.0.0.1", port=self.port)
            .render_as_string(hide_password=False)
        )

    def up(self) -> None:
        """Accept connections (again, on the same port)."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener
            self._selector.register(listener, selectors.EVENT_READ)
        self._wake()

    def down(self) -> None:
        """Refuse new connections and drop every open one."""
        with self._lock:
            if self._listener is not None:
                self._selector.unregister(self._listener)
                self._listener.close()
                self._listener = None
            for sock in list(self._peers):
                self._drop(sock)
        self._wake()

    def freeze(self) -> None:
        """Relay nothing more (connections stay open, bytes wait unread)."""
        with self._lock:
            self._frozen = True
            for sock in self._peers:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sock)
        self._wake()

    def thaw(self) -> None:
        with self._lock:
            self._frozen = False
            for sock in self._peers:
                self._selector.register(sock, selectors.EVENT_READ)
        self._wake()

    def close(self) -> None:
        self.down()
        with self._lock:
            self._closed = True
        self._wake()
        self._thread.join()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _drop(self, sock: socket.socket) -> None:
        peer = self._peers.pop(sock, None)
        for s in (sock, peer):
            if s is None:
                continue
            self._peers.pop(s, None)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(s)
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
            s.close()

    def _run(self) -> None:
        while True:
            events = self._selector.select(timeout=0.05)
            with self._lock:
                if self._closed:
                    return
                for key, _ in events:
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._wake_r:
                        with contextlib.suppress(OSError):
                            sock.recv(4096)
                    elif sock is self._listener:
                        self._accept(sock)
                    elif sock in self._peers and not self._frozen:
                        self._relay(sock)

    def _accept(self, listener: socket.socket) -> None:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        try:
            upstream = socket.create_connection(self._target, timeout=2)
        except OSError:
            client.close()
            return
        for s in (client, upstream):
            s.setblocking(True)
            if not self._frozen:
                self._selector.register(s, selectors.EVENT_READ)
        self._peers[client] = upstream
        self._peers[upstream] = client

    def _relay(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        peer = self._peers.get(sock)
        if not data or peer is None:
            self._drop(sock)
            return
        try:
            peer.sendall(data)
        except OSError:
            self._drop(sock)
