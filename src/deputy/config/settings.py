"""Typed, frozen settings. Unknown keys and wrong types are rejected at load time."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
SCOPE_PATTERN = r"^[\x21\x23-\x5b\x5d-\x7e]{1,128}$"  # RFC 6749 §3.3 scope-token
MAX_TTL_SECONDS = 86_400
MAX_DELEGATION_DEPTH = 8
MAX_SHUTDOWN_GRACE_SECONDS = 600
# Trusted issuers' keys are fetched at most once per 30 s: a bound of at least two such
# intervals lets one failed fetch be retried before the cached keys go stale.
MIN_KEY_STALENESS_SECONDS = 60
MAX_KEY_STALENESS_SECONDS = 7 * 86_400
COUNTERS_PREFIX_PATTERN = r"^[A-Za-z0-9:_-]{1,64}$"  # Redis key prefix: no glob or space
DEFAULT_COUNTERS_PREFIX = "deputy:"
MAX_WORKERS = 64

_LOOPBACK_HTTP = re.compile(r"^http://(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?(/|$)")

Name = Annotated[StrictStr, Field(pattern=NAME_PATTERN)]
Scope = Annotated[StrictStr, Field(pattern=SCOPE_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SpiffeTrustSettings(_Strict):
    trust_domain: Annotated[StrictStr, Field(pattern=r"^[a-z0-9._-]{1,255}$")]
    bundle: StrictStr  # a file path (relative to the config file) or an https URL
    audience: StrictStr


class OidcWorkloadSettings(_Strict):
    issuer: StrictStr
    jwks: StrictStr | None = None  # file or URL; omitted → OIDC discovery at the issuer
    audience: StrictStr


class AgentsSettings(_Strict):
    spiffe: tuple[SpiffeTrustSettings, ...] = ()
    oidc: tuple[OidcWorkloadSettings, ...] = ()


class UserIssuerSettings(_Strict):
    issuer: StrictStr
    jwks: StrictStr | None = None
    audience: StrictStr
    tier_claim: StrictStr | None = None


class ToolSettings(_Strict):
    audience: StrictStr
    category: Name
    scopes: tuple[Scope, ...]


class TtlSettings(_Strict):
    default: Annotated[StrictInt, Field(ge=1, le=MAX_TTL_SECONDS)] = 300
    max: Annotated[StrictInt, Field(ge=1, le=MAX_TTL_SECONDS)] = 900

    @model_validator(mode="after")
    def _default_within_max(self) -> TtlSettings:
        if self.default > self.max:
            raise ValueError(f"default ({self.default}) must not exceed max ({self.max})")
        return self


class WorkflowSettings(_Strict):
    agents: tuple[StrictStr, ...] = Field(min_length=1)
    delegation: Literal["user_token", "asserted", "none"] = "user_token"
    # Sub-agents (workload id patterns) that may exchange this workflow's credentials.
    delegate_to: tuple[StrictStr, ...] = ()
    require_dpop: bool = False  # credentials only bound to a key the agent proves (RFC 9449)
    tiers: tuple[StrictStr, ...] | None = None
    tools: dict[Name, tuple[Scope, ...]] = Field(min_length=1)
    ttl: TtlSettings = TtlSettings()
    rate_limits: dict[Name, Annotated[StrictInt, Field(ge=0)]] = {}


class ClientSettings(_Strict):
    """A resource server or an operator: authenticates with a secret or a JWT assertion."""

    secret_sha256: Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    jwks: StrictStr | None = None  # file or URL of the keys its RFC 7523 assertions use
    audiences: tuple[StrictStr, ...] = ()  # introspection shows claims of tokens for these
    admin: bool = False  # may use the admin API (revocations, kill switch)

    @model_validator(mode="after")
    def _one_credential(self) -> ClientSettings:
        if (self.secret_sha256 is None) == (self.jwks is None):
            raise ValueError("give exactly one of `secret_sha256` or `jwks`")
        return self


class ServerSettings(_Strict):
    host: StrictStr = "127.0.0.1"
    port: Annotated[StrictInt, Field(ge=0, le=65535)] = 8080
    # On SIGTERM, how long requests under way may take to finish before they are cancelled.
    shutdown_grace_seconds: Annotated[StrictInt, Field(ge=1, le=MAX_SHUTDOWN_GRACE_SECONDS)] = 30
    # Processes serving on the one listening socket; more than one needs shared state.
    workers: Annotated[StrictInt, Field(ge=1, le=MAX_WORKERS)] = 1


class ConsoleSettings(_Strict):
    """The admin web console at ``/console``; not routed unless enabled."""

    enabled: bool = False


class MetricsSettings(_Strict):
    """Prometheus exposition at ``/metrics``; not routed unless enabled."""

    enabled: StrictBool = False
    # Configured clients (HTTP Basic) that may scrape; empty: anyone who reaches the port.
    clients: tuple[Name, ...] = ()


class LoggingSettings(_Strict):
    """JSON log lines on stderr from ``deputy serve``."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    access: StrictBool = False  # one line per request (method, route, status, duration, request id)


class JwksSettings(_Strict):
    """Keys of trusted issuers (JWKS, SPIFFE bundles, OIDC discovery), cached per issuer."""

    # How long cached keys serve without a good fetch; past it, that issuer's tokens get 503.
    max_staleness_seconds: Annotated[
        StrictInt, Field(ge=MIN_KEY_STALENESS_SECONDS, le=MAX_KEY_STALENESS_SECONDS)
    ] = 86_400


class Settings(_Strict):
    issuer: StrictStr
    data_dir: Path
    agents: AgentsSettings = AgentsSettings()
    users: tuple[UserIssuerSettings, ...] = ()
    tools: dict[Name, ToolSettings] = Field(min_length=1)
    workflows: dict[Name, WorkflowSettings] = Field(min_length=1)
    clients: dict[Name, ClientSettings] = {}
    max_delegation_depth: Annotated[StrictInt, Field(ge=1, le=MAX_DELEGATION_DEPTH)] = 4
    server: ServerSettings = ServerSettings()
    console: ConsoleSettings = ConsoleSettings()
    metrics: MetricsSettings = MetricsSettings()
    logging: LoggingSettings = LoggingSettings()
    jwks: JwksSettings = JwksSettings()
    signing_alg: Literal["ES256", "ES384", "PS256", "RS256"] = "ES256"
    # Where records go: None is SQLite in the data dir; a postgresql:// URL is shared by
    # every replica (audit, revocations, ledger). ``deputy db upgrade`` creates the schema.
    storage: Annotated[StrictStr, Field(pattern=r"^postgresql(\+psycopg)?://\S+$")] | None = None
    # Daily counters and replay caches: None keeps them in memory (one replica only); a
    # redis:// URL shares them, so limits stay exact across replicas.
    counters: Annotated[StrictStr, Field(pattern=r"^(redis|rediss|unix)://\S+$")] | None = None
    # Where this deployment's keys start in that Redis: deployments sharing one server each
    # take a prefix of their own.
    counters_prefix: Annotated[StrictStr, Field(pattern=COUNTERS_PREFIX_PATTERN)] = (
        DEFAULT_COUNTERS_PREFIX
    )

    @model_validator(mode="after")
    def _cross_references(self) -> Settings:
        problems: list[str] = []
        if not re.match(r"^https?://[^\s#?]+$", self.issuer) or self.issuer.endswith("/"):
            problems.append(
                "issuer: must be an http(s) URL without query, fragment or trailing slash"
            )
        for name, wf in self.workflows.items():
            for tool, scopes in wf.tools.items():
                if tool not in self.tools:
                    problems.append(
                        f"workflows.{name}.tools.{tool}: unknown tool; "
                        f"declare it under `tools` (known: {', '.join(sorted(self.tools))})"
                    )
                    continue
                extra = sorted(set(scopes) - set(self.tools[tool].scopes))
                if extra:
                    problems.append(
                        f"workflows.{name}.tools.{tool}: scopes {extra} are not scopes of the "
                        f"tool (allowed: {list(self.tools[tool].scopes)})"
                    )
            categories = {self.tools[t].category for t in wf.tools if t in self.tools}
            for category in wf.rate_limits:
                if category not in categories:
                    problems.append(
                        f"workflows.{name}.rate_limits.{category}: no tool of this workflow has "
                        f"that category (categories: {sorted(categories)})"
                    )
            if wf.delegation == "user_token" and not self.users:
                problems.append(
                    f"workflows.{name}.delegation: user_token needs at least one entry in `users`"
                )
            if wf.delegation in ("asserted", "none") and wf.tiers is not None:
                problems.append(
                    f"workflows.{name}.tiers: delegation `{wf.delegation}` has no verified "
                    "tier; remove `tiers` or use delegation: user_token"
                )
        for name in self.metrics.clients:
            client = self.clients.get(name)
            if client is None:
                problems.append(f"metrics.clients: {name!r} is not a client under `clients`")
            elif client.secret_sha256 is None:
                problems.append(
                    f"metrics.clients: client {name!r} has no `secret_sha256`; a scraper "
                    "authenticates with HTTP Basic"
                )
        if self.counters is None and self.counters_prefix != DEFAULT_COUNTERS_PREFIX:
            problems.append(
                "counters_prefix: names keys in Redis; set `counters: redis://...` or remove it"
            )
        unshared = self.unshared_state(self.server.workers)
        if unshared is not None:
            problems.append(f"server.workers: {unshared}")
        problems.extend(self._insecure_key_urls())
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def unshared_state(self, workers: int) -> str | None:
        """Why ``workers`` processes could not share this configuration's state (None: they can).

        SQLite has one writer, and in-memory counters are per process: N workers on them
        would multiply every rate limit by N.
        """
        missing = [
            key
            for key, value in (("storage", self.storage), ("counters", self.counters))
            if value is None
        ]
        if workers == 1 or not missing:
            return None
        return (
            f"{workers} workers need `storage: postgresql://...` and `counters: redis://...` "
            f"(not set: {', '.join(missing)}): SQLite has one writer, and in-memory counters "
            f"are per process, so every rate limit would be multiplied by {workers}"
        )

    def _insecure_key_urls(self) -> list[str]:
        """Keys fetched over the network must come over https (plain http only on loopback)."""
        locations: list[tuple[str, str]] = []
        for i, s in enumerate(self.agents.spiffe):
            locations.append((f"agents.spiffe.{i}.bundle", s.bundle))
        issuers: list[tuple[str, OidcWorkloadSettings | UserIssuerSettings]] = [
            *((f"agents.oidc.{i}", o) for i, o in enumerate(self.agents.oidc)),
            *((f"users.{i}", u) for i, u in enumerate(self.users)),
        ]
        for name, client in self.clients.items():
            if client.jwks is not None:
                locations.append((f"clients.{name}.jwks", client.jwks))
        for where, e in issuers:
            key = "jwks" if e.jwks is not None else "issuer (OIDC discovery)"
            locations.append((f"{where}.{key}", e.jwks or e.issuer))
        return [
            f"{where}: {value!r} must use https:// (http:// is allowed only on loopback)"
            for where, value in locations
            if value.startswith("http://") and not _LOOPBACK_HTTP.match(value)
        ]
