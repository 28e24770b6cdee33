"""What every use case is told about the request it serves."""

from __future__ import annotations

from dataclasses import dataclass

RETRY_AFTER_UNAVAILABLE = 1


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Facts about the HTTP exchange that the audit record keeps."""

    request_id: str
    client_address: str | None
    endpoint: str = "/issue"
