"""Operations on a broker on loopback: /metrics, /healthz and /readyz, reloading the policy."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from deputy.audit.log import AuditFilter
from deputy.devtools.broker_thread import BrokerThread
from deputy.server.reload import ConfigReloader
from tests.integration.deployment import Deployment, running, write_deployment
from tests.integration.oauth_client import CRM, exchange, new_secret
from tests.integration.scrape import sample, samples

DEADLINE_SECONDS = 20.0
WRITER_MODULE = b"deputy.store.sqlite.audit_process"


def metrics_on(doc: dict[str, Any]) -> None:
    doc["metrics"] = {"enabled": True}


def issue(
    client: httpx.Client, svid: str, user_token: str | None, tools: list[str] | None = None
) -> httpx.Response:
    body: dict[str, Any] = {"agent_id": "triage-1", "tools": tools or ["pricing_api"]}
    if user_token is not None:
        body["user_token"] = user_token
    return client.post("/issue", json=body, headers={"Authorization": f"Bearer {svid}"})


def scrape(client: httpx.Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(response.text)


def policy_versions(server: BrokerThread) -> list[str | None]:
    return [s.record["policy_version"] for s in server.broker.audit_reader.query(AuditFilter())]


def edit_config(d: Deployment, change: Callable[[dict[str, Any]], None]) -> None:
    doc = yaml.safe_load(d.config_path.read_text())
    change(doc)
    d.config_path.write_text(yaml.safe_dump(doc))


# --- /metrics ---------------------------------------------------------------------------


def test_metrics_count_issuances_denials_commits_and_cache_hits(tmp_path: Path) -> None:
    d = write_deployment(tmp_path, metrics_on)
    svid, alice = d.svid(), d.idp.user_token("alice", "pro")
    with running(d) as (server, client):
        assert issue(client, svid, alice, ["pricing_api", "ticketing_api"]).status_code == 200
        assert issue(client, svid, alice).status_code == 200
        denied = issue(client, svid, d.idp.user_token("bob", "free"))
        assert denied.status_code == 403
        assert [r["rule"] for r in denied.json()["reasons"]] == ["workflow.tiers"]
        found = scrape(client)
        version = server.broker.policy.version

    assert sample(found, "deputy_issuances_total", endpoint="/issue") == 2
    assert sample(found, "deputy_credentials_issued_total", tool="pricing_api") == 2
    assert sample(found, "deputy_credentials_issued_total", tool="ticketing_api") == 1
    assert sample(found, "deputy_refusals_total", endpoint="/issue", error="access_denied") == 1
    assert sample(found, "deputy_denials_total", rule="workflow.tiers") == 1
    issuance = "deputy_issuance_duration_seconds_count"
    assert sample(found, issuance, endpoint="/issue", outcome="allow") == 2
    assert sample(found, issuance, endpoint="/issue", outcome="deny") == 1
    assert sample(found, "deputy_audit_commit_duration_seconds_count", outcome="committed") == 3
    assert sample(found, "deputy_audit_commit_duration_seconds_count", outcome="failed") == 0
    assert sample(found, "deputy_http_requests_total", route="/issue", status="200") == 2
    assert sample(found, "deputy_http_requests_total", route="/issue", status="403") == 1
    assert sample(found, "deputy_http_request_duration_seconds_count", route="/issue") == 3
    # One SVID three times; alice's token twice, bob's once.
    lookups = "deputy_token_cache_lookups_total"
    assert sample(found, lookups, cache="workload", result="hit") == 2
    assert sample(found, lookups, cache="workload", result="miss") == 1
    assert sample(found, lookups, cache="user", result="hit") == 1
    assert sample(found, lookups, cache="user", result="miss") == 2
    # Each token verified (not cached) looked up its key once; start-up fetched three sets.
    assert sample(found, "deputy_key_set_lookups_total") == 3
    assert sample(found, "deputy_key_set_fetches_total", result="ok") == 3
    assert sample(found, "deputy_key_set_fetches_total", result="error") == 0
    assert sample(found, "deputy_policy_info", version=version) == 1


def test_token_endpoint_decisions_count_under_their_endpoint(tmp_path: Path) -> None:
    d = write_deployment(tmp_path, metrics_on)
    with running(d) as (_, client):
        ok = exchange(
            client, subject=d.idp.user_token("alice", "pro"), actor=d.svid(), resource=CRM
        )
        assert ok.status_code == 200, ok.text
        free = d.idp.user_token("bob", "free")
        denied = exchange(client, subject=free, actor=d.svid(), resource=CRM)
        assert denied.status_code == 400 and denied.json()["error"] == "invalid_request"
        found = scrape(client)
    token = "/oauth2/token"
    assert sample(found, "deputy_issuances_total", endpoint=token) == 1
    assert sample(found, "deputy_issuances_total", endpoint="/issue") is None
    assert sample(found, "deputy_refusals_total", endpoint=token, error="invalid_request") == 1
    assert sample(found, "deputy_denials_total", rule="workflow.tiers") == 1
    assert sample(found, "deputy_credentials_issued_total", tool="customer_data_api") == 1


def test_metrics_are_not_routed_unless_enabled(deployment: Deployment) -> None:
    with running(deployment) as (_, client):
        assert client.get("/metrics").status_code == 404


def test_metrics_answer_only_the_scrapers_named(tmp_path: Path) -> None:
    secret, digest = new_secret()
    other_secret, other_digest = new_secret()

    def mutate(doc: dict[str, Any]) -> None:
        doc["clients"] = {
            "prometheus": {"secret_sha256": digest},
            "crm-api": {"secret_sha256": other_digest, "audiences": [CRM]},
        }
        doc["metrics"] = {"enabled": True, "clients": ["prometheus"]}

    d = write_deployment(tmp_path, mutate)
    with running(d) as (server, client):
        anonymous = client.get("/metrics")
        wrong = client.get("/metrics", auth=("prometheus", other_secret))
        other = client.get("/metrics", auth=("crm-api", other_secret))
        allowed = client.get("/metrics", auth=("prometheus", secret))
        version = server.broker.policy.version
    for refused in (anonymous, wrong):
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
        assert refused.headers["www-authenticate"].startswith("Basic ")
        assert "deputy_" not in refused.text
    assert other.status_code == 403 and other.json()["error"] == "access_denied"
    assert allowed.status_code == 200
    assert sample(samples(allowed.text), "deputy_policy_info", version=version) == 1


# --- /healthz and /readyz -----------------------------------------------------------------

READY = {
    "status": "ready",
    "checks": {
        "lifecycle": "ok",
        "audit_writer": "ok",
        "audit_store": "ok",
        "signing_keys": "ok",
    },
}


@pytest.mark.sqlite_only("moves the SQLite file away under the broker")
def test_readyz_names_an_unreadable_audit_store_and_recovers(deployment: Deployment) -> None:
    with running(deployment) as (_, client):
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json() == READY
        assert ready.headers["cache-control"] == "no-store"
        db = deployment.settings.data_dir / "audit.db"
        away = db.with_name("audit.db.away")
        db.rename(away)
        try:
            unready = client.get("/readyz")
            alive = client.get("/healthz")
        finally:
            away.rename(db)
        recovered = client.get("/readyz")
    assert unready.status_code == 503
    assert unready.json() == {
        "status": "not_ready",
        "not_ready": ["audit_store"],
        "checks": {**READY["checks"], "audit_store": "the audit database does not answer reads"},
    }
    assert alive.status_code == 200  # liveness: the process is fine, restarting it won't help
    assert recovered.status_code == 200


def writer_pids(data_dir: Path) -> set[int]:
    """The audit writer processes working on ``data_dir``."""
    found = set()
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes()
            if WRITER_MODULE in cmdline and str(data_dir).encode() in cmdline:
                found.add(int(proc.name))
    return found


@pytest.mark.sqlite_only("kills the SQLite writer process")
def test_readyz_starts_a_dead_audit_writer_again(deployment: Deployment) -> None:
    data_dir = deployment.settings.data_dir
    with running(deployment) as (_, client):
        (first,) = writer_pids(data_dir)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + DEADLINE_SECONDS
        while True:  # the broker learns of the death from the closed pipe, asynchronously
            ready = client.get("/readyz")
            started = writer_pids(data_dir) - {first}
            if (ready.status_code == 200 and started) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert ready.status_code == 200 and len(started) == 1
        svid, alice = deployment.svid(), deployment.idp.user_token("alice", "pro")
        assert issue(client, svid, alice).status_code == 200


# --- reloading the config (what SIGHUP does) -----------------------------------------------


def test_reload_decides_new_requests_under_the_new_policy(tmp_path: Path) -> None:
    d = write_deployment(tmp_path, metrics_on)
    svid, bob = d.svid(), d.idp.user_token("bob", "free")
    with running(d) as (server, client):
        old = server.broker.policy.version
        assert issue(client, svid, bob).status_code == 403

        def admit_free_users(doc: dict[str, Any]) -> None:
            doc["workflows"]["customer-support"]["tiers"].append("free")
            doc["tools"]["billing_api"] = {
                "audience": "https://billing.internal",
                "category": "billing",
                "scopes": ["invoices:read"],
            }

        edit_config(d, admit_free_users)
        outcome = ConfigReloader(d.config_path, server.broker).reload()
        assert outcome.applied and outcome.restart_needed == () and outcome.problem is None
        assert outcome.policy_version != old
        assert server.broker.policy.version == outcome.policy_version

        assert issue(client, svid, bob).status_code == 200
        assert issue(client, "not-a-token", bob).status_code == 401
        scopes = client.get("/.well-known/oauth-authorization-server").json()["scopes_supported"]
        found = scrape(client)
        versions = policy_versions(server)

    # Every decision, even one refused before any workflow, names the policy it was made under.
    assert versions == [old, outcome.policy_version, outcome.policy_version]
    assert "invoices:read" in scopes
    assert sample(found, "deputy_policy_info", version=outcome.policy_version) == 1
    assert sample(found, "deputy_policy_info", version=old) is None
    assert sample(found, "deputy_config_reloads_total", result="applied") == 1
    assert sample(found, "deputy_config_restart_needed") == 0


def break_ttl(doc: dict[str, Any]) -> None:
    doc["workflows"]["customer-support"]["ttl"]["max"] = "long"


def unknown_tool(doc: dict[str, Any]) -> None:
    doc["workflows"]["customer-support"]["tools"]["payroll_api"] = ["salaries:read"]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (break_ttl, "workflows.customer-support.ttl.max: Input should be a valid integer"),
        (unknown_tool, "workflows.customer-support.tools.payroll_api: unknown tool"),
        (None, "not valid YAML"),
    ],
    ids=["wrong-type", "unknown-tool", "not-yaml"],
)
def test_reload_of_an_invalid_file_keeps_the_running_policy(
    tmp_path: Path, change: Callable[[dict[str, Any]], None] | None, named: str
) -> None:
    d = write_deployment(tmp_path, metrics_on)
    svid, bob = d.svid(), d.idp.user_token("bob", "free")
    with running(d) as (server, client):
        old = server.broker.policy.version

        def admit_free_users_but(doc: dict[str, Any]) -> None:
            doc["workflows"]["customer-support"]["tiers"].append("free")
            if change is not None:
                change(doc)

        edit_config(d, admit_free_users_but)
        if change is None:
            d.config_path.write_text("workflows: [\n")
        outcome = ConfigReloader(d.config_path, server.broker).reload()
        denied = issue(client, svid, bob)
        found = scrape(client)
        versions = policy_versions(server)
    assert not outcome.applied and outcome.policy_version == old
    assert outcome.problem is not None and named in outcome.problem
    assert denied.status_code == 403
    assert versions == [old]
    assert sample(found, "deputy_config_reloads_total", result="rejected") == 1
    assert sample(found, "deputy_policy_info", version=old) == 1


def test_reload_leaves_what_needs_a_restart_and_says_so(tmp_path: Path) -> None:
    d = write_deployment(tmp_path, metrics_on)
    with running(d) as (server, client):
        old_port = server.broker.settings.server.port

        def move_everything(doc: dict[str, Any]) -> None:
            doc["issuer"] = "https://elsewhere.internal"
            doc["server"] = {"port": 9999}
            doc["signing_alg"] = "ES384"
            doc["workflows"]["customer-support"]["rate_limits"]["ticketing"] = 1

        edit_config(d, move_everything)
        outcome = ConfigReloader(d.config_path, server.broker).reload()
        issuer = client.get("/.well-known/oauth-authorization-server").json()["issuer"]
        svid, alice = d.svid(), d.idp.user_token("alice", "pro")
        first = issue(client, svid, alice, ["ticketing_api"])
        second = issue(client, svid, alice, ["ticketing_api"])
        found = scrape(client)
        settings = server.broker.settings
    assert outcome.applied and outcome.restart_needed == ("issuer", "server", "signing_alg")
    assert issuer == "https://deputy.internal"
    assert settings.issuer == "https://deputy.internal" and settings.signing_alg == "ES256"
    assert settings.server.port == old_port
    assert settings.workflows["customer-support"].rate_limits["ticketing"] == 1
    assert first.status_code == 200 and second.status_code == 429  # the new limit applies
    assert sample(found, "deputy_config_restart_needed") == 1


def test_reload_refuses_a_policy_the_running_trust_cannot_serve(tmp_path: Path) -> None:
    def without_users(doc: dict[str, Any]) -> None:
        doc["users"] = []
        for name in ("customer-support", "support-research"):
            doc["workflows"][name]["delegation"] = "asserted"
            del doc["workflows"][name]["tiers"]

    d = write_deployment(tmp_path, without_users)
    with running(d) as (server, _):
        old = server.broker.policy.version

        def with_users(doc: dict[str, Any]) -> None:
            doc["users"] = [{"issuer": "https://login.example.com", "audience": "portal"}]
            doc["workflows"]["customer-support"]["delegation"] = "user_token"

        edit_config(d, with_users)
        outcome = ConfigReloader(d.config_path, server.broker).reload()
        version = server.broker.policy.version
    assert not outcome.applied and version == old
    assert outcome.problem is not None
    assert "does not fit the running configuration" in outcome.problem
    assert "user_token needs at least one entry in `users`" in outcome.problem


def test_reload_to_longer_lifetimes_makes_revocations_outlast_them(tmp_path: Path) -> None:
    secret, digest = new_secret()

    def operator(doc: dict[str, Any]) -> None:
        doc["clients"] = {"security-team": {"secret_sha256": digest, "admin": True}}

    d = write_deployment(tmp_path, operator)
    auth = ("security-team", secret)
    with running(d) as (server, client):
        edit_config(d, lambda doc: doc["workflows"]["customer-support"]["ttl"].update(max=7200))
        assert ConfigReloader(d.config_path, server.broker).reload().applied
        longer = client.post("/admin/revocations", json={"user_id": "mallory"}, auth=auth)
        edit_config(d, lambda doc: doc["workflows"]["customer-support"]["ttl"].update(max=900))
        assert ConfigReloader(d.config_path, server.broker).reload().applied
        after_shortening = client.post("/admin/revocations", json={"user_id": "eve"}, auth=auth)
    for response in (longer, after_shortening):
        assert response.status_code == 200, response.text
        revoked = response.json()["revoked"]
        # Credentials issued while the longer limit held may still be live: never shortened.
        assert revoked["expires_at"] == revoked["issued_before"] + 7200
