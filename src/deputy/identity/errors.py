"""Errors of the identity package that are not token rejections."""

from __future__ import annotations

from deputy.errors import DeputyError, TokenRejected


class KeySourceError(DeputyError):
    """Verification keys could not be fetched or parsed; the message names the source."""


class KeysUnavailable(TokenRejected):
    """No usable key set: never fetched, or older than the staleness bound. Fail closed (503)."""
