"""Where the deployments the tests write keep their records and counters: the suite's backend.

``write_deployment`` (``tests/integration/deployment.py``) hands every config it writes to
:func:`place`. With ``pytest --backend=sqlite`` (the default) nothing is placed: the broker
keeps its records in SQLite in its data dir and its counters in memory. With
``--backend=postgres`` (``tests/conftest.py``) :class:`SharedServices` gives each deployment
directory a PostgreSQL database of its own at the head schema and a Redis key prefix of its
own, unless the test configured ``storage`` or ``counters`` itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.services import TemplateDatabase, delete_prefix, drop_database, new_prefix

_placing: list[SharedServices] = []  # the backend of the running test session, if shared


def place(directory: Path, document: dict[str, Any]) -> None:
    """Point the config being written for ``directory`` at the suite's storage and counters."""
    for services in _placing:
        services.place(directory, document)


@contextmanager
def placing(services: SharedServices) -> Iterator[SharedServices]:
    """Place every deployment written meanwhile with ``services``."""
    _placing.append(services)
    try:
        yield services
    finally:
        _placing.remove(services)


class SharedServices:
    """PostgreSQL for records and Redis for counters: a database and a prefix per deployment.

    A directory written again (a config changed for a reload, a restart) keeps its database
    and prefix: it is the same deployment. :meth:`release` drops them.
    """

    def __init__(self, template: TemplateDatabase, redis_url: str) -> None:
        self.template = template
        self.redis_url = redis_url
        self._databases: dict[Path, str] = {}
        self._prefixes: dict[Path, str] = {}

    def place(self, directory: Path, document: dict[str, Any]) -> None:
        directory = directory.resolve()
        if "storage" not in document:
            if directory not in self._databases:
                self._databases[directory] = self.template.copy()
            document["storage"] = self._databases[directory]
        if "counters" not in document:
            document["counters"] = self.redis_url
            document["counters_prefix"] = self._prefixes.setdefault(directory, new_prefix())

    def database(self, directory: Path) -> str | None:
        """The database placed for ``directory``, if any."""
        return self._databases.get(directory.resolve())

    def placed(self) -> set[Path]:
        return set(self._databases) | set(self._prefixes)

    def release(self, keep: set[Path] | None = None) -> None:
        """Drop the database and delete the keys of every deployment placed, but ``keep``."""
        for directory in self.placed() - (keep or set()):
            url = self._databases.pop(directory, None)
            if url is not None:
                drop_database(url)
            prefix = self._prefixes.pop(directory, None)
            if prefix is not None:
                delete_prefix(prefix)
