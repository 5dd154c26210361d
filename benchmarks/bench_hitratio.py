"""The S3-FIFO policy against the reference simulator, and what it costs next to LRU.

Run (from a clone): ``pip install ".[bench]" && python benchmarks/bench_hitratio.py``;
``--json docs/hitratio.json`` writes the file docs/performance.md is built from.

1. Hit ratios: ``LruCache(capacity, policy="lru" | "s3fifo")`` next to libCacheSim's
   LRU, S3-FIFO, W-TinyLFU and Belady on the same request sequences (Zipf 0.8 and
   1.0 at 1%, 5% and 10% of the keys, the Zipf 0.8 trace with a one-time scan of 5x
   the capacity in the middle, a loop over 1.2x the capacity; all seeded). The table
   is the one ``python -m memcache_ext bench`` prints (``memcache_ext.tools.hitratio``).
2. Cost: ``CLruCache`` and ``CLruCache(policy="s3fifo")`` measured side by side in one
   run, each in its own fresh process per round (the bench's workers): get hit,
   set with eviction, bytes per entry (s3fifo after as many evictions as entries, so
   that its ghost is full).
3. The targets of issue 15, each with the measured figure. A missed target is
   reported, not hidden; ``--check`` makes it the exit status.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import Any, Optional

from memcache_ext import _core
from memcache_ext.tools import bench, hitratio, info
from memcache_ext.tools.progress import Progress

COST = ["CLruCache", "CLruCache s3fifo"]


def cost_targets(cost: dict[str, dict[str, Any]]) -> Iterator[tuple[str, str, bool]]:
    lru, s3 = cost["CLruCache"], cost["CLruCache s3fifo"]
    hit = s3["get_hit"] / lru["get_hit"]
    yield (
        "get hit under s3fifo costs no more than under lru",
        f"{s3['get_hit']:.1f} vs {lru['get_hit']:.1f} ns: {hit:.2f}x",
        hit <= 1.0,
    )
    evict = s3["set_evict"] / lru["set_evict"]
    yield (
        "set with eviction at most 1.2x lru's",
        f"{s3['set_evict']:.1f} vs {lru['set_evict']:.1f} ns: {evict:.2f}x",
        evict <= 1.2,
    )
    yield (
        "at most 64 bytes per entry, ghost included",
        f"{s3['bytes_per_entry']:.1f} B (lru: {lru['bytes_per_entry']:.1f} B)",
        s3["bytes_per_entry"] <= 64,
    )


def render_cost(cost: dict[str, dict[str, Any]], p: dict[str, Any]) -> str:
    lines = [
        f"Cost, side by side in one run ({bench.SIZE:,}-entry caches, median of {p['rounds']} "
        f"round(s) x {p['repeats']} repeats)",
        "",
        f"{'':20s}{'get hit ns':>12s}{'set+evict ns':>14s}{'B/entry':>10s}",
    ]
    for name in COST:
        r = cost[name]
        lines.append(
            f"{name:20s}{r['get_hit']:>12.1f}{r['set_evict']:>14.1f}{r['bytes_per_entry']:>10.1f}"
        )
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/bench_hitratio.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--quick", action="store_true", help="smaller traces, one round")
    parser.add_argument("--json", metavar="FILE", help="write the figures (docs/hitratio.json)")
    parser.add_argument("--rounds", type=int, default=None, help="cost rounds (default 3)")
    parser.add_argument("--repeats", type=int, default=None, help="cost repeats (default 7)")
    parser.add_argument("--no-cost", action="store_true", help="hit ratios only")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    if not hitratio.available():
        parser.error("libCacheSim is not installed: pip install libcachesim (or '.[bench]')")
    with_cost = not args.no_cost
    if with_cost and _core.IMPORT_ERROR is not None:
        parser.error(f"the cost needs the compiled core{_core.IMPORT_ERROR}; or use --no-cost")
    p = bench.plan(args.quick, args.repeats, args.rounds)

    print(info.summary(), flush=True)
    rows = hitratio.traces(args.quick)
    tasks = hitratio.tasks(rows) + (bench.speed_tasks(COST, p) if with_cost else [])
    cost: dict[str, dict[str, Any]] = {}
    with Progress(tasks, "bench_hitratio") as progress:
        hr = hitratio.run(rows, on_row=progress.start, on_step=progress.step, on_done=progress.done)
        with progress.hold():
            print()
            print(hitratio.render(hr), flush=True)
        if with_cost:
            results, _ = bench.measure(COST, p, progress, first_task=len(rows))
            cost = {r["name"]: r for r in results}
    if cost:
        print()
        print(render_cost(cost, p))
    targets = list(hitratio.check(hr)) + (list(cost_targets(cost)) if cost else [])
    print("\nTargets (issue 15)\n")
    for target, measured, ok in targets:
        print(f"  {'met   ' if ok else 'MISSED'}  {target}: {measured}")
    if args.json:
        data = {
            "environment": bench.environment(),
            "summary": info.summary(),
            "size": bench.SIZE,
            "rounds": p["rounds"],
            "repeats": p["repeats"],
            "quick": args.quick,
            "results": hr + [cost[name] for name in COST if name in cost],
            "targets": [{"target": t, "measured": m, "met": ok} for t, m, ok in targets],
        }
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
    return 1 if args.check and not all(ok for _, _, ok in targets) else 0


if __name__ == "__main__":
    sys.exit(main())
