"""Finding the broker: RFC 8414 metadata at the issuer (or at base_url), checked strictly."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from deputy.clock import FakeClock
from deputy.sdk.errors import BrokerUnavailable, CredentialRejected
from deputy.sdk.resource import DeputyVerifier
from deputy.sdk.resource.discovery import Locator, metadata_url
from tests.unit.identity.tokens import DROP, rsa_key

from .local import AUDIENCE, FEED_PATH, ISSUER, JWKS_PATH, METADATA_PATH, LocalBroker


async def unavailable(verifier: DeputyVerifier, token: str, reason: str) -> None:
    with pytest.raises(BrokerUnavailable, match=reason):
        await verifier.refresh()
    with pytest.raises(CredentialRejected) as caught:
        await verifier.verify(token)
    assert (caught.value.error, caught.value.status) == ("temporarily_unavailable", 503)


async def test_metadata_is_read_once_at_the_issuer(
    broker: LocalBroker, verifier: DeputyVerifier, clock: FakeClock
) -> None:
    for i in range(3):
        assert await verifier.verify(broker.mint(broker.claims(jti=f"j{i}")))
        clock.advance(5)
        await verifier.refresh()
    assert [str(r.url) for r in broker.requests[:3]] == [
        ISSUER + METADATA_PATH,
        ISSUER + FEED_PATH,
        ISSUER + JWKS_PATH,
    ]
    assert broker.count(METADATA_PATH) == 1
    assert verifier.metadata is not None
    assert verifier.metadata.algorithms == {"ES256"}


async def test_base_url_is_where_the_broker_is_reached(broker: LocalBroker) -> None:
    client = broker.client()
    verifier = broker.verifier(http_client=client, base_url="http://127.0.0.1:8080/")
    try:
        assert await verifier.verify(broker.mint())
    finally:
        await verifier.aclose()
        await client.aclose()
    assert [str(r.url) for r in broker.requests] == [
        "http://127.0.0.1:8080" + METADATA_PATH,
        "http://127.0.0.1:8080" + FEED_PATH,
        "http://127.0.0.1:8080" + JWKS_PATH,
    ]


def test_the_metadata_url_follows_rfc_8414() -> None:
    assert metadata_url("https://deputy.example") == "https://deputy.example" + METADATA_PATH
    assert (
        metadata_url("https://example.com/tenant/1")
        == "https://example.com/.well-known/oauth-authorization-server/tenant/1"
    )
    located = Locator("https://deputy.example", "http://10.0.0.7:8080")
    assert located.metadata_url == "http://10.0.0.7:8080" + METADATA_PATH
    assert (
        located.locate("https://deputy.example/revocations") == "http://10.0.0.7:8080/revocations"
    )
    # Only URLs under the issuer move; the issuer's prefix must end at a path boundary.
    assert located.locate("https://keys.example/jwks") == "https://keys.example/jwks"
    with pytest.raises(BrokerUnavailable, match="not an https URL"):
        located.locate("https://deputy.example.evil/jwks".replace("https", "http"))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"issuer": "https://other.example"}, "issuer does not match"),
        ({"issuer": ISSUER + "/"}, "issuer does not match"),
        ({"issuer": DROP}, "issuer does not match"),
        ({"jwks_uri": DROP}, "jwks_uri is missing"),
        ({"jwks_uri": 1}, "jwks_uri is missing"),
        ({"revocation_feed_endpoint": DROP}, "revocation_feed_endpoint is missing"),
        ({"jwks_uri": "http://keys.example/jwks"}, "not an https URL"),
        ({"revocation_feed_endpoint": "ftp://deputy.example/r"}, "not an https URL"),
        ({"access_token_signing_alg_values_supported": ["HS256"]}, "none of the allowed"),
        ({"access_token_signing_alg_values_supported": []}, "none of the allowed"),
        ({"access_token_signing_alg_values_supported": "ES256"}, "not a list of strings"),
    ],
)
async def test_metadata_that_cannot_be_trusted_is_refused(
    broker: LocalBroker, verifier: DeputyVerifier, changes: dict[str, Any], reason: str
) -> None:
    broker.metadata_changes = changes
    await unavailable(verifier, broker.mint(), reason)
    assert broker.count(JWKS_PATH) == 0


async def test_the_allowed_algorithms_narrow_what_the_broker_announces(
    broker: LocalBroker,
) -> None:
    client = broker.client()
    verifier = broker.verifier(http_client=client, algorithms=["RS256"])
    try:
        await unavailable(verifier, broker.mint(), "none of the allowed")
    finally:
        await verifier.aclose()
    broker.metadata_changes = {"access_token_signing_alg_values_supported": ["ES256", "RS256"]}
    broker.keys["r1"] = rsa_key("broker-rsa")
    verifier = broker.verifier(http_client=client, algorithms=["ES256"])
    try:
        assert verifier.metadata is None
        with pytest.raises(CredentialRejected, match="'RS256' is not allowed"):
            await verifier.verify(broker.mint(kid="r1", alg="RS256"))
        assert verifier.metadata is not None
        assert verifier.metadata.algorithms == {"ES256"}
    finally:
        await verifier.aclose()
        await client.aclose()


async def test_without_announced_algorithms_the_allow_list_applies(
    broker: LocalBroker, verifier: DeputyVerifier
) -> None:
    broker.metadata_changes = {"access_token_signing_alg_values_supported": DROP}
    assert await verifier.verify(broker.mint())
    assert verifier.metadata is not None
    assert "ES256" in verifier.metadata.algorithms
    assert not {a for a in verifier.metadata.algorithms if a.startswith("HS")}


@pytest.mark.parametrize("status", [301, 302, 404, 500])
async def test_only_a_200_answer_is_used(
    broker: LocalBroker, verifier: DeputyVerifier, status: int
) -> None:
    broker.status[METADATA_PATH] = status
    await unavailable(verifier, broker.mint(), f"answered HTTP {status}")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[]", "is not a JSON object"),
        (b"<html>", "is not valid JSON"),
        (b'{"issuer":"a","issuer":"b"}', "duplicate member"),
        (b"{" + b" " * (1024 * 1024) + b"}", "larger than"),
    ],
)
async def test_a_metadata_body_that_is_not_one_json_object_is_refused(
    clock: FakeClock, body: bytes, reason: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        verifier = DeputyVerifier(ISSUER, AUDIENCE, http_client=client, clock=clock)
        with pytest.raises(BrokerUnavailable, match=reason):
            await verifier.refresh()
        await verifier.aclose()


async def test_an_unreachable_broker_is_unavailable(clock: FakeClock) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        verifier = DeputyVerifier(ISSUER, AUDIENCE, http_client=client, clock=clock)
        with pytest.raises(BrokerUnavailable, match="ConnectError"):
            await verifier.refresh()
        await verifier.aclose()


async def test_a_jwks_that_cannot_be_fetched_fails_closed(
    broker: LocalBroker, verifier: DeputyVerifier
) -> None:
    broker.status[JWKS_PATH] = 500
    with pytest.raises(CredentialRejected) as caught:
        await verifier.verify(broker.mint())
    assert (caught.value.error, caught.value.status) == ("temporarily_unavailable", 503)
    assert caught.value.description == "the broker's signing keys are unavailable"


async def test_start_fetches_everything_and_close_stops(broker: LocalBroker) -> None:
    client = broker.client()
    async with broker.verifier(http_client=client) as verifier:
        assert broker.count(METADATA_PATH) == 1
        assert broker.count(FEED_PATH) == 1
        assert broker.count(JWKS_PATH) == 1
        await verifier.start()  # once only
        assert broker.count(FEED_PATH) == 1
        assert await verifier.verify(broker.mint())
        assert len(broker.requests) == 3
    assert not client.is_closed  # a client passed in belongs to the caller
    await client.aclose()


async def test_start_with_the_broker_down_is_no_error(broker: LocalBroker) -> None:
    broker.status[METADATA_PATH] = 503
    client = broker.client()
    async with broker.verifier(http_client=client) as verifier:
        with pytest.raises(CredentialRejected) as caught:
            await verifier.verify(broker.mint())
        assert caught.value.status == 503
    await client.aclose()


async def test_an_own_client_is_closed_with_the_verifier() -> None:
    verifier = DeputyVerifier(ISSUER, AUDIENCE)
    assert repr(verifier) == f"DeputyVerifier(issuer={ISSUER!r}, audience={AUDIENCE!r})"
    await verifier.aclose()
    assert verifier._client.is_closed
