"""How long a cleanup holds the event loop: one blocking pass vs the service's steps.

    PYTHONPATH=src python benchmarks/bench_stall.py            # both, side by side (~30 s)
    PYTHONPATH=src python benchmarks/bench_stall.py --seconds 20

In one event loop, three byte-bounded caches hold the demo's kinds of values
(about 60 MiB accounted), a "traffic" task keeps refilling them between awaits
(so every cleanup has work), and RSS is reported above the high-water mark so
that every pass cleans up. Every 0.5 s a cleanup runs:

* ``blocking``: ``manager.cleanup_if_needed()`` called on the loop (what the
  cleanup service did before: one call, trimming every cache, a full
  ``gc.collect()`` and ``malloc_trim``, nothing else running meanwhile);
* ``steps``: ``MemoryCleanupService.run_once_async()`` (the service today:
  bounded steps, the loop free between them, young-generation collection).

A ``LoopStallMonitor`` with callback timing measures both: the longest time
one callback held the loop (CPU of the loop's thread), the longest timer
lateness, and the service's own longest step. Each run is in a fresh
interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from typing import Any

MB = 2**20


def _value(kind: str, i: int) -> object:
    if kind == "profiles":
        return {"id": i, "name": f"User {i}", "email": f"user{i}@example.org", "year": 1980}
    if kind == "readings":
        return tuple((h, 60.0 + (i + h) % 40 / 2, (i * h) % 1500) for h in range(336))
    return {"user_id": i, "daily": [{"day": d, "steps": d * i} for d in range(14)]}


async def scenario(mode: str, seconds: float) -> dict[str, Any]:
    from memcache_ext import CacheManager
    from memcache_ext.cleanup import LoopStallMonitor, MemoryCleanupService

    manager = CacheManager(
        memory_limit_mb=1000, rss=lambda: 900 * MB, min_interval=0, cache_share=None
    )
    sizes = {"profiles": 10 * MB, "readings": 40 * MB, "summaries": 10 * MB}
    caches = {k: manager.create_cache(k, maxsize=None, max_bytes=v) for k, v in sizes.items()}
    for kind, cache in caches.items():
        i = 0
        while cache.nbytes < sizes[kind] * 0.95:
            cache[i] = _value(kind, i)
            i += 1
    service = MemoryCleanupService(manager, interval=3600)
    monitor = LoopStallMonitor(interval=0.002, callbacks=True)
    stop = asyncio.Event()
    inserted = 0

    async def traffic() -> None:
        nonlocal inserted
        i = 10**7
        while not stop.is_set():
            for kind, cache in caches.items():
                cache[i] = _value(kind, i)
            i += 1
            inserted += 1
            await asyncio.sleep(0)

    cleanups = 0
    longest_blocking = 0.0
    async with monitor:
        task = asyncio.ensure_future(traffic())
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.sleep(0.5)
            if mode == "blocking":
                c0 = time.thread_time()
                event = manager.cleanup_if_needed()
                longest_blocking = max(longest_blocking, time.thread_time() - c0)
            else:
                event = (await service.run_once_async())["cleanup"]
            cleanups += event is not None
        stop.set()
        await task
    st = monitor.stats()
    return {
        "mode": mode,
        "cleanups": cleanups,
        "inserted": inserted,
        "cleanup_longest_step_ms": (
            longest_blocking if mode == "blocking" else service.longest_step
        )
        * 1e3,
        "longest_hold_ms": (st["longest_callback"] or 0) * 1e3,
        "longest_hold_without_gc_ms": (st["longest_callback_without_gc"] or 0) * 1e3,
        "longest_gc_ms": (st["longest_gc_on_loop"] or 0) * 1e3,
        "longest_lateness_ms": st["longest_stall"] * 1e3,
        "lateness_over_10ms": st["over_10ms"],
        "noise_ms": (st["noise"] or 0) * 1e3,
        "accounted_mb": manager.total_nbytes() / MB,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--worker", choices=["blocking", "steps"])
    args = p.parse_args()
    if args.worker:
        print(json.dumps(asyncio.run(scenario(args.worker, args.seconds))))
        return
    rows = []
    for mode in ("blocking", "steps"):
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", mode, "--seconds", str(args.seconds)],
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    labels = [
        ("cleanups", "cleanups", "{:d}"),
        ("inserted", "traffic inserts", "{:,d}"),
        ("cleanup_longest_step_ms", "cleanup: longest step (ms CPU)", "{:.1f}"),
        ("longest_hold_ms", "longest hold of the loop (ms CPU)", "{:.1f}"),
        ("longest_hold_without_gc_ms", "  without the collections it ran", "{:.1f}"),
        ("longest_gc_ms", "longest collection on the loop (ms)", "{:.1f}"),
        ("longest_lateness_ms", "longest timer lateness (ms)", "{:.1f}"),
        ("lateness_over_10ms", "timer checks 10 ms late or more", "{:d}"),
        ("noise_ms", "noise floor (monitor's own step, ms)", "{:.1f}"),
    ]
    print(f"Python {sys.version.split()[0]}; {args.seconds:g} s each, a cleanup every 0.5 s")
    print(f"{'':40s}{'blocking':>12s}{'steps':>12s}")
    for key, label, fmt in labels:
        print(f"{label:40s}" + "".join(f"{fmt.format(r[key]):>12s}" for r in rows))


if __name__ == "__main__":
    main()
