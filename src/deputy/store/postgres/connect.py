"""Engines for the PostgreSQL store: bounded timeouts everywhere, and a watchdog behind them.

Every connection gets a connect timeout, server-side statement and lock timeouts, TCP
keepalives and a TCP user timeout, so a dead network or a slow server ends a call within
seconds. What no server-side timeout covers (a server that accepts bytes and never answers,
e.g. a stopped process) is covered by :class:`Watchdog`: a call that outlives its deadline
has its socket shut down under it, and the driver raises at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.pool import NullPool

from deputy.errors import ConfigError

UNAVAILABLE = "audit store unavailable"
_DRIVER = "postgresql+psycopg"

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long the store waits on PostgreSQL before failing closed (seconds)."""

    connect: float = 2.0  # libpq rounds below 2 s up to 2 s
    statement: float = 2.0  # server side: one statement of an append or a ledger lookup
    lock: float = 2.0  # server side: waiting for a row or advisory lock
    call: float = 3.0  # client side: a whole append batch or lookup, cut by the watchdog
    report: float = 600.0  # server side, per statement, for verify, export and reports

    def __post_init__(self) -> None:
        for name in ("connect", "statement", "lock", "call", "report"):
            if getattr(self, name) <= 0:
                raise ValueError(f"timeout {name} must be > 0")


def engine_url(url: str | URL) -> URL:
    """``postgresql://`` (or ``postgres://``) as a SQLAlchemy URL with the psycopg 3 driver."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError; never echo a password
        raise ConfigError("storage: not a valid postgresql:// URL") from exc
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        return parsed.set(drivername=_DRIVER)
    raise ConfigError(f"storage: unsupported URL scheme {parsed.drivername!r}; use postgresql://")


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _connect_args(url: URL, timeouts: Timeouts, application_name: str) -> dict[str, Any]:
    """libpq parameters; what the URL sets itself wins (except the statement options)."""
    args: dict[str, Any] = {
        "connect_timeout": max(2, round(timeouts.connect)),
        "keepalives": 1,
        "keepalives_idle": 2,
        "keepalives_interval": 1,
        "keepalives_count": 2,
        "tcp_user_timeout": _ms(timeouts.call),
        "application_name": application_name,
    }
    for key in list(args):
        if key in url.query:
            del args[key]
    options = [
        f"-c statement_timeout={_ms(timeouts.statement)}",
        f"-c lock_timeout={_ms(timeouts.lock)}",
        f"-c idle_in_transaction_session_timeout={_ms(max(10.0, 3 * timeouts.call))}",
    ]
    extra = url.query.get("options")
    if isinstance(extra, str):
        options.insert(0, extra)
    args["options"] = " ".join(options)
    return args


def make_engine(
    url: str | URL,
    timeouts: Timeouts,
    *,
    application_name: str = "deputy",
    pooled: bool = True,
    pool_size: int = 4,
) -> Engine:
    """An engine whose connections fail within the timeouts; pooled ones are pinged on checkout.

    The writer holds one connection of its own (``pooled=False``); readers share a small
    pool, and ping a connection (under the watchdog) before they use it.
    """
    parsed = engine_url(url)
    connect_args = _connect_args(parsed, timeouts, application_name)
    if "options" in parsed.query:
        parsed = parsed.difference_update_query(["options"])
    if not pooled:
        return create_engine(parsed, poolclass=NullPool, connect_args=connect_args)
    return create_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=timeouts.call,
        pool_recycle=300,
        connect_args=connect_args,
    )


def driver_connection(conn: Connection) -> Any:
    """The psycopg connection under a SQLAlchemy connection."""
    return conn.connection.dbapi_connection


class Watchdog:
    """Cuts the socket of a call that outlives its deadline, so no call blocks for ever.

    One daemon thread per watchdog; :meth:`guard` registers a connection for the length of a
    ``with`` block. Shutting the socket down (rather than closing the descriptor, which the
    driver still owns) makes the blocked read return at once with an error.
    """

    def __init__(self, name: str = "deputy-pg-watchdog") -> None:
        self._cond = threading.Condition()
        self._guarded: dict[int, tuple[float, Any]] = {}
        self._next = 0
        self._closed = False
        self.cuts = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def guard(self, dbapi_connection: Any, seconds: float) -> Iterator[None]:
        with self._cond:
            self._next += 1
            token = self._next
            self._guarded[token] = (time.monotonic() + seconds, dbapi_connection)
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._guarded.pop(token, None)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                due = [t for t, (deadline, _) in self._guarded.items() if deadline <= now]
                for token in due:
                    _, conn = self._guarded.pop(token)
                    self._cut(conn)
                wait = min((d for d, _ in self._guarded.values()), default=now + 60) - now
                self._cond.wait(timeout=max(wait, 0.01))

    def _cut(self, dbapi_connection: Any) -> None:
        # Under the lock: the owner cannot leave ``guard`` (and close the descriptor) meanwhile.
        self.cuts += 1
        _log.warning("PostgreSQL call exceeded its deadline; cutting its connection")
        try:
            fd = dbapi_connection.fileno()
            with socket.socket(fileno=os.dup(fd)) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except Exception as exc:  # already closed: nothing left to cut
            _log.debug("watchdog could not cut a connection: %s", exc)
