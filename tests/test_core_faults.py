"""Allocation failure is a MemoryError, never corruption, in both twins.

Every allocation path (construction, pool growth, table rebuild, shrink,
snapshots, leases, the S3-FIFO ghost, the first byte bound's measure) runs
with the k-th allocation failing (``_testcapi.set_nomemory``), for every k
along the path until the operation completes; afterwards the cache must be
consistent and usable. The error may be another one raised from the
MemoryError, or CPython's own report of it (pickle's PicklingError, a
SystemError on 3.10), never one of the cache's own. Each sweep
runs in a subprocess.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("_testcapi")

SWEEP = """
import _testcapi, pickle

def consistent(c, want_len=None):
    _testcapi.remove_mem_hooks()
    keys = c.keys()
    assert len(c) == len(keys) == len(set(keys)) == len(c.items()), (len(c), len(keys))
    assert c.maxsize is None or len(c) <= c.maxsize
    if c.max_bytes is not None:
        assert c.nbytes == sum(len(str(k)) + len(str(v)) for k, v in c.items()) <= c.max_bytes
        cp = c.copy()  # no measure left under way: the copy has the bound and the sizes
        assert (cp.max_bytes, cp.nbytes) == (c.max_bytes, c.nbytes), (cp.max_bytes, cp.nbytes)
    for k in keys:
        assert k in c and c.peek(k) is not None
    c["after"] = "ok"          # still usable
    assert c["after"] == "ok"
    del c["after"]

# CPython's own ways to report a failed allocation: pickle's "import of module ...
# failed" (3.12, 3.13), and a frame that could not be made (3.10).
OTHER_REPORTS = ("Can't pickle", "returned NULL without setting an exception")

def from_memory_error(exc):
    if isinstance(exc, (pickle.PicklingError, SystemError)):
        return any(text in str(exc) for text in OTHER_REPORTS)
    while exc is not None and not isinstance(exc, MemoryError):
        exc = exc.__cause__ or exc.__context__
    return exc is not None

# op on a fresh cache with the k-th allocation failing, for k = 0, 1, 2, ... (sparser
# as k grows: a long path is quadratic) until op completed 20 times in a row (a failure
# may be swallowed) and k >= least. op may return a new cache, which is checked instead.
def sweep(make, op, least=60):
    k = completed = 0
    while completed < 20 or k < least:
        assert k < 10**6, "the operation never completes"
        c = make()
        _testcapi.set_nomemory(k, k + 1)
        try:
            made = op(c)
        except BaseException as exc:
            _testcapi.remove_mem_hooks()
            if not from_memory_error(exc):
                raise
            completed = 0
        else:
            _testcapi.remove_mem_hooks()
            completed += 1
            if isinstance(made, Cache):
                c = made
        consistent(c)
        k += 1 + k // 500

def filled(n, maxsize=None, **kw):
    def make():
        c = Cache(maxsize, **kw)
        for i in range(n):
            c[f"k{i}"] = f"v{i}"
        return c
    return make

size = lambda o: len(str(o))
"""

CASES = {
    "construction": "sweep(filled(0), lambda c: Cache(10, policy='s3fifo'), 40)",
    "pool and table growth": "sweep(filled(7), "
    "lambda c: c.update({f'n{i}': i for i in range(40)}))",
    "growth with a byte bound": "sweep(filled(7, max_bytes=400, sizeof=size), "
    "lambda c: [c.set(f'n{i}', i) for i in range(60)])",
    "shrink after trim": "sweep(filled(300), lambda c: c.trim(0.99))",
    "shrink after expire and clear": "sweep(filled(300), lambda c: (c.clear(), c.expire()))",
    "snapshots": "sweep(filled(50), lambda c: (c.keys(), c.items(), list(c), list(reversed(c)), "
    "repr(c), c == dict(c.items()), pickle.loads(pickle.dumps(c)), c.copy()))",
    # The factories are made before the sweep: CPython 3.12.1 itself crashes when an
    # allocation fails while a comprehension makes a closure (reproduced with a dict).
    "leases": "factories = [lambda i=i: i for i in range(10)]\n"
    "sweep(filled(5), lambda c: [c.get_or_set(f'g{i}', factories[i]) "
    "for i in range(10)] + [c.fill('x', 1, c.lease('x'))])",
    "s3fifo ghost": "sweep(filled(20, maxsize=20, policy='s3fifo'), "
    "lambda c: [c.set(f'n{i % 60}', i) for i in range(400)])",
    "resize measuring every entry": "import warnings; warnings.simplefilter('ignore'); "
    "sweep(filled(40, sizeof=size), "
    "lambda c: c.resize(max_bytes=10**6), 400)",
    "stats and pop": "sweep(filled(20), lambda c: (c.stats(), c.pop('k3'), c.popitem(), "
    "c.invalidate('k4')))",
    "setdefault and get_or_set": "sweep(filled(30, maxsize=30), "
    "lambda c: [c.setdefault(f'k{i}', i) for i in range(20, 50)] "
    "+ [c.get_or_set(f'k{i}', int) for i in range(0, 60, 3)])",
    "replacing, then evicting": "sweep(filled(20, max_bytes=130, sizeof=size), "
    "lambda c: [c.set(f'k{i % 20}', 'w' * (i % 7) * (1 + i % 8), ttl=None if i % 2 else 50) "
    "for i in range(100)])",
    "on_evict, trim and resize": "log = []\n"
    "sweep(filled(100, maxsize=100, on_evict=lambda k, v, r: log.append(r)), "
    "lambda c: (c.update({f'x{i}': i for i in range(50)}), c.trim(0.5), "
    "c.resize(maxsize=20), log.clear()))",
    "s3fifo with a byte bound": "sweep(filled(50, maxsize=40, max_bytes=600, sizeof=size, "
    "policy='s3fifo'), lambda c: ([c.get(f'k{i}') for i in range(30, 50)], "
    "[c.set(f'z{i}', 'v' * (i % 9)) for i in range(80)], c.popitem(), "
    "c.resize(max_bytes=300)))",
    "setstate and init again": "state = filled(60, max_bytes=10**4, sizeof=size)()\n"
    "state = state.__reduce__()[2]\n"
    "sweep(filled(40, max_bytes=10**4, sizeof=size), lambda c: (c.__setstate__(state), "
    "c.__init__(10, max_bytes=300, sizeof=size)))",
    "resize taking the byte bound away": "sweep(filled(40, max_bytes=400, sizeof=size), "
    "lambda c: c.resize(max_bytes=None))",
    "resize to fewer entries and no byte bound": "sweep(filled(40, maxsize=40, max_bytes=400, "
    "sizeof=size), lambda c: c.resize(10, None))",
    "a first byte bound that evicts": "import warnings; warnings.simplefilter('ignore'); "
    "sweep(filled(40, sizeof=size), lambda c: c.resize(max_bytes=150), 400)",
    "resize with a full S3-FIFO ghost": "def ghosted():\n"
    "    c = filled(100, maxsize=100, policy='s3fifo')()\n"
    "    for i in range(100, 200):\n"
    "        c[f'k{i}'] = i\n"
    "    return c\n"
    "sweep(ghosted, lambda c: c.resize(maxsize=10))",
    # every entry that left had its on_evict, but the one whose own call failed
    "on_evict for what left": "log = []\n"
    "for k in range(400):\n"
    "    log.clear()\n"
    "    c = Cache(20, max_bytes=200, sizeof=size, on_evict=lambda k, v, r: log.append(k))\n"
    "    for i in range(20):\n"
    "        c[f'k{i}'] = f'v{i}'\n"
    "    before = set(c.keys())\n"
    "    _testcapi.set_nomemory(k, k + 1)\n"
    "    try:\n"
    "        c.set('big', 'x' * 120)\n"
    "        c.resize(maxsize=10)\n"
    "        c.trim(0.5)\n"
    "    except BaseException as exc:\n"
    "        _testcapi.remove_mem_hooks()\n"
    "        assert from_memory_error(exc), exc\n"
    "    finally:\n"
    "        _testcapi.remove_mem_hooks()\n"
    "    missing = before - set(c.keys()) - set(log)\n"
    "    assert len(missing) <= 1, (k, missing)\n"
    "    consistent(c)",
    # the clock is put back whatever happens: consistent() reads at time 0
    "expiring in slices": "T = [0.0]\n"
    "def ttl_filled():\n"
    "    c = Cache(None, timer=lambda: T[0])\n"
    "    for i in range(200):\n"
    "        c.set(f'k{i}', i, ttl=1 + i % 3)\n"
    "    return c\n"
    "def expire_at(c, t):\n"
    "    T[0] = t\n"
    "    try:\n"
    "        c.expire(limit=50)\n"
    "        c.expire()\n"
    "    finally:\n"
    "        T[0] = 0.0\n"
    "sweep(ttl_filled, lambda c: expire_at(c, 2.5))",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_allocation_failure_leaves_the_cache_consistent(case: str, isolated: Any) -> None:
    isolated(SWEEP + CASES[case] + "\nprint('ok')\n", timeout=240)
