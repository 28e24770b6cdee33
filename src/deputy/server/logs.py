"""JSON log lines for ``deputy serve``: one object per line, carrying the request id.

Every module logs through the standard ``logging`` module; only the handler installed here
knows about structlog, which renders each record as one JSON object (control characters
and newlines escaped, so a field can never break a line). The request id of the request
being served comes from :data:`REQUEST_ID`, set by the endpoints when they pick the id.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any, TextIO

import structlog

from deputy.config.settings import LoggingSettings

# A context variable: each request runs in its own task, with its own value.
REQUEST_ID: ContextVar[str | None] = ContextVar("deputy_request_id", default=None)
ACCESS_LOGGER = "deputy.access"
# Field names whose values are never written, whoever passes them (SECURITY.md: no token,
# key or secret in logs). Messages themselves never carry them either.
REDACTED_FIELDS = frozenset(
    {
        "access_token",
        "actor_token",
        "authorization",
        "client_assertion",
        "client_secret",
        "dpop",
        "password",
        "secret",
        "subject_token",
        "token",
        "user_token",
    }
)
# INFO lines that say nothing an operator needs: one per outgoing request (httpx), and
# alembic's plugin and migration-context chatter whenever a store checks its schema.
_QUIET_LIBRARIES = ("httpx", "httpcore", "alembic")
_EventDict = MutableMapping[str, Any]


def _add_request_id(logger: object, method: str, event: _EventDict) -> _EventDict:
    rid = REQUEST_ID.get()
    if rid is not None:
        event.setdefault("request_id", rid)
    return event


def _redact(logger: object, method: str, event: _EventDict) -> _EventDict:
    for key in event.keys() & REDACTED_FIELDS:
        event[key] = "[redacted]"
    return event


def json_formatter() -> logging.Formatter:
    """A formatter that renders a ``logging`` record, its extras and exception, as JSON."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
            _add_request_id,
            _redact,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("message"),
            structlog.processors.JSONRenderer(),
        ],
    )


def configure_logging(settings: LoggingSettings, stream: TextIO | None = None) -> None:
    """Send every log record of the process to ``stream`` (stderr) as JSON lines.

    Called once by ``deputy serve``, the process's entry point; libraries never call it.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(json_formatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level.upper())
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)
