"""A Redis-backed second tier with cross-instance invalidation (extra ``[redis]``).

    import redis
    from memcache_ext import LruCache
    from memcache_ext.redis import TieredCache

    client = redis.Redis(host="127.0.0.1", socket_timeout=0.1, socket_connect_timeout=0.1)
    users = TieredCache(LruCache(maxsize=10_000), client, "users", ttl=300)
    user = users.get_or_set("42", lambda: load_user(42))

Reads hit the local cache first, then Redis, then the caller's loader. Writes
go to Redis and to the local tier; writes and deletes publish an invalidation
on the channel ``{namespace}:invalidate`` carrying the key and this
instance's id, and a background listener (a thread for :class:`TieredCache`,
a task for :class:`AsyncTieredCache`) drops the local copy of every key
another instance changed. Only this package imports redis-py: importing
``memcache_ext`` never does.

Design, precisely:

* Keys are ``str`` (or pass ``key_encoder``, a function from your key to a
  ``str``). Redis key: ``f"{namespace}:{key}"``; the local tier is keyed by
  the encoded key and should be dedicated to one tier.
* Values are serialized by a pluggable serializer (``serializers``:
  :class:`PickleSerializer`, the default, for trusted deployments only:
  whoever can write to Redis can run code in every instance;
  :class:`JsonSerializer`; :class:`MsgpackSerializer` when msgpack is
  installed). A serialized value
  longer than ``max_value_bytes`` is neither written nor, when read back from
  Redis, deserialized (the raw length is checked first); such values and
  values that fail to (de)serialize are misses, logged and counted, never
  raised into the request.
* Freshness: every invalidation (received, or one of our own writes) bumps a
  generation; a value read from Redis (or written by us) is stored locally
  only if no invalidation of its key arrived since the read started, so a
  slow read cannot reinstall a value another instance has just replaced.
* Redis down or slow: any ``RedisError``/``OSError`` from a command is
  counted, opens a short circuit breaker (``retry_interval`` seconds during
  which Redis is not tried), and the request goes on: reads fall back to the
  local tier and the loader, writes are skipped (counted) and keys written or
  deleted meanwhile are remembered and deleted from Redis, with an
  invalidation, once it answers again. The listener retries with exponential
  backoff and jitter; every (re)subscription after the first clears the local
  tier (invalidations may have been missed), counted in ``reconnects`` and
  ``local_clears``.
* Pub/sub is at-most-once: between a write and the arrival of its
  invalidation another instance may serve its old local copy; ``local_ttl``
  bounds how long any local copy can live.
"""

from __future__ import annotations

try:
    import redis as _redis  # noqa: F401  (redis-py: only whether it imports)
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "memcache_ext.redis needs redis-py: pip install 'memcache-ext[redis]' "
        f"(or pip install 'redis>=5') ({exc})"
    ) from exc

from ._async import AsyncTieredCache
from ._counters import COUNTERS, TierCounters
from ._driver import REDIS_ERRORS, TierStats
from ._sync import TieredCache
from .serializers import JsonSerializer, MsgpackSerializer, PickleSerializer, Serializer

__all__ = [
    "TieredCache",
    "AsyncTieredCache",
    "Serializer",
    "PickleSerializer",
    "JsonSerializer",
    "MsgpackSerializer",
    "COUNTERS",
    "REDIS_ERRORS",
    "TierCounters",
    "TierStats",
]
