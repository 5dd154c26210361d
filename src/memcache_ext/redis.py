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
another instance changed. Only this module imports redis-py: importing
``memcache_ext`` never does.

Design, precisely:

* Keys are ``str`` (or pass ``key_encoder``, a function from your key to a
  ``str``). Redis key: ``f"{namespace}:{key}"``; the local tier is keyed by
  the encoded key and should be dedicated to one tier.
* Values are serialized by a pluggable serializer (:class:`PickleSerializer`,
  the default, for trusted deployments only: whoever can write to Redis can
  run code in every instance; :class:`JsonSerializer`;
  :class:`MsgpackSerializer` when msgpack is installed). A serialized value
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

import asyncio
import inspect
import itertools
import json
import logging
import pickle
import random
import threading
import time
import uuid
from typing import Any, Awaitable, Callable, Generator, Optional, Union

try:
    import redis as _redis
    import redis.exceptions as _redis_exc
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "memcache_ext.redis needs redis-py: pip install 'memcache-ext[redis]' "
        f"(or pip install 'redis>=5') ({exc})") from exc

from . import _fastcall

__all__ = [
    "TieredCache", "AsyncTieredCache", "Serializer", "PickleSerializer",
    "JsonSerializer", "MsgpackSerializer", "COUNTERS",
]

logger = logging.getLogger("memcache_ext.redis")

#: Errors that mean "Redis did not answer properly": counted, never raised.
REDIS_ERRORS: tuple[type[BaseException], ...] = (_redis_exc.RedisError, OSError)
_DOWN_ERRORS: tuple[type[BaseException], ...] = (
    _redis_exc.ConnectionError, _redis_exc.TimeoutError, OSError)

#: The monotonic counters of ``stats()`` / ``counters()``, in order.
COUNTERS = (
    "local_hits", "local_misses", "remote_hits", "remote_misses", "remote_skipped",
    "loads", "load_errors", "shared_loads", "writes", "deletes", "skipped_writes",
    "invalidations_sent", "invalidations_received", "invalidations_ignored_own",
    "bad_messages", "redis_errors", "reconnects", "local_clears",
    "oversized_writes", "oversized_reads", "serialization_failures",
    "deserialization_failures",
)
_OWN_COUNTERS = COUNTERS[2:]

_MISS: Any = object()
_LOAD: Any = object()  # the flow asks its driver to call the loader
_MAX_KEY_GENS = 65_536  # per-key generations kept; past it, everything in flight is stale


# -- serializers ---------------------------------------------------------------

class Serializer:
    """What a tier needs from a serializer: ``dumps(value) -> bytes``, ``loads(bytes)``."""

    name = "serializer"

    def dumps(self, value: Any) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    def loads(self, data: bytes) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class PickleSerializer(Serializer):
    """pickle, for trusted deployments only (unpickling runs code chosen by whoever wrote)."""

    name = "pickle"

    def __init__(self, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
        self.protocol = protocol

    def dumps(self, value: Any) -> bytes:
        return pickle.dumps(value, protocol=self.protocol)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)


class JsonSerializer(Serializer):
    """JSON (UTF-8): safe on untrusted data; tuples come back as lists."""

    name = "json"

    def __init__(self, default: Optional[Callable[[Any], Any]] = None) -> None:
        self.default = default

    def dumps(self, value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False, default=self.default).encode()

    def loads(self, data: bytes) -> Any:
        return json.loads(data)


class MsgpackSerializer(Serializer):
    """MessagePack (needs the ``msgpack`` package): compact and safe."""

    name = "msgpack"

    def __init__(self) -> None:
        try:
            import msgpack
        except ImportError as exc:
            raise ImportError("MsgpackSerializer needs msgpack: pip install msgpack") from exc
        self._msgpack = msgpack

    def dumps(self, value: Any) -> bytes:
        return self._msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]

    def loads(self, data: bytes) -> Any:
        return self._msgpack.unpackb(data, raw=False, strict_map_key=False)


_SERIALIZERS: dict[str, Callable[[], Serializer]] = {
    "pickle": PickleSerializer, "json": JsonSerializer, "msgpack": MsgpackSerializer,
}


def _make_serializer(serializer: Union[str, Serializer, None]) -> Any:
    if serializer is None:
        return PickleSerializer()
    if isinstance(serializer, str):
        try:
            return _SERIALIZERS[serializer]()
        except KeyError:
            raise ValueError(f"unknown serializer {serializer!r}; "
                             f"expected one of {sorted(_SERIALIZERS)}") from None
    if not (callable(getattr(serializer, "dumps", None))
            and callable(getattr(serializer, "loads", None))):
        raise TypeError("serializer must have dumps(value) -> bytes and loads(bytes)")
    return serializer


# -- the shared core -------------------------------------------------------------

class _Failed:
    """A Redis call that raised: what the driver hands back to the flow."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


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


Flow = Generator[Any, Any, Any]


class _TierCore:
    """Everything but the I/O: keys, serialization, freshness, stats, messages.

    The operations are written once, as generators ("flows") that yield the
    Redis calls they need (``("get", rkey)``, ``("set", ...)``, ``("del",
    ...)``) or ``_LOAD``; a sync driver (``TieredCache``) or an async one
    (``AsyncTieredCache``) performs them and sends back the result, or a
    ``_Failed`` when Redis raised.
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
            raise ValueError("the Redis client must not decode responses "
                             "(decode_responses=False): values are bytes")
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
        self.local = local
        self.redis = redis_client
        self.namespace = namespace
        self.channel = f"{namespace}:invalidate"
        self.ttl = _opt_seconds("ttl", ttl)
        self.local_ttl = _opt_seconds("local_ttl", local_ttl)
        self.serializer = _make_serializer(serializer)
        self.max_value_bytes = max_value_bytes
        self.key_encoder = key_encoder
        self.retry_interval = float(_opt_seconds("retry_interval", retry_interval) or 0)
        self.poll_interval = float(_opt_seconds("poll_interval", poll_interval) or 0.2)
        self.backoff = (float(lo), float(hi))
        self.max_pending = max_pending
        self.instance_id = uuid.uuid4().hex
        self._prefix = f"{namespace}:"
        self._lget = local.get  # the hit path: one bound C call
        self._lock = threading.RLock()  # generations + local stores; never held over I/O
        self._gen = 0                    # bumped by every invalidation
        self._floor_gen = 0              # reads started before this are stale
        self._key_gen: dict[str, int] = {}
        self._counts = dict.fromkeys(_OWN_COUNTERS, 0)
        self._counts_lock = threading.Lock()
        self._pending: dict[str, None] = {}  # keys written/deleted while Redis was away
        self._pending_dropped = 0
        self._down_until = 0.0           # circuit breaker
        self._connected = False          # listener subscribed
        self._ever_subscribed = False
        self._listener_error_logged = False

    # -- small helpers -------------------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        with self._counts_lock:
            self._counts[name] += n

    def _local_first(self, key: Any) -> tuple[Any, Any]:
        """(the local tier's value or _MISS, the key to use from here on: the
        Redis key after a miss)."""
        enc = self.key_encoder
        k = key if enc is None else self._key(key)
        value = self._lget(k, _MISS)
        if value is _MISS and enc is None:
            k = self._key(k)
        return value, k

    def _forget_local(self) -> None:
        """Clear the local tier; reads in flight must not refill it with what they read."""
        with self._lock:
            self._gen += 1
            self._floor_gen = self._gen
            self._key_gen.clear()
            self.local.clear()

    def _key(self, key: Any) -> str:
        """The encoded key (validated): what the local tier and messages use."""
        enc = self.key_encoder
        if enc is not None:
            key = enc(key)
            if not isinstance(key, str):
                raise TypeError(f"key_encoder must return a str, not {type(key).__name__}")
        elif not isinstance(key, str):
            raise TypeError(f"TieredCache keys must be str, not {type(key).__name__} "
                            "(pass key_encoder= to map other keys to str)")
        return key

    def _local_ttl(self, ttl: Optional[float]) -> Optional[float]:
        ttls = [t for t in (ttl, self.local_ttl) if t is not None]
        return min(ttls) if ttls else None

    def _px(self, ttl: Optional[float]) -> Optional[int]:
        return None if ttl is None else max(1, int(ttl * 1000))

    def _message(self, op: str, key: str = "") -> bytes:
        return json.dumps([self.instance_id, op, key], separators=(",", ":"),
                          ensure_ascii=False).encode()

    def _remote_available(self) -> bool:
        return self._down_until == 0.0 or time.monotonic() >= self._down_until

    def _failed(self, failure: _Failed, what: str) -> None:
        self._count("redis_errors")
        exc = failure.exc
        if isinstance(exc, _DOWN_ERRORS):
            first = self._down_until == 0.0
            self._down_until = time.monotonic() + self.retry_interval
            if first:
                logger.warning("redis tier %r: %s failed (%s: %s); serving from the local "
                               "tier and the loader", self.namespace, what,
                               type(exc).__name__, exc)
        else:
            logger.warning("redis tier %r: %s failed: %s: %s", self.namespace, what,
                           type(exc).__name__, exc)

    def _redis_ok(self) -> None:
        if self._down_until != 0.0:
            self._down_until = 0.0
            logger.info("redis tier %r: Redis answers again", self.namespace)

    def _encode_value(self, key: str, value: Any) -> Optional[bytes]:
        try:
            data = self.serializer.dumps(value)
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"dumps() returned {type(data).__name__}, not bytes")
        except Exception as exc:  # noqa: BLE001 - a bad value is refused, not raised
            self._count("serialization_failures")
            logger.warning("redis tier %r: cannot serialize the value of %r: %s: %s",
                           self.namespace, key, type(exc).__name__, exc)
            return None
        if self.max_value_bytes is not None and len(data) > self.max_value_bytes:
            self._count("oversized_writes")
            logger.warning("redis tier %r: value of %r refused: %d bytes > max_value_bytes=%d",
                           self.namespace, key, len(data), self.max_value_bytes)
            return None
        return bytes(data)

    def _decode_value(self, key: str, raw: Any) -> Any:
        if self.max_value_bytes is not None and len(raw) > self.max_value_bytes:
            self._count("oversized_reads")
            logger.warning("redis tier %r: value of %r in Redis ignored: %d bytes > "
                           "max_value_bytes=%d", self.namespace, key, len(raw),
                           self.max_value_bytes)
            return _MISS
        try:
            return self.serializer.loads(raw)
        except Exception as exc:  # noqa: BLE001 - a bad value is a miss
            self._count("deserialization_failures")
            logger.warning("redis tier %r: value of %r in Redis does not deserialize "
                           "(%s: %s); treated as a miss", self.namespace, key,
                           type(exc).__name__, exc)
            return _MISS

    # -- freshness -------------------------------------------------------------

    def _bump(self, key: str) -> None:
        """Under ``_lock``: ``key`` changed; reads of it in flight are stale."""
        self._gen += 1
        if len(self._key_gen) >= _MAX_KEY_GENS:
            self._key_gen.clear()
            self._floor_gen = self._gen
        self._key_gen[key] = self._gen

    def _stale(self, key: str, since: int) -> bool:
        return since < self._floor_gen or self._key_gen.get(key, 0) > since

    def _store_if_fresh(self, key: str, value: Any, since: int, ttl: Optional[float]) -> None:
        with self._lock:
            if not self._stale(key, since):
                self._store_local(key, value, ttl)

    def _store_local(self, key: str, value: Any, ttl: Optional[float]) -> None:
        try:
            if ttl is None:
                self.local.set(key, value)
            else:
                self.local.set(key, value, ttl=ttl)
        except Exception as exc:  # noqa: BLE001 - e.g. a sizeof that raises: not cached
            logger.warning("redis tier %r: local store of %r failed: %s: %s",
                           self.namespace, key, type(exc).__name__, exc)

    def _own_change(self, key: str, value: Any, since: int, ttl: Optional[float]) -> None:
        """After our own write (``value``) or delete (``_MISS``) of ``key``."""
        with self._lock:
            fresh = not self._stale(key, since)
            self._bump(key)
            if value is not _MISS and fresh:
                self._store_local(key, value, ttl)
            else:
                self.local.pop(key, None)

    def _add_pending(self, key: str) -> None:
        with self._lock:
            if key in self._pending:
                return
            if len(self._pending) >= self.max_pending:
                self._pending_dropped += 1
                return
            self._pending[key] = None

    # -- the operations, as flows ---------------------------------------------------

    def _read_flow(self, key: str, since: int, ttl: Optional[float]) -> Flow:
        """Redis after a local miss: returns (value or _MISS, found_bad_value)."""
        if not self._remote_available():
            self._count("remote_skipped")
            return _MISS, False
        raw = yield ("get", self._prefix + key)
        if isinstance(raw, _Failed):
            self._failed(raw, "GET")
            return _MISS, False
        self._redis_ok()
        if raw is None:
            self._count("remote_misses")
            return _MISS, False
        value = self._decode_value(key, raw)
        if value is _MISS:
            return _MISS, True
        self._count("remote_hits")
        self._store_if_fresh(key, value, since, self._local_ttl(ttl))
        return value, False

    def _get_flow(self, key: str, default: Any) -> Flow:
        value, _ = yield from self._read_flow(key, self._gen, None)
        return default if value is _MISS else value

    def _load_flow(self, key: str, ttl: Optional[float]) -> Flow:
        since = self._gen
        value, bad = yield from self._read_flow(key, since, ttl)
        if value is not _MISS:
            return value
        value = yield _LOAD
        self._count("loads")
        # A fill does not overwrite a value someone wrote meanwhile (NX), but
        # it does replace a value that could not be used (oversized, garbage).
        yield from self._write_flow(key, value, ttl, since, nx=not bad)
        return value

    def _set_flow(self, key: str, value: Any, ttl: Optional[float]) -> Flow:
        return (yield from self._write_flow(key, value, ttl, self._gen, nx=False))

    def _write_flow(self, key: str, value: Any, ttl: Optional[float], since: int,
                    nx: bool) -> Flow:
        if ttl is None:
            ttl = self.ttl
        data = self._encode_value(key, value)
        if data is None:
            # Refused: an older value must not be served in its place.
            yield from self._delete_flow(key)
            return False
        local_ttl = self._local_ttl(ttl)
        if not self._remote_available():
            return self._skip_write(key, value, since, local_ttl, pending=not nx)
        res = yield ("set", self._prefix + key, data, self._px(ttl), nx,
                     self._message("k", key))
        if isinstance(res, _Failed):
            self._failed(res, "SET")
            return self._skip_write(key, value, since, local_ttl, pending=not nx)
        self._redis_ok()
        stored = bool(res[0])
        self._count("invalidations_sent")
        if stored:
            self._count("writes")
        self._own_change(key, value if stored else _MISS, since, local_ttl)
        return stored

    def _skip_write(self, key: str, value: Any, since: int, ttl: Optional[float],
                    pending: bool) -> bool:
        self._count("skipped_writes")
        if pending:
            self._add_pending(key)
        self._own_change(key, value, since, ttl)  # this instance still reads its write
        return False

    def _delete_flow(self, key: str) -> Flow:
        if self._remote_available():
            res = yield ("del", [self._prefix + key], [self._message("k", key)])
            if not isinstance(res, _Failed):
                self._redis_ok()
                self._count("deletes")
                self._count("invalidations_sent")
                self._own_change(key, _MISS, 0, None)
                return bool(res[0])
            self._failed(res, "DEL")
        self._count("skipped_writes")
        self._add_pending(key)
        with self._lock:
            had = self.local.pop(key, _MISS) is not _MISS
            self._bump(key)
        return had

    def _flush_flow(self) -> Flow:
        """Delete (and invalidate) the keys changed while Redis was away."""
        with self._lock:
            keys = list(itertools.islice(self._pending, 256))
        if not keys:
            return 0
        res = yield ("del", [self._prefix + k for k in keys],
                     [self._message("k", k) for k in keys])
        if isinstance(res, _Failed):
            self._failed(res, "DEL (pending)")
            return 0
        self._redis_ok()
        with self._lock:
            for k in keys:
                self._pending.pop(k, None)
        self._count("invalidations_sent", len(keys))
        return len(keys)

    # -- invalidations received ----------------------------------------------------

    def _on_pubsub(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if isinstance(kind, bytes):
            kind = kind.decode()
        if kind == "subscribe":
            self._on_subscribed()
        elif kind == "message":
            self._on_message(msg.get("data"))

    def _on_message(self, data: Any) -> None:
        try:
            src, op, key = json.loads(data)
            if not (isinstance(src, str) and isinstance(op, str) and isinstance(key, str)):
                raise ValueError("bad field types")
        except Exception:  # noqa: BLE001 - someone else's garbage on our channel
            self._count("bad_messages")
            logger.debug("redis tier %r: bad invalidation message %r", self.namespace, data)
            return
        if src == self.instance_id:
            self._count("invalidations_ignored_own")
            return
        self._count("invalidations_received")
        with self._lock:
            if op == "*":
                self._gen += 1
                self._floor_gen = self._gen
                self._key_gen.clear()
                self.local.clear()
                clear = True
            else:
                self._bump(key)
                self.local.pop(key, None)
                clear = False
        if clear:
            self._count("local_clears")

    def _on_subscribed(self) -> None:
        with self._lock:
            again = self._ever_subscribed
            self._ever_subscribed = True
            self._connected = True
            self._listener_error_logged = False
            # Anything read before now may have missed an invalidation.
            self._gen += 1
            self._floor_gen = self._gen
            self._key_gen.clear()
            clear = again or len(self.local) > 0
            if clear:
                self.local.clear()
        self._down_until = 0.0
        if again:
            self._count("reconnects")
            logger.info("redis tier %r: listener resubscribed; local tier cleared",
                        self.namespace)
        if clear:
            self._count("local_clears")

    def _on_listener_error(self, exc: BaseException) -> None:
        self._connected = False
        self._count("redis_errors")
        if not self._listener_error_logged:
            self._listener_error_logged = True
            logger.warning("redis tier %r: invalidation listener lost Redis (%s: %s); "
                           "retrying with backoff", self.namespace, type(exc).__name__, exc)

    def _next_backoff(self, current: float) -> tuple[float, float]:
        """(sleep now, next backoff): full jitter on an exponential schedule."""
        return random.uniform(current / 2, current), min(current * 2, self.backoff[1])

    # -- stats ------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Every monotonic counter as a plain int (see ``COUNTERS``)."""
        with self._counts_lock:
            own = dict(self._counts)
        try:
            lst = self.local.stats()
            local_hits, local_misses = int(lst.get("hits", 0)), int(lst.get("misses", 0))
        except Exception:  # noqa: BLE001
            local_hits = local_misses = 0
        return {"local_hits": local_hits, "local_misses": local_misses, **own}

    def stats(self) -> dict[str, Any]:
        """Counters, state, and the local tier's own stats under ``local``."""
        c: dict[str, Any] = self.counters()
        c["oversized_refusals"] = c["oversized_writes"] + c["oversized_reads"]
        lookups = c["local_hits"] + c["local_misses"]
        c["local_hit_rate"] = c["local_hits"] / lookups if lookups else 0.0
        with self._lock:
            pending = len(self._pending)
        c.update({
            "namespace": self.namespace,
            "channel": self.channel,
            "instance_id": self.instance_id,
            "serializer": getattr(self.serializer, "name", type(self.serializer).__name__),
            "connected": self._connected,
            "redis_available": self._remote_available(),
            "pending_invalidations": pending,
            "pending_dropped": self._pending_dropped,
            "max_value_bytes": self.max_value_bytes,
        })
        try:
            c["local"] = dict(self.local.stats())
        except Exception as exc:  # noqa: BLE001
            c["local"] = {"error": f"{type(exc).__name__}: {exc}"}
        return c

    def metrics(self, prefix: str = "memcache_ext_tier") -> list[tuple[str, str, dict[str, str], float]]:
        """Prometheus-friendly samples: ``(name, "counter"|"gauge", labels, value)``.

        Counters are named ``{prefix}_{counter}_total``; labels hold the namespace.
        """
        labels = {"namespace": self.namespace}
        out = [(f"{prefix}_{name}_total", "counter", labels, float(v))
               for name, v in self.counters().items()]
        with self._lock:
            pending = len(self._pending)
        out.append((f"{prefix}_connected", "gauge", labels, 1.0 if self._connected else 0.0))
        out.append((f"{prefix}_pending_invalidations", "gauge", labels, float(pending)))
        return out

    def prometheus_text(self, prefix: str = "memcache_ext_tier") -> str:
        """``metrics()`` in the Prometheus text exposition format."""
        lines = []
        for name, kind, labels, value in self.metrics(prefix):
            lab = ",".join(f'{k}="{_prom_escape(v)}"' for k, v in labels.items())
            lines.append(f"# TYPE {name} {kind}")
            lines.append(f"{name}{{{lab}}} {value:g}")
        return "\n".join(lines) + "\n"

    def register(self, manager: Any, name: Optional[str] = None) -> None:
        """Add this tier's ``stats()`` to ``manager.stats()``.

        Needs ``manager.register_stats_source(name, callable)``; the local
        tier itself is best created with ``manager.create_cache`` so the
        manager also trims it under memory pressure.
        """
        hook = getattr(manager, "register_stats_source", None)
        if not callable(hook):
            raise TypeError("this CacheManager has no register_stats_source(name, callable)")
        hook(name or f"redis:{self.namespace}", self.stats)

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} namespace={self.namespace!r} "
                f"connected={self._connected} local={type(self.local).__name__}>")


def _prom_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


# -- sync ------------------------------------------------------------------------


class _Flight:
    __slots__ = ("event", "value", "error")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.value: Any = None
        self.error: Optional[BaseException] = None


class TieredCache(_TierCore):
    """A local cache in front of Redis, for a sync ``redis.Redis`` client.

    ``TieredCache(local, redis_client, namespace, *, ttl=300, local_ttl=None,
    serializer="pickle", max_value_bytes=1 MiB, key_encoder=None,
    retry_interval=1.0, backoff=(0.05, 5.0), poll_interval=0.2,
    max_pending=10_000, start=True)``

    ``ttl``: Redis expiry in seconds (None: none); ``local_ttl``: longest a
    local copy lives (None: ``ttl``, and the local cache's own ttl). Configure
    ``socket_timeout``/``socket_connect_timeout`` on the client: they bound
    how long a request can wait for a slow Redis. The listener thread starts
    at construction (``start=False``: call ``start()``); ``close()`` stops it.
    """

    def __init__(self, local: Any, redis_client: Any, namespace: str, *,
                 start: bool = True, **options: Any) -> None:
        super().__init__(local, redis_client, namespace, **options)
        self._flights: dict[str, _Flight] = {}
        self._flights_lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if self.key_encoder is not None:
            self.get = self._get_encoded  # type: ignore[method-assign]
        else:
            # The local hit in C over a CLruCache; Python runs only on a local miss.
            self.get = _fastcall.get_or(local, self._get_remote)  # type: ignore[method-assign]
        if start:
            self.start()

    # -- driver ----------------------------------------------------------------------

    def _run(self, flow: Flow, loader: Optional[Callable[[], Any]] = None) -> Any:
        try:
            op = next(flow)
            while True:
                if op is _LOAD:
                    try:
                        result = loader()  # type: ignore[misc]
                    except BaseException:
                        self._count("load_errors")
                        flow.close()
                        raise
                else:
                    try:
                        result = self._io(op)
                    except REDIS_ERRORS as exc:
                        result = _Failed(exc)
                op = flow.send(result)
        except StopIteration as stop:
            return stop.value

    def _io(self, op: tuple[Any, ...]) -> Any:
        kind = op[0]
        if kind == "get":
            return self.redis.get(op[1])
        pipe = self.redis.pipeline(transaction=False)
        if kind == "set":
            _, rkey, data, px, nx, msg = op
            pipe.set(rkey, data, px=px, nx=nx)
            pipe.publish(self.channel, msg)
        else:  # "del"
            _, rkeys, msgs = op
            pipe.delete(*rkeys)
            for msg in msgs:
                pipe.publish(self.channel, msg)
        return pipe.execute()

    # -- public API ---------------------------------------------------------------------

    def get(self, key: Any, default: Any = None) -> Any:
        """The value from the local tier, else from Redis (then kept locally), else ``default``."""
        # The hit path is one C call; with a key_encoder, __init__ installs _get_encoded.
        value = self._lget(key, _MISS)
        if value is not _MISS:
            return value
        return self._run(self._get_flow(self._key(key), default))

    def _get_remote(self, key: Any, default: Any = None) -> Any:
        """get() after a local miss (the compiled hit path's fallback)."""
        return self._run(self._get_flow(self._key(key), default))

    def _get_encoded(self, key: Any, default: Any = None) -> Any:
        k = self._key(key)
        value = self._lget(k, _MISS)
        if value is not _MISS:
            return value
        return self._run(self._get_flow(k, default))

    def get_or_set(self, key: Any, loader: Callable[[], Any], ttl: Optional[float] = None) -> Any:
        """The cached value, else ``loader()``, called once per instance for concurrent callers.

        The loaded value is written to Redis (unless another instance wrote
        the key meanwhile) and to the local tier. Exceptions from the loader
        reach every waiting caller and nothing is cached.
        """
        value, k = self._local_first(key)
        if value is not _MISS:
            return value
        with self._flights_lock:
            flight = self._flights.get(k)
            leader = flight is None
            if leader:
                flight = self._flights[k] = _Flight()
        assert flight is not None
        if not leader:
            self._count("shared_loads")
            flight.event.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value
        try:
            flight.value = self._run(self._load_flow(k, ttl), loader)
            return flight.value
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._flights_lock:
                self._flights.pop(k, None)
            flight.event.set()

    def set(self, key: Any, value: Any, ttl: Optional[float] = None) -> bool:
        """Write to Redis and the local tier and invalidate other instances' copies.

        True if Redis stored it; False if it was refused (oversized or not
        serializable: the key is then deleted everywhere) or Redis was
        unavailable (the local tier keeps it; Redis's copy of the key is
        deleted once Redis answers again).
        """
        return bool(self._run(self._set_flow(self._key(key), value, ttl)))

    def delete(self, key: Any) -> bool:
        """Delete everywhere and invalidate; True if Redis (or, while it is away, the local tier) had it."""
        return bool(self._run(self._delete_flow(self._key(key))))

    def clear(self, remote: bool = True) -> None:
        """Clear the local tier and, with ``remote``, every key of the namespace in Redis
        (SCAN + UNLINK) and every other instance's local tier."""
        self._forget_local()
        if not remote:
            return
        try:
            batch: list[Any] = []
            for rkey in self.redis.scan_iter(match=_glob_escape(self._prefix) + "*", count=1000):
                batch.append(rkey)
                if len(batch) >= 500:
                    self.redis.unlink(*batch)
                    batch = []
            if batch:
                self.redis.unlink(*batch)
            self.redis.publish(self.channel, self._message("*"))
            self._count("invalidations_sent")
        except REDIS_ERRORS as exc:
            self._failed(_Failed(exc), "clear")

    # -- listener -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the invalidation listener thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._listen, daemon=True,
                                        name=f"memcache_ext.redis[{self.namespace}]")
        self._thread.start()

    def wait_ready(self, timeout: Optional[float] = None) -> bool:
        """Wait until the listener has subscribed once; False on timeout."""
        return self._ready.wait(timeout)

    @property
    def connected(self) -> bool:
        """Whether the listener is subscribed now."""
        return self._connected

    def close(self, timeout: float = 5.0) -> None:
        """Stop the listener thread (the client is the caller's to close)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._connected = False

    def __enter__(self) -> "TieredCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _listen(self) -> None:
        delay = self.backoff[0]
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self.redis.pubsub()
                pubsub.subscribe(self.channel)
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=self.poll_interval)
                    if msg is not None:
                        self._on_pubsub(msg)
                        if msg.get("type") in ("subscribe", b"subscribe"):
                            delay = self.backoff[0]
                            self._ready.set()
                    if self._pending and self._connected:
                        self._run(self._flush_flow())
            except Exception as exc:  # noqa: BLE001 - the listener must survive anything
                self._on_listener_error(exc)
                sleep, delay = self._next_backoff(delay)
                self._stop.wait(sleep)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001
                        pass
        self._connected = False


# -- async ------------------------------------------------------------------------


class AsyncTieredCache(_TierCore):
    """The same tier for a ``redis.asyncio.Redis`` client; methods are coroutines.

    Start the listener task with ``await tier.start()`` or ``async with``;
    ``await tier.aclose()`` stops it. One instance belongs to one event loop.
    Concurrent ``get_or_set`` calls for a key share one load (a task:
    cancelling one caller cancels neither the load nor the others).
    """

    def __init__(self, local: Any, redis_client: Any, namespace: str, **options: Any) -> None:
        super().__init__(local, redis_client, namespace, **options)
        self._flights: dict[str, "asyncio.Future[Any]"] = {}
        self._task: Optional["asyncio.Task[None]"] = None
        self._ready_flag = False
        self._closing = False

    async def _run(self, flow: Flow, loader: Optional[Callable[[], Any]] = None) -> Any:
        try:
            op = next(flow)
            while True:
                if op is _LOAD:
                    try:
                        result = loader()  # type: ignore[misc]
                        if inspect.isawaitable(result):
                            result = await result
                    except BaseException:
                        self._count("load_errors")
                        flow.close()
                        raise
                else:
                    try:
                        result = await self._io(op)
                    except REDIS_ERRORS as exc:
                        result = _Failed(exc)
                op = flow.send(result)
        except StopIteration as stop:
            return stop.value

    async def _io(self, op: tuple[Any, ...]) -> Any:
        kind = op[0]
        if kind == "get":
            return await self.redis.get(op[1])
        pipe = self.redis.pipeline(transaction=False)
        if kind == "set":
            _, rkey, data, px, nx, msg = op
            pipe.set(rkey, data, px=px, nx=nx)
            pipe.publish(self.channel, msg)
        else:
            _, rkeys, msgs = op
            pipe.delete(*rkeys)
            for msg in msgs:
                pipe.publish(self.channel, msg)
        try:
            return await pipe.execute()
        finally:
            await pipe.reset()

    async def get(self, key: Any, default: Any = None) -> Any:
        enc = self.key_encoder
        k = key if enc is None else self._key(key)
        value = self._lget(k, _MISS)
        if value is not _MISS:
            return value
        return await self._run(self._get_flow(self._key(k) if enc is None else k, default))

    async def get_or_set(self, key: Any, loader: Callable[[], Union[Any, Awaitable[Any]]],
                         ttl: Optional[float] = None) -> Any:
        """As ``TieredCache.get_or_set``; ``loader`` may be sync or return an awaitable."""
        value, k = self._local_first(key)
        if value is not _MISS:
            return value
        task = self._flights.get(k)
        if task is None:
            task = asyncio.ensure_future(self._run(self._load_flow(k, ttl), loader))
            self._flights[k] = task

            def done(t: "asyncio.Future[Any]", k: str = k) -> None:
                if self._flights.get(k) is t:
                    del self._flights[k]
                if not t.cancelled():
                    t.exception()  # retrieved: no "never retrieved" warning

            task.add_done_callback(done)
        else:
            self._count("shared_loads")
        return await asyncio.shield(task)

    async def set(self, key: Any, value: Any, ttl: Optional[float] = None) -> bool:
        return bool(await self._run(self._set_flow(self._key(key), value, ttl)))

    async def delete(self, key: Any) -> bool:
        return bool(await self._run(self._delete_flow(self._key(key))))

    async def clear(self, remote: bool = True) -> None:
        self._forget_local()
        if not remote:
            return
        try:
            batch: list[Any] = []
            async for rkey in self.redis.scan_iter(match=_glob_escape(self._prefix) + "*",
                                                   count=1000):
                batch.append(rkey)
                if len(batch) >= 500:
                    await self.redis.unlink(*batch)
                    batch = []
            if batch:
                await self.redis.unlink(*batch)
            await self.redis.publish(self.channel, self._message("*"))
            self._count("invalidations_sent")
        except REDIS_ERRORS as exc:
            self._failed(_Failed(exc), "clear")

    async def start(self) -> None:
        """Start the listener task on the running loop (idempotent)."""
        if self._task is not None and not self._task.done():
            return
        self._closing = False
        self._task = asyncio.get_running_loop().create_task(
            self._listen(), name=f"memcache_ext.redis[{self.namespace}]")

    async def wait_ready(self, timeout: Optional[float] = None) -> bool:
        """Wait until the listener has subscribed once; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ready_flag:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    @property
    def connected(self) -> bool:
        return self._connected

    async def aclose(self) -> None:
        """Stop the listener task (the client is the caller's to close)."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._connected = False

    async def __aenter__(self) -> "AsyncTieredCache":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def _listen(self) -> None:
        delay = self.backoff[0]
        try:
            while not self._closing:
                pubsub = None
                try:
                    pubsub = self.redis.pubsub()
                    await pubsub.subscribe(self.channel)
                    while not self._closing:
                        msg = await pubsub.get_message(timeout=self.poll_interval)
                        if msg is not None:
                            self._on_pubsub(msg)
                            if msg.get("type") in ("subscribe", b"subscribe"):
                                delay = self.backoff[0]
                                self._ready_flag = True
                        if self._pending and self._connected:
                            await self._run(self._flush_flow())
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the listener must survive anything
                    self._on_listener_error(exc)
                    sleep, delay = self._next_backoff(delay)
                    await asyncio.sleep(sleep)
                finally:
                    if pubsub is not None:
                        try:
                            closer = getattr(pubsub, "aclose", None) or pubsub.reset
                            await asyncio.shield(closer())
                        except BaseException:  # noqa: BLE001
                            pass
        finally:
            self._connected = False
