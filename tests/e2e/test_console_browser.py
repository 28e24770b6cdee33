"""The console in a real browser: headless Debian Chromium driven by Playwright.

An investigator's path through an incident, page by page, against a running broker: find the
records, read a refusal's reasons, follow a credential to its uses and its execution, see the
blast radius drawn, read the drift report, and pull the kill switch. Every page is saved as a
screenshot under ``$DEPUTY_ARTIFACTS`` (default ``artifacts/console``), and no page may log a
Content-Security-Policy violation or any other console error.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from tests.integration.deployment import Deployment, running, write_deployment
from tests.integration.oauth_client import new_secret, with_clients

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("DEPUTY_ARTIFACTS", ROOT / "artifacts")) / "console"
ADMIN = ("security-team", new_secret()[0])
API = ("crm-api", new_secret()[0])
WORKLOAD = "spiffe://prod.example/agents/support/triage"
LIVE_RED = "rgb(204, 0, 0)"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("Debian's chromium is not installed: `make test` installs it (apt chromium)")
    return found


def configure(doc: dict[str, Any]) -> None:
    with_clients({ADMIN[0]: ADMIN[1], API[0]: API[1]})(doc)
    doc["console"] = {"enabled": True}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=chromium(), headless=True, args=["--no-sandbox"]
        )
        yield launched
        launched.close()


class Site:
    """A running broker with some history, and a browser page signed in as an admin."""

    def __init__(self, deployment: Deployment, client: httpx.Client, page: Page) -> None:
        self.deployment = deployment
        self.client = client
        self.page = page
        self.errors: list[str] = []
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def url(self, path: str) -> str:
        return f"{self.client.base_url}{path}"

    def issue(self, agent: str, user: str, tier: str, tools: list[str]) -> httpx.Response:
        body = {
            "agent_id": agent,
            "user_id": user,
            "user_token": self.deployment.idp.user_token(user, tier),
            "tools": tools,
        }
        headers = {"Authorization": f"Bearer {self.deployment.svid()}"}
        return self.client.post("/issue", json=body, headers=headers)

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.fixture
def site(tmp_path: Path, browser: Browser) -> Iterator[Site]:
    deployment = write_deployment(tmp_path, configure)
    with running(deployment) as (_, client):
        context = browser.new_context(
            http_credentials={"username": ADMIN[0], "password": ADMIN[1]},
            viewport={"width": 1400, "height": 900},
        )
        try:
            yield Site(deployment, client, context.new_page())
        finally:
            context.close()


def rows(page: Page) -> int:
    return page.locator("table.records tr").count() - 1  # minus the heading


def test_only_admin_clients_get_in(tmp_path: Path, browser: Browser) -> None:
    deployment = write_deployment(tmp_path, configure)
    with running(deployment) as (_, client):
        url = f"{client.base_url}/console"
        anonymous = browser.new_context()
        resource_server = browser.new_context(
            http_credentials={"username": API[0], "password": API[1]}
        )
        try:
            challenged = anonymous.request.get(url)
            assert challenged.status == 401
            assert challenged.headers["www-authenticate"] == 'Basic realm="deputy"'
            page = resource_server.new_page()
            response = page.goto(url)
            assert response is not None and response.status == 403
            expect(page.locator("p.message")).to_have_text("this client is not an admin client")
        finally:
            anonymous.close()
            resource_server.close()


def test_an_investigation_from_records_to_the_kill_switch(site: Site) -> None:
    page = site.page
    first = site.issue("triage-1", "alice", "pro", ["customer_data_api", "pricing_api"])
    assert first.status_code == 200
    assert site.issue("triage-2", "carol", "enterprise", ["customer_data_api"]).status_code == 200
    assert site.issue("triage-3", "bob", "free", ["customer_data_api"]).status_code == 403
    token = first.json()["credentials"]["customer_data_api"]["access_token"]
    execution = first.json()["execution_id"]
    use = {"jti": "", "operation": "GET /accounts/42", "outcome": 200, "time": 1.8e9}

    # Records, newest first; then filtered by user through the form.
    page.goto(site.url("/console"))
    expect(page.locator("h1")).to_have_text("Records")
    assert rows(page) == 3
    site.shot("01-records")
    page.fill("form.filters input[name=user]", "alice")
    page.click("form.filters button")
    expect(page).to_have_url(re.compile(r"user=alice"))
    assert rows(page) == 1
    page.select_option("form.filters select[name=outcome]", "deny")
    page.fill("form.filters input[name=user]", "")
    page.click("form.filters button")
    assert rows(page) == 1
    expect(page.locator("table.records")).to_contain_text("triage-3")
    site.shot("02-records-denied")

    # A refusal's every reason.
    page.locator("table.records a[href^='/console/decisions/']").first.click()
    expect(page.locator("ul.reasons")).to_contain_text("workflow.tiers")
    site.shot("03-decision-denied")

    # alice's decision → its credential → a reported use → the execution timeline.
    page.goto(site.url("/console?user=alice"))
    page.locator("table.records a[href^='/console/decisions/']").first.click()
    page.locator("a[href^='/console/credentials/']").first.click()
    expect(page.locator("h1")).to_contain_text("Credential")
    use["jti"] = page.locator("h1").inner_text().removeprefix("Credential ").strip()
    assert site.client.post("/usage", json={"uses": [use]}, auth=API).status_code == 200
    page.reload()
    expect(page.locator("table.uses")).to_contain_text("GET /accounts/42")
    site.shot("04-credential-uses")
    page.locator(f"a[href='/console/executions/{execution}']").click()
    expect(page.locator("ul.timeline")).to_contain_text("GET /accounts/42")
    expect(page.locator("ul.timeline")).to_contain_text("pricing_api")
    site.shot("05-execution-timeline")

    # The blast radius of the workload, drawn; the live tools stand out in red.
    page.goto(site.url("/console/blast-radius"))
    page.fill("form.blast input[name=workload]", WORKLOAD)
    page.click("form.blast button")
    svg = page.locator("svg.blast")
    expect(svg).to_be_visible()
    live_tool = svg.locator("g[data-key='tool:customer_data_api'] rect")
    quiet_tool = svg.locator("g[data-key='tool:ticketing_api'] rect")
    assert live_tool.evaluate("r => getComputedStyle(r).stroke") == LIVE_RED
    assert quiet_tool.evaluate("r => getComputedStyle(r).stroke") != LIVE_RED
    expect(svg.locator("g[data-key='scope:ticketing_api:tickets:write']")).to_have_count(1)
    expect(page.locator(".live-count")).to_have_text("3")
    site.shot("06-blast-radius")

    # Drift over the last day: ticketing was never issued, pricing issued but never used.
    page.goto(site.url("/console/drift?since=1d"))
    drift = page.locator("table.drift")
    expect(drift).to_contain_text("tool ticketing_api never issued")
    expect(drift).to_contain_text("tool pricing_api issued but never used")
    expect(page.locator("pre.diff")).to_be_visible()
    site.shot("07-drift")

    # The kill switch: a mistyped confirmation revokes nothing; the right one revokes.
    page.goto(site.url(f"/console/executions/{execution}"))
    page.fill("form.kill input[name=confirm]", "not-it")
    page.click("form.kill button")
    expect(page.locator("p.message")).to_contain_text("does not match; nothing was revoked")
    assert introspect(site, token) is True
    page.go_back()
    page.fill("form.kill input[name=confirm]", execution)
    page.fill("form.kill input[name=reason]", "prompt injection")
    page.click("form.kill button")
    expect(page.locator("h1")).to_have_text("Revoked")
    expect(page.locator("p.message")).to_contain_text("2 live credential(s) of 1 user(s)")
    site.shot("08-revoked")
    assert introspect(site, token) is False

    # The one error the browser logged is the refused, mistyped confirmation: no page broke
    # its Content-Security-Policy (a blocked style or inline script would be logged here).
    assert site.errors == [
        "Failed to load resource: the server responded with a status of 400 (Bad Request)"
    ]


def introspect(site: Site, token: str) -> bool:
    response = site.client.post("/oauth2/introspect", data={"token": token}, auth=ADMIN)
    assert response.status_code == 200
    return bool(response.json()["active"])
