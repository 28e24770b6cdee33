"""`counters: redis://...` in the config: the broker keeps its daily counters in Redis, says
so in /readyz, and fails closed (503 within a second) when the counters do not answer."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx

from tests.integration.deployment import Deployment, running, write_deployment
from tests.redis.conftest import admin


def with_counters(url: str, prefix: str | None = None) -> Any:
    def mutate(doc: dict[str, Any]) -> None:
        doc["counters"] = url
        if prefix is not None:
            doc["counters_prefix"] = prefix

    return mutate


def issue(d: Deployment, client: httpx.Client) -> httpx.Response:
    return client.post(
        "/issue",
        headers={"Authorization": f"Bearer {d.svid()}"},
        json={
            "agent_id": "a",
            "user_token": d.idp.user_token("alice", "pro"),
            "tools": ["ticketing_api"],
        },
    )


def test_the_configured_redis_holds_the_counters_under_the_configured_prefix(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    d = write_deployment(tmp_path, with_counters(redis_url, prefix))
    with running(d) as (_, client):
        assert issue(d, client).status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["counters"] == "ok"
    with admin() as redis_client:
        found = {
            re.sub(r"^quota:\d+:", "quota:{day}:", key.decode().removeprefix(prefix)): value
            for key in redis_client.scan_iter(match=f"{prefix}*", count=1000)
            for value in [redis_client.get(key)]
        }
    assert found == {
        "quota:{day}:https%3A%2F%2Flogin.example.com:alice:ticketing": b"1",
        "quota:{day}:seeded": b"0",  # a new day: nothing in the audit log to seed
    }


def test_counters_that_do_not_answer_fail_closed_within_a_second(
    tmp_path: Path, closed_port: int
) -> None:
    d = write_deployment(tmp_path, with_counters(f"redis://127.0.0.1:{closed_port}/0"))
    with running(d) as (_, client):
        started = time.monotonic()
        refused = issue(d, client)
        elapsed = time.monotonic() - started
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert elapsed < 1.0
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "counters" in ready.json()["not_ready"]
