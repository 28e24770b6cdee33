"""``httpx.Auth`` for one tool: attach its credential (with a DPoP proof when it is bound),
renew it before expiry, retry a 401 once."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncGenerator, Generator
from typing import Literal, Protocol

import httpx

from deputy.clock import Clock, SystemClock
from deputy.sdk.agent._dpop import (
    DPOP,
    USE_DPOP_NONCE,
    NonceMemory,
    dpop_error,
    nonce_challenge,
    server_nonce,
)
from deputy.sdk.agent.credentials import BEARER, Credential, RenewalPolicy
from deputy.sdk.errors import BrokerUnavailable, SdkError

Next = Literal["done", "nonce", "renew"]

_log = logging.getLogger("deputy.sdk.agent")


class Renewer(Protocol):
    """Obtains a fresh credential for the tool of a stale one: a new broker decision."""

    def renew(self, stale: Credential) -> Credential: ...

    async def arenew(self, stale: Credential) -> Credential: ...


class CredentialAuth(httpx.Auth):
    """Sends ``Authorization: Bearer <credential>`` for one tool — or, for a DPoP-bound
    credential, ``Authorization: DPoP <credential>`` and a ``DPoP`` proof made for that very
    request (RFC 9449 §7: its method, its URL without query or fragment, the credential's
    hash), signed by the credential's key. A bound credential is never sent as Bearer.

    An API may ask for a nonce in proofs (RFC 9449 §9: a ``401`` with a ``DPoP`` challenge
    ``use_dpop_nonce`` and a ``DPoP-Nonce``): the request is sent again at once with it.
    The latest nonce each origin sent, with any answer, goes into the next proof to it.

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
        self._nonces = NonceMemory()

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

    def _authorize(self, request: httpx.Request, credential: Credential) -> str | None:
        """Put ``credential`` on ``request``; the nonce its DPoP proof carries, if any."""
        token = credential.access_token
        if credential.dpop_bound:
            key = credential.dpop_key
            if key is None:
                raise SdkError(
                    f"the {credential.tool} credential is DPoP-bound and its key is missing: "
                    "it cannot be sent (and is never sent as a Bearer token)"
                )
            nonce = self._nonces.get(request.url)
            request.headers["Authorization"] = f"{DPOP} {token}"
            request.headers["DPoP"] = key.proof(
                request.method, str(request.url), access_token=token, nonce=nonce
            )
            return nonce
        if credential.token_type.lower() != BEARER.lower():
            raise SdkError(
                f"the {credential.tool} credential has token_type "
                f"{credential.token_type[:20]!r}: only Bearer and DPoP can be sent"
            )
        request.headers["Authorization"] = f"{BEARER} {token}"
        request.headers.pop("DPoP", None)
        return None

    def _next(
        self,
        request: httpx.Request,
        credential: Credential,
        response: httpx.Response,
        sent: str | None,
    ) -> Next:
        """After an answer: send again with a nonce the API asked for, renew after a 401,
        or be done. Remembers a nonce the API sent."""
        if credential.dpop_bound:
            asked = nonce_challenge(response, sent)
            if asked is not None:
                self._nonces.remember(request.url, asked)
                return "nonce"
            fresh = server_nonce(response)
            if fresh is not None:
                self._nonces.remember(request.url, fresh)
            if dpop_error(response) == USE_DPOP_NONCE:
                return "done"  # the nonce asked for was the one sent: a new credential won't do
        if response.status_code != 401 or self._renewer is None:
            return "done"
        return "renew"

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
        renewed = with_nonce = False
        while True:
            sent = self._authorize(request, credential)
            response = yield request
            step = self._next(request, credential, response, sent)
            if step == "nonce" and not with_nonce:
                with_nonce = True
            elif step == "renew" and not renewed:
                credential, renewed, with_nonce = self._replace(credential), True, False
            else:
                return

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
        renewed = with_nonce = False
        while True:
            sent = self._authorize(request, credential)
            response = yield request
            step = self._next(request, credential, response, sent)
            if step == "nonce" and not with_nonce:
                with_nonce = True
            elif step == "renew" and not renewed:
                credential, renewed, with_nonce = await self._areplace(credential), True, False
            else:
                return
