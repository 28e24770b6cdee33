"""Signing keys in PostgreSQL: private keys sealed under the KEK in each data dir, refused
under another KEK, rotations that lose nothing across replicas, file keys adopted once."""

from __future__ import annotations

import base64
import json
import logging
import secrets
import shutil
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from typer.testing import CliRunner

from deputy.cli.main import app
from deputy.clock import FakeClock, SystemClock
from deputy.errors import ConfigError, StoreUnavailable
from deputy.oauth.endpoints import JWKS_PATH
from deputy.server.wiring import open_key_ring
from deputy.store.key_files import KEYS_DIR, FileKeyStore
from deputy.store.key_store import KEK_FILE
from deputy.store.postgres.connect import Timeouts
from deputy.store.postgres.keys import (
    KEK_BYTES,
    KeyEncryptionKeyMismatch,
    PostgresKeyStore,
    SealedKeyInvalid,
    kek_check,
    seal,
)
from deputy.tokens.key_ring import KeyChange, KeyRing, SigningKey, generate_key
from tests.integration.deployment import Deployment, running, write_deployment
from tests.integration.oauth_client import alice_credential, new_secret, with_clients
from tests.postgres.conftest import fetch, raw, replica_config
from tests.postgres.proxy import Proxy

T0 = 1_800_000_000.0
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi"}


def new_kek() -> bytes:
    return secrets.token_bytes(KEK_BYTES)


def private_jwk(key: SigningKey) -> dict[str, Any]:
    return key.key.as_dict(private=True)


def lifecycle(keys: list[SigningKey]) -> list[tuple[Any, ...]]:
    return [
        (k.kid, k.alg, k.created_at, k.activates_at, k.retired_at, k.publish_until) for k in keys
    ]


def stored_kids(url: str) -> list[str]:
    return [str(row[0]) for row in fetch(url, "SELECT kid FROM signing_keys ORDER BY kid")]


def generation(url: str) -> object:
    return fetch(url, "SELECT generation FROM signing_key_ring")[0][0]


def on_postgres(url: str) -> Any:
    def mutate(doc: dict[str, Any]) -> None:
        with_clients({"crm-api": new_secret()[0], "security-team": new_secret()[0]})(doc)
        doc["storage"] = url

    return mutate


def test_keys_round_trip_with_their_lifecycle(pg_url: str) -> None:
    kek = new_kek()
    keys = [
        replace(generate_key("ES256", T0), retired_at=T0 + 60, publish_until=T0 + 960),
        generate_key("ES384", T0, T0 + 60),
        generate_key("RS256", T0, T0 + 120),
    ]
    with PostgresKeyStore(pg_url, kek) as store:
        assert store.version() == 0 and store.load() == []
        store.save(keys)
        assert store.version() == 1
    with PostgresKeyStore(pg_url, kek) as store:
        loaded = store.load()
    assert lifecycle(loaded) == lifecycle(keys)
    assert [private_jwk(k) for k in loaded] == [private_jwk(k) for k in keys]
    assert fetch(pg_url, "SELECT generation, kek_check FROM signing_key_ring") == [
        (1, kek_check(kek))
    ]


def test_the_database_holds_no_private_key_in_clear(pg_url: str) -> None:
    kek = new_kek()
    keys = [generate_key("ES256", T0), generate_key("RS256", T0, T0 + 60)]
    with PostgresKeyStore(pg_url, kek) as store:
        store.save(keys)
    rows = fetch(pg_url, "SELECT kid, alg, public_jwk, sealed_key FROM signing_keys ORDER BY kid")
    ring_rows = fetch(pg_url, "SELECT * FROM signing_key_ring")
    assert sorted(str(row[0]) for row in rows) == sorted(k.kid for k in keys)
    dump = repr(rows + ring_rows)
    sealed = b"".join(bytes(row[3]) for row in rows)  # type: ignore[arg-type]
    assert "PRIVATE KEY" not in dump and b"PRIVATE KEY" not in sealed
    assert kek.hex() not in dump and kek not in sealed
    for row in rows:
        public = json.loads(str(row[2]))
        assert public["kty"] in ("EC", "RSA") and not PRIVATE_MEMBERS & set(public)
    for key in keys:
        secret = private_jwk(key)["d"]
        assert secret not in dump
        assert base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4)) not in sealed
        assert key.key.as_pem(private=True) not in sealed


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE signing_keys SET sealed_key = (SELECT sealed_key FROM signing_keys"
        " WHERE kid = '{other}') WHERE kid = '{victim}'",
        "UPDATE signing_keys SET kid = 'renamed' WHERE kid = '{victim}'",
        "UPDATE signing_keys SET alg = 'ES384' WHERE kid = '{victim}'",
        "UPDATE signing_keys SET public_jwk = (SELECT public_jwk FROM signing_keys"
        " WHERE kid = '{other}') WHERE kid = '{victim}'",
        "UPDATE signing_keys SET sealed_key = substring(sealed_key from 1 for 20)"
        " WHERE kid = '{victim}'",
        "UPDATE signing_keys SET sealed_key = '\\x00'::bytea WHERE kid = '{victim}'",
    ],
    ids=["blob-moved", "kid-renamed", "alg-edited", "public-key-swapped", "truncated", "one-byte"],
)
def test_a_row_edited_in_the_database_does_not_open(pg_url: str, statement: str) -> None:
    kek = new_kek()
    victim, other = generate_key("ES256", T0), generate_key("ES256", T0, T0 + 60)
    with PostgresKeyStore(pg_url, kek) as store:
        store.save([victim, other])
        raw(pg_url, statement.format(victim=victim.kid, other=other.kid))
        with pytest.raises(SealedKeyInvalid, match=r"does not open under keys\.kek") as caught:
            store.load()
        assert isinstance(caught.value, ConfigError)
        with pytest.raises(SealedKeyInvalid):  # nor is a rotation built on it
            KeyRing(store, FakeClock(T0), "ES256").load()


def test_a_key_planted_without_the_kek_does_not_open(pg_url: str) -> None:
    kek = new_kek()
    with PostgresKeyStore(pg_url, kek) as store:
        store.save([generate_key("ES256", T0)])
        planted = generate_key("ES256", T0, T0 + 1)
        sealed = seal(new_kek(), planted.kid, planted.alg, planted.key.as_pem(private=True))
        public = json.dumps(planted.key.as_dict(private=False), sort_keys=True)
        values = f"'{planted.kid}', 'ES256', {T0}, {T0 + 1}, '{public}', '\\x{sealed.hex()}'"
        columns = "kid, alg, created_at, activates_at, public_jwk, sealed_key"
        raw(pg_url, f"INSERT INTO signing_keys ({columns}) VALUES ({values})")  # noqa: S608
        with pytest.raises(SealedKeyInvalid, match=planted.kid):
            store.load()


def test_a_replica_with_another_kek_is_refused_at_start_and_says_what_to_copy(
    tmp_path: Path, pg_url: str
) -> None:
    d = write_deployment(tmp_path, on_postgres(pg_url))
    first = open_key_ring(d.settings, SystemClock())
    kids = [k.kid for k in first.all_keys()]
    first.close()
    before = generation(pg_url)

    other_dir = tmp_path / "replica-b"
    other = d.settings.model_copy(update={"data_dir": other_dir})
    with pytest.raises(KeyEncryptionKeyMismatch) as caught:
        open_key_ring(other, SystemClock())
    assert isinstance(caught.value, ConfigError)
    assert str(caught.value) == (
        f"{other_dir / KEK_FILE} is not the key-encryption key the signing keys in this"
        " PostgreSQL database are sealed with: copy keys.kek from the data dir of a replica"
        " that already runs on this database (the same file on every replica, mode 0600),"
        " then start again"
    )
    # The CLI says the same and changes nothing: no new key, no rotation under another KEK.
    config = replica_config(d.config_path, other_dir)
    for command in (["keys", "list"], ["keys", "rotate"]):
        result = CliRunner().invoke(app, [*command, "--config", str(config)])
        assert result.exit_code == 2, result.output
        assert "copy keys.kek from the data dir of a replica" in result.stderr
    assert stored_kids(pg_url) == sorted(kids) and generation(pg_url) == before

    shutil.copy2(d.settings.data_dir / KEK_FILE, other_dir / KEK_FILE)  # the fix it names
    fixed = open_key_ring(other, SystemClock())
    assert [k.kid for k in fixed.all_keys()] == kids
    fixed.close()


def test_concurrent_first_keys_and_rotations_keep_every_key(pg_url: str) -> None:
    kek, clock, n = new_kek(), FakeClock(T0), 4
    barrier = threading.Barrier(n)
    with ExitStack() as stack:
        rings = [
            KeyRing(stack.enter_context(PostgresKeyStore(pg_url, kek)), clock, "ES256")
            for _ in range(n)
        ]

        def start(ring: KeyRing) -> str:
            barrier.wait()
            ring.load()
            return ring.active().kid

        def rotate(ring: KeyRing) -> str:
            barrier.wait()
            return ring.rotate(activate_after=0, max_token_lifetime=300).kid

        with ThreadPoolExecutor(n) as pool:
            firsts = set(pool.map(start, rings))
            assert len(firsts) == 1 and len(stored_kids(pg_url)) == 1
            added = [kid for _ in range(3) for kid in pool.map(rotate, rings)]
    assert stored_kids(pg_url) == sorted([*firsts, *added])
    assert fetch(pg_url, "SELECT count(*) FROM signing_keys WHERE retired_at IS NULL") == [(1,)]
    assert generation(pg_url) == 1 + 3 * n


class HeldStore:
    """A store whose next change waits, holding the lock, until the test lets it go."""

    def __init__(self, store: PostgresKeyStore) -> None:
        self.store = store
        self.holding = threading.Event()
        self.release = threading.Event()

    def load(self) -> list[SigningKey]:
        return self.store.load()

    def save(self, keys: list[SigningKey]) -> None:
        self.store.save(keys)

    def version(self) -> object:
        return self.store.version()

    def close(self) -> None:
        self.store.close()

    def update(self, change: KeyChange) -> list[SigningKey]:
        def held(current: list[SigningKey]) -> Any:
            self.holding.set()
            assert self.release.wait(30)
            return change(current)

        return self.store.update(held)


def waiting_on_a_lock(url: str) -> int:
    rows = fetch(
        url,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'deputy signing keys' AND wait_event_type = 'Lock'",
    )
    return int(rows[0][0])  # type: ignore[call-overload]


def test_a_rotation_waits_for_the_lock_and_keeps_the_key_added_meanwhile(pg_url: str) -> None:
    kek, clock = new_kek(), FakeClock(T0)
    with PostgresKeyStore(pg_url, kek) as a_store, PostgresKeyStore(pg_url, kek) as b_store:
        held = HeldStore(a_store)
        a, b = KeyRing(held, clock, "ES256"), KeyRing(b_store, clock, "ES256")
        b.load()  # creates the first key
        a.load()  # finds it: both hold the same, soon stale, list
        [first] = a.all_keys()
        with ThreadPoolExecutor(2) as pool:
            a_rotation = pool.submit(a.rotate, activate_after=0, max_token_lifetime=300)
            assert held.holding.wait(30)
            b_rotation = pool.submit(b.rotate, activate_after=10, max_token_lifetime=300)
            deadline = time.monotonic() + 30
            while waiting_on_a_lock(pg_url) == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert waiting_on_a_lock(pg_url) == 1  # b waits on the row a holds
            held.release.set()
            a_new, b_new = a_rotation.result(30), b_rotation.result(30)
    stored = {
        str(row[0]): row[1:]
        for row in fetch(pg_url, "SELECT kid, retired_at, publish_until FROM signing_keys")
    }
    assert stored == {
        first.kid: (a_new.activates_at, a_new.activates_at + 300),
        a_new.kid: (b_new.activates_at, b_new.activates_at + 300),
        b_new.kid: (None, None),
    }


def test_a_second_ring_sees_a_rotation_after_refresh(pg_url: str) -> None:
    kek, clock = new_kek(), FakeClock(T0)
    with PostgresKeyStore(pg_url, kek) as serving_store, PostgresKeyStore(pg_url, kek) as cli:
        serving = KeyRing(serving_store, clock, "ES256")
        serving.load()
        assert serving.refresh() is False
        new = KeyRing(cli, clock, "ES256")
        new.load()
        added = new.rotate(activate_after=0, max_token_lifetime=300)
        assert serving.refresh() is True
        assert serving.active().kid == added.kid
        assert serving.jwks() == new.jwks() and len(serving.jwks()["keys"]) == 2
        assert serving.refresh() is False


def test_a_failed_refresh_keeps_the_known_keys_and_recovers(pg_url: str) -> None:
    kek, clock = new_kek(), FakeClock(T0)
    limits = Timeouts(statement=1.0, lock=1.0, call=1.0)
    relay = Proxy()
    try:
        with (
            PostgresKeyStore(relay.url(pg_url), kek, timeouts=limits) as through_relay,
            PostgresKeyStore(pg_url, kek) as direct,
        ):
            ring = KeyRing(through_relay, clock, "ES256")
            ring.load()
            active, published = ring.active().kid, ring.jwks()
            rotated = KeyRing(direct, clock, "ES256")
            rotated.load()
            added = rotated.rotate(activate_after=0, max_token_lifetime=300)
            relay.down()  # PostgreSQL restarting
            with pytest.raises(StoreUnavailable, match="signing key store unavailable"):
                ring.refresh()
            relay.up()
            relay.freeze()  # a server that takes the bytes and never answers
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                ring.refresh()
            assert time.monotonic() - started < limits.call + 2.0
            assert ring.active().kid == active and ring.jwks() is published
            relay.thaw()
            assert ring.refresh() is True and ring.active().kid == added.kid
    finally:
        relay.close()


def test_file_keys_are_imported_once_with_their_kids(
    tmp_path: Path, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    d = write_deployment(tmp_path, on_postgres(pg_url))
    keys_dir = d.settings.data_dir / KEYS_DIR
    files = KeyRing(FileKeyStore(keys_dir), FakeClock(T0), "ES256")
    files.load()
    files.rotate(activate_after=60, max_token_lifetime=900)
    file_keys = FileKeyStore(keys_dir).load()

    with caplog.at_level(logging.INFO, logger="deputy.store.key_store"):
        ring = open_key_ring(d.settings, SystemClock())
    ring.close()
    assert lifecycle(ring.all_keys()) == lifecycle(file_keys)
    assert [private_jwk(k) for k in ring.all_keys()] == [private_jwk(k) for k in file_keys]
    kids = ", ".join(k.kid for k in file_keys)
    imported = [r for r in caplog.records if r.name == "deputy.store.key_store"]
    assert [r.getMessage() for r in imported] == [
        f"imported 2 signing key(s) (kids {kids}) from {keys_dir} into the database, sealed"
        " under keys.kek; the files are no longer read"
    ]
    assert generation(pg_url) == 1

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="deputy.store.key_store"):
        again = open_key_ring(d.settings, SystemClock())
        again.rotate(activate_after=0, max_token_lifetime=300)
        again.close()
        third = open_key_ring(d.settings, SystemClock())
        third.close()
    assert caplog.records == []
    assert len(third.all_keys()) == 3 and generation(pg_url) == 2
    assert FileKeyStore(keys_dir).load()[-1].kid == file_keys[-1].kid  # the files untouched


def test_replicas_starting_at_once_import_the_file_keys_once(
    tmp_path: Path, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    d = write_deployment(tmp_path, on_postgres(pg_url))
    files = KeyRing(FileKeyStore(d.settings.data_dir / KEYS_DIR), FakeClock(T0), "ES256")
    files.load()
    barrier = threading.Barrier(3)

    def start(_: int) -> list[str]:
        barrier.wait()
        ring = open_key_ring(d.settings, SystemClock())
        ring.close()
        return [k.kid for k in ring.all_keys()]

    with (
        caplog.at_level(logging.INFO, logger="deputy.store.key_store"),
        ThreadPoolExecutor(3) as pool,
    ):
        seen = list(pool.map(start, range(3)))
    assert seen == [[files.active().kid]] * 3
    assert len([r for r in caplog.records if r.getMessage().startswith("imported")]) == 1
    assert stored_kids(pg_url) == [files.active().kid] and generation(pg_url) == 1


def test_a_broker_on_postgres_signs_with_the_keys_in_the_database(
    tmp_path: Path, pg_url: str
) -> None:
    d: Deployment = write_deployment(tmp_path, on_postgres(pg_url))
    with running(d) as (_, client):
        token = alice_credential(d, client)["access_token"]
        published = client.get(JWKS_PATH).json()
    verified = jwt.decode(token, KeySet.import_key_set(published), algorithms=["ES256"])
    assert verified.claims["iss"] == d.settings.issuer
    assert [verified.header["kid"]] == stored_kids(pg_url) == [k["kid"] for k in published["keys"]]
    data_dir = d.settings.data_dir
    assert not (data_dir / KEYS_DIR).exists()  # nothing of the signing keys in files
    kek = data_dir / KEK_FILE
    assert stat.S_IMODE(kek.stat().st_mode) == 0o600 and len(kek.read_bytes()) == KEK_BYTES


def test_the_broker_reloads_keys_off_the_event_loop_and_keeps_them_when_that_fails(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("deputy.server.app.KEY_RELOAD_INTERVAL_SECONDS", 0.05)
    stuck, entered, release = threading.Event(), threading.Event(), threading.Event()
    version = PostgresKeyStore.version

    def stalling(self: PostgresKeyStore) -> object:
        if not stuck.is_set():
            return version(self)
        entered.set()
        assert release.wait(30)
        raise StoreUnavailable("signing key store unavailable")

    monkeypatch.setattr(PostgresKeyStore, "version", stalling)
    d = write_deployment(tmp_path, on_postgres(pg_url))
    with running(d) as (broker, client):
        published = client.get(JWKS_PATH).json()
        stuck.set()
        assert entered.wait(30)
        # The reload is stuck in the database: requests are still answered meanwhile.
        assert client.get("/healthz", timeout=2).status_code == 200
        assert client.get(JWKS_PATH, timeout=2).json() == published
        stuck.clear()
        release.set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "could not be reloaded" not in caplog.text:
            time.sleep(0.01)
        assert "signing keys could not be reloaded; retrying" in caplog.text
        assert client.get(JWKS_PATH).json() == published
        alice_credential(d, client)  # and it still signs
    kek = (d.settings.data_dir / KEK_FILE).read_bytes()
    assert "PRIVATE KEY" not in caplog.text and kek.hex() not in caplog.text
    assert all(private_jwk(k)["d"] not in caplog.text for k in broker.broker.key_ring.all_keys())
