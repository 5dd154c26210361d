"""The load test against the real demo service under uvicorn on loopback."""

from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from support import posix_only, require_redis

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

#: The load test starts the demo service (and redis-server) in their own process groups.
pytestmark = [pytest.mark.integration, posix_only]


def loadtest(*args: str, timeout: float = 170) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "memcache_ext", "loadtest", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def demo_servers(marker: str) -> list[psutil.Process]:
    """Demo processes whose command line holds ``marker`` (this test's database
    or port), so that another run on the machine is never mistaken for ours."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "memcache_ext" in cmd and "demo" in cmd and marker in cmd:
            found.append(p)
    return found


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_quick_load_test_keeps_the_bounded_service_bounded(tmp_path: Path) -> None:
    out, db = tmp_path / "lt.json", str(tmp_path / "demo.sqlite3")
    start = time.monotonic()
    # 50 s here when idle; a slow host runs each service until its 8,000 requests, up to
    # 140 s (the tool's own bound, checked below), so the whole run may take over 300 s
    proc = loadtest("--quick", "--json", str(out), "--db", db, timeout=420)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all promises held" in proc.stdout
    assert proc.stdout.startswith("memcache_ext ")  # the info summary line comes first
    runs = {r["mode"]: r for r in json.loads(out.read_text())["runs"]}
    bounded, unbounded = runs["bounded"], runs["unbounded"]
    assert bounded["growth_mb"] < 100 and bounded["rss_peak_mb"] < 400
    assert bounded["errors"] == 0 and bounded["requests"] > 1000
    for fig in (bounded, unbounded):  # --min-requests, unless the host is far too slow
        assert fig["requests"] >= 8000 or fig["requests"] / fig["req_per_s"] > 139
    assert unbounded["rss_peak_mb"] > bounded["rss_peak_mb"]
    assert 0 < bounded["hit_rate"] < 1 and len(bounded["rss"]) > 10
    assert not demo_servers(db), "the load test left a server running"
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
    assert not demo_servers(str(port))


def test_a_server_that_fails_to_start_is_reported_and_stopped(tmp_path: Path) -> None:
    bad_db = tmp_path / "not-a-database.sqlite3"
    bad_db.write_text("this is not SQLite")
    proc = loadtest("--only", "bounded", "--db", str(bad_db), "--duration", "1", timeout=90)
    assert proc.returncode == 1
    assert "exited with code" in proc.stderr and "before answering" in proc.stderr
    assert not demo_servers(str(bad_db))


def redis_servers(port: int) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["name", "cmdline"]):
        text = " ".join([p.info["name"] or "", *(p.info["cmdline"] or [])])
        if "redis-server" in text and f":{port}" in text:
            found.append(p)
    return found


@pytest.mark.slow
def test_replicas_share_the_redis_tier(tmp_path: Path) -> None:
    require_redis()
    out, db = tmp_path / "replicas.json", str(tmp_path / "replicas.sqlite3")
    start = time.monotonic()
    proc = loadtest(
        "--replicas",
        "2",
        "--duration",
        "8",
        "--users",
        "500",
        "--json",
        str(out),
        "--db",
        db,
        timeout=120,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Redis tier: 2 replicas" in proc.stdout and "remote hits (Redis)" in proc.stdout
    data = json.loads(out.read_text())
    (run,) = data["runs"]
    assert run["mode"] == "bounded" and run["errors"] == 0 and run["writes"] > 0
    reps, tier = run["replicas"], run["tier"]
    assert len(reps) == 2 and all(r["requests"] > 100 and r["errors"] == 0 for r in reps)
    assert all(r["writes"] > 0 and r["rss_peak_mb"] > 0 for r in reps)
    assert sum(r["requests"] for r in reps) == run["requests"]
    assert tier["remote_hits"] > 0  # a replica found what the other loaded
    assert tier["invalidations_received"] > 0
    # A call past the tier's 50 ms deadline counts as a Redis error (and is served from
    # the database, no request fails): on a loaded two-core machine a handful happen.
    assert tier["redis_errors"] <= max(5, tier["lookups"] // 1000), tier
    assert all(r["tier"]["remote_hits"] > 0 and r["tier"]["loads"] > 0 for r in reps)
    assert tier["local_hits"] + tier["local_misses"] == tier["lookups"] > 0
    redis_port = int(data["settings"]["redis_used"].rsplit(":", 1)[1].split("/")[0])
    assert not demo_servers(db), "the load test left a demo process running"
    assert not [p for p in redis_servers(redis_port) if p.status() != psutil.STATUS_ZOMBIE], (
        "the load test left its redis-server running"
    )
    print(f"replicas load test took {elapsed:.0f} s")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--skew", "-1"], "argument --skew: must be a finite number >= 0, got '-1'"),
        (["--skew", "nan"], "argument --skew: must be a finite number >= 0, got 'nan'"),
        (["--skew", "lots"], "argument --skew: must be a number, got 'lots'"),
        (["--duration", "0"], "argument --duration: must be a finite number of seconds > 0"),
        (["--duration", "inf"], "argument --duration: must be a finite number of seconds > 0"),
        (["--soak", "--duration", "10", "--warmup", "10"], "--warmup must be shorter than"),
        (["--writes", "0.6", "--oversize", "0.6"], "together at most 1"),
        (["--warmup-requests", "100"], "--warmup-requests goes with --soak"),
        (["--soak", "--warmup-requests", "1.5"], "--warmup-requests: must be a whole number"),
        (["--soak", "--warmup-requests", "-1"], "number of requests >= 0, got '-1'"),
        (["--min-requests", "lots"], "--min-requests: must be a whole number of requests"),
    ],
)
def test_bad_numbers_are_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    db = str(tmp_path / "never-created.sqlite3")
    proc = loadtest(*args, "--db", db, timeout=30)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not Path(db).exists() and not demo_servers(db)  # nothing was started


def test_plot_without_matplotlib_is_said_before_any_work(tmp_path: Path) -> None:
    fake = tmp_path / "fake" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    db = str(tmp_path / "never-created.sqlite3")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake.parent), *sys.path]))
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "memcache_ext", "loadtest", "--plot", "x.png", "--db", db],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 2
    assert "--plot needs matplotlib: pip install 'memcache-ext[plot]'" in proc.stderr
    assert time.monotonic() - start < 20 and not Path(db).exists()


def _run_in_pty(args: list[str], timeout: float) -> tuple[int, str]:
    """Run the load test with stderr on a pseudo-terminal; (exit code, what it drew)."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "memcache_ext", "loadtest", *args],
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=30), out.decode(errors="replace")


def test_progress_on_a_terminal_and_none_in_a_pipe(tmp_path: Path) -> None:
    db = str(tmp_path / "progress.sqlite3")
    args = ["--only", "bounded", "--duration", "4", "--users", "300", "--uniform-phase", "0"]
    code, drawn = _run_in_pty([*args, "--db", db], timeout=120)
    assert code == 0, drawn
    lines = [part for part in drawn.split("\r") if "requests, RSS" in part]
    assert lines, drawn
    assert re.search(
        r"bounded \w+: \d+ s of 4 s \(\d+ s left\), [\d,]+ requests, RSS [\d.]+ MB", lines[-1]
    ), lines[-1]
    piped = loadtest(*args, "--db", db, timeout=120)
    assert (
        piped.returncode == 0 and "\r" not in piped.stderr and "requests, RSS" not in piped.stderr
    )
    assert "traffic: Zipf(1) user popularity" in piped.stdout
    assert "uniform (skew 0)" in piped.stdout and "bounded s3fifo" in piped.stdout


def test_a_limit_below_the_baseline_is_reported_and_nothing_is_left(tmp_path: Path) -> None:
    db = str(tmp_path / "tiny.sqlite3")
    proc = loadtest(
        "--soak",
        "--memory-limit-mb",
        "20",
        "--duration",
        "5",
        "--users",
        "200",
        "--db",
        db,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "exited with code 2 before answering" in proc.stderr
    assert "memory limit (20.0 MB, configured) is below the process's baseline RSS" in proc.stderr
    assert not demo_servers(db)


def test_the_warmup_lasts_until_its_requests_then_the_rest_is_measured(tmp_path: Path) -> None:
    """A warm-up counted in requests outlasts --warmup on a slow host; the measured part
    after it keeps its length (--duration less --warmup)."""
    out, db = tmp_path / "soak.json", str(tmp_path / "soak.sqlite3")
    args = ["--soak", "--users", "200", "--concurrency", "4", "--poll-interval", "1"]
    args += ["--duration", "5", "--warmup", "1", "--warmup-requests", "1500"]
    proc = loadtest(*args, "--json", str(out), "--db", db, timeout=180)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr  # a verdict, not a crash
    (fig,) = json.loads(out.read_text())["runs"]
    assert fig["warmup_requests"] >= 1500
    assert fig["warmup_s"] >= 1.0 and fig["rss"][-1][0] >= fig["warmup_s"]
    # never less than --duration less --warmup after it; more by a sample and the clients' last
    # answers (seconds on a loaded host)
    assert 4.0 <= fig["duration_s"] - fig["warmup_s"] < 14.0
    assert f"{fig['warmup_requests']:,} requests, a warm-up)" in proc.stdout
    assert not demo_servers(db)


def test_a_slow_host_runs_on_until_the_least_requests(tmp_path: Path) -> None:
    """--min-requests: past --duration until that many requests were served."""
    out, db = tmp_path / "lt.json", str(tmp_path / "min.sqlite3")
    args = ["--only", "bounded", "--users", "200", "--concurrency", "2", "--uniform-phase", "0"]
    args += ["--duration", "1", "--min-requests", "1200"]
    proc = loadtest(*args, "--json", str(out), "--db", db, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (fig,) = json.loads(out.read_text())["runs"]
    assert fig["requests"] >= 1200 and fig["requests"] / fig["req_per_s"] > 1.0
    assert not demo_servers(db)


@pytest.mark.slow
@pytest.mark.timeout(600)  # above the load test's own 540 s, which reports its output
def test_soak_quick_holds_the_promises(tmp_path: Path) -> None:
    """The CI form of the soak (25,000 requests of warm-up, then 40 s measured):
    issue 12's promises, smaller scale."""
    out, db = tmp_path / "soak.json", str(tmp_path / "soak.sqlite3")
    proc = loadtest("--soak", "--quick", "--json", str(out), "--db", db, timeout=540)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "soak: all promises held" in proc.stdout
    (fig,) = json.loads(out.read_text())["runs"]
    assert fig["warmup_requests"] >= 25_000 or fig["warmup_s"] >= 240
    assert 40.0 <= fig["duration_s"] - fig["warmup_s"] < 50.0
    assert fig["rss_peak_mb"] <= fig["limit_mb"] == 150
    assert fig["other_5xx"] == 0 and fig["connection_failures"] == 0
    assert fig["oversized_statuses"] and set(fig["oversized_statuses"]) == {"413"}
    assert fig["hit_rate_second_half"]["all"] >= 0.8
    assert not demo_servers(db)


def test_replicas_with_unbounded_is_a_clear_error() -> None:
    proc = loadtest("--replicas", "2", "--only", "unbounded", timeout=30)
    assert proc.returncode == 2 and "drop --only unbounded" in proc.stderr


def _soak_figures(hold_ms: float, noise_ms: float, over_10ms: int = 3) -> dict[str, object]:
    """A soak's figures that meet every target but, perhaps, the stall."""
    return {
        "limit_mb": 150,
        "requests": 30_000,
        "rss_peak_mb": 110.0,
        "slope_second_half_mb_per_min": 0.3,
        "other_5xx": 0,
        "connection_failures": 0,
        "sheds_503": 0,
        "longest_callback_without_gc_ms": hold_ms,
        "loop_noise_ms": noise_ms,
        "cleanup_longest_step_ms": 1.0,
        "cleanups": 0,
        "longest_callback_ms": hold_ms,
        "callbacks_over_10ms": over_10ms,
        "longest_gc_on_loop_ms": 2.0,
        "hit_rate_second_half": {"all": 0.83},
        "oversized_statuses": {"413": 10},
        "rejected_413": 10,
    }


@pytest.mark.parametrize(
    "quick, hold, noise, over, held",
    [
        (False, 9.0, 0.1, 0, True),
        (False, 13.0, 10.0, 1, False),  # the full soak: the 10 ms bound as measured
        (True, 15.2, 1.7, 2, True),  # CI's form: a few isolated holds (as CI saw in 60 s)
        (True, 51.0, 10.0, 1, False),  # one hold over 50 ms: what a blocking cleanup did
        (True, 12.0, 0.1, 31, False),  # holds over 10 ms in more than 1 request in 1,000
        (True, 12.0, 0.1, 30, True),
    ],
)
def test_the_stall_verdict(quick: bool, hold: float, noise: float, over: int, held: bool) -> None:
    from memcache_ext.tools._loadreport import check_soak

    figures = _soak_figures(hold, noise, over)
    verdicts = {t: v for t, v, _ in check_soak(figures, True, quick)}
    stall = [v for t, v in verdicts.items() if "event-loop stall" in t]
    assert stall == ["PASS" if held else "FAIL"]
    assert all(v in ("PASS", "NOTE") for t, v in verdicts.items() if "event-loop stall" not in t)


@pytest.mark.parametrize(
    "quick, step, held",
    [
        (False, 9.0, True),
        (False, 10.5, False),  # the full soak: 10 ms
        (True, 16.0, True),  # CI's form: a 1-3 ms step the host's taken CPU landed on
        (True, 51.0, False),
        (True, 120.0, False),  # what the blocking cleanup of issue 12 held
    ],
)
def test_the_cleanup_step_verdict(quick: bool, step: float, held: bool) -> None:
    from memcache_ext.tools._loadreport import check_soak

    figures = _soak_figures(5.0, 0.1, 0)
    figures["cleanup_longest_step_ms"] = step
    verdicts = {t: v for t, v, _ in check_soak(figures, True, quick)}
    assert [v for t, v in verdicts.items() if "cleanup step" in t] == ["PASS" if held else "FAIL"]


@pytest.mark.parametrize(
    "quick, slope, held",
    [
        (False, 0.9, True),
        (False, 1.2, False),  # the full soak: 1 MB/min
        (True, 4.2, True),  # CI's form: what a 60 s run read with no leak behind it
        (True, -5.9, True),
        (True, 6.1, False),  # beyond two 1 MiB arena steps in its 20 s
        (True, 22.0, False),  # the leak issue 12 found
    ],
)
def test_the_slope_verdict(quick: bool, slope: float, held: bool) -> None:
    from memcache_ext.tools._loadreport import check_soak

    figures = _soak_figures(5.0, 0.1, 0)
    figures["slope_second_half_mb_per_min"] = slope
    verdicts = {t: v for t, v, _ in check_soak(figures, True, quick)}
    assert [v for t, v in verdicts.items() if "RSS slope" in t] == ["PASS" if held else "FAIL"]


@pytest.mark.parametrize(
    "quick, rss, outside, whole, held",
    [
        (True, 10.25, 3.7, 9.0, True),  # caches still filling at 40-60 s on a slow machine
        (True, 10.25, 6.1, 6.2, False),
        (True, 10.25, 6.1, None, False),  # no second opinion: the half alone
        (True, 6.71, 6.55, 3.0, True),  # one 1.4 MB step at 55-60 s (CI run BC, 2026-12-04)
        (True, 22.0, 22.0, 21.0, False),  # a leak: memory no cache holds
        (True, 22.0, 22.0, -7.0, False),
        (False, 10.25, 0.5, 0.5, False),  # the full soak judges RSS itself
    ],
)
def test_the_quick_form_judges_rss_less_what_the_caches_hold(
    quick: bool, rss: float, outside: float, whole: float | None, held: bool
) -> None:
    from memcache_ext.tools._loadreport import check_soak

    figures = _soak_figures(5.0, 0.1, 0)
    figures["slope_second_half_mb_per_min"] = rss
    figures["slope_outside_caches_mb_per_min"] = outside
    figures["slope_outside_caches_measured_mb_per_min"] = whole
    verdicts = {t: v for t, v, _ in check_soak(figures, True, quick)}
    assert [v for t, v in verdicts.items() if "RSS slope" in t] == ["PASS" if held else "FAIL"]


def test_rss_less_what_the_caches_hold() -> None:
    """The caches' bytes, read at the polls, are interpolated at each RSS sample and
    credited only up to what the caches were granted."""
    from memcache_ext.tools._loadreport import Run, soak_figures

    run = Run("bounded", limit_mb=150)
    run.duration_s, run.warmup_s = 60.0, 20.0
    mb = 1 << 20
    # RSS grows 10 MB/min; the caches hold 6 MB/min of it, then pass their grant at 50 s
    run.rss = [(float(t), 80 * mb + t * mb // 6, 0) for t in range(61)]
    run.polls = [
        (
            float(t),
            {"budget": {"accounted_bytes": 20 * mb + t * mb // 10, "granted_bytes": 25 * mb}},
        )
        for t in range(0, 61, 5)
    ]
    fig = soak_figures(run, 0.0)
    assert fig["slope_second_half_mb_per_min"] == pytest.approx(10.0, rel=0.02)
    # 40-50 s: 4 MB/min outside; 50-60 s: the grant is reached, all 10 outside
    assert 4.5 < fig["slope_outside_caches_mb_per_min"] < 10.0
    run.polls = [(t, {"budget": {**st["budget"], "granted_bytes": 99 * mb}}) for t, st in run.polls]
    fig = soak_figures(run, 0.0)
    assert fig["slope_outside_caches_mb_per_min"] == pytest.approx(4.0, rel=0.02)
    # over the whole measured window (20-60 s) too
    assert fig["slope_outside_caches_measured_mb_per_min"] == pytest.approx(4.0, rel=0.02)
