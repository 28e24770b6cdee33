"""The HTTP side of a protected API: RFC 6750 bearer and RFC 9449 DPoP credentials and
challenges, RFC 9728 metadata.

Shared by the ASGI middleware and the FastAPI dependency, and usable from any framework.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from deputy.identity.jose import ALLOWED_ASYMMETRIC_ALGS
from deputy.sdk.errors import CredentialRejected
from deputy.sdk.resource.dpop import DpopRejected

PROTECTED_RESOURCE_WELL_KNOWN = "/.well-known/oauth-protected-resource"
RETRY_AFTER_SECONDS = 5
BEARER = "Bearer"
DPOP = "DPoP"
NONCE_HEADER = "DPoP-Nonce"

# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# RFC 6750 §3: what a quoted error_description / scope may hold (no '"' and no '\').
_UNQUOTABLE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


def bearer_token(authorization: Sequence[str]) -> str | None:
    """The token of an ``Authorization: Bearer`` header (RFC 6750 §2.1); None without one.

    ``authorization`` holds every Authorization header of the request. Several of them,
    or a Bearer credential that is empty or not a b64token, is ``invalid_request`` (400).
    """
    if not authorization:
        return None
    if len(authorization) > 1:
        raise CredentialRejected(
            "invalid_request", "the request has more than one Authorization header", status=400
        )
    scheme, _, credentials = authorization[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        return None  # another scheme: no credential for this API
    token = credentials.strip()
    if not token:
        raise CredentialRejected("invalid_request", "the Bearer credential is empty", status=400)
    if not _B64TOKEN.fullmatch(token):
        raise CredentialRejected(
            "invalid_request", "the Bearer credential is malformed", status=400
        )
    return token


def presented_credential(authorization: Sequence[str]) -> tuple[str, str] | None:
    """The scheme (``Bearer`` or ``DPoP``) and token of the request's ``Authorization``
    header (RFC 6750 §2.1, RFC 9449 §7.1); None without one, or for another scheme.

    Several Authorization headers, or a credential that is empty or not a b64token, is
    ``invalid_request`` (400), with a DPoP challenge when the scheme is DPoP.
    """
    if not authorization:
        return None
    if len(authorization) > 1:
        raise CredentialRejected(
            "invalid_request", "the request has more than one Authorization header", status=400
        )
    scheme, _, credentials = authorization[0].strip().partition(" ")
    if scheme.lower() == BEARER.lower():
        return BEARER, _token(credentials, BEARER, CredentialRejected)
    if scheme.lower() == DPOP.lower():
        return DPOP, _token(credentials, DPOP, DpopRejected)
    return None


def _token(credentials: str, scheme: str, error: type[CredentialRejected]) -> str:
    token = credentials.strip()
    if not token:
        raise error("invalid_request", f"the {scheme} credential is empty", status=400)
    if not _B64TOKEN.fullmatch(token):
        raise error("invalid_request", f"the {scheme} credential is malformed", status=400)
    return token


def _quoted(value: str) -> str:
    return '"' + _UNQUOTABLE.sub("?", value) + '"'


def resource_metadata_url(resource: str) -> str:
    """RFC 9728 §3.1: the well-known segment goes between the host and any resource path."""
    url = httpx.URL(resource)
    path = url.path.rstrip("/")
    return str(url.copy_with(path=PROTECTED_RESOURCE_WELL_KNOWN + path, query=None, fragment=None))


@dataclass(frozen=True, slots=True)
class Challenges:
    """What a protected API answers when it refuses a request, and its RFC 9728 document.

    ``resource`` is the API's resource identifier (RFC 9728 §1.2: an https URL), by default
    the audience its credentials are minted for; ``issuer`` the broker that mints them;
    ``dpop_algorithms`` the algorithms DPoP proofs may be signed with (the ``algs`` of a
    ``DPoP`` challenge, RFC 9449 §7.1).
    """

    resource: str
    issuer: str
    realm: str | None = None
    dpop_algorithms: tuple[str, ...] = tuple(sorted(ALLOWED_ASYMMETRIC_ALGS))

    def __post_init__(self) -> None:
        url = httpx.URL(self.resource)
        if url.scheme not in ("https", "http") or not url.host or url.fragment:
            raise ValueError(
                "resource must be the API's URL (RFC 9728 resource identifier); "
                "pass resource= when the audience is not one"
            )

    @property
    def metadata_url(self) -> str:
        return resource_metadata_url(self.resource)

    @property
    def metadata_path(self) -> str:
        """Where this API serves its RFC 9728 document."""
        return httpx.URL(self.metadata_url).path

    def www_authenticate(
        self, error: CredentialRejected | None = None, scope: str = "", *, scheme: str = BEARER
    ) -> str:
        """The ``WWW-Authenticate`` value (RFC 6750 §3; RFC 9728 §5.1 ``resource_metadata``),
        of ``scheme`` ``Bearer`` or ``DPoP`` (RFC 9449 §7.1: with ``algs``).

        Without an error (no credential presented), the challenge names no error code.
        """
        params: list[str] = []
        if self.realm is not None:
            params.append(f"realm={_quoted(self.realm)}")
        if error is not None:
            params.append(f"error={_quoted(error.error)}")
            params.append(f"error_description={_quoted(error.description)}")
            if scope:
                params.append(f"scope={_quoted(scope)}")
        if scheme == DPOP:
            params.append(f"algs={_quoted(' '.join(self.dpop_algorithms))}")
        params.append(f"resource_metadata={_quoted(self.metadata_url)}")
        return f"{scheme} " + ", ".join(params)

    def refusal(
        self,
        error: CredentialRejected | None,
        required_scopes: Iterable[str] = (),
        *,
        dpop: bool = False,
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        """Status, headers and JSON body for a refused request (``None``: no credential).

        The challenge is ``DPoP`` for a :class:`DpopRejected` error, or with ``dpop`` (the
        request presented a DPoP-bound credential), else ``Bearer``; a ``use_dpop_nonce``
        refusal carries the nonce to use in ``DPoP-Nonce`` (RFC 9449 §9).
        """
        if error is None:
            body = {"error_description": "this API requires a Deputy credential (Bearer)"}
            return 401, {"WWW-Authenticate": self.www_authenticate()}, body
        body = {"error": error.error, "error_description": error.description}
        if error.status == 503:
            return 503, {"Retry-After": str(RETRY_AFTER_SECONDS)}, body
        scope = " ".join(required_scopes) if error.error == "insufficient_scope" else ""
        scheme = DPOP if dpop or isinstance(error, DpopRejected) else BEARER
        headers = {"WWW-Authenticate": self.www_authenticate(error, scope, scheme=scheme)}
        if isinstance(error, DpopRejected) and error.nonce is not None:
            headers[NONCE_HEADER] = error.nonce
        return error.status, headers, body

    def protected_resource_metadata(
        self,
        *,
        scopes_supported: Iterable[str] = (),
        resource_name: str | None = None,
        resource_documentation: str | None = None,
    ) -> dict[str, Any]:
        """The RFC 9728 §2 document: who mints credentials for this API, and how to send them."""
        document: dict[str, Any] = {
            "resource": self.resource,
            "authorization_servers": [self.issuer],
            "bearer_methods_supported": ["header"],
        }
        scopes = sorted(set(scopes_supported))
        if scopes:
            document["scopes_supported"] = scopes
        if resource_name is not None:
            document["resource_name"] = resource_name
        if resource_documentation is not None:
            document["resource_documentation"] = resource_documentation
        return document


def json_bytes(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode("utf-8")
