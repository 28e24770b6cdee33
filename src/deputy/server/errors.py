"""The one place where errors become HTTP responses, and where responses are sent."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import Send

from deputy.errors import InvalidClient, InvalidToken, OAuthError

Headers = list[tuple[bytes, bytes]]
NO_STORE: Headers = [(b"cache-control", b"no-store"), (b"pragma", b"no-cache")]
JSON_TYPE: Headers = [(b"content-type", b"application/json")]


def _quote(value: str) -> str:
    """RFC 7230 quoted-string content: printable ASCII only, quotes and backslashes escaped."""
    printable = "".join(ch if " " <= ch <= "~" else "?" for ch in value)
    return printable.replace("\\", "\\\\").replace('"', '\\"')


_ENCODER = json.JSONEncoder(separators=(",", ":"))


def json_body(document: Any) -> bytes:
    return _ENCODER.encode(document).encode()


def render_error(err: OAuthError, request_id: str) -> tuple[int, Headers, bytes]:
    """RFC 6749 §5.2 body; RFC 6750 §3 ``WWW-Authenticate``; ``Retry-After`` on 429/503."""
    headers = [*JSON_TYPE, *NO_STORE, (b"x-request-id", request_id.encode())]
    if isinstance(err, InvalidToken | InvalidClient):
        if err.challenge == "Basic":
            challenge = 'Basic realm="deputy", charset="UTF-8"'
        else:
            challenge = f'Bearer error="{err.error}", error_description="{_quote(err.description)}"'
        headers.append((b"www-authenticate", challenge.encode()))
    if err.retry_after is not None:
        headers.append((b"retry-after", str(err.retry_after).encode()))
    return err.status_code, headers, json_body(err.body())


async def respond(send: Send, status: int, headers: Headers, payload: bytes) -> None:
    """Send a whole response as two ASGI messages (no response object on the hot paths)."""
    if status != 304:
        headers.append((b"content-length", str(len(payload)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
