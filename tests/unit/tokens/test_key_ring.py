from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from deputy.clock import FakeClock
from deputy.ids import IdSource
from deputy.store.key_files import FileKeyStore
from deputy.tokens.key_ring import KeyRing
from deputy.tokens.mint import Attribution, Minter, TokenSigner

WHO = Attribution(
    "alice", ("spiffe://prod.example/agents/a",), "inst-1", "exe_1", "wf", "dec_1", "user_token"
)


def ring(tmp_path: Path, clock: FakeClock) -> KeyRing:
    r = KeyRing(FileKeyStore(tmp_path / "keys"), clock, "ES256")
    r.load()
    return r


def test_first_start_creates_one_private_key_0600(tmp_path: Path) -> None:
    r = ring(tmp_path, FakeClock())
    assert len(r.all_keys()) == 1
    files = sorted((tmp_path / "keys").iterdir())
    assert [f.name for f in files] == sorted([f"{r.active().kid}.pem", "keys.json"])
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert "d" not in r.jwks()["keys"][0]  # public only
    # a restart loads the same key
    assert ring(tmp_path, FakeClock()).active().kid == r.active().kid


def test_rotation_publishes_before_use_and_keeps_old_until_expiry(tmp_path: Path) -> None:
    clock = FakeClock()
    r = ring(tmp_path, clock)
    old = r.active().kid
    new = r.rotate(activate_after=60, max_token_lifetime=900)
    assert {k["kid"] for k in r.jwks()["keys"]} == {old, new.kid}
    assert r.active().kid == old  # published, not yet signing
    clock.advance(60)
    assert r.active().kid == new.kid
    clock.advance(899)
    assert {k["kid"] for k in r.jwks()["keys"]} == {old, new.kid}
    clock.advance(1)
    assert [k["kid"] for k in r.jwks()["keys"]] == [new.kid]


def test_a_key_no_longer_published_never_signs(tmp_path: Path) -> None:
    clock = FakeClock()
    r = ring(tmp_path, clock)
    store = FileKeyStore(tmp_path / "keys")
    [key] = store.load()
    store.save([replace(key, publish_until=clock.now() - 1)])
    assert r.refresh()
    with pytest.raises(LookupError, match="no active signing key"):
        r.active()


def test_running_ring_picks_up_rotation_by_another_process(tmp_path: Path) -> None:
    clock = FakeClock()
    serving = ring(tmp_path, clock)
    other = ring(tmp_path, clock)
    new = other.rotate(activate_after=0, max_token_lifetime=300)
    assert serving.refresh() is True
    assert serving.active().kid == new.kid
    assert serving.refresh() is False


def test_minted_token_is_rfc9068_and_verifies_with_jwks(tmp_path: Path) -> None:
    clock = FakeClock()
    r = ring(tmp_path, clock)
    draft = Minter("https://deputy.internal", IdSource(FakeClock())).draft(
        tool="crm",
        audience="https://crm.internal",
        scope="accounts:read",
        category="customer-data",
        who=WHO,
        issued_at=1000,
        expires_at=1300,
    )
    cred = draft.signed(TokenSigner(r).sign(draft.claims))
    token = jwt.decode(cred.token, KeySet.import_key_set(r.jwks()), algorithms=["ES256"])
    assert token.header == {"alg": "ES256", "typ": "at+jwt", "kid": r.active().kid}
    assert token.claims == {
        "iss": "https://deputy.internal",
        "sub": "alice",
        "aud": "https://crm.internal",
        "client_id": "spiffe://prod.example/agents/a",
        "iat": 1000,
        "exp": 1300,
        "jti": cred.draft.jti,
        "scope": "accounts:read",
        "act": {"sub": "spiffe://prod.example/agents/a"},
        "agent_instance": "inst-1",
        "execution_id": "exe_1",
        "workflow": "wf",
        "decision_id": "dec_1",
        "delegation": "user_token",
    }
    assert cred.token not in repr(cred)


def test_jtis_are_unique(tmp_path: Path) -> None:
    minter = Minter("https://deputy.internal", IdSource(FakeClock()))
    jtis = {
        minter.draft(
            tool="t", audience="a", scope="s", category="c", who=WHO, issued_at=0, expires_at=1
        ).jti
        for _ in range(200)
    }
    assert len(jtis) == 200


def test_signing_alg_that_no_stored_key_has_is_refused_until_rotation(tmp_path: Path) -> None:
    clock = FakeClock()
    ring(tmp_path, clock)  # an ES256 key
    es384 = KeyRing(FileKeyStore(tmp_path / "keys"), clock, "ES384")
    refused = "signing_alg is ES384 but the stored signing keys are ES256; run `deputy keys"
    with pytest.raises(ValueError, match=refused):
        es384.load()
    es384.load(require_configured_alg=False)
    new = es384.rotate(activate_after=0, max_token_lifetime=300)
    assert new.alg == "ES384"
    KeyRing(FileKeyStore(tmp_path / "keys"), clock, "ES384").load()


def test_public_only_store_never_holds_a_private_key(tmp_path: Path) -> None:
    clock = FakeClock()
    signing = ring(tmp_path, clock)
    signing.rotate(activate_after=0, max_token_lifetime=300)
    published = KeyRing(FileKeyStore(tmp_path / "keys", public_only=True), clock, "ES256")
    published.load()
    assert [k.kid for k in published.all_keys()] == [k.kid for k in signing.all_keys()]
    assert all(k.key.private_key is None for k in published.all_keys())
    assert published.jwks() == signing.jwks()
    with pytest.raises(PermissionError):
        published.rotate(activate_after=0, max_token_lifetime=300)


def test_a_rotation_from_a_stale_ring_keeps_the_key_another_added(tmp_path: Path) -> None:
    clock = FakeClock()
    first = ring(tmp_path, clock)
    stale = ring(tmp_path, clock)  # loaded before the other rotation
    second = first.rotate(activate_after=0, max_token_lifetime=300)
    third = stale.rotate(activate_after=0, max_token_lifetime=300)
    stored = {k.kid: k for k in FileKeyStore(tmp_path / "keys").load()}
    assert set(stored) == {first.all_keys()[0].kid, second.kid, third.kid}
    assert [kid for kid, k in stored.items() if k.retired_at is None] == [third.kid]
    assert stored[second.kid].publish_until == third.activates_at + 300
    assert {k.kid for k in stale.all_keys()} == set(stored)


def test_concurrent_rotations_and_first_keys_lose_nothing(tmp_path: Path) -> None:
    clock = FakeClock()
    starting = [KeyRing(FileKeyStore(tmp_path / "keys"), clock, "ES256") for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda r: r.load(), starting))
    [first] = FileKeyStore(tmp_path / "keys").load()
    assert {r.active().kid for r in starting} == {first.kid}

    def rotate(r: KeyRing) -> str:
        return r.rotate(activate_after=0, max_token_lifetime=300).kid

    with ThreadPoolExecutor(4) as pool:
        added = list(pool.map(rotate, starting * 3))
    stored = FileKeyStore(tmp_path / "keys").load()
    assert sorted(k.kid for k in stored) == sorted([first.kid, *added])
    assert len([k for k in stored if k.retired_at is None]) == 1


def test_an_update_that_changes_nothing_writes_nothing(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "keys")
    ring(tmp_path, FakeClock())
    before = store.version()
    kept = store.update(lambda current: None)
    assert [k.kid for k in kept] == [k.kid for k in store.load()]
    assert store.version() == before


def test_at_equal_activation_times_the_key_not_yet_retired_signs(tmp_path: Path) -> None:
    clock = FakeClock()
    r = ring(tmp_path, clock)
    new = r.rotate(activate_after=0, max_token_lifetime=300)  # activates when the first did
    store = FileKeyStore(tmp_path / "keys")
    store.save(list(reversed(store.load())))  # whatever order a store lists them in
    assert r.refresh() and r.active().kid == new.kid
