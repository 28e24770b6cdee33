"""The revocation feed: matching on the cold and warm paths, ETag revalidation, fail closed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from deputy.audit.revocation import CredentialFacts
from deputy.clock import FakeClock
from deputy.sdk.errors import BrokerUnavailable, CredentialRejected
from deputy.sdk.resource import DeputyVerifier

from .local import FEED_PATH, ISSUER, METADATA_PATH, RESEARCH, SUPPORT, LocalBroker


async def refused(verifier: DeputyVerifier, token: str, reason: str, status: int = 401) -> None:
    with pytest.raises(CredentialRejected) as caught:
        await verifier.verify(token)
    assert caught.value.status == status
    assert reason in caught.value.description


async def settle() -> None:
    """Let background refreshes started by the last call finish (no waiting on time)."""
    refreshes = [
        t
        for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__qualname__", "").endswith("_refresh_quietly")
    ]
    await asyncio.gather(*refreshes)


REVOKED = "the credential has been revoked"


@pytest.mark.parametrize(
    ("selector", "value"),
    [
        ("jti", "jti-child"),
        ("jti", "jti-parent"),  # an ancestor in delegated_from
        ("execution_id", "exe_1"),
        ("agent_instance", RESEARCH),
        ("user_id", "alice"),
        ("workload_id", RESEARCH),  # client_id
        ("workload_id", SUPPORT),  # further up the act chain
    ],
)
@pytest.mark.parametrize("path", ["cold", "warm"])
async def test_a_revocation_refuses_the_credential_on_either_path(
    broker: LocalBroker, verifier: DeputyVerifier, selector: str, value: str, path: str
) -> None:
    token = broker.mint()
    if path == "warm":
        assert await verifier.verify(token)
        assert await verifier.verify(token)
    broker.revoke(selector, value)
    await verifier.refresh()
    await refused(verifier, token, REVOKED)
    await refused(verifier, token, REVOKED)  # and again: the cached entry stays refused


@pytest.mark.parametrize("selector", ["execution_id", "agent_instance", "user_id", "workload_id"])
async def test_other_selectors_reach_only_what_was_issued_up_to_the_cut_off(
    broker: LocalBroker, verifier: DeputyVerifier, clock: FakeClock, selector: str
) -> None:
    value = {"execution_id": "exe_1", "user_id": "alice"}.get(selector, RESEARCH)
    before = broker.mint()
    broker.revoke(selector, value, issued_before=clock.now())
    clock.advance(1)
    after = broker.mint(broker.claims(jti="jti-later"))
    await verifier.refresh()
    await refused(verifier, before, REVOKED)
    assert (await verifier.verify(after)).jti == "jti-later"


async def test_a_revoked_jti_reaches_descendants_whenever_issued(
    broker: LocalBroker, verifier: DeputyVerifier, clock: FakeClock
) -> None:
    broker.revoke("jti", "jti-parent", issued_before=clock.now() - 100)
    clock.advance(5)
    await refused(verifier, broker.mint(), REVOKED)


async def test_entries_that_expired_are_dropped(
    broker: LocalBroker, verifier: DeputyVerifier, clock: FakeClock
) -> None:
    broker.revocations.append(
        {"jti": "jti-child", "issued_before": int(clock.now()), "expires_at": int(clock.now())}
    )
    assert await verifier.verify(broker.mint())


async def test_the_feed_is_revalidated_with_its_etag(
    broker: LocalBroker, verifier: DeputyVerifier
) -> None:
    broker.revoke("jti", "someone-else")
    await verifier.refresh()
    await verifier.refresh()
    feed = [r for r in broker.requests if r.url.path == FEED_PATH]
    assert "if-none-match" not in feed[0].headers
    assert feed[1].headers["if-none-match"].startswith('"')
    token = broker.mint()
    assert await verifier.verify(token)
    broker.revoke("execution_id", "exe_1")
    await verifier.refresh()  # the ETag changed: a full document, then the new list applies
    await refused(verifier, token, REVOKED)
    assert broker.count(METADATA_PATH) == 1


async def test_a_304_confirms_the_list_it_holds(
    broker: LocalBroker, verifier: DeputyVerifier, clock: FakeClock
) -> None:
    token = broker.mint(broker.claims(exp=int(clock.now()) + 600))
    assert await verifier.verify(token)
    for _ in range(20):  # 100 s of 304s: never stale
        clock.advance(5)
        await verifier.refresh()
        assert await verifier.verify(token)
    assert broker.count(FEED_PATH) == 21
    assert verifier.revocations_confirmed_at == clock.now()


async def test_verify_refreshes_in_the_background_every_interval(
    broker: LocalBroker, verifier: DeputyVerifier, clock: FakeClock
) -> None:
    token = broker.mint()
    assert await verifier.verify(token)
    assert broker.count(FEED_PATH) == 1
    clock.advance(4.9)
    assert await verifier.verify(token)
    await settle()
    assert broker.count(FEED_PATH) == 1
    clock.advance(0.1)
    broker.revoke("jti", "jti-child")
    assert await verifier.verify(token)  # answered from the list in hand, refresh started
    await settle()
    assert broker.count(FEED_PATH) == 2
    await refused(verifier, token, REVOKED)


async def test_without_the_feed_for_longer_than_max_staleness_verification_fails_closed(
    broker: LocalBroker, verifier: DeputyVerifier, clock: FakeClock
) -> None:
    token = broker.mint(broker.claims(exp=int(clock.now()) + 600))
    assert await verifier.verify(token)
    broker.status[FEED_PATH] = 503
    for _ in range(12):  # 60 s of failed refreshes: the last confirmed list still serves
        clock.advance(5)
        assert await verifier.verify(token)
        await settle()
    clock.advance(1)
    await refused(
        verifier, token, "revocation list cannot be confirmed", status=503
    )  # also on the warm path
    fresh = broker.mint(broker.claims(jti="new", exp=int(clock.now()) + 600))
    await refused(verifier, fresh, "revocation list cannot be confirmed", status=503)
    failures = broker.count(FEED_PATH)
    await refused(verifier, fresh, "cannot be confirmed", status=503)
    assert broker.count(FEED_PATH) == failures  # no fetch per request while it is down
    del broker.status[FEED_PATH]
    clock.advance(5)
    assert (await verifier.verify(fresh)).jti == "new"


async def test_a_broker_never_reached_refuses_with_503(
    broker: LocalBroker, verifier: DeputyVerifier
) -> None:
    broker.status[METADATA_PATH] = 500
    with pytest.raises(CredentialRejected) as caught:
        await verifier.verify(broker.mint())
    assert (caught.value.error, caught.value.status) == ("temporarily_unavailable", 503)
    with pytest.raises(BrokerUnavailable, match="answered HTTP 500"):
        await verifier.refresh()


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ({"issuer": "https://other.example", "revocations": []}, "issuer does not match"),
        ({"issuer": ISSUER}, "revocations is not a list"),
        ({"issuer": ISSUER, "revocations": {}}, "revocations is not a list"),
        ({"issuer": ISSUER, "revocations": ["jti"]}, "revocation 0 is not an object"),
        (
            {"issuer": ISSUER, "revocations": [{"tool": "x", "issued_before": 1, "expires_at": 2}]},
            "does not name one known selector",
        ),
        (
            {
                "issuer": ISSUER,
                "revocations": [{"jti": "a", "user_id": "b", "issued_before": 1, "expires_at": 2}],
            },
            "does not name one known selector",
        ),
        (
            {"issuer": ISSUER, "revocations": [{"jti": 1, "issued_before": 1, "expires_at": 2}]},
            "has no valid jti",
        ),
        (
            {
                "issuer": ISSUER,
                "revocations": [{"jti": "a", "issued_before": "1", "expires_at": 2}],
            },
            "no integer issued_before",
        ),
        (
            {
                "issuer": ISSUER,
                "revocations": [{"jti": "a", "issued_before": 1, "expires_at": True}],
            },
            "no integer expires_at",
        ),
    ],
)
async def test_a_feed_that_cannot_be_read_entirely_is_refused_and_the_last_list_kept(
    broker: LocalBroker, verifier: DeputyVerifier, document: dict[str, Any], reason: str
) -> None:
    token = broker.mint()
    broker.revoke("jti", "jti-child")
    await verifier.refresh()
    broker.feed_document = document
    with pytest.raises(BrokerUnavailable, match=reason):
        await verifier.refresh()
    await refused(verifier, token, REVOKED)


async def test_extra_members_of_an_entry_are_ignored(
    broker: LocalBroker, verifier: DeputyVerifier, clock: FakeClock
) -> None:
    now = int(clock.now())
    broker.feed_document = {
        "issuer": ISSUER,
        "revocations": [{"jti": "jti-child", "issued_before": now, "expires_at": now + 9, "n": 1}],
    }
    await refused(verifier, broker.mint(), REVOKED)


async def test_the_facts_matched_are_those_the_broker_reads(
    broker: LocalBroker, verifier: DeputyVerifier
) -> None:
    for claims in (
        broker.claims(),
        broker.claims(act=None, delegated_from=None, execution_id=None, agent_instance=None),
        broker.claims(client_id=SUPPORT, act={"sub": SUPPORT}, delegated_from=[], iat=1.5),
        broker.claims(act={"sub": "x", "act": {"sub": RESEARCH}}),
    ):
        _, facts = verifier._credential({k: v for k, v in claims.items() if v is not None})
        expected = CredentialFacts.from_claims({k: v for k, v in claims.items() if v is not None})
        assert facts == expected
