"""Where verification keys come from (files, JWKS URLs, OIDC discovery) and how they are cached."""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
from joserfc.jwk import Key

from deputy.clock import Clock
from deputy.errors import TokenRejected
from deputy.identity.errors import KeySourceError, KeysUnavailable
from deputy.identity.key_set import KeySet
from deputy.identity.strict_json import StrictJsonError, load_object

MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_DOCUMENT_DEPTH = 16
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

FETCH_DEADLINE_SECONDS = 10.0
MIN_REFETCH_INTERVAL_SECONDS = 30.0  # at most one fetch per issuer per 30 s, whatever asks
REFRESH_INTERVAL_SECONDS = 300.0
MAX_STALENESS_SECONDS = 24 * 3600.0
logger = logging.getLogger(__name__)


class KeySource(Protocol):
    """Fetches the current key set of one issuer or trust domain."""

    async def fetch(self) -> KeySet:
        """The key set, or :class:`KeySourceError`."""
        ...


def _key_set(document: dict[str, Any], origin: str) -> KeySet:
    try:
        return KeySet.from_jwks(document)
    except ValueError as exc:
        raise KeySourceError(f"{origin}: {exc}") from None


def _parse(body: bytes, origin: str) -> dict[str, Any]:
    try:
        return load_object(body, max_depth=MAX_DOCUMENT_DEPTH)
    except StrictJsonError as exc:
        raise KeySourceError(f"{origin}: body {exc}") from None


class FileKeySource:
    """A JWKS or SPIFFE bundle in a local JSON file, re-read on every fetch."""

    def __init__(self, path: Path) -> None:
        self._path = path

    async def fetch(self) -> KeySet:
        body = await asyncio.to_thread(self._read)
        return _key_set(_parse(body, str(self._path)), str(self._path))

    def _read(self) -> bytes:
        try:
            with self._path.open("rb") as handle:
                body = handle.read(MAX_DOCUMENT_BYTES + 1)
        except OSError as exc:
            raise KeySourceError(f"{self._path}: cannot read: {exc.strerror}") from None
        if len(body) > MAX_DOCUMENT_BYTES:
            raise KeySourceError(f"{self._path}: larger than {MAX_DOCUMENT_BYTES} bytes")
        return body

    def __repr__(self) -> str:
        return f"FileKeySource({str(self._path)!r})"


@dataclass(frozen=True, slots=True)
class Fetched:
    """One answer to a GET: 200 with a JSON object, or 304 with no document."""

    status: int
    document: dict[str, Any] | None
    etag: str | None


async def get_json(
    client: httpx.AsyncClient, url: str, *, if_none_match: str | None = None
) -> Fetched:
    """GET one JSON object: no redirects, 200 (or 304 when revalidating), body capped at
    MAX_DOCUMENT_BYTES; anything else is a :class:`KeySourceError`."""
    headers = {"Accept": "application/json"}
    if if_none_match is not None:
        headers["If-None-Match"] = if_none_match
    body = bytearray()
    try:
        async with client.stream("GET", url, follow_redirects=False, headers=headers) as response:
            etag = response.headers.get("etag")
            if response.status_code == 304 and if_none_match is not None:
                return Fetched(304, None, etag or if_none_match)
            if response.status_code != 200:
                raise KeySourceError(f"{url}: answered HTTP {response.status_code}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_DOCUMENT_BYTES:
                raise KeySourceError(f"{url}: body larger than {MAX_DOCUMENT_BYTES} bytes")
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise KeySourceError(f"{url}: body larger than {MAX_DOCUMENT_BYTES} bytes")
    except httpx.HTTPError as exc:
        raise KeySourceError(f"{url}: {type(exc).__name__}") from None
    return Fetched(200, _parse(bytes(body), url), etag)


async def _get_json(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    document = (await get_json(client, url)).document
    assert document is not None  # a 304 needs If-None-Match, not sent here
    return document


class UrlKeySource:
    """A JWKS or SPIFFE bundle endpoint (RFC 7517 §5); the timeout is the client's."""

    def __init__(self, url: str, client: httpx.AsyncClient) -> None:
        self._url = url
        self._client = client

    async def fetch(self) -> KeySet:
        return _key_set(await _get_json(self._client, self._url), self._url)

    def __repr__(self) -> str:
        return f"UrlKeySource({self._url!r})"


class DiscoveryKeySource:
    """Keys found through OpenID Connect Discovery 1.0 §4 from an exact issuer."""

    def __init__(self, issuer: str, client: httpx.AsyncClient) -> None:
        self._issuer = issuer
        self._client = client

    @property
    def metadata_url(self) -> str:
        """§4: a terminating "/" of the issuer is removed before appending the well-known path."""
        return f"{self._issuer.rstrip('/')}/.well-known/openid-configuration"

    async def fetch(self) -> KeySet:
        url = self.metadata_url
        metadata = await _get_json(self._client, url)
        # §4.3: the issuer in the metadata MUST be identical to the one it was fetched for.
        if metadata.get("issuer") != self._issuer:
            raise KeySourceError(f"{url}: issuer does not match {self._issuer!r}")
        jwks_uri = metadata.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not _acceptable_jwks_uri(jwks_uri):
            raise KeySourceError(f"{url}: jwks_uri is missing or not https")
        return _key_set(await _get_json(self._client, jwks_uri), jwks_uri)

    def __repr__(self) -> str:
        return f"DiscoveryKeySource({self._issuer!r})"


def _acceptable_jwks_uri(uri: str) -> bool:
    """https only; plain http is allowed for loopback hosts so tests can serve keys."""
    try:
        parsed = httpx.URL(uri)
    except httpx.InvalidURL:
        return False
    if parsed.scheme == "https":
        return bool(parsed.host)
    return parsed.scheme == "http" and parsed.host in _LOOPBACK_HOSTS


@dataclass(slots=True)
class KeySetStats:
    """Key lookups, and the fetches they (or the refresh interval) caused, since start."""

    lookups: int = 0
    fetches: int = 0
    failed_fetches: int = 0


class JwksCache:
    """One issuer's keys: rate-limited refetches, kept over failed fetches, bounded staleness."""

    def __init__(
        self,
        source: KeySource,
        clock: Clock,
        *,
        min_refetch_interval: float = MIN_REFETCH_INTERVAL_SECONDS,
        max_staleness: float = MAX_STALENESS_SECONDS,
        refresh_interval: float = REFRESH_INTERVAL_SECONDS,
    ) -> None:
        self._source = source
        self._clock = clock
        self._min_refetch_interval = min_refetch_interval
        self._max_staleness = max_staleness
        self._refresh_interval = refresh_interval
        self._keys: KeySet | None = None
        self._fetched_at = -math.inf
        self._attempted_at = -math.inf
        self._lock = asyncio.Lock()
        self.stats = KeySetStats()

    async def load(self) -> None:
        """Fetch now, whatever the intervals say; raise :class:`KeySourceError` on failure."""
        async with self._lock:
            now = self._clock.now()
            self._attempted_at = now
            self._store(await self._fetch(), now)

    async def key(self, kid: str | None) -> Key:
        """The key for ``kid``, or :class:`TokenRejected`."""
        self.stats.lookups += 1
        if self._keys is None or self._age() >= self._refresh_interval:
            # While another caller refreshes, a cached set that knows the kid is good enough.
            cached = self._keys.get(kid) if self._keys is not None else None
            if cached is None or not self._lock.locked():
                await self._refresh()
        found = self._usable().get(kid)
        if found is None:
            await self._refresh()
            found = self._usable().get(kid)
        if found is None:
            raise TokenRejected("unknown key id")
        return found

    def _age(self) -> float:
        return self._clock.now() - self._fetched_at

    def _usable(self) -> KeySet:
        if self._keys is None:
            raise KeysUnavailable("signing keys are unavailable")
        if self._age() > self._max_staleness:
            raise KeysUnavailable("signing keys are unavailable (stale)")
        return self._keys

    async def _refresh(self) -> None:
        """Fetch unless any fetch was attempted within ``min_refetch_interval``."""
        async with self._lock:
            now = self._clock.now()
            if now - self._attempted_at < self._min_refetch_interval:
                return
            self._attempted_at = now
            try:
                keys = await self._fetch()
            except KeySourceError as exc:
                logger.warning("keeping cached keys, fetch failed: %s", exc)
                return
            self._store(keys, now)

    async def _fetch(self) -> KeySet:
        self.stats.fetches += 1
        try:
            return await self._fetch_keys()
        except KeySourceError:
            self.stats.failed_fetches += 1
            raise

    async def _fetch_keys(self) -> KeySet:
        try:
            # A source that drips bytes must not hold the lock (and the requests) for long.
            keys = await asyncio.wait_for(self._source.fetch(), FETCH_DEADLINE_SECONDS)
        except KeySourceError:
            raise
        except TimeoutError:
            raise KeySourceError(f"{self._source!r}: no answer within the deadline") from None
        except Exception as exc:  # a source's bug must not wipe or bypass the cache
            raise KeySourceError(f"{self._source!r}: {type(exc).__name__}") from exc
        if len(keys) == 0:
            raise KeySourceError(f"{self._source!r}: no usable signing keys")
        return keys

    def _store(self, keys: KeySet, at: float) -> None:
        self._keys = keys
        self._fetched_at = at

    def __repr__(self) -> str:
        return f"JwksCache({self._source!r})"
