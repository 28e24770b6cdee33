"""Finding the broker's keys and revocation feed from its RFC 8414 metadata."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from deputy.identity.errors import KeySourceError
from deputy.identity.jose import ALLOWED_ASYMMETRIC_ALGS
from deputy.identity.jwks import Fetched
from deputy.identity.jwks import get_json as fetch_json
from deputy.sdk.errors import BrokerUnavailable

WELL_KNOWN = "/.well-known/oauth-authorization-server"
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


async def get_json(
    client: httpx.AsyncClient, url: str, *, if_none_match: str | None = None
) -> Fetched:
    """GET a JSON object from the broker (see :func:`deputy.identity.jwks.get_json`)."""
    try:
        return await fetch_json(client, url, if_none_match=if_none_match)
    except KeySourceError as exc:
        raise BrokerUnavailable(str(exc)) from None


def metadata_url(issuer: str) -> str:
    """RFC 8414 §3.1: the well-known segment goes between the host and any issuer path."""
    url = httpx.URL(issuer)
    path = url.path.rstrip("/")
    return str(url.copy_with(path=WELL_KNOWN + path, query=None, fragment=None))


class Locator:
    """Where the broker's URLs are fetched: at the issuer, or at ``base_url`` in its stead.

    A broker is often reachable at another address than the URL it names itself by (a
    service name inside a cluster, loopback in tests): with ``base_url``, the metadata is
    read from ``{base_url}/.well-known/oauth-authorization-server`` and every endpoint the
    metadata lists under the issuer is fetched under ``base_url``. Tokens must still carry
    the issuer exactly.
    """

    __slots__ = ("base_url", "issuer")

    def __init__(self, issuer: str, base_url: str | None) -> None:
        self.issuer = issuer
        self.base_url = base_url.rstrip("/") if base_url else None

    @property
    def metadata_url(self) -> str:
        if self.base_url is None:
            return metadata_url(self.issuer)
        return self.base_url + WELL_KNOWN

    def locate(self, url: str) -> str:
        """The URL to fetch for an endpoint URL the metadata names."""
        if self.base_url is not None and (url == self.issuer or url.startswith(self.issuer + "/")):
            return self.base_url + url[len(self.issuer) :]
        if not acceptable_url(url):
            raise BrokerUnavailable(f"endpoint {url!r} is not an https URL")
        return url


def acceptable_url(url: str) -> bool:
    """https only; plain http is allowed on loopback hosts."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return False
    if parsed.scheme == "https":
        return bool(parsed.host)
    return parsed.scheme == "http" and parsed.host in _LOOPBACK_HOSTS


@dataclass(frozen=True, slots=True)
class BrokerMetadata:
    """What the verifier uses from the broker's RFC 8414 metadata, with URLs to fetch."""

    issuer: str
    jwks_url: str
    revocation_feed_url: str
    algorithms: frozenset[str]

    @classmethod
    def from_document(
        cls, document: Mapping[str, Any], locator: Locator, allowed: frozenset[str]
    ) -> BrokerMetadata:
        where = locator.metadata_url
        # RFC 8414 §3.3: the issuer in the metadata is identical to the one configured.
        if document.get("issuer") != locator.issuer:
            raise BrokerUnavailable(f"{where}: issuer does not match {locator.issuer!r}")
        urls = {}
        for name in ("jwks_uri", "revocation_feed_endpoint"):
            value = document.get(name)
            if not isinstance(value, str) or not value:
                raise BrokerUnavailable(f"{where}: {name} is missing")
            urls[name] = locator.locate(value)
        announced = document.get("access_token_signing_alg_values_supported")
        if announced is not None and (
            not isinstance(announced, list) or not all(isinstance(a, str) for a in announced)
        ):
            raise BrokerUnavailable(
                f"{where}: access_token_signing_alg_values_supported is not a list of strings"
            )
        algorithms = allowed & frozenset(announced if announced is not None else allowed)
        if not algorithms:
            raise BrokerUnavailable(
                f"{where}: the broker signs with none of the allowed algorithms "
                f"({', '.join(sorted(allowed))})"
            )
        return cls(locator.issuer, urls["jwks_uri"], urls["revocation_feed_endpoint"], algorithms)


def allowed_algorithms(configured: Iterable[str] | None) -> frozenset[str]:
    """The configured allow-list (asymmetric algorithms only), or every asymmetric one."""
    if configured is None:
        return ALLOWED_ASYMMETRIC_ALGS
    chosen = frozenset(configured)
    if not chosen or not chosen <= ALLOWED_ASYMMETRIC_ALGS:
        raise ValueError(
            f"algorithms must be a non-empty subset of {sorted(ALLOWED_ASYMMETRIC_ALGS)}"
        )
    return chosen


async def discover(
    client: httpx.AsyncClient, locator: Locator, allowed: frozenset[str]
) -> BrokerMetadata:
    fetched = await get_json(client, locator.metadata_url)
    assert fetched.document is not None  # 200: a document
    return BrokerMetadata.from_document(fetched.document, locator, allowed)
