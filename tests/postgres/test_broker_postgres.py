"""A broker configured with `storage: postgresql://...`: issuance, revocation, the console and
the CLI all read and write the shared database; `deputy db upgrade` makes its schema."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from typer.testing import CliRunner

from deputy.audit.log import AuditFilter
from deputy.cli.main import app
from deputy.config.loader import load_settings
from deputy.errors import ConfigError
from deputy.server.wiring import revoke_now
from deputy.store.audit_store import open_reader
from tests.integration.deployment import Deployment, running, write_deployment
from tests.integration.oauth_client import (
    alice_credential,
    alice_exchange,
    new_secret,
    with_clients,
)
from tests.postgres.proxy import Proxy

ADMIN = ("security-team", new_secret()[0])


def on_postgres(url: str) -> Any:
    def mutate(doc: dict[str, Any]) -> None:
        with_clients({"crm-api": new_secret()[0], ADMIN[0]: ADMIN[1]})(doc)
        doc["storage"] = url
        doc["console"] = {"enabled": True}

    return mutate


def deputy(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_db_upgrade_makes_the_schema_a_broker_needs(tmp_path: Path, empty_url: str) -> None:
    d = write_deployment(tmp_path, on_postgres(empty_url))
    with pytest.raises(ConfigError, match="deputy db upgrade"):
        open_reader(d.settings)
    first = deputy("db", "upgrade", "--config", str(d.config_path))
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith("schema at revision ")
    again = deputy("db", "upgrade", "--config", str(d.config_path))
    assert again.exit_code == 0 and again.stdout == first.stdout


@pytest.mark.parametrize(
    "command",
    [
        ("db", "upgrade"),
        ("keys", "list"),
        ("keys", "rotate"),
        ("audit", "query"),
        ("blast-radius", "--user", "alice"),
        ("serve",),
    ],
)
def test_a_database_that_cannot_be_reached_exits_1_saying_so(
    tmp_path: Path, closed_port: int, command: tuple[str, ...]
) -> None:
    """Exit 1 (try again later) with the store's message, not 2 (fix the config) and not a
    traceback: the command is right, the database is not there."""
    url = f"postgresql://deputy:not-in-messages@127.0.0.1:{closed_port}/x"
    d = write_deployment(tmp_path, on_postgres(url))
    if command == ("serve",):  # in a process of its own: serve sets up the process's logging
        ran = subprocess.run(
            [sys.executable, "-m", "deputy", *command, "--config", str(d.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        status, stderr, output = ran.returncode, ran.stderr, ran.stdout + ran.stderr
    else:
        result = deputy(*command, "--config", str(d.config_path))
        status, stderr, output = result.exit_code, result.stderr, result.output
    assert status == 1, output
    assert stderr.startswith("error: ") and "store unavailable" in stderr
    assert "not-in-messages" not in output and "Traceback" not in output


def test_sqlite_needs_no_upgrade(tmp_path: Path) -> None:
    d = write_deployment(tmp_path)
    result = deputy("db", "upgrade", "--config", str(d.config_path))
    assert result.exit_code == 2
    assert "the SQLite audit log migrates itself" in result.stderr


async def test_a_broker_on_postgres_issues_audits_and_revokes(tmp_path: Path, pg_url: str) -> None:
    d: Deployment = write_deployment(tmp_path, on_postgres(pg_url))
    with running(d) as (_, client):
        token = alice_credential(d, client)["access_token"]
        jti = pyjwt.decode(token, options={"verify_signature": False})["jti"]
        listed = client.get("/console", params={"jti": jti}, auth=ADMIN)
        assert listed.status_code == 200 and jti in listed.text
        audit = deputy("audit", "query", "--jti", jti, "--config", str(d.config_path))
        assert audit.exit_code == 0 and jti in audit.stdout
        # Revoked from the CLI, through the database: the running broker sees it at once.
        outcome = await revoke_now(load_settings(d.config_path), "jti", jti, "leaked")
        assert outcome.live.credentials == 1
        answer = client.post("/oauth2/introspect", data={"token": token}, auth=ADMIN)
        assert answer.status_code == 200 and answer.json() == {"active": False}
    verify = deputy("audit", "verify", "--config", str(d.config_path))
    assert verify.exit_code == 0, verify.output


def test_postgres_lost_mid_load_is_a_503_then_recovers_without_a_restart(
    tmp_path: Path, pg_url: str
) -> None:
    """Through a relay the test takes down and brings back: issuances before get 200, while
    the database is unreachable 503 with Retry-After (and no credential), after 200 again
    from the same broker; every credential handed out has its record."""
    relay = Proxy()
    try:
        d = write_deployment(tmp_path, on_postgres(relay.url(pg_url)))
        with running(d) as (_, client):
            before = alice_credential(d, client)["access_token"]
            relay.down()
            started = time.monotonic()
            refused = alice_exchange(d, client, resource="https://crm.internal")
            assert time.monotonic() - started < 3.5  # the store's bounded connect and call
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"] == "temporarily_unavailable"
            assert int(refused.headers["retry-after"]) >= 1
            assert "access_token" not in refused.json()
            relay.up()
            deadline = time.monotonic() + 10
            after = alice_exchange(d, client, resource="https://crm.internal")
            while after.status_code == 503 and time.monotonic() < deadline:
                after = alice_exchange(d, client, resource="https://crm.internal")
            assert after.status_code == 200, after.text
            handed_out = {jti_of(before), jti_of(after.json()["access_token"])}
        reader = open_reader(load_settings(d.config_path))
        try:
            recorded = {
                c["jti"]
                for s in reader.query(AuditFilter(outcome="allow", limit=100))
                for c in s.record["credentials"]
            }
            assert handed_out <= recorded
            assert reader.verify().ok
        finally:
            reader.close()
    finally:
        relay.close()


def jti_of(token: str) -> str:
    return str(pyjwt.decode(token, options={"verify_signature": False})["jti"])
