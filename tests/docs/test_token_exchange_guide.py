"""docs/token-exchange.md runs as written: its shell, then its Python, against a real broker."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.deployment import running, write_deployment
from tests.integration.oauth_client import new_secret, with_clients

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "token-exchange.md"
# A fenced block at the start of a line: its info string, then its text up to the closing fence.
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
TIMEOUT_SECONDS = 60


def blocks(language: str) -> list[str]:
    """The guide's code blocks in ``language``, in order."""
    text = GUIDE.read_text(encoding="utf-8")
    return [body for info, body in FENCE.findall(text) if info.strip() == language]


@pytest.fixture
def guide_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A broker with the guide's configuration, and the environment its examples read."""
    secrets = {"crm-api": new_secret()[0], "security-team": new_secret()[0]}
    d = write_deployment(tmp_path, with_clients(secrets))
    with running(d) as (server, _):
        venv_bin = str(Path(sys.executable).parent)
        yield {
            **os.environ,
            "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
            "DEPUTY": server.url,
            "ALICE_TOKEN": d.idp.user_token("alice", "pro"),
            "SUPPORT_SVID": d.svid("/agents/support/triage"),
            "RESEARCH_SVID": d.svid("/agents/research/r1"),
            "PRICE_SYNC_SVID": d.svid("/agents/price-sync"),
            "CRM_API_SECRET": secrets["crm-api"],
            "ADMIN_SECRET": secrets["security-team"],
            "DEPUTY_CONFIG": str(d.config_path),
        }


def run(command: list[str], env: dict[str, str], cwd: Path) -> None:
    result = subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_SECONDS
    )
    assert result.returncode == 0, (
        f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


def test_the_guide_has_runnable_examples() -> None:
    assert len(blocks("bash")) >= 15
    assert len(blocks("python")) >= 2
    # Output samples are not run; nothing meant to run hides under another info string.
    assert not blocks("sh") and not blocks("shell") and not blocks("py")


def test_shell_examples_run_as_written(guide_env: dict[str, str], tmp_path: Path) -> None:
    for tool in ("bash", "curl", "jq"):
        assert shutil.which(tool, path=guide_env["PATH"]), f"{tool} is needed to run the guide"
    assert shutil.which("deputy", path=guide_env["PATH"]), "the deputy CLI is not installed"
    script = "set -euo pipefail\n" + "\n".join(blocks("bash"))
    run(["bash", "-c", script], guide_env, tmp_path)


def test_python_examples_run_as_written(guide_env: dict[str, str], tmp_path: Path) -> None:
    script = "\n".join(blocks("python"))
    run([sys.executable, "-c", script], guide_env, tmp_path)
