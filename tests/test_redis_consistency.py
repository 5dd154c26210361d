"""The consistency checker (benchmarks/bench_consistency.py) as a test: real demo
processes, a real redis-server, every replica compared with SQLite after each trial.

A few trials of two replicas run with the suite; the short form of every scenario
(one process, two replicas, a Redis kill, a Redis freeze: 100 trials each) is slow.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support import child_env, posix_only, require_redis

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

ROOT = Path(__file__).resolve().parents[1]
CHECKER = ROOT / "benchmarks" / "bench_consistency.py"

pytestmark = [pytest.mark.integration, posix_only]


def run_checker(tmp_path: Path, *args: str, timeout: float) -> dict[str, Any]:
    if not CHECKER.exists():
        pytest.skip("benchmarks/ is not part of this copy (wheel tests)")
    require_redis()
    out = tmp_path / "consistency.json"
    env = child_env()  # the memcache_ext this suite imports
    scratch = tmp_path / "tmp"  # the checker's and its servers' temporary files
    scratch.mkdir()
    env["TMPDIR"] = str(scratch)
    proc = subprocess.run(
        [sys.executable, str(CHECKER), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    print(proc.stdout)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.read_text())
    assert proc.returncode == 0, "\n".join(result["missed"]) or proc.stderr[-3000:]
    assert sorted(f.name for f in scratch.iterdir()) == []  # nothing left behind
    return result


def test_two_replicas_few_trials(tmp_path: Path) -> None:
    result = run_checker(tmp_path, "--scenario", "two-replicas", "--trials", "30", timeout=300)
    (r,) = result["results"]
    assert r["trials"] == 30 and r["results"] == 60 and r["stale"] == 0
    assert r["failed_requests"] == 0


@pytest.mark.slow
@pytest.mark.timeout(960)  # above the checker's own 900 s, which reports its output
def test_every_scenario_short_form(tmp_path: Path) -> None:
    result = run_checker(tmp_path, "--quick", timeout=900)
    by_name = {r["scenario"]: r for r in result["results"]}
    assert set(by_name) == {"one-process", "two-replicas", "redis-kill", "redis-freeze"}
    for r in by_name.values():
        assert r["stale"] == 0 and r["failed_requests"] == 0 and not r["over_bound"]
    for name in ("redis-kill", "redis-freeze"):
        outage = by_name[name]["staleness"]["outage"]
        assert outage["trials"] > 0 and outage["max_ms"] <= 1000 + 1000  # max_stale + slack
