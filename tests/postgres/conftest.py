"""A real PostgreSQL for every test here: a fresh database each, dropped afterwards.

The server is ``postgresql://postgres@127.0.0.1:5432/postgres`` unless
``DEPUTY_TEST_POSTGRES`` names another (an administrator URL, for CREATE DATABASE). When it
cannot be reached every test here fails with that message: they never skip, so a CI run
without PostgreSQL cannot pass unnoticed.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml
from sqlalchemy.engine import make_url

from deputy.store.postgres import upgrade

ADMIN_URL = os.environ.get("DEPUTY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
_HERE = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "postgres: needs a real PostgreSQL server; fails (never skips) without one"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.postgres)


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(ADMIN_URL, connect_timeout=3, autocommit=True)


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The administrator URL, once the server has answered; a loud failure otherwise."""
    try:
        _admin().close()
    except psycopg.Error as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {make_url(ADMIN_URL).render_as_string()}: {exc}."
            " The tests in tests/postgres need a real server: start it, or point"
            " DEPUTY_TEST_POSTGRES at one.",
            pytrace=False,
        )
    return ADMIN_URL


def create_database(admin_url: str) -> str:
    """A new, empty database; its URL."""
    name = f"deputy_test_{secrets.token_hex(6)}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    name = make_url(url).database
    with _admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_url(postgres_server: str) -> Iterator[str]:
    """A fresh database without the schema."""
    url = create_database(postgres_server)
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture
def pg_url(empty_url: str) -> str:
    """A fresh database at the head revision."""
    upgrade(empty_url)
    return empty_url


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
