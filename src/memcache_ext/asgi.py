"""Request memory monitoring as a pure ASGI middleware (no FastAPI or Starlette import).

    app.add_middleware(MemoryMonitorMiddleware, memory_limit_mb=400)   # FastAPI/Starlette
    app = MemoryMonitorMiddleware(app, memory_limit_mb=400)            # any ASGI app

``MemoryMonitorMiddleware`` takes RSS before and after every HTTP request and
the duration, and hands them to a ``RequestMemoryMonitor``. The figures come
from an ``RssProbe`` (``_procmem``): "after" is a fresh read (one ``pread`` of
``/proc/self/statm``, 1-5 microseconds depending on the machine), "before"
reuses the last reading when it is younger than 2 ms (back-to-back or
overlapping requests), so a busy server pays about one read per request; the
probe is shared with the memory guard (``memcache_ext.guard``) and the
manager. The monitor keeps:

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

The stats endpoint (``memcache_ext.fastapi.memory_router``) finds the monitor
of the middleware that wrapped the request through ``scope[SCOPE_KEY]``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Optional, TypedDict

from . import _procmem
from ._constants import MIB as MB
from ._validate import check_bool, check_mb
from .deque import BoundedDeque

__all__ = [
    "MemoryMonitorMiddleware",
    "RequestMemoryMonitor",
    "RequestMonitorStats",
    "HighMemoryRequest",
    "RouteStats",
    "SCOPE_KEY",
    "UNMATCHED",
    "OTHER",
]

#: The scope key under which the middleware publishes its monitor.
SCOPE_KEY = "memcache_ext.monitor"
#: Route bucket for requests that matched no route (404s, redirects).
UNMATCHED = "<unmatched>"
#: Route bucket for templates beyond ``max_routes`` (should never fill).
OTHER = "<other>"

log = logging.getLogger("memcache_ext.asgi")

Scope = Any  # MutableMapping[str, Any]
Message = Any
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# -- the shapes of the monitor's statistics ------------------------------------------


class HighMemoryRequest(TypedDict):
    """A request that ended with RSS above the middleware's memory limit."""

    time: Annotated[float, "Wall-clock end (Unix time)"]
    method: str
    route: Annotated[str, "Route template, e.g. /users/{user_id}, or <unmatched>"]
    status: int
    rss_before_mb: float
    rss_after_mb: float
    delta_mb: float
    duration_ms: float


class RouteStats(TypedDict):
    """Per-route request figures (since start)."""

    route: str
    requests: int
    high_memory: Annotated[int, "Requests that ended above the memory limit"]
    errors: Annotated[int, "Requests whose handler raised"]
    max_delta_mb: Annotated[float, "Largest RSS growth during one request"]
    total_duration_s: float
    mean_duration_ms: float


class RequestMonitorStats(TypedDict):
    """What the MemoryMonitorMiddleware recorded (``RequestMemoryMonitor.stats()``)."""

    memory_limit_mb: float
    window_seconds: float
    history_size: int
    log_interval: float
    requests: int
    high_memory_total: int
    high_memory_dropped: Annotated[int, "Pushed out of the bounded history"]
    log_suppressed_total: Annotated[int, "High-memory requests not logged (rate limit)"]
    high_memory_requests: Annotated[
        list[HighMemoryRequest], "Within the last window_seconds, oldest first"
    ]
    routes: list[RouteStats]


# -- request monitor ------------------------------------------------------------


class RequestMemoryMonitor:
    """Per-route request counters and the high-memory request history.

    ``memory_limit_mb``: a request that ends with RSS above it is "high
    memory" (recorded and logged). ``history_size``: most high-memory requests
    kept; ``window_seconds``: ``stats()`` reports only those younger than this.
    ``log_interval``: seconds between two warning lines. ``max_routes``: most
    route buckets (a safety net; normal apps never reach it).
    """

    def __init__(
        self,
        memory_limit_mb: float = 400,
        *,
        history_size: int = 256,
        window_seconds: float = 3600.0,
        log_interval: float = 60.0,
        max_routes: int = 1000,
        logger: Optional[logging.Logger] = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(memory_limit_mb, bool) or not isinstance(memory_limit_mb, (int, float)):
            raise TypeError(
                f"memory_limit_mb must be a number, not {type(memory_limit_mb).__name__}"
            )
        check_mb("memory_limit_mb", memory_limit_mb)
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
        if isinstance(history_size, bool) or not isinstance(history_size, int):
            raise TypeError(f"history_size must be an int, not {type(history_size).__name__}")
        if history_size < 1:
            raise ValueError(f"history_size must be >= 1, got {history_size}")
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

    def record(
        self,
        scope: Scope,
        before: int,
        after: int,
        duration: float,
        status: int,
        error: bool = False,
    ) -> None:
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
        bucket[3] = max(bucket[3], delta)
        bucket[4] += duration
        if error:
            bucket[2] += 1
        if after > self.limit_bytes:
            bucket[1] += 1
            self._high_memory(key, scope, before, after, duration, status)

    def _high_memory(
        self, key: str, scope: Scope, before: int, after: int, duration: float, status: int
    ) -> None:
        self._high += 1
        method = scope.get("method", "")
        self._history.append(
            (self._wall(), self._clock(), method, key, status, before, after, duration)
        )
        now = self._clock()
        if now - self._last_log >= self.log_interval:
            suppressed, self._suppressed = self._suppressed, 0
            self._last_log = now
            self.logger.warning(
                "high memory after %s %s (status %s): RSS %.1f MB > limit %.0f MB, "
                "delta %+.1f MB, %.1f ms%s",
                method,
                key,
                status,
                after / MB,
                self.memory_limit_mb,
                (after - before) / MB,
                duration * 1e3,
                f"; {suppressed} more high-memory requests not logged since the last line"
                if suppressed
                else "",
            )
        else:
            self._suppressed += 1
            self._suppressed_total += 1

    def high_memory_requests(self) -> list[HighMemoryRequest]:
        """High-memory requests within the window, oldest first."""
        horizon = self._clock() - self.window_seconds
        return [
            {
                "time": wall,
                "method": method,
                "route": route,
                "status": status,
                "rss_before_mb": before / MB,
                "rss_after_mb": after / MB,
                "delta_mb": (after - before) / MB,
                "duration_ms": duration * 1e3,
            }
            for (
                wall,
                mono,
                method,
                route,
                status,
                before,
                after,
                duration,
            ) in self._history.snapshot()
            if mono >= horizon
        ]

    def routes(self) -> list[RouteStats]:
        """Per-route figures, sorted by route."""
        out: list[RouteStats] = []
        for route, (n, high, errors, max_delta, total) in sorted(
            (k, list(v)) for k, v in list(self._routes.items())
        ):
            out.append(
                {
                    "route": route,
                    "requests": n,
                    "high_memory": high,
                    "errors": errors,
                    "max_delta_mb": max_delta / MB,
                    "total_duration_s": total,
                    "mean_duration_ms": total / n * 1e3 if n else 0.0,
                }
            )
        return out

    def stats(self) -> RequestMonitorStats:
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
    RSS comes from ``probe`` (an ``RssProbe``): by default the manager's
    (``manager.probe``) or the process-wide one, shared with the memory guard;
    ``rss``: any callable returning bytes (tests), read through a probe of
    its own.
    ``monitor``: share a ``RequestMemoryMonitor`` (else one is built from the
    other arguments, which cannot go with it; it is ``self.monitor``).

    Websocket and lifespan scopes are passed straight through; response
    messages are forwarded one by one as they come (nothing is buffered); an
    exception from the app is recorded (status 500 unless a response had
    started) and re-raised.
    """

    def __init__(
        self,
        app: ASGIApp,
        memory_limit_mb: float = 400,
        expose_headers: bool = False,
        history_size: int = 256,
        window_seconds: float = 3600.0,
        log_interval: float = 60.0,
        manager: Any = None,
        *,
        monitor: Optional[RequestMemoryMonitor] = None,
        rss: Optional[Callable[[], int]] = None,
        max_routes: int = 1000,
        probe: Optional[_procmem.RssProbe] = None,
    ) -> None:
        self.app = app
        if manager is not None:
            from .manager import manager_or_default

            manager = manager_or_default(manager)
        if probe is not None and not callable(getattr(probe, "recent", None)):
            raise TypeError(f"probe must be an RssProbe, not {type(probe).__name__}")
        if monitor is not None and not isinstance(monitor, RequestMemoryMonitor):
            raise TypeError(
                f"monitor must be a RequestMemoryMonitor or None, not {type(monitor).__name__}"
            )
        if monitor is not None:
            given = [
                name
                for name, value, default in (
                    ("memory_limit_mb", memory_limit_mb, 400),
                    ("history_size", history_size, 256),
                    ("window_seconds", window_seconds, 3600.0),
                    ("log_interval", log_interval, 60.0),
                    ("max_routes", max_routes, 1000),
                )
                if value != default
            ]
            if given:  # they would be ignored: the monitor given has its own
                raise TypeError(
                    f"{', '.join(given)} cannot go with monitor=: give them to the"
                    f" RequestMemoryMonitor"
                )
        if monitor is None:
            monitor = RequestMemoryMonitor(
                memory_limit_mb,
                history_size=history_size,
                window_seconds=window_seconds,
                log_interval=log_interval,
                max_routes=max_routes,
            )
        self.monitor = monitor
        self.expose_headers = check_bool("expose_headers", expose_headers)
        self.manager = manager
        if probe is None:
            if rss is not None:
                if not callable(rss):
                    raise TypeError(f"rss must be callable, not {type(rss).__name__}")
                probe = _procmem.RssProbe(rss)
            elif manager is not None:
                probe = manager.probe
            else:
                probe = _procmem.shared_probe
        self.probe = probe

    def stats(self) -> RequestMonitorStats:
        return self.monitor.stats()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        monitor = self.monitor
        scope[SCOPE_KEY] = monitor
        probe = self.probe
        expose = self.expose_headers
        status = 0
        before = probe.recent()
        t0 = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if expose:
                    now = probe.recent()
                    headers = list(message.get("headers", ()))
                    headers.append((b"x-memory-usage-mb", b"%.1f" % (now / MB)))
                    headers.append((b"x-memory-delta-mb", b"%+.1f" % ((now - before) / MB)))
                    message = dict(message)
                    message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException:
            monitor.record(
                scope, before, probe.read(), time.perf_counter() - t0, status or 500, True
            )
            raise
        monitor.record(scope, before, probe.read(), time.perf_counter() - t0, status)
