"""The `deputy` command as a user runs it: a real process, real files."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from deputy.devtools.demo import run_demo

DEPUTY = [sys.executable, "-m", "deputy"]


def deputy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DEPUTY, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.sqlite_only("`deputy demo` writes its own SQLite deployment and this edits its file")
def test_demo_runs_end_to_end_and_audit_cli_answers(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    directory = tmp_path / "demo"
    assert run_demo(directory) == 0
    out = capsys.readouterr().out
    for expected in [
        "workflow.tools:",
        "workflow.scopes:",
        "ttl.max:",
        "workflow.tiers:",
        "delegation.user:",
        "429 rate_limited",
        "401 invalid_token",
        '"act": {',
        "2 live credentials revoked",
        "subject_token rejected: it has been revoked",
        "chain ok: 33 records",
    ]:
        assert expected in out
    config = str(directory / "deputy.yaml")
    execution = out.split("audit trail of execution ")[1].split()[0]

    verify = deputy("audit", "verify", "--config", config)
    assert verify.returncode == 0 and "audit chain ok: 33 records" in verify.stdout

    by_execution = deputy("audit", "query", "--config", config, "--execution", execution, "--json")
    [record] = [json.loads(line) for line in by_execution.stdout.splitlines()]
    assert record["execution_id"] == execution and len(record["credentials"]) == 3
    jti = record["credentials"][0]["jti"]
    by_jti = deputy("audit", "query", "--config", config, "--jti", jti)
    assert by_jti.returncode == 0 and f"execution={execution}" in by_jti.stdout
    assert "instance=triage-7f9c" in by_jti.stdout and "user=alice (user_token)" in by_jti.stdout
    by_user = deputy(
        "audit", "query", "--config", config, "--user", "carol", "--since", "1h", "--json"
    )
    carol = [json.loads(line) for line in by_user.stdout.splitlines()]
    assert [r["status"] for r in carol] == [200] * 20 + [429]

    db = sqlite3.connect(directory / ".deputy" / "audit.db")
    db.execute("UPDATE records SET body = replace(body, 'carol', 'carl') WHERE seq = 7")
    db.commit()
    db.close()
    broken = deputy("audit", "verify", "--config", config)
    assert broken.returncode == 1 and "BROKEN at record 7" in broken.stderr


def test_keys_rotate_publishes_new_key(tmp_path: Path) -> None:
    from tests.integration.deployment import write_deployment

    d = write_deployment(tmp_path)
    config = str(d.config_path)
    first = deputy("keys", "list", "--config", config)
    assert first.returncode == 0 and len(first.stdout.splitlines()) == 1
    rotated = deputy("keys", "rotate", "--config", config, "--activate-after", "0")
    assert rotated.returncode == 0 and "published now" in rotated.stdout
    listed = deputy("keys", "list", "--config", config).stdout.splitlines()
    assert len(listed) == 2 and "retired -" not in listed[0] and "retired -" in listed[1]


def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "deputy.yaml"
    config.write_text("issuer: https://x.example\ndata_dir: d\ntools: {}\nworkflows: {}\nfoo: 1\n")
    result = deputy("serve", "--config", str(config))
    assert result.returncode == 2
    assert "foo: unknown key" in result.stderr
    assert "tools: " in result.stderr


def test_missing_trust_file_stops_serve_with_a_plain_message(tmp_path: Path) -> None:
    from tests.integration.deployment import write_deployment

    d = write_deployment(tmp_path)
    (tmp_path / "trust" / "login.jwks.json").unlink()
    result = deputy("serve", "--config", str(d.config_path), "--port", "0")
    assert result.returncode == 2
    assert "login.jwks.json: cannot read: No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_audit_query_text_cannot_be_forged_by_a_field(tmp_path: Path) -> None:
    from tests.integration.deployment import running, write_deployment

    d = write_deployment(tmp_path)
    hostile = "mallory\n2026-01-01T00:00:00+00:00  ALLOW  status=200  user=alice"
    with running(d) as (_, client):
        token = d.idp.user_token(hostile, "pro")
        r = client.post(
            "/issue",
            headers={"Authorization": f"Bearer {d.svid()}"},
            json={"agent_id": "a", "user_token": token, "tools": ["pricing_api"]},
        )
        assert r.status_code == 200
    out = deputy("audit", "query", "--config", str(d.config_path)).stdout
    assert len(out.splitlines()) == 1
    assert "user=mallory\\n2026" in out
