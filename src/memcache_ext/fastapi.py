"""FastAPI integration (extra ``[fastapi]``): request memory monitoring, a stats
endpoint and a background cleanup service.

    from fastapi import FastAPI
    from memcache_ext import cache_manager
    from memcache_ext.fastapi import (MemoryCleanupService, MemoryMonitorMiddleware,
                                      cleanup_lifespan, memory_router)

    service = MemoryCleanupService(cache_manager, interval=30)
    app = FastAPI(lifespan=cleanup_lifespan(service))
    app.add_middleware(MemoryMonitorMiddleware, memory_limit_mb=400)
    app.include_router(memory_router(cache_manager, dependencies=[Depends(require_admin)]))

Nothing in ``memcache_ext`` imports this module; it is the only one that
imports FastAPI/Starlette.

``MemoryMonitorMiddleware`` is a pure ASGI middleware. Per HTTP request it
reads RSS before and after (``_procmem.rss_bytes``: one ``pread`` of
``/proc/self/statm``, about a microsecond) and the duration, and hands them to a
``RequestMemoryMonitor``, which keeps:

* per-route counters keyed by the route *template* (``scope["route"].path``,
  set by Starlette/FastAPI routing, e.g. ``/users/{user_id}``), never the raw
  path; requests that matched no route share the ``"<unmatched>"`` bucket, so
  the number of buckets is bounded by the number of routes plus one (and, as a
  safety net, by ``max_routes``: beyond it, new templates go to ``"<other>"``);
* requests that *end* with RSS above ``memory_limit_mb`` in a bounded history
  (a ``BoundedDeque`` of ``history_size`` items) of which ``stats()`` reports
  those younger than ``window_seconds``;
* a rate-limited warning log: at most one line per ``log_interval`` seconds,
  which says how many high-memory requests were not logged since the last one.

The counters are updated without a lock: the middleware runs on the event loop
thread. Apps served from several threads' event loops may lose an increment
under a race (never corrupt a structure).

The stats endpoint finds the monitor of the middleware that wrapped the
request through ``scope["memcache_ext.monitor"]`` (or use ``monitor=``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping, Optional, Sequence

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from . import _procmem
from .deque import BoundedDeque
from .gcstats import GCStats, gc_stats

__all__ = [
    "MemoryMonitorMiddleware", "RequestMemoryMonitor", "memory_router",
    "MemoryCleanupService", "cleanup_lifespan", "MemoryStats", "SCOPE_KEY",
    "UNMATCHED", "OTHER",
]

MB = 2**20
#: The scope key under which the middleware publishes its monitor.
SCOPE_KEY = "memcache_ext.monitor"
#: Route bucket for requests that matched no route (404s, redirects).
UNMATCHED = "<unmatched>"
#: Route bucket for templates beyond ``max_routes`` (should never fill).
OTHER = "<other>"

log = logging.getLogger("memcache_ext.fastapi")

Scope = Any  # MutableMapping[str, Any]
Message = Any
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _manager(manager: Any) -> Any:
    if manager is None:
        from .manager import cache_manager

        return cache_manager
    return manager


# -- request monitor ------------------------------------------------------------


class RequestMemoryMonitor:
    """Per-route request counters and the high-memory request history.

    ``memory_limit_mb``: a request that ends with RSS above it is "high
    memory" (recorded and logged). ``history_size``: most high-memory requests
    kept; ``window_seconds``: ``stats()`` reports only those younger than this.
    ``log_interval``: seconds between two warning lines. ``max_routes``: most
    route buckets (a safety net; normal apps never reach it).
    """

    def __init__(self, memory_limit_mb: float = 400, *, history_size: int = 256,
                 window_seconds: float = 3600.0, log_interval: float = 60.0,
                 max_routes: int = 1000, logger: Optional[logging.Logger] = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        if isinstance(memory_limit_mb, bool) or not isinstance(memory_limit_mb, (int, float)):
            raise TypeError("memory_limit_mb must be a number")
        if not memory_limit_mb > 0:
            raise ValueError(f"memory_limit_mb must be > 0, got {memory_limit_mb!r}")
        for name, value in (("window_seconds", window_seconds), ("log_interval", log_interval)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number")
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if isinstance(max_routes, bool) or not isinstance(max_routes, int) or max_routes < 1:
            raise ValueError(f"max_routes must be an int >= 1, got {max_routes!r}")
        self.memory_limit_mb = float(memory_limit_mb)
        self.limit_bytes = int(memory_limit_mb * MB)
        self.window_seconds = float(window_seconds)
        self.log_interval = float(log_interval)
        self.max_routes = max_routes
        self.logger = logger or log
        self._clock = clock
        self._wall = wall_clock
        self._history: BoundedDeque[tuple[Any, ...]] = BoundedDeque(history_size)
        # route -> [requests, high_memory, errors, max_delta_bytes, total_duration_s]
        self._routes: dict[str, list[Any]] = {}
        self._requests = 0
        self._high = 0
        self._last_log = -math.inf
        self._suppressed = 0  # since the last log line
        self._suppressed_total = 0

    @property
    def history_size(self) -> int:
        return self._history.maxlen

    def route_key(self, scope: Scope) -> str:
        """The route template of a finished request (``"<unmatched>"`` if none).

        The template FastAPI matched, with the prefixes of included routers
        (``/api/users/{user_id}``); else ``scope["route"].path`` (Starlette
        routes; for a mounted sub-application, the path of its own route or of
        the ``Mount``).
        """
        # FastAPI >= 0.12x keeps included routers as such: the route object's
        # own path lacks the include prefixes, the effective context has it.
        fastapi_scope = scope.get("fastapi")
        if fastapi_scope is not None:
            try:
                path = fastapi_scope.get("effective_route_context").path_format
            except AttributeError:
                pass
            else:
                if isinstance(path, str) and path:
                    return path
        route = scope.get("route")
        if route is None:
            return UNMATCHED
        path = getattr(route, "path", None)
        return path if isinstance(path, str) and path else UNMATCHED

    def record(self, scope: Scope, before: int, after: int, duration: float,
               status: int, error: bool = False) -> None:
        """Account one finished request (called by the middleware)."""
        key = self.route_key(scope)
        routes = self._routes
        bucket = routes.get(key)
        if bucket is None:
            if len(routes) >= self.max_routes:
                key = OTHER
                bucket = routes.get(key)
            if bucket is None:
                bucket = routes.setdefault(key, [0, 0, 0, 0, 0.0])
        self._requests += 1
        bucket[0] += 1
        delta = after - before
        if delta > bucket[3]:
            bucket[3] = delta
        bucket[4] += duration
        if error:
            bucket[2] += 1
        if after > self.limit_bytes:
            bucket[1] += 1
            self._high_memory(key, scope, before, after, duration, status)

    def _high_memory(self, key: str, scope: Scope, before: int, after: int,
                     duration: float, status: int) -> None:
        self._high += 1
        method = scope.get("method", "")
        self._history.append((self._wall(), self._clock(), method, key, status,
                              before, after, duration))
        now = self._clock()
        if now - self._last_log >= self.log_interval:
            suppressed, self._suppressed = self._suppressed, 0
            self._last_log = now
            self.logger.warning(
                "high memory after %s %s (status %s): RSS %.1f MB > limit %.0f MB, "
                "delta %+.1f MB, %.1f ms%s", method, key, status, after / MB,
                self.memory_limit_mb, (after - before) / MB, duration * 1e3,
                f"; {suppressed} more high-memory requests not logged since the last line"
                if suppressed else "")
        else:
            self._suppressed += 1
            self._suppressed_total += 1

    def high_memory_requests(self) -> list[dict[str, Any]]:
        """High-memory requests within the window, oldest first."""
        horizon = self._clock() - self.window_seconds
        return [
            {"time": wall, "method": method, "route": route, "status": status,
             "rss_before_mb": before / MB, "rss_after_mb": after / MB,
             "delta_mb": (after - before) / MB, "duration_ms": duration * 1e3}
            for wall, mono, method, route, status, before, after, duration
            in self._history.snapshot() if mono >= horizon
        ]

    def routes(self) -> list[dict[str, Any]]:
        """Per-route figures, sorted by route."""
        out = []
        for route, (n, high, errors, max_delta, total) in sorted(
                (k, list(v)) for k, v in list(self._routes.items())):
            out.append({"route": route, "requests": n, "high_memory": high, "errors": errors,
                        "max_delta_mb": max_delta / MB, "total_duration_s": total,
                        "mean_duration_ms": total / n * 1e3 if n else 0.0})
        return out

    def stats(self) -> dict[str, Any]:
        return {
            "memory_limit_mb": self.memory_limit_mb,
            "window_seconds": self.window_seconds,
            "history_size": self.history_size,
            "log_interval": self.log_interval,
            "requests": self._requests,
            "high_memory_total": self._high,
            "high_memory_dropped": self._history.dropped,
            "log_suppressed_total": self._suppressed_total,
            "high_memory_requests": self.high_memory_requests(),
            "routes": self.routes(),
        }

    def reset(self) -> None:
        self._history.clear()
        self._routes.clear()
        self._requests = self._high = self._suppressed = self._suppressed_total = 0
        self._last_log = -math.inf


# -- middleware -----------------------------------------------------------------


class MemoryMonitorMiddleware:
    """Pure ASGI middleware: RSS before/after and duration of every HTTP request.

    ``app.add_middleware(MemoryMonitorMiddleware, memory_limit_mb=400)``.
    ``expose_headers=True`` adds ``X-Memory-Usage-MB`` (RSS when the response
    starts) and ``X-Memory-Delta-MB`` (change since the request started) to
    every response; off by default, memory figures are internal information.
    ``manager``: RSS is read through ``manager.rss_bytes`` (else the cheap
    ``_procmem`` reader); ``rss``: any callable returning bytes (tests).
    ``monitor``: share a ``RequestMemoryMonitor`` (else one is built from the
    other arguments; it is ``self.monitor``).

    Websocket and lifespan scopes are passed straight through; response
    messages are forwarded one by one as they come (nothing is buffered); an
    exception from the app is recorded (status 500 unless a response had
    started) and re-raised.
    """

    def __init__(self, app: ASGIApp, memory_limit_mb: float = 400,
                 expose_headers: bool = False, history_size: int = 256,
                 window_seconds: float = 3600.0, log_interval: float = 60.0,
                 manager: Any = None, *, monitor: Optional[RequestMemoryMonitor] = None,
                 rss: Optional[Callable[[], int]] = None, max_routes: int = 1000) -> None:
        self.app = app
        if monitor is None:
            monitor = RequestMemoryMonitor(memory_limit_mb, history_size=history_size,
                                           window_seconds=window_seconds,
                                           log_interval=log_interval, max_routes=max_routes)
        self.monitor = monitor
        self.expose_headers = bool(expose_headers)
        self.manager = manager
        if rss is None:
            rss = manager.rss_bytes if manager is not None else _procmem.rss_bytes
        self._rss = rss

    def stats(self) -> dict[str, Any]:
        return self.monitor.stats()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        monitor = self.monitor
        scope[SCOPE_KEY] = monitor
        rss = self._rss
        expose = self.expose_headers
        status = 0
        before = rss()
        t0 = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if expose:
                    now = rss()
                    headers = list(message.get("headers", ()))
                    headers.append((b"x-memory-usage-mb", b"%.1f" % (now / MB)))
                    headers.append((b"x-memory-delta-mb", b"%+.1f" % ((now - before) / MB)))
                    message = dict(message)
                    message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException:
            monitor.record(scope, before, rss(), time.perf_counter() - t0,
                           status or 500, True)
            raise
        monitor.record(scope, before, rss(), time.perf_counter() - t0, status)


# -- stats endpoint models -------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class ProcessMemory(_Model):
    """The process's resident memory."""

    rss_bytes: int = Field(description="Resident set size in bytes")
    rss_mb: float = Field(description="Resident set size in MiB")
    rss_source: str = Field(description='Where RSS is read from: "/proc/self/statm" or "psutil"')
    limit_fraction: Optional[float] = Field(None, description="RSS / memory limit")


class MemoryLimitInfo(_Model):
    """The memory limit the manager keeps the process under, and where it came from."""

    bytes: int
    mb: float
    source: str = Field(description='e.g. "configured", "cgroup v2 /sys/fs/cgroup/.../memory.max"'
                                    ' or "physical memory (...)"')
    high_water: float = Field(description="Fraction of the limit where a cleanup starts")
    low_water: float = Field(description="Fraction of the limit a cleanup aims at")
    high_water_bytes: int
    low_water_bytes: int


class CacheStats(_Model):
    """One cache's statistics (``cache.stats()`` plus the manager's idle time)."""

    size: int = Field(0, description="Entries")
    maxsize: Optional[int] = Field(None, description="Entry bound (null: none)")
    nbytes: int = Field(0, description="Accounted bytes (0 without max_bytes)")
    max_bytes: Optional[int] = Field(None, description="Byte bound (null: none)")
    hits: int = 0
    misses: int = 0
    hit_rate: float = 0.0
    evictions: int = Field(0, description="capacity + bytes + trim evictions")
    evictions_by_reason: dict[str, int] = Field(default_factory=dict)
    expirations: int = 0
    rejected: int = Field(0, description="Entries refused as larger than max_bytes")
    ttl: Optional[float] = None
    idle_seconds: Optional[float] = Field(None, description="Since the manager last saw it used")
    error: Optional[str] = Field(None, description="Set when the cache's stats() raised")


class CacheTotals(_Model):
    caches: int
    entries: int
    nbytes: int
    mb: float
    hits: int
    misses: int
    hit_rate: float
    evictions: int
    expirations: int
    rejected: int


class CleanupEventModel(_Model):
    """One cleanup run by the manager."""

    time: float = Field(description="Wall-clock start (Unix time)")
    reason: str
    rss_before: int
    rss_after: int
    rss_freed_bytes: int = Field(description="rss_before - rss_after (may be negative)")
    limit_bytes: int
    target_bytes: Optional[int] = None
    accounted_bytes_released: int = Field(description="Drop in the caches' accounted bytes")
    entries_evicted: int
    entries_expired: int
    objects_collected: int
    malloc_trimmed: bool
    duration: float = Field(description="Seconds")
    gc_duration: float = Field(description="Seconds spent in gc.collect()")
    caches_trimmed: list[str]
    skipped: list[str]
    errors: list[str]


class HighMemoryRequest(_Model):
    """A request that ended with RSS above the middleware's memory limit."""

    time: float = Field(description="Wall-clock end (Unix time)")
    method: str
    route: str = Field(description="Route template, e.g. /users/{user_id}, or <unmatched>")
    status: int
    rss_before_mb: float
    rss_after_mb: float
    delta_mb: float
    duration_ms: float


class RouteStats(_Model):
    """Per-route request figures (since start)."""

    route: str
    requests: int
    high_memory: int = Field(description="Requests that ended above the memory limit")
    errors: int = Field(description="Requests whose handler raised")
    max_delta_mb: float = Field(description="Largest RSS growth during one request")
    total_duration_s: float
    mean_duration_ms: float


class RequestMonitorStats(_Model):
    """What the MemoryMonitorMiddleware recorded."""

    memory_limit_mb: float
    window_seconds: float
    history_size: int
    log_interval: float
    requests: int
    high_memory_total: int
    high_memory_dropped: int = Field(description="Pushed out of the bounded history")
    log_suppressed_total: int = Field(description="High-memory requests not logged (rate limit)")
    high_memory_requests: list[HighMemoryRequest] = Field(
        description="Within the last window_seconds, oldest first")
    routes: list[RouteStats]


class GCGeneration(_Model):
    collections: int
    collected: int
    uncollectable: int
    pause_total_s: float
    pause_max_s: float
    pause_mean_s: float


class GCTotals(_Model):
    collections: int
    collected: int
    uncollectable: int
    pause_total_s: float
    pause_max_s: float


class GCStatsModel(_Model):
    """Garbage-collector statistics (since ``gc_stats.install()``)."""

    installed: bool
    generations: list[GCGeneration]
    total: GCTotals
    last_pause_s: float
    gc_counts: list[int]
    gc_enabled: bool


class CleanupServiceStats(_Model):
    running: bool
    interval: float
    threshold_mb: Optional[float]
    runs: int
    expired: int
    cleanups: int
    errors: int
    last_error: Optional[str]
    last_run: Optional[float] = Field(description="Wall-clock time of the last run")


class MemoryStats(_Model):
    """``GET /memory/stats``: process memory, limit, caches, cleanups, requests, GC."""

    process: ProcessMemory
    limit: MemoryLimitInfo
    caches: dict[str, CacheStats]
    totals: CacheTotals
    max_total_bytes: Optional[int] = None
    cleanups: list[CleanupEventModel] = Field(description="Recent cleanup events, oldest first")
    cleanup_count: int
    cleanups_dropped: int
    requests: Optional[RequestMonitorStats] = Field(
        None, description="null when no MemoryMonitorMiddleware wraps the app")
    cleanup_service: Optional[CleanupServiceStats] = None
    gc: GCStatsModel


def memory_router(manager: Any = None, *, prefix: str = "/memory",
                  dependencies: Optional[Sequence[Any]] = None,
                  tags: Optional[Sequence[str]] = ("memory",),
                  monitor: Optional[RequestMemoryMonitor] = None,
                  cleanup_service: Optional["MemoryCleanupService"] = None,
                  gc: Optional[GCStats] = None,
                  include_in_schema: bool = True) -> APIRouter:
    """An APIRouter with ``GET {prefix}/stats`` (response model ``MemoryStats``).

    ``manager``: the CacheManager to report (default ``cache_manager``).
    ``dependencies``: FastAPI dependencies run before the endpoint (put your
    auth here: ``dependencies=[Depends(require_admin)]``). ``monitor``: the
    request monitor to report (default: the one of the MemoryMonitorMiddleware
    that wrapped this request, if any). ``gc``: GC statistics (default
    ``gc_stats``, installed here).
    """
    mgr = _manager(manager)
    gcs = gc if gc is not None else gc_stats
    gcs.install()
    router = APIRouter(prefix=prefix, dependencies=list(dependencies or ()),
                       tags=list(tags or ()))

    @router.get("/stats", response_model=MemoryStats, include_in_schema=include_in_schema,
                summary="Process memory, caches, cleanups, high-memory requests, GC")
    async def memory_stats(request: Request) -> dict[str, Any]:
        st = mgr.stats()
        mon = monitor if monitor is not None else request.scope.get(SCOPE_KEY)
        st["requests"] = mon.stats() if mon is not None else None
        st["cleanup_service"] = cleanup_service.stats() if cleanup_service is not None else None
        st["gc"] = gcs.snapshot()
        return st

    return router


# -- cleanup service ----------------------------------------------------------------


class MemoryCleanupService:
    """Every ``interval`` seconds: ``expire()`` every cache, then clean up.

    With ``threshold_mb=None`` the cleanup is ``manager.cleanup_if_needed()``
    (the manager's high-water mark, hysteresis and ``min_interval``); with a
    threshold, ``manager.cleanup("threshold")`` runs whenever RSS is above it.
    The work runs on the event loop (it is short: expiring is a walk of the
    expired entries; a cleanup includes one ``gc.collect()``).

    ``await start()`` / ``await stop()`` (both idempotent), ``async with
    service:``, or ``FastAPI(lifespan=cleanup_lifespan(service))``. ``stop()``
    wakes the loop through an ``asyncio.Event`` and waits for it: nothing runs
    after it returns. A run that raises is logged and the loop goes on.
    """

    def __init__(self, manager: Any = None, interval: float = 30.0,
                 threshold_mb: Optional[float] = None, *,
                 logger: Optional[logging.Logger] = None) -> None:
        if isinstance(interval, bool) or not isinstance(interval, (int, float)):
            raise TypeError("interval must be a number")
        if not (interval > 0 and math.isfinite(interval)):
            raise ValueError(f"interval must be > 0 and finite, got {interval!r}")
        if threshold_mb is not None and not threshold_mb > 0:
            raise ValueError(f"threshold_mb must be > 0 or None, got {threshold_mb!r}")
        self.manager = _manager(manager)
        self.interval = float(interval)
        self.threshold_mb = threshold_mb
        self.logger = logger or log
        self._task: Optional[asyncio.Task[None]] = None
        self._stop: Optional[asyncio.Event] = None
        self.runs = 0
        self.expired = 0
        self.cleanups = 0
        self.errors = 0
        self.last_error: Optional[str] = None
        self.last_run: Optional[float] = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def run_once(self) -> dict[str, Any]:
        """One pass now (synchronous): expire every cache, then clean up if needed.

        Errors of one cache are logged and counted; the others still run.
        """
        expired = 0
        errors: list[str] = []
        for name, cache in self.manager.caches().items():
            try:
                expired += cache.expire()
            except Exception as exc:  # noqa: BLE001 - one cache must not stop the rest
                errors.append(f"{name}: {type(exc).__name__}: {exc}")
                self.logger.exception("memory cleanup: expire() of cache %r failed", name)
        event = None
        try:
            if self.threshold_mb is None:
                event = self.manager.cleanup_if_needed()
            elif self.manager.memory_usage_mb() > self.threshold_mb:
                event = self.manager.cleanup("threshold")
        except Exception as exc:  # noqa: BLE001
            errors.append(f"cleanup: {type(exc).__name__}: {exc}")
            self.logger.exception("memory cleanup failed")
        self.runs += 1
        self.expired += expired
        self.last_run = time.time()
        if event is not None:
            self.cleanups += 1
        if errors:
            self.errors += len(errors)
            self.last_error = errors[-1]
        return {"expired": expired, "cleanup": event, "errors": errors}

    async def _loop(self, stop: asyncio.Event) -> None:
        while True:
            try:
                await asyncio.wait_for(stop.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
            if stop.is_set():
                return
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - run_once logs its own; belt and braces
                self.errors += 1
                self.logger.exception("memory cleanup pass failed")

    async def start(self) -> None:
        """Start the background task (no-op when it is running)."""
        if self.running:
            return
        self._stop = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(
            self._loop(self._stop), name="memcache_ext-cleanup")

    async def stop(self) -> None:
        """Stop the task and wait for it (no-op when it is not running)."""
        task, stop = self._task, self._stop
        self._task = self._stop = None
        if task is None:
            return
        if stop is not None:
            stop.set()
        if not task.done():
            done, _ = await asyncio.wait({task}, timeout=max(5.0, self.interval))
            if not done:  # pragma: no cover - run_once hung past the timeout
                task.cancel()
                await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:  # pragma: no cover
            self.logger.error("memory cleanup task ended with %r", task.exception())

    async def __aenter__(self) -> "MemoryCleanupService":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    def stats(self) -> dict[str, Any]:
        return {"running": self.running, "interval": self.interval,
                "threshold_mb": self.threshold_mb, "runs": self.runs,
                "expired": self.expired, "cleanups": self.cleanups, "errors": self.errors,
                "last_error": self.last_error, "last_run": self.last_run}


def cleanup_lifespan(service: MemoryCleanupService,
                     lifespan: Optional[Callable[[Any], Any]] = None
                     ) -> Callable[[Any], contextlib.AbstractAsyncContextManager[Any]]:
    """A FastAPI ``lifespan`` that runs ``service`` inside the app's own ``lifespan``.

    ``FastAPI(lifespan=cleanup_lifespan(service, my_lifespan))``: ``my_lifespan``
    starts first (so caches it creates exist) and its state is passed on; the
    service starts, and on shutdown stops before ``my_lifespan`` tears down.
    """

    @contextlib.asynccontextmanager
    async def _lifespan(app: Any) -> AsyncIterator[Optional[Mapping[str, Any]]]:
        if lifespan is None:
            async with service:
                yield None
            return
        async with lifespan(app) as state:
            async with service:
                yield state

    return _lifespan
