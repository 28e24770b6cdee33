"""Wrappers that time and count what passes through them: routes, issuances, audit commits.

They sit at the server layer around domain objects, so the domain knows nothing of
Prometheus; each adds two clock reads and a few O(1) metric updates to a request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deputy.audit.log import AuditLog
from deputy.audit.record import DecisionRecord
from deputy.errors import OAuthError, StoreUnavailable
from deputy.server.logs import ACCESS_LOGGER
from deputy.server.metrics import BrokerMetrics, RouteMetrics
from deputy.service.context import RequestContext
from deputy.service.issuance import Exchange, Issuer, IssueResult

_access = logging.getLogger(ACCESS_LOGGER)


class ObservedIssuance:
    """An :class:`Issuer` that counts each decision's outcome and times it."""

    def __init__(self, issuer: Issuer, metrics: BrokerMetrics) -> None:
        self._issuer = issuer
        self._metrics = metrics

    async def issue(self, exchange: Exchange, context: RequestContext) -> IssueResult:
        start = time.perf_counter()
        try:
            result = await self._issuer.issue(exchange, context)
        except OAuthError as err:
            self._metrics.refused(context.endpoint, err, time.perf_counter() - start)
            raise
        self._metrics.issued(
            context.endpoint,
            (c.draft.tool for c in result.credentials),
            time.perf_counter() - start,
        )
        return result


class TimedAuditLog:
    """The broker's audit log, with the time of each commit observed."""

    def __init__(self, log: AuditLog, metrics: BrokerMetrics) -> None:
        self._log = log
        self._metrics = metrics

    async def append(
        self, record: DecisionRecord, claims: Sequence[Mapping[str, Any]] = ()
    ) -> tuple[str, ...]:
        start = time.perf_counter()
        try:
            tokens = await self._log.append(record, claims)
        except StoreUnavailable:
            self._metrics.audit_commit(time.perf_counter() - start, committed=False)
            raise
        self._metrics.audit_commit(time.perf_counter() - start, committed=True)
        return tokens

    async def aclose(self) -> None:
        await self._log.aclose()


class ObservedRoute:
    """One route's ASGI app, counted and timed under the route's path; optionally logged.

    The access log line names the route (never the raw path or query, which could carry a
    token), the status, the duration and the request id; never a header.
    """

    def __init__(self, app: ASGIApp, route: str, metrics: RouteMetrics, *, log: bool) -> None:
        self._app = app
        self._route = route
        self._metrics = metrics
        self._log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        status = 500  # what uvicorn answers if the app raises

        async def answer(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, answer)
        finally:
            seconds = time.perf_counter() - start
            self._metrics.answered(status, seconds)
            if self._log:
                _access.info(
                    "request",
                    extra={
                        "method": scope.get("method"),
                        "route": self._route,
                        "status": status,
                        "duration_ms": round(seconds * 1000, 3),
                    },  # the request id comes from REQUEST_ID, which the endpoint set
                )


def observe_routes(routes: Iterable[BaseRoute], metrics: BrokerMetrics, *, log: bool) -> None:
    """Wrap the app of every plain route so it is counted and timed (and logged if asked)."""
    for route in routes:
        if isinstance(route, Route):
            route.app = ObservedRoute(route.app, route.path, metrics.route(route.path), log=log)
