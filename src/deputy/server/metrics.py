"""The broker's Prometheus metrics, in a registry of its own (never the process-wide default).

What requests update is kept as plain numbers — counts in dicts, histogram buckets in
lists — and turned into Prometheus samples only when ``/metrics`` is scraped, by
:class:`_RequestCollector` (and :class:`_CacheCollector` for the counters the identity
caches keep). An update is then a dict or list increment, a fraction of a locked client
metric's cost; all of them happen on the event loop's thread, as do scrapes. Label values
come from code or configuration (route and endpoint paths, OAuth error codes, rule names,
tool names), never from requests, so the number of series is bounded.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from deputy.errors import OAuthError
from deputy.identity.jwks import JwksCache
from deputy.identity.token_cache import VerifiedTokenCache

# Seconds; from a cached-token issuance (about a millisecond) to the audit commit deadline.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


Labels = tuple[str, ...]


class Latency:
    """Observations counted in :data:`LATENCY_BUCKETS` (the last slot is ``+Inf``)."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # le: upper bound included
        self.total += seconds

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative counts per upper bound, as the exposition wants them."""
        out, running = [], 0
        for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


class RouteMetrics:
    """Answers and their latency for one route."""

    __slots__ = ("by_status", "latency")

    def __init__(self) -> None:
        self.by_status: dict[int, int] = {}
        self.latency = Latency()

    def answered(self, status: int, seconds: float) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1
        self.latency.observe(seconds)


class BrokerMetrics:
    """Every metric of one broker; :meth:`exposition` renders them for ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.routes: dict[str, RouteMetrics] = {}
        self.issuances: dict[str, int] = {}
        self.credentials: dict[str, int] = {}
        self.refusals: dict[tuple[str, str], int] = {}
        self.denials: dict[str, int] = {}
        self.issue_latency: dict[tuple[str, str], Latency] = {}
        self.commits = {"committed": Latency(), "failed": Latency()}
        self.registry.register(_RequestCollector(self))
        # Rare events: the client library's own metrics are cheap enough here.
        self._reloads = Counter(
            "deputy_config_reloads",
            "Reloads of the config file on SIGHUP, by result (applied or rejected).",
            ("result",),
            registry=self.registry,
        )
        self._restart_needed = Gauge(
            "deputy_config_restart_needed",
            "1 when the last applied reload left changes that take effect only after a restart.",
            registry=self.registry,
        )
        self._policy = Gauge(
            "deputy_policy_info",
            "The version of the policy new decisions are made under (always 1).",
            ("version",),
            registry=self.registry,
        )

    def route(self, route: str) -> RouteMetrics:
        """The metrics of one route, for its wrapper to update."""
        return self.routes.setdefault(route, RouteMetrics())

    def issued(self, endpoint: str, tools: Iterable[str], seconds: float) -> None:
        self.issuances[endpoint] = self.issuances.get(endpoint, 0) + 1
        for tool in tools:
            self.credentials[tool] = self.credentials.get(tool, 0) + 1
        self._latency(endpoint, "allow").observe(seconds)

    def refused(self, endpoint: str, err: OAuthError, seconds: float) -> None:
        key = (endpoint, err.error)
        self.refusals[key] = self.refusals.get(key, 0) + 1
        for reason in err.reasons:
            self.denials[reason.rule] = self.denials.get(reason.rule, 0) + 1
        self._latency(endpoint, "deny").observe(seconds)

    def audit_commit(self, seconds: float, *, committed: bool) -> None:
        self.commits["committed" if committed else "failed"].observe(seconds)

    def policy_loaded(self, version: str) -> None:
        """The policy now in force (at start, and after each applied reload)."""
        self._policy.clear()
        self._policy.labels(version=version).set(1)

    def reloaded(self, *, applied: bool, restart_needed: bool | None = None) -> None:
        """A reload on SIGHUP; a rejected one leaves the restart flag as it was."""
        self._reloads.labels(result="applied" if applied else "rejected").inc()
        if restart_needed is not None:
            self._restart_needed.set(1 if restart_needed else 0)

    def watch_caches(
        self, token_caches: Mapping[str, VerifiedTokenCache], key_sets: Sequence[JwksCache]
    ) -> None:
        """Expose the hit counts these caches keep, read at each scrape."""
        self.registry.register(_CacheCollector(dict(token_caches), tuple(key_sets)))

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The samples and their content type, in the format ``accept`` asks for.

        Prometheus text format 0.0.4 unless the scraper asks for OpenMetrics or a later one.
        """
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type

    def _latency(self, endpoint: str, outcome: str) -> Latency:
        latency = self.issue_latency.get((endpoint, outcome))
        if latency is None:
            latency = self.issue_latency[endpoint, outcome] = Latency()
        return latency


def _counter(
    name: str, documentation: str, labels: Sequence[str], values: Iterable[tuple[Labels, int]]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for key, value in values:
        family.add_metric(key, value)
    return family


def _histogram(
    name: str, documentation: str, labels: Sequence[str], values: Iterable[tuple[Labels, Latency]]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for key, latency in values:
        family.add_metric(key, latency.buckets(), latency.total)
    return family


class _RequestCollector(Collector):
    """The request-path numbers of :class:`BrokerMetrics`, as samples."""

    def __init__(self, metrics: BrokerMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        yield _counter(
            "deputy_issuances",
            "Issuance decisions that handed out credentials, by endpoint.",
            ("endpoint",),
            (((e,), n) for e, n in m.issuances.items()),
        )
        yield _counter(
            "deputy_credentials_issued",
            "Credentials handed out, by tool.",
            ("tool",),
            (((t,), n) for t, n in m.credentials.items()),
        )
        yield _counter(
            "deputy_refusals",
            "Issuance decisions that handed out nothing, by endpoint and OAuth error code.",
            ("endpoint", "error"),
            m.refusals.items(),
        )
        yield _counter(
            "deputy_denials",
            "Failed rules of refused issuances, by rule (one refusal may fail several).",
            ("rule",),
            (((r,), n) for r, n in m.denials.items()),
        )
        yield _histogram(
            "deputy_issuance_duration_seconds",
            "Time of one issuance, from the workload token to the committed record, "
            "by endpoint and outcome (allow or deny).",
            ("endpoint", "outcome"),
            m.issue_latency.items(),
        )
        yield _histogram(
            "deputy_audit_commit_duration_seconds",
            "Time to commit one audit record (and sign its credentials), by outcome "
            "(committed or failed).",
            ("outcome",),
            (((o,), latency) for o, latency in m.commits.items()),
        )
        routes = list(m.routes.items())
        yield _counter(
            "deputy_http_requests",
            "HTTP requests answered, by route and status.",
            ("route", "status"),
            (((r, str(s)), n) for r, rm in routes for s, n in rm.by_status.items()),
        )
        yield _histogram(
            "deputy_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by route.",
            ("route",),
            (((r,), rm.latency) for r, rm in routes if rm.by_status),  # routes seen
        )


class _CacheCollector(Collector):
    """Cache counters kept by the identity caches, turned into samples when scraped."""

    def __init__(
        self, token_caches: dict[str, VerifiedTokenCache], key_sets: tuple[JwksCache, ...]
    ) -> None:
        self._token_caches = token_caches
        self._key_sets = key_sets

    def collect(self) -> Iterator[Metric]:
        lookups = CounterMetricFamily(
            "deputy_token_cache_lookups",
            "Lookups of already verified tokens, by cache (workload, user) and result (hit, miss).",
            labels=("cache", "result"),
        )
        for name, cache in self._token_caches.items():
            lookups.add_metric((name, "hit"), cache.stats.hits)
            lookups.add_metric((name, "miss"), cache.stats.misses)
        yield lookups
        yield CounterMetricFamily(
            "deputy_key_set_lookups",
            "Lookups of an issuer's verification key by kid, over every trusted issuer.",
            value=sum(k.stats.lookups for k in self._key_sets),
        )
        fetches = CounterMetricFamily(
            "deputy_key_set_fetches",
            "Fetches of trusted issuers' key sets (JWKS, bundles), by result (ok, error).",
            labels=("result",),
        )
        failed = sum(k.stats.failed_fetches for k in self._key_sets)
        fetches.add_metric(("ok",), sum(k.stats.fetches for k in self._key_sets) - failed)
        fetches.add_metric(("error",), failed)
        yield fetches
