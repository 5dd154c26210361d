"""pytest-benchmark suites for the cache core, side by side with the baselines.

Run: ``pip install ".[bench]" && python -m pytest benchmarks/bench_core.py --benchmark-only``
(group by operation: ``--benchmark-group-by=group``). Not part of the default
test run. ``python -m memcache_ext bench`` prints the same comparison as one
table, each cache in its own process.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from memcache_ext.tools.bench import ClassicLruCache, _factories

N = 10_000
FACTORIES: dict[str, Callable[[int], Any]] = _factories()
NAMES = [n for n in FACTORIES if n != "dict (unbounded)"]


def full_cache(name: str) -> Any:
    cache = FACTORIES[name](N)
    for k in range(N):
        cache[k] = k
    return cache


@pytest.mark.benchmark(group="get hit")
@pytest.mark.parametrize("name", list(FACTORIES))
def test_get_hit(benchmark: Any, name: str) -> None:
    cache = full_cache(name)
    keys = list(range(N))

    def run() -> None:
        for k in keys:
            cache[k]

    benchmark(run)


@pytest.mark.benchmark(group="get miss")
@pytest.mark.parametrize("name", NAMES)
def test_get_miss(benchmark: Any, name: str) -> None:
    cache = full_cache(name)
    keys = list(range(N, 2 * N))
    get = cache.get

    def run() -> None:
        for k in keys:
            get(k)

    benchmark(run)


@pytest.mark.benchmark(group="set with eviction")
@pytest.mark.parametrize("name", NAMES)
def test_set_evict(benchmark: Any, name: str) -> None:
    cache = full_cache(name)
    fresh = itertools.count(10**12)

    def run() -> None:
        for k in itertools.islice(fresh, N):
            cache[k] = 0

    benchmark(run)


@pytest.mark.benchmark(group="set small values with max_bytes")
@pytest.mark.parametrize(
    "value",
    [12345678, "a twenty-char string", {"a": 1, "b": 2.5, "c": "x", "d": None, "e": [1]}],
    ids=["int", "str20", "dict5"],
)
@pytest.mark.parametrize("bounded", [False, True], ids=["plain", "max_bytes"])
def test_set_max_bytes(benchmark: Any, value: Any, bounded: bool) -> None:
    from memcache_ext._core_c import CLruCache

    cache: CLruCache[str, Any] = CLruCache(N, max_bytes=1 << 40 if bounded else None)
    keys = [f"key:{i}" for i in range(N)]

    def run() -> None:
        for k in keys:
            cache[k] = value

    benchmark(run)


def test_classic_baseline_is_a_working_lru() -> None:
    c = ClassicLruCache(2)
    c[1] = 1
    c[2] = 2
    c[1]
    c[3] = 3
    assert list(c.data) == [1, 3]
