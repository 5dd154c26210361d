"""The tier's logic, once: keys, the breaker, the operations as flows, stats.

See ``_flow`` for how the sync and async adapters run the flows.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Optional, Union

import redis.exceptions as _redis_exc

from .._constants import MISSING
from ._counters import COUNTERS, Counters, TierCounters
from ._flow import Flow
from ._listener import Listener
from .serializers import Codec, Serializer, make_serializer

__all__ = ["TierDriver", "TierCounters", "TierStats", "COUNTERS", "REDIS_ERRORS"]

logger = logging.getLogger("memcache_ext.redis")

#: Errors that mean "Redis did not answer properly": counted, never raised.
REDIS_ERRORS: tuple[type[BaseException], ...] = (_redis_exc.RedisError, OSError)
_DOWN_ERRORS: tuple[type[BaseException], ...] = (
    _redis_exc.ConnectionError,
    _redis_exc.TimeoutError,
    OSError,
)


class TierStats(TierCounters):
    """``TieredCache.stats()`` / ``AsyncTieredCache.stats()``."""

    oversized_refusals: int
    local_hit_rate: float
    namespace: str
    channel: str
    instance_id: str
    serializer: str
    connected: Annotated[bool, "Whether the invalidation listener is subscribed"]
    redis_available: Annotated[bool, "False while the breaker is open"]
    pending_invalidations: Annotated[int, "Keys to delete in Redis once it answers again"]
    pending_dropped: int
    max_value_bytes: Optional[int]
    local: Annotated[dict[str, Any], "The local tier's own stats()"]


def _opt_seconds(name: str, value: Any) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number or None")
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return float(value)


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


class TierDriver(Listener):
    """Everything but the I/O: keys, serialization, freshness, the breaker, stats.

    Adapters provide ``_pipeline(queue)`` (run ``queue(pipe)`` on a fresh
    non-transactional pipeline and execute it), ``_sleep(seconds)`` and
    ``_close_pubsub(pubsub)``, and drive the flows.
    """

    def __init__(
        self,
        local: Any,
        redis_client: Any,
        namespace: str,
        *,
        ttl: Optional[float] = 300.0,
        local_ttl: Optional[float] = None,
        serializer: Union[str, Serializer, None] = None,
        max_value_bytes: Optional[int] = 1 << 20,
        key_encoder: Optional[Callable[[Any], str]] = None,
        retry_interval: float = 1.0,
        backoff: tuple[float, float] = (0.05, 5.0),
        poll_interval: float = 0.2,
        max_pending: int = 10_000,
    ) -> None:
        if not isinstance(namespace, str) or not namespace:
            raise ValueError("namespace must be a non-empty str")
        for method in ("get", "set", "pop", "clear", "stats"):
            if not callable(getattr(local, method, None)):
                raise TypeError(f"local must be a cache of this package (no {method}())")
        if redis_client is None:
            raise TypeError("redis_client is required")
        kwargs_of = getattr(redis_client, "get_connection_kwargs", None)
        if callable(kwargs_of) and kwargs_of().get("decode_responses"):
            raise ValueError(
                "the Redis client must not decode responses "
                "(decode_responses=False): values are bytes"
            )
        if key_encoder is not None and not callable(key_encoder):
            raise TypeError("key_encoder must be callable")
        if max_value_bytes is not None:
            if isinstance(max_value_bytes, bool) or not isinstance(max_value_bytes, int):
                raise TypeError("max_value_bytes must be an int or None")
            if max_value_bytes <= 0:
                raise ValueError(f"max_value_bytes must be > 0, got {max_value_bytes}")
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 0:
            raise ValueError("max_pending must be an int >= 0")
        lo, hi = backoff
        if not 0 < lo <= hi:
            raise ValueError(f"backoff must be (min, max) with 0 < min <= max, got {backoff!r}")
        super().__init__(local)
        self.redis = redis_client
        self.namespace = namespace
        self.channel = f"{namespace}:invalidate"
        self.ttl = _opt_seconds("ttl", ttl)
        self.local_ttl = _opt_seconds("local_ttl", local_ttl)
        self.counts = Counters()
        self.codec = Codec(
            make_serializer(serializer),
            max_value_bytes,
            self.counts.add,
            f"redis tier {namespace!r}",
            MISSING,
        )
        self.key_encoder = key_encoder
        self.retry_interval = float(_opt_seconds("retry_interval", retry_interval) or 0)
        self.poll_interval = float(_opt_seconds("poll_interval", poll_interval) or 0.2)
        self.backoff = (float(lo), float(hi))
        self.max_pending = max_pending
        self.instance_id = uuid.uuid4().hex
        self._prefix = f"{namespace}:"
        self._lget = local.get  # the hit path: one bound C call
        self._pending: dict[str, None] = {}  # keys written/deleted while Redis was away
        self._pending_dropped = 0
        self._down_until = 0.0  # circuit breaker

    # -- what the adapters provide -------------------------------------------------

    def _pipeline(self, queue: Callable[[Any], None]) -> Any:
        raise NotImplementedError

    @property
    def serializer(self) -> Serializer:
        return self.codec.serializer

    @property
    def max_value_bytes(self) -> Optional[int]:
        return self.codec.max_bytes

    # -- small helpers -------------------------------------------------------------

    def _local_first(self, key: Any) -> tuple[Any, Any]:
        """(the local tier's value or MISSING, the key to use from here on: the
        Redis key after a miss)."""
        enc = self.key_encoder
        k = key if enc is None else self._key(key)
        value = self._lget(k, MISSING)
        if value is MISSING and enc is None:
            k = self._key(k)
        return value, k

    def _key(self, key: Any) -> str:
        """The encoded key (validated): what the local tier and messages use."""
        enc = self.key_encoder
        if enc is not None:
            key = enc(key)
            if not isinstance(key, str):
                raise TypeError(f"key_encoder must return a str, not {type(key).__name__}")
        elif not isinstance(key, str):
            raise TypeError(
                f"TieredCache keys must be str, not {type(key).__name__} "
                "(pass key_encoder= to map other keys to str)"
            )
        return key

    def _local_ttl(self, ttl: Optional[float]) -> Optional[float]:
        ttls = [t for t in (ttl, self.local_ttl) if t is not None]
        return min(ttls) if ttls else None

    def _message(self, op: str, key: str = "") -> bytes:
        return json.dumps(
            [self.instance_id, op, key], separators=(",", ":"), ensure_ascii=False
        ).encode()

    def _remote_available(self) -> bool:
        return self._down_until == 0.0 or time.monotonic() >= self._down_until

    def _failed(self, exc: BaseException, what: str) -> None:
        self.counts.add("redis_errors")
        if isinstance(exc, _DOWN_ERRORS):
            first = self._down_until == 0.0
            self._down_until = time.monotonic() + self.retry_interval
            if first:
                logger.warning(
                    "redis tier %r: %s failed (%s: %s); serving from the local tier and the loader",
                    self.namespace,
                    what,
                    type(exc).__name__,
                    exc,
                )
        else:
            logger.warning(
                "redis tier %r: %s failed: %s: %s", self.namespace, what, type(exc).__name__, exc
            )

    def _redis_ok(self) -> None:
        if self._down_until != 0.0:
            self._down_until = 0.0
            logger.info("redis tier %r: Redis answers again", self.namespace)

    def _add_pending(self, key: str) -> None:
        with self._lock:
            if key in self._pending:
                return
            if len(self._pending) >= self.max_pending:
                self._pending_dropped += 1
                return
            self._pending[key] = None

    def _with_messages(
        self, command: str, args: tuple[Any, ...], kwargs: dict[str, Any], keys: list[str]
    ) -> Callable[[], Any]:
        """``command(*args, **kwargs)`` and an invalidation of each key, in one pipeline."""
        msgs = [self._message("k", k) for k in keys]

        def queue(pipe: Any) -> None:
            getattr(pipe, command)(*args, **kwargs)
            for msg in msgs:
                pipe.publish(self.channel, msg)

        return functools.partial(self._pipeline, queue)

    # -- the operations, as flows ---------------------------------------------------

    def _read_flow(self, key: str, since: int, ttl: Optional[float]) -> Flow:
        """Redis after a local miss: returns (value or MISSING, found_bad_value)."""
        if not self._remote_available():
            self.counts.add("remote_skipped")
            return MISSING, False
        try:
            raw = yield functools.partial(self.redis.get, self._prefix + key)
        except REDIS_ERRORS as exc:
            self._failed(exc, "GET")
            return MISSING, False
        self._redis_ok()
        if raw is None:
            self.counts.add("remote_misses")
            return MISSING, False
        value = self.codec.decode(key, raw)
        if value is MISSING:
            return MISSING, True
        self.counts.add("remote_hits")
        self._store_if_fresh(key, value, since, self._local_ttl(ttl))
        return value, False

    def _get_flow(self, key: str, default: Any) -> Flow:
        value, _ = yield from self._read_flow(key, self._gen, None)
        return default if value is MISSING else value

    def _load_flow(self, key: str, ttl: Optional[float], loader: Callable[[], Any]) -> Flow:
        since = self._gen
        value, bad = yield from self._read_flow(key, since, ttl)
        if value is not MISSING:
            return value
        try:
            value = yield loader
        except BaseException:
            self.counts.add("load_errors")
            raise
        self.counts.add("loads")
        # A fill does not overwrite a value someone wrote meanwhile (NX), but
        # it does replace a value that could not be used (oversized, garbage).
        yield from self._write_flow(key, value, ttl, since, nx=not bad)
        return value

    def _set_flow(self, key: str, value: Any, ttl: Optional[float]) -> Flow:
        return (yield from self._write_flow(key, value, ttl, self._gen, nx=False))

    def _write_flow(self, key: str, value: Any, ttl: Optional[float], since: int, nx: bool) -> Flow:
        if ttl is None:
            ttl = self.ttl
        data = self.codec.encode(key, value)
        if data is None:
            # Refused: an older value must not be served in its place.
            yield from self._delete_flow(key)
            return False
        local_ttl = self._local_ttl(ttl)
        if not self._remote_available():
            return self._skip_write(key, value, since, local_ttl, pending=not nx)
        px = None if ttl is None else max(1, int(ttl * 1000))
        try:
            res = yield self._with_messages(
                "set", (self._prefix + key, data), {"px": px, "nx": nx}, [key]
            )
        except REDIS_ERRORS as exc:
            self._failed(exc, "SET")
            return self._skip_write(key, value, since, local_ttl, pending=not nx)
        self._redis_ok()
        stored = bool(res[0])
        self.counts.add("invalidations_sent")
        if stored:
            self.counts.add("writes")
        self._own_change(key, value, since, local_ttl, store=stored)
        return stored

    def _skip_write(
        self, key: str, value: Any, since: int, ttl: Optional[float], pending: bool
    ) -> bool:
        self.counts.add("skipped_writes")
        if pending:
            self._add_pending(key)
        self._own_change(key, value, since, ttl, store=True)  # this instance reads its write
        return False

    def _delete_flow(self, key: str) -> Flow:
        if self._remote_available():
            try:
                res = yield self._with_messages("delete", (self._prefix + key,), {}, [key])
            except REDIS_ERRORS as exc:
                self._failed(exc, "DEL")
            else:
                self._redis_ok()
                self.counts.add("deletes")
                self.counts.add("invalidations_sent")
                self._own_change(key, None, 0, None, store=False)
                return bool(res[0])
        self.counts.add("skipped_writes")
        self._add_pending(key)
        return self._forget_key(key)

    def _flush_flow(self) -> Flow:
        """Delete (and invalidate) the keys changed while Redis was away."""
        with self._lock:
            keys = list(itertools.islice(self._pending, 256))
        if not keys:
            return 0
        try:
            yield self._with_messages("delete", tuple(self._prefix + k for k in keys), {}, keys)
        except REDIS_ERRORS as exc:
            self._failed(exc, "DEL (pending)")
            return 0
        self._redis_ok()
        with self._lock:
            for k in keys:
                self._pending.pop(k, None)
        self.counts.add("invalidations_sent", len(keys))
        return len(keys)

    def _clear_flow(self, remote: bool) -> Flow:
        """The local tier; with ``remote``, every key of the namespace in Redis (SCAN +
        UNLINK, 500 at a time) and, through a message, every other instance's local tier."""
        self._forget_local()
        if not remote:
            return None
        match, cursor, batch = _glob_escape(self._prefix) + "*", 0, []
        try:
            while True:
                cursor, keys = yield functools.partial(
                    self.redis.scan, cursor, match=match, count=1000
                )
                batch += keys
                while len(batch) >= 500 or (batch and not cursor):
                    yield functools.partial(self.redis.unlink, *batch[:500])
                    del batch[:500]
                if not cursor:
                    break
            yield functools.partial(self.redis.publish, self.channel, self._message("*"))
            self.counts.add("invalidations_sent")
        except REDIS_ERRORS as exc:
            self._failed(exc, "clear")
        return None

    # -- stats ------------------------------------------------------------------------

    def counters(self) -> TierCounters:
        """Every monotonic counter as a plain int (see ``COUNTERS``)."""
        try:
            lst = self.local.stats()
            local_hits, local_misses = int(lst.get("hits", 0)), int(lst.get("misses", 0))
        except Exception:  # noqa: BLE001 - a broken local tier counts nothing
            local_hits = local_misses = 0
        return self.counts.snapshot(local_hits, local_misses)

    def stats(self) -> TierStats:
        """Counters, state, and the local tier's own stats under ``local``."""
        c = self.counters()
        lookups = c["local_hits"] + c["local_misses"]
        with self._lock:
            pending = len(self._pending)
        try:
            local: dict[str, Any] = dict(self.local.stats())
        except Exception as exc:  # noqa: BLE001 - reported in its place
            local = {"error": f"{type(exc).__name__}: {exc}"}
        return {
            **c,
            "oversized_refusals": c["oversized_writes"] + c["oversized_reads"],
            "local_hit_rate": c["local_hits"] / lookups if lookups else 0.0,
            "namespace": self.namespace,
            "channel": self.channel,
            "instance_id": self.instance_id,
            "serializer": getattr(self.serializer, "name", type(self.serializer).__name__),
            "connected": self._connected,
            "redis_available": self._remote_available(),
            "pending_invalidations": pending,
            "pending_dropped": self._pending_dropped,
            "max_value_bytes": self.codec.max_bytes,
            "local": local,
        }

    def register(self, manager: Any, name: Optional[str] = None) -> None:
        """Add this tier's ``stats()`` to ``manager.stats()["sources"]``.

        Needs ``manager.register_stats_source(name, callable)``; the local
        tier itself is best created with ``manager.create_cache`` so the
        manager also trims it under memory pressure.
        """
        hook = getattr(manager, "register_stats_source", None)
        if not callable(hook):
            raise TypeError("this CacheManager has no register_stats_source(name, callable)")
        hook(name or f"redis:{self.namespace}", self.stats)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} namespace={self.namespace!r} "
            f"connected={self._connected} local={type(self.local).__name__}>"
        )
