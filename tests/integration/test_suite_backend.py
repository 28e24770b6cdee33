"""The suite's backend switch (tests/conftest.py): where the deployments tests write keep their
records and counters, and that they are dropped afterwards."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest

from deputy.store.audit_store import open_reader
from tests.backends import SharedServices
from tests.integration.deployment import write_deployment
from tests.services import (
    TemplateDatabase,
    postgres_admin,
    redis_admin,
    require_redis,
)


def test_deployments_are_placed_on_the_backend_the_run_chose(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_deployment(tmp_path / "a").settings
    rewritten = write_deployment(tmp_path / "a", lambda doc: doc.update(console={})).settings
    other = write_deployment(tmp_path / "b").settings
    if request.config.getoption("backend") == "sqlite":
        assert (first.storage, first.counters, first.counters_prefix) == (None, None, "deputy:")
        return
    assert first.storage is not None and first.counters is not None
    assert first.counters_prefix.startswith("deputy-test:")
    # The same directory is the same deployment (a config rewritten for a reload or restart).
    assert (rewritten.storage, rewritten.counters_prefix) == (
        first.storage,
        first.counters_prefix,
    )
    assert other.storage != first.storage and other.counters_prefix != first.counters_prefix
    with closing(open_reader(first)) as reader:  # checks the schema is at the head revision
        assert reader.verify().ok


def test_what_a_test_configures_itself_is_kept(tmp_path: Path) -> None:
    def own(doc: dict[str, Any]) -> None:
        doc["storage"] = "postgresql://deputy@db.internal/deputy"
        doc["counters"] = "redis://redis.internal:6379/0"

    settings = write_deployment(tmp_path, own).settings
    assert settings.storage == "postgresql://deputy@db.internal/deputy"
    assert (settings.counters, settings.counters_prefix) == (
        "redis://redis.internal:6379/0",
        "deputy:",
    )


def test_released_deployments_leave_no_database_and_no_keys(
    tmp_path: Path, head_database: TemplateDatabase
) -> None:
    services = SharedServices(head_database, require_redis("This test"))
    document: dict[str, Any] = {}
    services.place(tmp_path, document)
    with redis_admin() as client:
        client.set(f"{document['counters_prefix']}quota:1:x", 1)
    name = document["storage"].rsplit("/", 1)[1]
    kept: dict[str, Any] = {}
    services.place(tmp_path / "kept", kept)

    services.release(keep={(tmp_path / "kept").resolve()})

    with postgres_admin() as conn:
        names = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
    assert name not in names and kept["storage"].rsplit("/", 1)[1] in names
    with redis_admin() as client:
        assert list(client.scan_iter(match=f"{document['counters_prefix']}*")) == []
    services.release()
    with psycopg.connect(head_database.admin_url, connect_timeout=3) as conn:
        names = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
    assert kept["storage"].rsplit("/", 1)[1] not in names
