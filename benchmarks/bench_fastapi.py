"""Benchmarks: MemoryMonitorMiddleware's cost per request, and /memory/stats latency.

    PYTHONPATH=src python benchmarks/bench_fastapi.py          # a table
    PYTHONPATH=src python -m pytest benchmarks/bench_fastapi.py --benchmark-only

The apps are driven in-process, straight through ASGI (a minimal scope,
``receive`` and ``send``), so the figures are the middleware's own cost with
no HTTP client or server around it:

* ``bare``: a tiny raw ASGI app (response start + body);
* ``anchor``: the same app under the smallest pure ASGI middleware that reads
  RSS twice (what any such middleware must pay);
* ``MemoryMonitorMiddleware`` (default options, ``expose_headers=True``, and
  with its RSS probe off: two reads a request, as before issue 12);
* ``MemoryGuard`` around ``MemoryMonitorMiddleware`` (one shared probe);
* ``BaseHTTPMiddleware`` with a pass-through ``dispatch`` (for comparison);
* the same, around a FastAPI app with one ``/users/{user_id}`` route.

The stats endpoint is timed through ASGI too, with 20 caches of 1,000
entries, a full cleanup history and a full high-memory request history.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from typing import Any

try:
    import pytest
except ImportError:  # pragma: no cover - standalone use without pytest
    pytest = None  # type: ignore[assignment]  # standalone use without pytest

from fastapi import FastAPI
from starlette.middleware.base import BaseHTTPMiddleware

from memcache_ext import CacheManager, _procmem
from memcache_ext.fastapi import MemoryGuard, MemoryMonitorMiddleware, memory_router

N_CACHES, N_ENTRIES, HISTORY = 20, 1_000, 256

_BODY = b'{"ok":true}'
_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(_BODY)).encode()),
    ],
}
_BODY_MSG = {"type": "http.response.body", "body": _BODY, "more_body": False}
_REQUEST = {"type": "http.request", "body": b"", "more_body": False}


async def bare_app(scope: Any, receive: Any, send: Any) -> None:
    await send(_START)
    await send(_BODY_MSG)


class AnchorMiddleware:
    """The smallest pure ASGI middleware that reads RSS before and after."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        rss = _procmem.rss_bytes
        before = rss()
        await self.app(scope, receive, send)
        self.delta = rss() - before


async def _passthrough(request: Any, call_next: Any) -> Any:
    return await call_next(request)


def _scope(path: str = "/users/42") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }


async def _receive() -> dict[str, Any]:
    return _REQUEST


async def _send(message: Any) -> None:
    pass


def _fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.get("/users/{user_id}")
    async def user(user_id: int) -> dict[str, int]:
        return {"id": user_id}

    return app


def apps() -> dict[str, Any]:
    """name -> ASGI app, the variants compared."""
    out: dict[str, Any] = {
        "raw: bare app": bare_app,
        "raw: anchor (2 RSS reads)": AnchorMiddleware(bare_app),
        "raw: MemoryMonitorMiddleware": MemoryMonitorMiddleware(bare_app),
        "raw: MemoryMonitorMiddleware(expose_headers)": MemoryMonitorMiddleware(
            bare_app, expose_headers=True
        ),
        "raw: MemoryMonitorMiddleware, 2 reads (no probe)": MemoryMonitorMiddleware(
            bare_app, probe=_procmem.RssProbe(max_age=0)
        ),
        "raw: MemoryGuard + MemoryMonitorMiddleware": MemoryGuard(
            MemoryMonitorMiddleware(bare_app), limit_mb=4096, max_body_bytes=2**20
        ),
        "raw: BaseHTTPMiddleware": BaseHTTPMiddleware(bare_app, dispatch=_passthrough),
    }
    for name, mw in (
        ("bare", None),
        ("anchor (2 RSS reads)", AnchorMiddleware),
        ("MemoryMonitorMiddleware", MemoryMonitorMiddleware),
        ("BaseHTTPMiddleware", BaseHTTPMiddleware),
    ):
        app = _fastapi_app()
        if mw is BaseHTTPMiddleware:
            app.add_middleware(BaseHTTPMiddleware, dispatch=_passthrough)
        elif mw is not None:
            app.add_middleware(mw)
        out[f"FastAPI: {name}"] = app
    return out


async def _drive(app: Any, n: int, path: str = "/users/42") -> float:
    """Seconds per request over ``n`` sequential requests."""
    scope = _scope(path)
    t0 = time.perf_counter()
    for _ in range(n):
        await app(dict(scope), _receive, _send)
    return (time.perf_counter() - t0) / n


def per_request(
    variants: dict[str, Any], n: int = 5_000, repeats: int = 7
) -> dict[str, list[float]]:
    """Seconds per request for each app, one figure per repeat.

    The apps are measured round-robin (each repeat runs every app once), so a
    slow patch of a noisy machine hits them all alike.
    """
    loop = asyncio.new_event_loop()
    try:
        for app in variants.values():
            loop.run_until_complete(_drive(app, 500))
        out: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(repeats):
            for name, app in variants.items():
                out[name].append(loop.run_until_complete(_drive(app, n)))
        return out
    finally:
        loop.close()


def reads_per_request(n: int = 10_000) -> dict[str, float]:
    """RSS reads a request costs, back to back, for each way of reading it."""
    out = {}
    for name, max_age, guarded in (
        ("MemoryMonitorMiddleware, no probe (before issue 12)", 0.0, False),
        ("MemoryMonitorMiddleware (probe)", 0.002, False),
        ("MemoryGuard + MemoryMonitorMiddleware (shared probe)", 0.002, True),
    ):
        probe = _procmem.RssProbe(max_age=max_age)
        app: Any = MemoryMonitorMiddleware(bare_app, probe=probe)
        if guarded:
            app = MemoryGuard(app, limit_mb=4096, probe=probe)
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(_drive(app, n))
        finally:
            loop.close()
        out[name] = probe.reads / n
    return out


def stats_app() -> tuple[FastAPI, MemoryMonitorMiddleware]:
    """An app with 20 filled caches, full cleanup and request histories."""
    manager = CacheManager(memory_limit_mb=4096, history=100, min_interval=0)
    for c in range(N_CACHES):
        cache = manager.create_cache(f"cache{c:02d}", maxsize=10_000, ttl=300, max_bytes=64 * 2**20)
        for i in range(N_ENTRIES):
            cache[i] = {"id": i, "name": f"user {i}"}
        for i in range(100):
            cache.get(i)
            cache.get(-i - 1)
    for _ in range(100):
        manager.cleanup(fraction=0.01, collect=False)
    app = _fastapi_app()
    app.state.memcache_manager = manager
    app.include_router(memory_router(manager))
    app.add_middleware(
        MemoryMonitorMiddleware, memory_limit_mb=1, history_size=HISTORY, log_interval=3600
    )
    loop = asyncio.new_event_loop()
    try:  # fill the high-memory history (limit 1 MB: every request is "high")
        loop.run_until_complete(_drive(app, HISTORY + 10))
    finally:
        loop.close()
    middleware: Any = app.middleware_stack  # walked by .app, one wrapper after another
    while not isinstance(middleware, MemoryMonitorMiddleware):
        middleware = middleware.app
    assert len(middleware.monitor.high_memory_requests()) == HISTORY
    return app, middleware


async def _stats_once(app: Any) -> tuple[float, int]:
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    t0 = time.perf_counter()
    await app(_scope("/memory/stats"), _receive, send)
    elapsed = time.perf_counter() - t0
    return elapsed, len(sent[1]["body"])


def stats_latency(app: Any, n: int = 200) -> tuple[list[float], int]:
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(_stats_once(app))
        runs = [loop.run_until_complete(_stats_once(app)) for _ in range(n)]
    finally:
        loop.close()
    return [t for t, _ in runs], runs[-1][1]


if pytest is not None:
    _APPS = apps()

    @pytest.mark.parametrize("name", list(_APPS))
    @pytest.mark.benchmark(group="middleware: 100 sequential requests per round")
    def test_middleware_cost(benchmark: Any, name: str) -> None:
        app = _APPS[name]
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(_drive(app, 100))
            per = benchmark(lambda: loop.run_until_complete(_drive(app, 100)))
        finally:
            loop.close()
        assert per > 0

    @pytest.mark.benchmark(group="stats endpoint")
    def test_stats_endpoint(benchmark: Any) -> None:
        app, _ = stats_app()
        loop = asyncio.new_event_loop()
        try:
            _elapsed, size = benchmark(lambda: loop.run_until_complete(_stats_once(app)))
        finally:
            loop.close()
        assert size > 10_000


def main() -> int:
    print(f"Python {sys.version.split()[0]}, RSS source: {_procmem.rss_source()}")
    print("\nper request, in-process ASGI (median of 7 x 5,000 requests; min in brackets)\n")
    results = per_request(apps())
    base = {
        "raw": statistics.median(results["raw: bare app"]),
        "FastAPI": statistics.median(results["FastAPI: bare"]),
    }
    print(f"{'app':48s} {'us/request':>12s} {'over bare':>10s}")
    for name, runs in results.items():
        med = statistics.median(runs)
        over = med - base[name.split(":")[0]]
        print(f"{name:48s} {med * 1e6:8.2f} ({min(runs) * 1e6:5.2f}) {over * 1e6:+9.2f}")
    print("\nRSS reads per request, 10,000 back-to-back requests:")
    for name, reads in reads_per_request().items():
        print(f"  {name:56s} {reads:.3f}")
    app, _ = stats_app()
    times, size = stats_latency(app)
    times.sort()
    manager = app.state.memcache_manager
    t0 = time.perf_counter()
    for _ in range(50):
        manager.stats()
    manager_ms = (time.perf_counter() - t0) / 50 * 1e3
    print(
        f"\nGET /memory/stats with {N_CACHES} caches, 100 cleanup events, "
        f"{HISTORY} high-memory requests ({size:,} bytes of JSON), 200 calls:"
    )
    print(
        f"  median {statistics.median(times) * 1e3:.2f} ms, "
        f"p95 {times[int(len(times) * 0.95)] * 1e3:.2f} ms, max {times[-1] * 1e3:.2f} ms"
    )
    print(f"  of which CacheManager.stats() alone: {manager_ms:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
