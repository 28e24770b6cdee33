"""Replicas of one deployment behind nginx, and issuances as their clients see them."""

from __future__ import annotations

import secrets
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt

from deputy.audit.log import AuditFilter
from deputy.devtools.balancer import Balancer
from deputy.devtools.broker_process import BrokerProcess
from deputy.devtools.signer import LocalIdp
from deputy.store.audit_store import open_reader
from tests.integration.deployment import Deployment
from tests.integration.oauth_client import CRM, exchange

REPLICAS = 3


@contextmanager
def replicas_behind_nginx(
    d: Deployment, directory: Path, replicas: int = REPLICAS
) -> Iterator[tuple[list[BrokerProcess], str]]:
    """Brokers on ``d``'s config, nginx round-robin over them; the balancer's URL."""
    started: list[BrokerProcess] = []
    balancer: Balancer | None = None
    try:
        # One after another: the first creates the shared signing keys.
        for n in range(replicas):
            log = directory / f"replica-{n}.log"
            started.append(BrokerProcess(d.config_path, log=log).start())
        balancer = Balancer(directory / "nginx", [r.port for r in started])
        yield started, balancer.url
    finally:
        if balancer is not None:
            balancer.stop()
        for replica in started:
            try:
                replica.stop(timeout=30)
            except subprocess.TimeoutExpired:
                replica.kill()


@dataclass(frozen=True)
class Answer:
    """One token exchange as the client saw it."""

    sent: float  # time.monotonic() when the request left
    took: float
    status: int
    body: dict[str, Any]
    retry_after: str | None


def issue(d: Deployment, client: httpx.Client, idp: LocalIdp | None = None) -> Answer:
    """The support agent exchanges a token of a new user of ``idp`` (``d``'s IdP by default)
    for a CRM credential: a new user each time, so no daily limit is ever near."""
    token = (idp or d.idp).user_token(f"user-{secrets.token_hex(6)}", "pro")
    sent = time.monotonic()
    response = exchange(client, subject=token, actor=d.svid(), resource=CRM)
    took = time.monotonic() - sent
    try:
        body = response.json()
    except ValueError:
        body = {"unparsed": response.text}
    return Answer(sent, took, response.status_code, body, response.headers.get("retry-after"))


def issue_at(d: Deployment, url: str, idp: LocalIdp | None = None) -> Answer:
    """One exchange at ``url`` (a replica itself, or the balancer)."""
    with httpx.Client(base_url=url, timeout=60) as client:
        return issue(d, client, idp)


def assert_unavailable(answer: Answer) -> None:
    """503 ``temporarily_unavailable`` with a Retry-After, and nothing issued."""
    assert answer.status == 503, answer
    assert answer.body.get("error") == "temporarily_unavailable", answer
    assert answer.retry_after is not None and int(answer.retry_after) >= 1, answer
    assert "access_token" not in answer.body


def jti_of(token: str) -> str:
    return str(pyjwt.decode(token, options={"verify_signature": False})["jti"])


def verified_records(d: Deployment) -> list[dict[str, Any]]:
    """Every audit record, once the chains have verified."""
    reader = open_reader(d.settings)
    try:
        report = reader.verify()
        assert report.ok, report
        return [stored.record for stored in reader.query(AuditFilter(limit=100_000))]
    finally:
        reader.close()


def credential_ids(records: list[dict[str, Any]]) -> Counter[str]:
    """How many allow records name each credential id."""
    return Counter(
        c["jti"]
        for record in records
        if record["outcome"] == "allow"
        for c in record["credentials"]
    )
