"""The ASGI app: /issue, JWKS, metadata and health, over one IssuanceService."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from deputy.clock import Clock
from deputy.errors import OAuthError
from deputy.server.errors import NO_STORE, error_response
from deputy.server.wiring import Broker
from deputy.service.issuance import RequestContext
from deputy.service.request import MAX_BODY_BYTES

KEY_RELOAD_INTERVAL_SECONDS = 2.0
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


async def read_bounded(request: Request, limit: int) -> bytes:
    """Read at most ``limit + 1`` bytes so an oversized body is refused without buffering it."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(chunks)


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def request_id(request: Request) -> str:
    given = request.headers.get("x-request-id")
    if given and _REQUEST_ID.match(given):
        return given
    return secrets.token_hex(8)


def metadata(issuer: str) -> dict[str, Any]:
    """RFC 8414 §2: only what this broker actually supports."""
    return {
        "issuer": issuer,
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "issue_endpoint": f"{issuer}/issue",
        "response_types_supported": [],
        "grant_types_supported": [],
        "token_endpoint_auth_methods_supported": [],
        "access_token_signing_alg_values_supported": ["ES256", "ES384", "RS256", "PS256"],
    }


def create_app(broker: Broker, clock: Clock) -> Starlette:
    """The broker as an ASGI app; starts and closes the broker with the app's lifespan."""
    service = broker.service
    ready = asyncio.Event()

    async def issue(request: Request) -> Response:
        rid = request_id(request)
        client = request.client.host if request.client else None
        context = RequestContext(rid, client)
        try:
            body = await read_bounded(request, MAX_BODY_BYTES)
            result = await service.issue(bearer_token(request), body, context)
        except OAuthError as err:
            return error_response(err, rid)
        return JSONResponse(result.body(clock.now()), headers={**NO_STORE, "X-Request-ID": rid})

    async def jwks(request: Request) -> Response:
        return JSONResponse(broker.key_ring.jwks(), headers={"Cache-Control": "max-age=60"})

    async def oauth_metadata(request: Request) -> Response:
        return JSONResponse(metadata(broker.settings.issuer))

    async def healthz(request: Request) -> Response:
        if not ready.is_set():
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def reload_keys() -> None:
        while True:
            await asyncio.sleep(KEY_RELOAD_INTERVAL_SECONDS)
            broker.key_ring.refresh()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await broker.start()
        reloader = asyncio.create_task(reload_keys())
        ready.set()
        try:
            yield
        finally:
            reloader.cancel()
            await broker.close()

    routes = [
        Route("/issue", issue, methods=["POST"]),
        Route("/.well-known/jwks.json", jwks, methods=["GET"]),
        Route("/.well-known/oauth-authorization-server", oauth_metadata, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
