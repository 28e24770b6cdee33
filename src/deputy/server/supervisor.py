"""``deputy serve --workers N``: one listening socket, N broker processes serving on it.

The parent binds the socket once, starts the workers (:mod:`deputy.server.worker`), closes
its own copy of the socket and from then on only relays signals and watches its workers:

* SIGTERM or SIGINT: every worker is sent SIGTERM and drains (stops accepting, finishes the
  requests under way, commits their records). The parent exits 0 once every worker has
  stopped cleanly, 1 otherwise. A second SIGINT is passed on as SIGINT: the workers cancel
  the requests under way at once, as a single broker does.
* SIGHUP: passed to every worker; each reloads the policy from the config file.
* A worker that ends without being asked to (a crash, the OOM killer): the others are
  stopped gracefully and the parent exits 1, for the service manager to restart the broker.
  Workers are not restarted in place: a worker that keeps dying should be seen, not hidden
  behind a restart loop, and a broker at reduced capacity should not look healthy.

Each worker runs in a process group of its own, so a terminal's Ctrl-C reaches only the
parent, which passes one stop on. Each holds the read end of a pipe whose write end only the
parent has: if the parent is killed outright, the workers see the pipe close and stop.

More than one worker needs shared state (``storage: postgresql://``, ``counters: redis://``):
SQLite has one writer, and in-memory counters are per process, so N workers on them would
multiply every rate limit by N. :func:`check_workers` refuses that before anything starts.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from deputy.config.settings import Settings
from deputy.errors import ConfigError

BACKLOG = 2048  # uvicorn's default
WATCH_INTERVAL_SECONDS = 1.0  # a backstop: signals (SIGCHLD included) wake the parent at once
WATCHED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)  # SIGCHLD: a worker ended

_log = logging.getLogger(__name__)


def check_workers(settings: Settings, workers: int) -> None:
    """Refuse ``workers`` processes on state they could not share (ConfigError)."""
    problem = settings.unshared_state(workers)
    if problem is not None:
        raise ConfigError(problem)


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host``:``port``, to be shared by the workers."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )[0]
    # The protocol named explicitly: asyncio turns Nagle off only on sockets that say TCP.
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


@dataclass
class _Worker:
    number: int
    process: subprocess.Popen[bytes]
    status: int | None = None


class Supervisor:
    """Starts ``count`` workers on ``sock`` and watches them until they have all ended."""

    def __init__(self, config: Path, sock: socket.socket, count: int) -> None:
        self._config = config
        self._sock = sock
        self._count = count
        self._workers: list[_Worker] = []
        self._signals: collections.deque[int] = collections.deque()
        self._stopping = False
        self._failed = False

    def run(self) -> int:
        """Serve until stopped; the exit status (0: every worker stopped cleanly when asked)."""
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        lifeline_r, lifeline_w = os.pipe()
        previous_wakeup = signal.set_wakeup_fd(wake_w)
        previous = {s: signal.signal(s, self._received) for s in WATCHED}
        try:
            try:
                self._start(lifeline_r)
            finally:
                os.close(lifeline_r)
                self._sock.close()  # the workers hold it now; closed by all, it refuses
            while any(w.status is None for w in self._workers):
                select.select([wake_r], [], [], WATCH_INTERVAL_SECONDS)
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 512):
                        pass
                self._relay()
                self._reap()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            signal.set_wakeup_fd(previous_wakeup)
            for fd in (wake_r, wake_w, lifeline_w):
                os.close(fd)  # lifeline_w: any worker still running sees its parent gone
        # A worker stopped before it had taken its signals dies of the SIGTERM it was sent:
        # it had served nothing, so that too is a clean stop.
        clean = not self._failed and all(w.status in (0, -signal.SIGTERM) for w in self._workers)
        _log.info("workers stopped", extra={"clean": clean})
        return 0 if clean else 1

    def _received(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)

    def _start(self, lifeline: int) -> None:
        fd = self._sock.fileno()
        for number in range(1, self._count + 1):
            command = [sys.executable, "-m", "deputy.server.worker", "--config", str(self._config)]
            command += ["--listen-fd", str(fd), "--lifeline-fd", str(lifeline)]
            process = subprocess.Popen(command, pass_fds=(fd, lifeline), process_group=0)
            self._workers.append(_Worker(number, process))
            _log.info("worker started", extra={"worker": number, "pid": process.pid})

    def _send(self, signum: int) -> None:
        for w in self._workers:
            if w.status is None:
                w.process.send_signal(signum)

    def _stop(self) -> None:
        self._stopping = True
        self._send(signal.SIGTERM)

    def _relay(self) -> None:
        while self._signals:
            signum = self._signals.popleft()
            if signum in (signal.SIGTERM, signal.SIGINT):
                if not self._stopping:
                    _log.info("stopping workers", extra={"signal": signal.Signals(signum).name})
                    self._stop()
                elif signum == signal.SIGINT:
                    self._send(signal.SIGINT)  # a second Ctrl-C: cancel what is under way
            elif signum == signal.SIGHUP and not self._stopping:
                _log.info("reloading workers", extra={"workers": self._count})
                self._send(signal.SIGHUP)

    def _reap(self) -> None:
        for w in self._workers:
            if w.status is not None:
                continue
            status = w.process.poll()
            if status is None:
                continue
            w.status = status
            fields = {"worker": w.number, "pid": w.process.pid, "status": status}
            if self._stopping:
                _log.info("worker stopped", extra=fields)
            else:
                _log.error("worker ended unexpectedly; stopping the others", extra=fields)
                self._failed = True
                self._stop()
