"""Daily quota counters in Redis, shared by every replica (see ``docs/redis-counters.md``).

Keys (``prefix`` defaults to ``deputy:``; each part percent-encoded, so ``:`` separates)::

    {prefix}quota:{day}:{issuer}:{user_id}:{category}   issued so far that UTC day
    {prefix}quota:{day}:seeded                          present once the day was seeded
    {prefix}quota:{day}:seeding                         lock: one replica seeds at a time

Every key of a day expires ``expiry_margin`` seconds after the day ends (Redis ``EXPIREAT``).
``consume`` is one Lua script: it checks every demand of the request and increments all of
them, or none, while no other command runs, so N concurrent requests from any number of
replicas against a limit L get exactly min(N, L) successes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from deputy.errors import StoreUnavailable
from deputy.policy.quota import SECONDS_PER_DAY, QuotaDemand, Seed
from deputy.store.redis.connection import (
    DEFAULT_TIMEOUT_SECONDS,
    UNAVAILABLE,
    RedisConnection,
    Script,
)

EXPIRY_MARGIN_SECONDS = 3600  # late refunds and replicas whose clocks lag stay counted
SEED_LOCK_SECONDS = 10  # a seeding replica that died holds the day up at most this long
SEED_BATCH = 500  # counters written per script while seeding
POLL_SECONDS = 0.05

_log = logging.getLogger(__name__)

# Script answers: the first element says what happened.
_TAKEN, _OVER, _UNSEEDED, _DAY_OVER = 0, 1, 2, 3

# KEYS: the day's marker, then one counter per demand.
# ARGV: take ('1' takes, '0' only checks), seeded ('1': the day must carry its marker),
#       expire_at (unix seconds), then amount and limit per demand.
_CONSUME = Script(
    """
local take, need_marker, expire_at = ARGV[1], ARGV[2], tonumber(ARGV[3])
if expire_at <= tonumber(redis.call('TIME')[1]) then return {3} end
if need_marker == '1' and redis.call('EXISTS', KEYS[1]) == 0 then return {2} end
local want = {}
for i = 2, #KEYS do
  want[KEYS[i]] = (want[KEYS[i]] or 0) + tonumber(ARGV[2 * i])
end
local over = {1}
for i = 2, #KEYS do
  local have = tonumber(redis.call('GET', KEYS[i]) or '0')
  if have + want[KEYS[i]] > tonumber(ARGV[2 * i + 1]) then over[#over + 1] = i - 2 end
end
if #over > 1 then return over end
if take == '1' then
  for i = 2, #KEYS do
    redis.call('INCRBY', KEYS[i], tonumber(ARGV[2 * i]))
    redis.call('EXPIREAT', KEYS[i], expire_at)
  end
end
return {0}
"""
)

# KEYS: the day's marker, then one counter per demand. ARGV: seeded, then amount per demand.
# Without the marker (the day's counters were lost) nothing is given back: the seed that
# follows counts from the audit log, where a refunded request has no credential.
_REFUND = Script(
    """
if ARGV[1] == '1' and redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 2, #KEYS do
  local have = redis.call('GET', KEYS[i])
  if have then
    local left = tonumber(have) - tonumber(ARGV[i])
    if left < 0 then left = 0 end
    redis.call('SET', KEYS[i], left, 'KEEPTTL')
  end
end
return 1
"""
)

# KEYS: the day's marker, then counters. ARGV: expire_at, then the audit log's count per
# counter. A counter keeps the larger of what it holds and the seed, so seeding twice (a
# lock that expired under a slow seeder) never adds up.
_SEED = Script(
    """
local expire_at = tonumber(ARGV[1])
if expire_at <= tonumber(redis.call('TIME')[1]) then return -1 end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 2, #KEYS do
  local n = tonumber(ARGV[i])
  if n > tonumber(redis.call('GET', KEYS[i]) or '0') then redis.call('SET', KEYS[i], n) end
  redis.call('EXPIREAT', KEYS[i], expire_at)
end
return 1
"""
)

# KEYS: the day's marker, its lock. ARGV: expire_at, the lock token, what to note.
_MARK_SEEDED = Script(
    """
if tonumber(ARGV[1]) <= tonumber(redis.call('TIME')[1]) then return -1 end
redis.call('SET', KEYS[1], ARGV[3])
redis.call('EXPIREAT', KEYS[1], tonumber(ARGV[1]))
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
return 1
"""
)

# KEYS: the day's marker, its lock. ARGV: a token for the lock, its lifetime (seconds).
# 2: the day is seeded already; 1: the caller holds the lock and seeds; 0: another does.
_TRY_LOCK = Script(
    """
if redis.call('EXISTS', KEYS[1]) == 1 then return 2 end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', tonumber(ARGV[2])) then return 1 end
return 0
"""
)

# KEYS: a lock. ARGV: its token. Deleted only by the replica that holds it.
_UNLOCK = Script(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
)


def _part(value: str) -> str:
    return quote(value, safe="")


class RedisQuotaStore:
    """The :class:`deputy.policy.quota.QuotaStore` that every replica shares.

    ``url`` names the server (or pass one :class:`RedisConnection` shared with the replay
    guards); each call waits at most ``timeout`` seconds for Redis, then raises
    ``StoreUnavailable``. With ``seed`` (the audit log's counts of a day, as the memory
    store is seeded), a day whose marker key is missing (the first request of the day, or
    a Redis that restarted empty) is counted from the audit log before anything is taken:
    one replica seeds under a lock, the others wait for the marker up to ``seed_wait``
    seconds, then answer 503. Without ``seed``, missing counters count from zero.
    """

    def __init__(
        self,
        url: str | RedisConnection,
        *,
        prefix: str = "deputy:",
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        seed: Seed | None = None,
        seed_wait: float = 0.5,
        expiry_margin: int = EXPIRY_MARGIN_SECONDS,
    ) -> None:
        if not isinstance(url, RedisConnection):
            url = RedisConnection(url, timeout=timeout)
        self._redis = url
        self._prefix = prefix
        self._seed = seed
        self._seed_wait = seed_wait
        self._expiry_margin = expiry_margin
        self._unlocking: set[asyncio.Future[None]] = set()

    @property
    def connection(self) -> RedisConnection:
        return self._redis

    def counter_key(self, day: int, demand: QuotaDemand) -> str:
        issuer, user_id, category = demand.key
        return f"{self._day_prefix(day)}{_part(issuer)}:{_part(user_id)}:{_part(category)}"

    def marker_key(self, day: int) -> str:
        return f"{self._day_prefix(day)}seeded"

    def lock_key(self, day: int) -> str:
        return f"{self._day_prefix(day)}seeding"

    def expires_at(self, day: int) -> int:
        """When every key of ``day`` expires (unix seconds)."""
        return (day + 1) * SECONDS_PER_DAY + self._expiry_margin

    def _day_prefix(self, day: int) -> str:
        return f"{self._prefix}quota:{day}:"

    async def consume(self, day: int, demands: tuple[QuotaDemand, ...]) -> tuple[QuotaDemand, ...]:
        """Take every demand, or none (one script); the demands that would exceed."""
        return await self._counted(day, demands, take=True)

    async def exceeded(self, day: int, demands: tuple[QuotaDemand, ...]) -> tuple[QuotaDemand, ...]:
        return await self._counted(day, demands, take=False)

    async def refund(self, day: int, demands: tuple[QuotaDemand, ...]) -> None:
        if not demands:
            return
        keys = [self.marker_key(day), *(self.counter_key(day, d) for d in demands)]
        args = ["1" if self._seed else "0", *(d.amount for d in demands)]
        await self._redis.run(_REFUND.on(keys, args))

    async def _counted(
        self, day: int, demands: tuple[QuotaDemand, ...], *, take: bool
    ) -> tuple[QuotaDemand, ...]:
        if not demands:
            return ()
        keys = [self.marker_key(day), *(self.counter_key(day, d) for d in demands)]
        args: list[str | int] = ["1" if take else "0", "1" if self._seed else "0"]
        args.append(self.expires_at(day))
        for d in demands:
            args += [d.amount, d.limit]
        for _ in range(3):
            answer = await self._redis.run(_CONSUME.on(keys, args))
            status, *over = _ints(answer)
            if status == _TAKEN:
                return ()
            if status == _OVER:
                return tuple(demands[i] for i in over)
            if status == _DAY_OVER:
                _log.warning(
                    "quota day %d has already ended by the Redis server's clock: "
                    "is this replica's clock behind?",
                    day,
                )
                raise StoreUnavailable(UNAVAILABLE)
            await self._seed_day(day)
        raise StoreUnavailable(UNAVAILABLE)  # the day lost its counters again and again

    async def _seed_day(self, day: int) -> None:
        """Count ``day`` from the audit log, or wait for the replica that does."""
        assert self._seed is not None
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._seed_wait
        lock, marker = self.lock_key(day), self.marker_key(day)
        token = secrets.token_hex(16)
        try_lock = _TRY_LOCK.on([marker, lock], [token, SEED_LOCK_SECONDS])
        while True:
            state = _int(await self._redis.run(try_lock))
            if state == 2:
                return
            if state == 1:
                try:
                    counts = await asyncio.to_thread(self._seed, day)
                except BaseException:
                    await self._unlock(lock, token)  # the audit log failed, not Redis
                    raise
                try:
                    await self._write_seed(day, counts, token)
                except BaseException:
                    # In the background: the request's answer (503) must not wait for it.
                    self._unlock_later(lock, token)
                    raise
                return
            if loop.time() >= give_up:
                _log.warning("quota day %d is being seeded by another replica; refusing", day)
                raise StoreUnavailable(UNAVAILABLE)
            await asyncio.sleep(POLL_SECONDS)

    async def _write_seed(
        self, day: int, counts: Mapping[tuple[str, str, str], int], token: str
    ) -> None:
        expire_at = self.expires_at(day)
        marker = self.marker_key(day)
        items = [
            (self.counter_key(day, QuotaDemand(issuer, user, category, 0, 0)), n)
            for (issuer, user, category), n in counts.items()
            if n > 0
        ]
        for start in range(0, len(items), SEED_BATCH):
            batch = items[start : start + SEED_BATCH]
            keys = [marker, *(key for key, _ in batch)]
            args: list[str | int] = [expire_at, *(n for _, n in batch)]
            written = _int(await self._redis.run(_SEED.on(keys, args)))
            if written == -1:
                raise StoreUnavailable(UNAVAILABLE)
            if written == 0:
                await self._unlock(self.lock_key(day), token)
                return  # another replica finished first
        keys = [marker, self.lock_key(day)]
        args = [expire_at, token, len(items)]
        if _int(await self._redis.run(_MARK_SEEDED.on(keys, args))) == -1:
            raise StoreUnavailable(UNAVAILABLE)
        _log.info("quota day %d seeded from the audit log: %d counters", day, len(items))

    def _unlock_later(self, lock: str, token: str) -> None:
        task = asyncio.ensure_future(self._unlock(lock, token))
        self._unlocking.add(task)
        task.add_done_callback(self._unlocking.discard)

    async def _unlock(self, lock: str, token: str) -> None:
        with contextlib.suppress(StoreUnavailable):  # else the lock expires on its own
            await self._redis.run(_UNLOCK.on([lock], [token]))

    async def aclose(self) -> None:
        await self._redis.aclose()


def _ints(answer: Any) -> list[int]:
    if not isinstance(answer, Sequence) or not answer:
        raise StoreUnavailable(UNAVAILABLE)
    return [_int(x) for x in answer]


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise StoreUnavailable(UNAVAILABLE)
    return value


__all__ = ["EXPIRY_MARGIN_SECONDS", "RedisQuotaStore"]
