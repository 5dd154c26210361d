"""The demo's data: the SQLite repository and the cached service over it (singletons)."""

from __future__ import annotations

import bisect
import contextlib
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional, TypeVar

from ...manager import CacheManager, cache_manager
from ...singleton import SingletonMeta
from .db import Database

__all__ = [
    "CACHE_SETTINGS",
    "DEFAULT_POLICY",
    "HealthService",
    "UserRepository",
    "reset_singletons",
]

log = logging.getLogger("memcache_ext.demo")
_T = TypeVar("_T")

MiB = 2**20
#: name -> create_cache settings of the bounded caches.
#: 44 MiB of accounted entries in all: sized so that a 512 MB instance keeps
#: most of its memory for the interpreter, the database and request handling.
#: Under a smaller limit the manager scales them down (its byte budget).
CACHE_SETTINGS: dict[str, dict[str, Any]] = {
    # ~650 B a profile: 4 MiB holds 5,000 users' profiles; the rest of a budget
    # (docs/memory.md: under a limit, the manager's shares) goes to the other two.
    "profiles": {"maxsize": 10_000, "ttl": 300, "max_bytes": 4 * MiB},
    "readings": {"maxsize": 5_000, "ttl": 60, "max_bytes": 32 * MiB},
    "summaries": {"maxsize": 5_000, "ttl": 300, "max_bytes": 8 * MiB},
}

#: The bounded caches' eviction policy: the one that gave the demo the higher hit rate
#: within the same memory bound in the load test (docs/performance.md shows both).
DEFAULT_POLICY = "s3fifo"

# Module level: the endpoints' annotations are strings, resolved in this namespace.

_PROFILE_COLUMNS = ("name", "email", "birth_year")  # what PUT /users/{id}/profile may change
_PROFILE_SELECT = "SELECT id, name, email, birth_year, created_at, version FROM users WHERE id = ?"


def _row_version(value: Any) -> int:
    """The version a cached value was made from: its profile row's (0: no such user)."""
    return int(value["version"]) if isinstance(value, dict) and "version" in value else 0


def _ts(row: Sequence[Any]) -> int:
    ts: int = row[0]
    return ts


class UserRepository(metaclass=SingletonMeta):
    """SQL access to users and readings (one instance per process)."""

    def __init__(self, db_path: str) -> None:
        self.db = Database(db_path)  # checks the file: DatabaseError if unusable
        self.path = db_path
        self._writer: Optional[sqlite3.Connection] = None
        self._write_lock = threading.Lock()
        try:
            # WAL: readers (this and the other replicas) never wait for a writer.
            # Persistent in the file; read-only connections work on it as before.
            self._writer_connection().execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as exc:
            log.warning(
                "database %s: cannot switch to WAL (%s); profile updates may wait "
                "for readers or fail",
                db_path,
                exc,
            )
        self._add_row_versions()

    def _add_row_versions(self) -> None:
        """A ``version`` column on users (once per database; replicas may race to add it):
        every profile write increments it in the same transaction, so it orders the
        writes as the database committed them, which the Redis tier's versioned writes
        follow (a cache write of an older version never replaces a newer one)."""
        conn = self._writer_connection()
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                columns = {row[1] for row in conn.execute("PRAGMA table_info(users)")}
                if "version" not in columns:
                    conn.execute("ALTER TABLE users ADD COLUMN version INTEGER NOT NULL DEFAULT 1")
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise

    def _writer_connection(self) -> sqlite3.Connection:
        """The one read-write connection (lazily; use under ``_write_lock`` after init)."""
        if self._writer is None:
            conn = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
            conn.row_factory = sqlite3.Row
            self._writer = conn
        return self._writer

    @property
    def end(self) -> int:
        return self.db.end

    @property
    def days(self) -> int:
        """Days of readings the database holds."""
        return int(self.db.meta["days"])

    def profile(self, user_id: int) -> Optional[dict[str, Any]]:
        rows = self.db.query(_PROFILE_SELECT, (user_id,))
        return dict(rows[0]) if rows else None

    def readings(self, user_id: int, since: int) -> list[dict[str, Any]]:
        rows = self.db.query(
            "SELECT ts, heart_rate, steps FROM readings WHERE user_id = ? AND ts >= ? ORDER BY ts",
            (user_id, since),
        )
        return [{"ts": ts, "heart_rate": hr, "steps": steps} for ts, hr, steps in rows]

    def reading_rows(self, user_id: int, since: int) -> tuple[tuple[int, float, int], ...]:
        """The same readings as ``(ts, heart_rate, steps)`` tuples: what the cache keeps."""
        rows = self.db.query(
            "SELECT ts, heart_rate, steps FROM readings WHERE user_id = ? AND ts >= ? ORDER BY ts",
            (user_id, since),
        )
        return tuple((ts, hr, steps) for ts, hr, steps in rows)

    def update_profile(
        self,
        user_id: int,
        changes: dict[str, Any],
        committed: Optional[Callable[[dict[str, Any]], None]] = None,
    ) -> Optional[dict[str, Any]]:
        """Write ``changes`` (columns of ``_PROFILE_COLUMNS``) and bump the row's version;
        the new profile, None if unknown. ``committed(profile)`` runs after the commit,
        still under this process's write lock, so the caches of one process are updated
        in commit order."""
        bad = set(changes) - set(_PROFILE_COLUMNS)
        if bad or not changes:
            raise ValueError(f"cannot change {sorted(bad) or 'nothing'}")
        assignments = ", ".join(f"{col} = ?" for col in changes)
        with self._write_lock:
            conn = self._writer_connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                cur = conn.execute(
                    f"UPDATE users SET {assignments}, version = version + 1 WHERE id = ?",
                    (*changes.values(), user_id),
                )
                row = None
                if cur.rowcount:
                    row = conn.execute(_PROFILE_SELECT, (user_id,)).fetchone()
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            profile = dict(row) if row is not None else None
            if profile is not None and committed is not None:
                committed(profile)
        return profile

    def close(self) -> None:
        self.db.close()
        with self._write_lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(sqlite3.Error):
                writer.close()


class HealthService(metaclass=SingletonMeta):
    """Profiles, readings and summaries, each behind a cache (one instance per process).

    With ``redis_client``, each bounded cache is the local tier of a
    ``TieredCache`` over Redis (namespace ``{redis_prefix}:{name}``, str keys,
    JSON values), registered with the manager as the stats source
    ``redis:{namespace}``. Versions come from the database: a profile and a
    summary carry their user row's ``version`` (readings never change: 0), so
    a cache write or a load of an older row never replaces a newer one, in any
    replica. Reads fill every cache through a lease (``get_or_set``, or
    ``lease``/``fill`` for the bounded caches without Redis): a write that
    lands while a read is loading refuses that read's fill.
    ``policy``: the bounded caches' eviction policy (default ``DEFAULT_POLICY``).
    """

    def __init__(
        self,
        db_path: str,
        unbounded: bool = False,
        manager: Optional[CacheManager] = None,
        redis_client: Any = None,
        redis_prefix: str = "demo",
        max_stale: float = 1.0,
        policy: str = "",
    ) -> None:
        if redis_client is not None and unbounded:
            raise ValueError("the Redis tier needs the bounded caches (drop --unbounded)")
        self.repo = UserRepository(db_path)
        self.unbounded = unbounded
        self.manager = manager if manager is not None else cache_manager
        self.policy = policy or DEFAULT_POLICY
        self.caches: dict[str, Any] = {}
        for name, settings in CACHE_SETTINGS.items():
            # The one line the library asks a service to change: {} -> a bounded cache.
            self.caches[name] = (
                {} if unbounded else self.manager.create_cache(name, **settings, policy=self.policy)
            )
        self.profiles = self.caches["profiles"]
        self.readings_cache = self.caches["readings"]
        self.summaries = self.caches["summaries"]
        self.redis = redis_client
        self.tiers: dict[str, Any] = {}
        if redis_client is not None:
            from ...redis import TieredCache

            for name, settings in CACHE_SETTINGS.items():
                tier = TieredCache(
                    self.caches[name],
                    redis_client,
                    f"{redis_prefix}:{name}",
                    ttl=settings["ttl"],
                    serializer="json",
                    version_of=(lambda _value: 0) if name == "readings" else _row_version,
                    max_stale=max_stale,
                )
                tier.register(self.manager)
                self.tiers[name] = tier

    # -- the cache, whichever it is ------------------------------------------------------

    def _key(self, *parts: Any) -> Any:
        """The cache key: str for a tier (``"7"``, ``"7:14"``), else the id or a tuple."""
        if self.tiers:
            return ":".join(str(p) for p in parts)
        return parts[0] if len(parts) == 1 else parts

    def _cached(self, name: str, key: Any, loader: Callable[[], _T]) -> _T:
        # Each fill lives 75-100 % of the cache's TTL: the hot keys, all loaded in
        # the first seconds, would otherwise expire in the same second, every TTL,
        # and be loaded again at once (a burst of database reads and allocations).
        ttl = CACHE_SETTINGS[name]["ttl"] * random.uniform(0.75, 1.0)
        tier = self.tiers.get(name)
        if tier is not None:
            # local, then Redis, then the database; one load per key per process.
            # An unknown user's None is cached too (for the cache's ttl).
            return tier.get_or_set(key, loader, ttl=ttl)  # type: ignore[no-any-return]
        cache = self.caches[name]
        value: _T = cache.get(key)
        if value is None:
            if isinstance(cache, dict):  # the unbounded "before" case: as a service starts
                value = loader()
                if value is not None:
                    cache[key] = value
                return value
            # A lease, taken before the database read: a write that lands before the
            # fill (cache.set or pop below) refuses it, so a read that raced a write
            # never stores the row it read before the write.
            lease = cache.lease(key)
            try:
                value = loader()
            except BaseException:
                cache.drop_lease(lease)
                raise
            if value is None:
                cache.drop_lease(lease)
            else:
                value = cache.fill(key, value, lease, ttl=ttl)
        return value

    def _replace(self, name: str, key: Any, value: Any, version: int) -> None:
        """After a write of row ``version``: ``value`` replaces the cached one (None:
        dropped, with a tombstone at that version in Redis), in every replica."""
        tier = self.tiers.get(name)
        if tier is not None:
            if value is None:
                tier.delete(key, version=version)
            else:
                tier.set(key, value, version=version)
        elif value is None:
            self.caches[name].pop(key, None)
        else:
            self.caches[name][key] = value

    # -- reads and the write ------------------------------------------------------------------

    def profile(self, user_id: int) -> Optional[dict[str, Any]]:
        return self._cached("profiles", self._key(user_id), lambda: self.repo.profile(user_id))

    def readings(self, user_id: int, days: int) -> Optional[Sequence[dict[str, Any]]]:
        if self.profile(user_id) is None:
            return None
        # One entry per user, every reading the database holds; each window is a
        # slice of it. Keyed by (user, days), every window was an entry of its own
        # and the cache held the same readings several times (issue 12: 1 % hits).
        # Kept as a tuple of (ts, heart_rate, steps) tuples: 52 kB for 14 days
        # instead of 89 kB as dicts, and invisible to the garbage collector (a
        # tuple of numbers is untracked, and so is a tuple of such tuples), so the
        # collections that run on the event loop never walk the cached readings.
        rows: Sequence[Sequence[Any]] = self._cached(
            "readings",
            self._key(user_id),
            lambda: self.repo.reading_rows(user_id, self.repo.end - self.repo.days * 86400),
        )
        since = self.repo.end - days * 86400
        start = bisect.bisect_left(rows, since, key=_ts)
        return [{"ts": ts, "heart_rate": hr, "steps": steps} for ts, hr, steps in rows[start:]]

    def update_profile(self, user_id: int, changes: dict[str, Any]) -> Optional[dict[str, Any]]:
        """Write to the database, then replace the cached profile and drop the summary
        (it shows the name), both at the row's new version. None if the user does not
        exist."""

        def committed(profile: dict[str, Any]) -> None:
            key = self._key(user_id)
            self._replace("profiles", key, profile, profile["version"])
            self._replace("summaries", key, None, profile["version"])

        return self.repo.update_profile(user_id, changes, committed)

    def summary(self, user_id: int) -> Optional[dict[str, Any]]:
        return self._cached(
            "summaries",
            self._key(user_id),
            lambda: self._compute_summary(user_id),
        )

    def _compute_summary(self, user_id: int) -> Optional[dict[str, Any]]:
        # The summary carries the version of the profile it was made from: made from a
        # cached copy older than what the cache already knows, it is refused (older than
        # the write's tombstone in Redis), and a write after its lease refuses it locally.
        profile = self.profile(user_id)
        if profile is None:
            return None
        rows = self.repo.readings(user_id, 0)
        days: dict[str, dict[str, Any]] = {}
        for r in rows:
            day = time.strftime("%Y-%m-%d", time.gmtime(r["ts"]))
            d = days.get(day)
            if d is None:
                d = days[day] = {
                    "date": day,
                    "readings": 0,
                    "heart_rate_sum": 0.0,
                    "heart_rate_min": r["heart_rate"],
                    "heart_rate_max": r["heart_rate"],
                    "steps": 0,
                }
            d["readings"] += 1
            d["heart_rate_sum"] += r["heart_rate"]
            d["heart_rate_min"] = min(d["heart_rate_min"], r["heart_rate"])
            d["heart_rate_max"] = max(d["heart_rate_max"], r["heart_rate"])
            d["steps"] += r["steps"]
        daily = []
        for d in days.values():
            d["heart_rate_mean"] = round(d.pop("heart_rate_sum") / d["readings"], 2)
            daily.append(d)
        total_steps = sum(d["steps"] for d in daily)
        summary = {
            "user_id": user_id,
            "version": profile["version"],
            "name": profile["name"],
            "days": len(daily),
            "readings": len(rows),
            "steps_total": total_steps,
            "steps_daily_mean": round(total_steps / len(daily), 1) if daily else 0.0,
            "heart_rate_mean": (
                round(sum(r["heart_rate"] for r in rows) / len(rows), 2) if rows else None
            ),
            "daily": daily,
        }
        return summary

    def cache_sizes(self) -> dict[str, int]:
        return {name: len(cache) for name, cache in self.caches.items()}

    def tier_state(self) -> Optional[dict[str, Any]]:
        if not self.tiers:
            return None
        return {
            "connected": all(t.connected for t in self.tiers.values()),
            "namespaces": [t.namespace for t in self.tiers.values()],
        }

    def close_tiers(self) -> None:
        """Stop the tiers' listeners (idempotent); the Redis client is its creator's."""
        for tier in self.tiers.values():
            tier.close()
            with contextlib.suppress(Exception):
                self.manager.unregister_stats_source(f"redis:{tier.namespace}")


def reset_singletons() -> None:
    """Forget the service and repository instances (tests, or a second app)."""
    for cls in (HealthService, UserRepository):
        if cls.has_instance():
            inst = cls()  # type: ignore[call-arg]  # the existing instance: no arguments needed
            if isinstance(inst, UserRepository):
                inst.close()
            elif isinstance(inst, HealthService):
                inst.close_tiers()
        SingletonMeta.reset(cls)
