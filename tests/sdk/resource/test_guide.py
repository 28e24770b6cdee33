"""docs/protect-an-api.md runs as written: its Python is the API, its shell the agent's calls.

The guide's ```python blocks together are ``app.py``; it is served by uvicorn on loopback
in front of a real broker, and the ```bash blocks run against both. ```sh blocks (install,
start the server) and ```text/```json/```yaml blocks (samples) are shown, not run.
"""

from __future__ import annotations

import logging
import os
import re
import runpy
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deputy.devtools.served import LoopbackServer
from tests.integration.deployment import running, write_deployment

GUIDE = Path(__file__).resolve().parents[3] / "docs" / "protect-an-api.md"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
TIMEOUT_SECONDS = 60


def blocks(language: str) -> list[str]:
    text = GUIDE.read_text(encoding="utf-8")
    return [body for info, body in FENCE.findall(text) if info.strip() == language]


@pytest.fixture
def crm_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("crm")
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


def test_the_guide_has_runnable_examples() -> None:
    assert len(blocks("python")) >= 3
    assert len(blocks("bash")) >= 5
    assert not blocks("shell") and not blocks("py") and not blocks("console")


def test_the_guide_runs_as_written(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    crm_logger: logging.Logger,
) -> None:
    for tool in ("bash", "curl", "jq"):
        assert shutil.which(tool), f"{tool} is needed to run the guide"
    broker_dir = tmp_path / "deputy"
    broker_dir.mkdir()
    d = write_deployment(broker_dir)
    app_file = tmp_path / "app.py"
    app_file.write_text("\n\n".join(blocks("python")), encoding="utf-8")
    with running(d) as (broker, _):
        monkeypatch.setenv("DEPUTY", broker.url)
        app = runpy.run_path(str(app_file), run_name="app")["app"]
        with LoopbackServer(app, name="guide-api") as api:
            env = {
                **os.environ,
                "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
                "DEPUTY": broker.url,
                "API": api.url,
                "ALICE_TOKEN": d.idp.user_token("alice", "pro"),
                "SUPPORT_SVID": d.svid("/agents/support/triage"),
            }
            script = "set -euo pipefail\n" + "\n".join(blocks("bash"))
            result = subprocess.run(
                ["bash", "-c", script],
                env=env,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=TIMEOUT_SECONDS,
            )
    assert result.returncode == 0, f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert '"user":"alice"' in result.stdout
    logged = capsys.readouterr().err
    assert "INFO read account 42 user=alice agent=spiffe://prod.example/agents/support/triage" in (
        logged
    )
    assert "execution=exe_" in logged
