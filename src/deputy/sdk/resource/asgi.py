"""ASGI middleware: every request to the API carries a valid Deputy credential, or is refused.

Plain ASGI (no web framework needed): wraps any ASGI 3 application (Starlette, FastAPI,
Django, Quart...).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from deputy.sdk.errors import CredentialRejected
from deputy.sdk.resource.challenge import (
    NONCE_HEADER,
    PROTECTED_RESOURCE_WELL_KNOWN,
    Challenges,
    json_bytes,
)
from deputy.sdk.resource.credential import VerifiedCredential
from deputy.sdk.resource.dpop import public_base, request_url
from deputy.sdk.resource.logging import bound_credential
from deputy.sdk.resource.usage import UsageReporter
from deputy.sdk.resource.verifier import DeputyVerifier

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CREDENTIAL_KEY = "deputy.credential"  # scope key of the VerifiedCredential
CHALLENGES_KEY = "deputy.challenges"  # scope key of the Challenges, for per-route checks
STATE_KEY = "deputy"  # key in scope["state"] (request.state.deputy in Starlette)
_NONCE_NAME = NONCE_HEADER.lower().encode("ascii")


class DeputyAuthMiddleware:
    """Require a Deputy credential (``Authorization: Bearer``, or ``Authorization: DPoP``
    with a ``DPoP`` proof for a DPoP-bound one) on every request.

    Refusals follow RFC 6750: 401 ``invalid_token`` (or a bare challenge when no credential
    was sent), 403 ``insufficient_scope`` when ``required_scopes`` are missing, 400
    ``invalid_request`` for a malformed header; each ``WWW-Authenticate`` names the RFC 9728
    ``resource_metadata`` URL, and the document is served at its well-known path. 503 when
    the broker's keys or revocation list are unavailable (fail closed).

    DPoP (RFC 9449): a request presenting a DPoP-bound credential is refused with a
    ``DPoP`` challenge (with ``algs``, §7.1): 401 ``invalid_dpop_proof`` for a missing,
    repeated or invalid proof (wrong method or URL, replayed, stale, another key, a wrong
    ``ath``...), 401 ``use_dpop_nonce`` with a ``DPoP-Nonce`` when the verifier requires
    nonces and the proof lacks a current one, 401 ``invalid_token`` for a bound credential
    sent as Bearer or an unbound one sent as DPoP, 403 ``insufficient_scope``. When nonces
    are required, every answer to a DPoP request carries the current one. A proof must name
    the request's URL: rebuilt from the request (scheme, ``Host``, path as sent), or
    ``public_url`` plus the path within the app when a proxy in front changes them.

    The verified credential is put in ``scope["state"]["deputy"]`` (``request.state.deputy``)
    and ``scope["deputy.credential"]``, and bound for :class:`~deputy.sdk.resource.logging.
    DeputyLogFilter` while the request runs. Paths in ``exempt_paths`` (exact match) pass
    without a credential. On ASGI lifespan startup the verifier is started, and closed at
    shutdown.

    With ``usage``, each HTTP request let through is reported to the broker as one use of
    its credential: operation ``"<METHOD> <route path>"`` (the route's template when the
    app's router names one, else the raw path), outcome the response status (500 if the app
    failed before answering). The reporter is started and closed with the lifespan too.
    """

    def __init__(
        self,
        app: ASGIApp,
        verifier: DeputyVerifier,
        required_scopes: Iterable[str] = (),
        exempt_paths: Iterable[str] = (PROTECTED_RESOURCE_WELL_KNOWN,),
        *,
        resource: str | None = None,
        realm: str | None = None,
        scopes_supported: Iterable[str] | None = None,
        resource_name: str | None = None,
        public_url: str | None = None,
        usage: UsageReporter | None = None,
    ) -> None:
        self.app = app
        self.usage = usage
        self.verifier = verifier
        self.required_scopes = tuple(required_scopes)
        self.exempt_paths = frozenset(exempt_paths)
        self.public_url = None if public_url is None else public_base(public_url)
        self.challenges = Challenges(
            resource or verifier.audience,
            verifier.issuer,
            realm,
            dpop_algorithms=verifier.dpop_algorithms,
        )
        scopes = self.required_scopes if scopes_supported is None else tuple(scopes_supported)
        self._metadata_path = self.challenges.metadata_path
        self._metadata = json_bytes(
            self.challenges.protected_resource_metadata(
                scopes_supported=scopes, resource_name=resource_name
            )
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if kind == "http" and path == self._metadata_path:
            await self._serve_metadata(scope, send)
            return
        if path in self.exempt_paths:
            await self.app({**scope, CHALLENGES_KEY: self.challenges}, receive, send)
            return
        authorization: list[str] = []
        proofs: list[str] = []
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                authorization.append(value.decode("latin-1"))
            elif name == b"dpop":
                proofs.append(value.decode("latin-1"))
        credential: VerifiedCredential | None = None
        try:
            credential = await self.verifier.verify_request(
                scope.get("method", "GET"),
                request_url(scope, self.public_url),
                authorization,
                proofs,
            )
            if credential is None:
                await self._refuse(kind, None, send)
                return
            credential.require_scopes(self.required_scopes)
        except CredentialRejected as exc:
            bound = credential is not None and credential.jkt is not None
            await self._refuse(kind, exc, self._with_nonce(send, proofs), dpop=bound)
            return
        state = {**scope.get("state", {}), STATE_KEY: credential}
        inner = {
            **scope,
            "state": state,
            CREDENTIAL_KEY: credential,
            CHALLENGES_KEY: self.challenges,
        }
        with bound_credential(credential):
            if self.usage is None or kind != "http":
                await self.app(inner, receive, self._with_nonce(send, proofs))
            else:
                await self._reported(
                    inner, receive, self._with_nonce(send, proofs), credential, self.usage
                )

    async def _reported(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        credential: VerifiedCredential,
        usage: UsageReporter,
    ) -> None:
        """Run the app, then report the use with the status it answered."""
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message.get("type") == "http.response.start":
                status = int(message.get("status", 500))
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            # The router fills in the matched route on the scope it was handed.
            route = getattr(scope.get("route"), "path", None)
            path = route if isinstance(route, str) else scope.get("path", "")
            usage.report(credential, f"{scope.get('method', 'GET')} {path}", status)

    def _with_nonce(self, send: Send, proofs: list[str]) -> Send:
        """``send``, adding the current ``DPoP-Nonce`` to the answer to a DPoP request when
        nonces are required (RFC 9449 §8.2: a new nonce may come with any answer)."""
        if not proofs or not self.verifier.requires_dpop_nonce:
            return send
        verifier = self.verifier

        async def send_with_nonce(message: Message) -> None:
            if message.get("type") == "http.response.start":
                nonce = verifier.dpop_nonce()
                headers = list(message.get("headers", ()))
                if nonce is not None and not any(k.lower() == _NONCE_NAME for k, _ in headers):
                    headers.append((_NONCE_NAME, nonce.encode("ascii")))
                    message = {**message, "headers": headers}
            await send(message)

        return send_with_nonce

    async def _refuse(
        self, kind: str, error: CredentialRejected | None, send: Send, *, dpop: bool = False
    ) -> None:
        if kind == "websocket":
            # Before accept, a close is answered by the server with HTTP 403.
            await send({"type": "websocket.close", "code": 1008, "reason": ""})
            return
        status, headers, body = self.challenges.refusal(error, self.required_scopes, dpop=dpop)
        await _respond(send, status, json_bytes(body), headers)

    async def _serve_metadata(self, scope: Scope, send: Send) -> None:
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            body = json_bytes({"error": "method_not_allowed"})
            await _respond(send, 405, body, {"Allow": "GET, HEAD"})
            return
        await _respond(
            send,
            200,
            self._metadata,
            {"Cache-Control": "public, max-age=3600"},
            head=method == "HEAD",
        )

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Start the verifier before the app's startup; close it after the app's shutdown."""

        async def receive_and_start() -> Message:
            message = await receive()
            if message.get("type") == "lifespan.startup":
                await self.verifier.start()
                if self.usage is not None:
                    await self.usage.start()
            return message

        async def send_and_close(message: Message) -> None:
            if message.get("type") in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                if self.usage is not None:
                    await self.usage.aclose()
                await self.verifier.aclose()
            await send(message)

        await self.app(scope, receive_and_start, send_and_close)


async def _respond(
    send: Send, status: int, body: bytes, headers: dict[str, str], *, head: bool = False
) -> None:
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode("ascii")),
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()),
    ]
    if status >= 400:
        raw.append((b"cache-control", b"no-store"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": b"" if head else body})
