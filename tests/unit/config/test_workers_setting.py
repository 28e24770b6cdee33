"""``server.workers``: an integer from 1 to MAX_WORKERS, above 1 only with shared state."""

from __future__ import annotations

from pathlib import Path

import pytest

from deputy.config import parse_settings
from deputy.config.settings import MAX_WORKERS
from deputy.errors import ConfigError
from tests.unit.config.test_settings import example

POSTGRES = "postgresql://deputy@db.internal:5432/deputy"
REDIS = "redis://127.0.0.1:6379/0"


def test_one_worker_by_default(tmp_path: Path) -> None:
    settings = parse_settings(example(), tmp_path)
    assert settings.server.workers == 1
    assert settings.unshared_state(1) is None


@pytest.mark.parametrize(
    ("workers", "expected"),
    [
        (0, "server.workers: Input should be greater than or equal to 1"),
        (MAX_WORKERS + 1, f"server.workers: Input should be less than or equal to {MAX_WORKERS}"),
        ("2", "server.workers: Input should be a valid integer"),
        (True, "server.workers: Input should be a valid integer"),
        (2.0, "server.workers: Input should be a valid integer"),
    ],
    ids=["zero", "over-max", "string", "bool", "float"],
)
def test_workers_must_be_a_plain_integer_in_range(
    workers: object, expected: str, tmp_path: Path
) -> None:
    doc = {**example(), "storage": POSTGRES, "counters": REDIS, "server": {"workers": workers}}
    with pytest.raises(ConfigError) as err:
        parse_settings(doc, tmp_path)
    assert expected in str(err.value)


@pytest.mark.parametrize(
    ("shared", "missing"),
    [
        ({}, "storage, counters"),
        ({"storage": POSTGRES}, "counters"),
        ({"counters": REDIS}, "storage"),
    ],
    ids=["sqlite-and-memory", "no-redis", "no-postgres"],
)
def test_several_workers_need_postgres_and_redis(
    shared: dict[str, str], missing: str, tmp_path: Path
) -> None:
    doc = {**example(), **shared, "server": {"workers": 2}}
    with pytest.raises(ConfigError) as err:
        parse_settings(doc, tmp_path)
    assert (
        f"server.workers: 2 workers need `storage: postgresql://...` and `counters: redis://...` "
        f"(not set: {missing}): SQLite has one writer, and in-memory counters are per process, "
        "so every rate limit would be multiplied by 2"
    ) in str(err.value)


def test_several_workers_share_postgres_and_redis(tmp_path: Path) -> None:
    doc = {**example(), "storage": POSTGRES, "counters": REDIS, "server": {"workers": 4}}
    settings = parse_settings(doc, tmp_path)
    assert settings.server.workers == 4
    assert settings.unshared_state(MAX_WORKERS) is None
