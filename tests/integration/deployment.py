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
from deputy.devtools import LocalIdp, SvidSigner, TokenSigner
from deputy.devtools.broker_thread import BrokerThread

EXAMPLE = Path(__file__).parents[2] / "examples" / "deputy.yaml"
SUPPORT = "/agents/support/triage"
K8S_ISSUER = "https://k8s.example/cluster-1"
ESCALATION = "system:serviceaccount:support:escalation"


@dataclass
class Deployment:
    """Everything a test needs to talk to a broker as agents and users would."""

    directory: Path
    config_path: Path
    settings: Settings
    idp: LocalIdp
    svids: SvidSigner
    k8s: TokenSigner

    def svid(self, path: str = SUPPORT, **kw: Any) -> str:
        return self.svids.jwt_svid(path, **kw)

    def k8s_token(self, sub: str = ESCALATION, lifetime: int = 600) -> str:
        now = int(self.k8s.clock.now())
        return self.k8s.sign(
            {"iss": K8S_ISSUER, "sub": sub, "aud": "deputy", "iat": now, "exp": now + lifetime}
        )


def write_deployment(
    directory: Path,
    mutate: Callable[[dict[str, Any]], None] | None = None,
    clock: Clock | None = None,
) -> Deployment:
    document = yaml.safe_load(EXAMPLE.read_text())
    if mutate:
        mutate(document)
    config = directory / "deputy.yaml"
    config.write_text(yaml.safe_dump(document))
    clock = clock or SystemClock()
    idp = LocalIdp(clock, "https://login.example.com", "support-portal", "plan")
    svids = SvidSigner(clock, "prod.example")
    k8s = TokenSigner(clock)
    idp.write_jwks(directory / "trust/login.jwks.json")
    svids.write_jwks(directory / "trust/prod.example.jwks.json")
    k8s.write_jwks(directory / "trust/k8s.jwks.json")
    return Deployment(directory, config, load_settings(config), idp, svids, k8s)


@contextmanager
def running(
    deployment: Deployment, clock: Clock | None = None
) -> Iterator[tuple[BrokerThread, httpx.Client]]:
    with (
        BrokerThread(deployment.settings, clock) as broker,
        httpx.Client(base_url=broker.url, timeout=30) as client,
    ):
        yield broker, client
