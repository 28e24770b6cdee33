"""Redis backend for the counters every replica shares: daily quotas and replay guards.

Nothing here falls back to memory: when Redis cannot answer within the timeout (0.5 s by
default) a call raises ``StoreUnavailable`` and the request is refused with 503. See
``docs/redis-counters.md``.
"""

from deputy.store.redis.connection import RedisConnection, connect_redis
from deputy.store.redis.quota import RedisQuotaStore
from deputy.store.redis.replay import RedisReplayCache

__all__ = ["RedisConnection", "RedisQuotaStore", "RedisReplayCache", "connect_redis"]
