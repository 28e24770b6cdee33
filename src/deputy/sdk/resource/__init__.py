"""Protecting an API with Deputy credentials: verifier, ASGI middleware, logging helper,
usage reporting.

Bearer and DPoP-bound (RFC 9449) credentials are both accepted, each only as what it is.

The FastAPI dependencies live in :mod:`deputy.sdk.resource.fastapi` (``deputy[fastapi]``);
nothing here imports a web framework.
"""

from deputy.sdk.errors import BrokerUnavailable, CredentialRejected
from deputy.sdk.resource.asgi import DeputyAuthMiddleware
from deputy.sdk.resource.challenge import Challenges, bearer_token, presented_credential
from deputy.sdk.resource.credential import VerifiedCredential
from deputy.sdk.resource.discovery import BrokerMetadata
from deputy.sdk.resource.dpop import DpopNonces, DpopRejected, request_url
from deputy.sdk.resource.logging import DeputyLogFilter, current_credential
from deputy.sdk.resource.usage import UsageReporter
from deputy.sdk.resource.verifier import DeputyVerifier

__all__ = [
    "BrokerMetadata",
    "BrokerUnavailable",
    "Challenges",
    "CredentialRejected",
    "DeputyAuthMiddleware",
    "DeputyLogFilter",
    "DeputyVerifier",
    "DpopNonces",
    "DpopRejected",
    "UsageReporter",
    "VerifiedCredential",
    "bearer_token",
    "current_credential",
    "presented_credential",
    "request_url",
]
