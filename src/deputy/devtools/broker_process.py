"""`deputy serve` as a child process on a loopback port (benchmarks and crash tests)."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

READY_TIMEOUT_SECONDS = 30.0


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class BrokerProcess:
    """A broker process: started ready to serve, stopped gracefully or killed."""

    def __init__(
        self,
        config: Path,
        port: int | None = None,
        *,
        log: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.env = env  # the child's whole environment (None: this process's)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log or config.with_name("broker.log")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self, *python_args: str) -> BrokerProcess:
        """Start ``deputy serve`` (after ``python_args``, e.g. a profiler) and wait until ready."""
        command = [sys.executable, *python_args, "-m", "deputy", "serve"]
        command += ["--config", str(self.config), "--port", str(self.port)]
        with self.log.open("ab") as err:
            self._proc = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=err, env=self.env
            )
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline and self._proc.poll() is None:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"the broker did not start:\n{self.log.read_text()}")

    def send(self, signum: int) -> None:
        """Send a signal: SIGTERM stops gracefully, SIGHUP reloads the policy."""
        assert self._proc is not None
        self._proc.send_signal(signum)

    def wait(self, timeout: float = 60.0) -> int:
        """The exit status once the process has ended (negative: the signal that ended it)."""
        assert self._proc is not None
        return self._proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def stop(self, timeout: float = 60.0) -> None:
        """SIGINT: finish in-flight requests and let the audit writer commit, then exit."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            self._proc.wait(timeout=timeout)

    def __enter__(self) -> BrokerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
