"""deep_sizeof against pympler.asizeof and objsize: speed and accuracy.

Shapes:
  (a) a dict of 1,000 str keys to lists of 10 floats;
  (b) a list of 10,000 dicts of 8 fields (ints, strs, floats, a bool);
  (c) a graph of 4,000 plain objects: 2,000 with ``__dict__`` (a name, a value,
      a list of children) and 2,000 with ``__slots__`` (name, value, next).
Ground truth is what tracemalloc sees allocated while each shape is built.

pytest-benchmark suite (not part of the default test run)::

    PYTHONPATH=src python -m pytest benchmarks/bench_sizeof.py --benchmark-only

Side-by-side table (ms per shape, error vs tracemalloc, row-by-row sum for (b))::

    PYTHONPATH=src python benchmarks/bench_sizeof.py
"""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

# ------------------------------------------------------------------ shapes


def build_a() -> dict[str, list[float]]:
    return {f"key-{i:05d}": [float(i * 10 + j) + 0.5 for j in range(10)] for i in range(1000)}


def build_b() -> list[dict[str, Any]]:
    return [
        {
            "id": 100_000 + i,
            "name": f"user {i}",
            "email": f"user{i}@example.com",
            "score": i * 1.25,
            "active": i % 3 == 0,
            "age": 18 + i % 60,
            "city": f"city-{i % 1000}-{i}",
            "balance": float(i) * 3.5 + 0.25,
        }
        for i in range(10_000)
    ]


class Node:
    def __init__(self, name: str, value: float) -> None:
        self.name = name
        self.value = value
        self.children: list[Any] = []


class SlotNode:
    __slots__ = ("name", "value", "next")

    def __init__(self, name: str, value: float, nxt: Any) -> None:
        self.name = name
        self.value = value
        self.next = nxt


def build_c() -> list[Node]:
    nodes = [Node(f"node-{i}", i * 0.5) for i in range(2000)]
    prev = None
    for i, node in enumerate(nodes):
        s = SlotNode(f"slot-{i}", i * 0.25, prev)
        prev = s
        node.children.append(s)
        if i:
            node.children.append(nodes[i - 1])  # a graph, not a tree
    return nodes


SHAPES: dict[str, Callable[[], Any]] = {"a": build_a, "b": build_b, "c": build_c}


def truth(build: Callable[[], Any]) -> tuple[Any, int]:
    """Build a shape under tracemalloc; return it and the bytes it holds."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        obj = build()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return obj, after - before


# ------------------------------------------------------------------- tools


def tools() -> dict[str, Callable[[Any], int]]:
    from memcache_ext import _sizeof_py

    found: dict[str, Callable[[Any], int]] = {}
    try:
        from memcache_ext import _sizeof_c

        found["deep_sizeof (C)"] = _sizeof_c.deep_sizeof
        found["deep_sizeof (C, exact)"] = lambda o: _sizeof_c.deep_sizeof(o, budget=sys.maxsize)
    except ImportError:
        pass
    found["deep_sizeof (pure)"] = _sizeof_py.deep_sizeof
    try:
        from pympler import asizeof

        found["pympler.asizeof"] = asizeof.asizeof
    except ImportError:
        pass
    try:
        import objsize

        found["objsize"] = objsize.get_deep_size
    except ImportError:
        pass
    return found


def best_ms(fn: Callable[[Any], object], obj: Any, budget_s: float = 0.3) -> float:
    fn(obj)
    runs: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(runs) < 3 or (time.perf_counter() < deadline and len(runs) < 200):
        t0 = time.perf_counter()
        fn(obj)
        runs.append(time.perf_counter() - t0)
    return min(runs) * 1e3


# ------------------------------------------------------ pytest-benchmark suite


@pytest.fixture(scope="module", params=sorted(SHAPES))
def shape(request: pytest.FixtureRequest) -> Any:
    return SHAPES[request.param]()


def test_deep_sizeof_c(benchmark: Any, shape: Any) -> None:
    mod = pytest.importorskip("memcache_ext._sizeof_c")
    benchmark(mod.deep_sizeof, shape)


def test_deep_sizeof_c_exact(benchmark: Any, shape: Any) -> None:
    mod = pytest.importorskip("memcache_ext._sizeof_c")
    benchmark(lambda o: mod.deep_sizeof(o, budget=sys.maxsize), shape)


def test_deep_sizeof_pure(benchmark: Any, shape: Any) -> None:
    from memcache_ext import _sizeof_py

    benchmark(_sizeof_py.deep_sizeof, shape)


def test_pympler_asizeof(benchmark: Any, shape: Any) -> None:
    asizeof = pytest.importorskip("pympler.asizeof")
    benchmark(asizeof.asizeof, shape)


def test_objsize(benchmark: Any, shape: Any) -> None:
    objsize = pytest.importorskip("objsize")
    benchmark(objsize.get_deep_size, shape)


SMALL_VALUES: dict[str, Any] = {
    "int": 12345678,
    "str20": "a twenty-char string",
    "dict5": {"a": 1, "b": 2.5, "c": "x", "d": None, "e": [1]},
}


@pytest.mark.parametrize("name", sorted(SMALL_VALUES))
def test_small_value_c(benchmark: Any, name: str) -> None:
    """What a cache with max_bytes pays per insert (plus the Python call)."""
    mod = pytest.importorskip("memcache_ext._sizeof_c")
    benchmark(mod.deep_sizeof, SMALL_VALUES[name])


def test_ten_million_list_c(benchmark: Any) -> None:
    mod = pytest.importorskip("memcache_ext._sizeof_c")
    big = [float(i) for i in range(10_000_000)]
    benchmark(mod.deep_sizeof, big)


# ---------------------------------------------------------------- the table


def main() -> None:
    import platform

    found = tools()
    built = {name: truth(build) for name, build in SHAPES.items()}
    print(
        f"Python {platform.python_version()} on {platform.machine()}; "
        f"best of repeated runs; error vs tracemalloc truth\n"
    )
    header = f"{'tool':<24}" + "".join(f"{'(' + s + ') ms':>10}{'err':>8}" for s in SHAPES)
    header += f"{'(b) rows':>10}{'rows/whole':>12}"
    print(header)
    print("-" * len(header))
    times: dict[str, dict[str, float]] = {}
    for tname, fn in found.items():
        line = f"{tname:<24}"
        times[tname] = {}
        for sname, (obj, real) in built.items():
            ms = best_ms(fn, obj)
            times[tname][sname] = ms
            est = fn(obj)
            line += f"{ms:>10.2f}{(est - real) / real * 100:>+7.1f}%"
        rows, _ = built["b"]
        whole = fn(rows)
        per_row = sum(fn(r) for r in rows) + sys.getsizeof(rows)
        line += f"{per_row:>10}{(per_row - whole) / whole * 100:>+11.1f}%"
        print(line)
    print()
    print(
        "truth (tracemalloc bytes): " + ", ".join(f"({s}) {real}" for s, (_, real) in built.items())
    )
    ref = "deep_sizeof (C)"
    if ref in times:
        for other in ("pympler.asizeof", "objsize"):
            if other in times:
                print(
                    f"{ref} speed-up vs {other}: "
                    + ", ".join(f"({s}) {times[other][s] / times[ref][s]:.0f}x" for s in SHAPES)
                )
    try:
        from memcache_ext import _sizeof_c
    except ImportError:
        return
    big = [float(i) for i in range(10_000_000)]
    t0 = time.perf_counter()
    est = _sizeof_c.deep_sizeof(big)
    cold = (time.perf_counter() - t0) * 1e3
    warm = best_ms(_sizeof_c.deep_sizeof, big)
    exact = sys.getsizeof(big) + len(big) * sys.getsizeof(1.0)
    print(
        f"10M-float list, deep_sizeof (C, default budget): first call {cold:.3f} ms, "
        f"best {warm:.3f} ms, error {(est - exact) / exact * 100:+.2f}%"
    )
    # small values, as a cache with max_bytes measures them on every insert
    reps = 10_000
    small = []
    for name, value in SMALL_VALUES.items():
        batch = [value] * reps
        ns = best_ms(lambda vs: [_sizeof_c.deep_sizeof(v) for v in vs], batch) / reps * 1e6
        small.append(f"{name} {ns:.0f} ns")
    rows = built["b"][0]
    ns = best_ms(lambda rs: [_sizeof_c.deep_sizeof(r) for r in rs], rows) / len(rows) * 1e6
    small.append(f"(b) row {ns:.0f} ns")
    print("small values, deep_sizeof (C) per call incl. the Python call: " + ", ".join(small))


if __name__ == "__main__":
    main()
