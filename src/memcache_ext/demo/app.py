"""The demo service: user health data from SQLite, cached through the manager.

Endpoints:

* ``GET /users/{user_id}``: the profile;
* ``GET /users/{user_id}/readings?days=7``: hourly readings of the last ``days``
  days of data (1..365);
* ``GET /users/{user_id}/summary``: a computed object, daily aggregates over
  every day of data (heart rate mean/min/max, steps);
* ``GET /health``; ``GET /memory/stats``; ``GET /metrics`` (Prometheus).

Three caches hold profiles, readings lists and summaries: bounded caches
created through a ``CacheManager`` (maxsize, ttl and max_bytes), or, with
``unbounded=True``, the plain dicts a service starts with (the "before" of
the load test). The repository and the service are singletons
(``SingletonMeta``): built once, at start, where a missing or locked database
is reported as one clear error.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from typing import Annotated, Any, AsyncIterator, Optional

from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse

from ..fastapi import (MemoryCleanupService, MemoryMonitorMiddleware, RequestMemoryMonitor,
                       cleanup_lifespan, memory_router)
from ..manager import CacheManager, cache_manager
from ..singleton import SingletonMeta
from .db import Database

__all__ = ["create_app", "UserRepository", "HealthService", "CACHE_SETTINGS", "reset_singletons"]

log = logging.getLogger("memcache_ext.demo")

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


class UserRepository(metaclass=SingletonMeta):
    """SQL access to users and readings (one instance per process)."""

    def __init__(self, db_path: str) -> None:
        self.db = Database(db_path)  # checks the file: DatabaseError if unusable

    @property
    def end(self) -> int:
        return self.db.end

    def profile(self, user_id: int) -> Optional[dict[str, Any]]:
        rows = self.db.query("SELECT id, name, email, birth_year, created_at FROM users "
                             "WHERE id = ?", (user_id,))
        return dict(rows[0]) if rows else None

    def readings(self, user_id: int, since: int) -> list[dict[str, Any]]:
        rows = self.db.query("SELECT ts, heart_rate, steps FROM readings "
                             "WHERE user_id = ? AND ts >= ? ORDER BY ts", (user_id, since))
        return [{"ts": ts, "heart_rate": hr, "steps": steps} for ts, hr, steps in rows]

    def close(self) -> None:
        self.db.close()


class HealthService(metaclass=SingletonMeta):
    """Profiles, readings and summaries, each behind a cache (one instance per process)."""

    def __init__(self, db_path: str, unbounded: bool = False,
                 manager: Optional[CacheManager] = None) -> None:
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

    def profile(self, user_id: int) -> Optional[dict[str, Any]]:
        profile = self.profiles.get(user_id)
        if profile is None:
            profile = self.repo.profile(user_id)
            if profile is not None:
                self.profiles[user_id] = profile
        return profile

    def readings(self, user_id: int, days: int) -> Optional[list[dict[str, Any]]]:
        if self.profile(user_id) is None:
            return None
        key = (user_id, days)
        readings = self.readings_cache.get(key)
        if readings is None:
            readings = self.repo.readings(user_id, self.repo.end - days * 86400)
            self.readings_cache[key] = readings
        return readings

    def summary(self, user_id: int) -> Optional[dict[str, Any]]:
        summary = self.summaries.get(user_id)
        if summary is not None:
            return summary
        profile = self.profile(user_id)
        if profile is None:
            return None
        rows = self.repo.readings(user_id, 0)
        days: dict[str, dict[str, Any]] = {}
        for r in rows:
            day = time.strftime("%Y-%m-%d", time.gmtime(r["ts"]))
            d = days.get(day)
            if d is None:
                d = days[day] = {"date": day, "readings": 0, "heart_rate_sum": 0.0,
                                 "heart_rate_min": r["heart_rate"],
                                 "heart_rate_max": r["heart_rate"], "steps": 0}
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
            "user_id": user_id, "name": profile["name"], "days": len(daily),
            "readings": len(rows),
            "steps_total": total_steps,
            "steps_daily_mean": round(total_steps / len(daily), 1) if daily else 0.0,
            "heart_rate_mean": (round(sum(r["heart_rate"] for r in rows) / len(rows), 2)
                                if rows else None),
            "daily": daily,
        }
        self.summaries[user_id] = summary
        return summary

    def cache_sizes(self) -> dict[str, int]:
        return {name: len(cache) for name, cache in self.caches.items()}


def reset_singletons() -> None:
    """Forget the service and repository instances (tests, or a second app)."""
    for cls in (HealthService, UserRepository):
        if cls.has_instance():
            inst = cls()
            if isinstance(inst, UserRepository):
                inst.close()
        SingletonMeta.reset(cls)


def create_app(db_path: str, *, unbounded: bool = False, manager: Optional[CacheManager] = None,
               memory_limit_mb: float = 400, cleanup_interval: float = 30.0,
               metrics: bool = True) -> FastAPI:
    """The demo FastAPI app over the database at ``db_path`` (which must exist).

    Raises ``memcache_ext.demo.db.DatabaseError`` when the database is missing,
    is not a demo database, or is locked. ``manager``: the CacheManager for the
    caches (default ``cache_manager``); ``memory_limit_mb``: the middleware's
    high-memory threshold; ``metrics``: serve ``/metrics`` (needs
    prometheus-client).
    """
    manager = manager if manager is not None else cache_manager
    service = HealthService(db_path, unbounded, manager)
    cleanup = MemoryCleanupService(manager, interval=cleanup_interval)
    monitor = RequestMemoryMonitor(memory_limit_mb)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("demo service up: %s users, %s days of data, %s caches",
                 service.repo.db.meta.get("users"), service.repo.db.meta.get("days"),
                 "unbounded dict" if unbounded else "bounded")
        try:
            yield
        finally:
            service.repo.close()

    app = FastAPI(title="memcache-ext demo: user health data",
                  description="Profiles, readings and daily summaries from SQLite, cached.",
                  lifespan=cleanup_lifespan(cleanup, lifespan))
    app.state.service = service
    app.state.manager = manager
    app.state.cleanup = cleanup
    app.state.monitor = monitor
    app.add_middleware(MemoryMonitorMiddleware, manager=manager, monitor=monitor)
    app.include_router(memory_router(manager, monitor=monitor, cleanup_service=cleanup))

    if metrics:
        from prometheus_client import CollectorRegistry, ProcessCollector

        from ..prometheus import MemcacheCollector, metrics_router

        registry = CollectorRegistry()
        registry.register(MemcacheCollector(manager, monitor=monitor))
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
    def get_readings(user_id: UserId,
                     days: Days = 7) -> dict[str, Any]:
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

    @app.get("/health", summary="Liveness and cache sizes")
    def health() -> dict[str, Any]:
        return {"status": "ok", "cache_mode": "unbounded" if unbounded else "bounded",
                "users": int(service.repo.db.meta["users"]),
                "days": int(service.repo.db.meta["days"]),
                "caches": service.cache_sizes(),
                "rss_mb": round(manager.memory_usage_mb(), 1)}

    return app
