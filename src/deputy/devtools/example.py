"""The example deployment's identities: a user IdP, a SPIFFE signer and a Kubernetes issuer.

Keys are made at run time; only their public JWKS are written, where the example config
(``examples/deputy.yaml``) expects them under ``trust/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from deputy.clock import Clock
from deputy.devtools.signer import LocalIdp, SvidSigner, TokenSigner

K8S_ISSUER = "https://k8s.example/cluster-1"


def example_config() -> str:
    """The text of ``examples/deputy.yaml`` (shipped in the package)."""
    return resources.files("deputy.devtools").joinpath("example.yaml").read_text()


@dataclass(frozen=True)
class ExampleIdentities:
    """Signers for every issuer the example config trusts."""

    idp: LocalIdp
    svids: SvidSigner
    k8s: TokenSigner

    def k8s_token(self, sub: str, lifetime: int = 600, pod: str | None = None) -> str:
        """A Kubernetes-style projected service-account token for ``sub`` (and its pod)."""
        now = int(self.k8s.clock.now())
        claims: dict[str, Any] = {
            "iss": K8S_ISSUER,
            "sub": sub,
            "aud": "deputy",
            "iat": now,
            "exp": now + lifetime,
        }
        if pod is not None:
            claims["kubernetes.io"] = {"namespace": "support", "pod": {"name": pod}}
        return self.k8s.sign(claims)


def write_example_trust(directory: Path, clock: Clock) -> ExampleIdentities:
    """Make the signers and write their public keys to ``directory/trust``."""
    identities = ExampleIdentities(
        idp=LocalIdp(clock, "https://login.example.com", "support-portal", "plan"),
        svids=SvidSigner(clock, "prod.example"),
        k8s=TokenSigner(clock),
    )
    identities.idp.write_jwks(directory / "trust/login.jwks.json")
    identities.svids.write_jwks(directory / "trust/prod.example.jwks.json")
    identities.k8s.write_jwks(directory / "trust/k8s.jwks.json")
    return identities
