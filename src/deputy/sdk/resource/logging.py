"""Who a log line was written for: the current request's Deputy credential on every record.

The middleware binds the verified credential for the duration of the request (a context
variable, so concurrent requests do not mix); :class:`DeputyLogFilter` copies it onto the
API's own log records as ``deputy_user``, ``deputy_agent``, ``deputy_execution`` and
``deputy_jti``, for a formatter such as
``"%(message)s user=%(deputy_user)s agent=%(deputy_agent)s execution=%(deputy_execution)s"``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

from deputy.sdk.resource.credential import VerifiedCredential

_current: ContextVar[VerifiedCredential | None] = ContextVar("deputy_credential", default=None)

RECORD_FIELDS = {
    "deputy_user": "user",
    "deputy_agent": "agent",
    "deputy_execution": "execution_id",
    "deputy_jti": "jti",
}


def current_credential() -> VerifiedCredential | None:
    """The credential of the request being served, if any."""
    return _current.get()


def bind_credential(credential: VerifiedCredential | None) -> Token[VerifiedCredential | None]:
    """Make ``credential`` current in this context (until reset with the returned token)."""
    return _current.set(credential)


@contextmanager
def bound_credential(credential: VerifiedCredential) -> Iterator[VerifiedCredential]:
    """Make ``credential`` current within the block."""
    token = _current.set(credential)
    try:
        yield credential
    finally:
        _current.reset(token)


class DeputyLogFilter(logging.Filter):
    """Adds the current credential's user, agent, execution and jti to each record.

    Attach it to a handler (``handler.addFilter(DeputyLogFilter())``) so that every record
    the handler emits has the fields; outside a request they hold ``missing``. A record that
    already carries a field (``extra={"deputy_user": ...}``) keeps it.
    """

    def __init__(self, name: str = "", *, missing: str = "-") -> None:
        super().__init__(name)
        self.missing = missing

    def filter(self, record: logging.LogRecord) -> bool:
        credential = _current.get()
        for attribute, field in RECORD_FIELDS.items():
            if attribute in record.__dict__:
                continue
            value = getattr(credential, field) if credential is not None else None
            setattr(record, attribute, self.missing if value is None else value)
        return True
