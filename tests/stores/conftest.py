"""Each audit store, SQLite and PostgreSQL, new and empty: the tests here run once on each.

They pin what the ``AuditLog`` and ``AuditReaderStore`` protocols promise whatever the store.
What only one store has (SQLite's file, migrations and query plans; PostgreSQL's chain per
writer and its registry) is tested in ``tests/integration/test_audit_sqlite.py`` and
``tests/postgres/test_audit_postgres.py``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from deputy.clock import FakeClock
from deputy.store.postgres import PostgresAuditLog, PostgresAuditReader, PostgresAuditWriter
from deputy.store.sqlite import SqliteAuditLog
from deputy.store.sqlite.audit_reader import SqliteAuditReader
from deputy.store.sqlite.audit_writer import SqliteAuditWriter
from tests.audit_records import KEY, T0
from tests.services import TemplateDatabase, drop_database

BACKENDS = ("sqlite", "postgres")

Log = SqliteAuditLog | PostgresAuditLog
Reader = SqliteAuditReader | PostgresAuditReader
Writer = SqliteAuditWriter | PostgresAuditWriter


@dataclass(frozen=True)
class Store:
    """An audit store of one backend at the current schema: a SQLite file or a database."""

    backend: str
    location: Path | str  # the file, or the database URL

    def log(self, key: bytes = KEY, **options: Any) -> Log:
        if isinstance(self.location, Path):
            return SqliteAuditLog(self.location, key, **options)
        return PostgresAuditLog(self.location, key, **options)

    def reader(self, key: bytes = KEY) -> Reader:
        if isinstance(self.location, Path):
            return SqliteAuditReader(self.location, key)
        return PostgresAuditReader(self.location, key)

    def writer(self, key: bytes = KEY, **options: Any) -> Writer:
        if isinstance(self.location, Path):
            return SqliteAuditWriter(self.location, key, **options)
        return PostgresAuditWriter(self.location, key, **options)

    def fetch(self, statement: str) -> list[tuple[Any, ...]]:
        """Rows of plain SQL, read past the store's own code."""
        if isinstance(self.location, Path):
            with closing(sqlite3.connect(self.location)) as conn:
                return conn.execute(statement).fetchall()
        with psycopg.connect(self.location, connect_timeout=3, autocommit=True) as pg:
            return list(pg.execute(statement.encode()))


@contextmanager
def new_store(backend: str, directory: Path, request: pytest.FixtureRequest) -> Iterator[Store]:
    """An empty store at the current schema (the session's template for PostgreSQL)."""
    if backend == "sqlite":
        path = directory / "audit.db"
        SqliteAuditLog(path, KEY).close()  # the schema, as a broker's first start makes it
        yield Store(backend, path)
        return
    template: TemplateDatabase = request.getfixturevalue("head_database")
    url = template.copy()
    try:
        yield Store(backend, url)
    finally:
        drop_database(url)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with new_store(request.param, tmp_path, request) as opened:
        yield opened


@pytest.fixture
def log(store: Store) -> Iterator[Log]:
    with store.log(clock=FakeClock(T0)) as audit_log:
        yield audit_log
