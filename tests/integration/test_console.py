"""The admin web console against a real broker: access, pages, escaping and the kill switch."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest

from deputy.audit.log import AuditFilter
from deputy.devtools.broker_thread import BrokerThread
from deputy.server import console
from tests.integration.deployment import Deployment, running, write_deployment
from tests.integration.oauth_client import alice_credential, new_secret, with_clients

Broker = tuple[BrokerThread, httpx.Client]
SECRETS = {"crm-api": new_secret()[0], "security-team": new_secret()[0]}
CRM_AUTH = ("crm-api", SECRETS["crm-api"])
ADMIN_AUTH = ("security-team", SECRETS["security-team"])
HOSTILE = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def with_console(doc: dict[str, Any]) -> None:
    with_clients(SECRETS)(doc)
    doc["console"] = {"enabled": True}


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    return write_deployment(tmp_path, with_console)


@pytest.fixture
def broker(deployment: Deployment) -> Iterator[Broker]:
    with running(deployment) as pair:
        yield pair


def issue(d: Deployment, client: httpx.Client, **change: Any) -> httpx.Response:
    body = {
        "agent_id": "triage-1",
        "user_id": "alice",
        "user_token": d.idp.user_token("alice", "pro"),
        "tools": ["customer_data_api"],
        **change,
    }
    return client.post("/issue", json=body, headers={"Authorization": f"Bearer {d.svid()}"})


def page(client: httpx.Client, path: str, **params: Any) -> httpx.Response:
    return client.get(path, params=params or None, auth=ADMIN_AUTH)


def csrf(client: httpx.Client) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page(client, "/console").text)
    assert found is not None
    return found.group(1)


def kill(client: httpx.Client, form: dict[str, str], auth: Any = ADMIN_AUTH) -> httpx.Response:
    return client.post("/console/revoke", data=form, auth=auth)


def active(client: httpx.Client, token: str) -> bool:
    response = client.post("/oauth2/introspect", data={"token": token}, auth=ADMIN_AUTH)
    assert response.status_code == 200, response.text
    return bool(response.json()["active"])


def jti_of(token: str) -> str:
    return str(pyjwt.decode(token, options={"verify_signature": False})["jti"])


def test_console_is_not_routed_unless_enabled(tmp_path: Path) -> None:
    d = write_deployment(tmp_path, with_clients(SECRETS))
    with running(d) as (_, client):
        assert page(client, "/console").status_code == 404
        assert page(client, "/console/style.css").status_code == 404


def test_only_admin_clients_get_in(broker: Broker) -> None:
    _, client = broker
    anonymous = client.get("/console")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == 'Basic realm="deputy"'
    wrong = client.get("/console", auth=("security-team", "wrong"))
    assert wrong.status_code == 401 and "www-authenticate" in wrong.headers
    assert client.get("/console", auth=CRM_AUTH).status_code == 403
    assert page(client, "/console").status_code == 200


def test_every_page_carries_the_security_headers(deployment: Deployment, broker: Broker) -> None:
    _, client = broker
    alice_credential(deployment, client)
    for response in (
        page(client, "/console"),
        client.get("/console"),
        page(client, "/console/style.css"),
        page(client, "/console/decisions/nope"),
    ):
        headers = response.headers
        assert headers["content-security-policy"] == "default-src 'none'; style-src 'self'"
        assert headers["x-frame-options"] == "DENY"
        assert headers["cache-control"] == "no-store"
        assert headers["referrer-policy"] == "no-referrer"


def test_records_are_listed_newest_first_and_escaped(
    deployment: Deployment, broker: Broker
) -> None:
    _, client = broker
    assert issue(deployment, client, agent_id=HOSTILE).status_code == 200
    assert issue(deployment, client, agent_id="triage-2").status_code == 200
    response = page(client, "/console")
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    text = response.text
    assert ESCAPED in text and HOSTILE not in text
    assert text.index("triage-2") < text.index(ESCAPED)


def test_filters_select_records(deployment: Deployment, broker: Broker) -> None:
    _, client = broker
    assert issue(deployment, client, agent_id="triage-1").status_code == 200
    assert issue(deployment, client, agent_id="triage-2").status_code == 200
    only = page(client, "/console", instance="triage-2").text
    assert "triage-2" in only.replace('value="triage-2"', "") and "triage-1" not in only
    assert "triage-1" in page(client, "/console", user="alice").text
    assert "triage-1" not in page(client, "/console", user="bob").text
    assert "triage-1" not in page(client, "/console", since="2999-01-01T00:00:00").text
    assert "triage-1" in page(client, "/console", since="0").text
    assert page(client, "/console", since="yesterday").status_code == 400


def test_records_are_paged_with_a_cursor(
    deployment: Deployment, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, client = broker
    monkeypatch.setattr(console, "PAGE_SIZE", 2)
    for n in range(3):
        assert issue(deployment, client, agent_id=f"pager-{n}").status_code == 200
    first = page(client, "/console", user="alice").text
    assert "pager-2" in first and "pager-1" in first and "pager-0" not in first
    found = re.search(r'rel="next" href="([^"]+)"', first)
    assert found is not None
    following = page(client, found.group(1).replace("&amp;", "&")).text
    assert "pager-0" in following and "pager-1" not in following
    assert 'rel="next"' not in following


def test_decision_detail_names_every_reason_and_its_credentials(
    deployment: Deployment, broker: Broker
) -> None:
    server, client = broker
    bob = deployment.idp.user_token("bob", "free")
    assert issue(deployment, client, user_id="bob", user_token=bob).status_code == 403
    allowed = issue(deployment, client).json()
    token = allowed["credentials"]["customer_data_api"]["access_token"]
    records = {
        s.record["outcome"]: s.record for s in server.broker.audit_reader.query(AuditFilter())
    }
    denied = page(client, f"/console/decisions/{records['deny']['decision_id']}")
    assert denied.status_code == 200 and "workflow.tiers" in denied.text
    detail = page(client, f"/console/decisions/{records['allow']['decision_id']}").text
    assert f'href="/console/credentials/{jti_of(token)}"' in detail
    assert page(client, "/console/decisions/no-such").status_code == 404


def test_credential_detail_lists_its_uses(deployment: Deployment, broker: Broker) -> None:
    _, client = broker
    token = alice_credential(deployment, client)["access_token"]
    jti = jti_of(token)
    use = {"jti": jti, "operation": "GET /accounts/<id>", "outcome": 200, "time": 1.8e9}
    assert client.post("/usage", json={"uses": [use]}, auth=CRM_AUTH).status_code == 200
    detail = page(client, f"/console/credentials/{jti}")
    assert detail.status_code == 200
    assert "GET /accounts/&lt;id&gt;" in detail.text and "crm-api" in detail.text
    assert "customer_data_api" in detail.text and "/console/decisions/" in detail.text
    assert page(client, "/console/credentials/no-such").status_code == 404


def test_kill_switch_needs_confirmation_and_the_form_token(
    deployment: Deployment, broker: Broker
) -> None:
    _, client = broker
    token = alice_credential(deployment, client)["access_token"]
    jti = jti_of(token)
    form = {"selector": "jti", "value": jti, "confirm": jti, "reason": "leaked"}
    assert kill(client, {**form, "confirm": "oops", "csrf": csrf(client)}).status_code == 400
    assert kill(client, form).status_code == 403
    assert kill(client, {**form, "csrf": "0" * 64}).status_code == 403
    assert kill(client, {**form, "csrf": csrf(client)}, auth=CRM_AUTH).status_code == 403
    assert active(client, token)
    done = kill(client, {**form, "csrf": csrf(client)})
    assert done.status_code == 200 and "Revoked" in done.text
    assert not active(client, token)
    bad = kill(client, {**form, "selector": "nope", "confirm": jti, "csrf": csrf(client)})
    assert bad.status_code == 400


WORKLOAD = "spiffe://prod.example/agents/support/triage"


def test_filters_by_tool_and_outcome(deployment: Deployment, broker: Broker) -> None:
    _, client = broker
    bob = deployment.idp.user_token("bob", "free")
    assert issue(deployment, client, agent_id="crm-reader").status_code == 200
    assert issue(deployment, client, agent_id="pricer", tools=["pricing_api"]).status_code == 200
    denied = issue(deployment, client, agent_id="refused", user_id="bob", user_token=bob)
    assert denied.status_code == 403
    by_tool = page(client, "/console", tool="pricing_api").text
    assert "pricer" in by_tool and "crm-reader" not in by_tool
    denials = page(client, "/console", outcome="deny").text
    assert "refused" in denials and "pricer" not in denials and "crm-reader" not in denials
    both = page(client, "/console", outcome="deny", tool="customer_data_api").text
    assert "refused" in both and "crm-reader" not in both
    assert '<option value="deny" selected>' in denials
    wrong = page(client, "/console", outcome="maybe")
    assert wrong.status_code == 400 and "allow, deny, revoke, usage" in wrong.text


def test_execution_page_shows_decision_credentials_and_uses(
    deployment: Deployment, broker: Broker
) -> None:
    _, client = broker
    body = issue(deployment, client).json()
    token, run = body["credentials"]["customer_data_api"]["access_token"], body["execution_id"]
    use = {"jti": jti_of(token), "operation": "GET /accounts/7", "outcome": 200, "time": 1.8e9}
    assert client.post("/usage", json={"uses": [use]}, auth=CRM_AUTH).status_code == 200
    listed = page(client, "/console").text
    assert f'href="/console/executions/{run}"' in listed
    timeline = page(client, f"/console/executions/{run}")
    assert timeline.status_code == 200
    text = timeline.text
    assert f'href="/console/credentials/{jti_of(token)}"' in text
    assert "GET /accounts/7" in text and "1 use(s)" in text
    assert f'name="value" value="{run}"' in text  # the kill switch, aimed at this execution
    assert page(client, "/console/executions/no-such").status_code == 404


def test_blast_radius_picture_highlights_live_tools(deployment: Deployment, broker: Broker) -> None:
    _, client = broker
    assert issue(deployment, client).status_code == 200
    assert page(client, "/console/blast-radius").status_code == 200  # the form alone
    drawn = page(client, "/console/blast-radius", workload=WORKLOAD)
    assert drawn.status_code == 200
    svg = drawn.text[drawn.text.index("<svg") : drawn.text.index("</svg>")]
    assert 'class="node agent live"' in svg
    assert '<g class="node tool live" data-key="tool:customer_data_api">' in svg
    assert '<g class="node tool" data-key="tool:pricing_api">' in svg
    assert 'data-key="workflow:customer-support"' in svg
    assert 'data-key="scope:ticketing_api:tickets:write"' in svg
    assert svg.count('class="edge live"') == 1  # customer-support → customer_data_api
    assert "sub-agent of" not in drawn.text
    research = page(
        client, "/console/blast-radius", workload="spiffe://prod.example/agents/research/x"
    )
    assert "sub-agent of: customer-support" in research.text
    assert 'class="node agent"' in research.text  # nothing live
    hostile = page(client, "/console/blast-radius", workload=HOSTILE)
    assert ESCAPED in hostile.text and HOSTILE not in hostile.text
    assert "no workflow admits it" in hostile.text
    assert page(client, "/console/blast-radius", workload="x" * 513).status_code == 400


def test_drift_page_reports_and_suggests(deployment: Deployment, broker: Broker) -> None:
    _, client = broker
    assert issue(deployment, client).status_code == 200
    drift = page(client, "/console/drift")
    assert drift.status_code == 200
    text = drift.text
    assert "tool pricing_api never issued" in text and "tool ticketing_api never issued" in text
    assert "nightly-billing" in text and "no credential issued in the window" in text
    assert '<span class="del">-      pricing_api:' in text
    assert "drift counts issuance only" in text
    assert page(client, "/console/drift", since="soon").status_code == 400
    future = page(client, "/console/drift", since="2999-01-01T00:00:00").text
    assert "customer-support</td><td>0</td>" in future
