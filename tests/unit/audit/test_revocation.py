"""Revocations: selectors, cut-offs, expiry and merging in ``RevocationList``."""

from __future__ import annotations

from typing import Any

import pytest

from deputy.audit.revocation import SELECTORS, CredentialFacts, Revocation, RevocationList

ISSUED = 1_000
CUTOFF = 1_000
EXPIRES = 2_000
AGENT = "spiffe://ex/agents/triage"
SUB_AGENT = "spiffe://ex/agents/sub/lookup"
DEEP_AGENT = "spiffe://ex/agents/sub/deep"


def claims(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "jti": "jti-1",
        "iat": ISSUED,
        "execution_id": "exec-1",
        "agent_instance": "inst-1",
        "sub": "alice",
        "client_id": SUB_AGENT,
        "act": {"sub": AGENT},
    }
    base.update(extra)
    return base


def facts(**extra: Any) -> CredentialFacts:
    return CredentialFacts.from_claims(claims(**extra))


def listing(*revocations: Revocation) -> RevocationList:
    rl = RevocationList()
    rl.add(revocations)
    return rl


# --- CredentialFacts -----------------------------------------------------------------------


def test_facts_from_claims() -> None:
    f = CredentialFacts.from_claims(
        claims(act={"sub": AGENT, "act": {"sub": DEEP_AGENT}}, client_id=SUB_AGENT)
    )
    assert f == CredentialFacts(
        jti="jti-1",
        issued_at=ISSUED,
        execution_id="exec-1",
        agent_instance="inst-1",
        actors=(SUB_AGENT, AGENT, DEEP_AGENT),
        user_id="alice",
    )


def test_facts_client_id_already_in_act_chain_is_listed_once() -> None:
    assert facts(client_id=AGENT, act={"sub": AGENT}).actors == (AGENT,)


def test_facts_missing_or_non_text_claims() -> None:
    f = CredentialFacts.from_claims({"jti": 7, "iat": "soon", "sub": None, "client_id": 3})
    assert f == CredentialFacts(
        jti="", issued_at=0, execution_id=None, agent_instance=None, actors=(), user_id=None
    )


def test_facts_float_iat_is_truncated() -> None:
    assert facts(iat=1_000.9).issued_at == 1_000


# --- each selector -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "value"),
    [
        ("jti", "jti-1"),
        ("execution_id", "exec-1"),
        ("agent_instance", "inst-1"),
        ("user_id", "alice"),
        ("workload_id", SUB_AGENT),  # via client_id
        ("workload_id", AGENT),  # via act.sub
    ],
    ids=["jti", "execution_id", "agent_instance", "user_id", "workload-client_id", "workload-act"],
)
def test_each_selector_covers_its_credential(selector: str, value: str) -> None:
    r = Revocation(selector, value, CUTOFF, EXPIRES, id=1)
    assert listing(r).covers(facts()) == r


@pytest.mark.parametrize(
    ("selector", "value"),
    [
        ("jti", "jti-2"),
        ("execution_id", "exec-2"),
        ("agent_instance", "inst-2"),
        ("user_id", "bob"),
        ("workload_id", "spiffe://ex/agents/other"),
        ("user_id", SUB_AGENT),  # a value only matches under its own selector
        ("jti", "alice"),
    ],
)
def test_other_values_do_not_cover(selector: str, value: str) -> None:
    assert listing(Revocation(selector, value, CUTOFF, EXPIRES, id=1)).covers(facts()) is None


def test_workload_id_matches_a_deeply_nested_actor() -> None:
    f = facts(act={"sub": AGENT, "act": {"sub": "spiffe://ex/a2", "act": {"sub": DEEP_AGENT}}})
    r = Revocation("workload_id", DEEP_AGENT, CUTOFF, EXPIRES, id=1)
    assert listing(r).covers(f) == r


def test_missing_optional_claims_are_not_matched() -> None:
    f = CredentialFacts.from_claims({"jti": "jti-1", "iat": ISSUED})
    rl = listing(Revocation("user_id", "alice", CUTOFF, EXPIRES, id=1))
    assert rl.covers(f) is None


# --- issued_before -------------------------------------------------------------------------


def test_credential_issued_after_cutoff_is_not_covered() -> None:
    rl = listing(Revocation("user_id", "alice", CUTOFF, EXPIRES, id=1))
    assert rl.covers(facts(iat=CUTOFF + 1)) is None


def test_a_revoked_jti_is_covered_whatever_its_iat() -> None:
    # A jti names one credential: a clock running ahead elsewhere must not let it escape.
    r = Revocation("jti", "jti-1", CUTOFF, EXPIRES, id=1)
    assert listing(r).covers(facts(iat=CUTOFF + 3600)) == r


def test_credentials_exchanged_from_a_revoked_one_are_covered() -> None:
    r = Revocation("jti", "parent", CUTOFF, EXPIRES, id=1)
    rl = listing(r)
    child = facts(jti="child", delegated_from=["parent"])
    grandchild = facts(jti="gc", iat=CUTOFF + 99, delegated_from=["child", "parent"])
    assert rl.covers(child) == r and rl.covers(grandchild) == r
    unrelated = facts(jti="x", delegated_from="parent")  # not a list: no ancestry
    assert unrelated.ancestors == () and rl.covers(unrelated) is None


def test_credential_issued_exactly_at_cutoff_is_covered() -> None:
    r = Revocation("jti", "jti-1", CUTOFF, EXPIRES, id=1)
    assert listing(r).covers(facts(iat=CUTOFF)) == r


def test_credential_issued_before_cutoff_is_covered() -> None:
    r = Revocation("user_id", "alice", CUTOFF, EXPIRES, id=1)
    assert listing(r).covers(facts(iat=CUTOFF - 500)) == r


def test_later_selector_still_checked_when_earlier_cutoff_misses() -> None:
    instance_kill = Revocation("agent_instance", "inst-1", CUTOFF - 1, EXPIRES, id=1)
    user_kill = Revocation("user_id", "alice", CUTOFF, EXPIRES, id=2)
    assert listing(instance_kill, user_kill).covers(facts(iat=CUTOFF)) == user_kill


# --- prune and entries ---------------------------------------------------------------------


def test_prune_drops_expired_entries() -> None:
    early = Revocation("jti", "a", CUTOFF, 1_500, id=1)
    late = Revocation("jti", "b", CUTOFF, 2_500, id=2)
    rl = listing(early, late)
    rl.prune(1_500)  # expires_at <= now is expired
    assert rl.entries(0) == [late]
    assert rl.covers(facts(jti="a")) is None
    assert rl.covers(facts(jti="b")) == late


def test_prune_keeps_entries_expiring_after_now() -> None:
    r = Revocation("jti", "a", CUTOFF, 1_500, id=1)
    rl = listing(r)
    rl.prune(1_499.9)
    assert rl.entries(0) == [r]


def test_entries_lists_only_unexpired_in_id_order() -> None:
    third = Revocation("user_id", "alice", CUTOFF, 3_000, id=3)
    first = Revocation("jti", "a", CUTOFF, 3_000, id=1)
    expired = Revocation("jti", "b", CUTOFF, 1_200, id=2)
    second = Revocation("workload_id", AGENT, CUTOFF, 3_000, id=2)
    rl = listing(third, expired, first, second)
    assert rl.entries(1_200) == [first, second, third]
    assert rl.entries(0) == [first, expired, second, third]
    assert rl.entries(3_000) == []


# --- merging -------------------------------------------------------------------------------


def test_later_cutoff_replaces_earlier_and_keeps_later_expiry() -> None:
    rl = listing(Revocation("user_id", "alice", 1_000, 5_000, id=1))
    rl.add([Revocation("user_id", "alice", 1_200, 4_000, id=2)])
    assert rl.entries(0) == [Revocation("user_id", "alice", 1_200, 5_000, id=2)]
    assert rl.covers(facts(iat=1_100)) == Revocation("user_id", "alice", 1_200, 5_000, id=2)


def test_later_cutoff_with_later_expiry_replaces_both() -> None:
    rl = listing(Revocation("user_id", "alice", 1_000, 2_000, id=1))
    rl.add([Revocation("user_id", "alice", 1_200, 4_000, id=2)])
    assert rl.entries(0) == [Revocation("user_id", "alice", 1_200, 4_000, id=2)]


def test_equal_cutoff_replaces_the_held_entry() -> None:
    rl = listing(Revocation("jti", "a", 1_000, 2_000, id=1))
    rl.add([Revocation("jti", "a", 1_000, 1_500, id=2)])
    assert rl.entries(0) == [Revocation("jti", "a", 1_000, 2_000, id=2)]


def test_earlier_cutoff_does_not_replace_a_later_one() -> None:
    rl = listing(Revocation("jti", "a", 1_200, 2_000, id=1))
    rl.add([Revocation("jti", "a", 1_000, 2_000, id=2)])
    assert rl.entries(0) == [Revocation("jti", "a", 1_200, 2_000, id=2)]
    assert rl.last_id == 2


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_merging_is_independent_of_arrival_order(order: tuple[int, int]) -> None:
    both = [Revocation("jti", "a", 1_200, 2_000, id=1), Revocation("jti", "a", 1_000, 3_000, id=2)]
    rl = listing(*(both[i] for i in order))
    assert rl.entries(0) == [Revocation("jti", "a", 1_200, 3_000, id=2)]


def test_same_value_under_different_selectors_is_kept_apart() -> None:
    a = Revocation("jti", "x", CUTOFF, EXPIRES, id=1)
    b = Revocation("agent_instance", "x", CUTOFF, EXPIRES, id=2)
    assert listing(a, b).entries(0) == [a, b]


# --- last_id -------------------------------------------------------------------------------


def test_last_id_tracks_the_max_id() -> None:
    rl = RevocationList()
    assert rl.last_id == 0
    rl.add([Revocation("jti", "a", CUTOFF, EXPIRES, id=5)])
    assert rl.last_id == 5
    rl.add([Revocation("jti", "b", CUTOFF, EXPIRES, id=3)])
    assert rl.last_id == 5
    rl.add([Revocation("jti", "c", CUTOFF, EXPIRES, id=9), Revocation("jti", "d", 1, 2, id=7)])
    assert rl.last_id == 9


def test_last_id_survives_prune() -> None:
    rl = listing(Revocation("jti", "a", CUTOFF, 1_500, id=4))
    rl.prune(10_000)
    assert rl.entries(0) == []
    assert rl.last_id == 4


# --- Revocation value ----------------------------------------------------------------------


def test_selectors() -> None:
    assert SELECTORS == ("jti", "execution_id", "agent_instance", "workload_id", "user_id")


@pytest.mark.parametrize("selector", ["sub", "client_id", "", "JTI"])
def test_unknown_selector_raises_value_error(selector: str) -> None:
    with pytest.raises(ValueError, match="selector must be one of jti, execution_id"):
        Revocation(selector, "x", CUTOFF, EXPIRES)


def test_as_dict_shape() -> None:
    r = Revocation("workload_id", AGENT, 1_234, 5_678, id=9)
    assert r.as_dict() == {"workload_id": AGENT, "issued_before": 1_234, "expires_at": 5_678}


def test_default_id_is_zero() -> None:
    assert Revocation("jti", "a", CUTOFF, EXPIRES).id == 0
