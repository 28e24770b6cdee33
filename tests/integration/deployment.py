"""A real broker on loopback with run-time keys: config, trust files and token signers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from deputy.clock import Clock, SystemClock
from deputy.config import Settings, load_settings
from deputy.devtools.broker_thread import BrokerThread
from deputy.devtools.example import ExampleIdentities, example_config, write_example_trust
from deputy.devtools.signer import LocalIdp, SvidSigner
from tests.backends import place

SUPPORT = "/agents/support/triage"
ESCALATION = "system:serviceaccount:support:escalation"


@dataclass
class Deployment:
    """Everything a test needs to talk to a broker as agents and users would."""

    directory: Path
    config_path: Path
    settings: Settings
    identities: ExampleIdentities

    @property
    def idp(self) -> LocalIdp:
        return self.identities.idp

    @property
    def svids(self) -> SvidSigner:
        return self.identities.svids

    def svid(self, path: str = SUPPORT, **kw: Any) -> str:
        return self.svids.jwt_svid(path, **kw)

    def k8s_token(self, sub: str = ESCALATION, lifetime: int = 600, pod: str | None = None) -> str:
        return self.identities.k8s_token(sub, lifetime, pod)


def write_deployment(
    directory: Path,
    mutate: Callable[[dict[str, Any]], None] | None = None,
    clock: Clock | None = None,
) -> Deployment:
    """The example config (changed by ``mutate``) with trust files for run-time keys, on the
    suite's backend (``tests/conftest.py``: SQLite, or PostgreSQL and Redis)."""
    document = yaml.safe_load(example_config())
    if mutate:
        mutate(document)
    place(directory, document)
    config = directory / "deputy.yaml"
    config.write_text(yaml.safe_dump(document))
    identities = write_example_trust(directory, clock or SystemClock())
    return Deployment(directory, config, load_settings(config), identities)


@contextmanager
def running(
    deployment: Deployment, clock: Clock | None = None
) -> Iterator[tuple[BrokerThread, httpx.Client]]:
    with (
        BrokerThread(deployment.settings, clock) as broker,
        httpx.Client(base_url=broker.url, timeout=30) as client,
    ):
        yield broker, client
