"""Many threads, garbage collection and leaks (risky parts in subprocesses)."""

from __future__ import annotations

import pytest

from conftest import SANITIZED
from support import linux_only


def test_threads_with_python_eq_keep_exact_counters(isolated):
    proc = isolated(
        """
sys.setswitchinterval(1e-6)
c = Cache(64)
class K:
    __slots__ = ("v",)
    def __init__(self, v): self.v = v
    def __hash__(self): return self.v % 16          # collisions: __eq__ runs a lot
    def __eq__(self, other):
        x = sum(range(3))                           # Python code inside the lookup
        return isinstance(other, K) and other.v == self.v
N_THREADS, N_OPS = 8, 3000
lookups = [0] * N_THREADS
barrier = threading.Barrier(N_THREADS)
def work(t):
    import random
    rnd = random.Random(t)
    barrier.wait()
    for i in range(N_OPS):
        k = K(rnd.randrange(128))
        op = rnd.random()
        if op < 0.5:
            c.get(k); lookups[t] += 1
        elif op < 0.8:
            c[k] = i
        elif op < 0.85:
            c.get_or_set(k, lambda: i); lookups[t] += 1
        elif op < 0.9:
            c.pop(k, None)
        elif op < 0.93:
            c.setdefault(k, i); lookups[t] += 1
        elif op < 0.95:
            list(c); c.items()
        elif op < 0.97:
            c.trim(0.1)
        else:
            k in c; c.peek(k)
threads = [threading.Thread(target=work, args=(t,)) for t in range(N_THREADS)]
for t in threads: t.start()
for t in threads: t.join()
s = c.stats()
assert s["hits"] + s["misses"] == sum(lookups), (s, sum(lookups))
keys = c.keys()
assert len(keys) == len(c) <= 64 and len({k.v for k in keys}) == len(keys)
print(s["hits"], s["misses"])
""",
        timeout=120,
    )
    hits, misses = map(int, proc.stdout.split())
    assert hits > 0 and misses > 0


def test_concurrent_writers_and_clear_keep_bounds(isolated):
    isolated(
        """
sys.setswitchinterval(1e-6)
c = Cache(100, ttl=0.01, max_bytes=5000, sizeof=lambda o: 10)
stop = threading.Event()
def writer(base):
    i = 0
    while not stop.is_set():
        c[base + i % 500] = i; i += 1
        assert len(c) <= 100 + 8 and c.nbytes <= 5000
def clearer():
    while not stop.is_set():
        c.clear(); c.expire(); c.resize(maxsize=50); c.resize(maxsize=100)
ts = [threading.Thread(target=writer, args=(b * 1000,)) for b in range(4)]
ts.append(threading.Thread(target=clearer))
for t in ts: t.start()
import time; time.sleep(1.5); stop.set()
for t in ts: t.join()
assert len(c) <= 100 and c.nbytes == 20 * len(c)
""",
        timeout=120,
    )


def test_value_referring_to_its_cache_is_collected(cache_cls):
    import gc
    import weakref

    class Value:
        cache: object

    c = cache_cls(10)
    v = Value()
    v.cache = c
    c["self"] = v
    c["key_cycle"] = c
    refs = weakref.ref(c), weakref.ref(v)
    del c, v
    gc.collect()
    assert refs[0]() is None and refs[1]() is None


def test_gc_sees_keys_and_values(cache_cls):
    import gc

    c = cache_cls(10)
    key, value = ("k",), ["v"]
    c[key] = value
    seen, frontier = {id(c)}, [c]
    for _ in range(4):  # CLruCache: direct referents; PyLruCache: through its dict
        frontier = [r for o in frontier for r in gc.get_referents(o) if id(r) not in seen]
        seen.update(id(r) for r in frontier)
    assert id(value) in seen and id(key) in seen


@linux_only  # reads /proc/self/statm
@pytest.mark.skipif(SANITIZED, reason="the sanitizer's quarantine keeps freed memory")
def test_million_inserts_leave_memory_flat(isolated):
    proc = isolated(
        """
import os
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
c = Cache(1000, max_bytes=10**6)
def churn(n, start):
    for i in range(start, start + n):
        c[i] = ("value", i)          # a new tuple per entry, released on eviction
        c.get(i - 3); c.get_or_set(-i, lambda: i); c.pop(i - 5, None)
churn(1000, 0)
gc.collect()
base = rss()
churn(1_000_000, 10**7)
gc.collect()
grown = rss() - base
print(grown)
assert grown < 2 * 1024 * 1024, grown   # no per-insert leak (16+ bytes each would be 16 MB)
""",
        timeout=240,
    )
    assert int(proc.stdout) < 2 * 1024 * 1024


@pytest.mark.parametrize("impl_name", ["memcache_ext._core_c", "memcache_ext._core_py"])
def test_no_refcount_leak_on_every_path(impl_name):
    import gc
    import importlib
    import sys

    try:
        module = importlib.import_module(impl_name)
    except ImportError:
        pytest.skip("compiled core not built")
    cache_cls = getattr(module, "CLruCache", None) or module.PyLruCache
    key, value = object(), object()
    before = sys.getrefcount(key), sys.getrefcount(value)
    c = cache_cls(2, ttl=100, max_bytes=10**6, on_evict=lambda k, v, r: None)
    for _ in range(100):
        c[key] = value
        _ = c[key], c.get(key), c.peek(key), key in c, c.items(), c.keys()
        c.values()
        c.setdefault(key, value)
        c.get_or_set(key, lambda: value)
        c.set(key, value, ttl=5)
        c.pop(key)
        c[key] = value
        c.popitem()
        c[key] = value
        c[1] = 1
        c[2] = 2
        c[key] = value
        c.trim(1.0)
        c.copy()
        c[key] = value
        c.clear()
        c.set(key, value)
        repr(c)
        c.resize(maxsize=1)
        c.resize(maxsize=2)
        _ = c == {key: value}, c.__reduce__()
    del c, _
    gc.collect()
    assert (sys.getrefcount(key), sys.getrefcount(value)) == before
