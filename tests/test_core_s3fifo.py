"""The S3-FIFO policy: the twins agree hit for hit, the contract's recency rules
have their S3-FIFO form, and the ghost holds no references."""

from __future__ import annotations

import gc
import pickle
import sys
import weakref
from typing import Any

import pytest

from conftest import CLruCache, FakeTimer
from memcache_ext._core_py import PyLruCache
from memcache_ext.tools.hitratio import zipf_trace


def hit_sequence(cache: Any, trace: list[Any]) -> list[bool]:
    hits = []
    for k in trace:
        before = cache.stats()["hits"]
        cache.get_or_set(k, lambda k=k: k)
        hits.append(cache.stats()["hits"] > before)
    return hits


@pytest.mark.parametrize("policy", ["lru", "s3fifo"])
@pytest.mark.parametrize("bound", ["entries", "bytes", "both"])
def test_twins_give_the_same_hits(policy: str, bound: str) -> None:
    if CLruCache is None:
        pytest.skip("no compiled core")
    trace = zipf_trace(2000, 20000, 0.9, 3)
    kw: dict[str, Any] = {"policy": policy}
    if bound != "entries":
        kw.update(max_bytes=3000, sizeof=lambda o: 1 + o % 13 if isinstance(o, int) else 8)
    maxsize = None if bound == "bytes" else 150
    a: CLruCache[int, int]
    b: PyLruCache[int, int]
    a, b = CLruCache(maxsize, **kw), PyLruCache(maxsize, **kw)
    assert hit_sequence(a, trace) == hit_sequence(b, trace)
    assert a.items() == b.items() and a.stats() == b.stats()


def test_twins_agree_when_fingerprints_collide() -> None:
    """The ghost keeps hash bits, not keys: keys 2**29 apart share them. With 300
    fingerprints for 2,000 keys and room for 90 in the ghost, adds meet a fingerprint
    already there, often with the ghost full (it drops its oldest first): both twins
    alike (one dropping first and the other not failed this test)."""
    if CLruCache is None:
        pytest.skip("no compiled core")
    trace = [k % 300 + (k // 300 << 29) for k in zipf_trace(2000, 20000, 0.9, 5)]
    a: CLruCache[int, int]
    b: PyLruCache[int, int]
    a, b = CLruCache(100, policy="s3fifo"), PyLruCache(100, policy="s3fifo")
    assert hit_sequence(a, trace) == hit_sequence(b, trace)
    assert a.items() == b.items() and a.stats() == b.stats()


@pytest.mark.parametrize("bound", ["entries", "bytes", "both"])
def test_twins_agree_with_ttls_on_some_entries(bound: str) -> None:
    """One key in five has a TTL and expires while the trace goes on: eviction
    meets expired and TTL'd candidates in both queues, which the compiled core
    decides outside its inline common case. Both twins alike, hit for hit."""
    if CLruCache is None:
        pytest.skip("no compiled core")
    trace = zipf_trace(2000, 20000, 0.9, 7)
    kw: dict[str, Any] = {"policy": "s3fifo"}
    if bound != "entries":
        kw.update(max_bytes=3000, sizeof=lambda o: 1 + o % 13 if isinstance(o, int) else 8)
    maxsize = None if bound == "bytes" else 150
    clocks = FakeTimer(), FakeTimer()
    pairs = zip((CLruCache, PyLruCache), clocks, strict=True)
    caches: list[PyLruCache[int, int]] = [cls(maxsize, timer=clock, **kw) for cls, clock in pairs]
    runs: list[list[bool]] = [[], []]
    for k in trace:
        for cache, clock, hits in zip(caches, clocks, runs, strict=True):
            clock.now += 0.01
            if cache.get(k) is None:
                hits.append(False)
                cache.set(k, k, ttl=2.0 if k % 5 == 0 else None)
            else:
                hits.append(True)
    assert runs[0] == runs[1]
    a, b = caches
    assert a.items() == b.items() and a.stats() == b.stats()
    assert a.stats()["expirations"] > 0


@pytest.mark.parametrize("capacity", [250, 963])
def test_libcachesim_agrees(capacity: int) -> None:
    """LRU and S3-FIFO match the reference simulator hit for hit (when installed:
    benchmarks/bench_hitratio.py runs the full table), with capacities that are
    not a multiple of 10 too (the ghost holds floor(0.9 x capacity))."""
    lcs = pytest.importorskip("libcachesim")
    trace = zipf_trace(20000, 100000, 0.8, 11)
    for policy, ref in (("lru", lcs.LRU), ("s3fifo", lcs.S3FIFO)):
        ours: PyLruCache[int, int] = PyLruCache(capacity, policy=policy)
        theirs = ref(cache_size=capacity)
        want = [bool(theirs.get(lcs.Request(obj_size=1, obj_id=k + 1))) for k in trace]
        assert hit_sequence(ours, trace) == want, policy


def test_a_hit_moves_nothing(cache_cls: type) -> None:
    c = cache_cls(10, policy="s3fifo")
    for k in "abcde":
        c[k] = k
    order = c.keys()
    for k in "edcba":
        assert c[k] == k
    assert c.keys() == order  # LRU would have reversed it


def test_iteration_order_is_small_fifo_then_main_fifo(cache_cls: type) -> None:
    c = cache_cls(10, policy="s3fifo")
    for k in range(10):
        c[k] = k
    # the small FIFO (1 entry) filled first, later entries went to main until
    # the first eviction
    assert c.keys() == list(range(10))
    for k in (1, 2):
        c.get(k)
        c.get(k)  # hit twice: moves to main when its turn comes
    c[10] = 10  # evicts from the small FIFO: 0, never hit, goes (to the ghost)
    assert 0 not in c and list(reversed(c)) == c.keys()[::-1]


def test_popitem_takes_what_eviction_would(cache_cls: type) -> None:
    c = cache_cls(4, policy="s3fifo")
    d = cache_cls(4, policy="s3fifo")
    for k in range(6):
        c[k] = k
        d[k] = k
    victim = c.popitem()
    d[99] = 99  # an eviction
    assert victim[0] not in d and victim[0] not in c


def test_scan_resistance(cache_cls: type) -> None:
    """A one-time scan of 5x the capacity: the hot set survives under s3fifo."""
    hot = list(range(50))
    results = {}
    for policy in ("lru", "s3fifo"):
        c = cache_cls(100, policy=policy)
        for _ in range(5):
            for k in hot:
                c.get_or_set(k, lambda: 0)
        for k in range(1000, 1500):
            c.get_or_set(k, lambda: 0)
        results[policy] = sum(k in c for k in hot)
    assert results["s3fifo"] == 50 and results["lru"] == 0


def test_trim_resize_pickle_copy(cache_cls: type) -> None:
    c = cache_cls(20, policy="s3fifo")
    for k in range(40):
        c.get_or_set(k % 25, lambda: 1)
    for clone in (pickle.loads(pickle.dumps(c)), c.copy()):
        assert clone.policy == "s3fifo" and clone.items() == c.items()
        assert hit_sequence(clone, list(range(30))) == hit_sequence(c.copy(), list(range(30)))
    assert c.trim(0.5) == 10 and len(c) == 10
    c.resize(maxsize=5)
    assert len(c) == 5 and c.stats()["policy"] == "s3fifo"
    c.resize(maxsize=50)
    for k in range(100):
        c[k] = k
    assert len(c) == 50


def test_bytes_bound_and_small_share_in_bytes(cache_cls: type) -> None:
    c = cache_cls(
        None, max_bytes=1000, sizeof=lambda o: 10 if isinstance(o, int) else len(o), policy="s3fifo"
    )
    for k in range(200):
        c[k] = "x" * (k % 30)
        assert c.nbytes <= 1000
    assert len(c) > 10


def test_bad_policy(cache_cls: type) -> None:
    with pytest.raises(ValueError, match="'lru', 's3fifo'"):
        cache_cls(10, policy="arc")
    with pytest.raises(TypeError, match="policy must be a str"):
        cache_cls(10, policy=1)
    c = cache_cls(10)
    c["a"] = 1
    state = c.__reduce__()[2]
    with pytest.raises(ValueError, match="cannot change the policy"):
        c.__setstate__((*state[:4], "s3fifo", state[5]))
    assert c.policy == "lru" and c["a"] == 1


def test_ghost_holds_no_references(cache_cls: type) -> None:
    class Key:
        def __init__(self, n: int) -> None:
            self.n = n

        def __hash__(self) -> int:
            return self.n

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Key) and other.n == self.n

    c = cache_cls(10, policy="s3fifo")
    refs = []
    for n in range(100):
        k = Key(n)
        refs.append(weakref.ref(k))
        c[k] = [n]
        del k
    gc.collect()
    alive = [r for r in refs if r() is not None]
    assert len(alive) == len(c) == 10
    assert sys.getrefcount(c) < 5


@pytest.mark.parametrize("growth", ["resize", "bytes"])
def test_a_ghost_whose_limit_grows_keeps_working(isolated: Any, growth: str) -> None:
    """The ghost sizes its lookup table for its limit. A limit raised later (by
    resize(), or by a byte-bounded cache that holds more entries) once let the
    compiled table fill up, and the next lookup of a new key probed forever with
    the GIL held. Each cache starts with a ghost of 0-11 records, has evicted,
    grows, then takes 3,000 new keys and ends full, holding the newest."""
    isolated(
        f"""
        for small in range(1, 14):
            if {growth!r} == "resize":
                c = Cache(small, policy="s3fifo")
            else:
                c = Cache(None, max_bytes=small, sizeof=lambda o: 1, policy="s3fifo")
            for k in range(3 * small):
                c[k] = k
            if {growth!r} == "resize":
                c.resize(1000)
            else:
                c.resize(max_bytes=1000)
            for k in range(100, 3100):
                c[k] = k
            # sizeof measures key and value: 2 bytes an entry under the byte bound
            full = 1000 if {growth!r} == "resize" else 500
            assert len(c) == full and c.get(3099) == 3099, (small, len(c))
        print("ok")
        """,
        timeout=60,
    )


def test_resize_to_zero_empties_an_s3fifo_cache(isolated: Any) -> None:
    """maxsize=0 makes the main queue's share -1, so an empty main queue read as
    "over its share" and eviction went round it forever (both twins hung)."""
    isolated(
        """
        c = Cache(7, policy="s3fifo")
        for k in range(5):
            c[k] = k
        c.resize(0)
        assert len(c) == 0 and c.stats()["evictions"] == 5
        c[1] = 1
        assert len(c) == 0 and c.stats()["rejected"] == 1
        c.resize(3)
        c[1] = 1
        assert c[1] == 1
        print("ok")
        """,
        timeout=30,
    )


def test_a_huge_maxsize_beside_a_byte_bound(isolated: Any) -> None:
    """90 % of a maxsize from about 5 * 10**18 made the compiled ghost's table
    size wrap and the first eviction hung; now the ghost follows the entries held
    (and keeps at most GHOST_MAX fingerprints)."""
    isolated(
        """
        for maxsize in (6 * 10**18, sys.maxsize, 10**12):
            c = Cache(maxsize, max_bytes=4000, sizeof=lambda o: 8, policy="s3fifo")
            for k in range(1000):
                c[k] = k
            assert len(c) == 250 and c.stats()["evictions"] == 750
            assert c.trim(0.5) == 125
        print("ok")
        """,
        timeout=60,
    )


def test_a_byte_bounded_ghost_follows_the_entries_held(isolated: Any) -> None:
    """A ghost sized for 90 % of maxsize under a byte bound that holds far fewer
    entries took 12.9 MB (compiled, allocated at the first eviction) or 13.7 MB
    (pure, as it filled) beside a 16 kB cache of 1,000 entries: memory the byte
    bound does not see. It now remembers at most 90 % of the most entries held.
    Memory is read with tracemalloc, which sees PyMem allocations."""
    isolated(
        """
        import tracemalloc
        tracemalloc.start()
        c = Cache(10**6, max_bytes=16_000, sizeof=lambda o: 8, policy="s3fifo")
        for k in range(1000):
            c[k] = k
        before = tracemalloc.get_traced_memory()[0]
        for k in range(1000, 100_000):
            c[k] = k
        grown = tracemalloc.get_traced_memory()[0] - before
        assert len(c) == 1000 and c.stats()["evictions"] == 99_000
        assert grown < 1_000_000, grown
        # the same under a maxsize it never reached: trim() once allocated a
        # ghost for 90 % of 10**8 entries (1.5 GB) to remember 500 keys
        c = Cache(10**8, policy="s3fifo")
        for k in range(1000):
            c[k] = k
        before = tracemalloc.get_traced_memory()[0]
        assert c.trim(0.5) == 500
        grown = tracemalloc.get_traced_memory()[0] - before
        assert grown < 1_000_000, grown
        print("ok")
        """,
        timeout=60,
    )


def one_byte(o: Any) -> int:
    return 1


class Refill:
    """A value whose __del__ stores ``keys`` into ``cache`` (once)."""

    def __init__(self, cache: Any, keys: list[Any]) -> None:
        self.cache, self.keys = cache, keys

    def __del__(self) -> None:
        c, self.cache = self.cache, None
        if c is not None:
            for k in self.keys:
                c[k] = k


def test_resize_down_gives_the_memory_back(isolated: Any) -> None:
    """A full 100,000-entry cache resized to 100 gives its memory back: the
    compiled ghost, sized for 90,000 records, kept 1.5 MB, and the pure twin's
    dicts kept 12.6 MB under either policy (a dict keeps its size when emptied)."""
    isolated(
        """
        import tracemalloc
        tracemalloc.start()
        kept = {}
        for policy in ("lru", "s3fifo"):
            start = tracemalloc.get_traced_memory()[0]
            c = Cache(100_000, policy=policy)
            for k in range(101_000):
                c[k] = k
            c.resize(100)
            kept[policy] = tracemalloc.get_traced_memory()[0] - start
            assert len(c) == 100
            del c
        assert kept["lru"] < 200_000 and kept["s3fifo"] < 200_000, kept
        print("ok")
        """,
        timeout=60,
    )


@pytest.mark.parametrize("bound", ["entries", "bytes", "both"])
def test_the_ghost_limit_is_90_percent_of_the_most_entries_held(bound: str) -> None:
    """libCacheSim's size (90 % of maxsize) once the cache has been full; before,
    and under a byte bound, 90 % of the most entries held. The pure twin shows its
    limit; the compiled one's is held to it by the twin tests."""
    kw: dict[str, Any] = {"policy": "s3fifo"}
    if bound != "entries":
        kw.update(max_bytes=2000, sizeof=one_byte)  # 1,000 entries
    c: PyLruCache[int, int] = PyLruCache(None if bound == "bytes" else 555, **kw)
    for k in range(300):
        c[k] = k
    c.trim(0.5)
    assert c._ghost_limit == 270
    for k in range(300, 3000):
        c[k] = k
    assert c._ghost_limit == {"entries": 499, "bytes": 900, "both": 499}[bound]
    c.resize(100)
    assert c._ghost_limit == 90
    assert pickle.loads(pickle.dumps(c))._ghost_limit == 90  # 100 entries restored
    c.__init__(None, policy="s3fifo")  # type: ignore[misc]  # deliberate: __init__ again restarts
    assert c._ghost_limit == 0


def test_twins_agree_when_init_again_releases_a_value_that_stores() -> None:
    """__init__ on a live cache forgets the ghost and its limit before it releases
    the old values; a value whose __del__ stores into the cache then grows the new
    limit in both twins alike (the compiled one once reset it after the release,
    and 4 keys later landed in another queue)."""
    if CLruCache is None:
        pytest.skip("no compiled core")

    def size(o: Any) -> int:
        return 1 if isinstance(o, int) and o < 1000 else 90

    # 90 small entries, then large ones that evict small ones to the ghost
    refill = [*range(100, 190), *range(1000, 1003)]

    def run(cls: Any) -> tuple[Any, ...]:
        c = cls(None, max_bytes=200, sizeof=size, policy="s3fifo")
        for k in range(50):
            c[k] = k
        c[50] = Refill(c, refill)
        c.__init__(None, max_bytes=200, sizeof=size, policy="s3fifo")
        for k in range(100, 190):
            c[k] = k
        return list(c.items()), c.stats()

    assert run(CLruCache) == run(PyLruCache)


def test_init_again_to_lru_while_a_released_value_stores(isolated: Any) -> None:
    """__init__(policy="lru") on an s3fifo cache whose released value stores into
    it: the stores went into the small queue under the old policy, out of reach
    of lru's eviction (compiled: popitem read entry 0 and crashed, the bound was
    not held; pure: AssertionError, KeyError). The new settings are now made
    before the old values are released."""
    isolated(
        """
        class Refill:
            def __init__(self, c):
                self.c = c
            def __del__(self):
                c, self.c = self.c, None
                if c is not None:
                    for k in range(5):
                        c[("d", k)] = k
        for before, after in [("s3fifo", "lru"), ("lru", "s3fifo"), ("s3fifo", "s3fifo")]:
            c = Cache(100, policy=before)
            for k in range(10):
                c[k] = k
            c[10] = Refill(c)
            c.__init__(3, policy=after)
            assert len(c) == 3 and c.policy == after, (before, after, c.keys())
            for k in range(20):
                c[k] = k
                c.get(k - 3)
            assert len(c) == 3 and len(c.keys()) == 3
            assert c.popitem() and c.trim(1.0) == 2 and len(c) == 0
        print("ok")
        """,
        timeout=60,
    )


@pytest.mark.parametrize("before", ["lru", "s3fifo"])
@pytest.mark.parametrize("after", ["lru", "s3fifo"])
def test_twins_agree_on_init_again_while_a_released_value_stores(before: str, after: str) -> None:
    """The case above, every pair of policies: both twins store the released
    value's keys under the new settings alike."""
    if CLruCache is None:
        pytest.skip("no compiled core")

    def run(cls: Any) -> list[Any]:
        c = cls(100, policy=before)
        for k in range(10):
            c[k] = k
        c[10] = Refill(c, [("d", k) for k in range(5)])
        c.__init__(3, policy=after)
        out = [c.keys()]
        for k in range(20):
            c[k] = k
            c.get(k - 3)
        return [*out, c.items(), c.stats()]

    assert run(CLruCache) == run(PyLruCache)
