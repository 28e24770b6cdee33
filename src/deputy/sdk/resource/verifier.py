"""Verifying Deputy credentials at the API they were minted for (RFC 9068 §4)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from types import MappingProxyType, TracebackType
from typing import Any

import httpx

from deputy.audit.revocation import CredentialFacts, RevocationList
from deputy.clock import Clock, SystemClock
from deputy.errors import TokenRejected
from deputy.identity.errors import KeySourceError, KeysUnavailable
from deputy.identity.jose import (
    check_audience,
    check_subject,
    check_time,
    client_safe,
    parse_compact,
    verify_signature,
)
from deputy.identity.jwks import JwksCache, UrlKeySource
from deputy.identity.key_set import KeySet
from deputy.identity.replay import ReplayCache
from deputy.sdk.errors import BrokerUnavailable, CredentialRejected
from deputy.sdk.resource._compact import HeaderCache, parse
from deputy.sdk.resource.challenge import BEARER, presented_credential
from deputy.sdk.resource.credential import VerifiedCredential
from deputy.sdk.resource.discovery import BrokerMetadata, Locator, allowed_algorithms, discover
from deputy.sdk.resource.dpop import DpopNonces, DpopRejected
from deputy.sdk.resource.feed import RevocationFeed
from deputy.tokens.dpop import DpopVerifier
from deputy.tokens.verify import MAX_ACT_DEPTH, act_chain

DEFAULT_REFRESH_INTERVAL = 5.0
DEFAULT_MAX_STALENESS = 60.0
DEFAULT_CACHE_SIZE = 10_000
HTTP_TIMEOUT_SECONDS = 5.0
FETCH_DEADLINE_SECONDS = 10.0
KEY_REFETCH_INTERVAL = 30.0  # at most one JWKS fetch per 30 s, however many unknown kids
DEFAULT_DPOP_REPLAY_SIZE = 100_000  # DPoP proof ids remembered (each for about 90 s)

# RFC 9068 §2.2: the claims every access token carries.
REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "jti", "client_id")
_OPTIONAL_TEXT = ("agent_instance", "execution_id", "workflow", "delegation", "decision_id")
_ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 - RFC 9068 §2.1 media type, not a secret

logger = logging.getLogger("deputy.sdk.resource")


class _Entry:
    """A verified token: until when, what it says, and the revocation list last checked."""

    __slots__ = ("checked", "credential", "expires_at", "facts")

    def __init__(
        self, expires_at: float, credential: VerifiedCredential, facts: CredentialFacts
    ) -> None:
        self.expires_at = expires_at
        self.credential = credential
        self.facts = facts
        self.checked: RevocationList | None = None


class DeputyVerifier:
    """Verifies the credentials Deputy mints for one API, and follows the revocation feed.

    The broker is found from ``issuer`` (RFC 8414 metadata), or at ``base_url`` when it is
    reachable at another address than its issuer URL. Its keys are cached (one fetch per
    30 s at most for an unknown ``kid``, so a rotation is picked up without letting garbage
    ``kid``s drive fetches); the revocation feed is revalidated every ``refresh_interval``
    seconds with its ETag.

    Fail closed: when the feed has not been confirmed for more than ``max_staleness``
    seconds (the broker unreachable), :meth:`verify` raises a 503 ``temporarily_unavailable``
    rather than accept a credential that may have been revoked since.

    Time: ``exp`` is enforced without leeway; ``nbf`` and ``iat`` may be ahead of this
    clock by the fixed ``LEEWAY_SECONDS`` (30 s) of :mod:`deputy.identity.jose`.

    A verified token is remembered (by its SHA-256, until its ``exp``, at most
    ``cache_size`` of them), so the same token again costs a lookup and a revocation check.
    A feed update replaces the revocation list whole; a remembered token is checked against
    each new list at its first use, and keeps that answer while the list stays the same.
    Use one verifier per API audience, from the event loop that serves the API.

    DPoP (RFC 9449): a credential bound to a key (``cnf.jkt``) is accepted only with
    ``Authorization: DPoP`` and one proof of that key made for the request
    (:meth:`verify_request`); :meth:`verify`, which takes a token presented as Bearer,
    refuses it. Proofs may be signed with ``dpop_algorithms`` (every asymmetric algorithm by
    default); their ids are remembered to refuse a replay, at most ``dpop_replay_size`` of
    them (when full, new proofs are refused rather than old ids forgotten). With
    ``require_dpop_nonce``, proofs must carry a nonce this API handed out (RFC 9449 §9; see
    :class:`DpopNonces`, keyed by ``dpop_nonce_secret``, which replicas share).
    """

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        base_url: str | None = None,
        http_client: httpx.AsyncClient | None = None,
        clock: Clock | None = None,
        algorithms: Iterable[str] | None = None,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        max_staleness: float = DEFAULT_MAX_STALENESS,
        cache_size: int = DEFAULT_CACHE_SIZE,
        dpop_algorithms: Iterable[str] | None = None,
        dpop_replay_size: int = DEFAULT_DPOP_REPLAY_SIZE,
        require_dpop_nonce: bool = False,
        dpop_nonce_secret: bytes | None = None,
    ) -> None:
        if not issuer or issuer.endswith("/"):
            raise ValueError("issuer must be the broker's issuer URL, without a trailing slash")
        if not audience:
            raise ValueError("audience must not be empty")
        if not 0 < refresh_interval <= max_staleness:
            raise ValueError("refresh_interval must be positive and at most max_staleness")
        if cache_size < 0:
            raise ValueError("cache_size must not be negative")
        if dpop_nonce_secret is not None and not require_dpop_nonce:
            raise ValueError("dpop_nonce_secret is only used with require_dpop_nonce=True")
        self._issuer = issuer
        self._audience = audience
        self._locator = Locator(issuer, base_url)
        self._allowed = allowed_algorithms(algorithms)
        self._owns_client = http_client is None
        self._client = http_client or httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS)
        self._clock: Clock = clock or SystemClock()
        self._refresh_interval = refresh_interval
        self._max_staleness = max_staleness
        self._cache_size = cache_size
        self._cache: dict[bytes, _Entry] = {}
        self._headers = HeaderCache()
        self._keys = JwksCache(
            _BrokerKeys(issuer, self._discover, self._client),
            self._clock,
            min_refetch_interval=KEY_REFETCH_INTERVAL,
        )
        self._feed = RevocationFeed(issuer)
        self._metadata: BrokerMetadata | None = None
        self._metadata_lock = asyncio.Lock()
        self._feed_lock = asyncio.Lock()
        self._attempted_at = -math.inf
        self._refreshing: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._dpop_algorithms = allowed_algorithms(dpop_algorithms)
        self._dpop = DpopVerifier(
            self._clock,
            ReplayCache(self._clock, dpop_replay_size),
            algorithms=self._dpop_algorithms,
        )
        self._nonces = (
            DpopNonces(self._clock, secret=dpop_nonce_secret, context=audience)
            if require_dpop_nonce
            else None
        )

    @property
    def issuer(self) -> str:
        return self._issuer

    @property
    def audience(self) -> str:
        return self._audience

    @property
    def metadata(self) -> BrokerMetadata | None:
        """The broker's metadata once discovered."""
        return self._metadata

    @property
    def dpop_algorithms(self) -> tuple[str, ...]:
        """The algorithms DPoP proofs may be signed with, sorted."""
        return tuple(sorted(self._dpop_algorithms))

    @property
    def requires_dpop_nonce(self) -> bool:
        return self._nonces is not None

    def dpop_nonce(self) -> str | None:
        """The nonce to hand out now (``DPoP-Nonce``), when proofs must carry one."""
        return None if self._nonces is None else self._nonces.current()

    @property
    def revocations_confirmed_at(self) -> float:
        """When the broker last confirmed the revocation list (-inf: never)."""
        return self._feed.fetched_at

    async def verify_request(
        self,
        method: str,
        url: str,
        authorization: Sequence[str],
        dpop: Sequence[str] = (),
    ) -> VerifiedCredential | None:
        """The credential a request presents, verified; None when it presents none.

        ``authorization`` and ``dpop`` are every ``Authorization`` and ``DPoP`` header of
        the request; ``method`` and ``url`` are the request's, as the agent sent it (the
        URL's query is ignored). A ``Bearer`` credential is checked by :meth:`verify`, a
        ``DPoP`` one by :meth:`verify_dpop`; a DPoP proof with a Bearer credential is
        ``invalid_request`` (400). Refusals are :class:`CredentialRejected`, and
        :class:`DpopRejected` where the answer's challenge is to be ``DPoP``.
        """
        presented = presented_credential(authorization)
        if presented is None:
            return None
        scheme, token = presented
        if scheme == BEARER:
            if dpop:
                raise CredentialRejected(
                    "invalid_request",
                    "a DPoP proof goes with Authorization: DPoP, not Bearer",
                    status=400,
                )
            return await self.verify(token)
        return await self.verify_dpop(token, dpop, method=method, url=url)

    async def verify(self, token: str) -> VerifiedCredential:
        """The verified credential presented as a Bearer token, or :class:`CredentialRejected`.

        ``invalid_token`` (401) for anything but a valid, unrevoked credential for this
        audience, and for a DPoP-bound one (RFC 9449 §7.2: never accepted as a bearer
        token; a :class:`DpopRejected`); ``temporarily_unavailable`` (503) while the
        broker's keys or revocation list are unavailable.
        """
        credential = await self._verified(token)
        if credential.jkt is not None:
            raise DpopRejected(
                "invalid_token",
                "the credential is DPoP-bound: present it with Authorization: DPoP "
                "and a DPoP proof",
            )
        return credential

    async def verify_dpop(
        self, token: str, proofs: Sequence[str], *, method: str, url: str
    ) -> VerifiedCredential:
        """The verified credential presented as ``Authorization: DPoP <token>`` with the
        ``proofs`` (every ``DPoP`` header) of a ``method`` request to ``url``.

        Every refusal is a :class:`DpopRejected`: the credential's own (as :meth:`verify`),
        ``invalid_token`` for a credential not bound to a key, ``invalid_dpop_proof`` unless
        there is exactly one proof that keeps every rule of RFC 9449 §4.3 for this request
        (``htm``, ``htu``, ``iat``, a ``jti`` not seen before...) with the ``ath`` of
        ``token`` and the key of its ``cnf.jkt`` (§7.1); ``use_dpop_nonce`` (with the nonce
        to use) when nonces are required and the proof lacks a current one.
        """
        try:
            credential = await self._verified(token)
        except CredentialRejected as exc:
            raise DpopRejected.of(exc) from None
        if credential.jkt is None:
            raise DpopRejected(
                "invalid_token", "the credential is not DPoP-bound: present it as a Bearer token"
            )
        if len(proofs) != 1:
            raise DpopRejected("invalid_dpop_proof", "send exactly one DPoP header")
        proof = proofs[0]
        nonce = self._fresh_nonce(proof)
        try:
            checked = await self._dpop.verify(
                proof, method=method, url=url, access_token=token, nonce=nonce
            )
        except TokenRejected as exc:
            raise DpopRejected("invalid_dpop_proof", exc.reason) from None
        if checked.jkt != credential.jkt:
            raise DpopRejected(
                "invalid_dpop_proof",
                "the proof is not signed by the key the credential is bound to",
            )
        if self._nonces is not None and nonce is None:
            raise DpopRejected(
                "use_dpop_nonce",
                "the DPoP proof must carry the nonce this API sent",
                nonce=self._nonces.current(),
            )
        return credential

    def _fresh_nonce(self, proof: str) -> str | None:
        """The proof's nonce when nonces are required and it is a current one; else None."""
        if self._nonces is None:
            return None
        try:
            nonce = parse_compact(proof).claims.get("nonce")
        except TokenRejected as exc:
            raise DpopRejected("invalid_dpop_proof", exc.reason) from None
        return nonce if isinstance(nonce, str) and self._nonces.valid(nonce) else None

    async def _verified(self, token: str) -> VerifiedCredential:
        """The verified credential, however it is to be presented."""
        now = self._clock.now()
        feed = self._feed
        if now - feed.fetched_at >= self._refresh_interval:
            await self._keep_fresh(now)
        digest = None
        if self._cache_size and type(token) is str and token.isascii():
            digest = hashlib.sha256(token.encode()).digest()
            hit = self._cache.get(digest)
            if hit is not None:
                if now < hit.expires_at:
                    # A feed update replaces the list, so an entry checked against this very
                    # list has its answer; any other list is consulted before answering.
                    if hit.checked is not feed.revocations:
                        _check_revocation(feed.revocations, hit.facts)
                        hit.checked = feed.revocations
                    return hit.credential
                del self._cache[digest]
        entry = await self._verify_token(token, now)
        _check_revocation(feed.revocations, entry.facts)
        entry.checked = feed.revocations
        if digest is not None:
            if len(self._cache) >= self._cache_size:
                # Insertion order is age order: the oldest entry goes.
                del self._cache[next(iter(self._cache))]
            self._cache[digest] = entry
        return entry.credential

    async def _verify_token(self, token: str, now: float) -> _Entry:
        """RFC 9068 §4, cheap checks first: the key lookup may fetch, the signature costs."""
        try:
            parsed = parse(token, self._headers)
            _check_type(parsed.header)
            algorithms = (self._metadata or await self._discover()).algorithms
            if parsed.alg not in algorithms:
                raise TokenRejected(f"algorithm {client_safe(parsed.alg, 16)} is not allowed")
            claims = parsed.claims
            for name in REQUIRED_CLAIMS:
                if name not in claims:
                    raise TokenRejected(f"token has no {name}")
            if claims["iss"] != self._issuer:
                raise TokenRejected(f"token was not issued by {self._issuer}")
            check_time(claims, now)
            check_audience(claims, self._audience)
            credential, facts = self._credential(claims)
            verify_signature(parsed, await self._keys.key(parsed.kid), algorithms)
        except KeysUnavailable:
            raise _unavailable("the broker's signing keys are unavailable") from None
        except BrokerUnavailable:
            raise _unavailable("the broker's metadata is unavailable") from None
        except TokenRejected as exc:
            raise CredentialRejected("invalid_token", exc.reason) from None
        return _Entry(float(claims["exp"]), credential, facts)

    def _credential(self, claims: Mapping[str, Any]) -> tuple[VerifiedCredential, CredentialFacts]:
        """The typed view of claims whose presence was checked, and what revocation matches.

        The facts are those :meth:`CredentialFacts.from_claims` reads, from values already
        checked here (the tests hold the two equal).
        """
        text: dict[str, str | None] = {}
        for name in _OPTIONAL_TEXT:
            value = claims.get(name)
            if value is not None and not isinstance(value, str):
                raise TokenRejected(f"{name} is not a string")
            text[name] = value
        scope = claims.get("scope", "")
        if not isinstance(scope, str):
            raise TokenRejected("scope is not a string")
        agent = _required_text(claims, "client_id")
        jti = _required_text(claims, "jti")
        user = check_subject(claims)
        _check_confirmation(claims.get("cnf"))
        chain = act_chain(claims)
        lineage = _ancestors(claims.get("delegated_from"))
        facts = CredentialFacts(
            jti=jti,
            issued_at=int(claims["iat"]),
            execution_id=text["execution_id"],
            agent_instance=text["agent_instance"],
            actors=tuple(dict.fromkeys((agent, *chain))),
            user_id=user,
            ancestors=lineage,
        )
        credential = VerifiedCredential(
            user=user,
            agent=agent,
            agent_instance=text["agent_instance"],
            execution_id=text["execution_id"],
            actors=chain or (agent,),
            scopes=frozenset(scope.split()),
            jti=jti,
            audience=self._audience,
            expires_at=int(claims["exp"]),
            workflow=text["workflow"],
            delegation=text["delegation"],
            decision_id=text["decision_id"],
            claims=MappingProxyType(claims),
        )
        return credential, facts

    async def _keep_fresh(self, now: float) -> None:
        """Revalidate the feed in the background; wait for it only once it is too old."""
        task = self._refreshing
        if (task is None or task.done()) and now - self._attempted_at >= self._refresh_interval:
            task = self._refreshing = asyncio.get_running_loop().create_task(
                self._refresh_quietly()
            )
        if now - self._feed.fetched_at <= self._max_staleness:
            return
        if task is not None and not task.done():
            await asyncio.shield(task)
        if self._clock.now() - self._feed.fetched_at > self._max_staleness:
            raise _unavailable("the revocation list cannot be confirmed with the broker")

    async def refresh(self) -> None:
        """Fetch the revocation feed now (revalidating with its ETag).

        Raises :class:`BrokerUnavailable` when the broker cannot be reached or its answer
        cannot be used; the list held so far is kept.
        """
        async with self._feed_lock:
            now = self._clock.now()
            self._attempted_at = now
            url = (await self._discover()).revocation_feed_url
            try:
                await asyncio.wait_for(
                    self._feed.fetch(self._client, url, now), FETCH_DEADLINE_SECONDS
                )
            except TimeoutError:
                raise BrokerUnavailable(f"{url}: no answer within the deadline") from None

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except BrokerUnavailable as exc:
            logger.warning("revocation feed not refreshed: %s", exc.description)
        except Exception:
            logger.exception("revocation feed not refreshed")

    async def _discover(self) -> BrokerMetadata:
        """The broker's metadata, fetched once."""
        if self._metadata is not None:
            return self._metadata
        async with self._metadata_lock:
            if self._metadata is None:
                try:
                    self._metadata = await asyncio.wait_for(
                        discover(self._client, self._locator, self._allowed),
                        FETCH_DEADLINE_SECONDS,
                    )
                except TimeoutError:
                    raise BrokerUnavailable(
                        f"{self._locator.metadata_url}: no answer within the deadline"
                    ) from None
            return self._metadata

    async def start(self) -> None:
        """Fetch metadata, revocations and keys now, then revalidate the feed periodically.

        A broker that cannot be reached now is no error here (it is logged): requests fail
        closed until it answers.
        """
        if self._poller is not None:
            return
        try:
            await self.refresh()
            await self._keys.load()
        except (BrokerUnavailable, KeySourceError) as exc:
            logger.warning("broker not reachable at start: %s", exc)
        self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_interval)
            await self._refresh_quietly()

    async def aclose(self) -> None:
        """Stop refreshing and close the HTTP client this verifier made."""
        tasks = [t for t in (self._poller, self._refreshing) if t is not None]
        self._poller = self._refreshing = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> DeputyVerifier:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"DeputyVerifier(issuer={self._issuer!r}, audience={self._audience!r})"


class _BrokerKeys:
    """The broker's JWKS, at the ``jwks_uri`` its metadata names."""

    def __init__(
        self,
        issuer: str,
        metadata: Callable[[], Awaitable[BrokerMetadata]],
        client: httpx.AsyncClient,
    ) -> None:
        self._issuer = issuer
        self._metadata = metadata
        self._client = client

    async def fetch(self) -> KeySet:
        try:
            url = (await self._metadata()).jwks_url
        except BrokerUnavailable as exc:
            raise KeySourceError(exc.description) from None
        return await UrlKeySource(url, self._client).fetch()

    def __repr__(self) -> str:
        return f"BrokerKeys({self._issuer!r})"


def _check_type(header: Mapping[str, Any]) -> None:
    """RFC 9068 §4: ``typ`` is ``at+jwt`` (RFC 7515 §4.1.9: any case, ``application/`` optional)."""
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower().removeprefix("application/") != _ACCESS_TOKEN_TYPE:
        raise TokenRejected("token type must be at+jwt")


def _check_confirmation(cnf: object) -> None:
    """RFC 7800 ``cnf``: Deputy binds a credential to a DPoP key only (RFC 9449 §6.1); a
    binding this verifier cannot check is refused, never ignored."""
    if cnf is None:
        return
    if not isinstance(cnf, dict) or set(cnf) != {"jkt"}:
        raise TokenRejected("cnf must hold exactly a jkt")
    jkt = cnf["jkt"]
    if not isinstance(jkt, str) or not jkt:
        raise TokenRejected("cnf.jkt is not a non-empty string")


def _required_text(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise TokenRejected(f"{name} is not a non-empty string")
    return value


def _ancestors(value: object) -> tuple[str, ...]:
    """``delegated_from`` must be readable: revoking an ancestor has to reach this one."""
    if value is None:
        return ()
    if (
        not isinstance(value, list)
        or len(value) > MAX_ACT_DEPTH
        or not all(isinstance(v, str) and v for v in value)
    ):
        raise TokenRejected("delegated_from is not a list of credential ids")
    return tuple(value)


def _check_revocation(revocations: RevocationList, facts: CredentialFacts) -> None:
    if revocations.covers(facts) is not None:
        raise CredentialRejected("invalid_token", "the credential has been revoked")


def _unavailable(description: str) -> CredentialRejected:
    return CredentialRejected("temporarily_unavailable", description, status=503)
