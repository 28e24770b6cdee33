"""The storage backend the suite runs on: ``pytest --backend=sqlite`` (default) or ``postgres``.

Under ``--backend=postgres`` every deployment a test writes (``write_deployment``) gets
``storage:`` a PostgreSQL database of its own, copied from one template migrated to the head
schema per session, and ``counters:`` the test Redis under a ``counters_prefix`` of its own
(``tests/backends.py``, servers as ``tests/services.py`` names them). Both are dropped when
the test ends (a deployment written by a module-scoped fixture, when the session ends).
PostgreSQL or Redis unreachable fails every test: nothing skips.

Tests about the SQLite backend itself (its writer process, its file, its migrations) carry
``@pytest.mark.sqlite_only("why")`` and are deselected under ``--backend=postgres``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.backends import SharedServices, placing
from tests.services import TemplateDatabase, require_postgres, require_redis

BACKENDS = ("sqlite", "postgres")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        choices=BACKENDS,
        default="sqlite",
        help="where the brokers the tests start keep records and counters: sqlite (the data"
        " dir, counters in memory) or postgres (PostgreSQL, with counters in Redis)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sqlite_only(reason): about the SQLite backend itself; deselected under --backend=postgres",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    shared = config.getoption("backend") != "sqlite"
    kept: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        marker = item.get_closest_marker("sqlite_only")
        if marker is not None and not (marker.args and str(marker.args[0]).strip()):
            raise pytest.UsageError(f"{item.nodeid}: sqlite_only needs a reason")
        (deselected if shared and marker is not None else kept).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture(scope="session")
def head_database() -> Iterator[TemplateDatabase]:
    """The session's PostgreSQL template at the head schema: ``.copy()`` makes a database."""
    template = TemplateDatabase(require_postgres("Tests of the PostgreSQL backend"))
    try:
        yield template
    finally:
        template.drop()


@pytest.fixture(scope="session", autouse=True)
def suite_backend(request: pytest.FixtureRequest) -> Iterator[SharedServices | None]:
    """The shared services deployments are placed on (None: SQLite and memory)."""
    if request.config.getoption("backend") == "sqlite":
        yield None
        return
    needed_by = "Tests run with --backend=postgres"
    require_postgres(needed_by)
    services = SharedServices(request.getfixturevalue("head_database"), require_redis(needed_by))
    try:
        with placing(services):
            yield services
    finally:
        services.release()


@pytest.fixture(autouse=True)
def _release_deployments(suite_backend: SharedServices | None) -> Iterator[None]:
    """Drop the databases and prefixes of the deployments this test wrote, once it ends."""
    before = suite_backend.placed() if suite_backend is not None else set()
    yield
    if suite_backend is not None:
        suite_backend.release(keep=before)
