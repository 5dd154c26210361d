"""``python -m memcache_ext bench``: side-by-side tables, measured in one run.

Two sections. **speed**: each cache runs in its own fresh interpreter
(``--worker``), so one library's garbage, allocator state or imports never
slow another's figures; every figure is the median of several repeats over
interleaved rounds, and ratios are taken between medians of this same run.
**hitratio**: the cache's policies next to libCacheSim's on the same request
sequences (``tools/hitratio.py``).

The output starts with the one-line summary of ``python -m memcache_ext info``.
On a terminal a progress line (what runs now, time elapsed, time left) is
redrawn on stderr; nothing is drawn when stderr is not a terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any, Optional

from .. import _core
from .._core_py import PyLruCache
from .._version import __version__
from . import hitratio, info
from .progress import Progress, Task


class ClassicLruCache:
    """The "before" baseline: an OrderedDict behind an RLock, as services write it."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.data: OrderedDict[Any, Any] = OrderedDict()
        self.lock = threading.RLock()

    def __getitem__(self, key: Any) -> Any:
        with self.lock:
            value = self.data[key]
            self.data.move_to_end(key)
            return value

    def get(self, key: Any, default: Any = None) -> Any:
        with self.lock:
            try:
                value = self.data[key]
            except KeyError:
                return default
            self.data.move_to_end(key)
            return value

    def __setitem__(self, key: Any, value: Any) -> None:
        with self.lock:
            self.data[key] = value
            self.data.move_to_end(key)
            if len(self.data) > self.maxsize:
                self.data.popitem(last=False)


# -- the caches: name -> (what it needs, how to make one) --------------------------------

COMPILED = "the compiled core"
#: Distribution (pip name) -> import name of the competitors.
COMPETITORS = {"cachetools": "cachetools", "lru-dict": "lru", "cachebox": "cachebox"}


def _compiled(**kw: Any) -> Callable[[], Callable[[int], Any]]:
    def maker() -> Callable[[int], Any]:
        cls = vars(_core)["CLruCache"]  # bound only where it imports (see missing())
        return (lambda n: cls(n, **kw)) if kw else cls

    return maker


def _imported(module: str, attr: str) -> Callable[[], Callable[[int], Any]]:
    def maker() -> Callable[[int], Any]:
        import importlib

        made: Callable[[int], Any] = getattr(importlib.import_module(module), attr)
        return made

    return maker


#: Every cache the speed table knows, in table order: name -> (requirement, maker).
CACHES: dict[str, tuple[Optional[str], Callable[[], Callable[[int], Any]]]] = {
    "CLruCache": (COMPILED, _compiled()),
    "CLruCache s3fifo": (COMPILED, _compiled(policy="s3fifo")),
    "CLruCache ttl": (COMPILED, _compiled(ttl=3600)),
    "CLruCache max_bytes": (COMPILED, _compiled(max_bytes=1 << 40)),
    "PyLruCache": (None, lambda: PyLruCache),
    "classic OrderedDict+RLock": (None, lambda: ClassicLruCache),
    "dict (unbounded)": (None, lambda: lambda n: {}),  # no bound, no lock: the floor
    "cachetools.LRUCache": ("cachetools", _imported("cachetools", "LRUCache")),
    "lru-dict": ("lru-dict", _imported("lru", "LRU")),
    "cachebox.LRUCache": ("cachebox", _imported("cachebox", "LRUCache")),
}


def missing(name: str) -> Optional[str]:
    """Why cache ``name`` cannot run here (with how to fix it), or None."""
    need = CACHES[name][0]
    if need is None:
        return None
    if need == COMPILED:
        if _core.IMPORT_ERROR is None:
            return None
        return f"the compiled core is not available{_core.IMPORT_ERROR}"
    try:
        metadata.version(need)
    except metadata.PackageNotFoundError:
        return f"{need} is not installed"
    return None


def _factories() -> dict[str, Callable[[int], Any]]:
    """The caches that can run here: name -> factory(maxsize)."""
    return {name: maker() for name, (_, maker) in CACHES.items() if missing(name) is None}


# -- the worker: one cache, measured in this fresh process -------------------------------


def _timed(fn: Callable[[], None], ops: int, repeats: int) -> float:
    """Median ns per operation over ``repeats`` runs of ``fn`` (which does ``ops``)."""
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / ops)
    return statistics.median(samples)


def _zipf_trace(n_keys: int, length: int, s: float = 0.99, seed: int = 7) -> list[int]:
    rnd = random.Random(seed)
    weights = [1.0 / (i**s) for i in range(1, n_keys + 1)]
    cum, total = [], 0.0
    for w in weights:
        total += w
        cum.append(total)
    import bisect

    perm = list(range(n_keys))
    rnd.shuffle(perm)
    return [perm[bisect.bisect_left(cum, rnd.random() * total)] for _ in range(length)]


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _phase(name: str) -> None:
    """Tell the parent which workload runs now (a line it reads for the progress line)."""
    print(f"@phase {name}", file=sys.stderr, flush=True)


def worker(
    name: str,
    size: int,
    repeats: int,
    trace_len: int,
    mem_entries: int,
    passes: int,
    light: bool = False,
) -> dict[str, Any]:
    """Measure one cache in this (fresh) process; ``light``: timings only."""
    make = _factories()[name]
    result: dict[str, Any] = {"name": name}
    if light:
        mem_entries = trace_len = 0
    # Memory first, in this fresh process: memory freed by the timing runs
    # below would otherwise be reused and hide part of the cost.
    if mem_entries:
        import gc

        _phase("memory")
        # A policy with a ghost (s3fifo) is measured after as many evictions
        # as entries, so that its ghost is full and counted.
        fill = 2 if "s3fifo" in name else 1
        ints = list(range(10**9, 10**9 + fill * mem_entries))  # keys and values: not counted
        gc.collect()
        base = _rss()
        big = make(mem_entries)
        for k in ints:
            big[k] = k
        result["bytes_per_entry"] = (_rss() - base) / mem_entries
        del big, ints
        gc.collect()
    keys = list(range(size))
    misses = list(range(size, 2 * size))
    cache = make(size)
    for k in keys:
        cache[k] = k
    is_dict = type(cache) is dict

    # Each sample runs `passes` sweeps over the keys (100,000 operations by
    # default), so that one sample is milliseconds, not microseconds.
    hit_stream = keys * passes
    miss_stream = misses * passes
    ops = len(hit_stream)
    fresh = iter(range(10**12, 10**12 + (repeats + 1) * ops))
    evict_batches = [[next(fresh) for _ in range(ops)] for _ in range(repeats)]

    def get_hit() -> None:
        for k in hit_stream:
            cache[k]

    def get_miss() -> None:
        g = cache.get
        for k in miss_stream:
            g(k)

    def set_update() -> None:
        for k in hit_stream:
            cache[k] = k

    def set_evict() -> None:
        for k in evict_batches.pop():
            cache[k] = 0

    _phase("get hit")
    result["get_hit"] = _timed(get_hit, ops, repeats)
    _phase("get miss")
    result["get_miss"] = _timed(get_miss, ops, repeats)
    _phase("set update")
    result["set_update"] = _timed(set_update, ops, repeats)
    if not is_dict:
        _phase("set+evict")
        result["set_evict"] = _timed(set_evict, ops, repeats)
    if is_dict or not trace_len:
        return result
    _phase("zipf get_or_set")
    trace = _zipf_trace(100 * size, trace_len)
    hits = [0]
    get_or_set = getattr(make(size), "get_or_set", None)

    def zipf() -> None:
        h = 0
        c = make(size)
        if get_or_set is not None:
            gos = c.get_or_set
            for k in trace:
                gos(k, int)
            h = c.stats()["hits"]
        else:
            g = c.get
            for k in trace:
                if g(k) is None:
                    c[k] = 0
                else:
                    h += 1
        hits[0] = h

    result["zipf"] = _timed(zipf, trace_len, max(1, repeats // 2))
    result["zipf_hit_ratio"] = hits[0] / trace_len
    return result


# -- the parent: rounds of workers ---------------------------------------------------------

TIMINGS = ("get_hit", "get_miss", "set_update", "set_evict")
SIZE = 10_000
#: Seconds one worker took on a loaded 2-core machine (full round, light round), by quick:
#: the estimate of the time left until this run has measured its own.
PRIORS = {False: (12.0, 4.0), True: (2.5, 1.0)}


def plan(quick: bool, repeats: Optional[int], rounds: Optional[int]) -> dict[str, Any]:
    """The run's sizes: repeats, rounds, trace length, entries for memory, passes."""
    return {
        "repeats": repeats if repeats is not None else (3 if quick else 7),
        "rounds": rounds if rounds is not None else (1 if quick else 3),
        "trace_len": 100_000 if quick else 1_000_000,
        "mem_entries": 100_000 if quick else 1_000_000,
        "passes": 3 if quick else 10,
        "quick": quick,
    }


def speed_tasks(names: Sequence[str], p: dict[str, Any]) -> list[Task]:
    full, light = PRIORS[bool(p["quick"])]
    out = []
    for r in range(p["rounds"]):
        kind = "light" if r else "full"
        for name in names:
            out.append(
                Task(
                    f"round {r + 1}/{p['rounds']}, {name}",
                    [(name, kind), (kind,)],
                    light if r else full,
                )
            )
    return out


def _run_worker(name: str, p: dict[str, Any], light: bool, progress: Optional[Progress]) -> Any:
    """One worker process; its phases go to the progress line. The parsed result."""
    cmd = [
        sys.executable,
        "-m",
        "memcache_ext",
        "bench",
        "--worker",
        name,
        "--repeats",
        str(p["repeats"]),
        *(["--quick"] if p["quick"] else []),
        *(["--light"] if light else []),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
    )
    assert proc.stdout is not None and proc.stderr is not None
    other: list[str] = []
    for line in proc.stderr:  # the worker writes its result to stdout only at the end
        if line.startswith("@phase "):
            if progress is not None:
                progress.step(line[7:].strip())
        else:
            other.append(line)
    out = proc.stdout.read()
    if proc.wait() != 0:
        raise RuntimeError(f"{name}: the worker failed\n{''.join(other)}")
    return json.loads(out.strip().splitlines()[-1])


def measure(
    names: Sequence[str],
    p: dict[str, Any],
    progress: Optional[Progress] = None,
    first_task: int = 0,
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Every cache in ``names`` over ``p['rounds']`` interleaved rounds: (merged, samples).

    Rounds interleave the caches, so that a slow spell of a shared machine hits
    all of them, and each timing is the median over every round's samples.
    Memory and the Zipf trace are measured in the first round.
    """
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    task = first_task
    for r in range(p["rounds"]):
        for name in names:
            if progress is not None:
                progress.start(task)
            samples[name].append(_run_worker(name, p, bool(r), progress))
            if progress is not None:
                progress.done()
            task += 1
    results = []
    for name in names:
        merged = dict(samples[name][0])
        for key in TIMINGS:
            values = [s[key] for s in samples[name] if key in s]
            if values:
                merged[key] = statistics.median(values)
        results.append(merged)
    return results, samples


def environment() -> dict[str, Any]:
    import memcache_ext

    versions = {}
    for dist in (*COMPETITORS, "libcachesim", "psutil"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "python": sys.version.split()[0],
        "implementation": memcache_ext.IMPLEMENTATION,
        "memcache_ext": __version__,
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "versions": versions,
    }


# -- the table -------------------------------------------------------------------------------

#: (field, label, format) of the speed table, in order.
COLUMNS = [
    ("get_hit", "get hit", "{:,.1f}"),
    ("get_miss", "get miss", "{:,.1f}"),
    ("set_update", "set update", "{:,.1f}"),
    ("set_evict", "set+evict", "{:,.1f}"),
    ("zipf", "zipf get_or_set", "{:,.1f}"),
    ("bytes_per_entry", "B/entry", "{:,.1f}"),
    ("zipf_hit_ratio", "hit ratio", "{:.4f}"),
    ("x_pylru", "x PyLru", "{:.1f}"),
    ("x_classic", "x classic", "{:.1f}"),
]
#: How the default layout splits the columns when one table would pass the width.
GROUPS = [
    (
        "ns per operation (lower is better)",
        ["get_hit", "get_miss", "set_update", "set_evict", "zipf"],
    ),
    (
        "memory, hit ratio, speed-up on get hit",
        ["bytes_per_entry", "zipf_hit_ratio", "x_pylru", "x_classic"],
    ),
]
WIDTH = 100


def _cells(results: list[dict[str, Any]]) -> list[dict[str, str]]:
    by = {r["name"]: r for r in results}
    rows = []
    for r in results:
        row = {"name": r["name"]}
        for key, _, fmt in COLUMNS:
            value = r.get(key)
            if key in ("x_pylru", "x_classic"):
                base = by.get("PyLruCache" if key == "x_pylru" else "classic OrderedDict+RLock")
                value = base["get_hit"] / r["get_hit"] if base else None
            row[key] = "-" if value is None else fmt.format(value)
        rows.append(row)
    return rows


def _table(rows: list[dict[str, str]], keys: list[str], title: Optional[str]) -> list[str]:
    labels = {key: label for key, label, _ in COLUMNS}
    name_w = max(len("cache"), *(len(r["name"]) for r in rows)) + 2
    widths = {k: max(len(labels[k]), *(len(r[k]) for r in rows)) + 2 for k in keys}
    head = f"{'cache':{name_w}s}" + "".join(f"{labels[k]:>{widths[k]}s}" for k in keys)
    out = [title, ""] if title else []
    out += [head, "-" * len(head)]
    for r in rows:
        out.append(f"{r['name']:{name_w}s}" + "".join(f"{r[k]:>{widths[k]}s}" for k in keys))
    return out


def render(
    results: list[dict[str, Any]],
    env: dict[str, Any],
    repeats: int,
    size: int,
    rounds: int = 1,
    wide: bool = False,
    quick: bool = False,
) -> str:
    """The speed section: a heading, the table(s) (one wide table with ``wide``), the legend."""
    lines = [
        f"Speed and memory: {size:,}-entry caches, int keys; median of {rounds} round(s) "
        f"x {repeats} repeats,",
        "each cache in its own fresh process per round",
        *textwrap.wrap(
            f"Python {env['python']} on {env['cpu']} ({env['cpus']} CPUs); "
            + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
            WIDTH,
        ),
        "",
    ]
    rows = _cells(results)
    every = [key for key, _, _ in COLUMNS]
    one = _table(rows, every, None)
    if wide or max(len(line) for line in one) <= WIDTH:
        lines += one
    else:
        for i, (title, keys) in enumerate(GROUPS):
            lines += ([""] if i else []) + _table(rows, keys, title)
    lines += ["", *legend(quick)]
    return "\n".join(lines)


def legend(quick: bool) -> list[str]:
    """What each column and row name means (printed under the table)."""
    trace, mem = ("100,000", "100,000") if quick else ("1,000,000", "1,000,000")
    items = [
        ("get hit", "ns per get of a present int key (c[k]) in a full 10,000-entry cache"),
        ("get miss", "ns per c.get(k) of an absent key"),
        ("set update", "ns per c[k] = v of a present key"),
        ("set+evict", "ns per insertion of a new key into a full cache: one eviction each"),
        (
            "zipf get_or_set",
            f"ns per request of a Zipf(0.99) trace of {trace} requests over 1,000,000 keys "
            "into 10,000 entries: get_or_set where the cache has it, else get, then set on "
            "a miss",
        ),
        (
            "B/entry",
            f"process memory (RSS) added per entry, {mem} int entries, keys and values not "
            "counted; s3fifo: after as many evictions, so that its ghost is full and counted",
        ),
        ("hit ratio", "hits / requests on that Zipf trace (every exact LRU gets the same)"),
        (
            "x PyLru, x classic",
            "how many times faster than PyLruCache / the classic cache on get hit "
            "(ratio of medians in this run)",
        ),
        ("classic ...", "an OrderedDict behind an RLock: the cache services write by hand"),
        ("dict (unbounded)", "a plain dict: no bound, no lock, never evicts; the floor"),
        ("CLruCache ttl", "with ttl=3600; max_bytes: with a byte bound (entries measured)"),
    ]
    key_w = max(len(k) for k, _ in items) + 2
    out = []
    for key, text in items:
        wrapped = textwrap.wrap(text, WIDTH - key_w) or [""]
        out.append(f"{key:{key_w}s}{wrapped[0]}")
        out += [" " * key_w + more for more in wrapped[1:]]
    return out


# -- the command line ------------------------------------------------------------------------

SECTIONS = ("speed", "hitratio")
#: The --help figures, measured (2026-11, shared 2-core machine, load average 5-8):
#: full runs 605 s, --quick 60 s and 72 s. An idle machine takes less.
TIME_FULL = "about 10 minutes"
TIME_QUICK = "about 1 minute"


def build_parser() -> argparse.ArgumentParser:
    names = ", ".join(f'"{n}"' if " " in n else n for n in CACHES)
    p = argparse.ArgumentParser(
        prog="python -m memcache_ext bench",
        description="Side-by-side tables measured in one run: speed and memory of the caches "
        "(each in its own process), and hit ratios of the policies next to libCacheSim's. "
        f"A full run takes {TIME_FULL} on a loaded 2-core machine; --quick {TIME_QUICK}.",
        epilog="Competitors (cachetools, lru-dict, cachebox) and libCacheSim come with the "
        'bench extra: pip install "memcache-ext[bench]" (in a clone: pip install ".[bench]"). '
        "On a terminal a progress line shows what runs and the time left.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a short run with smaller workloads and one round ({TIME_QUICK})",
    )
    p.add_argument("--json", metavar="FILE", help="also write the raw figures as JSON to FILE")
    p.add_argument(
        "--repeats", type=int, default=None, help="timed samples per process (default 7; --quick 3)"
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="fresh processes per cache, interleaved (default 3; --quick 1)",
    )
    p.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"measure only this cache (repeatable) in the speed table; one of: {names}",
    )
    p.add_argument(
        "--section",
        action="append",
        choices=SECTIONS,
        help="run only this section (repeatable; default: both)",
    )
    p.add_argument(
        "--wide",
        action="store_true",
        help="one wide table (about 160 columns) instead of two that fit 100",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--light", action="store_true", help=argparse.SUPPRESS)
    return p


def _install_hint(dists: Sequence[str]) -> str:
    return (
        f'pip install "memcache-ext[bench]" (in a clone: pip install ".[bench]"), '
        f"or pip install {' '.join(dists)}"
    )


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    p = plan(args.quick, args.repeats, args.rounds)
    if p["repeats"] < 1 or p["rounds"] < 1:
        parser.error("--repeats and --rounds must be >= 1")
    if args.worker:
        if args.worker not in CACHES or missing(args.worker):
            parser.error(f"cannot measure {args.worker!r} here")
        result = worker(
            args.worker,
            SIZE,
            p["repeats"],
            p["trace_len"],
            p["mem_entries"],
            passes=p["passes"],
            light=args.light,
        )
        print(json.dumps(result))
        return 0
    sections = args.section or list(SECTIONS)

    # Everything this run needs is checked before any work starts.
    if args.only:
        unknown = [n for n in args.only if n not in CACHES]
        if unknown:
            valid = ", ".join(f'"{n}"' if " " in n else n for n in CACHES)
            parser.error(f"unknown cache name(s): {', '.join(unknown)}; valid names: {valid}")
        absent = [(n, missing(n)) for n in args.only if missing(n)]
        if absent:
            dists = [n for n, _ in absent if CACHES[n][0] in COMPETITORS]
            why = "; ".join(f"{n}: {w}" for n, w in absent)
            hint = f" ({_install_hint([str(CACHES[n][0]) for n in dists])})" if dists else ""
            parser.error(f"cannot measure {why}{hint}")
        names = list(dict.fromkeys(args.only))
    else:
        names = [n for n in CACHES if missing(n) is None]
    notes = []
    if "speed" in sections and not args.only:
        absent_dists = [
            d for d in COMPETITORS if any(CACHES[n][0] == d and missing(n) for n in CACHES)
        ]
        if absent_dists:
            notes.append(
                f"not installed, left out of the speed table: {', '.join(absent_dists)} "
                f"({_install_hint(absent_dists)})"
            )
        if _core.IMPORT_ERROR is not None:
            notes.append(f"the CLruCache rows are left out: {missing('CLruCache')}")
    if "hitratio" in sections and not hitratio.available():
        notes.append(
            "libCacheSim is not installed: the hit-ratio table has our policies only "
            f"({_install_hint(['libcachesim'])})"
        )

    print(info.summary(), flush=True)
    for note in notes:
        print(f"note: {note}", file=sys.stderr, flush=True)

    tasks: list[Task] = []
    if "speed" in sections:
        tasks += speed_tasks(names, p)
    rows = hitratio.traces(args.quick) if "hitratio" in sections else []
    first_hr = len(tasks)
    tasks += hitratio.tasks(rows)
    env = environment()
    out: dict[str, Any] = {"environment": env, "summary": info.summary()}
    with Progress(tasks, "bench") as progress:
        if "speed" in sections:
            try:
                results, samples = measure(names, p, progress)
            except RuntimeError as exc:
                progress.close()
                print(exc, file=sys.stderr)
                return 1
            with progress.hold():
                print()
                print(
                    render(results, env, p["repeats"], SIZE, p["rounds"], args.wide, args.quick),
                    flush=True,
                )
            out.update(
                repeats=p["repeats"],
                rounds=p["rounds"],
                size=SIZE,
                results=results,
                samples=samples,
            )
        if rows:
            hr = hitratio.run(
                rows,
                on_row=lambda i: progress.start(first_hr + i),
                on_step=progress.step,
                on_done=progress.done,
            )
            with progress.hold():
                print()
                print(hitratio.render(hr), flush=True)
            out["hitratio"] = hr
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0
