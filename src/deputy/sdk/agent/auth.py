"""``httpx.Auth`` for one tool: attach its credential, renew it before expiry, retry a 401 once."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncGenerator, Generator
from typing import Protocol

import httpx

from deputy.clock import Clock, SystemClock
from deputy.sdk.agent.credentials import Credential, RenewalPolicy
from deputy.sdk.errors import BrokerUnavailable

_log = logging.getLogger("deputy.sdk.agent")


class Renewer(Protocol):
    """Obtains a fresh credential for the tool of a stale one: a new broker decision."""

    def renew(self, stale: Credential) -> Credential: ...

    async def arenew(self, stale: Credential) -> Credential: ...


class CredentialAuth(httpx.Auth):
    """Sends ``Authorization: Bearer <credential>`` for one tool.

    Before each request the credential is renewed if it is due (see :class:`RenewalPolicy`);
    if the API answers ``401``, the credential is renewed and the request sent once more —
    the second answer is returned whatever it is. Renewal asks the broker again for this
    tool alone, on the same terms as the first request, so it is a new policy decision with
    its own ``execution_id`` and ``decision_id`` (and it can be refused: the error is raised
    from the request). Works with ``httpx.Client`` and ``httpx.AsyncClient``; concurrent
    requests share one renewal. The request body is buffered so that it can be resent.
    """

    requires_request_body = True

    def __init__(
        self,
        credential: Credential,
        renewer: Renewer | None = None,
        *,
        clock: Clock | None = None,
        renewal: RenewalPolicy | None = None,
    ) -> None:
        self._credential = credential
        self._renewer = renewer
        self._clock = clock or SystemClock()
        self._policy = renewal or RenewalPolicy()
        self._not_before = 0.0  # no renewal attempt before this, after the broker was down
        self._thread_lock = threading.Lock()
        self._async_lock = asyncio.Lock()

    @property
    def tool(self) -> str:
        return self._credential.tool

    @property
    def credential(self) -> Credential:
        """The credential held now (as last issued; not renewed by reading it)."""
        return self._credential

    def __repr__(self) -> str:
        return f"CredentialAuth(tool={self.tool!r}, credential={self._credential!r})"

    # What to do, without I/O: shared by the sync and async paths.

    def _due(self, held: Credential) -> bool:
        if self._renewer is None:
            return False
        now = self._clock.now()
        return now >= self._not_before and self._policy.due(held, now)

    def _keep_while_down(self, held: Credential, err: BrokerUnavailable) -> bool:
        """After a failed early renewal: go on with ``held`` if it is still valid."""
        now = self._clock.now()
        if now >= held.expires_at:
            return False
        self._not_before = now + self._policy.retry_interval
        _log.warning(
            "renewing the %s credential failed (%s); using it for its last %.0f s",
            held.tool,
            err.description,
            held.expires_at - now,
        )
        return True

    def _adopt(self, stale: Credential, fresh: Credential) -> Credential:
        self._credential = fresh
        self._not_before = 0.0
        _log.info(
            "renewed the %s credential: execution %s, decision %s (was %s)",
            fresh.tool,
            fresh.execution_id,
            fresh.decision_id,
            stale.decision_id,
        )
        return fresh

    @staticmethod
    def _authorize(request: httpx.Request, credential: Credential) -> httpx.Request:
        request.headers["Authorization"] = f"Bearer {credential.access_token}"
        return request

    # Sync path.

    def current(self) -> Credential:
        """The credential to send now, renewed first if it is due."""
        held = self._credential
        if not self._due(held):
            return held
        with self._thread_lock:
            if self._credential is not held or not self._due(held):
                return self._credential
            assert self._renewer is not None
            try:
                fresh = self._renewer.renew(held)
            except BrokerUnavailable as err:
                if self._keep_while_down(held, err):
                    return held
                raise
            return self._adopt(held, fresh)

    def _replace(self, rejected: Credential) -> Credential:
        assert self._renewer is not None
        with self._thread_lock:
            if self._credential is not rejected:
                return self._credential
            return self._adopt(rejected, self._renewer.renew(rejected))

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        request.read()
        credential = self.current()
        response = yield self._authorize(request, credential)
        if response.status_code != 401 or self._renewer is None:
            return
        yield self._authorize(request, self._replace(credential))

    # Async path.

    async def acurrent(self) -> Credential:
        """The credential to send now, renewed first if it is due."""
        held = self._credential
        if not self._due(held):
            return held
        async with self._async_lock:
            if self._credential is not held or not self._due(held):
                return self._credential
            assert self._renewer is not None
            try:
                fresh = await self._renewer.arenew(held)
            except BrokerUnavailable as err:
                if self._keep_while_down(held, err):
                    return held
                raise
            return self._adopt(held, fresh)

    async def _areplace(self, rejected: Credential) -> Credential:
        assert self._renewer is not None
        async with self._async_lock:
            if self._credential is not rejected:
                return self._credential
            return self._adopt(rejected, await self._renewer.arenew(rejected))

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        await request.aread()
        credential = await self.acurrent()
        response = yield self._authorize(request, credential)
        if response.status_code != 401 or self._renewer is None:
            return
        yield self._authorize(request, await self._areplace(credential))
