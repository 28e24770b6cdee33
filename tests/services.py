"""The PostgreSQL and Redis servers tests run against: databases and key prefixes of their own.

PostgreSQL is ``postgresql://postgres@127.0.0.1:5432/postgres`` unless ``DEPUTY_TEST_POSTGRES``
names another (an administrator URL: tests create and drop databases); Redis is
``redis://127.0.0.1:6379/0`` unless ``DEPUTY_TEST_REDIS`` names another. A test that needs a
server that cannot be reached fails with a message saying so: none skips, so a run without
the servers cannot pass unnoticed.
"""

from __future__ import annotations

import os
import secrets

import psycopg
import pytest
from sqlalchemy.engine import make_url

import redis
from deputy.store.postgres import upgrade
from deputy.store.redis.connection import redacted

POSTGRES_URL = os.environ.get(
    "DEPUTY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("DEPUTY_TEST_REDIS", "redis://127.0.0.1:6379/0")


def postgres_admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(POSTGRES_URL, connect_timeout=3, autocommit=True)


def require_postgres(needed_by: str) -> str:
    """The administrator URL, once the server has answered; a loud failure otherwise."""
    try:
        postgres_admin().close()
    except psycopg.Error as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {make_url(POSTGRES_URL).render_as_string()}: {exc}."
            f" {needed_by} need a real server: start it (`make services`), or point"
            " DEPUTY_TEST_POSTGRES at one.",
            pytrace=False,
        )
    return POSTGRES_URL


def create_database(admin_url: str, template: str | None = None) -> str:
    """A new database, empty or a copy of ``template`` (a database name); its URL."""
    name = f"deputy_test_{secrets.token_hex(6)}"
    copy = f' TEMPLATE "{template}"' if template is not None else ""
    with postgres_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copy}'.encode())
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    name = make_url(url).database
    with postgres_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


class TemplateDatabase:
    """One database migrated to the head revision, made on first use and copied for each
    test that needs a database at the head (a copy takes a fraction of a migration)."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self._url: str | None = None

    def copy(self) -> str:
        """A new database at the head revision; its URL (the caller drops it)."""
        if self._url is None:
            url = create_database(self.admin_url)
            try:
                upgrade(url)  # disposes of its connections: a template must have none
            except BaseException:
                drop_database(url)
                raise
            self._url = url
        return create_database(self.admin_url, template=make_url(self._url).database)

    def drop(self) -> None:
        if self._url is not None:
            drop_database(self._url)
            self._url = None


def redis_admin() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL, socket_timeout=3, socket_connect_timeout=3)


def require_redis(needed_by: str) -> str:
    """The server's URL, once it has answered; a loud failure otherwise."""
    try:
        with redis_admin() as client:
            client.ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis is not reachable at {redacted(REDIS_URL)}: {exc}. {needed_by} need a real"
            " server: start it (`make services`), or point DEPUTY_TEST_REDIS at one.",
            pytrace=False,
        )
    return REDIS_URL


def new_prefix() -> str:
    """A Redis key prefix no other test uses (a valid ``counters_prefix``)."""
    return f"deputy-test:{secrets.token_hex(6)}:"


def delete_prefix(value: str) -> int:
    """Delete every key under ``value`` (what a Redis restarted empty has lost); how many."""
    with redis_admin() as client:
        keys = list(client.scan_iter(match=f"{value}*", count=1000))
        if keys:
            client.delete(*keys)
    return len(keys)
