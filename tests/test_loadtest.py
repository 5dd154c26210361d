"""The load test against the real demo service under uvicorn on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def loadtest(*args: str, timeout: float = 170) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "memcache_ext", "loadtest", *args],
                          capture_output=True, text=True, timeout=timeout)


def demo_servers() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "memcache_ext" in cmd and "demo" in cmd:
            found.append(p)
    return found


def test_quick_load_test_keeps_the_bounded_service_bounded(tmp_path: Path) -> None:
    out = tmp_path / "lt.json"
    start = time.monotonic()
    proc = loadtest("--quick", "--json", str(out))
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all promises held" in proc.stdout
    runs = {r["mode"]: r for r in json.loads(out.read_text())["runs"]}
    bounded, unbounded = runs["bounded"], runs["unbounded"]
    assert bounded["growth_mb"] < 100 and bounded["rss_peak_mb"] < 400
    assert bounded["errors"] == 0 and bounded["requests"] > 1000
    assert unbounded["rss_peak_mb"] > bounded["rss_peak_mb"]
    assert 0 < bounded["hit_rate"] < 1 and len(bounded["rss"]) > 10
    assert not demo_servers(), "the load test left a server running"
    print(f"quick load test took {elapsed:.0f} s")


def test_unknown_flag_is_a_clear_error() -> None:
    proc = loadtest("--frobnicate", timeout=30)
    assert proc.returncode == 2 and "unrecognized arguments: --frobnicate" in proc.stderr


def test_busy_port_is_a_clear_error_and_leaves_nothing_behind() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = loadtest("--only", "bounded", "--port", str(port), "--duration", "1", timeout=60)
    assert proc.returncode == 1 and f"port {port} on 127.0.0.1 is busy" in proc.stderr
    assert not demo_servers()


def test_a_server_that_fails_to_start_is_reported_and_stopped(tmp_path: Path) -> None:
    bad_db = tmp_path / "not-a-database.sqlite3"
    bad_db.write_text("this is not SQLite")
    proc = loadtest("--only", "bounded", "--db", str(bad_db), "--duration", "1", timeout=90)
    assert proc.returncode == 1
    assert "exited with code" in proc.stderr and "before answering" in proc.stderr
    assert not demo_servers()
