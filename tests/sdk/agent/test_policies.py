"""When credentials fall due, how retries wait, and what a credential shows of itself."""

from __future__ import annotations

import pytest

from deputy.sdk.agent import Credential, RenewalPolicy, RetryPolicy


def credential(lifetime: float, issued_at: float = 1000.0) -> Credential:
    return Credential(
        tool="customer_data_api",
        access_token="eyJ.secret.sig",
        scope="accounts:read accounts:write",
        audience="https://crm.internal",
        issued_at=issued_at,
        expires_at=issued_at + lifetime,
        execution_id="exe_1",
        decision_id="dec_1",
    )


@pytest.mark.parametrize(
    ("lifetime", "margin"),
    [(300, 30), (3600, 360), (120, 30), (40, 20), (20, 10)],
)
def test_due_at_30_seconds_or_a_tenth_never_before_half(lifetime: int, margin: float) -> None:
    policy = RenewalPolicy()
    held = credential(lifetime)
    assert policy.margin(held) == margin
    assert not policy.due(held, held.expires_at - margin - 0.001)
    assert policy.due(held, held.expires_at - margin)


def test_policies_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        RenewalPolicy(fraction=1.0)
    with pytest.raises(ValueError):
        RenewalPolicy(before_expiry=-1)
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(max_total_wait=-1)


def test_retry_policy_is_bounded_by_default() -> None:
    policy = RetryPolicy(jitter=0.0)
    assert policy.max_attempts == 3 and policy.max_total_wait == 10.0
    assert policy.delay(1, None, 0.0) == 0.5 and policy.delay(2, None, 0.5) == 1.0
    assert policy.delay(3, None, 1.5) is None  # the last attempt
    assert policy.delay(1, 11.0, 0.0) is None  # beyond the budget
    assert policy.delay(1, 4.0, 7.0) is None and policy.delay(1, 3.0, 7.0) == 3.0


def test_credential_shows_no_token() -> None:
    held = credential(300)
    assert "eyJ" not in repr(held) and "eyJ" not in str(held)
    assert held.scopes == ("accounts:read", "accounts:write")
    assert held.lifetime == 300 and held.expires_in(1200.0) == 100 and held.expires_in(2e3) == 0
