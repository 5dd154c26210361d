"""The demo service: user health data from SQLite, cached through the manager.

Endpoints:

* ``GET /users/{user_id}``: the profile;
* ``GET /users/{user_id}/readings?days=7``: hourly readings of the last ``days``
  days of data (1..365);
* ``GET /users/{user_id}/summary``: a computed object, daily aggregates over
  every day of data (heart rate mean/min/max, steps);
* ``PUT /users/{user_id}/profile``: change name, email and/or birth year
  (written to SQLite, then the cached profile is replaced and the cached
  summary dropped, in every replica when the Redis tier is on);
* ``GET /health``; ``GET /memory/stats``; ``GET /metrics`` (Prometheus).

Three caches hold profiles, readings lists and summaries: bounded caches
created through a ``CacheManager`` (maxsize, ttl and max_bytes), or, with
``unbounded=True``, the plain dicts a service starts with (the "before" of
the load test). The repository and the service are singletons
(``SingletonMeta``): built once, at start, where a missing or locked database
is reported as one clear error.

With a Redis client (``create_app(..., redis_url=...)``), each bounded cache
becomes the local tier of a ``TieredCache`` (namespace ``{prefix}:{name}``):
reads go through ``get_or_set``, the profile write through ``set``/``delete``
so that other replicas drop their local copies; each tier's stats appear
under ``sources`` in ``/memory/stats``.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Optional, TypeVar

from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ...fastapi import (
    MemoryCleanupService,
    MemoryMonitorMiddleware,
    RequestMemoryMonitor,
    cleanup_lifespan,
    memory_router,
)
from ...manager import CacheManager, cache_manager
from ...singleton import SingletonMeta
from .db import Database

__all__ = [
    "create_app",
    "UserRepository",
    "HealthService",
    "CACHE_SETTINGS",
    "ProfileUpdate",
    "reset_singletons",
    "connect_redis",
]

log = logging.getLogger("memcache_ext.demo")
_T = TypeVar("_T")

MiB = 2**20
#: name -> create_cache settings of the bounded caches.
#: 48 MiB of accounted entries in all: sized so that a 512 MB instance keeps
#: most of its memory for the interpreter, the database and request handling.
CACHE_SETTINGS: dict[str, dict[str, Any]] = {
    "profiles": {"maxsize": 10_000, "ttl": 300, "max_bytes": 8 * MiB},
    "readings": {"maxsize": 5_000, "ttl": 60, "max_bytes": 32 * MiB},
    "summaries": {"maxsize": 5_000, "ttl": 300, "max_bytes": 8 * MiB},
}

# Module level: the endpoints' annotations are strings, resolved in this namespace.
UserId = Annotated[int, Path(ge=1, le=10**9, description="User id")]
Days = Annotated[int, Query(ge=1, le=365, description="Last N days of data")]
_PROFILE_COLUMNS = ("name", "email", "birth_year")  # what PUT /users/{id}/profile may change


class ProfileUpdate(BaseModel):
    """The body of ``PUT /users/{user_id}/profile``: at least one field; unknown ones refused."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: Optional[str] = Field(None, strict=True, min_length=1, max_length=100)
    email: Optional[str] = Field(
        None, strict=True, min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
    )
    birth_year: Optional[int] = Field(None, strict=True, ge=1900, le=2100)

    @model_validator(mode="after")
    def _something_to_change(self) -> ProfileUpdate:
        if all(getattr(self, f) is None for f in _PROFILE_COLUMNS):
            raise ValueError("give at least one of name, email, birth_year")
        return self

    def changes(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in _PROFILE_COLUMNS if getattr(self, f) is not None}


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

    def profile(self, user_id: int) -> Optional[dict[str, Any]]:
        rows = self.db.query(
            "SELECT id, name, email, birth_year, created_at FROM users WHERE id = ?", (user_id,)
        )
        return dict(rows[0]) if rows else None

    def readings(self, user_id: int, since: int) -> list[dict[str, Any]]:
        rows = self.db.query(
            "SELECT ts, heart_rate, steps FROM readings WHERE user_id = ? AND ts >= ? ORDER BY ts",
            (user_id, since),
        )
        return [{"ts": ts, "heart_rate": hr, "steps": steps} for ts, hr, steps in rows]

    def update_profile(self, user_id: int, changes: dict[str, Any]) -> Optional[dict[str, Any]]:
        """Write ``changes`` (columns of ``_PROFILE_COLUMNS``); the new profile, None if unknown."""
        bad = set(changes) - set(_PROFILE_COLUMNS)
        if bad or not changes:
            raise ValueError(f"cannot change {sorted(bad) or 'nothing'}")
        assignments = ", ".join(f"{col} = ?" for col in changes)
        with self._write_lock:
            conn = self._writer_connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                cur = conn.execute(
                    f"UPDATE users SET {assignments} WHERE id = ?", (*changes.values(), user_id)
                )
                row = None
                if cur.rowcount:
                    row = conn.execute(
                        "SELECT id, name, email, birth_year, created_at FROM users WHERE id = ?",
                        (user_id,),
                    ).fetchone()
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        return dict(row) if row is not None else None

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
    ``TieredCache`` over Redis (namespace ``{redis_prefix}:{name}``, str keys),
    registered with the manager as the stats source ``redis:{namespace}``.
    """

    def __init__(
        self,
        db_path: str,
        unbounded: bool = False,
        manager: Optional[CacheManager] = None,
        redis_client: Any = None,
        redis_prefix: str = "demo",
    ) -> None:
        if redis_client is not None and unbounded:
            raise ValueError("the Redis tier needs the bounded caches (drop --unbounded)")
        self.repo = UserRepository(db_path)
        self.unbounded = unbounded
        self.manager = manager if manager is not None else cache_manager
        self.caches: dict[str, Any] = {}
        for name, settings in CACHE_SETTINGS.items():
            # The one line the library asks a service to change: {} -> a bounded cache.
            self.caches[name] = {} if unbounded else self.manager.create_cache(name, **settings)
        self.profiles = self.caches["profiles"]
        self.readings_cache = self.caches["readings"]
        self.summaries = self.caches["summaries"]
        self.redis = redis_client
        self.tiers: dict[str, Any] = {}
        if redis_client is not None:
            from ...redis import TieredCache

            for name, settings in CACHE_SETTINGS.items():
                tier = TieredCache(
                    self.caches[name], redis_client, f"{redis_prefix}:{name}", ttl=settings["ttl"]
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
        tier = self.tiers.get(name)
        if tier is not None:
            # local, then Redis, then the database; one load per key per process.
            # An unknown user's None is cached too (for the cache's ttl).
            return tier.get_or_set(key, loader)  # type: ignore[no-any-return]  # loader's value
        cache = self.caches[name]
        value: _T = cache.get(key)
        if value is None:
            value = loader()
            if value is not None:
                cache[key] = value
        return value

    def _replace(self, name: str, key: Any, value: Any) -> None:
        """After a write: ``value`` replaces the cached one (None: dropped), in every replica."""
        tier = self.tiers.get(name)
        if tier is not None:
            if value is None:
                tier.delete(key)
            else:
                tier.set(key, value)
        elif value is None:
            self.caches[name].pop(key, None)
        else:
            self.caches[name][key] = value

    # -- reads and the write ------------------------------------------------------------------

    def profile(self, user_id: int) -> Optional[dict[str, Any]]:
        return self._cached("profiles", self._key(user_id), lambda: self.repo.profile(user_id))

    def readings(self, user_id: int, days: int) -> Optional[list[dict[str, Any]]]:
        if self.profile(user_id) is None:
            return None
        return self._cached(
            "readings",
            self._key(user_id, days),
            lambda: self.repo.readings(user_id, self.repo.end - days * 86400),
        )

    def update_profile(self, user_id: int, changes: dict[str, Any]) -> Optional[dict[str, Any]]:
        """Write to the database, then replace the cached profile and drop the summary
        (it shows the name). None if the user does not exist."""
        profile = self.repo.update_profile(user_id, changes)
        if profile is not None:
            key = self._key(user_id)
            self._replace("profiles", key, profile)
            self._replace("summaries", key, None)
        return profile

    def summary(self, user_id: int) -> Optional[dict[str, Any]]:
        return self._cached(
            "summaries",
            self._key(user_id),
            lambda: self._compute_summary(user_id),
        )

    def _compute_summary(self, user_id: int) -> Optional[dict[str, Any]]:
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


def safe_url(url: str) -> str:
    """``url`` without its password (for logs)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = f"{parts.username or ''}:***@{parts.hostname}"
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<unparsable URL>"


def connect_redis(url: str, timeout: float = 0.5) -> Any:
    """A redis-py client for ``url`` (bytes responses, bounded timeouts, one retry).

    Never fails because Redis is down: a server that does not answer now is
    logged as a warning and the tier falls back to the local caches and the
    database until it answers. A malformed URL raises ValueError.
    """
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError as exc:
        raise ValueError(
            f"--redis needs redis-py: pip install 'memcache-ext[redis]' ({exc})"
        ) from exc
    client = redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
        decode_responses=False,
    )
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        log.warning(
            "Redis at %s does not answer (%s: %s): serving from the local caches and "
            "the database until it does",
            safe_url(url),
            type(exc).__name__,
            exc,
        )
    return client


def create_app(
    db_path: str,
    *,
    unbounded: bool = False,
    manager: Optional[CacheManager] = None,
    memory_limit_mb: float = 400,
    cleanup_interval: float = 30.0,
    metrics: bool = True,
    redis_url: Optional[str] = None,
    redis_client: Any = None,
    redis_prefix: str = "demo",
) -> FastAPI:
    """The demo FastAPI app over the database at ``db_path`` (which must exist).

    Raises ``memcache_ext.demo.db.DatabaseError`` when the database is missing,
    is not a demo database, or is locked. ``manager``: the CacheManager for the
    caches (default ``cache_manager``); ``memory_limit_mb``: the middleware's
    high-memory threshold; ``metrics``: serve ``/metrics`` (needs
    prometheus-client). ``redis_url`` (or an existing ``redis_client``):
    put a Redis second tier behind the bounded caches (namespaces
    ``{redis_prefix}:{cache}``); Redis being down at start is a warning, not an
    error. The app closes the tiers (and a client it created) on shutdown.
    """
    manager = manager if manager is not None else cache_manager
    own_client = None
    if redis_url is not None:
        if redis_client is not None:
            raise ValueError("pass redis_url or redis_client, not both")
        if unbounded:
            raise ValueError("the Redis tier needs the bounded caches (drop --unbounded)")
        redis_client = own_client = connect_redis(redis_url)
    try:
        # Without a tier, the singleton's arguments are the same as they always were.
        tier_args = () if redis_client is None else (redis_client, redis_prefix)
        service = HealthService(db_path, unbounded, manager, *tier_args)
    except BaseException:
        if own_client is not None:
            own_client.close()
        raise
    cleanup = MemoryCleanupService(manager, interval=cleanup_interval)
    monitor = RequestMemoryMonitor(memory_limit_mb)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info(
            "demo service up: %s users, %s days of data, %s caches",
            service.repo.db.meta.get("users"),
            service.repo.db.meta.get("days"),
            "unbounded dict" if unbounded else "bounded",
        )
        if service.tiers:
            log.info(
                "Redis tier on: %s", ", ".join(service.tiers[n].namespace for n in service.tiers)
            )
        try:
            yield
        finally:
            service.close_tiers()
            if own_client is not None:
                with contextlib.suppress(Exception):
                    own_client.close()
            service.repo.close()

    app = FastAPI(
        title="memcache-ext demo: user health data",
        description="Profiles, readings and daily summaries from SQLite, cached.",
        lifespan=cleanup_lifespan(cleanup, lifespan),
    )
    app.state.service = service
    app.state.manager = manager
    app.state.cleanup = cleanup
    app.state.monitor = monitor
    app.add_middleware(MemoryMonitorMiddleware, manager=manager, monitor=monitor)
    app.include_router(memory_router(manager, monitor=monitor, cleanup_service=cleanup))

    if metrics:
        from prometheus_client import CollectorRegistry, ProcessCollector

        from ...prometheus import MemcacheCollector, metrics_router

        registry = CollectorRegistry()
        registry.register(MemcacheCollector(manager, monitor=monitor, tiers=service.tiers.values()))
        ProcessCollector(registry=registry)
        app.state.registry = registry
        app.include_router(metrics_router(registry))

    @app.exception_handler(sqlite3.Error)
    async def database_error(request: Request, exc: sqlite3.Error) -> JSONResponse:
        log.error("database error on %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": "database unavailable"}, status_code=503)

    def _missing(user_id: int) -> HTTPException:
        return HTTPException(status_code=404, detail=f"user {user_id} not found")

    @app.get("/users/{user_id}", summary="A user's profile")
    def get_user(user_id: UserId) -> dict[str, Any]:
        profile = service.profile(user_id)
        if profile is None:
            raise _missing(user_id)
        return profile

    @app.get("/users/{user_id}/readings", summary="A user's hourly readings")
    def get_readings(user_id: UserId, days: Days = 7) -> dict[str, Any]:
        readings = service.readings(user_id, days)
        if readings is None:
            raise _missing(user_id)
        return {"user_id": user_id, "days": days, "count": len(readings), "readings": readings}

    @app.get("/users/{user_id}/summary", summary="Daily aggregates of a user's readings")
    def get_summary(user_id: UserId) -> dict[str, Any]:
        summary = service.summary(user_id)
        if summary is None:
            raise _missing(user_id)
        return summary

    @app.put("/users/{user_id}/profile", summary="Change a user's name, email or birth year")
    def put_profile(user_id: UserId, update: ProfileUpdate) -> dict[str, Any]:
        profile = service.update_profile(user_id, update.changes())
        if profile is None:
            raise _missing(user_id)
        return profile

    @app.get("/health", summary="Liveness and cache sizes")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "cache_mode": "unbounded" if unbounded else "bounded",
            "users": int(service.repo.db.meta["users"]),
            "days": int(service.repo.db.meta["days"]),
            "caches": service.cache_sizes(),
            "redis": service.tier_state(),
            "rss_mb": round(manager.memory_usage_mb(), 1),
        }

    return app
