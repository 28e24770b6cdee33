"""Builds a broker from settings: every collaborator created once and passed in."""

from __future__ import annotations

import asyncio
import getpass
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from deputy.audit.log import AuditLog
from deputy.clock import Clock, SystemClock
from deputy.config.loader import is_url
from deputy.config.settings import Settings
from deputy.errors import ConfigError
from deputy.identity import (
    DiscoveryKeySource,
    FileKeySource,
    JwksCache,
    OidcWorkloadTrust,
    SpiffeTrust,
    UrlKeySource,
    UserIssuerTrust,
    UserVerifier,
    VerifiedTokenCache,
    WorkloadVerifier,
)
from deputy.identity.errors import KeySourceError
from deputy.identity.jwks import REFRESH_INTERVAL_SECONDS, KeySource
from deputy.identity.replay import ReplayCache, ReplayGuard
from deputy.ids import IdSource
from deputy.oauth.client_auth import ClientAuthenticator, ClientEntry
from deputy.oauth.endpoints import endpoint_urls
from deputy.policy.model import Policy, policy_from_settings
from deputy.policy.quota import SECONDS_PER_DAY, MemoryQuotaStore, QuotaStore
from deputy.server.instruments import TimedAuditLog
from deputy.server.metrics import BrokerMetrics
from deputy.service.context import RequestContext
from deputy.service.introspection import Introspection
from deputy.service.issuance import IssuanceService
from deputy.service.revocation import RevocationOutcome, Revocations
from deputy.service.usage import UsageReports
from deputy.store.audit_store import AuditReaderStore, AuditStore, open_audit_store
from deputy.store.key_files import KEYS_DIR, FileKeyStore
from deputy.store.key_store import open_key_store
from deputy.store.sqlite.audit import open_audit_log
from deputy.store.sqlite.audit_reader import open_audit_reader
from deputy.tokens.dpop import DpopVerifier
from deputy.tokens.key_ring import KeyRing
from deputy.tokens.mint import Minter
from deputy.tokens.verify import CredentialVerifier

if TYPE_CHECKING:
    from deputy.store.redis import RedisConnection

HTTP_TIMEOUT_SECONDS = 5.0
COUNTERS_TIMEOUT_SECONDS = 0.5  # a Redis call fails closed well within the 1 s budget


@dataclass
class Broker:
    """A running broker's parts: the service, its keys and stores, and what to close."""

    settings: Settings
    service: IssuanceService
    key_ring: KeyRing
    audit: AuditStore
    audit_reader: AuditReaderStore
    caches: tuple[JwksCache, ...]
    http: httpx.AsyncClient
    ids: IdSource
    workloads: WorkloadVerifier
    revocations: Revocations
    introspection: Introspection
    clients: ClientAuthenticator
    dpop: DpopVerifier
    usage: UsageReports
    metrics: BrokerMetrics
    counters: RedisConnection | None = None  # shared counters and replay caches, if any

    @property
    def policy(self) -> Policy:
        """The policy new requests are decided under (the service's: one copy, no drift)."""
        return self.service.policy

    async def start(self) -> None:
        """Prime every configured key set so the first requests need no fetch."""
        for cache in self.caches:
            await cache.load()
        await self.audit.start()

    async def close(self) -> None:
        """Commit what the audit writer was sent, then let it and the HTTP client go."""
        await self.http.aclose()
        await self.audit.aclose()
        if self.counters is not None:
            await self.counters.aclose()
        self.key_ring.close()  # after the audit log, which signs with it on PostgreSQL

    def use_policy(self, policy: Policy, settings: Settings) -> None:
        """Decide new requests under ``policy`` (a reload); ``settings`` is the config with it."""
        self.revocations.cover_lifetime(policy.max_ttl)  # first: never shorter than credentials
        self.service.use_policy(policy)
        self.settings = settings
        self.metrics.policy_loaded(policy.version)


def _source(location: str | None, issuer: str, http: httpx.AsyncClient) -> KeySource:
    if location is None:
        return DiscoveryKeySource(issuer, http)
    if is_url(location):
        return UrlKeySource(location, http)
    return FileKeySource(Path(location))


def open_key_ring(settings: Settings, clock: Clock, *, for_rotation: bool = False) -> KeyRing:
    """The private signing keys (created on first use); the caller closes the ring.

    In the data dir, or with ``storage`` set in PostgreSQL, sealed under ``keys.kek`` (an
    empty database first imports the data dir's file keys, if any).
    """
    ring = KeyRing(open_key_store(settings), clock, settings.signing_alg)
    try:
        ring.load(require_configured_alg=not for_rotation)
    except BaseException:
        ring.close()
        raise
    return ring


def open_published_keys(settings: Settings, clock: Clock) -> KeyRing:
    """The broker's view of the signing keys: public keys only (SQLite).

    The private keys are read by the audit writer process, which signs; the process that
    parses requests never loads them (beyond creating the first key on a new data dir).
    With PostgreSQL the broker signs itself, and the keys are read whole (the sealed key is
    what proves a row was written by a holder of ``keys.kek``).
    """
    if settings.storage is not None:
        return open_key_ring(settings, clock)
    directory = settings.data_dir / KEYS_DIR
    if FileKeyStore(directory).version() is None:
        open_key_ring(settings, clock).close()
    ring = KeyRing(FileKeyStore(directory, public_only=True), clock, settings.signing_alg)
    ring.load()
    return ring


def key_files(settings: Settings) -> list[Path]:
    """Every trust bundle or JWKS that the configuration names as a local file."""
    locations = [s.bundle for s in settings.agents.spiffe]
    locations += [o.jwks for o in settings.agents.oidc if o.jwks]
    locations += [u.jwks for u in settings.users if u.jwks]
    locations += [c.jwks for c in settings.clients.values() if c.jwks]
    return [Path(location) for location in locations if not is_url(location)]


def check_key_files(settings: Settings) -> None:
    """Read every local trust file now, so a missing or broken one stops start-up plainly."""
    for path in key_files(settings):
        try:
            asyncio.run(FileKeySource(path).fetch())
        except KeySourceError as err:
            raise ConfigError(f"trust file: {err}") from None


def build_broker(settings: Settings, clock: Clock, metrics: BrokerMetrics | None = None) -> Broker:
    """Wire the broker for ``settings``: embedded SQLite audit, file keys, memory counters.

    ``metrics`` is the registry the broker reports to (a new one unless given).
    """
    try:
        return _build_broker(settings, clock, metrics or BrokerMetrics())
    except ValueError as err:  # a trust entry the settings model let through, named here
        raise ConfigError(f"invalid configuration: {err}") from None


def _counters(
    settings: Settings, clock: Clock, reader: AuditReaderStore
) -> tuple[QuotaStore, ReplayGuard, ReplayGuard, RedisConnection | None]:
    """Daily counters and replay caches: in memory (one replica), or in Redis (shared)."""

    def seed(day: int) -> dict[tuple[str, str, str], int]:
        return reader.issued_counts(day * SECONDS_PER_DAY)

    if settings.counters is None:
        return MemoryQuotaStore(seed), ReplayCache(clock), ReplayCache(clock), None
    try:
        from deputy.store.redis import RedisQuotaStore, RedisReplayCache, connect_redis
    except ImportError:
        raise ConfigError(
            "counters: a redis:// URL needs the Redis backend: pip install 'deputy[server,redis]'"
        ) from None
    connection = connect_redis(settings.counters, timeout=COUNTERS_TIMEOUT_SECONDS)
    prefix = settings.counters_prefix
    return (
        RedisQuotaStore(connection, seed=seed, prefix=prefix),
        RedisReplayCache(connection, name="client_assertion", clock=clock, prefix=prefix),
        RedisReplayCache(connection, name="dpop", clock=clock, prefix=prefix),
        connection,
    )


def _build_broker(settings: Settings, clock: Clock, metrics: BrokerMetrics) -> Broker:
    http = httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS, follow_redirects=False)
    caches: list[JwksCache] = []
    staleness = float(settings.jwks.max_staleness_seconds)
    # Refreshed at least twice within the bound, so a short bound is not outlived by the
    # cache's own refresh interval.
    refresh = min(REFRESH_INTERVAL_SECONDS, staleness / 2)

    def cache(location: str | None, issuer: str) -> JwksCache:
        source = _source(location, issuer, http)
        c = JwksCache(source, clock, max_staleness=staleness, refresh_interval=refresh)
        caches.append(c)
        return c

    spiffe = [
        SpiffeTrust(s.trust_domain, s.audience, cache(s.bundle, f"spiffe://{s.trust_domain}"))
        for s in settings.agents.spiffe
    ]
    oidc = [
        OidcWorkloadTrust(o.issuer, o.audience, cache(o.jwks, o.issuer))
        for o in settings.agents.oidc
    ]
    users = [
        UserIssuerTrust(u.issuer, u.audience, cache(u.jwks, u.issuer), u.tier_claim)
        for u in settings.users
    ]
    own = frozenset({settings.issuer})
    # SQLite signs in its writer process, so the broker holds public keys only; PostgreSQL
    # signs in the broker (each replica), which therefore loads the private keys.
    private_keys = open_key_ring(settings, clock) if settings.storage is not None else None
    key_ring = private_keys or open_published_keys(settings, clock)
    audit, reader = open_audit_store(settings, clock, private_keys)
    timed_audit = TimedAuditLog(audit, metrics)
    policy = policy_from_settings(settings)
    ids = IdSource(clock)
    quota, assertion_replay, dpop_replay, counters = _counters(settings, clock, reader)
    credentials = CredentialVerifier(settings.issuer, key_ring, clock)
    revocations = Revocations(
        issuer=settings.issuer,
        ledger=reader,
        audit=timed_audit,
        credentials=credentials,
        clock=clock,
        ids=ids,
        max_ttl=policy.max_ttl,
    )
    workload_cache, user_cache = VerifiedTokenCache(clock), VerifiedTokenCache(clock)
    workloads = WorkloadVerifier(spiffe, oidc, clock, cache=workload_cache, reject_issuers=own)
    clients = ClientAuthenticator(
        [
            ClientEntry(
                name,
                frozenset(c.audiences),
                c.admin,
                secret_sha256=c.secret_sha256,
                keys=cache(c.jwks, f"client {name}") if c.jwks is not None else None,
            )
            for name, c in settings.clients.items()
        ],
        clock,
        audiences=endpoint_urls(settings.issuer),
        replay=assertion_replay,
    )
    service = IssuanceService(
        policy=policy,
        workloads=workloads,
        users=UserVerifier(users, clock, cache=user_cache, reject_issuers=own),
        quota=quota,
        minter=Minter(settings.issuer, ids),
        audit=timed_audit,
        clock=clock,
        ids=ids,
        credentials=credentials,
        ledger=reader,
        revocations=revocations,
    )
    metrics.watch_caches({"workload": workload_cache, "user": user_cache}, caches)
    metrics.policy_loaded(policy.version)
    return Broker(
        settings=settings,
        service=service,
        key_ring=key_ring,
        audit=audit,
        audit_reader=reader,
        caches=tuple(caches),
        http=http,
        ids=ids,
        workloads=workloads,
        revocations=revocations,
        introspection=Introspection(credentials, revocations),
        clients=clients,
        dpop=DpopVerifier(clock, dpop_replay),
        counters=counters,
        usage=UsageReports(ledger=reader, audit=timed_audit, clock=clock, ids=ids),
        metrics=metrics,
    )


async def revoke_now(
    settings: Settings,
    selector: str,
    value: str,
    reason: str | None,
    clock: Clock | None = None,
) -> RevocationOutcome:
    """Revoke through the configured store, whether or not a broker is running on it."""
    clock = clock or SystemClock()
    ids = IdSource(clock)
    audit: AuditLog
    if settings.storage is None:
        reader: AuditReaderStore = open_audit_reader(settings.data_dir)
        audit = open_audit_log(settings.data_dir, clock=clock)
    else:  # a revocation record signs nothing: no keys needed
        store, reader = open_audit_store(settings, clock, None)
        await store.start()
        audit = store
    keys: KeyRing | None = None
    try:
        keys = open_published_keys(settings, clock)
        revocations = Revocations(
            issuer=settings.issuer,
            ledger=reader,
            audit=audit,
            credentials=CredentialVerifier(settings.issuer, keys, clock),
            clock=clock,
            ids=ids,
            max_ttl=policy_from_settings(settings).max_ttl,
        )
        context = RequestContext(ids.token(), None, "cli:revoke")
        return await revocations.revoke(
            selector, value, requested_by=f"cli:{getpass.getuser()}", context=context, reason=reason
        )
    finally:
        await audit.aclose()
        if keys is not None:
            keys.close()
