"""How long the cleanup service's expiry holds the event loop: sliced steps vs one expire().

    PYTHONPATH=src python benchmarks/bench_expiry_steps.py             # 200,000 entries, C
    PYTHONPATH=src python benchmarks/bench_expiry_steps.py 50000 --pure

One cache holds N entries of a small dict each, all expired at once (a burst
written together). In one event loop, a ticker task measures the gaps between
two turns of the loop while ``MemoryCleanupService.run_once_async()`` runs,
then ``cache.expire()`` is timed on a copy of the same cache: what one pass
held the loop for before expiry ran in slices. Medians of five runs, each in
this process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any


class Clock:
    """The caches' TTL clock, moved past every entry's expiry by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _fill(manager: Any, name: str, n: int, clock: Clock) -> Any:
    cache = manager.create_cache(name, maxsize=None, ttl=300, timer=clock)
    for i in range(n):
        cache[f"user:{i}"] = {"id": i, "name": "x" * 20, "tags": [i, i + 1]}
    return cache


async def _one(n: int) -> tuple[float, float, float]:
    from memcache_ext import CacheManager
    from memcache_ext.cleanup import MemoryCleanupService

    clock = Clock()
    manager = CacheManager(memory_limit_mb=4096, cache_share=None)
    sliced = _fill(manager, "sliced", n, clock)
    clock.now = 1000.0
    service = MemoryCleanupService(manager, interval=3600)
    gaps: list[float] = []
    done = False

    async def ticker() -> None:
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    result = await service.run_once_async()
    done = True
    await task
    assert result["expired"] == n and len(sliced) == 0, result
    manager.remove_cache("sliced")
    clock.now = 0.0
    whole = _fill(manager, "whole", n, clock)
    clock.now = 1000.0
    t0 = time.perf_counter()
    whole.expire()
    return max(gaps), service.stats()["longest_step"], time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("entries", type=int, nargs="?", default=200_000)
    parser.add_argument("--pure", action="store_true", help="PyLruCache (the pure twin)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if args.pure:
        os.environ["MEMCACHE_EXT_PURE_PYTHON"] = "1"
    runs = [asyncio.run(_one(args.entries)) for _ in range(args.runs)]
    gap, step, whole = (statistics.median(r[i] for r in runs) for i in range(3))
    core = "PyLruCache" if args.pure else "CLruCache"
    print(f"{args.entries:,} expired entries in one {core}, median of {args.runs} runs:")
    print(f"  sliced pass: longest loop gap {gap * 1e3:.1f} ms, longest step {step * 1e3:.1f} ms")
    print(f"  one expire(): {whole * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
