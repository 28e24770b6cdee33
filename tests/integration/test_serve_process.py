"""`deputy serve` as operators run it: JSON logs, SIGTERM drains, SIGHUP reloads the policy."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest
import yaml

from deputy.audit.log import AuditFilter
from deputy.devtools.broker_process import BrokerProcess
from deputy.store.audit_store import open_reader
from tests.integration.deployment import Deployment, write_deployment
from tests.integration.drain import stop_under_load
from tests.integration.scrape import sample, samples

DEADLINE_SECONDS = 20.0


def log_lines(broker: BrokerProcess) -> list[dict[str, Any]]:
    """Every line the broker wrote to stderr, each of which must be one JSON object."""
    return [json.loads(line) for line in broker.log.read_text().splitlines()]


def edit_config(d: Deployment, change: Callable[[dict[str, Any]], None]) -> None:
    doc = yaml.safe_load(d.config_path.read_text())
    change(doc)
    d.config_path.write_text(yaml.safe_dump(doc))


def jti(token: str) -> str:
    value: str = pyjwt.decode(token, options={"verify_signature": False})["jti"]
    return value


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_finishes_issuances_under_way_then_exits_0(tmp_path: Path, signum: int) -> None:
    d = write_deployment(tmp_path)
    broker = BrokerProcess(d.config_path).start()
    seen = stop_under_load(d, broker, signum)

    assert b"connection: close" in seen.slow_head.lower()
    slow_token = seen.slow_body["credentials"]["pricing_api"]["access_token"]
    assert seen.exit_status == 0
    assert set(seen.statuses) == {200}  # clients saw answers or a closed connection, never an error
    jtis = {jti(t) for t in [*seen.tokens, slow_token]}
    with closing(open_reader(d.settings)) as log:
        missing = [j for j in jtis if not list(log.query(AuditFilter(jti=j, limit=1)))]
        (slow_record,) = log.query(AuditFilter(jti=jti(slow_token)))
        report = log.verify()
    assert missing == []
    assert slow_record.record["request_id"] == "slow-1"
    assert report.ok and report.records == len(seen.statuses) + 1
    assert log_lines(broker)[-1]["message"] == "broker stopped"


def test_json_log_lines_carry_request_ids_and_no_tokens(tmp_path: Path) -> None:
    d = write_deployment(tmp_path, lambda doc: doc.update(logging={"access": True}))
    svid, alice = d.svid(), d.idp.user_token("alice", "pro")
    with BrokerProcess(d.config_path) as broker:
        r = httpx.post(
            f"{broker.url}/issue",
            json={"agent_id": "a", "user_token": alice, "tools": ["pricing_api"]},
            headers={"Authorization": f"Bearer {svid}", "X-Request-ID": "req-json-1"},
        )
        assert r.status_code == 200
        refused = httpx.post(f"{broker.url}/issue", json={}, headers={"X-Request-ID": "req-2"})
        assert refused.status_code == 401
        broker.send(signal.SIGTERM)
        assert broker.wait() == 0
    lines = log_lines(broker)
    access = [line for line in lines if line["logger"] == "deputy.access"]
    issued = [line for line in access if line.get("request_id") == "req-json-1"]
    assert [(x["method"], x["route"], x["status"]) for x in issued] == [("POST", "/issue", 200)]
    assert any(x.get("request_id") == "req-2" and x["status"] == 401 for x in access)
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    text = broker.log.read_text()
    for secret in (svid, alice, r.json()["credentials"]["pricing_api"]["access_token"]):
        assert secret not in text


def test_sighup_reloads_the_policy_and_keeps_it_when_the_file_is_broken(tmp_path: Path) -> None:
    d = write_deployment(tmp_path, lambda doc: doc.update(metrics={"enabled": True}))
    svid, bob = d.svid(), d.idp.user_token("bob", "free")
    body = {"agent_id": "a", "user_token": bob, "tools": ["pricing_api"]}
    headers = {"Authorization": f"Bearer {svid}"}
    with BrokerProcess(d.config_path) as broker, httpx.Client(base_url=broker.url) as http:

        def reloads(result: str) -> float:
            """Bounded polling until the broker has handled the SIGHUP."""
            deadline = time.monotonic() + DEADLINE_SECONDS
            while time.monotonic() < deadline:
                found = samples(http.get("/metrics").text)
                value = sample(found, "deputy_config_reloads_total", result=result)
                if value:
                    return value
                time.sleep(0.02)
            raise AssertionError(f"no {result} reload within {DEADLINE_SECONDS} s")

        assert http.post("/issue", json=body, headers=headers).status_code == 403

        def admit_free_users_elsewhere(doc: dict[str, Any]) -> None:
            doc["workflows"]["customer-support"]["tiers"].append("free")
            doc["issuer"] = "https://elsewhere.internal"

        edit_config(d, admit_free_users_elsewhere)
        broker.send(signal.SIGHUP)
        assert reloads("applied") == 1
        allowed = http.post("/issue", json=body, headers=headers)
        metadata = http.get("/.well-known/oauth-authorization-server").json()

        edit_config(d, lambda doc: doc["workflows"]["customer-support"]["ttl"].update(max="long"))
        broker.send(signal.SIGHUP)
        assert reloads("rejected") == 1
        still = http.post("/issue", json=body, headers=headers)
        broker.send(signal.SIGTERM)
        assert broker.wait() == 0

    assert allowed.status_code == 200 and still.status_code == 200
    assert metadata["issuer"] == "https://deputy.internal"  # needs a restart
    with closing(open_reader(d.settings)) as reader:
        versions = [s.record["policy_version"] for s in reader.query(AuditFilter())]
    assert len(versions) == 3 and versions[0] != versions[1] == versions[2]
    lines = log_lines(broker)
    (restart,) = [line for line in lines if "restart_needed" in line]
    assert restart["level"] == "warning" and restart["restart_needed"] == ["issuer"]
    (rejected,) = [line for line in lines if line["message"].startswith("config reload rejected")]
    assert rejected["level"] == "error"
    assert "workflows.customer-support.ttl.max" in rejected["problem"]
