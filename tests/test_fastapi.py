"""memcache_ext.fastapi: the middleware, the stats router and the cleanup service."""

from __future__ import annotations

import asyncio
import logging
import random
import subprocess
import sys
import warnings
from typing import TYPE_CHECKING, Annotated, Any, Optional, TypedDict

import pytest

if TYPE_CHECKING:
    import httpx
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi import Depends, FastAPI, HTTPException, WebSocket  # noqa: E402 - after importorskip
from fastapi.responses import StreamingResponse  # noqa: E402 - after importorskip

from memcache_ext import CacheManager, PyLruCache  # noqa: E402 - after importorskip
from memcache_ext.fastapi import (  # noqa: E402 - after importorskip
    SCOPE_KEY,
    UNMATCHED,
    MemoryCleanupService,
    MemoryMonitorMiddleware,
    MemoryStats,
    RequestMemoryMonitor,
    cleanup_lifespan,
    memory_router,
)
from memcache_ext.guard import MemoryGuard  # noqa: E402 - after importorskip
from support import sample_manager  # noqa: E402 - after importorskip

MB = 2**20


class FakeRss:
    def __init__(self, mb: float = 100) -> None:
        self.value = int(mb * MB)

    def __call__(self) -> int:
        return self.value


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_app(**mw: Any) -> FastAPI:
    app = FastAPI()

    @app.get("/users/{user_id}")
    async def user(user_id: int) -> dict[str, int]:
        return {"id": user_id}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hello " + await websocket.receive_text())
        await websocket.close()

    if mw is not None:
        app.add_middleware(MemoryMonitorMiddleware, **mw)
    return app


def get(app: Any, *paths: str, raise_app_exceptions: bool = True) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [await client.get(p) for p in paths]

    return asyncio.run(go())


async def run_lifespan(app: Any, body: Any = None) -> dict[str, Any]:
    """Drive the ASGI lifespan protocol around ``await body()``; returns the state."""
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    outbox: asyncio.Queue[Any] = asyncio.Queue()
    state: dict[str, Any] = {}
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": state}
    task = asyncio.create_task(app(scope, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    if body is not None:
        await body()
    await inbox.put({"type": "lifespan.shutdown"})
    assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
    await task
    return state


def monitor_of(**kw: Any) -> RequestMemoryMonitor:
    return RequestMemoryMonitor(kw.pop("memory_limit_mb", 400), **kw)


# -- core import hygiene ------------------------------------------------------------


def test_core_import_does_not_import_fastapi() -> None:
    code = (
        "import sys, memcache_ext; memcache_ext.CacheManager; memcache_ext.gc_stats; "
        "bad = [m for m in ('fastapi', 'starlette', 'prometheus_client') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- middleware ----------------------------------------------------------------------


def test_route_template_not_raw_path() -> None:
    mon = monitor_of()
    app = make_app(monitor=mon, rss=FakeRss(100))
    r1, r2 = get(app, "/users/1", "/users/2")
    assert r1.json() == {"id": 1} and r2.json() == {"id": 2}
    routes = {r["route"]: r for r in mon.routes()}
    assert set(routes) == {"/users/{user_id}"}
    assert routes["/users/{user_id}"]["requests"] == 2


def test_included_router_prefix_in_template() -> None:
    from fastapi import APIRouter

    inner = APIRouter(prefix="/v1")

    @inner.get("/items/{item_id}")
    async def item(item_id: int) -> int:
        return item_id

    app = FastAPI()
    app.include_router(inner, prefix="/api")
    mon = monitor_of()
    app.add_middleware(MemoryMonitorMiddleware, monitor=mon)
    get(app, "/api/v1/items/3", "/api/v1/items/4")
    assert [r["route"] for r in mon.routes()] == ["/api/v1/items/{item_id}"]


def test_route_buckets_bounded_under_random_404s() -> None:
    mon = monitor_of()
    app = make_app(monitor=mon, rss=FakeRss(100))
    rng = random.Random(1)
    paths = [f"/x{rng.getrandbits(64):x}/{rng.getrandbits(32)}" for _ in range(300)]
    responses = get(app, "/users/7", *paths)
    assert all(r.status_code == 404 for r in responses[1:])
    routes = {r["route"]: r["requests"] for r in mon.routes()}
    assert routes == {"/users/{user_id}": 1, UNMATCHED: 300}


def test_max_routes_safety_net() -> None:
    mon = monitor_of(max_routes=2)
    for i in range(10):
        mon.record({"route": type("R", (), {"path": f"/r{i}"})()}, 0, 0, 0.001, 200)
    assert len(mon.routes()) == 3  # two routes, then everything in "<other>"
    assert {r["route"] for r in mon.routes()} == {"/r0", "/r1", "<other>"}


def test_headers_only_with_expose_headers() -> None:
    (plain,) = get(make_app(rss=FakeRss(100)), "/users/1")
    assert "x-memory-usage-mb" not in plain.headers
    assert "x-memory-delta-mb" not in plain.headers
    (exposed,) = get(make_app(rss=FakeRss(123.4), expose_headers=True), "/users/1")
    assert exposed.headers["x-memory-usage-mb"] == "123.4"
    assert exposed.headers["x-memory-delta-mb"] == "+0.0"
    assert exposed.json() == {"id": 1}
    assert exposed.headers["content-type"] == "application/json"


def test_high_memory_history_and_window() -> None:
    clock = FakeClock()
    mon = monitor_of(
        memory_limit_mb=400, history_size=3, window_seconds=60, clock=clock, log_interval=0
    )
    rss = FakeRss(100)
    app = make_app(monitor=mon, rss=rss)
    get(app, "/users/1")
    assert mon.high_memory_requests() == []  # below the limit: nothing recorded
    rss.value = 500 * MB
    get(app, "/users/1", "/users/2", "/nope", "/users/3", "/users/4")
    recent = mon.high_memory_requests()
    assert len(recent) == 3 and mon.stats()["high_memory_dropped"] == 2
    assert [r["route"] for r in recent] == [UNMATCHED, "/users/{user_id}", "/users/{user_id}"]
    assert recent[0]["status"] == 404 and recent[-1]["status"] == 200
    assert recent[-1]["rss_after_mb"] == 500 and recent[-1]["method"] == "GET"
    clock.now += 61  # the window has passed: old entries are not reported
    assert mon.high_memory_requests() == []
    assert mon.stats()["high_memory_total"] == 5


def test_high_memory_logging_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    mon = monitor_of(memory_limit_mb=400, log_interval=60, clock=clock)
    app = make_app(monitor=mon, rss=FakeRss(500))
    with caplog.at_level(logging.WARNING, logger="memcache_ext.asgi"):
        get(app, *["/users/1"] * 5)
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 1 and "/users/{user_id}" in lines[0] and "500.0 MB" in lines[0]
        clock.now += 61
        get(app, "/users/2")
        lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "4 more high-memory requests not logged" in lines[1]
    assert mon.stats()["log_suppressed_total"] == 4


def test_app_exception_is_recorded_and_reraised() -> None:
    mon = monitor_of(memory_limit_mb=1)
    app = make_app(monitor=mon, rss=FakeRss(100))
    with pytest.raises(RuntimeError, match="boom"):
        get(app, "/boom")
    (row,) = [r for r in mon.routes() if r["route"] == "/boom"]
    assert row["requests"] == 1 and row["errors"] == 1
    assert mon.high_memory_requests()[-1]["status"] == 500


def _raw_scope(kind: str = "http", path: str = "/") -> dict[str, Any]:
    return {"type": kind, "path": path, "method": "GET", "headers": [], "query_string": b""}


def test_streaming_body_passes_through_unbuffered() -> None:
    release: Optional[asyncio.Event] = None
    seen_before_release: list[bytes] = []

    async def streaming_app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"one", "more_body": True})
        assert release is not None
        await release.wait()
        await send({"type": "http.response.body", "body": b"two", "more_body": False})

    async def go() -> list[Any]:
        nonlocal release
        release = asyncio.Event()
        sent: list[Any] = []

        async def send(message: Any) -> None:
            sent.append(message)

        async def receive() -> Any:
            return {"type": "http.request", "body": b"", "more_body": False}

        mon = monitor_of()
        task = asyncio.create_task(
            MemoryMonitorMiddleware(streaming_app, monitor=mon)(_raw_scope(), receive, send)
        )
        while len(sent) < 2:
            await asyncio.sleep(0)
        seen_before_release.extend(m.get("body", b"") for m in sent)
        assert not task.done()
        release.set()
        await task
        assert mon.stats()["requests"] == 1
        return sent

    sent = asyncio.run(go())
    assert seen_before_release == [b"", b"one"]  # the first chunk left before the second existed
    assert [m.get("body") for m in sent[1:]] == [b"one", b"two"]


def test_streaming_response_through_fastapi() -> None:
    app = FastAPI()

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def gen() -> Any:
            for i in range(3):
                yield f"chunk{i}\n".encode()

        return StreamingResponse(gen(), media_type="text/plain")

    mon = monitor_of()
    app.add_middleware(MemoryMonitorMiddleware, monitor=mon)
    (r,) = get(app, "/stream")
    assert r.text == "chunk0\nchunk1\nchunk2\n"
    assert [x["route"] for x in mon.routes()] == ["/stream"]


@pytest.mark.parametrize("kind", ["websocket", "lifespan"])
def test_non_http_scopes_pass_straight_through(kind: str) -> None:
    calls: list[Any] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        calls.append((scope, receive, send))

    async def receive() -> Any:
        return {}

    async def send(message: Any) -> None:
        pass

    rss_calls = []
    mon = monitor_of()
    mw = MemoryMonitorMiddleware(inner, monitor=mon, rss=lambda: rss_calls.append(1) or 0)  # type: ignore[func-returns-value]
    scope = _raw_scope(kind)
    asyncio.run(mw(scope, receive, send))
    assert calls == [(scope, receive, send)]  # the very same objects
    assert SCOPE_KEY not in scope and rss_calls == [] and mon.stats()["requests"] == 0


def test_websocket_and_lifespan_through_a_real_app() -> None:
    events: list[str] = []
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        events.append("startup")
        yield
        events.append("shutdown")

    mon = monitor_of()
    app = make_app(monitor=mon, rss=FakeRss(100))
    app.router.lifespan_context = lifespan

    async def websocket_session() -> list[Any]:
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        sent: list[Any] = []

        async def send(message: Any) -> None:
            sent.append(message)

        for m in (
            {"type": "websocket.connect"},
            {"type": "websocket.receive", "text": "there"},
            {"type": "websocket.disconnect", "code": 1000},
        ):
            inbox.put_nowait(m)
        scope = {
            "type": "websocket",
            "asgi": {"version": "3.0"},
            "path": "/ws",
            "raw_path": b"/ws",
            "root_path": "",
            "query_string": b"",
            "headers": [],
            "scheme": "ws",
            "subprotocols": [],
            "server": ("t", 80),
            "client": ("c", 1),
        }
        await app(scope, inbox.get, send)
        return sent

    sent: list[Any] = []

    async def body() -> None:
        sent.extend(await websocket_session())

    asyncio.run(run_lifespan(app, body))
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert sent[1]["text"] == "hello there"
    assert events == ["startup", "shutdown"]
    assert mon.stats()["requests"] == 0  # neither the websocket nor the lifespan counted


def test_middleware_uses_manager_rss() -> None:
    manager = CacheManager(memory_limit_mb=1000, rss=FakeRss(777))
    (r,) = get(make_app(manager=manager, expose_headers=True), "/users/1")
    assert r.headers["x-memory-usage-mb"] == "777.0"


# -- stats router --------------------------------------------------------------------


def _stats_app(manager: CacheManager, **router_kw: Any) -> FastAPI:
    app = make_app(memory_limit_mb=400, rss=FakeRss(500))
    app.include_router(memory_router(manager, **router_kw))
    return app


def _manager() -> CacheManager:
    return sample_manager(rss_mb=200)


def test_stats_endpoint_content() -> None:
    app = _stats_app(_manager())
    _, _, r = get(app, "/users/1", "/nope", "/memory/stats")
    assert r.status_code == 200
    body = r.json()
    MemoryStats.model_validate(body)
    assert set(body["caches"]) == {"users", "pages"}
    assert body["caches"]["users"]["misses"] == 1 and body["caches"]["users"]["maxsize"] == 10
    users = body["caches"]["users"]
    assert users["lookups"] == users["hits"] + users["misses"]
    assert body["limit"]["mb"] == 1000 and body["limit"]["source"] == "configured"
    assert body["process"]["rss_mb"] == 200
    assert len(body["cleanups"]) == 1 and body["cleanups"][0]["reason"] == "forced"
    routes = {x["route"]: x for x in body["requests"]["routes"]}
    assert routes["/users/{user_id}"]["high_memory"] == 1 and routes[UNMATCHED]["requests"] == 1
    assert [h["route"] for h in body["requests"]["high_memory_requests"]] == [
        "/users/{user_id}",
        UNMATCHED,
    ]
    assert body["gc"]["installed"] is True and len(body["gc"]["generations"]) == 3


def test_stats_endpoint_without_middleware_reports_no_requests() -> None:
    app = FastAPI()
    app.include_router(memory_router(_manager(), prefix="/ops/memory"))
    (r,) = get(app, "/ops/memory/stats")
    assert r.status_code == 200 and r.json()["requests"] is None


def test_stats_schema_in_openapi() -> None:
    spec = _stats_app(_manager()).openapi()
    op = spec["paths"]["/memory/stats"]["get"]
    ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/MemoryStats")
    schemas = spec["components"]["schemas"]
    for name in (
        "MemoryStats",
        "CacheStats",
        "CleanupEventModel",
        "HighMemoryRequest",
        "RouteStats",
        "GCStatsModel",
    ):
        assert name in schemas
    assert "memory" in op["tags"]
    assert schemas["HighMemoryRequest"]["properties"]["route"]["description"]
    assert "`in` and peek do not" in schemas["CacheStats"]["properties"]["lookups"]["description"]


def test_dependencies_protect_the_stats_router() -> None:
    def require_token(x_token: str | None = None) -> None:
        if x_token != "secret":
            raise HTTPException(status_code=401, detail="no")

    from fastapi import Header

    def require_header(x_token: str | None = Header(None)) -> None:
        require_token(x_token)

    app = _stats_app(_manager(), dependencies=[Depends(require_header)])

    async def go() -> tuple[int, int, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            a = await c.get("/memory/stats")
            b = await c.get("/memory/stats", headers={"x-token": "wrong"})
            ok = await c.get("/memory/stats", headers={"x-token": "secret"})
            return a.status_code, b.status_code, ok.status_code

    assert asyncio.run(go()) == (401, 401, 200)


# -- cleanup service -----------------------------------------------------------------


async def _until(pred: Any, limit: float = 10.0) -> None:
    """Wait (polling the loop) until pred() is true; fail after ``limit`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not pred():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def test_cleanup_service_expires_and_stops() -> None:
    clock = FakeClock()
    manager = CacheManager(memory_limit_mb=1000, rss=FakeRss(10))
    cache = manager.create_cache("c", maxsize=100, ttl=5, timer=clock)
    for i in range(10):
        cache[i] = i
    clock.now += 10
    service = MemoryCleanupService(manager, interval=0.01)

    async def go() -> tuple[int, int]:
        await service.start()
        await service.start()  # idempotent
        assert service.running
        await _until(lambda: service.runs >= 2)
        await service.stop()
        await service.stop()  # idempotent
        runs = service.runs
        await asyncio.sleep(0.05)
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert others == []
        return runs, service.runs

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runs_at_stop, runs_later = asyncio.run(go())
    assert runs_at_stop == runs_later  # no work after stop()
    assert len(cache) == 0 and service.expired == 10 and not service.running


def test_cleanup_service_stops_promptly_with_long_interval() -> None:
    service = MemoryCleanupService(CacheManager(memory_limit_mb=1000), interval=3600)

    async def go() -> None:
        async with service:
            assert service.running
        assert not service.running

    asyncio.run(asyncio.wait_for(go(), 30))  # a sleep loop would hang for an hour
    assert service.runs == 0


def test_cleanup_service_survives_failing_cleanup(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(CacheManager):
        def cleanup_if_needed(self) -> Any:
            raise OSError("disk on fire")

        def cleanup_steps(self, *args: Any, **kwargs: Any) -> Any:  # what the service runs
            raise OSError("disk on fire")

    manager = Broken(memory_limit_mb=1000)
    cache = manager.create_cache("c", maxsize=10)

    service = MemoryCleanupService(manager, interval=0.01)

    async def go() -> None:
        async with service:
            await _until(lambda: service.runs >= 3)

    with caplog.at_level(logging.ERROR, logger="memcache_ext.cleanup"):
        asyncio.run(go())
    assert service.last_error is not None
    assert service.errors >= 3 and "disk on fire" in service.last_error
    assert any("memory cleanup failed" in r.getMessage() for r in caplog.records)
    assert cache is manager.get_cache("c")


def test_cleanup_service_one_failing_cache_does_not_stop_the_others() -> None:
    def on_evict(key: Any, value: Any, reason: str) -> None:
        raise ValueError("bad cache")

    clock = FakeClock()
    manager = CacheManager(memory_limit_mb=1000, cache_class=PyLruCache, rss=FakeRss(1))
    bad = manager.create_cache("bad", maxsize=10, ttl=1, timer=clock, on_evict=on_evict)
    bad["x"] = "y"  # its expire() raises from on_evict
    good = manager.create_cache("good", maxsize=10, ttl=1, timer=clock)
    good["k"] = "v"
    clock.now += 5
    result = MemoryCleanupService(manager).run_once()
    assert len(result["errors"]) == 1 and "bad cache" in result["errors"][0]
    assert result["expired"] == 1 and len(good) == 0


def test_cleanup_service_threshold_runs_manager_cleanup() -> None:
    rss = FakeRss(300)
    manager = CacheManager(memory_limit_mb=1000, rss=rss)
    cache = manager.create_cache("c", maxsize=100)
    for i in range(10):
        cache[i] = i
    service = MemoryCleanupService(manager, interval=1, threshold_mb=250)
    out = service.run_once()
    assert out["cleanup"] is not None and out["cleanup"].reason == "threshold"
    assert len(cache) == 5 and service.cleanups == 1
    rss.value = 200 * MB
    assert service.run_once()["cleanup"] is None and len(cache) == 5


def test_cleanup_service_task_cancelled_externally() -> None:
    service = MemoryCleanupService(CacheManager(memory_limit_mb=1000), interval=3600)

    async def go() -> None:
        await service.start()
        task = service._task
        assert task is not None
        task.cancel()
        await asyncio.wait({task})
        assert not service.running
        await service.stop()  # does not raise
        await service.start()  # and it can start again
        assert service.running
        await service.stop()  # type: ignore[unreachable]  # mypy: running still narrowed

    asyncio.run(go())


def test_cleanup_lifespan_composes_with_app_lifespan() -> None:
    from contextlib import asynccontextmanager

    service = MemoryCleanupService(CacheManager(memory_limit_mb=1000), interval=3600)
    events: list[str] = []

    @asynccontextmanager
    async def own(app: FastAPI) -> Any:
        events.append(f"app start, service running={service.running}")
        yield {"db": "conn"}
        events.append(f"app stop, service running={service.running}")

    app = FastAPI(lifespan=cleanup_lifespan(service, own))
    seen: list[bool] = []

    async def body() -> None:
        seen.append(service.running)

    state = asyncio.run(run_lifespan(app, body))
    assert seen == [True] and state == {"db": "conn"}  # the app's state is passed on
    assert events == ["app start, service running=False", "app stop, service running=False"]
    assert not service.running

    # without an app lifespan
    service2 = MemoryCleanupService(CacheManager(memory_limit_mb=1000), interval=3600)
    seen.clear()

    async def body2() -> None:
        seen.append(service2.running)

    asyncio.run(run_lifespan(FastAPI(lifespan=cleanup_lifespan(service2)), body2))
    assert seen == [True] and not service2.running


def test_cleanup_service_bad_arguments() -> None:
    with pytest.raises(ValueError):
        MemoryCleanupService(CacheManager(memory_limit_mb=10), interval=0)
    with pytest.raises(TypeError):
        MemoryCleanupService(CacheManager(memory_limit_mb=10), interval="1")  # type: ignore[arg-type]  # deliberately wrong
    with pytest.raises(ValueError):
        MemoryCleanupService(CacheManager(memory_limit_mb=10), threshold_mb=-1)
    with pytest.raises(ValueError):
        RequestMemoryMonitor(0)


def test_monitor_arguments_at_their_limits_are_clear_errors() -> None:
    """An infinite or huge limit was an OverflowError from int(), a history_size
    of 0 named deque's "maxlen", and rss=5 failed at every request."""
    for bad, exc, message in (
        (float("inf"), ValueError, "memory_limit_mb must be > 0 and finite"),
        (1e308, ValueError, "memory_limit_mb must be from 1 byte to"),
        (1e-9, ValueError, "memory_limit_mb must be from 1 byte to"),
        (None, TypeError, "memory_limit_mb must be a number"),
    ):
        with pytest.raises(exc, match=message):
            RequestMemoryMonitor(bad)  # type: ignore[arg-type]  # deliberately wrong
    with pytest.raises(ValueError, match="history_size must be >= 1"):
        RequestMemoryMonitor(100, history_size=0)
    with pytest.raises(TypeError, match="history_size must be an int"):
        RequestMemoryMonitor(100, history_size=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="rss must be callable"):
        MemoryMonitorMiddleware(FastAPI(), rss=5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kw, message",
    [
        # os.environ.get("EXPOSE", "false") exposed the internal figures
        ({"expose_headers": "false"}, "expose_headers must be a bool, not str"),
        ({"manager": 30}, "manager must be a CacheManager or None, not int"),
        ({"probe": 5}, "probe must be an RssProbe, not int"),
        ({"monitor": {}}, "monitor must be a RequestMemoryMonitor or None, not dict"),
        (  # was silently ignored: the shared monitor keeps its own limit
            {"monitor": RequestMemoryMonitor(100), "memory_limit_mb": 200},
            "memory_limit_mb cannot go with monitor=",
        ),
    ],
)
def test_monitor_middleware_checks_its_arguments_at_the_call(
    kw: dict[str, Any], message: str
) -> None:
    """Each was taken and failed later (at every request), or, for a str flag, was True."""
    with pytest.raises(TypeError, match=message):
        MemoryMonitorMiddleware(FastAPI(), **kw)


def test_cleanup_service_and_guard_check_their_manager() -> None:
    """``MemoryCleanupService(30, interval=...)`` (the interval first) was taken and every
    pass failed with nothing in ``last_error``."""
    with pytest.raises(TypeError, match="manager must be a CacheManager or None, not int"):
        MemoryCleanupService(30, interval=0.01)  # type: ignore[arg-type]  # deliberately wrong
    with pytest.raises(TypeError, match="manager must be a CacheManager or None, not str"):
        MemoryGuard(FastAPI(), manager="cache_manager")
    with pytest.raises(TypeError, match="manager must be a CacheManager or None, not int"):
        memory_router(manager=5)  # type: ignore[arg-type]  # deliberately wrong


def test_a_failed_pass_of_the_cleanup_service_says_why() -> None:
    """A pass that raises outside the per-cache steps counted an error and left
    ``last_error`` None."""

    class Broken(MemoryCleanupService):
        async def run_once_async(self, reason: Optional[str] = None) -> dict[str, Any]:
            raise OSError("no pass today")

    service = Broken(CacheManager(memory_limit_mb=1000), interval=0.01)

    async def go() -> None:
        async with service:
            await _until(lambda: service.errors >= 2)

    asyncio.run(go())
    assert service.last_error == "pass: OSError: no pass today"


class _Inner(TypedDict):
    a: int


class _Outer(TypedDict):
    xs: list[Annotated[_Inner, "items"]]


def test_model_of_converts_a_typeddict_inside_annotated() -> None:
    """It was left a TypedDict, which pydantic refuses on 3.11 (typing's TypedDict)."""
    from memcache_ext.fastapi import model_of

    model = model_of(_Outer)
    assert model(xs=[{"a": 1}]).xs[0].a == 1  # type: ignore[attr-defined]
