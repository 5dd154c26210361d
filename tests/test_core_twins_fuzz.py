"""The twins agree on random operation sequences: CLruCache and PyLruCache get
the same calls (sets with and without TTL, lookups, fills, leases filled after
a write or a removal, removals, trim, resize in both directions, expire, clear,
pickling, time passing) under both policies
and every kind of bound, and must give the same answers and end in the same
state. Seeded, so that a failure names the sequence that reproduces it. Runs
in a child process: a hang or a crash in the compiled core fails the test."""

from __future__ import annotations

import os
import pickle
import random
from typing import Any

import pytest

from conftest import CLruCache, run_isolated
from memcache_ext._core_py import PyLruCache

HERE = os.path.dirname(os.path.abspath(__file__))


def size_of(o: Any) -> int:
    return 1 + o % 7 if isinstance(o, int) else 8


class Clock:
    """A test clock both twins read (picklable, unlike a closure)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def attempt(f: Any, *args: Any) -> tuple[Any, ...]:
    try:
        return ("ok", f(*args))
    except Exception as exc:  # noqa: BLE001 - the twins must raise alike
        return ("raised", type(exc).__name__, str(exc))


def run_sequence(seed: int, nops: int) -> None:
    """One seeded sequence against both twins; AssertionError at the first difference."""
    rnd = random.Random(seed)
    policy = rnd.choice(["s3fifo", "s3fifo", "lru"])
    bound = rnd.choice(["entries", "bytes", "both"])
    maxsize = None if bound == "bytes" else rnd.choice([1, 2, 3, 5, 8, 13, 40, 150])
    kw: dict[str, Any] = {"policy": policy}
    if bound != "entries":
        kw.update(max_bytes=rnd.choice([2, 5, 30, 300, 3000]), sizeof=size_of)
    clocks = Clock(), Clock()
    a: CLruCache[int, int] = CLruCache(maxsize, timer=clocks[0], **kw)
    b: PyLruCache[int, int] = PyLruCache(maxsize, timer=clocks[1], **kw)
    nkeys = rnd.choice([10, 50, 500, 3000])
    where = f"seed {seed} ({policy}, {bound}, maxsize {maxsize}, max_bytes {kw.get('max_bytes')})"
    for i in range(nops):
        op = rnd.random()
        k = int(rnd.paretovariate(1.0)) % nkeys if rnd.random() < 0.8 else rnd.randrange(nkeys)
        ttl = rnd.choice([None, None, None, 0.5, 3.0])
        if op < 0.35:
            r: list[Any] = [c.set(k, k, ttl=ttl) for c in (a, b)]
        elif op < 0.60:
            r = [c.get(k) for c in (a, b)]
        elif op < 0.70:
            r = [c.get_or_set(k, lambda k=k: k, ttl=ttl) for c in (a, b)]  # type: ignore[misc]
        elif op < 0.74:
            r = [c.setdefault(k, k) for c in (a, b)]
        elif op < 0.78:
            r = [c.pop(k, None) for c in (a, b)]
        elif op < 0.80:
            r = [c.peek(k) for c in (a, b)]
        elif op < 0.82:
            r = [attempt(c.popitem) for c in (a, b)]
        elif op < 0.84:
            fraction = rnd.choice([0.1, 0.5, 0.9])
            r = [c.trim(fraction) for c in (a, b)]
        elif op < 0.86:
            if bound == "bytes":
                nb = rnd.choice([0, 2, 5, 30, 300, 3000, 30000])
                r = [c.resize(max_bytes=nb) for c in (a, b)]  # type: ignore[func-returns-value]
            else:
                ms = rnd.choice([0, 1, 2, 3, 5, 8, 13, 40, 150, 1000])
                r = [c.resize(ms) for c in (a, b)]  # type: ignore[func-returns-value]
        elif op < 0.865:
            r = [c.clear() for c in (a, b)]  # type: ignore[func-returns-value]  # None == None
        elif op < 0.87:
            r = [pickle.loads(pickle.dumps(c)).items() == c.items() for c in (a, b)]
        elif op < 0.89:
            leases = [c.lease(k) for c in (a, b)]
            meanwhile = rnd.random()  # a write or a removal between lease and fill
            for c in (a, b):
                if meanwhile < 0.3:
                    c.set(k, -k)
                elif meanwhile < 0.5:
                    c.pop(k, None)
            r = [attempt(c.fill, k, k + 1, lease) for c, lease in zip((a, b), leases, strict=True)]
        elif op < 0.90:
            r = [c.expire() for c in (a, b)]
        elif op < 0.95:
            dt = rnd.choice([0.1, 0.4, 1.0, 2.5])
            for clock in clocks:
                clock.now += dt
            r = [None, None]
        else:
            r = [k in c for c in (a, b)]
        assert r[0] == r[1], f"{where}, operation {i}: {r}"
        if i % 50 == 0:
            assert a.items() == b.items() and a.stats() == b.stats(), f"{where}, operation {i}"
    assert a.items() == b.items() and a.stats() == b.stats(), where


@pytest.mark.parametrize("first", range(0, 400, 100))
def test_twins_agree_on_random_operations(first: int) -> None:
    if CLruCache is None:
        pytest.skip("no compiled core")
    run_isolated(
        f"""
        sys.path.insert(0, {HERE!r})
        from test_core_twins_fuzz import run_sequence
        for seed in range({first}, {first + 100}):
            run_sequence(seed, 2000)
        print("ok")
        """,
        "c",
        timeout=120,
    )
