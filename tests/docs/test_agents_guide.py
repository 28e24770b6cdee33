"""docs/agents.md runs as written: each ```python block is a script, run against a real
broker and the CRM API of docs/protect-an-api.md, both on loopback."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.deployment import running, write_deployment
from tests.sdk.resource.test_guide import ApiServer
from tests.sdk.resource.test_guide import blocks as api_guide_blocks

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "agents.md"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def scripts() -> list[str]:
    text = GUIDE.read_text(encoding="utf-8")
    return [body for info, body in FENCE.findall(text) if info.strip() == "python"]


def test_the_guide_has_runnable_examples() -> None:
    assert len(scripts()) >= 2


def test_every_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = write_deployment(tmp_path)
    api_file = tmp_path / "app.py"
    api_file.write_text("\n\n".join(api_guide_blocks("python")), encoding="utf-8")
    with running(d) as (broker, _):
        monkeypatch.setenv("DEPUTY", broker.url)
        api = runpy.run_path(str(api_file), run_name="app")["app"]
        with ApiServer(api) as crm:
            env = {
                **os.environ,
                "DEPUTY": broker.url,
                "DEPUTY_WORKLOAD_TOKEN": d.svid("/agents/support/triage"),
                "ALICE_TOKEN": d.idp.user_token("alice", "pro"),
                "CRM_URL": crm.url,
            }
            results = [
                subprocess.run(
                    [sys.executable, "-c", script],
                    env=env,
                    cwd=tmp_path,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                for script in scripts()
            ]
    for result in results:
        assert result.returncode == 0, f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    first, second = (r.stdout for r in results[:2])
    assert first.startswith("execution exe_") and "refused: tool 'payments_api'" in first
    assert second.startswith("run exe_") and "Account 42 belongs to alice." in second
