"""UsageReporter: never blocks or raises, bounded queue, batches, retries, middleware reports."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from deputy.clock import FakeClock
from deputy.sdk.resource import DeputyAuthMiddleware, DeputyVerifier, UsageReporter
from deputy.sdk.resource.asgi import Receive, Scope, Send
from deputy.sdk.resource.credential import VerifiedCredential

from .local import NOW, LocalBroker

BROKER = "https://deputy.example"
SECRET = "s3cret-value-never-logged"


def credential(jti: str = "jti-1") -> VerifiedCredential:
    return VerifiedCredential(
        user="alice",
        agent="spiffe://prod.example/agent",
        agent_instance=None,
        execution_id="exe_1",
        actors=("spiffe://prod.example/agent",),
        scopes=frozenset({"accounts:read"}),
        jti=jti,
        audience="https://crm.example",
        expires_at=2_000_000_000,
        workflow=None,
        delegation=None,
        decision_id=None,
        claims={},
    )


class UsageBroker:
    """Answers each usage report with the next status (200 records every use)."""

    def __init__(self, *statuses: int | Exception) -> None:
        self.statuses = list(statuses)
        self.batches: list[list[dict[str, Any]]] = []
        self.auth: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url == BROKER + "/usage"
        status = self.statuses.pop(0) if self.statuses else 200
        if isinstance(status, Exception):
            raise status
        uses = json.loads(request.content)["uses"]
        self.batches.append(uses)
        self.auth.append(request.headers["authorization"])
        body = {"recorded": len(uses), "refused": 0, "decision_id": "use_1"}
        return httpx.Response(status, json=body if status == 200 else {"error": "x"})


async def make(
    broker: UsageBroker, clock: FakeClock, **options: Any
) -> tuple[UsageReporter, httpx.AsyncClient]:
    http = httpx.AsyncClient(transport=httpx.MockTransport(broker))
    return UsageReporter(
        BROKER + "/", "crm-api", SECRET, http_client=http, clock=clock, **options
    ), http


async def test_reports_are_batched_with_basic_auth(clock: FakeClock) -> None:
    broker = UsageBroker()
    reporter, http = await make(broker, clock, max_batch=2)
    for n in range(5):
        reporter.report(credential(f"jti-{n}"), "GET /a", 200)
        clock.advance(1)
    assert broker.batches == [] and reporter.pending == 5
    assert await reporter.flush() is True
    assert [len(b) for b in broker.batches] == [2, 2, 1]
    assert broker.batches[0][0] == {
        "jti": "jti-0",
        "operation": "GET /a",
        "outcome": 200,
        "time": NOW,
    }
    expected = "Basic " + base64.b64encode(f"crm-api:{SECRET}".encode()).decode()
    assert set(broker.auth) == {expected}
    assert (reporter.sent, reporter.pending, reporter.dropped) == (5, 0, 0)
    assert SECRET not in repr(reporter)
    await reporter.aclose()
    await http.aclose()


async def test_report_never_raises_and_cleans_what_it_sends(clock: FakeClock) -> None:
    broker = UsageBroker()
    reporter, http = await make(broker, clock)
    reporter.report(credential(), "GET /\n" + "x" * 300, 204)
    reporter.report(credential(), "", 404)
    reporter.report(credential(), "GET /", 700)  # not a status: dropped, counted
    reporter.report(credential(), "GET /", True)
    reporter.report(None, "GET /", 200)  # type: ignore[arg-type]
    assert reporter.dropped == 3 and reporter.pending == 2
    await reporter.flush()
    first, second = broker.batches[0]
    assert first["operation"] == "GET /?" + "x" * 250 and len(first["operation"]) == 256
    assert second["operation"] == "-" and second["outcome"] == 404
    await reporter.aclose()
    await http.aclose()


async def test_a_full_queue_drops_the_oldest_and_counts(clock: FakeClock) -> None:
    broker = UsageBroker()
    reporter, http = await make(broker, clock, max_queue=3)
    for n in range(5):
        reporter.report(credential(f"jti-{n}"), "GET /", 200)
    assert reporter.pending == 3 and reporter.dropped == 2
    await reporter.flush()
    assert [u["jti"] for u in broker.batches[0]] == ["jti-2", "jti-3", "jti-4"]
    await reporter.aclose()
    await http.aclose()


@pytest.mark.parametrize(
    "failure", [503, 429, 500, httpx.ConnectError("refused"), httpx.ReadTimeout("slow")]
)
async def test_a_failed_flush_is_retried_on_the_next(
    clock: FakeClock, failure: int | Exception, caplog: pytest.LogCaptureFixture
) -> None:
    broker = UsageBroker(failure)
    reporter, http = await make(broker, clock, max_batch=2)
    for n in range(3):
        reporter.report(credential(f"jti-{n}"), "GET /", 200)
    with caplog.at_level(logging.DEBUG):
        assert await reporter.flush() is False
    assert reporter.pending == 3 and reporter.sent == 0
    reporter.report(credential("jti-3"), "GET /", 200)
    assert await reporter.flush() is True
    delivered = [u["jti"] for b in broker.batches for u in b]
    assert delivered[-4:] == ["jti-0", "jti-1", "jti-2", "jti-3"]
    assert reporter.sent == 4 and reporter.pending == 0
    assert SECRET not in caplog.text and "crm-api:" not in caplog.text
    await reporter.aclose()
    await http.aclose()


async def test_a_refused_batch_is_dropped_and_counted(clock: FakeClock) -> None:
    broker = UsageBroker(400)
    reporter, http = await make(broker, clock)
    reporter.report(credential(), "GET /", 200)
    assert await reporter.flush() is True
    assert reporter.dropped == 1 and reporter.pending == 0
    await reporter.aclose()
    await http.aclose()


async def test_aclose_flushes_what_is_left(clock: FakeClock) -> None:
    broker = UsageBroker()
    reporter, http = await make(broker, clock, flush_interval=3600)
    await reporter.start()
    reporter.report(credential(), "GET /", 200)
    await reporter.aclose()
    assert reporter.sent == 1 and len(broker.batches) == 1
    await http.aclose()


def test_bad_options_are_refused() -> None:
    for options in ({"flush_interval": 0}, {"max_batch": 501}, {"max_batch": 0}, {"max_queue": 0}):
        with pytest.raises(ValueError):
            UsageReporter(BROKER, "a", "b", **options)  # type: ignore[arg-type]


# --- the middleware reports what it let through ------------------------------------------


class RawApp:
    """A plain ASGI app without a router: the raw path is the operation."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/boom":
            raise RuntimeError("boom")
        status = 201 if scope["method"] == "POST" else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


@pytest.fixture
async def guarded(
    verifier: DeputyVerifier, clock: FakeClock
) -> AsyncIterator[tuple[httpx.AsyncClient, UsageReporter, UsageBroker]]:
    broker = UsageBroker()
    reporter, http = await make(broker, clock)
    app = DeputyAuthMiddleware(RawApp(), verifier, usage=reporter)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        yield client, reporter, broker
    await reporter.aclose()
    await http.aclose()


async def test_the_middleware_reports_each_request_it_let_through(
    guarded: tuple[httpx.AsyncClient, UsageReporter, UsageBroker], broker: LocalBroker
) -> None:
    client, reporter, usage = guarded
    token = broker.mint()
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/accounts/7", headers=bearer)).status_code == 200
    assert (await client.post("/notes", headers=bearer)).status_code == 201
    assert (await client.get("/boom", headers=bearer)).status_code == 500
    assert (await client.get("/accounts/7")).status_code == 401
    await reporter.flush()
    [batch] = usage.batches
    assert [(u["operation"], u["outcome"]) for u in batch] == [
        ("GET /accounts/7", 200),
        ("POST /notes", 201),
        ("GET /boom", 500),
    ]
