"""The demo service: database, endpoints, bad input, start-up errors, real uvicorn."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

from memcache_ext import CacheManager  # noqa: E402 - after importorskip
from memcache_ext.tools.demo import main  # noqa: E402 - after importorskip
from memcache_ext.tools.demo.app import HealthService, create_app, reset_singletons  # noqa: E402 - after importorskip
from memcache_ext.tools.demo.db import (  # noqa: E402 - after importorskip
    Database,
    DatabaseError,
    check_database,
    create_database,
)
from memcache_ext.tools.demo.service import DEFAULT_POLICY  # noqa: E402 - after importorskip
from memcache_ext.tools.procs import port_in_use  # noqa: E402 - after importorskip
from support import RedisServer, child_env, eventually, free_port, posix_only, require_redis  # noqa: E402 - after importorskip

#: Starts the demo under uvicorn, or a redis-server: a service in another process.
service = pytest.mark.integration

USERS, DAYS = 30, 3


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("demo") / "demo.sqlite3")
    info = create_database(path, USERS, DAYS)
    assert info["readings"] == USERS * DAYS * 24
    return path


@pytest.fixture
def fresh() -> Iterator[None]:
    reset_singletons()
    yield
    reset_singletons()


def _app(db_path: str, **kw: Any) -> tuple[Any, CacheManager]:
    manager = CacheManager(memory_limit_mb=1024)
    return create_app(db_path, manager=manager, **kw), manager


def get_all(app: Any, *paths: str) -> list[Any]:
    async def go() -> list[Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return [await c.get(p) for p in paths]

    return asyncio.run(go())


def test_database_contents(db_path: str) -> None:
    meta = check_database(db_path)
    assert meta["users"] == str(USERS) and meta["days"] == str(DAYS)
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == USERS
        assert conn.execute("SELECT count(DISTINCT user_id) FROM readings").fetchone()[0] == USERS
    assert not [f for f in os.listdir(os.path.dirname(db_path)) if f.endswith(".tmp")]
    with pytest.raises(FileExistsError):
        create_database(db_path, 1, 1)


def test_endpoints(db_path: str, fresh: None) -> None:
    app, manager = _app(db_path)
    profile, readings, week, summary, again = get_all(
        app,
        "/users/3",
        "/users/3/readings?days=1",
        "/users/3/readings",
        "/users/3/summary",
        "/users/3",
    )
    assert profile.status_code == 200 and profile.json()["id"] == 3
    assert profile.json()["email"] == "user3@example.org"
    assert readings.json()["count"] == 24 and len(readings.json()["readings"]) == 24
    assert week.json()["days"] == 7 and week.json()["count"] == DAYS * 24  # all there is
    s = summary.json()
    assert s["readings"] == DAYS * 24 and sum(d["readings"] for d in s["daily"]) == DAYS * 24
    assert all(
        d["heart_rate_min"] <= d["heart_rate_mean"] <= d["heart_rate_max"] for d in s["daily"]
    )
    assert again.json() == profile.json()
    st = manager.stats()["caches"]
    assert set(st) == {"profiles", "readings", "summaries"}
    profiles, readings = st["profiles"], st["readings"]
    assert "error" not in profiles and "error" not in readings  # stats() did not raise
    assert profiles["hits"] >= 1 and profiles["max_bytes"] is not None
    # One readings entry per user: the 1-day and the 7-day windows are slices of it.
    assert readings["size"] == 1 and readings["nbytes"] > 0
    assert readings["hits"] == 1 and readings["misses"] == 1


def test_unknown_user_and_bad_input(db_path: str, fresh: None) -> None:
    app, _ = _app(db_path)
    responses = get_all(
        app,
        f"/users/{USERS + 1}",
        f"/users/{USERS + 1}/readings",
        f"/users/{USERS + 1}/summary",
        "/users/0",
        "/users/abc",
        "/users/99999999999999999999999",
        "/users/1/readings?days=0",
        "/users/1/readings?days=366",
        "/users/1/readings?days=x",
        "/users/1/readings?days=" + "9" * 5000,
    )
    codes = [r.status_code for r in responses]
    assert codes == [404, 404, 404] + [422] * 7
    assert responses[0].json() == {"detail": f"user {USERS + 1} not found"}


def test_unbounded_mode_uses_plain_dicts(db_path: str, fresh: None) -> None:
    app, manager = _app(db_path, unbounded=True)
    get_all(app, "/users/1", "/users/2/summary")
    service = app.state.service
    assert all(type(c) is dict for c in service.caches.values())
    assert len(service.profiles) == 2 and len(manager) == 0
    (health,) = get_all(app, "/health")
    assert health.json()["cache_mode"] == "unbounded"
    assert health.json()["caches"] == {"profiles": 2, "readings": 0, "summaries": 1}


def test_singletons_built_once(db_path: str, fresh: None) -> None:
    app, manager = _app(db_path)
    assert HealthService() is app.state.service  # type: ignore[call-arg]  # a singleton's instance
    assert HealthService(db_path, False, manager) is app.state.service
    with pytest.raises(TypeError):
        HealthService(db_path, True, manager)  # a second, different service: refused


def test_stats_and_metrics_wired_in(db_path: str, fresh: None) -> None:
    app, _ = _app(db_path)
    _, stats, metrics = get_all(app, "/users/5/readings", "/memory/stats", "/metrics")
    body = stats.json()
    assert set(body["caches"]) == {"profiles", "readings", "summaries"}
    assert [r["route"] for r in body["requests"]["routes"]] == ["/users/{user_id}/readings"]
    assert body["cleanup_service"]["interval"] == 30.0
    assert 'memcache_ext_cache_misses_total{cache="readings"} 1.0' in metrics.text
    assert 'memcache_ext_http_requests_total{route="/users/{user_id}/readings"} 1.0' in metrics.text


def test_lifespan_starts_and_stops_cleanup(db_path: str, fresh: None) -> None:
    app, _ = _app(db_path, cleanup_interval=3600)

    async def go() -> bool:
        async with app.router.lifespan_context(app):
            running: bool = app.state.cleanup.running
        return running

    assert asyncio.run(go()) is True
    assert not app.state.cleanup.running


def test_database_connections_stay_bounded_as_threads_come_and_go(db_path: str) -> None:
    """issue 12: one connection per thread that ever asked, never closed, was the demo's
    leak (92 connections for 28 live threads). Threads come and go as a server's pool
    retires idle ones: the number of connections must not follow them."""
    db = Database(db_path, pool_size=4)
    opened_by: set[int] = set()

    def ask() -> None:
        for _ in range(5):
            assert db.query("SELECT count(*) FROM users")[0][0] == USERS
        opened_by.add(threading.get_ident())

    try:
        for _ in range(10):  # 10 waves of 8 short-lived threads: 80 threads in all
            wave = [threading.Thread(target=ask) for _ in range(8)]
            for t in wave:
                t.start()
            for t in wave:
                t.join(30)
        st = db.stats()
        assert st["open"] <= 4 and st["opened_total"] <= 4, st
        assert st["in_use"] == 0
        db.resize(2)  # the app sizes it to the server's thread count
        assert db.stats()["open"] <= 2 and db.pool_size == 2
    finally:
        db.close()
    assert db.stats()["open"] == 0
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        db.query("SELECT 1")


def test_a_busy_pool_makes_the_query_wait_then_fail_clearly(db_path: str) -> None:
    db = Database(db_path, timeout=0.2, pool_size=1)
    try:
        with db.connection():
            started = time.monotonic()
            with pytest.raises(sqlite3.OperationalError, match="all 1 database connections busy"):
                db.query("SELECT 1")
            assert time.monotonic() - started >= 0.19
        assert db.query("SELECT 1")[0][0] == 1 and db.stats()["waits"] >= 1
    finally:
        db.close()


def test_database_creation_reports_progress(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    create_database(str(tmp_path / "p.sqlite3"), 250, 1, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (250, 250) and len(seen) >= 50
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_guard_and_body_limit_are_wired_in(db_path: str, fresh: None) -> None:
    app, _ = _app(db_path)
    (big, health, stats) = request_all(
        app,
        ("PUT", "/users/1/profile", {"name": "x" * (2 * 2**20)}),
        ("GET", "/health", None),
        ("GET", "/memory/stats", None),
    )
    assert big.status_code == 413
    assert health.json()["policy"] == DEFAULT_POLICY
    db = health.json()["database"]
    assert db["pool_size"] >= 1 and db["open"] <= db["pool_size"]
    body = stats.json()
    assert body["guard"]["body_rejected_total"] == 1 and body["guard"]["max_body_bytes"] == 2**20
    assert body["budget"]["source"] == "derived" and body["loop"] is not None


def test_a_limit_below_the_baseline_stops_the_demo_at_start(
    db_path: str, capsys: pytest.CaptureFixture[str], fresh: None
) -> None:
    rc = main(
        ["--db", db_path, "--users", str(USERS), "--days", str(DAYS), "--memory-limit-mb", "20"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert re.search(
        r"memory limit \(20\.0 MB, configured\) is below the process's "
        r"baseline RSS \(\d+\.\d MB\)",
        err,
    ), err


def test_missing_and_broken_database(tmp_path: Path, fresh: None) -> None:
    with pytest.raises(DatabaseError, match="does not exist"):
        create_app(str(tmp_path / "nope.sqlite3"))
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DatabaseError, match=r"not a usable SQLite database|not a memcache-ext"):
        check_database(str(junk))
    empty = tmp_path / "empty.sqlite3"
    sqlite3.connect(empty).close()
    with pytest.raises(DatabaseError, match="not a memcache-ext demo database"):
        check_database(str(empty))
    with pytest.raises(DatabaseError, match="directory"):
        create_database(str(tmp_path / "no" / "such" / "dir.sqlite3"), 1, 1)


def test_locked_database_is_a_clear_error(tmp_path: Path) -> None:
    path = str(tmp_path / "locked.sqlite3")
    create_database(path, 2, 1)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(DatabaseError, match="locked"):
            check_database(path, timeout=0.05)
    finally:
        holder.close()
    assert check_database(path)["users"] == "2"


def test_main_reports_start_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fresh: None
) -> None:
    rc = main(["--db", str(tmp_path / "missing.sqlite3"), "--no-create"])
    err = capsys.readouterr().err
    assert rc == 2 and "does not exist" in err and "Traceback" not in err
    assert main(["--users", "0"]) == 2
    with pytest.raises(SystemExit):
        main(["--port", "notaport"])


@service
@posix_only
def test_demo_under_real_uvicorn(tmp_path: Path) -> None:
    port = free_port()
    db = str(tmp_path / "live.sqlite3")
    env = child_env()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "memcache_ext",
            "demo",
            "--db",
            db,
            "--users",
            "20",
            "--days",
            "2",
            "--port",
            str(port),
            "--log-level",
            "info",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=base, timeout=5) as client:
            while True:
                assert proc.poll() is None, proc.communicate(timeout=10)
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "demo did not start"
                time.sleep(0.1)
            assert client.get("/users/1").json()["id"] == 1
            assert client.get("/users/1/readings", params={"days": 2}).json()["count"] == 48
            assert client.get("/users/21").status_code == 404
            assert client.get("/users/1/readings", params={"days": -1}).status_code == 422
            stats = client.get("/memory/stats").json()
            assert stats["caches"]["profiles"]["hits"] >= 1
            assert "memcache_ext_process_resident_memory_bytes" in client.get("/metrics").text
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    # uvicorn shuts down gracefully, then re-raises the signal it caught
    assert proc.returncode in (0, -signal.SIGTERM), err
    assert "Application shutdown complete" in err and "Traceback" not in err


# -- the write path and the Redis tier ---------------------------------------------------


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A real redis-server on a free loopback port for this module."""
    require_redis()
    server = RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def small_db(tmp_path: Path) -> str:
    """A database of its own: the write tests change it."""
    path = str(tmp_path / "writes.sqlite3")
    create_database(path, 10, 1)
    return path


def request_all(app: Any, *calls: tuple[str, str, Any]) -> list[Any]:
    """(method, path, json body or raw bytes or None) -> responses, in order."""

    async def go() -> list[Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            out = []
            for method, path, body in calls:
                if isinstance(body, bytes):
                    out.append(
                        await c.request(
                            method, path, content=body, headers={"content-type": "application/json"}
                        )
                    )
                else:
                    out.append(await c.request(method, path, json=body))
            return out

    return asyncio.run(go())


def _db_name(path: str, user_id: int) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("SELECT name FROM users WHERE id = ?", (user_id,)).fetchone()[0])


@pytest.mark.parametrize("unbounded", [False, True], ids=["bounded", "unbounded"])
def test_profile_update_writes_and_refreshes_the_caches(
    small_db: str, fresh: None, unbounded: bool
) -> None:
    app, _ = _app(small_db, unbounded=unbounded)
    before, summary, put, after, summary2, other = request_all(
        app,
        ("GET", "/users/2", None),
        ("GET", "/users/2/summary", None),
        ("PUT", "/users/2/profile", {"name": "  Grace Hopper ", "birth_year": 1906}),
        ("GET", "/users/2", None),
        ("GET", "/users/2/summary", None),
        ("GET", "/users/3", None),
    )
    assert put.status_code == 200, put.text
    # the row's version goes up with every write (the Redis tier orders writes by it)
    version = before.json()["version"] + 1
    assert put.json() == dict(before.json(), name="Grace Hopper", birth_year=1906, version=version)
    assert after.json() == put.json()  # the cached profile was replaced
    assert summary.json()["name"] == before.json()["name"]
    assert summary2.json()["name"] == "Grace Hopper"  # the cached summary was dropped
    assert _db_name(small_db, 2) == "Grace Hopper"
    assert other.json()["name"] != "Grace Hopper"
    (email,) = request_all(app, ("PUT", "/users/2/profile", {"email": "grace@example.org"}))
    assert email.json()["email"] == "grace@example.org" and email.json()["name"] == "Grace Hopper"
    (missing,) = request_all(app, ("PUT", "/users/11/profile", {"name": "Nobody"}))
    assert missing.status_code == 404


def test_profile_update_bad_bodies_are_422(small_db: str, fresh: None) -> None:
    app, _ = _app(small_db)
    bodies: list[Any] = [
        {},
        {"name": None},
        {"name": ""},
        {"name": "   "},
        {"name": "x" * 101},
        {"name": 5},
        {"email": "not-an-email"},
        {"email": "a@b"},
        {"birth_year": "1990"},
        {"birth_year": 1800},
        {"birth_year": 2101},
        {"birth_year": 1990.5},
        {"birth_year": True},
        {"nickname": "x"},
        {"name": "ok", "id": 7},
        [],
        "name",
        b"{not json",
        b"",
    ]
    responses = request_all(
        app,
        *[("PUT", "/users/2/profile", b) for b in bodies],
        ("PUT", "/users/0/profile", {"name": "x"}),
        ("PUT", "/users/abc/profile", {"name": "x"}),
    )
    assert [r.status_code for r in responses] == [422] * (len(bodies) + 2), [
        (b, r.status_code) for b, r in zip(bodies, responses, strict=True)
    ]
    with sqlite3.connect(small_db) as conn:
        row = conn.execute("SELECT name, email FROM users WHERE id = 2").fetchone()
    assert row[0] != "ok" and row[1] == "user2@example.org"  # nothing was written


@service
def test_tier_serves_and_invalidates_across_instances(
    small_db: str, redis_url: str, fresh: None, patient_tiers: None
) -> None:
    import redis

    from memcache_ext import LruCache
    from memcache_ext.redis import TieredCache

    prefix = f"t{uuid_hex()}"
    app, manager = _app(small_db, redis_url=redis_url, redis_prefix=prefix)
    service = app.state.service
    assert set(service.tiers) == {"profiles", "readings", "summaries"}
    assert all(t.wait_ready(10) for t in service.tiers.values())
    # "another replica": a tier of its own over the same namespace
    client = redis.Redis.from_url(redis_url)
    other = TieredCache(LruCache(maxsize=100), client, f"{prefix}:profiles", ttl=300)
    try:
        assert other.wait_ready(10)
        first, readings = request_all(
            app, ("GET", "/users/2", None), ("GET", "/users/2/readings?days=1", None)
        )
        assert first.status_code == 200 and readings.json()["count"] == 24
        assert other.get("2") == first.json()  # the other found it in Redis
        assert other.stats()["remote_hits"] == 1
        (put,) = request_all(app, ("PUT", "/users/2/profile", {"name": "Ada Lovelace"}))
        assert put.status_code == 200 and put.json()["name"] == "Ada Lovelace"
        # the other instance's local copy is dropped; it reads the new value from Redis
        eventually(
            lambda: (other.get("2") or {}).get("name") == "Ada Lovelace",
            what="the other instance sees the write",
        )
        # counted just after the copy is dropped, so wait for the count as well
        eventually(lambda: other.stats()["invalidations_received"] >= 1, what="the count of it")
        # and the other way round: a write there invalidates the app's local copy
        other.set("2", dict(put.json(), name="Written Elsewhere"))
        eventually(
            lambda: (
                request_all(app, ("GET", "/users/2", None))[0].json()["name"] == "Written Elsewhere"
            ),
            what="the app sees the other instance's write",
        )

        def profiles_received() -> int:
            (stats,) = request_all(app, ("GET", "/memory/stats", None))
            prof = stats.json()["sources"][f"redis:{prefix}:profiles"]
            return int(prof["invalidations_received"])

        eventually(lambda: profiles_received() >= 1, what="the app counted the message")
        (stats,) = request_all(app, ("GET", "/memory/stats", None))
        sources = stats.json()["sources"]
        assert set(sources) == {
            f"redis:{prefix}:{n}" for n in ("profiles", "readings", "summaries")
        }
        prof = sources[f"redis:{prefix}:profiles"]
        assert prof["loads"] >= 1 and prof["writes"] >= 2 and prof["redis_errors"] == 0
        assert prof["invalidations_received"] >= 1 and prof["connected"] is True
        assert sources[f"redis:{prefix}:readings"]["loads"] == 1
        assert client.exists(f"{prefix}:readings:2") == 1  # str keys, one per user
        (health,) = request_all(app, ("GET", "/health", None))
        assert health.json()["redis"]["connected"] is True
    finally:
        other.close()
        client.close()
    reset_singletons()
    assert not any(t.connected for t in service.tiers.values())
    assert not [n for n in manager.stats()["sources"] if n.startswith("redis:")]


def uuid_hex() -> str:
    import uuid

    return uuid.uuid4().hex[:8]


def test_redis_down_at_start_is_a_warning(
    small_db: str, fresh: None, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("redis")
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with caplog.at_level("WARNING", logger="memcache_ext.demo"):
        app, _ = _app(small_db, redis_url=dead)
    assert "does not answer" in caplog.text
    profile, again, put = request_all(
        app,
        ("GET", "/users/4", None),
        ("GET", "/users/4", None),
        ("PUT", "/users/4/profile", {"name": "Still Works"}),
    )
    assert profile.status_code == again.status_code == put.status_code == 200
    tier = app.state.service.tiers["profiles"].stats()
    # no invalidation channel yet: the local tier is bypassed (bounded staleness), so
    # both reads load from the database
    assert tier["redis_errors"] >= 1 and tier["loads"] == 2 and tier["local_bypassed"]
    assert _db_name(small_db, 4) == "Still Works"


def test_replica_and_redis_flags_are_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fresh: None
) -> None:
    db = str(tmp_path / "x.sqlite3")
    assert main(["--db", db, "--replicas", "2"]) == 2
    assert "--replicas needs the Redis tier" in capsys.readouterr().err
    assert main(["--db", db, "--replicas", "0"]) == 2
    assert main(["--db", db, "--redis", "redis://127.0.0.1:1/0", "--unbounded"]) == 2
    assert "--redis needs the bounded caches" in capsys.readouterr().err
    assert (
        main(["--db", db, "--port", "65535", "--replicas", "2", "--redis", "redis://127.0.0.1:1/0"])
        == 2
    )
    assert not os.path.exists(db)


def _start_replicas(tmp_path: Path, redis_url: str, *extra: str) -> tuple[Any, int]:
    port = free_port()
    while port_in_use(port + 1):
        port = free_port()
    env = child_env()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "memcache_ext",
            "demo",
            "--db",
            str(tmp_path / "r.sqlite3"),
            "--users",
            "20",
            "--days",
            "1",
            "--port",
            str(port),
            "--replicas",
            "2",
            "--redis",
            redis_url,
            "--redis-prefix",
            f"r{uuid_hex()}",
            "--log-level",
            "warning",
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, port


def _children_of(pid: int) -> list[Any]:
    psutil = pytest.importorskip("psutil")
    try:
        return list(psutil.Process(pid).children())
    except psutil.NoSuchProcess:
        return []


@service
@posix_only
def test_replicas_under_real_uvicorn(tmp_path: Path, redis_url: str) -> None:
    import threading

    psutil = pytest.importorskip("psutil")
    proc, port = _start_replicas(tmp_path, redis_url)
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True
    )
    reader.start()
    replicas: list[Any] = []
    try:
        # the supervisor announces the replicas once every one answers /health
        eventually(
            lambda: any("2 replicas" in line for line in lines) or proc.poll() is not None,
            timeout=90,
            what="the supervisor reports 2 replicas up",
        )
        assert proc.poll() is None, "".join(lines)
        replicas = _children_of(proc.pid)
        assert len(replicas) == 2
        with httpx.Client(timeout=5) as client:
            a, b = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"
            assert client.get(f"{a}/users/5").json()["id"] == 5  # loaded by A
            assert client.get(f"{b}/users/5").json()["id"] == 5  # Redis hit in B
            put = client.put(f"{a}/users/5/profile", json={"name": "Barbara Liskov"})
            assert put.status_code == 200
            eventually(
                lambda: client.get(f"{b}/users/5").json()["name"] == "Barbara Liskov",
                what="replica B sees replica A's write",
            )

            def profiles_b() -> dict[str, Any]:
                st = client.get(f"{b}/memory/stats").json()["sources"]
                return next(v for k, v in st.items() if k.endswith(":profiles"))

            # the message is counted just after B drops its copy: wait for the count too
            eventually(lambda: profiles_b()["invalidations_received"] >= 1, what="B counted it")
            assert profiles_b()["remote_hits"] >= 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            for r in replicas:
                r.kill()
        reader.join(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
    err = "".join(lines)
    assert proc.returncode == 0, err
    assert "stopping 2 replicas" in err and "Traceback" not in err
    _gone, alive = psutil.wait_procs(replicas, timeout=10)
    assert not alive


@service
@posix_only
def test_replica_that_fails_to_start_stops_the_others(tmp_path: Path, redis_url: str) -> None:
    # The supervisor does not build a CacheManager; each replica does and refuses the limit.
    proc, port = _start_replicas(tmp_path, redis_url, "--memory-limit-mb", "-1")
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 1, err
    assert "failed to start" in err and "stopping the others" in err
    assert not port_in_use(port) and not port_in_use(port + 1)
