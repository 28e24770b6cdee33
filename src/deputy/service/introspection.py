"""RFC 7662 introspection: a resource server learns about the credentials meant for it."""

from __future__ import annotations

from typing import Any

from deputy.errors import TokenRejected
from deputy.service.revocation import Revocations
from deputy.tokens.verify import CredentialVerifier

INACTIVE: dict[str, Any] = {"active": False}


class Introspection:
    """Active only for an unexpired, unrevoked Deputy credential the asker may see."""

    def __init__(self, credentials: CredentialVerifier, revocations: Revocations) -> None:
        self._credentials = credentials
        self._revocations = revocations

    async def introspect(
        self, token: str, *, audiences: frozenset[str], admin: bool
    ) -> dict[str, Any]:
        """RFC 7662 §2.2: every claim, with the full ``act`` chain, or just ``active: false``.

        A resource server sees only credentials whose audience is its own (§4: nothing leaks
        about tokens meant for others); an operator sees any.
        """
        try:
            credential = self._credentials.verify(token)
        except TokenRejected:
            return dict(INACTIVE)
        if not admin and credential.audience not in audiences:
            return dict(INACTIVE)
        if await self._revocations.covering(credential.claims) is not None:
            return dict(INACTIVE)
        return {"active": True, "token_type": "Bearer", **credential.claims}
