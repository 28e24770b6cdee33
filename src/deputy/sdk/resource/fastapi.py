"""FastAPI dependencies: ``Depends(deputy.require_scope("accounts:read"))`` on an endpoint.

Needs the ``deputy[fastapi]`` extra; importing this module is what imports FastAPI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager

from fastapi import HTTPException, Request

from deputy.sdk.errors import CredentialRejected
from deputy.sdk.resource.asgi import CHALLENGES_KEY, CREDENTIAL_KEY
from deputy.sdk.resource.challenge import Challenges
from deputy.sdk.resource.credential import VerifiedCredential
from deputy.sdk.resource.dpop import public_base, request_url
from deputy.sdk.resource.logging import bind_credential
from deputy.sdk.resource.verifier import DeputyVerifier

Dependency = Callable[[Request], Awaitable[VerifiedCredential]]


class DeputyResource:
    """An API protected by Deputy credentials, as FastAPI dependencies.

    ``credential`` is a dependency giving the request's :class:`VerifiedCredential`;
    ``require_scope(*scopes)`` one that also requires every scope (403
    ``insufficient_scope`` otherwise). When :class:`~deputy.sdk.resource.asgi.
    DeputyAuthMiddleware` already verified the request, its credential is used; otherwise
    the ``Authorization`` header is verified here: ``Bearer``, or ``DPoP`` with the request's
    ``DPoP`` proof for a DPoP-bound credential (see :meth:`DeputyVerifier.verify_request`;
    the proof names the request's URL, or ``public_url`` plus the path within the app).
    Refusals are ``HTTPException``s with the RFC 6750 ``WWW-Authenticate`` challenge, or the
    RFC 9449 ``DPoP`` one for DPoP requests (naming the RFC 9728 metadata URL).

    ``lifespan`` starts and stops the verifier: ``FastAPI(lifespan=deputy.lifespan)``.
    """

    def __init__(
        self,
        verifier: DeputyVerifier,
        *,
        resource: str | None = None,
        realm: str | None = None,
        public_url: str | None = None,
    ) -> None:
        self.verifier = verifier
        self.public_url = None if public_url is None else public_base(public_url)
        self.challenges = Challenges(
            resource or verifier.audience,
            verifier.issuer,
            realm,
            dpop_algorithms=verifier.dpop_algorithms,
        )

    async def credential(self, request: Request) -> VerifiedCredential:
        """Dependency: the request's verified credential (any scope)."""
        return await self._authenticate(request, ())

    def require_scope(self, *scopes: str) -> Dependency:
        """Dependency: the request's verified credential, carrying every one of ``scopes``."""
        required = tuple(scopes)

        async def credential_with_scope(request: Request) -> VerifiedCredential:
            return await self._authenticate(request, required)

        return credential_with_scope

    async def _authenticate(self, request: Request, scopes: tuple[str, ...]) -> VerifiedCredential:
        stored = request.scope.get(CREDENTIAL_KEY)
        credential: VerifiedCredential | None = None
        try:
            if isinstance(stored, VerifiedCredential):
                credential = stored
            else:
                credential = await self.verifier.verify_request(
                    request.method,
                    request_url(request.scope, self.public_url),
                    request.headers.getlist("authorization"),
                    request.headers.getlist("dpop"),
                )
                if credential is None:
                    raise _refusal(self.challenges, None, scopes)
                bind_credential(credential)
            credential.require_scopes(scopes)
        except CredentialRejected as exc:
            raise _refusal(self.challenges, exc, scopes, _bound(credential)) from None
        return credential

    @asynccontextmanager
    async def lifespan(self, app: object) -> AsyncIterator[None]:
        """Start the verifier with the application, and close it at shutdown."""
        async with self.verifier:
            yield


def require_scope(*scopes: str) -> Dependency:
    """Dependency for an app behind ``DeputyAuthMiddleware``: its credential, with ``scopes``.

    Uses the credential the middleware verified; on a path the middleware exempts, the
    request is refused with a bare challenge. Without the middleware, use
    :class:`DeputyResource`.
    """
    required = tuple(scopes)

    async def credential_with_scope(request: Request) -> VerifiedCredential:
        challenges = request.scope.get(CHALLENGES_KEY)
        credential = request.scope.get(CREDENTIAL_KEY)
        if not isinstance(challenges, Challenges):
            raise RuntimeError(
                "require_scope() needs DeputyAuthMiddleware in front of the app "
                "(or use DeputyResource(verifier).require_scope())"
            )
        if not isinstance(credential, VerifiedCredential):
            raise _refusal(challenges, None, required)
        try:
            credential.require_scopes(required)
        except CredentialRejected as exc:
            raise _refusal(challenges, exc, required, _bound(credential)) from None
        return credential

    return credential_with_scope


def _bound(credential: VerifiedCredential | None) -> bool:
    return credential is not None and credential.jkt is not None


def _refusal(
    challenges: Challenges,
    error: CredentialRejected | None,
    scopes: Iterable[str],
    dpop: bool = False,
) -> HTTPException:
    status, headers, body = challenges.refusal(error, scopes, dpop=dpop)
    return HTTPException(status_code=status, detail=body, headers=headers)
