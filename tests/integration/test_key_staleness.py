"""A configured staleness bound (`jwks.max_staleness_seconds`) is the one a broker keeps."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from deputy.clock import FakeClock
from tests.integration.deployment import running, write_deployment
from tests.integration.oauth_client import CRM, alice_exchange


def test_keys_serve_until_the_configured_bound_then_fail_closed(tmp_path: Path) -> None:
    def mutate(doc: dict[str, Any]) -> None:
        doc["jwks"] = {"max_staleness_seconds": 60}

    clock = FakeClock(time.time())
    d = write_deployment(tmp_path, mutate, clock=clock)
    trust = tmp_path / "trust" / "login.jwks.json"
    with running(d, clock) as (_, client):
        assert alice_exchange(d, client, resource=CRM).status_code == 200
        saved = trust.read_text()
        trust.unlink()  # the IdP's keys can no longer be fetched
        clock.advance(59)  # a refresh is due (every 30 s at this bound) and fails
        assert alice_exchange(d, client, resource=CRM).status_code == 200
        clock.advance(2)  # 61 s since the last good fetch
        refused = alice_exchange(d, client, resource=CRM)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "temporarily_unavailable"
        assert refused.headers["retry-after"] == "1"
        trust.write_text(saved)
        clock.advance(31)  # the next fetch is allowed, and succeeds
        assert alice_exchange(d, client, resource=CRM).status_code == 200
