"""A PostgreSQL server of a test's own: initdb into a fresh directory, pg_ctl start and stop.

Unlike the shared server (``conftest.ADMIN_URL``), this one can really be stopped and started
again on the same port while brokers hold connections to it. PostgreSQL refuses to run as
root, so under root every command runs as the ``postgres`` OS user (``runuser``), in a
directory that user owns.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

import psycopg

from deputy.devtools.broker_process import free_port

SERVER_USER = "postgres"
START_TIMEOUT_SECONDS = 60
StopMode = Literal["smart", "fast", "immediate"]


def _bin_dir() -> Path:
    """The newest installed server's binaries (Debian keeps them out of PATH)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.parent.name)],
    )
    if found:
        return found[-1].parent
    on_path = shutil.which("pg_ctl")
    if on_path is None:
        raise RuntimeError("the PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    return Path(on_path).parent


class PostgresServer:
    """A throwaway database cluster on a free loopback port, trust auth, fsync off.

    fsync is off because the host never crashes here, only the server process: WAL the
    server wrote survives ``pg_ctl stop -m immediate`` in the page cache, as it would a
    SIGKILL.
    """

    def __init__(self) -> None:
        self._bin = _bin_dir()
        self._as_server_user = os.geteuid() == 0
        self.directory = Path(tempfile.mkdtemp(prefix="deputy-pg-"))
        if self._as_server_user:
            shutil.chown(self.directory, SERVER_USER, SERVER_USER)
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"
        self.port = free_port()
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        """Start (or start again, on the same port) and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
            "-w", "-t", str(START_TIMEOUT_SECONDS), "start",
        )  # fmt: skip

    def stop(self, mode: StopMode = "fast") -> None:
        """``fast`` ends every session and shuts down cleanly; ``immediate`` aborts (crash
        recovery at the next start)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def create_database(self, name: str) -> str:
        """A new, empty database on this server; its URL."""
        with psycopg.connect(self.admin_url, connect_timeout=5, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def destroy(self) -> None:
        """Stop the server if it runs (aborting sessions) and delete its directory."""
        try:
            if self.running:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self._bin / tool), *args]
        if self._as_server_user:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(
                f"{tool} {' '.join(args)} exited {done.returncode}:\n"
                f"{done.stdout}{done.stderr}{log[-4000:]}"
            )
