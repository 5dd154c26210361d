"""``python -m memcache_ext bench``: progress on a terminal only, tables that fit, clear errors.

The end-to-end runs measure one cache with ``--quick`` (a few seconds); the
tables, the legend and the hit-ratio section are checked on their own with
made-up or small figures.
"""

from __future__ import annotations

import io
import json
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from memcache_ext import IMPLEMENTATION
from memcache_ext.tools import bench, hitratio
from ptyrun import on_pipe, on_pty, python
from support import posix_only

ONE = "CLruCache" if IMPLEMENTATION == "c" else "PyLruCache"
QUICK_ONE = ("--quick", "--only", ONE, "--section", "speed")


def cli(*args: str) -> list[str]:
    return python("-m", "memcache_ext", "bench", *args)


def hide(*dists: str) -> str:
    """Python code that makes ``dists`` look uninstalled, then runs ``bench`` with argv."""
    return (
        "import sys, importlib.metadata as m, runpy\n"
        "real = m.version\n"
        "def version(name):\n"
        f"    if name in {dists!r}:\n"
        "        raise m.PackageNotFoundError(name)\n"
        "    return real(name)\n"
        "m.version = version\n"
        "sys.argv = ['memcache_ext'] + sys.argv[1:]\n"
        "runpy.run_module('memcache_ext', run_name='__main__')\n"
    )


# -- help and errors ---------------------------------------------------------------------


def test_help_lists_the_names_and_measured_times() -> None:
    r = on_pipe(cli("--help"))
    assert r.returncode == 0 and r.err == ""
    text = " ".join(r.out.split())
    for name in bench.CACHES:
        shown = f'"{name}"' if " " in name else name
        assert shown in text, name
    assert f"A full run takes {bench.TIME_FULL} on a loaded 2-core machine" in text
    assert f"--quick {bench.TIME_QUICK}" in text
    assert "--wide" in text and "--section {speed,hitratio}" in text


def test_unknown_only_name_lists_the_valid_ones() -> None:
    r = on_pipe(cli("--only", "nosuchcache"))
    assert r.returncode == 2 and r.out == ""
    assert "error: unknown cache name(s): nosuchcache; valid names: CLruCache, " in r.err
    assert '"classic OrderedDict+RLock"' in r.err and "cachebox.LRUCache" in r.err


def test_a_missing_competitor_is_refused_before_any_work() -> None:
    r = on_pipe(python("-c", hide("cachebox"), "bench", "--only", "cachebox.LRUCache"))
    assert r.returncode == 2 and r.out == ""
    assert "cannot measure cachebox.LRUCache: cachebox is not installed" in r.err
    assert 'pip install "memcache-ext[bench]"' in r.err and "pip install cachebox" in r.err


def test_missing_extras_are_named_before_any_work(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = metadata.version

    def version(name: str) -> str:
        if name in ("cachetools", "cachebox", "lru-dict"):
            raise metadata.PackageNotFoundError(name)  # whatever this environment has
        return real(name)

    class WorkStartedError(Exception):
        pass

    def no_work(*args: Any, **kwargs: Any) -> Any:
        raise WorkStartedError

    monkeypatch.setattr(metadata, "version", version)
    monkeypatch.setattr(hitratio, "available", lambda: False)
    monkeypatch.setattr(bench, "measure", no_work)
    with pytest.raises(WorkStartedError):
        bench.main(["--quick"])
    out, err = capsys.readouterr()
    assert out.startswith("memcache_ext ")  # the summary line comes first
    assert (
        "note: not installed, left out of the speed table: cachetools, lru-dict, cachebox "
        '(pip install "memcache-ext[bench]"' in err
    )
    assert "or pip install cachetools lru-dict cachebox)" in err
    assert "note: libCacheSim is not installed: the hit-ratio table has our policies only" in err


def test_bad_repeats_is_a_usage_error() -> None:
    r = on_pipe(cli("--repeats", "0"))
    assert r.returncode == 2 and "--repeats and --rounds must be >= 1" in r.err


# -- a real run: progress on a terminal, clean output through a pipe -----------------------


@posix_only
def test_progress_on_a_terminal(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = on_pty(cli(*QUICK_ONE, "--json", str(out)), timeout=300)
    assert r.returncode == 0, r.out
    assert f"\rbench [1/1] round 1/1, {ONE}" in r.out
    assert ": get hit " in r.out and " elapsed, about " in r.out and " left" in r.out
    screen = r.screen()
    assert "elapsed" not in screen  # erased before the table was printed
    assert "ns per operation (lower is better)" in screen
    assert json.loads(out.read_text())["results"][0]["name"] == ONE


def test_no_progress_through_a_pipe(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = on_pipe(cli(*QUICK_ONE, "--json", str(out)), timeout=300)
    assert r.returncode == 0, r.err
    assert r.err == ""  # no progress, no notes: logs stay clean
    assert "\r" not in r.out and "\x1b" not in r.out
    lines = r.out.splitlines()
    assert lines[0].startswith("memcache_ext ")  # the summary of `info`
    assert any(line.startswith(ONE) for line in lines)
    assert max(len(line) for line in lines[1:]) <= 100
    data = json.loads(out.read_text())
    assert data["summary"] == lines[0] and data["results"][0]["get_hit"] > 0


def test_no_progress_when_the_terminal_is_dumb(monkeypatch: pytest.MonkeyPatch) -> None:
    from memcache_ext.tools.progress import enabled_for

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("TERM", "xterm")
    assert enabled_for(Tty())
    monkeypatch.setenv("TERM", "dumb")
    assert not enabled_for(Tty())
    assert not enabled_for(io.StringIO())


# -- the table, the legend --------------------------------------------------------------


def fake_results() -> list[dict[str, Any]]:
    out = []
    for i, name in enumerate(bench.CACHES):
        r: dict[str, Any] = {
            "name": name,
            "get_hit": 14.5 + 100 * i,
            "get_miss": 19.9 + i,
            "set_update": 22.4 + i,
            "set_evict": 2173.8 + i,
            "zipf": 12140.5 + i,
            "bytes_per_entry": 203.9 + i,
            "zipf_hit_ratio": 0.565,
        }
        if name == "dict (unbounded)":
            del r["set_evict"], r["zipf"], r["zipf_hit_ratio"]
        out.append(r)
    return out


def row(name: str) -> re.Pattern[str]:
    """A table row of cache ``name``: the name, then figures."""
    return re.compile(re.escape(name) + r" {2,}[-\d]")


ENV = {"python": "3.11.7", "cpu": "AMD EPYC", "cpus": 2, "versions": {"cachebox": "6.2.10"}}


def test_the_default_tables_fit_100_columns_with_a_legend() -> None:
    text = bench.render(fake_results(), ENV, 7, 10_000, 3)
    lines = text.splitlines()
    assert max(map(len, lines)) <= 100, max(lines, key=len)
    assert "ns per operation (lower is better)" in text
    assert "memory, hit ratio, speed-up on get hit" in text
    for name in bench.CACHES:
        assert sum(bool(row(name).match(line)) for line in lines) == 2, name  # one per table
    legend = "\n".join(bench.legend(False))
    assert legend in text
    for term in (
        "get hit",
        "get miss",
        "set update",
        "set+evict",
        "zipf get_or_set",
        "B/entry",
        "hit ratio",
        "x PyLru, x classic",
        "classic ...",
        "dict (unbounded)",
    ):
        assert any(line.startswith(term + " ") for line in legend.splitlines()), term
    assert "an OrderedDict behind an RLock" in legend and "ghost is full" in legend


def test_wide_is_one_table() -> None:
    lines = bench.render(fake_results(), ENV, 7, 10_000, 3, wide=True).splitlines()
    head = next(line for line in lines if line.startswith("cache "))
    assert "get hit" in head and "x classic" in head and len(head) > 100
    assert sum(bool(row("CLruCache").match(line)) for line in lines) == 1


def test_quick_legend_names_its_sizes() -> None:
    assert "100,000 requests" in "\n".join(bench.legend(True))
    assert "1,000,000 requests" in "\n".join(bench.legend(False))


# -- the hit-ratio section ---------------------------------------------------------------


def small_rows() -> list[hitratio.Trace]:
    keys = hitratio.zipf_trace(2_000, 20_000, 0.8, 5)
    base = hitratio.Trace("Zipf 0.8, 5%", "zipf0.8", keys, 100, 2_000, split=10_000, window=1_000)
    scan = hitratio.Trace(
        "Zipf 0.8 + scan, 5%",
        "scan",
        keys[:10_000] + list(range(5_000, 5_500)) + keys[10_000:],
        100,
        2_500,
        split=10_500,
        window=1_000,
        base=base.name,
    )
    loop = hitratio.Trace("loop 1.2x, 5%", "loop", [i % 120 for i in range(5_000)], 100, 120)
    return [base, scan, loop]


def test_hit_ratio_section_runs_and_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = hitratio.run(small_rows())
    by = {r["name"]: r for r in rows}
    assert by["loop 1.2x, 5%"]["lru_hit_ratio"] == 0.0 < by["loop 1.2x, 5%"]["s3fifo_hit_ratio"]
    scan = by["Zipf 0.8 + scan, 5%"]
    assert scan["s3fifo_rest_no_scan_hit_ratio"] == by["Zipf 0.8, 5%"]["s3fifo_rest_hit_ratio"]
    text = hitratio.render(rows)
    assert max(map(len, text.splitlines())) <= 100
    for term in ("lru, s3fifo", "LRU ... Belady", "+ scan", "no scan", "loop 1.2x"):
        assert term in text
    targets = {t: ok for t, _, ok in hitratio.check(rows)}
    assert "s3fifo >= lru + 0.05 on the Zipf 0.8 rows" in targets
    if hitratio.available():
        assert targets["lru hits == libCacheSim LRU hits on every row"]
        assert "W-TinyLFU" in text and "Belady" in text
        for r in rows:
            assert r["belady_hit_ratio"] >= max(r["lru_hit_ratio"], r["s3fifo_hit_ratio"])
    monkeypatch.setattr(hitratio, "_lcs_classes", lambda: None)
    text = hitratio.render(hitratio.run(small_rows()[2:]))
    assert "libCacheSim is not installed: its columns are left out." in text
    assert "Belady" not in text.split("\n\n")[1]


def test_traces_are_seeded_and_as_described() -> None:
    rows = hitratio.traces(quick=True)
    assert [r.family for r in rows] == ["zipf0.8"] * 3 + ["zipf1.0"] * 3 + ["scan"] * 3 + [
        "loop"
    ] * 3
    assert rows[0].keys == hitratio.traces(quick=True)[0].keys
    z, scan, loop = rows[1], rows[7], rows[10]
    assert z.capacity == z.objects * 5 // 100
    assert len(scan.keys) == len(z.keys) + 5 * z.capacity and scan.base == z.name
    assert len(set(loop.keys)) == loop.capacity * 12 // 10


def test_progress_line_and_estimate() -> None:
    from memcache_ext.tools.progress import Progress, Task, clock

    stream = io.StringIO()
    tasks = [
        Task("a", [("x", "full"), ("full",)], 10.0),
        Task("b", [("y", "full"), ("full",)], 10.0),
    ]
    p = Progress(tasks, "bench", stream=stream, enabled=True)
    p.start(0)
    p.step("get hit")
    assert p.line().startswith("bench [1/2] a: get hit   0:00 elapsed, about 0:")
    p.done()
    took = p.expected(tasks[0])
    assert took < 1 and p.expected(tasks[1]) == took  # learnt from the kind "full"
    with p.hold():
        assert stream.getvalue().endswith("\r\x1b[K")
    p.close()
    assert clock(75) == "1:15" and clock(3725) == "1:02:05"
    quiet = io.StringIO()
    q = Progress(tasks, "bench", stream=quiet)  # not a terminal: nothing drawn
    with q:
        q.start(0)
        q.step("x")
    assert quiet.getvalue() == "" and not q.enabled


def test_worker_reports_its_phases() -> None:
    r = on_pipe(cli("--worker", ONE, "--quick", "--light", "--repeats", "1"))
    assert r.returncode == 0, r.err
    phases = [line[7:] for line in r.err.splitlines() if line.startswith("@phase ")]
    assert phases == ["get hit", "get miss", "set update", "set+evict"]
    assert json.loads(r.out)["name"] == ONE


if sys.platform == "win32":  # pragma: no cover
    pytestmark = pytest.mark.skip(reason="the bench's workers and the pty runs are POSIX-tested")


# -- benchmarks/bench_hitratio.py ----------------------------------------------------------


def bench_module(name: str) -> Any:
    """benchmarks/{name}.py as a module (skips where benchmarks/ is absent)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    if not path.exists():
        pytest.skip("benchmarks/ is not part of this copy")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_hitratio() -> Any:
    return bench_module("bench_hitratio")


def test_cost_targets_report_met_and_missed() -> None:
    bh = bench_hitratio()
    cost = {
        "CLruCache": {"get_hit": 15.0, "set_evict": 40.0, "bytes_per_entry": 56.7},
        "CLruCache s3fifo": {"get_hit": 14.0, "set_evict": 52.0, "bytes_per_entry": 65.2},
    }
    got = list(bh.cost_targets(cost))
    assert got == [
        ("get hit under s3fifo costs no more than under lru", "14.0 vs 15.0 ns: 0.93x", True),
        ("set with eviction at most 1.2x lru's", "52.0 vs 40.0 ns: 1.30x", False),
        ("at most 64 bytes per entry, ghost included", "65.2 B (lru: 56.7 B)", False),
    ]
    text = bh.render_cost(cost, {"rounds": 3, "repeats": 7})
    assert "CLruCache s3fifo" in text and max(map(len, text.splitlines())) <= 100


@pytest.mark.slow
@pytest.mark.timeout(660)  # above the bench's own 600 s, which reports its output
def test_bench_hitratio_quick_writes_what_the_docs_read(tmp_path: Path) -> None:
    pytest.importorskip("libcachesim")
    out = tmp_path / "hitratio.json"
    script = str(Path(__file__).resolve().parents[1] / "benchmarks" / "bench_hitratio.py")
    bench_hitratio()  # skips where benchmarks/ is absent
    r = on_pipe(python(script, "--quick", "--no-cost", "--json", str(out)), timeout=600)
    assert r.returncode == 0, r.err
    assert r.err == ""
    assert "Targets (issue 15)" in r.out
    assert "  met     lru hits == libCacheSim LRU hits on every row: equal on every row" in r.out
    data = json.loads(out.read_text())
    names = [row["name"] for row in data["results"]]
    assert names[0] == "Zipf 0.8, 1%" and "loop 1.2x, 10%" in names
    assert {"environment", "size", "rounds", "repeats", "targets"} <= set(data)


# -- benchmarks/bench_redis_faults.py --------------------------------------------------------


def test_fault_bench_judges_an_outage_against_its_own_phase_local_route() -> None:
    """A phase where the host was slower for every route (the same processes' /local as
    slow as the tier) is not the tier's doing; a tier slower than its phase's /local is."""
    bf = bench_module("bench_redis_faults")

    def row(phase: str, tier: str, p99: float) -> dict[str, Any]:
        return {"phase": phase, "tier": tier, "p99_ms": p99, "max_ms": p99 + 10}

    def result(*rows: dict[str, Any]) -> dict[str, Any]:
        visible = [{"phase": "frozen", "port": 1, "namespace": "n", "to": "open", "ok": True}]
        visible[0]["after_s"] = 0.2
        return {
            "rows": [row("baseline", "local", 10.6), *rows],
            "failed": 0,
            "visible": visible,
            "settings": {"max_stale": 1.0},
        }

    slow_host = result(row("frozen", "local", 70.0), row("frozen", "sync", 123.8))
    assert bf.check(slow_host) == []
    slow_tier = result(row("frozen", "local", 8.0), row("frozen", "sync", 123.8))
    assert [m.split(":")[0] for m in bf.check(slow_tier)] == ["frozen/sync"]
    assert bf.check(result(row("frozen", "sync", 123.8)))  # no /local row: the baseline's
    assert bf.check(result(row("steady", "sync", 123.8))) == []  # not an outage


def test_fault_bench_bounds_the_slowest_request_by_its_phase_local_route_too() -> None:
    """Run AD: with /local's slowest request at 244.7 ms in the frozen phase, a tier
    request of 276.2 ms is the host; a tier request seconds long is a wait for Redis."""
    bf = bench_module("bench_redis_faults")

    def row(phase: str, tier: str, p99: float, most: float) -> dict[str, Any]:
        return {"phase": phase, "tier": tier, "p99_ms": p99, "max_ms": most}

    def result(*rows: dict[str, Any]) -> dict[str, Any]:
        visible = [{"phase": "frozen", "port": 1, "namespace": "n", "to": "open", "ok": True}]
        visible[0]["after_s"] = 0.2
        return {
            "rows": [row("baseline", "local", 76.6, 108.7), *rows],
            "failed": 0,
            "visible": visible,
            "settings": {"max_stale": 1.0, "deadline": 0.05},
        }

    slow_host = result(row("frozen", "local", 227.9, 244.7), row("frozen", "sync", 222.9, 276.2))
    assert bf.check(slow_host) == []
    stalled = result(row("frozen", "local", 227.9, 244.7), row("frozen", "sync", 222.9, 1200.0))
    assert [m.split(":")[0] for m in bf.check(stalled)] == ["frozen/sync"]
    quiet = result(row("frozen", "local", 8.0, 20.0), row("frozen", "sync", 9.0, 276.2))
    assert [m.split(":")[0] for m in bf.check(quiet)] == ["frozen/sync"]  # 250 ms holds
    assert bf.check(result(row("frozen", "local", 8.0, 300.0))) == []  # /local is the host
