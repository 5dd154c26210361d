"""A Redis-backed second tier with cross-instance invalidation (extra ``[redis]``).

    import redis
    from memcache_ext import LruCache
    from memcache_ext.redis import TieredCache

    client = redis.Redis(host="127.0.0.1")       # its settings; the tier has its own policy
    users = TieredCache(LruCache(maxsize=10_000), client, "users", ttl=300)
    user = users.get_or_set("42", lambda: load_user(42))

Reads hit the local cache first, then Redis, then the caller's loader. Writes
go to Redis and to the local tier; a write or delete publishes, in the same
step in Redis, an invalidation on ``{namespace}:invalidate`` naming the key
and its version, and a background worker (a thread for :class:`TieredCache`,
a task for :class:`AsyncTieredCache`) drops the local copy of every key
another instance changed. Only this package imports redis-py: importing
``memcache_ext`` never does.

Design, precisely:

* Keys are ``str`` (or pass ``key_encoder``). Redis key ``f"{namespace}:{key}"``,
  a hash of the value and its version (``_versions``). A namespace that would
  break key or channel names is a ValueError.
* Versions: a write or a fill never replaces a newer version in Redis (one Lua
  script); the version is the caller's (``version_of``, ``version=``: a row
  version, ``updated_at``) or a per-key counter the tier keeps in Redis.
* Values are serialized as JSON by default (``serializers``: msgpack, or a
  pickle signed with an HMAC key); an oversized, unverifiable or undecodable
  value is a miss, counted, logged at most once a minute.
* Freshness: every local store goes through a lease of the local cache, so an
  invalidation that arrives while a read is in flight refuses its fill
  (``_freshness``). While invalidations cannot arrive, local entries are
  served for at most ``max_stale`` seconds after the channel was last heard
  from; every resubscription drops the local tier (``_listener``).
* Redis down, slow or frozen: the tier's own client bounds each call by
  ``deadline`` (50 ms), retries nothing but a broken pooled connection, once,
  and a breaker opened by the first connection error or timeout keeps
  requests off Redis until a background probe finds it back (``_policy``).
  Keys written meanwhile are tombstoned in Redis when it answers again.
* Misuse: the client of the other flavour, or operations after ``close()``,
  raise TypeError / :class:`TierClosedError`.
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
from ._driver import REDIS_ERRORS, TierClosedError, TierStats
from ._policy import BREAKER_STATES, ERROR_KINDS
from ._sync import TieredCache
from .serializers import (
    BadSignatureError,
    JsonSerializer,
    MsgpackSerializer,
    PickleSerializer,
    Serializer,
)

__all__ = [
    "TieredCache",
    "AsyncTieredCache",
    "TierClosedError",
    "Serializer",
    "JsonSerializer",
    "MsgpackSerializer",
    "PickleSerializer",
    "BadSignatureError",
    "COUNTERS",
    "ERROR_KINDS",
    "BREAKER_STATES",
    "REDIS_ERRORS",
    "TierCounters",
    "TierStats",
]
