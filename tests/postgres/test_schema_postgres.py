"""Schema migrations: ``deputy db upgrade`` (Alembic), and stores that refuse a stale schema."""

from __future__ import annotations

import secrets
import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from deputy.errors import ConfigError, StoreUnavailable
from deputy.store.postgres import (
    PostgresAuditLog,
    PostgresAuditReader,
    SchemaOutOfDate,
    upgrade,
)
from deputy.store.postgres.connect import Timeouts, make_engine
from deputy.store.postgres.keys import KEK_BYTES, PostgresKeyStore
from deputy.store.postgres.schema import downgrade, head_revisions
from deputy.store.postgres.tables import metadata
from tests.audit_records import KEY, make_record
from tests.postgres.conftest import fetch, raw


def test_upgrade_creates_the_schema_the_code_declares(empty_url: str) -> None:
    assert upgrade(empty_url) == "0002" == ", ".join(head_revisions())
    engine = make_engine(empty_url, Timeouts(), pooled=False)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
    finally:
        engine.dispose()
    assert fetch(empty_url, "SELECT id, seq, hash, mac FROM chain_registry_head") == [
        (1, None, None, None)
    ]
    assert fetch(empty_url, "SELECT id, generation, kek_check FROM signing_key_ring") == [
        (1, 0, None)
    ]
    collations = fetch(
        empty_url,
        "SELECT DISTINCT collation_name FROM information_schema.columns"
        " WHERE table_name = 'records' AND column_name IN ('user_id', 'workload_id', 'outcome')",
    )
    assert collations == [("C",)]


def test_upgrade_is_idempotent_and_safe_from_several_replicas_at_once(empty_url: str) -> None:
    script = "import sys; from deputy.store.postgres import upgrade; print(upgrade(sys.argv[1]))"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, empty_url], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    outputs = [process.communicate(timeout=60)[0] for process in processes]
    assert [p.returncode for p in processes] == [0, 0, 0]
    assert outputs == ["0002\n"] * 3
    assert upgrade(empty_url) == "0002"
    assert fetch(empty_url, "SELECT count(*) FROM chain_registry_head") == [(1,)]
    assert fetch(empty_url, "SELECT count(*) FROM signing_key_ring") == [(1,)]


async def test_a_store_without_the_schema_refuses_to_start_and_names_the_command(
    empty_url: str,
) -> None:
    with PostgresAuditLog(empty_url, KEY) as audit_log:
        with pytest.raises(SchemaOutOfDate, match="deputy db upgrade") as caught:
            await audit_log.start()
        assert isinstance(caught.value, ConfigError)
        with pytest.raises(StoreUnavailable):  # an append on it fails closed
            await audit_log.append(make_record(1))
    with PostgresAuditReader(empty_url, KEY) as reader, pytest.raises(SchemaOutOfDate):
        reader.check_schema()
    upgrade(empty_url)
    with PostgresAuditLog(empty_url, KEY) as audit_log:
        await audit_log.start()
        await audit_log.append(make_record(1))
        audit_log.reader.check_schema()


@pytest.mark.parametrize(
    ("version", "words"),
    [("9999", "newer than this Deputy knows"), (None, "run `deputy db upgrade`")],
    ids=["from-the-future", "no-version"],
)
async def test_a_schema_at_another_revision_is_refused(
    pg_url: str, version: str | None, words: str
) -> None:
    if version is None:
        raw(pg_url, "DELETE FROM alembic_version")
    else:
        raw(pg_url, f"UPDATE alembic_version SET version_num = '{version}'")  # noqa: S608
    with PostgresAuditLog(pg_url, KEY) as audit_log, pytest.raises(SchemaOutOfDate, match=words):
        await audit_log.start()


def test_downgrade_to_base_then_upgrade_again(pg_url: str) -> None:
    assert downgrade(pg_url, "base") == ""
    assert fetch(pg_url, "SELECT to_regclass('records'), to_regclass('signing_keys')") == [
        (None, None)
    ]
    assert upgrade(pg_url) == "0002"


def test_a_database_at_0001_gets_the_key_tables_and_keeps_its_records(pg_url: str) -> None:
    """0001 -> 0002 on a database with an audit: the key tables are added, nothing else moves;
    until then a key store refuses it and names the command."""
    raw(
        pg_url,
        "INSERT INTO revocations (record_id, selector, value, issued_before, expires_at)"
        " VALUES (7, 'jti', 'j-1', 1, 2)",
    )
    assert downgrade(pg_url, "0001") == "0001"
    assert fetch(pg_url, "SELECT to_regclass('signing_keys'), to_regclass('signing_key_ring')") == [
        (None, None)
    ]
    with (
        PostgresKeyStore(pg_url, secrets.token_bytes(KEK_BYTES)) as store,
        pytest.raises(
            SchemaOutOfDate, match=r"at revision 0001, not 0002; run `deputy db upgrade`"
        ),
    ):
        store.check_schema()
    assert upgrade(pg_url) == "0002"
    assert fetch(pg_url, "SELECT record_id, value FROM revocations") == [(7, "j-1")]
    with PostgresKeyStore(pg_url, secrets.token_bytes(KEK_BYTES)) as store:
        store.check_schema()
        assert store.version() == 0 and store.load() == []


def test_urls_are_checked_and_never_echo_a_password() -> None:
    from deputy.store.postgres import engine_url

    assert engine_url("postgresql://u:p@h/db").drivername == "postgresql+psycopg"
    assert engine_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    with pytest.raises(ConfigError, match="unsupported URL scheme 'mysql'"):
        engine_url("mysql://u:secret@h/db")
    with pytest.raises(ConfigError) as caught:
        engine_url("not a url secret")
    assert "secret" not in str(caught.value)
