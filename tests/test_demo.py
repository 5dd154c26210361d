"""The demo service: database, endpoints, bad input, start-up errors, real uvicorn."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

from memcache_ext import CacheManager, SingletonMeta  # noqa: E402
from memcache_ext.demo import main  # noqa: E402
from memcache_ext.demo.app import HealthService, create_app, reset_singletons  # noqa: E402
from memcache_ext.demo.db import DatabaseError, check_database, create_database  # noqa: E402

USERS, DAYS = 30, 3
SRC = str(Path(__file__).resolve().parents[1] / "src")


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
        app, "/users/3", "/users/3/readings?days=1", "/users/3/readings",
        "/users/3/summary", "/users/3")
    assert profile.status_code == 200 and profile.json()["id"] == 3
    assert profile.json()["email"] == "user3@example.org"
    assert readings.json()["count"] == 24 and len(readings.json()["readings"]) == 24
    assert week.json()["days"] == 7 and week.json()["count"] == DAYS * 24  # all there is
    s = summary.json()
    assert s["readings"] == DAYS * 24 and sum(d["readings"] for d in s["daily"]) == DAYS * 24
    assert all(d["heart_rate_min"] <= d["heart_rate_mean"] <= d["heart_rate_max"]
               for d in s["daily"])
    assert again.json() == profile.json()
    st = manager.stats()["caches"]
    assert set(st) == {"profiles", "readings", "summaries"}
    assert st["profiles"]["hits"] >= 1 and st["profiles"]["max_bytes"] is not None
    assert st["readings"]["size"] == 2 and st["readings"]["nbytes"] > 0


def test_unknown_user_and_bad_input(db_path: str, fresh: None) -> None:
    app, _ = _app(db_path)
    responses = get_all(app, f"/users/{USERS + 1}", f"/users/{USERS + 1}/readings",
                        f"/users/{USERS + 1}/summary", "/users/0", "/users/abc",
                        "/users/99999999999999999999999", "/users/1/readings?days=0",
                        "/users/1/readings?days=366", "/users/1/readings?days=x",
                        "/users/1/readings?days=" + "9" * 5000)
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
    assert HealthService() is app.state.service
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
            running = app.state.cleanup.running
        return running

    assert asyncio.run(go()) is True
    assert not app.state.cleanup.running


def test_missing_and_broken_database(tmp_path: Path, fresh: None) -> None:
    with pytest.raises(DatabaseError, match="does not exist"):
        create_app(str(tmp_path / "nope.sqlite3"))
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DatabaseError, match="not a usable SQLite database|not a memcache-ext"):
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


def test_main_reports_start_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   fresh: None) -> None:
    rc = main(["--db", str(tmp_path / "missing.sqlite3"), "--no-create"])
    err = capsys.readouterr().err
    assert rc == 2 and "does not exist" in err and "Traceback" not in err
    assert main(["--users", "0"]) == 2
    with pytest.raises(SystemExit):
        main(["--port", "notaport"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_demo_under_real_uvicorn(tmp_path: Path) -> None:
    port = _free_port()
    db = str(tmp_path / "live.sqlite3")
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "memcache_ext.demo", "--db", db, "--users", "20", "--days", "2",
         "--port", str(port), "--log-level", "info"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
