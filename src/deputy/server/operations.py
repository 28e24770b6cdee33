"""What operators' tooling reads: ``/healthz`` (liveness), ``/readyz`` (readiness), ``/metrics``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from deputy.errors import AccessDenied, InvalidClient, OAuthError
from deputy.ids import IdSource
from deputy.oauth.client_auth import ClientAuthenticator
from deputy.oauth.form import Form
from deputy.server.errors import NO_STORE, render_error, respond
from deputy.server.health import Readiness
from deputy.server.metrics import BrokerMetrics

HEALTHZ_PATH = "/healthz"
READYZ_PATH = "/readyz"
METRICS_PATH = "/metrics"


class MetricsEndpoint:
    """``GET /metrics``: the Prometheus text format, for the configured scrapers if any."""

    def __init__(
        self,
        metrics: BrokerMetrics,
        clients: ClientAuthenticator,
        allowed: frozenset[str],
        ids: IdSource,
    ) -> None:
        self._metrics = metrics
        self._clients = clients
        self._allowed = allowed
        self._ids = ids

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._allowed:
            try:
                await self._authorize(scope)
            except OAuthError as err:
                status, headers, payload = render_error(err, self._ids.token())
                await respond(send, status, headers, payload)
                return
        accept = [v for k, v in scope["headers"] if k == b"accept"]
        payload, content_type = self._metrics.exposition(b",".join(accept).decode("latin-1"))
        headers = [(b"content-type", content_type.encode()), *NO_STORE]
        await respond(send, 200, headers, payload)

    async def _authorize(self, scope: Scope) -> None:
        values = [v for k, v in scope["headers"] if k == b"authorization"]
        authorization = values[0].decode("latin-1") if len(values) == 1 else None
        try:
            client = await self._clients.authenticate(authorization, Form({}))
        except InvalidClient as err:
            err.challenge = "Basic"  # a scraper authenticates with HTTP Basic
            raise
        if client.name not in self._allowed:
            raise AccessDenied(f"client {client.name!r} may not read metrics")


def operations_routes(readiness: Readiness, metrics: MetricsEndpoint | None = None) -> list[Route]:
    """``/healthz`` and ``/readyz``, and ``/metrics`` when it is enabled."""

    async def healthz(request: Request) -> Response:
        if not readiness.started:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        status, document = await readiness.document()
        return JSONResponse(document, status_code=status, headers={"Cache-Control": "no-store"})

    routes = [
        Route(HEALTHZ_PATH, healthz, methods=["GET"]),
        Route(READYZ_PATH, readyz, methods=["GET"]),
    ]
    if metrics is not None:
        routes.append(Route(METRICS_PATH, metrics, methods=["GET"]))
    return routes
