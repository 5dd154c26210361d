"""MemoryGuard: load shedding, the request body limit, MemoryError as 503 (pure ASGI).

In-process tests drive the guard through ASGI; the integration tests start a
real uvicorn on loopback (``guard_app.py``), one of them under
``prlimit --as`` so that MemoryError is real.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Optional

import psutil
import pytest

from memcache_ext import CacheManager
from memcache_ext._procmem import RssProbe
from memcache_ext.guard import MemoryGuard, RequestBodyTooLargeError
from memcache_ext.tools.procs import http_ok, poll, stop_process
from support import eventually, free_port, linux_only, posix_only

MB = 2**20
HERE = Path(__file__).resolve().parent


class FakeRss:
    def __init__(self, mb: float) -> None:
        self.value = int(mb * MB)

    def __call__(self) -> int:
        return self.value


def guard_over(app: Any, rss: FakeRss, **kw: Any) -> MemoryGuard:
    """A guard under a 100 MB limit reading ``rss`` (every reading fresh)."""
    return MemoryGuard(app, limit_mb=100, probe=RssProbe(rss, max_age=0), **kw)


class Call:
    """One HTTP request through an ASGI app: what was sent, how much was received."""

    def __init__(
        self,
        path: str = "/",
        method: str = "GET",
        chunks: tuple[bytes, ...] = (),
        headers: Optional[list[tuple[bytes, bytes]]] = None,
    ) -> None:
        self.scope = {
            "type": "http",
            "method": method,
            "path": path,
            "headers": headers or [],
            "query_string": b"",
        }
        self.chunks = list(chunks)
        self.receives = 0
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        self.receives += 1
        if not self.chunks:
            return {"type": "http.request", "body": b"", "more_body": False}
        chunk = self.chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks)}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def run(self, app: Any) -> Call:
        asyncio.run(app(self.scope, self.receive, self.send))
        return self

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0].get("headers", []))

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    """Reads the whole body, answers 200 with its length."""
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


# -- body limit ------------------------------------------------------------------------


def test_content_length_over_the_limit_is_refused_before_reading() -> None:
    guard = guard_over(ok_app, FakeRss(10), max_body_bytes=1000)
    call = Call("/up", "PUT", (b"x" * 2000,), [(b"content-length", b"2000")]).run(guard)
    assert call.status == 413 and call.receives == 0  # nothing read
    assert (b"connection", b"close") in call.sent[0]["headers"]
    assert json.loads(call.body) == {"detail": "request body larger than 1000 bytes"}
    st = guard.stats()
    assert st["body_rejected_total"] == st["body_rejected_early"] == 1


def test_a_streamed_body_is_cut_at_the_limit_and_the_apps_answer_dropped() -> None:
    guard = guard_over(ok_app, FakeRss(10), max_body_bytes=1000)
    chunks = tuple(b"x" * 300 for _ in range(100))  # 30 kB, chunked: no Content-Length
    call = Call("/up", "PUT", chunks).run(guard)
    assert call.status == 413
    assert call.receives == 4  # 1,200 bytes read, then the request ended: the rest never read
    assert len(call.sent) == 2  # only the guard's answer went out
    assert guard.stats()["body_rejected_total"] == 1 and guard.stats()["body_rejected_early"] == 0


def test_an_app_that_answers_anyway_is_overruled() -> None:
    """FastAPI turns an error while reading the body into a 400: the guard's 413 wins."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            while (await receive()).get("more_body"):
                pass
        except RequestBodyTooLargeError:
            await send({"type": "http.response.start", "status": 400, "headers": []})
            await send({"type": "http.response.body", "body": b"bad body"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guard = guard_over(app, FakeRss(10), max_body_bytes=10)
    call = Call("/", "PUT", (b"x" * 8, b"x" * 8)).run(guard)
    assert [m.get("status") for m in call.sent if "status" in m] == [413]


def test_bodies_within_the_limit_and_no_limit_pass() -> None:
    for limit in (1000, None):
        guard = guard_over(ok_app, FakeRss(10), max_body_bytes=limit)
        call = Call("/", "PUT", (b"x" * 600, b"x" * 400)).run(guard)
        assert call.status == 200 and call.body == b"1000"
        assert guard.stats()["body_rejected_total"] == 0


def echo_app() -> Any:
    """A FastAPI app whose PUT /echo reads the whole body and answers its length."""
    fastapi = pytest.importorskip("fastapi")
    app = fastapi.FastAPI()

    async def echo(request: Any) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    # The real class, not the string the future import makes of it (FastAPI resolves it).
    echo.__annotations__["request"] = fastapi.Request
    app.put("/echo")(echo)
    return app


async def chunks() -> AsyncIterator[bytes]:
    """300 bytes in five chunks, without a Content-Length (chunked)."""
    for _ in range(5):
        yield b"y" * 60


def test_body_limit_through_fastapi() -> None:
    httpx = pytest.importorskip("httpx")
    app = echo_app()
    guard = MemoryGuard(manager=CacheManager(memory_limit_mb=4096), max_body_bytes=100)
    app.add_middleware(guard.wrap)

    async def go() -> list[Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return [
                await c.put("/echo", content=b"x" * 50),
                await c.put("/echo", content=b"x" * 500),
                await c.put("/echo", content=chunks()),
            ]

    small, big, streamed = asyncio.run(go())
    assert small.status_code == 200 and small.json() == {"bytes": 50}
    assert big.status_code == 413 and streamed.status_code == 413
    assert guard.stats()["body_rejected_total"] == 2


# -- load shedding -----------------------------------------------------------------------


def test_sheds_above_the_critical_mark_and_lets_in_below_the_resume_mark() -> None:
    rss = FakeRss(50)
    sheds: list[int] = []
    guard = guard_over(ok_app, rss, on_shed=lambda: sheds.append(1), retry_after=7)

    def status() -> int:
        return Call("/").run(guard).status

    assert status() == 200
    rss.value = 96 * MB  # above 95 % of 100 MB
    call = Call("/").run(guard)
    assert call.status == 503 and call.headers[b"retry-after"] == b"7"
    assert sheds == [1] and guard.shedding
    rss.value = 92 * MB  # between the marks: still shedding (hysteresis)
    assert status() == 503
    rss.value = 89 * MB  # below 90 %: in again
    assert status() == 200 and not guard.shedding
    rss.value = 99 * MB  # type: ignore[unreachable]  # mypy: guard.shedding still narrowed
    assert status() == 503 and sheds == [1, 1]  # a second episode
    st = guard.stats()
    assert st["shed_total"] == 3 and st["shed_episodes"] == 2 and st["shedding"] is True
    assert st["critical_bytes"] == 95 * MB and st["resume_bytes"] == 90 * MB


def test_requests_in_flight_finish_while_new_ones_are_shed() -> None:
    rss = FakeRss(50)
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        started.set()
        await release.wait()
        await ok_app(scope, receive, send)

    guard = guard_over(slow, rss)

    async def go() -> tuple[Call, Call]:
        first, second = Call("/slow"), Call("/new")
        task = asyncio.ensure_future(guard(first.scope, first.receive, first.send))
        await started.wait()
        rss.value = 99 * MB  # memory runs short while /slow is in flight
        await guard(second.scope, second.receive, second.send)
        assert guard.stats()["in_flight"] == 1
        release.set()
        await task
        return first, second

    first, second = asyncio.run(go())
    assert first.status == 200 and second.status == 503
    assert guard.stats()["in_flight"] == 0 and guard.stats()["max_in_flight"] == 1


def test_exempt_paths_are_never_shed() -> None:
    guard = guard_over(ok_app, FakeRss(99), exempt=("/health",))
    assert Call("/health").run(guard).status == 200
    assert Call("/users/1").run(guard).status == 503


def test_websocket_and_lifespan_pass_through_even_when_shedding() -> None:
    seen = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    guard = guard_over(app, FakeRss(99))
    for kind in ("websocket", "lifespan"):
        asyncio.run(guard({"type": kind}, Call().receive, Call().send))
    assert seen == ["websocket", "lifespan"] and guard.stats()["requests"] == 0


# -- MemoryError ---------------------------------------------------------------------------


def test_memory_error_is_a_503_and_the_next_request_is_served() -> None:
    calls = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["path"])
        if scope["path"] == "/oom":
            raise MemoryError
        await ok_app(scope, receive, send)

    guard = guard_over(app, FakeRss(10))
    call = Call("/oom").run(guard)
    assert call.status == 503 and b"retry-after" in call.headers
    assert Call("/next").run(guard).status == 200
    assert guard.stats()["memory_errors_total"] == 1


def test_memory_error_in_a_fastapi_endpoint_is_a_503_not_a_500() -> None:
    """Starlette's ServerErrorMiddleware sends a 500 and re-raises: the guard holds the 500."""
    fastapi = pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    app = fastapi.FastAPI()

    @app.get("/oom")
    def oom() -> None:  # a plain def: raised in a worker thread
        raise MemoryError

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a plain bug")

    @app.get("/ok")
    def ok() -> dict[str, bool]:
        return {"ok": True}

    guard = MemoryGuard(manager=CacheManager(memory_limit_mb=4096))
    app.add_middleware(guard.wrap)

    async def go() -> list[Any]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return [await c.get(p) for p in ("/oom", "/ok", "/boom", "/ok")]

    oom_r, ok1, boom_r, ok2 = asyncio.run(go())
    assert oom_r.status_code == 503 and "retry-after" in oom_r.headers
    assert ok1.status_code == ok2.status_code == 200
    assert boom_r.status_code == 500  # other errors stay what they were
    assert guard.stats()["memory_errors_total"] == 1


def test_errors_wrapped_in_exception_groups_are_still_413_and_503() -> None:
    """Starlette's BaseHTTPMiddleware (an anyio task group) hands the guard a body
    over the limit inside an ExceptionGroup, and an endpoint's task group does the
    same with a MemoryError: both were 500s."""
    httpx = pytest.importorskip("httpx")
    anyio = pytest.importorskip("anyio")
    from starlette.middleware.base import BaseHTTPMiddleware

    app = echo_app()

    @app.get("/oom")
    async def oom() -> None:
        async def work() -> None:
            raise MemoryError

        async with anyio.create_task_group() as group:  # raises ExceptionGroup([MemoryError])
            group.start_soon(work)

    class PassThrough(BaseHTTPMiddleware):
        async def dispatch(self, request: Any, call_next: Any) -> Any:
            return await call_next(request)

    app.add_middleware(PassThrough)
    guard = MemoryGuard(manager=CacheManager(memory_limit_mb=4096), max_body_bytes=100)
    app.add_middleware(guard.wrap)

    async def go() -> list[Any]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return [
                await c.put("/echo", content=chunks()),
                await c.get("/oom"),
                await c.put("/echo", content=b"x" * 50),
            ]

    streamed, oom_r, small = asyncio.run(go())
    assert streamed.status_code == 413
    assert oom_r.status_code == 503
    assert small.status_code == 200 and small.json() == {"bytes": 50}
    stats = guard.stats()
    assert stats["body_rejected_total"] == 1 and stats["memory_errors_total"] == 1


def test_only_sees_through_nested_exception_groups() -> None:
    from memcache_ext.guard import _only

    if sys.version_info < (3, 11):
        pytest.skip("ExceptionGroup is a builtin from 3.11")
    # mypy reads the suite as 3.10 (python_version): no ExceptionGroup, and the skip is taken
    group = ExceptionGroup("g", [MemoryError(), ExceptionGroup("h", [MemoryError()])])  # type: ignore[unreachable,name-defined]  # noqa: F821
    assert _only(group, MemoryError) and _only(MemoryError(), MemoryError)
    mixed = ExceptionGroup("g", [MemoryError(), ValueError()])  # type: ignore[name-defined]  # noqa: F821
    assert not _only(mixed, MemoryError) and not _only(ValueError(), MemoryError)


def test_bad_arguments() -> None:
    for kw in (
        {"critical": 0},
        {"critical": 1.5},
        {"critical": 0.8, "resume": 0.9},
        {"max_body_bytes": -1},
        {"retry_after": -1},
        {"limit_mb": 0},
        {"limit_mb": float("inf")},
    ):
        with pytest.raises(ValueError):
            MemoryGuard(ok_app, limit_mb=kw.pop("limit_mb", 100), **kw)
    with pytest.raises(TypeError):
        MemoryGuard(ok_app, limit_mb=100, on_shed=5)  # type: ignore[arg-type]  # deliberately wrong
    # a limit that rounds to 0 bytes disabled the guard; one past sys.maxsize was an
    # OverflowError; a str exempt was a set of characters; bad callables failed later
    for limit in (1e-9, 1e300):
        with pytest.raises(ValueError, match="limit_mb must be from 1 byte to"):
            MemoryGuard(ok_app, limit_mb=limit)
    with pytest.raises(TypeError, match="exempt must be a collection of paths"):
        MemoryGuard(ok_app, limit_mb=100, exempt="/health")  # a str: a Collection[str] to mypy
    with pytest.raises(TypeError, match="clock must be callable"):
        MemoryGuard(ok_app, limit_mb=100, clock=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="probe must be an RssProbe"):
        MemoryGuard(ok_app, limit_mb=100, probe=5)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="no app"):
        asyncio.run(MemoryGuard(limit_mb=100)({"type": "http"}, Call().receive, Call().send))
    with pytest.raises(ValueError, match="finite"):
        RssProbe(max_age=float("inf"))  # it would serve its first 0 forever


def test_no_known_limit_sheds_nothing() -> None:
    """A manager whose limit reads 0 (physical memory unknown): never shed, never stuck."""
    manager = CacheManager(memory_limit_mb=100, rss=lambda: 0)
    guard = MemoryGuard(ok_app, manager=manager)
    guard.critical_bytes = guard.resume_bytes = 0  # what a limit of 0 bytes gives
    assert guard.check(rss=10**9) is False and not guard.stats()["shedding"]


# -- the probe ---------------------------------------------------------------------------------


def test_monitor_and_guard_share_one_rss_read_per_request() -> None:
    """issue 12: each request read /proc/self/statm twice; now about once under load."""
    from memcache_ext.asgi import MemoryMonitorMiddleware

    reads = [0]

    def rss() -> int:
        reads[0] += 1
        return 50 * MB

    # the probe's clock is the test's: a runner that stalls between the two middlewares'
    # reads must not make them two reads (104, not 103)
    now = [0.0]
    probe = RssProbe(rss, max_age=1.0, clock=lambda: now[0])  # back-to-back: within the age
    app = MemoryGuard(MemoryMonitorMiddleware(ok_app, probe=probe), limit_mb=100, probe=probe)

    async def go() -> None:
        for _ in range(100):
            call = Call("/")
            await app(call.scope, call.receive, call.send)

    asyncio.run(go())
    assert reads[0] == 101  # one "after" per request, and the very first "before"
    probe.max_age = 0.01  # a request after a quiet spell reads its "before" afresh,
    now[0] += 0.05  # once for both middlewares
    Call("/").run(app)
    assert reads[0] == 103


# -- a real server --------------------------------------------------------------------------


class GuardServer:
    """guard_app.py under uvicorn in its own process group (optionally under a prefix)."""

    def __init__(self, *args: str, prefix: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), *sys.path]))
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, str(HERE / "guard_app.py"), str(self.port), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
        try:
            poll(self._up, 60, "the guard app answers", pause=0.1)
        except BaseException:
            self.stop()
            raise

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited: {self.proc.stdout.read()!r}")  # type: ignore[union-attr]
        return http_ok(self.port)

    def get(self, path: str, timeout: float = 30) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"null")
        finally:
            conn.close()

    def stop(self) -> str:
        stop_process(self.proc, 10)
        out = self.proc.stdout.read() if self.proc.stdout else b""
        return out.decode(errors="replace")


@pytest.mark.integration
@posix_only
@linux_only
def test_a_100_mib_chunked_upload_gets_413_without_the_server_growing() -> None:
    server = GuardServer()
    try:
        rss_before = psutil.Process(server.proc.pid).memory_info().rss
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(b"PUT /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            piece = b"x" * 2**20
            sent = 0
            try:
                while sent < 100 * MB:
                    sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                    sent += len(piece)
            except OSError:
                pass  # the server answered and closed: it never read the rest
            answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert sent < 100 * MB, "the whole body went through"
        grown = psutil.Process(server.proc.pid).memory_info().rss - rss_before
        assert grown < 16 * MB, f"the server grew {grown / MB:.1f} MB for a refused body"
        assert server.get("/health")[0] == 200
        _, stats = server.get("/memory/stats")
        assert stats["guard"]["body_rejected_total"] == 1
    finally:
        server.stop()


@pytest.mark.integration
@posix_only
@linux_only
@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_memory_error_under_prlimit_is_a_503_and_the_server_recovers() -> None:
    """The server runs under an address-space limit, so allocations really fail; the
    thread pool (sync endpoints), the event loop and the cleanup service go on."""
    limit = 1024 * MB  # the interpreter, FastAPI and the threads fit; 2 GiB does not
    server = GuardServer(prefix=("prlimit", f"--as={limit}", "--"))
    try:
        for path in ("/alloc?mb=2048", "/alloc-async?mb=2048", "/alloc?mb=2048"):
            status, body = server.get(path)
            assert status == 503, (path, status, body)
        time.sleep(0.5)
        runs = server.get("/memory/stats")[1]["cleanup_service"]["runs"]
        for _ in range(20):  # memory is back: everything answers, the thread pool too
            assert server.get("/health")[0] == 200
            assert server.get("/sync")[0] == 200
        assert server.get("/alloc?mb=16") == (200, {"mb": 16})
        eventually(
            lambda: server.get("/memory/stats")[1]["cleanup_service"]["runs"] > runs,
            what="the cleanup service still passing",
        )
        stats = server.get("/memory/stats")[1]
        assert stats["guard"]["memory_errors_total"] == 3
        assert stats["cleanup_service"]["running"] is True
        assert stats["cleanup_service"]["runs"] > runs  # still passing
    finally:
        out = server.stop()
    assert "MemoryError while handling GET /alloc" in out
