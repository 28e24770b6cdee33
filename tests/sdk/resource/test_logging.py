"""DeputyLogFilter: the API's own log lines say for whom, by which agent, in which execution."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator

import httpx
import pytest

from deputy.sdk.resource import DeputyAuthMiddleware, DeputyLogFilter, DeputyVerifier
from deputy.sdk.resource.asgi import Receive, Scope, Send
from deputy.sdk.resource.logging import bound_credential, current_credential

from .local import RESEARCH, LocalBroker

FORMAT = "%(message)s user=%(deputy_user)s agent=%(deputy_agent)s exe=%(deputy_execution)s " + (
    "jti=%(deputy_jti)s"
)


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(DeputyLogFilter())
    logger = logging.getLogger("crm")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


async def crm_app(scope: Scope, receive: Receive, send: Send) -> None:
    logging.getLogger("crm").info("read account %s", scope["path"].rsplit("/", 1)[-1])
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def test_records_of_a_request_carry_its_credential(
    broker: LocalBroker, verifier: DeputyVerifier, lines: io.StringIO
) -> None:
    guarded = DeputyAuthMiddleware(crm_app, verifier)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=guarded), base_url="http://api.test"
    ) as http:
        token = broker.mint()
        response = await http.get("/accounts/42", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 204
    logging.getLogger("crm").info("after the request")
    assert lines.getvalue().splitlines() == [
        f"read account 42 user=alice agent={RESEARCH} exe=exe_1 jti=jti-child",
        "after the request user=- agent=- exe=- jti=-",
    ]
    assert token not in lines.getvalue()


async def test_concurrent_requests_do_not_mix(
    broker: LocalBroker, verifier: DeputyVerifier, lines: io.StringIO
) -> None:
    credentials = [
        await verifier.verify(broker.mint(broker.claims(sub=f"user-{i}", jti=f"j{i}")))
        for i in range(20)
    ]

    bound: list[int] = []
    everyone_bound = asyncio.Event()

    async def request(i: int) -> None:
        with bound_credential(credentials[i]):
            bound.append(i)
            if len(bound) == len(credentials):
                everyone_bound.set()
            await everyone_bound.wait()  # all twenty requests are in flight at once
            logging.getLogger("crm").info("request %d", i)

    await asyncio.gather(*(request(i) for i in range(20)))
    assert len(lines.getvalue().splitlines()) == 20
    for line in lines.getvalue().splitlines():
        number = line.split()[1]
        assert f"user=user-{number} " in line and f"jti=j{number}" in line


async def test_explicit_fields_win_and_missing_is_configurable(
    broker: LocalBroker, verifier: DeputyVerifier
) -> None:
    credential = await verifier.verify(broker.mint(broker.claims(execution_id=None)))
    record = logging.LogRecord("crm", logging.INFO, __file__, 1, "m", None, None)
    record.deputy_user = "explicit"
    with bound_credential(credential):
        assert current_credential() is credential
        assert DeputyLogFilter(missing="n/a").filter(record)
    fields = {k: v for k, v in vars(record).items() if k.startswith("deputy_")}
    assert fields == {
        "deputy_user": "explicit",
        "deputy_agent": RESEARCH,
        "deputy_execution": "n/a",
        "deputy_jti": "jti-child",
    }
    assert current_credential() is None
