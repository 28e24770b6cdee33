"""A real PostgreSQL for every test here: a fresh database each, dropped afterwards.

The server is the one ``tests/services.py`` names (``DEPUTY_TEST_POSTGRES``); a database at
the head schema is a copy of the session's template (``head_database``). When the server
cannot be reached every test here fails with that message: they never skip, so a CI run
without PostgreSQL cannot pass unnoticed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from tests.services import TemplateDatabase, create_database, drop_database, require_postgres

_HERE = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "postgres: needs a real PostgreSQL server; fails (never skips) without one"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The administrator URL, once the server has answered; a loud failure otherwise."""
    return require_postgres("The tests in tests/postgres")


@pytest.fixture
def empty_url(postgres_server: str) -> Iterator[str]:
    """A fresh database without the schema."""
    url = create_database(postgres_server)
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture
def pg_url(head_database: TemplateDatabase) -> Iterator[str]:
    """A fresh database at the head revision."""
    url = head_database.copy()
    try:
        yield url
    finally:
        drop_database(url)


def raw(url: str, *statements: str) -> None:
    """Run SQL on the database as an intruder with write access (and no head key) would."""
    with psycopg.connect(url, connect_timeout=3, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement.encode())


def fetch(url: str, statement: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url, connect_timeout=3, autocommit=True) as conn:
        return list(conn.execute(statement.encode()))


def replica_config(config: Path, data_dir: Path) -> Path:
    """A copy of ``config`` (next to it, so relative trust paths still hold) whose data dir is
    ``data_dir``: another replica of the same deployment."""
    document = yaml.safe_load(config.read_text())
    document["data_dir"] = str(data_dir)
    copy = config.with_name(f"{config.stem}-{data_dir.name}.yaml")
    copy.write_text(yaml.safe_dump(document))
    return copy
