"""Eviction order, counting rules, TTL, byte bounds and callbacks."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest


def test_lru_eviction_order_and_bound(cache_cls):
    evicted = []
    c = cache_cls(3, on_evict=lambda k, v, r: evicted.append((k, v, r)))
    for k in "abc":
        c[k] = k
    c["a"]  # a becomes MRU
    c.get("b")  # b becomes MRU
    c["d"] = "d"  # evicts c
    assert evicted == [("c", "c", "capacity")] and c.keys() == ["a", "b", "d"]
    c["a"] = "A"  # replacing is not an eviction and makes a the MRU
    c["e"] = "e"
    assert evicted[-1] == ("b", "b", "capacity") and c.keys() == ["d", "a", "e"]
    assert len(c) == 3 and c.stats()["evictions"] == 2


def test_maxsize_zero_caches_nothing(cache_cls):
    """maxsize=0 refuses every entry: set() says so (False) and counts it."""
    seen = []
    c = cache_cls(0, on_evict=lambda k, v, r: seen.append(r))
    c["a"] = 1
    assert c.set("b", 2) is False
    assert c.get_or_set("c", lambda: 3) == 3 and c.setdefault("d", 4) == 4
    assert len(c) == 0 and "a" not in c and seen == []
    assert c.stats()["rejected"] == 4


def test_maxsize_none_is_unbounded(cache_cls):
    c = cache_cls(None)
    for i in range(5000):
        c[i] = i
    assert len(c) == 5000 and c.maxsize is None and c.stats()["evictions"] == 0


def test_counting_rules(cache_cls):
    c = cache_cls(10)
    c["a"] = 1
    c["b"] = 2
    c["a"]
    c.get("a")
    c.get("zz")
    c.setdefault("a")
    c.setdefault("n", 0)
    c.get_or_set("a", lambda: 9)
    c.get_or_set("m", lambda: 9)
    with pytest.raises(KeyError):
        c["missing"]
    s = c.stats()
    assert (s["hits"], s["misses"]) == (4, 4)
    assert s["hit_rate"] == 0.5
    order = c.keys()
    # none of these count or change recency
    _ = ("a" in c, c.peek("b"), len(c), list(c), c.items(), c == {}, c.stats())
    assert c.keys() == order and c.stats()["hits"] == 4 and c.stats()["misses"] == 4
    c.pop("b")
    assert c.stats()["hits"] == 4
    c.reset_stats()
    s = c.stats()
    assert (s["hits"], s["misses"], s["evictions"], s["hit_rate"]) == (0, 0, 0, 0.0)


def test_peek_does_not_touch_recency(cache_cls):
    c = cache_cls(2)
    c["a"] = 1
    c["b"] = 2
    assert c.peek("a") == 1 and c.peek("x", 5) == 5
    c["c"] = 3
    assert "a" not in c


def test_stats_keys(cache_cls):
    s = cache_cls(7, ttl=3, max_bytes=100).stats()
    assert {
        "size",
        "maxsize",
        "nbytes",
        "max_bytes",
        "hits",
        "misses",
        "hit_rate",
        "evictions",
        "expirations",
        "rejected",
        "ttl",
        "evictions_by_reason",
    } <= set(s)
    assert (s["maxsize"], s["max_bytes"], s["ttl"], s["size"]) == (7, 100, 3.0, 0)


def test_get_or_set_calls_factory_once_per_miss(cache_cls):
    c = cache_cls(4)
    calls = []
    assert c.get_or_set("k", lambda: calls.append(1) or "v") == "v"  # type: ignore[func-returns-value]
    assert c.get_or_set("k", lambda: calls.append(1) or "w") == "v"  # type: ignore[func-returns-value]
    assert calls == [1]


def test_get_or_set_factory_error_stores_nothing(cache_cls):
    c = cache_cls(4)

    def boom():
        raise ZeroDivisionError("no")

    with pytest.raises(ZeroDivisionError):
        c.get_or_set("k", boom)
    assert "k" not in c and len(c) == 0


def test_get_or_set_never_overwrites_a_write_made_meanwhile(cache_cls):
    """A set during the factory wins in the cache (the lease is refused); the
    caller gets the value its factory computed."""
    c = cache_cls(4)

    def factory():
        c["k"] = "first"  # a writer got there first
        return "second"

    assert c.get_or_set("k", factory) == "second" and c["k"] == "first"


def test_trim(cache_cls):
    reasons = []
    c = cache_cls(100, on_evict=lambda k, v, r: reasons.append(r))
    for i in range(10):
        c[i] = i
    c[0]
    assert c.trim(0.5) == 5
    assert c.keys() == [6, 7, 8, 9, 0] and reasons == ["trim"] * 5
    assert c.trim(0.01) == 1 and c.trim(1) == 4 and len(c) == 0 and c.trim() == 0
    assert c.stats()["evictions_by_reason"]["trim"] == 10


def test_resize(cache_cls):
    c = cache_cls(10)
    for i in range(10):
        c[i] = i
    c.resize(maxsize=4)
    assert c.keys() == [6, 7, 8, 9] and c.maxsize == 4
    c.resize(maxsize=None)
    for i in range(20):
        c[i] = f"value {i}"
    assert len(c) == 20
    c.resize(max_bytes=10 * sys.getsizeof("value 10"))  # measured now, evicted to fit
    assert c.max_bytes is not None and 0 < c.nbytes <= c.max_bytes and len(c) < 20
    c.resize(max_bytes=None)
    assert c.nbytes == 0 and c.max_bytes is None


def test_large_cache_shrinks_after_trim(cache_cls):
    c = cache_cls(None)
    for i in range(100_000):
        c[i] = i
    c.trim(0.99)
    assert c.keys() == list(range(99_000, 100_000))
    for i in range(10):
        c[-i] = i
    assert c[99_999] == 99_999 and len(c) == 1010


# -- TTL ------------------------------------------------------------------------


def test_default_ttl(cache_cls, timer):
    reasons = []
    c = cache_cls(10, ttl=10, timer=timer, on_evict=lambda k, v, r: reasons.append((k, r)))
    c["a"] = 1
    timer.advance(9.9)
    assert c["a"] == 1
    timer.advance(0.1)
    assert "a" not in c and c.peek("a") is None and list(c) == []
    assert len(c) == 1  # O(1) len still counts the untouched expired entry
    assert c.get("a") is None and len(c) == 0
    s = c.stats()
    assert (s["hits"], s["misses"], s["expirations"], s["evictions"]) == (1, 1, 1, 0)
    assert reasons == [("a", "expired")]


def test_per_entry_ttl_overrides_default(cache_cls, timer):
    c = cache_cls(10, ttl=100, timer=timer)
    c.set("short", 1, ttl=1)
    c.set("never", 2, ttl=float("inf"))
    c["default"] = 3
    timer.advance(50)
    assert "short" not in c and c["default"] == 3
    timer.advance(100)
    assert "default" not in c and c["never"] == 2


def test_no_ttl_means_no_expiry(cache_cls, timer):
    c = cache_cls(10, timer=timer)
    c["a"] = 1
    timer.advance(1e9)
    assert c["a"] == 1


def test_expire_drops_expired_entries(cache_cls, timer):
    c = cache_cls(100, timer=timer)
    for i in range(10):
        c.set(i, i, ttl=i + 1)
    timer.advance(5)
    assert c.expire() == 5 and len(c) == 5 and sorted(c) == [5, 6, 7, 8, 9]
    assert c.expire() == 0 and c.stats()["expirations"] == 5


def _recorder(into: list[tuple[object, str]]) -> Callable[[object, object, str], None]:
    return lambda k, v, reason: into.append((k, reason))


@pytest.mark.parametrize("policy", ["lru", "s3fifo"])
def test_a_limited_expire_looks_at_every_entry_in_calls_adding_up_to_len(cache_cls, timer, policy):
    """``expire(limit=n)``: each call drops at most n entries, and calls whose limits add
    up to ``len(cache)`` drop every expired one and nothing else: across the pool's
    repack that the removals set off, after reads, removals and reinsertions."""
    import random

    for trial in range(80):
        rnd = random.Random(trial)
        dropped: list[tuple[object, str]] = []
        c = cache_cls(None, policy=policy, timer=timer, on_evict=_recorder(dropped))
        for i in range(rnd.randrange(0, 400)):
            c.set(i, i, ttl=rnd.choice((1, 5, 10, None)))
        for _ in range(len(c) // 3):
            k = rnd.randrange(400)
            if rnd.random() < 0.3:
                c.pop(k, None)
            elif rnd.random() < 0.5:
                c.set(k, -k, ttl=rnd.choice((1, None)))
            else:
                c.get(k)
        timer.advance(rnd.choice((2, 6, 11)))
        live = {k for k in c}  # iteration skips the expired ones
        size, limit = len(c), rnd.randrange(1, 60)
        for _ in range(-(-size // limit)):
            assert c.expire(limit=limit) <= limit
        assert sorted(c.keys()) == sorted(live) and len(c) == len(live), trial
        assert {r for _, r in dropped} <= {"expired"} and len(dropped) == size - len(live)
        assert c.expire() == 0
        timer.advance(100)  # everything with a TTL is gone now; the rest stays
        c.expire(limit=10**30)
        assert all(c.peek(k) is not None for k in c.keys())


@pytest.mark.parametrize("policy", ["lru", "s3fifo"])
def test_a_limited_expire_misses_nothing_while_the_cache_is_used_between_calls(
    cache_cls, timer, policy
):
    """Hits, removals and inserts between the limited calls (what the cleanup service's
    slices meet): every expired entry that stayed is dropped. The pure twin's first
    cursor was a position in the eviction order, which each hit or removal before it
    moved: it left expired entries in 82 of 150 trials."""
    import random

    for trial in range(60):
        rnd = random.Random(trial)
        c = cache_cls(None, policy=policy, timer=timer)
        for i in range(rnd.randrange(1, 600)):
            c.set(i, i, ttl=rnd.choice((1, None)))
        timer.advance(2)
        size, limit = len(c), rnd.randrange(1, 50)
        for _ in range(-(-size // limit)):
            c.expire(limit=limit)
            for _ in range(rnd.randrange(0, 6)):
                k, what = rnd.randrange(600), rnd.random()
                if what < 0.3:
                    c.get(k)
                elif what < 0.5:
                    c.pop(k, None)
                else:
                    c.set(1000 + rnd.randrange(10**6), 0)
        assert c.expire() == 0, trial
        timer.advance(-2)


def test_a_limited_expire_goes_on_where_the_last_one_stopped(cache_cls, timer):
    """Entries 0-99 live, 100-199 expired: limits of 50 reach the expired half on the
    third call, not on every call's first 50 entries."""
    c = cache_cls(None, timer=timer)
    for i in range(200):
        c.set(i, i, ttl=None if i < 100 else 1)
    timer.advance(2)
    assert [c.expire(limit=50) for _ in range(4)] == [0, 0, 50, 50]
    assert len(c) == 100


@pytest.mark.parametrize(
    "limit, exc, message",
    [
        (0, ValueError, "limit must be >= 1, got 0"),
        (-3, ValueError, "limit must be >= 1, got -3"),
        (2.0, TypeError, "limit must be an int or None, not float"),
        (True, TypeError, "limit must be an int or None, not bool"),
        ("5", TypeError, "limit must be an int or None, not str"),
    ],
)
def test_a_bad_expire_limit_is_refused_and_changes_nothing(cache_cls, timer, limit, exc, message):
    c = cache_cls(10, ttl=1, timer=timer)
    c["a"] = 1
    timer.advance(2)
    with pytest.raises(exc, match=message):
        c.expire(limit=limit)
    assert len(c) == 1 and c.stats()["expirations"] == 0


def test_expired_entries_in_every_accessor(cache_cls, timer):
    c = cache_cls(10, ttl=1, timer=timer)
    c["a"] = 1
    c["b"] = 2
    timer.advance(2)
    assert c.setdefault("a", 5) == 5 and c["a"] == 5
    assert c.get_or_set("b", lambda: 6) == 6
    c.set("c", 3)
    timer.advance(2)
    assert c.pop("c", "gone") == "gone"
    with pytest.raises(KeyError):
        del c["a"]
    assert c.items() == [] and c.stats()["expirations"] == 4


def test_eviction_of_an_expired_lru_entry_counts_as_expiration(cache_cls, timer):
    reasons = []
    c = cache_cls(2, timer=timer, on_evict=lambda k, v, r: reasons.append(r))
    c.set("old", 1, ttl=1)
    c["b"] = 2
    timer.advance(5)
    c["c"] = 3
    assert reasons == ["expired"] and c.stats()["expirations"] == 1


def test_real_clock_ttl(cache_cls):
    import time

    c = cache_cls(10, ttl=0.5)  # long enough for a loaded runner between the two lines
    c["a"] = 1
    assert c["a"] == 1
    time.sleep(0.6)
    assert "a" not in c and c.get("a") is None


def test_popitem_skips_expired(cache_cls, timer):
    c = cache_cls(10, timer=timer)
    c.set("a", 1, ttl=1)
    c["b"] = 2
    timer.advance(2)
    assert c.popitem() == ("b", 2) and len(c) == 0


# -- bytes ----------------------------------------------------------------------


def size_len(obj):
    return len(obj) if isinstance(obj, (str, bytes)) else 0


def test_max_bytes_evicts_lru_first(cache_cls):
    reasons = []
    c = cache_cls(
        None, max_bytes=100, sizeof=size_len, on_evict=lambda k, v, r: reasons.append((k, r))
    )
    c["a"] = "x" * 40  # 41 bytes with the key
    c["b"] = "x" * 40
    c["a"]
    c["c"] = "x" * 40  # 123 > 100: evicts b, the LRU
    assert c.keys() == ["a", "c"] and c.nbytes == 82 and reasons == [("b", "bytes")]
    c["a"] = "x" * 10  # a replacement re-measures
    assert c.nbytes == 52
    assert c.stats()["evictions_by_reason"]["bytes"] == 1


def test_oversized_entry_is_refused_and_counted(cache_cls):
    c = cache_cls(None, max_bytes=100, sizeof=size_len)
    c["a"] = "small"
    assert c.set("big", "x" * 200) is False
    c["big2"] = "x" * 200  # no error either
    assert "big" not in c and "big2" not in c and c.keys() == ["a"]
    assert c.stats()["rejected"] == 2 and c.nbytes == 6
    # an oversized replacement drops the stale value instead of keeping it
    assert c.set("a", "y" * 500) is False and "a" not in c and c.nbytes == 0


def test_default_sizeof_is_deep_sizeof(cache_cls):
    from memcache_ext import deep_sizeof

    c = cache_cls(None, max_bytes=10**6)
    key, value = "key", {"a": [1.5, 2.5], "b": "text" * 10}
    c[key] = value
    assert c.nbytes == deep_sizeof(key) + deep_sizeof(value) > 0


@pytest.mark.parametrize(
    "bad, exc",
    [
        (lambda o: -1, ValueError),
        (lambda o: 1.5, TypeError),
        (lambda o: "3", TypeError),
        (lambda o: 1 / 0, ZeroDivisionError),
    ],
)
def test_bad_sizeof_propagates_and_changes_nothing(cache_cls, bad, exc):
    mode = {"bad": False}

    def sizeof(obj):
        return bad(obj) if mode["bad"] else 1

    c = cache_cls(3, max_bytes=100, sizeof=sizeof)
    c["a"] = "1"
    c["b"] = "2"
    before = (c.items(), c.nbytes, c.stats())
    mode["bad"] = True
    with pytest.raises(exc):
        c["c"] = "3"
    with pytest.raises(exc):
        c["a"] = "new"
    assert (c.items(), c.nbytes, c.stats()) == before


def test_sizeof_not_called_without_max_bytes(cache_cls):
    """sizeof without max_bytes measures nothing, and says so with a warning
    that points at the caller's line."""
    from memcache_ext._validate import SizeofWithoutBoundWarning

    calls = []
    with pytest.warns(SizeofWithoutBoundWarning, match="without max_bytes") as record:
        c = cache_cls(3, sizeof=lambda o: calls.append(o) or 1)  # type: ignore[func-returns-value]
    assert record[0].filename == __file__
    c["a"] = 1
    assert calls == [] and c.nbytes == 0
    c.resize(max_bytes=100)  # now it measures
    assert calls == ["a", 1] and c.nbytes == 2


# -- callbacks ------------------------------------------------------------------


def test_on_evict_not_called_for_manual_removals(cache_cls):
    calls = []
    c = cache_cls(5, on_evict=lambda *a: calls.append(a))
    c.update({1: 1, 2: 2, 3: 3})
    del c[1]
    c.pop(2)
    c.popitem()
    c[4] = 4
    c[4] = 5
    c.clear()
    assert calls == []


def test_on_evict_error_propagates_after_the_operation(cache_cls):
    seen = []

    def on_evict(k, v, r):
        seen.append(k)
        raise RuntimeError(f"callback {k}")

    c = cache_cls(10, on_evict=on_evict)
    for i in range(6):
        c[i] = i
    with pytest.raises(RuntimeError, match="callback 0"):
        c.trim(0.5)
    assert seen == [0, 1, 2] and c.keys() == [3, 4, 5]  # every callback ran
    with pytest.raises(RuntimeError):
        c.resize(maxsize=1)
    assert c.keys() == [5]
    with pytest.raises(RuntimeError):
        c[9] = 9
    assert c.keys() == [9] and len(c) == 1


def test_hash_called_once_per_call(cache_cls):
    class Key:
        calls = 0

        def __init__(self, v):
            self.v = v

        def __hash__(self):
            Key.calls += 1
            return hash(self.v)

        def __eq__(self, other):
            return isinstance(other, Key) and other.v == self.v

    # CLruCache hashes the key once per call and never on eviction (it keeps the
    # hash). PyLruCache's OrderedDict hashes twice on a hit (lookup, then
    # move_to_end) and on a store (pop, then setitem). Documented in the README.
    # PyLruCache's most per call (its OrderedDict needs a lookup, then a move or
    # an insert, and a miss path looks up again before storing).
    pure = cache_cls.__name__ == "PyLruCache"
    c = cache_cls(10)
    k = Key(1)
    for op, most in (
        (lambda: c.__setitem__(k, 1), 2),
        (lambda: c[k], 2),
        (lambda: c.get(Key(2)), 1),
        (lambda: c.set(k, 2), 2),
        (lambda: k in c, 1),
        (lambda: c.peek(k), 1),
        (lambda: c.pop(Key(3), None), 1),
        (lambda: c.setdefault(Key(4), 0), 3),
        (lambda: c.get_or_set(Key(5), int), 4),
    ):
        Key.calls = 0
        op()
        assert 1 <= Key.calls <= most
        assert Key.calls == 1 or pure
    Key.calls = 0
    for i in range(20):  # evicts k without hashing it
        c[i] = i
    assert k not in c and Key.calls == 1
