"""FastAPI dependencies: ``Depends(deputy.require_scope("accounts:read"))`` on an endpoint.

Needs the ``deputy[fastapi]`` extra; importing this module is what imports FastAPI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager

from fastapi import HTTPException, Request

from deputy.sdk.errors import CredentialRejected
from deputy.sdk.resource.asgi import CHALLENGES_KEY, CREDENTIAL_KEY
from deputy.sdk.resource.challenge import Challenges, bearer_token
from deputy.sdk.resource.credential import VerifiedCredential
from deputy.sdk.resource.logging import bind_credential
from deputy.sdk.resource.verifier import DeputyVerifier

Dependency = Callable[[Request], Awaitable[VerifiedCredential]]


class DeputyResource:
    """An API protected by Deputy credentials, as FastAPI dependencies.

    ``credential`` is a dependency giving the request's :class:`VerifiedCredential`;
    ``require_scope(*scopes)`` one that also requires every scope (403
    ``insufficient_scope`` otherwise). When :class:`~deputy.sdk.resource.asgi.
    DeputyAuthMiddleware` already verified the request, its credential is used; otherwise
    the ``Authorization: Bearer`` header is verified here. Refusals are ``HTTPException``s
    with the RFC 6750 ``WWW-Authenticate`` challenge (naming the RFC 9728 metadata URL).

    ``lifespan`` starts and stops the verifier: ``FastAPI(lifespan=deputy.lifespan)``.
    """

    def __init__(
        self, verifier: DeputyVerifier, *, resource: str | None = None, realm: str | None = None
    ) -> None:
        self.verifier = verifier
        self.challenges = Challenges(resource or verifier.audience, verifier.issuer, realm)

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
        try:
            if isinstance(stored, VerifiedCredential):
                credential = stored
            else:
                token = bearer_token(request.headers.getlist("authorization"))
                if token is None:
                    raise _refusal(self.challenges, None, scopes)
                credential = await self.verifier.verify(token)
                bind_credential(credential)
            credential.require_scopes(scopes)
        except CredentialRejected as exc:
            raise _refusal(self.challenges, exc, scopes) from None
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
            raise _refusal(challenges, exc, required) from None
        return credential

    return credential_with_scope


def _refusal(
    challenges: Challenges, error: CredentialRejected | None, scopes: Iterable[str]
) -> HTTPException:
    status, headers, body = challenges.refusal(error, scopes)
    return HTTPException(status_code=status, detail=body, headers=headers)
