"""docs/agents.md runs as written: each ```python block is a script, run against a real
broker and the CRM API of docs/protect-an-api.md, both on loopback."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deputy.devtools.served import LoopbackServer
from tests.integration.deployment import running, write_deployment
from tests.sdk.mcp_support import LoopbackSocket, serve_mcp
from tests.sdk.resource.test_guide import blocks as api_guide_blocks

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "agents.md"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def scripts() -> list[str]:
    text = GUIDE.read_text(encoding="utf-8")
    return [body for info, body in FENCE.findall(text) if info.strip() == "python"]


def agent_scripts() -> list[str]:
    """Every example but the MCP server's module (served by the test instead)."""
    return [s for s in scripts() if "MCPServer(" not in s]


def mcp_server_module() -> str:
    [server] = [s for s in scripts() if "MCPServer(" in s]
    return server


def test_the_guide_has_runnable_examples() -> None:
    assert len(agent_scripts()) == 4 and mcp_server_module()


def test_every_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    listening = LoopbackSocket()
    mcp_url = f"{listening.base_url}/mcp"

    def with_mcp_tool(doc: dict[str, Any]) -> None:
        doc["tools"]["crm_mcp"] = {
            "audience": mcp_url,
            "category": "customer-data",
            "scopes": ["accounts:read", "accounts:write"],
        }
        doc["workflows"]["customer-support"]["tools"]["crm_mcp"] = ["accounts:read"]

    d = write_deployment(tmp_path, with_mcp_tool)
    api_file = tmp_path / "app.py"
    api_file.write_text("\n\n".join(api_guide_blocks("python")), encoding="utf-8")
    with running(d) as (broker, _):
        monkeypatch.setenv("DEPUTY", broker.url)
        monkeypatch.setenv("MCP_URL", mcp_url)
        api = runpy.run_path(str(api_file), run_name="app")["app"]
        server_file = tmp_path / "server.py"
        server_file.write_text(mcp_server_module(), encoding="utf-8")
        mcp_server = runpy.run_path(str(server_file), run_name="server")["server"]
        with LoopbackServer(api, name="crm-api") as crm, serve_mcp(mcp_server, listening):
            env = {
                **os.environ,
                "DEPUTY": broker.url,
                "DEPUTY_WORKLOAD_TOKEN": d.svid("/agents/support/triage"),
                "ALICE_TOKEN": d.idp.user_token("alice", "pro"),
                "CRM_URL": crm.url,
                "MCP_URL": mcp_url,
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
                for script in agent_scripts()
            ]
    for result in results:
        assert result.returncode == 0, f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    sdk, dpop, langchain, mcp = (r.stdout for r in results)
    assert sdk.startswith("execution exe_") and "refused: tool 'payments_api'" in sdk
    assert dpop.startswith("bound to ")
    assert langchain.startswith("run exe_") and "Account 42 belongs to alice." in langchain
    assert mcp.startswith("tools ['read_account'] read {") and "'user': 'alice'" in mcp
