"""The demo's Redis side (issues 13 and 14): versioned writes, JSON in Redis, secrets
kept off command lines, loopback by default, a token for the internal endpoints."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

from memcache_ext import CacheManager  # noqa: E402 - after importorskip
from memcache_ext.tools.demo import main  # noqa: E402 - after importorskip
from memcache_ext.tools.demo.app import create_app, reset_singletons  # noqa: E402 - after importorskip
from memcache_ext.tools.demo.db import create_database  # noqa: E402 - after importorskip
from memcache_ext.tools.procs import free_ports  # noqa: E402 - after importorskip
from support import RedisServer, child_env, eventually, posix_only, require_redis  # noqa: E402 - after importorskip


@pytest.fixture
def fresh() -> Iterator[None]:
    reset_singletons()
    yield
    reset_singletons()


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "demo.sqlite3")
    create_database(path, 10, 1)
    return path


def call(app: Any, *requests: tuple[str, str, Any, dict[str, str]]) -> list[Any]:
    async def go() -> list[Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return [
                await c.request(m, p, json=body, headers=headers)
                for m, p, body, headers in requests
            ]

    return asyncio.run(go())


# -- binding and the token ------------------------------------------------------------------


def test_a_public_address_needs_a_token_or_insecure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MEMCACHE_EXT_DEMO_TOKEN", raising=False)
    missing = ["--db", str(tmp_path / "none.sqlite3"), "--no-create"]
    for host in ("0.0.0.0", "::", "192.0.2.7"):
        assert main(["--host", host, *missing]) == 2
        assert "--insecure" in capsys.readouterr().err
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert main(["--host", host, *missing]) == 2  # only the missing database
        assert "does not exist" in capsys.readouterr().err
    assert main(["--host", "0.0.0.0", "--insecure", *missing]) == 2
    assert "does not exist" in capsys.readouterr().err
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    assert main(["--host", "0.0.0.0", "--token-file", str(token), *missing]) == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setenv("MEMCACHE_EXT_DEMO_TOKEN", "from-env")
    assert main(["--host", "0.0.0.0", *missing]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").write_text("\n")
    assert main(["--token-file", str(tmp_path / "empty"), *missing]) == 2
    assert "is empty" in capsys.readouterr().err


def test_the_token_protects_memory_metrics_and_docs(db: str, fresh: None) -> None:
    app = create_app(db, manager=CacheManager(memory_limit_mb=1024), token="s3cret")
    basic = base64.b64encode(b"anyone:s3cret").decode()
    wrong = base64.b64encode(b"anyone:nope").decode()
    paths = ["/memory/stats", "/metrics", "/docs", "/redoc", "/openapi.json"]
    denied = call(app, *[("GET", p, None, {}) for p in paths])
    assert [r.status_code for r in denied] == [401] * len(paths)
    assert denied[0].headers["www-authenticate"].startswith("Basic")
    assert "s3cret" not in denied[0].text
    for headers in ({"authorization": "Bearer nope"}, {"authorization": f"Basic {wrong}"}):
        assert call(app, ("GET", "/memory/stats", None, headers))[0].status_code == 401
    for headers in ({"authorization": "Bearer s3cret"}, {"authorization": f"Basic {basic}"}):
        ok = call(app, *[("GET", p, None, headers) for p in paths])
        assert [r.status_code for r in ok] == [200] * len(paths)
    open_ = call(app, ("GET", "/users/1", None, {}), ("GET", "/health", None, {}))
    assert [r.status_code for r in open_] == [200, 200]


# -- secrets off the command line --------------------------------------------------------------


def test_a_password_in_the_redis_url_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = ["--db", str(tmp_path / "x.sqlite3"), "--no-create"]
    assert main(["--redis", "redis://:hunter2@127.0.0.1:6379/0", *db]) == 2
    err = capsys.readouterr().err
    assert "MEMCACHE_EXT_REDIS_PASSWORD" in err and "hunter2" not in err
    assert main(["--redis", "redis://127.0.0.1:6379/0?password=hunter2", *db]) == 2
    assert "ps" in capsys.readouterr().err


@posix_only
@pytest.mark.integration
def test_the_supervisor_keeps_the_redis_password_out_of_ps(tmp_path: Path) -> None:
    require_redis()
    import redis

    password = f"pw-{uuid.uuid4().hex}"
    token = f"tok-{uuid.uuid4().hex}"
    server = RedisServer()
    server.start()
    raw = redis.Redis(host="127.0.0.1", port=server.port)
    raw.config_set("requirepass", password)
    raw.close()
    port = free_ports(2)
    env = child_env(
        # the whole URL, password included, from the environment
        MEMCACHE_EXT_REDIS_URL=f"redis://:{password}@127.0.0.1:{server.port}/0",
        MEMCACHE_EXT_DEMO_TOKEN=token,
    )
    argv = [sys.executable, "-m", "memcache_ext", "demo", "--db", str(tmp_path / "r.sqlite3")]
    argv += ["--users", "10", "--days", "1", "--port", str(port), "--replicas", "2"]
    proc = subprocess.Popen(
        [*argv, "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    threading.Thread(
        target=lambda: lines.extend(iter(proc.stderr.readline, "")),  # type: ignore[union-attr]
        daemon=True,
    ).start()
    try:
        eventually(
            lambda: any("2 replicas" in ln for ln in lines) or proc.poll() is not None,
            timeout=90,
            what="2 replicas up",
        )
        assert proc.poll() is None, "".join(lines)
        with httpx.Client(timeout=5) as client:
            for p in (port, port + 1):
                health = client.get(f"http://127.0.0.1:{p}/health").json()
                # connected: the password reached the replica
                eventually(
                    lambda p=p: client.get(f"http://127.0.0.1:{p}/health").json()["redis"][  # type: ignore[misc]
                        "connected"
                    ],
                    what="replica subscribed with the password",
                )
                assert health["redis"] is not None
                stats = client.get(
                    f"http://127.0.0.1:{p}/memory/stats",
                    headers={"authorization": f"Bearer {token}"},
                )
                assert stats.status_code == 200
        ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True)
        ours = [ln for ln in ps.stdout.splitlines() if "memcache_ext demo" in ln]
        assert len(ours) >= 3, ps.stdout  # the supervisor and its two replicas
        assert password not in ps.stdout and token not in ps.stdout
        assert password not in "".join(lines) and token not in "".join(lines)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        server.stop()


# -- the write path: versions from the database, JSON in Redis ------------------------------------


@pytest.mark.integration
def test_the_write_path_is_versioned_and_json(db: str, fresh: None, patient_tiers: None) -> None:
    require_redis()
    import redis

    from memcache_ext import LruCache
    from memcache_ext.redis import TieredCache

    with RedisServer() as server:
        prefix = f"d{uuid.uuid4().hex[:8]}"
        app = create_app(
            db,
            manager=CacheManager(memory_limit_mb=1024),
            redis_url=server.url,
            redis_prefix=prefix,
        )
        service = app.state.service
        assert all(t.wait_ready(10) for t in service.tiers.values())
        assert {t.serializer.name for t in service.tiers.values()} == {"json"}
        raw = redis.Redis(host="127.0.0.1", port=server.port)
        before, summary = call(
            app, ("GET", "/users/3", None, {}), ("GET", "/users/3/summary", None, {})
        )
        v = before.json()["version"]
        assert summary.json()["version"] == v
        stored = raw.hgetall(f"{prefix}:profiles:3")
        assert int(stored[b"v"]) == v and json.loads(stored[b"d"]) == before.json()
        (put,) = call(app, ("PUT", "/users/3/profile", {"name": "Radia Perlman"}, {}))
        assert put.json()["version"] == v + 1
        version = raw.hget(f"{prefix}:profiles:3", "v")
        assert version is not None
        assert int(version) == v + 1
        tomb = raw.hgetall(f"{prefix}:summaries:3")
        assert int(tomb[b"v"]) == v + 1 and b"d" not in tomb  # the summary's tombstone
        # another replica's late write of the older row is refused
        client = redis.Redis(host="127.0.0.1", port=server.port)
        other = TieredCache(
            LruCache(10), client, f"{prefix}:profiles", version_of=lambda row: row["version"]
        )
        try:
            assert other.wait_ready(10)
            assert other.set("3", before.json()) is False
            assert other.get("3") == put.json()
        finally:
            other.close()
            client.close()
        (again,) = call(app, ("GET", "/users/3", None, {}))
        assert again.json() == put.json()
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT version FROM users WHERE id = 3").fetchone()[0] == v + 1
        raw.close()
