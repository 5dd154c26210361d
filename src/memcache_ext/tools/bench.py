"""``python -m memcache_ext bench``: one side-by-side table, measured in one run.

Each cache runs in its own fresh interpreter (``--worker``), so one library's
garbage, allocator state or imports never slow another's figures. Every
figure is the median of several repeats; ratios are taken between medians
measured in this same run.
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
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Optional

from .. import _core
from .._core_py import PyLruCache
from .._version import __version__


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


def _factories() -> dict[str, Callable[[int], Any]]:
    out: dict[str, Callable[[int], Any]] = {}
    if _core.IMPORT_ERROR is None:
        compiled = _core.CLruCache
        out["CLruCache"] = compiled
        out["CLruCache ttl"] = lambda n: compiled(n, ttl=3600)
        out["CLruCache max_bytes"] = lambda n: compiled(n, max_bytes=1 << 40)
    out["PyLruCache"] = PyLruCache
    out["classic OrderedDict+RLock"] = ClassicLruCache
    out["dict (unbounded)"] = lambda n: {}  # no bound, no lock: the floor
    try:
        import cachetools

        out["cachetools.LRUCache"] = cachetools.LRUCache
    except ImportError:
        pass
    try:
        import lru

        out["lru-dict"] = lru.LRU
    except ImportError:
        pass
    try:
        import cachebox

        out["cachebox.LRUCache"] = cachebox.LRUCache
    except ImportError:
        pass
    return out


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

        ints = list(range(10**9, 10**9 + mem_entries))  # key and value objects, not counted
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

    result["get_hit"] = _timed(get_hit, ops, repeats)
    result["get_miss"] = _timed(get_miss, ops, repeats)
    result["set_update"] = _timed(set_update, ops, repeats)
    if not is_dict:
        result["set_evict"] = _timed(set_evict, ops, repeats)
    trace = _zipf_trace(100 * size, trace_len)
    hits = [0]
    cache = make(size)
    get_or_set = getattr(cache, "get_or_set", None)

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

    if not is_dict and trace_len:
        result["zipf"] = _timed(zipf, trace_len, max(1, repeats // 2))
        result["zipf_hit_ratio"] = hits[0] / trace_len
    return result


def environment() -> dict[str, Any]:
    import memcache_ext

    versions = {}
    for mod in ("cachetools", "lru", "cachebox", "psutil"):
        try:
            from importlib.metadata import version

            dist = {"lru": "lru-dict"}.get(mod, mod)
            versions[dist] = version(dist)
        except Exception:  # noqa: BLE001, S110 - not installed: not listed
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


COLUMNS = [
    ("get_hit", "get hit"),
    ("get_miss", "get miss"),
    ("set_update", "set update"),
    ("set_evict", "set+evict"),
    ("zipf", "zipf get_or_set"),
    ("bytes_per_entry", "B/entry"),
]


def render(
    results: list[dict[str, Any]], env: dict[str, Any], repeats: int, size: int, rounds: int = 1
) -> str:
    lines = [
        f"memcache_ext bench: {size:,}-entry caches, int keys; ns per operation, "
        f"median of {rounds} round(s) x {repeats} repeats, each cache in its own "
        f"fresh process per round",
        f"Python {env['python']} on {env['cpu']} ({env['cpus']} CPUs), "
        f"active implementation: {env['implementation']}; "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
        "",
    ]
    head = (
        f"{'cache':28s}"
        + "".join(f"{label:>17s}" for _, label in COLUMNS)
        + f"{'hit ratio':>10s}{'x PyLru':>9s}{'x classic':>10s}"
    )
    lines += [head, "-" * len(head)]
    by = {r["name"]: r for r in results}
    for r in results:
        row = f"{r['name']:28s}"
        for key, _ in COLUMNS:
            v = r.get(key)
            row += f"{'-' if v is None else f'{v:,.1f}':>17s}"
        hr = r.get("zipf_hit_ratio")
        row += f"{'-' if hr is None else f'{hr:.4f}':>10s}"
        for base in ("PyLruCache", "classic OrderedDict+RLock"):
            b = by.get(base)
            row += f"{(b['get_hit'] / r['get_hit']):>9.1f}" if b else f"{'-':>9s}"
        lines.append(row)
    lines += [
        "",
        "x PyLru / x classic: how many times faster than that cache on get hit "
        "(ratio of medians in this run).",
    ]
    return "\n".join(lines)


TIMINGS = ("get_hit", "get_miss", "set_update", "set_evict")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m memcache_ext bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short run (under 20 s)")
    parser.add_argument("--json", metavar="FILE", help="also write the raw figures as JSON")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed samples per process (default 7; --quick 3)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="fresh processes per cache, interleaved (default 3; --quick 1)",
    )
    parser.add_argument("--only", action="append", help="run only these caches (repeatable)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--light", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    repeats = args.repeats or (3 if quick else 7)
    rounds = args.rounds or (1 if quick else 3)
    if repeats < 1 or rounds < 1:
        parser.error("--repeats and --rounds must be >= 1")
    size = 10_000
    trace_len = 100_000 if quick else 1_000_000
    mem_entries = 100_000 if quick else 1_000_000
    if args.worker:
        print(
            json.dumps(
                worker(
                    args.worker,
                    size,
                    repeats,
                    trace_len,
                    mem_entries,
                    passes=3 if quick else 10,
                    light=args.light,
                )
            )
        )
        return 0
    names = args.only or list(_factories())
    unknown = set(names) - set(_factories())
    if unknown:
        parser.error(f"unknown cache(s): {', '.join(sorted(unknown))}")
    # Rounds interleave the caches, so that a slow spell of a shared machine
    # hits all of them, and each timing is the median over every round's
    # samples. Memory and the Zipf trace are measured in the first round.
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names:
            cmd = (
                [
                    sys.executable,
                    "-m",
                    "memcache_ext",
                    "bench",
                    "--worker",
                    name,
                    "--repeats",
                    str(repeats),
                ]
                + (["--quick"] if quick else [])
                + (["--light"] if r else [])
            )
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                print(f"{name}: failed\n{proc.stderr}", file=sys.stderr)
                return 1
            samples[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"  round {r + 1}/{rounds} measured", file=sys.stderr)
    results = []
    for name in names:
        merged = dict(samples[name][0])
        for key in TIMINGS:
            values = [s[key] for s in samples[name] if key in s]
            if values:
                merged[key] = statistics.median(values)
        results.append(merged)
    env = environment()
    print(render(results, env, repeats, size, rounds))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "environment": env,
                    "repeats": repeats,
                    "rounds": rounds,
                    "size": size,
                    "results": results,
                    "samples": samples,
                },
                f,
                indent=2,
            )
    return 0
