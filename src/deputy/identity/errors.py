"""Errors of the identity package that are not token rejections."""

from __future__ import annotations

from deputy.errors import DeputyError


class KeySourceError(DeputyError):
    """Verification keys could not be fetched or parsed; the message names the source."""
