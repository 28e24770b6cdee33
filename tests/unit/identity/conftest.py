"""Fixtures: a fake clock and verifiers wired to fake key sources."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from deputy.clock import FakeClock
from deputy.identity import (
    JwksCache,
    OidcWorkloadTrust,
    SpiffeTrust,
    UserIssuerTrust,
    UserVerifier,
    WorkloadVerifier,
)

from .tokens import (
    AUDIENCE,
    DEPUTY_ISSUER,
    K8S_ISSUER,
    NOW,
    TRUST_DOMAIN,
    USER_ISSUER,
    FakeKeySource,
    ec_key,
    key_set,
    rsa_key,
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@dataclass
class Verifiers:
    workload: WorkloadVerifier
    user: UserVerifier
    spiffe_source: FakeKeySource
    oidc_source: FakeKeySource
    user_source: FakeKeySource


@pytest.fixture
def verifiers(clock: FakeClock) -> Verifiers:
    """SPIFFE trust domain prod.example (EC "k1"), a Kubernetes issuer (RSA "r1"), one IdP."""
    spiffe_source = FakeKeySource(key_set(("k1", ec_key("svid")), ("k2", ec_key("svid-next"))))
    oidc_source = FakeKeySource(key_set(("r1", rsa_key("k8s"))))
    user_source = FakeKeySource(key_set(("u1", rsa_key("idp")), ("u2", ec_key("idp"))))
    workload = WorkloadVerifier(
        [SpiffeTrust(TRUST_DOMAIN, AUDIENCE, JwksCache(spiffe_source, clock))],
        [OidcWorkloadTrust(K8S_ISSUER, AUDIENCE, JwksCache(oidc_source, clock))],
        clock,
        reject_issuers=frozenset({DEPUTY_ISSUER}),
    )
    user = UserVerifier(
        [UserIssuerTrust(USER_ISSUER, AUDIENCE, JwksCache(user_source, clock), tier_claim="tier")],
        clock,
        reject_issuers=frozenset({DEPUTY_ISSUER}),
    )
    return Verifiers(workload, user, spiffe_source, oidc_source, user_source)
