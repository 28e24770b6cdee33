"""The ASGI app: /issue, the OAuth endpoints, JWKS, metadata, health, metrics and the console."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router
from starlette.types import Receive, Scope, Send

from deputy.clock import Clock
from deputy.errors import OAuthError
from deputy.ids import IdSource
from deputy.oauth.endpoints import (
    ADMIN_REVOCATIONS_PATH,
    FEED_PATH,
    INTROSPECTION_PATH,
    ISSUE_PATH,
    JWKS_PATH,
    METADATA_PATH,
    REVOCATION_PATH,
    TOKEN_PATH,
    USAGE_PATH,
    metadata,
)
from deputy.server.console import Console
from deputy.server.errors import JSON_TYPE, NO_STORE, json_body, render_error, respond
from deputy.server.health import Readiness
from deputy.server.instruments import ObservedIssuance, observe_routes
from deputy.server.logs import REQUEST_ID
from deputy.server.oauth import OAuthEndpoints
from deputy.server.operations import MetricsEndpoint, operations_routes
from deputy.server.reload import ConfigReloader
from deputy.server.wiring import Broker
from deputy.service.issuance import DpopBinding, Issuer, JsonIssue, RequestContext
from deputy.service.request import MAX_BODY_BYTES
from deputy.tokens.dpop import DpopVerifier

KEY_RELOAD_INTERVAL_SECONDS = 2.0
_log = logging.getLogger(__name__)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


async def read_body(receive: Receive, limit: int) -> bytes:
    """Read at most ``limit + 1`` bytes so an oversized body is refused without buffering it."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if size > limit or not message.get("more_body", False):
            return b"".join(chunks)


def bearer_token(value: bytes | None) -> str | None:
    """RFC 6750 §2.1: ``Authorization: Bearer <token>``, scheme case-insensitive."""
    if value is None:
        return None
    scheme, _, token = value.decode("latin-1").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def request_id(given: bytes | None, ids: IdSource) -> str:
    """The caller's ``X-Request-ID`` when it is short and plain; a fresh one otherwise."""
    if given is not None:
        text = given.decode("latin-1")
        if _REQUEST_ID.match(text):
            return text
    return ids.token()


class IssueEndpoint:
    """``POST /issue`` as a plain ASGI app: the hot path builds no request/response objects."""

    def __init__(
        self,
        service: Issuer,
        clock: Clock,
        ids: IdSource,
        dpop: DpopVerifier | None = None,
        url: str = "",
    ) -> None:
        self._dpop = dpop
        self._url = url
        self._service = service
        self._clock = clock
        self._ids = ids

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        authorizations: list[bytes] = []
        proofs: list[str] = []
        given_id = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorizations.append(value)
            elif name == b"x-request-id":
                given_id = value
            elif name == b"dpop":
                proofs.append(value.decode("latin-1"))
        # Two Authorization headers are ambiguous: neither is taken.
        authorization = authorizations[0] if len(authorizations) == 1 else None
        rid = request_id(given_id, self._ids)
        REQUEST_ID.set(rid)  # for log lines of this request (its own task: no reset needed)
        client = scope.get("client")
        context = RequestContext(rid, client[0] if client else None)
        body = await read_body(receive, MAX_BODY_BYTES)
        try:
            dpop = DpopBinding(tuple(proofs), "POST", self._url, self._dpop)
            result = await self._service.issue(
                JsonIssue(bearer_token(authorization), body, dpop), context
            )
        except OAuthError as err:
            status, headers, payload = render_error(err, rid)
        else:
            status = 200
            headers = [*JSON_TYPE, *NO_STORE, (b"x-request-id", rid.encode())]
            payload = json_body(result.body(self._clock.now()))
        await respond(send, status, headers, payload)


def create_app(broker: Broker, clock: Clock, *, config_path: Path | None = None) -> Router:
    """The broker as an ASGI app; starts and closes the broker with the app's lifespan.

    A bare Starlette ``Router``: no middleware sits on the issuance path, and an unhandled
    exception becomes uvicorn's plain 500 (bad input never gets there: it is a 4xx). With
    ``config_path`` (``deputy serve``), SIGHUP reloads the policy from that file.
    """
    readiness = Readiness(broker)
    issuer = ObservedIssuance(broker.service, broker.metrics)
    oauth = OAuthEndpoints(
        service=issuer,
        workloads=broker.workloads,
        introspection=broker.introspection,
        revocations=broker.revocations,
        usage=broker.usage,
        clients=broker.clients,
        dpop=DpopBinding((), "POST", broker.settings.issuer + TOKEN_PATH, broker.dpop),
        new_request_id=lambda r: request_id(
            r.headers.get("x-request-id", "").encode("latin-1") or None, broker.ids
        ),
        now=clock.now,
    )
    documents: dict[str, dict[str, Any]] = {}

    async def jwks(request: Request) -> Response:
        return JSONResponse(broker.key_ring.jwks(), headers={"Cache-Control": "max-age=30"})

    async def oauth_metadata(request: Request) -> Response:
        policy = broker.policy  # scopes_supported follows a reloaded policy
        document = documents.get(policy.version)
        if document is None:
            documents.clear()
            scopes = frozenset(s for tool in policy.tools.values() for s in tool.scopes)
            settings = broker.settings
            document = documents[policy.version] = metadata(
                settings.issuer, settings.signing_alg, scopes
            )
        return JSONResponse(document)

    async def reload_keys() -> None:
        while True:
            await asyncio.sleep(KEY_RELOAD_INTERVAL_SECONDS)
            try:  # on a worker thread: the key store may be a database
                await asyncio.to_thread(broker.key_ring.refresh)
            except Exception:  # a rotation caught half-written, a database away: keep the keys
                _log.warning("signing keys could not be reloaded; retrying", exc_info=True)

    def reload_config(reloader: ConfigReloader) -> None:
        try:
            reloader.reload()
        except Exception:  # a bug must not take the broker down: it keeps its policy
            _log.exception("config reload failed; the running configuration is unchanged")

    @contextlib.asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[None]:
        await broker.start()
        reloader = asyncio.create_task(reload_keys())
        # Signals reach only the main thread: a broker in a test thread has no SIGHUP.
        main_thread = threading.current_thread() is threading.main_thread()
        hup_reloads = config_path if main_thread else None
        if hup_reloads is not None:
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, reload_config, ConfigReloader(hup_reloads, broker)
            )
        readiness.started = True
        _log.info("broker ready", extra={"policy_version": broker.policy.version})
        try:
            yield
        finally:
            # Only now: uvicorn has stopped accepting and the requests under way have ended.
            readiness.stopping = True
            if hup_reloads is not None:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            reloader.cancel()
            await broker.close()  # the audit writer commits everything it was sent
            _log.info("broker stopped")

    settings = broker.settings
    metrics = None
    if settings.metrics.enabled:
        allowed = frozenset(settings.metrics.clients)
        metrics = MetricsEndpoint(broker.metrics, broker.clients, allowed, broker.ids)
    routes = [
        Route(
            ISSUE_PATH,
            IssueEndpoint(issuer, clock, broker.ids, broker.dpop, settings.issuer + ISSUE_PATH),
            methods=["POST"],
        ),
        Route(TOKEN_PATH, oauth.endpoint(TOKEN_PATH, oauth.token), methods=["POST"]),
        Route(
            INTROSPECTION_PATH,
            oauth.endpoint(INTROSPECTION_PATH, oauth.introspect),
            methods=["POST"],
        ),
        Route(REVOCATION_PATH, oauth.endpoint(REVOCATION_PATH, oauth.revoke), methods=["POST"]),
        Route(FEED_PATH, oauth.endpoint(FEED_PATH, oauth.feed), methods=["GET"]),
        Route(
            ADMIN_REVOCATIONS_PATH,
            oauth.endpoint(ADMIN_REVOCATIONS_PATH, oauth.admin_revoke),
            methods=["POST"],
        ),
        Route(USAGE_PATH, oauth.endpoint(USAGE_PATH, oauth.usage), methods=["POST"]),
        Route(JWKS_PATH, jwks, methods=["GET"]),
        Route(METADATA_PATH, oauth_metadata, methods=["GET"]),
        *operations_routes(readiness, metrics),
    ]
    if settings.console.enabled:
        routes += Console(broker, clock).routes()
    observe_routes(routes, broker.metrics, log=settings.logging.access)
    return Router(routes=routes, lifespan=lifespan)
