"""The tier's logic, once: keys, versions, the call policy, the operations as flows, stats.

See ``_flow`` for how the sync and async adapters run the flows, ``_policy``
for the call policy (own client, deadline, breaker), ``_versions`` for what a
key holds in Redis and the one script that writes it, ``_freshness`` and
``_listener`` for the local tier's freshness.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Optional, Union

import redis.exceptions as _redis_exc

from .._constants import MISSING
from ._counters import COUNTERS, Counters, TierCounters
from ._flow import Flow, RedisCall
from ._listener import Listener
from ._policy import (
    DEFAULT_DEADLINE,
    DEFAULT_PROBE_INTERVAL,
    REDIS_ERRORS,
    Breaker,
    error_kind,
    own_client,
)
from ._versions import (
    CLEAR_SCRIPT,
    WRITE_SCRIPT,
    check_version,
    clear_message,
    message_head,
    parse_version,
)
from .serializers import Codec, RateLimitedLog, Serializer, make_serializer

__all__ = [
    "TierDriver",
    "TierCounters",
    "TierStats",
    "TierClosedError",
    "COUNTERS",
    "REDIS_ERRORS",
]

#: A namespace: letters, digits and ``_ . : / - + = @ { }``, starting with a letter, digit or
#: ``_``. Glob characters (``* ? [ ] \``) would break ``clear()``'s SCAN pattern, and
#: spaces, quotes or control characters have no place in key or channel names.
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/+=@{}-]{0,199}")
_TOMBSTONE_TTL = 3600.0  # a delete's tombstone lives this long when the tier has no ttl
_CLEAR_PAGES_PER_PASS = 8  # SCAN pages (about 500 keys each) the worker clears per pass


class TierClosedError(RuntimeError):
    """An operation on a tier after ``close()``/``aclose()``."""


class TierStats(TierCounters):
    """``TieredCache.stats()`` / ``AsyncTieredCache.stats()``."""

    oversized_refusals: int
    local_hit_rate: float
    namespace: str
    channel: str
    instance_id: str
    serializer: str
    versions: Annotated[str, "'redis-counter' (the tier's own) or 'caller' (version_of)"]
    connected: Annotated[bool, "Whether the invalidation channel is up"]
    channel_state: Annotated[str, "'up' or 'down'"]
    channel_state_seconds: Annotated[float, "Seconds since the channel went up or down"]
    channel_heard_seconds: Annotated[Optional[float], "Seconds since the channel was last heard"]
    local_bypassed: Annotated[bool, "True while the local tier is dropped and bypassed"]
    max_stale: float
    breaker: Annotated[str, "'closed' (Redis in use), 'open' or 'half_open' (one probe out)"]
    breaker_state_seconds: float
    redis_available: Annotated[bool, "False while the breaker is not closed"]
    deadline: Annotated[float, "Seconds a Redis call may take"]
    listener_lag_seconds: Annotated[Optional[float], "Publish-to-apply delay of the last message"]
    listener_lag_max_seconds: Annotated[float, "Largest such delay in the last minute"]
    pending_invalidations: Annotated[int, "Keys to delete in Redis once it answers again"]
    pending_dropped: Annotated[int, "Keys not remembered (max_pending reached): a clear is owed"]
    clear_pending: Annotated[bool, "A namespace clear is owed to Redis for when it answers"]
    max_value_bytes: Optional[int]
    closed: bool
    local: Annotated[dict[str, Any], "The local tier's own stats()"]


def _seconds(name: str, value: Any, *, allow_none: bool = False, allow_zero: bool = False) -> Any:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds{' or None' if allow_none else ''}")
    if not (value >= 0 if allow_zero else value > 0):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


class TierDriver(Listener):
    """Everything but the I/O: keys, serialization, versions, freshness, the breaker, stats.

    Adapters provide ``_sleep(seconds)`` and ``_close_pubsub(pubsub)``, and drive
    the flows.
    """

    _ASYNC = False

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
        version_of: Optional[Callable[[Any], int]] = None,
        deadline: float = DEFAULT_DEADLINE,
        probe_interval: float = DEFAULT_PROBE_INTERVAL,
        max_stale: float = 1.0,
        backoff: tuple[float, float] = (0.05, 1.0),
        poll_interval: float = 0.2,
        max_pending: int = 10_000,
    ) -> None:
        if not isinstance(namespace, str):
            raise TypeError(f"namespace must be a str, not {type(namespace).__name__}")
        if not _NAMESPACE.fullmatch(namespace):
            raise ValueError(
                f"namespace {namespace!r} would break Redis key or channel names: use 1 to 200 "
                f"letters, digits and _ . : / - + = @ {{ }}, starting with a letter, digit or _"
            )
        for method in ("get", "set", "clear", "stats", "lease", "fill", "drop_lease", "invalidate"):
            if not callable(getattr(local, method, None)):
                raise TypeError(
                    f"local must be a cache of this package (CLruCache, PyLruCache, LruCache): "
                    f"it has no {method}()"
                )
        if redis_client is None:
            raise TypeError("redis_client is required")
        if key_encoder is not None and not callable(key_encoder):
            raise TypeError("key_encoder must be callable")
        if version_of is not None and not callable(version_of):
            raise TypeError("version_of must be callable (value -> int >= 0) or None")
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
        deadline = _seconds("deadline", deadline)
        probe_interval = _seconds("probe_interval", probe_interval)
        max_stale = _seconds("max_stale", max_stale, allow_zero=True)
        poll_interval = _seconds("poll_interval", poll_interval)
        ttl = _seconds("ttl", ttl, allow_none=True)
        local_ttl = _seconds("local_ttl", local_ttl, allow_none=True)
        serializer_obj = make_serializer(serializer)
        # The tier's own client (TypeError for the wrong flavour) comes last: nothing to undo.
        own = own_client(redis_client, deadline, self._ASYNC)
        super().__init__(local)
        self.user_client = redis_client
        self.redis = own
        self.namespace = namespace
        self.channel = f"{namespace}:invalidate"
        self.ttl = ttl
        self.local_ttl = local_ttl
        self.version_of = version_of
        self.deadline = deadline
        self.max_stale = max_stale
        self.poll_interval = poll_interval
        beat = min(poll_interval, max_stale / 4) if max_stale else poll_interval
        self.heartbeat = max(0.005, beat)
        # Silent this long: lost (and resubscribed). Not sooner than max_stale: a busy
        # process can starve the worker thread of the GIL for a while.
        self.channel_timeout = max(max_stale, 3 * self.heartbeat + deadline)
        self.backoff = (float(lo), float(hi))
        self.max_pending = max_pending
        self.counts = Counters()
        self.log = RateLimitedLog(60.0)
        self.breaker = Breaker(namespace, probe_interval)
        self.codec = Codec(
            serializer_obj,
            max_value_bytes,
            self.counts.add,
            f"redis tier {namespace!r}",
            MISSING,
            self.log,
        )
        self.key_encoder = key_encoder
        self.instance_id = uuid.uuid4().hex
        self._prefix = f"{namespace}:"
        self._script = own.register_script(WRITE_SCRIPT)
        self._clear_script = own.register_script(CLEAR_SCRIPT)
        self._lget = local.get  # the hit path: one bound C call
        # key -> (version to tombstone at, a token): writes that failed while Redis was
        # away. Every add makes a new entry, so a reply removes only what it answers.
        self._pending: dict[str, tuple[Optional[int], int]] = {}
        self._pending_tokens = itertools.count()
        self._pending_lock = threading.Lock()
        self._pending_dropped = 0
        # A namespace clear is owed while clears_owed > clears_done: one asked for while
        # Redis was away, or a key not remembered because the table was full.
        self._clears_owed = 0
        self._clears_done = 0
        # The worker's clear in progress: (the clears it covers, SCAN cursor, outages then).
        self._clear_cursor: Optional[tuple[int, int, int]] = None
        self._clear_backoff = 0.0
        self._clear_retry_at = 0.0
        self._closed = False
        self._clock_offset_us: Optional[float] = None  # Redis TIME minus our monotonic, in us
        self._clock_at = 0.0
        self._late_us = deadline * 1e6 / 2

    @property
    def serializer(self) -> Serializer:
        return self.codec.serializer

    @property
    def max_value_bytes(self) -> Optional[int]:
        return self.codec.max_bytes

    @property
    def closed(self) -> bool:
        return self._closed

    # -- small helpers -------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise TierClosedError(
                f"{type(self).__name__} {self.namespace!r} is closed: create a new one"
            )

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
        if not key.isascii():
            try:
                key.encode()
            except UnicodeEncodeError:  # a lone surrogate: Redis could never be sent it
                raise ValueError(f"key {key!r} cannot be encoded as UTF-8") from None
        return key

    def _local_ttl(self, ttl: Optional[float]) -> Optional[float]:
        ttls = [t for t in (ttl, self.local_ttl) if t is not None]
        return min(ttls) if ttls else None

    def _version(self, version: Any, value: Any) -> Optional[int]:
        """The caller's version of a write: ``version``, else ``version_of(value)``, else None."""
        if version is not None:
            return check_version(version)
        if self.version_of is not None:
            return check_version(self.version_of(value))
        return None

    def _count_error(self, exc: BaseException) -> str:
        kind = error_kind(exc)
        self.counts.add("redis_errors")
        self.counts.add(f"errors_{kind}")
        return kind

    def _mode(self, version: Optional[int]) -> str:
        """The scripts' version mode: "auto" (the tier's own) or "caller"."""
        return "auto" if version is None and self.version_of is None else "caller"

    def _failed(self, exc: BaseException, what: str) -> None:
        kind = self._count_error(exc)
        if kind in ("timeout", "connection"):
            self.breaker.fail(exc)  # logs once per outage
        else:
            self.log.report(
                f"error:{what}",
                "redis tier %r: %s failed: %s: %s",
                self.namespace,
                what,
                type(exc).__name__,
                exc,
            )

    def _add_pending(self, key: str, version: Optional[int]) -> None:
        with self._pending_lock:
            pending = self._pending
            if key in pending:
                old = pending[key][0]
                if old is not None and (version is None or version < old):
                    version = old  # the tombstone covers the newest version written
            elif len(pending) >= self.max_pending:
                # Too many keys to remember one by one: clear the whole namespace instead.
                self._pending_dropped += 1
                self._clears_owed += 1  # under the lock already
                self.counts.add("invalidations_dropped")
                return
            pending[key] = (version, next(self._pending_tokens))

    def _settle_pending(
        self, key: str, before: Optional[tuple[Optional[int], int]], version: Optional[int]
    ) -> None:
        """Redis answered a write of ``key`` sent when its pending entry was ``before``:
        the entry goes if it is still that one and Redis now holds its version or a newer
        one. A write that failed meanwhile (in another thread, or while a replay was in
        flight) made a new entry: it stays, to be replayed."""
        with self._pending_lock:
            entry = self._pending.get(key)
            if entry is None or entry != before:
                return
            if entry[0] is None or (version is not None and entry[0] <= version):
                del self._pending[key]

    # -- the operations, as flows ---------------------------------------------------

    def _read_flow(self, key: str) -> Flow:
        """Redis after a local miss: (value or MISSING, its version, the version field as
        read, '' if none, or None when Redis was not read, whether an unusable value is there)."""
        if not self.breaker.closed:
            self.counts.add("remote_skipped")
            return MISSING, None, None, False
        try:
            raw_v, raw_d = yield RedisCall(self.redis.hmget, self._prefix + key, "v", "d")
        except _redis_exc.ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                self._failed(exc, "HMGET")
                return MISSING, None, None, False
            # Not one of ours (written by hand, or by an older version): a miss, replaced.
            self.counts.add("deserialization_failures")
            return MISSING, None, "", True
        except REDIS_ERRORS as exc:
            self._failed(exc, "HMGET")
            return MISSING, None, None, False
        version = parse_version(raw_v)
        observed = "" if version is None else str(version)
        if raw_d is None:
            self.counts.add("remote_misses")
            return MISSING, version, observed, False
        value = self.codec.decode(key, raw_d)
        if value is MISSING:
            return MISSING, version, observed, True
        self.counts.add("remote_hits")
        return value, version, observed, False

    def _write_flow(
        self,
        key: str,
        op: str,
        data: bytes,
        ttl: Optional[float],
        version: Optional[int],
        observed: str = "",
        bad: bool = False,
        pending: Any = MISSING,
    ) -> Flow:
        """The write script: (status, version written or there, had a value), or None when
        Redis was not written (breaker open, or the call failed). ``pending``: the key's
        pending entry this write replays (default: the one there as it is sent)."""
        if not self.breaker.closed:
            return None
        if self._clock_offset_us is None:
            # No deadline can be sent before Redis's clock is known (the worker measures
            # it once subscribed, or never with start=False): measure it here, once.
            yield from self._clock_flow()
            if self._clock_offset_us is None:
                return None  # TIME failed (counted): a write without a deadline is not sent
        if pending is MISSING:
            pending = self._pending.get(key)  # one dict read: atomic
        px = 0 if ttl is None or ttl == math.inf else max(1, int(ttl * 1000))  # 0: never
        mode = self._mode(version)
        offset = self._clock_offset_us
        args = (
            op,
            mode,
            "" if version is None else str(version),
            data,
            px,
            self.channel,
            message_head(self.instance_id, key),
            observed,
            "1" if bad else "0",
            "" if offset is None else str(int(time.monotonic() * 1e6 + offset + self._late_us)),
        )
        try:
            res = yield RedisCall(self._script, keys=[self._prefix + key], args=args)
        except REDIS_ERRORS as exc:
            self._failed(exc, "write" if op != "del" else "delete")
            return None
        except BaseException:
            # Cancelled (asyncio) or closed: maybe never sent; replay it as a tombstone.
            if op != "fill":
                self._add_pending(key, version)
            raise
        status, ver, had = int(res[0]), parse_version(res[1]), bool(int(res[2]))
        if status == 3:
            self.counts.add("expired_writes")
            # Answered in time yet refused as late: Redis's clock has moved against
            # ours (a step). The next write measures it again (the worker too, before
            # its next replay): a tier without a worker (start=False) would refuse
            # every write from now on.
            self._clock_offset_us = None
            self._clock_at = 0.0
            return None
        if status == 0:
            self.counts.add("version_refusals")
        elif status == 1:
            self.counts.add("writes")
            if op != "fill":
                self.counts.add("invalidations_sent")
        if op != "fill":
            self._settle_pending(key, pending, ver)
        if op == "del":
            # A read may have filled the value this tombstone replaces while it was on its
            # way, and our own message is ignored when it comes back: drop it here (refused,
            # the tombstone says Redis holds a newer version than our local copy may be).
            with self._state_lock:
                if ver is not None:
                    self._note(key, ver)
                self.local.invalidate(key)
        return status, ver, had

    def _get_flow(self, key: str, default: Any) -> Flow:
        lease = self.local.lease(key)
        try:
            value, version, _, _ = yield from self._read_flow(key)
        except BaseException:
            self.local.drop_lease(lease)
            raise
        if value is MISSING:
            self.local.drop_lease(lease)
            return default
        self._fill(key, value, lease, self._local_ttl(self.ttl), version)
        return value

    def _load_flow(self, key: str, ttl: Optional[float], loader: Callable[[], Any]) -> Flow:
        if ttl is None:
            ttl = self.ttl
        lease = self.local.lease(key)
        ended = False
        try:
            value, version, observed, bad = yield from self._read_flow(key)
            if value is not MISSING:
                ended = True
                self._fill(key, value, lease, self._local_ttl(ttl), version)
                return value
            try:
                value = yield loader
            except BaseException:
                self.counts.add("load_errors")
                raise
            self.counts.add("loads")
            fill_version = self._version(None, value)
            data = self.codec.encode(key, value)
            if data is None:
                return value  # refused (oversized, not serializable): cached nowhere
            stored: Optional[int] = None
            if observed is not None:  # Redis answered the read: fill it too
                res = yield from self._write_flow(
                    key, "fill", data, ttl, fill_version, observed, bad
                )
                if res is not None:
                    status, stored, _ = res
                    if status == 0:
                        return value  # Redis holds a newer version: keep ours nowhere
            ended = True
            # Not written to Redis (unavailable): still compared with the versions seen.
            version = stored if stored is not None else fill_version
            self._fill(key, value, lease, self._local_ttl(ttl), version)
            return value
        finally:
            if not ended:
                self.local.drop_lease(lease)

    def _set_flow(self, key: str, value: Any, ttl: Optional[float], version: Any) -> Flow:
        v = self._version(version, value)
        if ttl is None:
            ttl = self.ttl
        data = self.codec.encode(key, value)
        if data is None:
            # Refused: an older value must not be served in its place.
            yield from self._delete_flow(key, v)
            return False
        epoch = self._seen_epoch
        self.local.invalidate(key)  # no read in flight keeps what it read before this write
        res = yield from self._write_flow(key, "set", data, ttl, v)
        if res is None:
            self.counts.add("skipped_writes")
            self._add_pending(key, v)
            # Read your writes, unless a newer version has come from elsewhere meanwhile.
            self._own(key, value, self._local_ttl(ttl), v, epoch)
            return False
        status, stored, _ = res
        if status == 0:
            with self._state_lock:
                if stored is not None:
                    self._note(key, stored)
                self.local.invalidate(key)
            return False
        self._own(key, value, self._local_ttl(ttl), stored, epoch)
        return True

    def _delete_flow(self, key: str, version: Any = None) -> Flow:
        v = None if version is None else check_version(version)
        with self._state_lock:
            was_local = self._forget_key(key, v)
        res = yield from self._write_flow(key, "del", b"", self._tombstone_ttl(), v)
        if res is None:
            self.counts.add("skipped_writes")
            self._add_pending(key, v)
            return was_local
        status, _, had = res
        if status == 1:
            self.counts.add("deletes")
        return had and status == 1

    def _probe_flow(self) -> Flow:
        try:
            yield RedisCall(self.redis.ping)
        except REDIS_ERRORS as exc:
            self._count_error(exc)
            self.breaker.end_probe(False)
            return False
        self.breaker.end_probe(True)
        return True

    def _subscribed_flow(self) -> Flow:
        """Load the write script now (a restarted Redis has forgotten it), so that the first
        write does not pay two more round trips inside its deadline, and measure Redis's
        clock."""
        try:
            yield RedisCall(self.redis.script_load, WRITE_SCRIPT)
        except REDIS_ERRORS as exc:
            self._failed(exc, "SCRIPT LOAD")
        yield from self._clock_flow()

    def _clock_flow(self) -> Flow:
        """Redis's clock against our monotonic one (us), for the writes' deadlines."""
        t0 = time.monotonic()
        try:
            sec, usec = yield RedisCall(self.redis.time)
        except REDIS_ERRORS as exc:
            self._failed(exc, "TIME")
            return
        t1 = time.monotonic()
        self._clock_offset_us = sec * 1e6 + usec - (t0 + t1) / 2 * 1e6
        self._clock_at = t1
        # A late write must be refused before the caller can have given up on it; the
        # measure is off by at most half the round trip.
        margin = (t1 - t0) / 2 * 1e6 + 1000
        self._late_us = max(self.deadline * 1e6 / 2, self.deadline * 1e6 - margin)

    def _flush_due(self) -> bool:
        """Whether Redis is owed tombstones, or a clear, from while it was away."""
        return bool(self._pending) or self._clear_due()

    def _clear_due(self) -> bool:
        return self._clears_owed != self._clears_done and time.monotonic() >= self._clear_retry_at

    def _flush_flow(self) -> Flow:
        """Tombstone (and invalidate) the keys changed while Redis was away, each at its
        newest failed version; then, if some were not remembered or a clear was asked for
        meanwhile, go on with clearing the namespace."""
        with self._pending_lock:
            batch = list(itertools.islice(self._pending.items(), 256))
        ttl = self._tombstone_ttl()
        for key, entry in batch:
            res = yield from self._write_flow(key, "del", b"", ttl, entry[0], pending=entry)
            if res is None:
                return  # Redis went away again: the rest waits
        if self._clear_due():
            yield from self._remote_clear_flow(resume=True)

    def _tombstone_ttl(self) -> float:
        return _TOMBSTONE_TTL if self.ttl is None else min(self.ttl, _TOMBSTONE_TTL)

    def _clear_flow(self, remote: bool) -> Flow:
        """The local tier; with ``remote``, every value of the namespace in Redis and,
        through a message, every other instance's local tier. Redis away: owed until it
        answers, as a write would be."""
        self._forget_local()
        self.counts.add("local_clears")
        if not remote:
            return None
        if self.breaker.closed:
            yield from self._remote_clear_flow()
        else:
            self._owe_clear()
        return None

    def _owe_clear(self) -> None:
        with self._pending_lock:
            self._clears_owed += 1

    def _remote_clear_flow(self, resume: bool = False) -> Flow:
        """Clear every value of the namespace in Redis (SCAN, then the clear script 500
        keys at a time: each value becomes a tombstone, see CLEAR_SCRIPT), drop the local
        tier, publish a clear. Done, or owed if Redis fails. It covers the clears owed when
        it begins. The worker's (``resume``) runs a few SCAN pages per pass and goes on at
        its next, so that a large namespace does not keep it from the channel."""
        outages = self.breaker.transitions["open"]
        if resume and self._clear_cursor is not None and self._clear_cursor[2] == outages:
            covers, cursor, _ = self._clear_cursor
        else:  # from the start; a cursor from before an outage may skip keys (a restart)
            covers, cursor = self._clears_owed, 0
        self._clear_cursor = None
        match = _glob_escape(self._prefix) + "*"
        args = (max(1, int(self._tombstone_ttl() * 1000)), self._mode(None))
        pages = 0
        try:
            while True:
                cursor, keys = yield RedisCall(self.redis.scan, cursor, match=match, count=500)
                for i in range(0, len(keys), 500):
                    yield RedisCall(self._clear_script, keys=keys[i : i + 500], args=args)
                pages += 1
                if not cursor:
                    break
                if resume and pages >= _CLEAR_PAGES_PER_PASS:
                    self._clear_cursor = (covers, cursor, outages)
                    return
            # What was read from Redis before the script reached it goes too.
            self._forget_local()
            self.counts.add("local_clears")
            yield RedisCall(self.redis.publish, self.channel, clear_message(self.instance_id))
        except REDIS_ERRORS as exc:
            self._failed(exc, "clear")
            self._owe_clear()
            if self.breaker.closed:  # not an outage (refused: READONLY, NOPERM...): back off
                self._clear_backoff = min(60.0, max(1.0, 2 * self._clear_backoff))
                self._clear_retry_at = time.monotonic() + self._clear_backoff
            return
        except BaseException:
            self._owe_clear()  # cancelled (asyncio) or closed: maybe half done
            raise
        self.counts.add("invalidations_sent")
        self.counts.add("remote_clears")
        self._clear_backoff, self._clear_retry_at = 0.0, 0.0
        with self._pending_lock:
            self._clears_done = max(self._clears_done, covers)

    # -- stats ------------------------------------------------------------------------

    def counters(self) -> TierCounters:
        """Every monotonic counter as a plain int (see ``COUNTERS``)."""
        try:
            lst = self.local.stats()
            local_hits, local_misses = int(lst.get("hits", 0)), int(lst.get("misses", 0))
        except Exception:  # noqa: BLE001 - a broken local tier counts nothing
            local_hits = local_misses = 0
        c = self.counts.snapshot(local_hits, local_misses)
        t = self.breaker.transitions
        c["breaker_opened"] = t["open"]
        c["breaker_half_opened"] = t["half_open"]
        c["breaker_closed"] = t["closed"]
        return c

    def stats(self) -> TierStats:
        """Counters, state, and the local tier's own stats under ``local``."""
        now = time.monotonic()
        c = self.counters()
        lookups = c["local_hits"] + c["local_misses"]
        try:
            local: dict[str, Any] = dict(self.local.stats())
        except Exception as exc:  # noqa: BLE001 - reported in its place
            local = {"error": f"{type(exc).__name__}: {exc}"}
        lag_last, lag_max = self.lag()
        return {
            **c,
            "oversized_refusals": c["oversized_writes"] + c["oversized_reads"],
            "local_hit_rate": c["local_hits"] / lookups if lookups else 0.0,
            "namespace": self.namespace,
            "channel": self.channel,
            "instance_id": self.instance_id,
            "serializer": getattr(self.serializer, "name", type(self.serializer).__name__),
            "versions": "caller" if self.version_of is not None else "redis-counter",
            "connected": self._connected,
            "channel_state": "up" if self._connected else "down",
            "channel_state_seconds": max(0.0, now - self._channel_changed_at),
            "channel_heard_seconds": (
                max(0.0, now - self._heard_at) if self._ever_subscribed else None
            ),
            "local_bypassed": self._bypass,
            "max_stale": self.max_stale,
            "breaker": self.breaker.state,
            "breaker_state_seconds": self.breaker.seconds_in_state(now),
            "redis_available": self.breaker.closed,
            "deadline": self.deadline,
            "listener_lag_seconds": lag_last,
            "listener_lag_max_seconds": lag_max,
            "pending_invalidations": len(self._pending),  # a len(): atomic
            "pending_dropped": self._pending_dropped,
            "clear_pending": self._clears_owed != self._clears_done,
            "max_value_bytes": self.codec.max_bytes,
            "closed": self._closed,
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
        breaker = getattr(self, "breaker", None)
        return (
            f"<{type(self).__name__} namespace={getattr(self, 'namespace', '?')!r} "
            f"channel={'up' if getattr(self, '_connected', False) else 'down'} "
            f"breaker={getattr(breaker, 'state', '?')}"
            f"{' closed' if getattr(self, '_closed', False) else ''}>"
        )
