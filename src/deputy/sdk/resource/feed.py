"""The broker's revocation feed (``GET /revocations``), as a resource server follows it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import httpx

from deputy.audit.revocation import SELECTORS, Revocation, RevocationList
from deputy.sdk.errors import BrokerUnavailable
from deputy.sdk.resource.discovery import get_json

MAX_VALUE_LENGTH = 512


class RevocationFeed:
    """The latest revocation list, its entity tag, and when the broker last vouched for it.

    ``fetched_at`` is the last time the broker answered (200 or 304): the list was complete
    then. A feed document that cannot be read entirely is refused as a whole, so a partly
    understood list never replaces a complete one.
    """

    def __init__(self, issuer: str) -> None:
        self._issuer = issuer
        self.revocations = RevocationList()
        self.etag: str | None = None
        self.fetched_at = -math.inf
        self.entries = 0

    async def fetch(self, client: httpx.AsyncClient, url: str, now: float) -> bool:
        """Fetch (revalidating with the ETag); True when the list changed."""
        fetched = await get_json(client, url, if_none_match=self.etag)
        if fetched.status == 304:
            self.fetched_at = now
            return False
        assert fetched.document is not None
        self.apply(fetched.document, now, fetched.etag, where=url)
        return True

    def apply(
        self, document: Mapping[str, Any], now: float, etag: str | None, *, where: str = "feed"
    ) -> None:
        """Replace the list with a feed document's (``{"issuer", "revocations": [...]}``)."""
        if document.get("issuer") != self._issuer:
            raise BrokerUnavailable(f"{where}: issuer does not match {self._issuer!r}")
        raw = document.get("revocations")
        if not isinstance(raw, list):
            raise BrokerUnavailable(f"{where}: revocations is not a list")
        revocations = RevocationList()
        revocations.add(_entry(item, index, where) for index, item in enumerate(raw))
        revocations.prune(now)
        self.revocations = revocations
        self.etag = etag
        self.fetched_at = now
        self.entries = len(raw)


def _entry(item: object, index: int, where: str) -> Revocation:
    """One ``{"<selector>": value, "issued_before": n, "expires_at": n}`` entry."""
    if not isinstance(item, dict):
        raise BrokerUnavailable(f"{where}: revocation {index} is not an object")
    # Another member may be informative; an entry naming no selector known here cannot be
    # matched, so it fails the whole document rather than being skipped.
    named = [s for s in SELECTORS if s in item]
    if len(named) != 1:
        raise BrokerUnavailable(f"{where}: revocation {index} does not name one known selector")
    selector = named[0]
    value = item[selector]
    if not isinstance(value, str) or not value or len(value) > MAX_VALUE_LENGTH:
        raise BrokerUnavailable(f"{where}: revocation {index} has no valid {selector}")
    issued_before, expires_at = item.get("issued_before"), item.get("expires_at")
    for name, number in (("issued_before", issued_before), ("expires_at", expires_at)):
        if isinstance(number, bool) or not isinstance(number, int):
            raise BrokerUnavailable(f"{where}: revocation {index} has no integer {name}")
    assert isinstance(issued_before, int) and isinstance(expires_at, int)
    return Revocation(selector, value, issued_before, expires_at, id=index + 1)
