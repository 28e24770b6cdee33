"""PostgreSQL unreachable, restarted, hung or cut mid-commit: fail closed fast, then recover.

``docs/security.md`` "Faults": an append that cannot be committed raises ``StoreUnavailable``
(503, quota refunded) within seconds, one whose outcome is unknown raises
``CommitOutcomeUnknown`` (503, quota kept), and the store recovers without a restart.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from deputy.audit.log import AuditFilter
from deputy.clock import FakeClock
from deputy.errors import CommitOutcomeUnknown, StoreUnavailable
from deputy.store.key_files import FileKeyStore
from deputy.store.postgres import PostgresAuditLog, PostgresAuditReader, Timeouts
from deputy.tokens.key_ring import KeyRing
from deputy.tokens.mint import TokenSigner
from tests.audit_records import KEY, T0, make_record
from tests.postgres.conftest import fetch, raw
from tests.postgres.proxy import Proxy

FAST = Timeouts(connect=2.0, statement=1.0, lock=0.5, call=1.0)


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    relay = Proxy()
    try:
        yield relay
    finally:
        relay.close()


@pytest.fixture
def signer(tmp_path: Path) -> TokenSigner:
    ring = KeyRing(FileKeyStore(tmp_path / "keys"), FakeClock(T0), "ES256")
    ring.load()
    return TokenSigner(ring)


def decisions(url: str) -> list[str]:
    with PostgresAuditReader(url, KEY) as reader:
        return [s.record["decision_id"] for s in reader.query(AuditFilter(limit=10_000))]


def verified(url: str) -> bool:
    with PostgresAuditReader(url, KEY) as reader:
        report = reader.verify()
    assert report.ok, report.problem
    return True


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def timed(coro: Any) -> tuple[Any, float]:
    started = time.monotonic()
    try:
        result = await coro
    except Exception as exc:
        result = exc
    return result, time.monotonic() - started


async def test_unreachable_server_fails_closed_at_once(postgres_server: str) -> None:
    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/postgres"
    with PostgresAuditLog(url, KEY, timeouts=FAST) as audit_log:
        error, took = await timed(audit_log.start())
        assert isinstance(error, StoreUnavailable) and took < 1.5
        error, took = await timed(audit_log.append(make_record(1)))
        assert type(error) is StoreUnavailable and str(error) == "audit store unavailable"
        assert took < 1.5
        with pytest.raises(StoreUnavailable):
            audit_log.reader.committed("dec-1")
        with pytest.raises(StoreUnavailable):
            await audit_log.reader.revocations_after(0, T0)
        with pytest.raises(StoreUnavailable):
            audit_log.verify()


async def test_a_server_that_never_answers_is_given_up_within_the_connect_timeout() -> None:
    with socket.socket() as silent:  # accepts TCP connections (backlog), never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/postgres"
        with PostgresAuditLog(url, KEY, timeouts=FAST) as audit_log:
            error, took = await timed(audit_log.append(make_record(1)))
            assert type(error) is StoreUnavailable and took < 4.0
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await audit_log.reader.credential("jti-1")
            assert time.monotonic() - started < 4.0


async def test_terminated_sessions_are_replaced_without_a_failed_call(pg_url: str) -> None:
    """What clients see of a PostgreSQL restart that is over by their next call."""
    with PostgresAuditLog(pg_url, KEY, timeouts=FAST) as audit_log:
        await audit_log.append(make_record(1))
        assert audit_log.reader.committed("dec-1")
        database = pg_url.rsplit("/", 1)[1]
        others = f"datname = '{database}' AND pid <> pg_backend_pid()"
        raw(pg_url, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {others}")  # noqa: S608
        await audit_log.append(make_record(2))  # the writer reconnects and carries on
        assert audit_log.reader.committed("dec-2")  # the reader's pool pings, then replaces
        assert await audit_log.reader.credential("jti-2") is not None
    assert decisions(pg_url) == ["dec-1", "dec-2"] and verified(pg_url)


async def test_restart_fails_closed_promptly_then_recovers_without_a_restart(
    pg_url: str, proxy: Proxy
) -> None:
    with PostgresAuditLog(proxy.url(pg_url), KEY, timeouts=FAST) as audit_log:
        await audit_log.start()
        await asyncio.gather(*(audit_log.append(make_record(i)) for i in range(1, 21)))
        await asyncio.gather(*(audit_log.reader.credential(f"jti-{i}") for i in range(1, 9)))
        proxy.down()
        results = await asyncio.gather(
            *(timed(audit_log.append(make_record(i))) for i in range(21, 31))
        )
        assert all(type(error) is StoreUnavailable for error, _ in results), results
        assert max(took for _, took in results) < 2.5
        with pytest.raises(StoreUnavailable):
            audit_log.reader.committed("dec-1")
        with pytest.raises(StoreUnavailable):
            await audit_log.reader.live("user_id", "user-1", T0)
        proxy.up()
        await asyncio.gather(*(audit_log.append(make_record(i)) for i in range(31, 41)))
        assert audit_log.reader.committed("dec-31")
        assert (await audit_log.reader.live("execution_id", "exec-1", T0)).credentials == 6
    expected = [f"dec-{i}" for i in (*range(1, 21), *range(31, 41))]
    assert sorted(decisions(pg_url)) == sorted(expected) and verified(pg_url)


async def test_a_hung_server_is_cut_by_the_watchdog_then_recovers(
    pg_url: str, proxy: Proxy
) -> None:
    with PostgresAuditLog(proxy.url(pg_url), KEY, timeouts=FAST) as audit_log:
        await audit_log.append(make_record(1))
        assert await audit_log.reader.credential("jti-1") is not None  # a pooled connection
        proxy.freeze()
        error, took = await timed(audit_log.append(make_record(2)))
        assert type(error) is StoreUnavailable, error
        assert FAST.call <= took < FAST.call + 1.5
        lookup, took = await timed(audit_log.reader.credential("jti-1"))
        assert isinstance(lookup, StoreUnavailable) and took < FAST.call + 1.5
        proxy.thaw()
        await audit_log.append(make_record(3))
        assert await audit_log.reader.credential("jti-3") is not None
    assert decisions(pg_url) == ["dec-1", "dec-3"] and verified(pg_url)


def _cut(raw_connection: Any) -> None:
    with socket.socket(fileno=os.dup(raw_connection.fileno())) as sock:
        sock.shutdown(socket.SHUT_RDWR)


async def test_a_connection_lost_before_commit_reached_the_server_is_in_doubt(
    pg_url: str, signer: TokenSigner
) -> None:
    """Nothing was committed, but the writer cannot know: 503, no token, quota kept."""
    with PostgresAuditLog(pg_url, KEY, signer=signer, timeouts=FAST) as audit_log:
        await audit_log.start()
        engine = audit_log._writer._engine  # the writer's own connection, cut as COMMIT starts

        def cut_before_commit(conn: Any) -> None:
            _cut(conn.connection.dbapi_connection)

        event.listen(engine, "commit", cut_before_commit)
        with pytest.raises(CommitOutcomeUnknown):
            await audit_log.append(make_record(1), [{"jti": "jti-1"}])
        event.remove(engine, "commit", cut_before_commit)
        [token] = await audit_log.append(make_record(2), [{"jti": "jti-2"}])
        assert token.count(".") == 2
    assert decisions(pg_url) == ["dec-2"] and verified(pg_url)


async def test_a_commit_whose_answer_was_lost_is_found_and_counts(
    pg_url: str, signer: TokenSigner
) -> None:
    """COMMIT reached the server, its answer did not come back: looked up, it is committed."""
    with PostgresAuditLog(pg_url, KEY, signer=signer, timeouts=FAST) as audit_log:
        await audit_log.start()
        engine = audit_log._writer._engine

        def commit_then_cut(conn: Any) -> None:
            dbapi = conn.connection.dbapi_connection
            dbapi.pgconn.exec_(b"COMMIT")  # behind the driver's back, as the server would
            _cut(dbapi)

        event.listen(engine, "commit", commit_then_cut)
        tokens = await audit_log.append(make_record(1), [{"jti": "jti-1"}])
        event.remove(engine, "commit", commit_then_cut)
        assert len(tokens) == 1
        await audit_log.append(make_record(2))
    assert decisions(pg_url) == ["dec-1", "dec-2"] and verified(pg_url)


async def test_a_locked_chain_head_fails_closed_within_the_lock_timeout(pg_url: str) -> None:
    import psycopg

    with PostgresAuditLog(pg_url, KEY, timeouts=FAST) as audit_log:
        await audit_log.append(make_record(1))
        with psycopg.connect(pg_url) as holder:
            holder.execute("SELECT * FROM chain_heads FOR UPDATE")
            error, took = await timed(audit_log.append(make_record(2)))
            assert type(error) is StoreUnavailable and took < FAST.lock + 1.0
            holder.rollback()
        await audit_log.append(make_record(3))
    assert decisions(pg_url) == ["dec-1", "dec-3"] and verified(pg_url)


async def test_a_stalled_writer_answers_in_doubt_within_the_append_timeout(
    pg_url: str,
) -> None:
    """Appends queued behind a batch that takes too long get 503 (in doubt) in bounded time."""
    import psycopg

    with PostgresAuditLog(pg_url, KEY, timeouts=FAST, append_timeout=0.5) as audit_log:
        await audit_log.append(make_record(1))
        with psycopg.connect(pg_url) as holder:
            holder.execute("LOCK TABLE records IN ACCESS EXCLUSIVE MODE")
            error, took = await timed(audit_log.append(make_record(2)))
            assert type(error) is CommitOutcomeUnknown and took < 1.0
            await asyncio.sleep(FAST.lock + 0.5)  # the batch gives up waiting for the lock
            holder.rollback()
        await audit_log.append(make_record(3))
    assert fetch(pg_url, "SELECT decision_id FROM records ORDER BY id") == [("dec-1",), ("dec-3",)]
    assert verified(pg_url)
