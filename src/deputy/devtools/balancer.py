"""nginx in front of several brokers on loopback, for the replica tests and the scale bench.

Round robin over the brokers with keep-alive connections to them. A broker gone mid-request
(refused, reset, timed out) is answered as Deputy itself answers a dependency it cannot
reach: 503 ``temporarily_unavailable`` with ``Retry-After``, never nginx's 502 page. This is
what docs/deployment.md asks of a balancer; the paths are all under one directory.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx

from deputy.devtools.broker_process import free_port

START_SECONDS = 10.0
CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  upstream deputy {{
{servers}
    keepalive {keepalive};
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://deputy;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $remote_addr;
      # A replica gone mid-request: the client is told to retry, as Deputy itself would.
      proxy_intercept_errors off;
      error_page 502 504 =503 @unavailable;
    }}
    location @unavailable {{
      add_header Retry-After 1 always;
      default_type application/json;
      return 503 '{{"error":"temporarily_unavailable"}}';
    }}
  }}
}}
"""


def find_nginx() -> str:
    """The nginx binary; RuntimeError saying how to install it when there is none."""
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        raise RuntimeError("nginx is not installed: `make services` installs it (nginx-light)")
    return found


class Balancer:
    """nginx in the foreground over ``ports``, its files in ``directory`` (created)."""

    def __init__(self, directory: Path, ports: list[int], *, keepalive: int = 16) -> None:
        directory.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        servers = "\n".join(f"    server 127.0.0.1:{p} max_fails=0;" for p in ports)
        conf = directory / "nginx.conf"
        conf.write_text(
            CONF.format(dir=directory, servers=servers, port=self.port, keepalive=keepalive)
        )
        command = [find_nginx(), "-c", str(conf), "-p", str(directory), "-g", "daemon off;"]
        with (directory / "stderr.log").open("wb") as err:
            self._proc = subprocess.Popen(command, stderr=err)
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/healthz", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not start: see {directory / 'stderr.log'}")

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)
