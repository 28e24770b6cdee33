"""The one place where errors become HTTP responses."""

from __future__ import annotations

from starlette.responses import JSONResponse

from deputy.errors import InvalidClient, InvalidToken, OAuthError

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _quote(value: str) -> str:
    """RFC 7230 quoted-string content: printable ASCII only, quotes and backslashes escaped."""
    printable = "".join(ch if " " <= ch <= "~" else "?" for ch in value)
    return printable.replace("\\", "\\\\").replace('"', '\\"')


def error_response(err: OAuthError, request_id: str) -> JSONResponse:
    """RFC 6749 §5.2 body; RFC 6750 §3 ``WWW-Authenticate``; ``Retry-After`` on 429/503."""
    headers = {**NO_STORE, "X-Request-ID": request_id}
    if isinstance(err, InvalidToken | InvalidClient):
        headers["WWW-Authenticate"] = (
            f'Bearer error="{err.error}", error_description="{_quote(err.description)}"'
        )
    if err.retry_after is not None:
        headers["Retry-After"] = str(err.retry_after)
    return JSONResponse(err.body(), status_code=err.status_code, headers=headers)
