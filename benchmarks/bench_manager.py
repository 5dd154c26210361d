"""Benchmarks: RSS reads, a manager cleanup, and the cached() hit path.

PYTHONPATH=src python -m pytest benchmarks/bench_manager.py --benchmark-only
PYTHONPATH=src python benchmarks/bench_manager.py        # a small table
"""

from __future__ import annotations

import gc
import sys
import time
import timeit
from collections.abc import Callable
from typing import Any

try:
    import pytest
except ImportError:  # pragma: no cover - standalone use without pytest
    pytest = None  # type: ignore[assignment]  # standalone use without pytest

from memcache_ext import CacheManager, LruCache, PyLruCache, _procmem, cached

N_CACHES, N_ENTRIES = 10, 10_000


def _filled_manager(cls: Any) -> CacheManager:
    m = CacheManager(memory_limit_mb=1024, cache_class=cls, rss=lambda: 0, cache_share=None)
    for c in range(N_CACHES):
        cache = m.create_cache(f"c{c}", maxsize=None)
        for i in range(N_ENTRIES):
            cache[i] = i
    return m


def _cached_pair(cls: Any) -> tuple[Callable[[int], int], Callable[..., Any]]:
    cache = cls(maxsize=1024)

    @cached(cache)
    def f(x: int) -> int:
        return x

    f(5)
    return f, cache.get


IMPLS = [("LruCache", LruCache), ("PyLruCache", PyLruCache)]

if pytest is not None:

    @pytest.mark.benchmark(group="rss")
    def test_rss_statm(benchmark: Any) -> None:
        assert benchmark(_procmem.read_rss_statm) > 0

    @pytest.mark.benchmark(group="rss")
    def test_rss_psutil(benchmark: Any) -> None:
        assert benchmark(_procmem.read_rss_psutil) > 0

    @pytest.mark.parametrize("name,cls", IMPLS)
    @pytest.mark.benchmark(group="cleanup 10x10k")
    def test_cleanup_without_gc(benchmark: Any, name: str, cls: Any) -> None:
        def setup() -> tuple[tuple[CacheManager], dict[str, Any]]:
            return (_filled_manager(cls),), {}

        event = benchmark.pedantic(lambda m: m.cleanup(collect=False), setup=setup, rounds=10)
        assert event.entries_evicted == N_CACHES * N_ENTRIES // 2

    @pytest.mark.parametrize("name,cls", IMPLS)
    @pytest.mark.benchmark(group="cached hit")
    def test_cached_hit(benchmark: Any, name: str, cls: Any) -> None:
        f, _ = _cached_pair(cls)
        assert benchmark(f, 5) == 5

    @pytest.mark.parametrize("name,cls", IMPLS)
    @pytest.mark.benchmark(group="cached hit")
    def test_bare_get(benchmark: Any, name: str, cls: Any) -> None:
        _, get = _cached_pair(cls)
        assert benchmark(get, 5) == 5


def _ns(fn: Callable[[], Any], number: int) -> float:
    best = min(timeit.repeat(fn, number=number, repeat=5))
    return best / number * 1e9


def main() -> None:
    import memcache_ext

    rows: list[tuple[str, str]] = []
    rows.append(
        ("RSS /proc/self/statm (pread)", f"{_ns(_procmem.read_rss_statm, 100_000):,.0f} ns")
    )
    rows.append(
        ("RSS psutil.Process().memory_info()", f"{_ns(_procmem.read_rss_psutil, 5_000):,.0f} ns")
    )
    for name, cls in IMPLS:
        times, gcs = [], []
        for _ in range(5):
            m = _filled_manager(cls)
            t0 = time.perf_counter()
            ev = m.cleanup(collect=False)
            times.append(time.perf_counter() - t0)
            m2 = _filled_manager(cls)
            ev2 = m2.cleanup()
            assert ev is not None and ev2 is not None  # None only from inside a cleanup
            gcs.append(ev2.gc_duration)
        rows.append((f"cleanup 10 caches x 10k, no gc ({name})", f"{min(times) * 1e3:.2f} ms"))
        rows.append((f"  gc.collect() inside a cleanup ({name})", f"{min(gcs) * 1e3:.2f} ms"))
        steps = []
        for _ in range(5):
            ev = _filled_manager(cls).cleanup(collect=1)
            assert ev is not None
            steps.append((ev.longest_step, ev.steps))
        longest, count = min(steps)
        rows.append(
            (
                f"  longest step of it, young gc ({name})",
                f"{longest * 1e3:.2f} ms ({count} steps)",
            )
        )
    for name, cls in IMPLS:
        f, get = _cached_pair(cls)
        hit = _ns(lambda f=f: f(5), 200_000)  # type: ignore[misc]  # a default-argument lambda
        bare = _ns(lambda get=get: get(5), 200_000)  # type: ignore[misc]
        rows.append((f"cached hit ({name})", f"{hit:,.0f} ns"))
        rows.append((f"bare cache.get ({name})", f"{bare:,.0f} ns"))
        rows.append((f"  ratio cached/get ({name})", f"{hit / bare:.2f}x"))
    width = max(len(r[0]) for r in rows)
    print(
        f"Python {sys.version.split()[0]}, {sys.platform}, LruCache = "
        f"{memcache_ext.IMPLEMENTATION}, gc enabled={gc.isenabled()}"
    )
    for label, value in rows:
        print(f"{label:<{width}}  {value:>12}")


if __name__ == "__main__":
    main()
