"""CacheManager: registry, limit detection, hysteresis cleanup, byte budget, stats."""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import pytest

from memcache_ext import CacheManager, LruCache, cache_manager
from memcache_ext._constants import MIB as MB

GB = 2**30


class FakeRss:
    def __init__(self, value: int) -> None:
        self.value = value

    def __call__(self) -> int:
        return self.value


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(cache_cls: type, **kw: Any) -> CacheManager:
    """A manager with a fake RSS; no derived byte budget unless asked (the cleanup tests
    put RSS above the high-water mark from the start, which leaves no headroom)."""
    kw.setdefault("memory_limit_mb", 1000)
    kw.setdefault("rss", FakeRss(100 * MB))
    kw.setdefault("cache_share", None)
    return CacheManager(cache_class=cache_cls, **kw)


# -- construction ------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"memory_limit_mb": 0},
        {"memory_limit_mb": -5},
        {"memory_limit_mb": float("inf")},
        {"high_water": 0},
        {"high_water": 1.5},
        {"cleanup_fraction": 0},
        {"cleanup_fraction": 2},
        {"low_water": 0},
        {"high_water": 0.5, "low_water": 0.6},
        {"min_interval": -1},
        {"max_total_bytes": 0},
        {"history": 0},
        {"high_water": float("nan")},
    ],
)
def test_bad_values(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CacheManager(**kw)


@pytest.mark.parametrize(
    "kw", [{"memory_limit_mb": "1"}, {"high_water": True}, {"max_total_bytes": 1.5}, {"rss": 5}]
)
def test_bad_types(kw: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        CacheManager(**kw)


def test_default_low_water() -> None:
    assert CacheManager(high_water=0.8).low_water == pytest.approx(0.7)
    assert CacheManager(high_water=0.1).low_water == pytest.approx(0.05)


def test_module_level_manager_uses_best_cache() -> None:
    assert isinstance(cache_manager, CacheManager)
    m = CacheManager()
    c = m.create_cache("x")
    assert type(c) is LruCache
    assert m.memory_usage_mb() > 1
    assert m.limit.nbytes > 0 and m.limit.source


# -- registry ------------------------------------------------------------------------


def test_registry(cache_cls: type[Any]) -> None:
    m = make(cache_cls)
    a = m.create_cache("a", maxsize=10, ttl=5)
    assert isinstance(a, cache_cls)
    assert a.maxsize == 10 and a.ttl == 5
    assert m.create_cache("a", maxsize=10, ttl=5) is a
    with pytest.raises(ValueError, match="different settings"):
        m.create_cache("a", maxsize=11, ttl=5)
    with pytest.raises(ValueError):
        m.create_cache("a", maxsize=10, ttl=5, max_bytes=100)
    assert m.get_cache("a") is a
    with pytest.raises(KeyError):
        m.get_cache("nope")
    m.create_cache("b")
    assert "a" in m and "zz" not in m
    assert len(m) == 2
    assert sorted(m) == ["a", "b"]
    a["k"] = 1
    assert m.remove_cache("a") is True
    assert len(a) == 0  # cleared
    assert m.remove_cache("a") is False
    assert "a" not in m
    with pytest.raises(TypeError):
        m.create_cache(5)  # type: ignore[arg-type]  # deliberately wrong
    with pytest.raises(ValueError):
        m.create_cache("")


def test_create_passes_kwargs(cache_cls: type) -> None:
    m = make(cache_cls)
    seen = []
    c = m.create_cache("e", maxsize=1, on_evict=lambda k, v, r: seen.append((k, r)))
    c[1] = 1
    c[2] = 2
    assert seen == [(1, "capacity")]


def test_concurrent_create_returns_one_cache(isolated: Any) -> None:
    isolated("""
        sys.setswitchinterval(1e-6)
        from memcache_ext import CacheManager
        m = CacheManager(memory_limit_mb=100, cache_class=Cache)
        barrier = threading.Barrier(16)
        got = []
        def work(i):
            barrier.wait()
            for j in range(50):
                got.append(m.create_cache(f"c{j}", maxsize=10))
                if j % 10 == 0:
                    m.stats()
        ts = [threading.Thread(target=work, args=(i,)) for i in range(16)]
        [t.start() for t in ts]; [t.join() for t in ts]
        assert len(m) == 50
        assert len({id(c) for c in got}) == 50
    """)


# -- limit -----------------------------------------------------------------------------


def test_limit_from_fake_cgroup(tmp_path: Path) -> None:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text("0::/svc\n")
    (tmp_path / "sys/fs/cgroup/svc").mkdir(parents=True)
    (tmp_path / "sys/fs/cgroup/svc/memory.max").write_text(str(512 * MB))
    m = CacheManager(cgroup_root=str(tmp_path))
    assert m.memory_limit_mb == 512
    st = m.stats()
    assert st["limit"]["mb"] == 512
    assert st["limit"]["source"].startswith("cgroup v2")


def test_limit_configured() -> None:
    m = CacheManager(memory_limit_mb=256)
    assert m.limit.nbytes == 256 * MB and m.limit.source == "configured"


# -- cleanup ---------------------------------------------------------------------------


def fill(cache: Any, n: int, prefix: str = "k") -> None:
    for i in range(n):
        cache[f"{prefix}{i}"] = "v" * 100


def test_below_high_water_does_nothing(cache_cls: type) -> None:
    rss = FakeRss(799 * MB)
    m = make(cache_cls, rss=rss)
    c = m.create_cache("a", maxsize=None)
    fill(c, 100)
    assert m.cleanup_if_needed() is None
    assert len(c) == 100 and m.history == []


def test_above_high_water_cleans_and_records(cache_cls: type) -> None:
    rss = FakeRss(900 * MB)
    m = make(cache_cls, rss=rss, min_interval=0)
    a = m.create_cache("a", maxsize=None)
    b = m.create_cache("b", maxsize=None)
    fill(a, 100)
    fill(b, 10)
    event = m.cleanup_if_needed()
    assert event is not None
    # Nothing is byte-accounted (no max_bytes): every cache is trimmed by half.
    assert len(a) == 50 and len(b) == 5
    assert event.entries_evicted == 55
    assert event.reason == "high_water"
    assert event.target_bytes == int(0.7 * 1000 * MB)
    assert event.rss_before == 900 * MB
    assert event.accounted_bytes_released == 0
    assert event.malloc_trimmed in (True, False)
    assert event.duration >= event.gc_duration >= 0
    assert sorted(event.caches_trimmed) == ["a", "b"]
    assert a.stats()["evictions_by_reason"]["trim"] == 50
    d = event.as_dict()
    assert d["rss_freed_bytes"] == event.rss_before - event.rss_after
    json.dumps(d)


def test_min_interval(cache_cls: type) -> None:
    clock = Clock()
    m = make(cache_cls, rss=FakeRss(900 * MB), min_interval=30, clock=clock)
    c = m.create_cache("a", maxsize=None)
    fill(c, 64)
    assert m.cleanup_if_needed() is not None
    assert len(c) == 32
    clock.now += 10
    assert m.cleanup_if_needed() is None
    assert len(c) == 32
    assert m.stats()["cleanups_skipped_interval"] == 1
    clock.now += 25
    assert m.cleanup_if_needed() is not None
    assert len(c) == 16


def test_hysteresis_trims_lru_cache_first_and_stops(cache_cls: type) -> None:
    # limit 1000 MB, RSS 810 MB, target 0.7 -> need about 110 MB of accounted bytes.
    clock = Clock()
    m = make(cache_cls, rss=FakeRss(810 * MB), min_interval=0, clock=clock)
    big = 60 * MB
    sizeof = lambda o: big if isinstance(o, str) and o.startswith("v") else 0  # noqa: E731 - a one-line sizeof
    old = m.create_cache("old", maxsize=None, max_bytes=10 * GB, sizeof=sizeof)
    mid = m.create_cache("mid", maxsize=None, max_bytes=10 * GB, sizeof=sizeof)
    new = m.create_cache("new", maxsize=None, max_bytes=10 * GB, sizeof=sizeof)
    for c in (old, mid, new):
        for i in range(4):
            c[i] = "v"
    m.stats()  # first observation: fingerprints
    clock.now += 1
    mid.get(0)  # mid used
    clock.now += 1
    m.get_cache("new")  # new used later
    clock.now += 1
    event = m.cleanup_if_needed()
    assert event is not None
    # old (2 entries = 120 MB released) is enough: mid and new are untouched.
    assert event.caches_trimmed == ["old"]
    assert event.accounted_bytes_released == 2 * big
    assert (len(old), len(mid), len(new)) == (2, 4, 4)


def test_forced_cleanup_trims_everything(cache_cls: type) -> None:
    m = make(cache_cls, rss=FakeRss(10 * MB))
    caches = [m.create_cache(f"c{i}", maxsize=None) for i in range(3)]
    for c in caches:
        fill(c, 10)
    event = m.cleanup(fraction=1.0)
    assert event is not None and event.reason == "forced"
    assert all(len(c) == 0 for c in caches)
    assert event.entries_evicted == 30
    with pytest.raises(ValueError):
        m.cleanup(fraction=0)


def test_cleanup_expires_and_collects(cache_cls: type, timer: Any) -> None:
    m = make(cache_cls)
    c = m.create_cache("t", maxsize=None, ttl=10, timer=timer)
    fill(c, 10)
    timer.advance(11)
    gc.collect()
    for _ in range(50):
        x: list[Any] = []
        x.append(x)
    del x
    event = m.cleanup()
    assert event is not None
    assert event.entries_expired == 10
    assert event.entries_evicted == 0
    assert event.objects_collected >= 50


def test_on_evict_error_recorded_and_rest_cleaned(cache_cls: type) -> None:
    m = make(cache_cls)

    def boom(k: Any, v: Any, reason: str) -> None:
        raise RuntimeError("evict failed")

    bad = m.create_cache("bad", maxsize=None, on_evict=boom)
    good = m.create_cache("good", maxsize=None)
    fill(bad, 10)
    fill(good, 10)
    event = m.cleanup()
    assert event is not None
    assert any("bad: trim: RuntimeError: evict failed" in e for e in event.errors)
    assert len(bad) == 5 and len(good) == 5
    assert event.entries_evicted == 10
    assert m.stats()["cleanups"][-1]["errors"] == event.errors


def test_cache_removed_during_cleanup(cache_cls: type) -> None:
    m = make(cache_cls)
    # "a" is trimmed first (older); its on_evict removes "b" from the manager.
    a = m.create_cache("a", maxsize=None, on_evict=lambda k, v, r: m.remove_cache("b", clear=False))
    b = m.create_cache("b", maxsize=None)
    fill(a, 4)
    fill(b, 4)
    event = m.cleanup()
    assert event is not None
    assert event.skipped == ["b"]
    assert len(b) == 4 and "b" not in m
    assert event.errors == []


def test_reentrant_cleanup_from_on_evict(isolated: Any) -> None:
    isolated(
        """
        from memcache_ext import CacheManager
        m = CacheManager(memory_limit_mb=100, cache_class=Cache)
        inner = []
        c = m.create_cache("a", maxsize=None,
                           on_evict=lambda k, v, r: inner.append(m.cleanup()))
        for i in range(10): c[i] = i
        ev = m.cleanup()
        assert ev is not None and ev.entries_evicted == 5
        assert inner == [None] * 5
        assert len(m.history) == 1
    """,
        timeout=30,
    )


def test_concurrent_cleanups_and_inserts(isolated: Any) -> None:
    isolated(
        """
        sys.setswitchinterval(1e-5)
        from memcache_ext import CacheManager
        m = CacheManager(memory_limit_mb=100, cache_class=Cache, rss=lambda: 99 * 2**20,
                         min_interval=0, cache_share=None)
        caches = [m.create_cache(f"c{i}", maxsize=500) for i in range(4)]
        stop = threading.Event()
        def writer(c):
            i = 0
            while not stop.is_set():
                c[i % 1000] = i; c.get(i % 7); i += 1
        def cleaner():
            for _ in range(30):
                m.cleanup_if_needed(); m.cleanup(collect=False); m.stats()
        ws = [threading.Thread(target=writer, args=(c,)) for c in caches]
        cs = [threading.Thread(target=cleaner) for _ in range(3)]
        [t.start() for t in ws + cs]; [t.join() for t in cs]
        stop.set(); [t.join() for t in ws]
        assert all(len(c) <= 500 for c in caches)
        assert 90 <= len(m.history) <= 100  # bounded (forced ones always run)
        assert m.stats()["cleanup_count"] >= 90
    """,
        timeout=120,
    )


def test_history_bounded_oldest_first(cache_cls: type) -> None:
    m = make(cache_cls, history=3)
    for i in range(5):
        m.cleanup(reason=f"r{i}", collect=False)
    st = m.stats()
    assert [e["reason"] for e in st["cleanups"]] == ["r2", "r3", "r4"]
    assert st["cleanups_dropped"] == 2
    assert st["cleanup_count"] == 5


# -- byte budget derived from the limit ---------------------------------------------------


def test_budget_is_a_share_of_the_headroom_split_by_what_caches_ask(cache_cls: type) -> None:
    # limit 1000 MB, high water 800 MB, baseline 100 MB: headroom 700 MB, half for caches.
    m = make(cache_cls, cache_share=0.5)
    small = m.create_cache("small", maxsize=None, max_bytes=100 * MB)
    greedy = m.create_cache("greedy", maxsize=None)
    other = m.create_cache("other", maxsize=None)
    assert small.max_bytes == 100 * MB  # asked for less than its fair share: gets it
    assert greedy.max_bytes == other.max_bytes == 125 * MB  # the rest, in equal parts
    budget = m.stats()["budget"]
    assert budget["source"] == "derived"
    assert budget["limit_bytes"] == 1000 * MB and budget["high_water_bytes"] == 800 * MB
    assert budget["baseline_rss_bytes"] == 100 * MB
    assert budget["baseline_source"] == "measured at first create_cache"
    assert budget["headroom_bytes"] == 700 * MB and budget["cache_share"] == 0.5
    assert budget["total_bytes"] == 350 * MB == budget["granted_bytes"]
    assert budget["caches"]["small"] == {"requested_bytes": 100 * MB, "granted_bytes": 100 * MB}
    assert budget["caches"]["greedy"] == {"requested_bytes": None, "granted_bytes": 125 * MB}
    json.dumps(budget)


def test_budget_shares_follow_caches_as_they_come_and_go(cache_cls: type) -> None:
    m = make(cache_cls, max_total_bytes=1000)
    ten = lambda o: 10  # noqa: E731 - key 10 + value 10 = 20 bytes per entry
    a = m.create_cache("a", maxsize=None, sizeof=ten)
    assert a.max_bytes == 1000
    for i in range(50):
        a[i] = i
    assert a.nbytes == 1000
    b = m.create_cache("b", maxsize=None, sizeof=ten)
    assert a.max_bytes == b.max_bytes == 500  # a shrank through resize(): LRU entries out
    assert a.nbytes == 500 and next(iter(a)) == 25
    assert a.stats()["evictions_by_reason"]["bytes"] == 25
    for i in range(100):
        b[i] = i
    assert a.nbytes + b.nbytes <= 1000 and b.nbytes == 500
    m.remove_cache("b")
    assert a.max_bytes == 1000  # its share came back


def test_budget_bounds_hold_under_concurrent_inserts(isolated: Any) -> None:
    isolated(
        """
        sys.setswitchinterval(1e-6)
        from memcache_ext import CacheManager
        m = CacheManager(memory_limit_mb=100, cache_class=Cache, max_total_bytes=5000)
        cs = [m.create_cache(n, maxsize=None, sizeof=lambda o: 10) for n in "ab"]
        barrier = threading.Barrier(4)
        worst = []
        def work(c, seed):
            barrier.wait()
            for i in range(4000):
                c[(seed, i)] = i
                if i % 50 == 0:
                    worst.append(m.total_nbytes())
        ts = [threading.Thread(target=work, args=(cs[i % 2], i)) for i in range(4)]
        [t.start() for t in ts]; [t.join() for t in ts]
        assert max(worst) <= 5000, max(worst)  # each cache bounds itself: no overshoot
        for c in cs:
            assert c.max_bytes == 2500 and c.nbytes == 20 * len(c) <= 2500
    """,
        timeout=120,
    )


def test_an_entry_larger_than_its_share_is_refused(cache_cls: type) -> None:
    m = make(cache_cls, max_total_bytes=100)
    c = m.create_cache("a", maxsize=None, sizeof=lambda o: 200 if o == "big" else 5)
    c["x"] = 1
    assert c.set("k", "big") is False
    assert c.stats()["rejected"] == 1 and "k" not in c and c.nbytes == 10


def test_budget_goes_through_the_public_api(cache_cls: type) -> None:
    calls: list[tuple[str, Any]] = []

    class Recording:  # the cores are final: record around one instead
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            calls.append(("init", kwargs))
            self.inner = cache_cls(*args, **kwargs)

        def resize(self, **kwargs: Any) -> None:
            calls.append(("resize", kwargs))
            self.inner.resize(**kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    m = make(Recording, max_total_bytes=10_000)
    m.create_cache("a", maxsize=10)
    m.create_cache("b", maxsize=10)
    assert calls == [
        ("init", {"max_bytes": 10_000}),  # no sizeof wrapper: the core measures as it always does
        ("init", {"max_bytes": 5_000}),
        ("resize", {"max_bytes": 5_000}),  # the others shrink before the new one is registered
    ]


def test_no_budget_without_a_real_limit(cache_cls: type, tmp_path: Path) -> None:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text("0::/\n")
    m = CacheManager(cgroup_root=str(tmp_path), cache_class=cache_cls)
    c = m.create_cache("a", maxsize=10)
    assert c.max_bytes is None  # no limit to derive from: entries are not even measured
    budget = m.stats()["budget"]
    assert budget["source"].startswith("none: no memory limit (physical memory")
    assert budget["total_bytes"] is None and budget["caches"]["a"]["granted_bytes"] is None
    assert CacheManager(memory_limit_mb=100, cache_share=None).budget_total() == (
        None,
        "none: cache_share=None",
    )


def test_a_limit_below_the_baseline_is_a_clear_error(cache_cls: type) -> None:
    m = make(cache_cls, cache_share=0.5, memory_limit_mb=40, rss=FakeRss(52 * MB))
    with pytest.raises(
        ValueError,
        match=r"limit \(40\.0 MB, configured\) is below the "
        r"process's baseline RSS \(52\.0 MB\)",
    ):
        m.create_cache("a")
    assert "a" not in m
    m = make(cache_cls, cache_share=0.5, memory_limit_mb=60, rss=FakeRss(52 * MB))
    with pytest.raises(ValueError, match=r"high-water mark \(48\.0 MB of the 60\.0 MB limit"):
        m.create_cache("a")
    assert "baseline RSS (52.0 MB)" in m.stats()["budget"]["source"]
    m = make(cache_cls, cache_share=0.5, memory_limit_mb=60, baseline_mb=20)
    assert m.create_cache("a").max_bytes == int(0.5 * (48 - 20) * MB)
    assert m.stats()["budget"]["baseline_source"] == "configured"


# -- stats ---------------------------------------------------------------------------------


def test_stats_shape(cache_cls: type) -> None:
    m = make(cache_cls, rss=FakeRss(300 * MB))
    a = m.create_cache("a", maxsize=10)
    a["x"] = 1
    a.get("x")
    a.get("y")
    m.create_cache("b", maxsize=10)
    m.cleanup(collect=False)
    st = m.stats()
    json.dumps(st)
    assert st["process"]["rss_bytes"] == 300 * MB
    assert st["process"]["rss_mb"] == 300
    assert st["process"]["rss_source"] == "injected"
    assert st["limit"] == {
        "bytes": 1000 * MB,
        "mb": 1000,
        "source": "configured",
        "high_water": 0.8,
        "low_water": pytest.approx(0.7),
        "high_water_bytes": 800 * MB,
        "low_water_bytes": int(0.7 * 1000 * MB),
    }
    assert set(st["caches"]) == {"a", "b"}
    a = st["caches"]["a"]
    assert "error" not in a  # a cache whose stats() raised has {"error": ...} instead
    assert a["hits"] == 1 and a["misses"] == 1
    assert st["totals"]["caches"] == 2 and st["totals"]["hits"] == 1
    assert st["totals"]["hit_rate"] == 0.5 and st["totals"]["lookups"] == 2
    assert len(st["cleanups"]) == 1 and st["cleanups"][0]["reason"] == "forced"


def test_real_rss_source() -> None:
    st = CacheManager().stats()
    assert st["process"]["rss_source"] in ("/proc/self/statm", "psutil")
    assert st["process"]["rss_bytes"] > 0


def test_stats_sources_are_reported_and_isolated(cache_cls) -> None:
    m = CacheManager(memory_limit_mb=1024, cache_class=cache_cls)
    m.register_stats_source("tier", lambda: {"remote_hits": 3})
    m.register_stats_source("broken", lambda: 1 / 0)
    with pytest.raises(TypeError):
        m.register_stats_source("bad", 42)  # type: ignore[arg-type]  # deliberately wrong
    sources = m.stats()["sources"]
    assert sources["tier"] == {"remote_hits": 3}
    assert sources["broken"] == {"error": "ZeroDivisionError: division by zero"}
    assert m.unregister_stats_source("tier") and not m.unregister_stats_source("tier")
    assert "tier" not in m.stats()["sources"]


# -- the budget while caches come and go, and re-entrant callbacks ------------------


def test_the_bounds_never_add_up_to_more_than_the_total_while_a_cache_is_made(
    cache_cls: type,
) -> None:
    """The others shrink before the new cache exists (they shrank after: the
    bounds added up to 233,334 of 200,000 bytes, and the caches could hold it)."""
    m = CacheManager(max_total_bytes=200_000, cache_class=cache_cls)
    worst = [0]
    armed: list[bool] = []

    def on_evict(key: Any, value: Any, reason: str) -> None:
        if armed:
            worst[0] = max(worst[0], sum(c.max_bytes for c in m.caches().values()))

    a = m.create_cache("a", maxsize=None, on_evict=on_evict)
    b = m.create_cache("b", maxsize=None, on_evict=on_evict)
    for i in range(1000):
        a[i] = b"x" * 500
        b[i] = b"x" * 500
    armed.append(True)
    m.create_cache("c", maxsize=None)
    m.create_cache("d", maxsize=None)
    assert 0 < worst[0] <= 200_000
    assert sum(c.max_bytes for c in m.caches().values()) == 200_000


def test_a_cache_that_cannot_be_made_costs_the_others_nothing(cache_cls: type) -> None:
    """Not a byte of bound, not an entry (a review caught the first form of the
    fix above shrinking the others first: half of "a" was evicted)."""
    m = CacheManager(max_total_bytes=100_000, cache_class=cache_cls)
    a = m.create_cache("a", maxsize=None)
    for i in range(1000):
        a[i] = b"x" * 60
    before = (len(a), a.nbytes)
    with pytest.raises(TypeError):
        m.create_cache("b", maxsize=None, sizeof=5)
    assert "b" not in m and a.max_bytes == 100_000 and (len(a), a.nbytes) == before


def test_create_cache_checks_max_bytes_with_or_without_a_budget(cache_cls: type) -> None:
    """Under a budget a bound of -1, True or 1.5 was taken (and -1 gave the next
    cache more than the total): the same call the core refuses without one."""
    for total in (None, 100_000):
        m = CacheManager(max_total_bytes=total, cache_class=cache_cls, cache_share=None)
        for bad, exc in ((-1, ValueError), (True, TypeError), (1.5, TypeError), ("9", TypeError)):
            with pytest.raises(exc, match="max_bytes"):
                m.create_cache("a", maxsize=None, max_bytes=bad)  # type: ignore[arg-type]
            assert "a" not in m
    m = CacheManager(max_total_bytes=100_000, cache_class=cache_cls)
    m.create_cache("a", maxsize=None, max_bytes=0)
    assert m.create_cache("b", maxsize=None).max_bytes == 99_999
    assert m.stats()["budget"]["granted_bytes"] == 100_000


def test_a_bad_collect_is_refused_before_the_cleanup_trims(cache_cls: type) -> None:
    m = make(cache_cls)
    c = m.create_cache("a", maxsize=None)
    c.update({i: i for i in range(100)})
    for bad in (None, "x", 5, -1, 2.5):
        with pytest.raises(ValueError, match="collect must be"):
            m.cleanup(collect=bad)  # type: ignore[arg-type]  # deliberately wrong
        with pytest.raises(ValueError, match="collect must be"):
            m.cleanup_steps("forced", collect=bad)  # type: ignore[arg-type]  # at the call
    assert len(c) == 100 and m.stats()["cleanup_count"] == 0


def test_the_cleanup_reads_rss_through_the_injected_probe(cache_cls: type) -> None:
    m = make(cache_cls, rss=FakeRss(1000))
    event = m.cleanup()
    assert event is not None
    assert event.rss_before == event.rss_before_malloc_trim == event.rss_after == 1000


def test_a_cleanup_and_a_budget_change_that_call_each_other_do_not_deadlock(
    isolated: Any,
) -> None:
    """Thread A's cleanup evicts, and its on_evict makes a cache (the budget
    lock); thread B's new cache shrinks the others, and its on_evict asks for a
    cleanup (the cleanup lock). Both re-entries are supported; together they
    deadlocked for good."""
    isolated(
        """
        from memcache_ext import CacheManager
        m = CacheManager(max_total_bytes=100_000, cache_class=Cache)
        in_trim, in_resize = threading.Event(), threading.Event()
        armed = []
        def on_evict(key, value, reason):
            if not armed:
                return
            if reason == "trim" and not in_trim.is_set():  # thread A, in its cleanup
                in_trim.set()
                in_resize.wait(5)
                m.create_cache("z", maxsize=None)
            elif reason == "bytes" and not in_resize.is_set():  # thread B, in create_cache
                in_resize.set()
                in_trim.wait(5)
                m.cleanup()
        x = m.create_cache("x", maxsize=None, on_evict=on_evict)
        for i in range(1000):
            x[i] = b"x" * 90
        armed.append(True)
        a = threading.Thread(target=m.cleanup)
        b = threading.Thread(target=m.create_cache, args=("y",), kwargs={"maxsize": None})
        a.start(); b.start(); a.join(20); b.join(20)
        assert not a.is_alive() and not b.is_alive(), "deadlock"
        assert set(m.caches()) == {"x", "y", "z"}
        assert sum(c.max_bytes for c in m.caches().values()) == 100_000
    """,
        timeout=60,
    )


def test_stats_before_the_first_cache_does_not_fix_the_baseline(cache_cls: type) -> None:
    """A /memory/stats read or a scrape during start-up measured the baseline
    then (20 MB), and the caches got the headroom above it, not above the RSS
    when they were made (300 MB): 195 MB of budget instead of 55."""
    rss = FakeRss(20 * MB)
    m = CacheManager(memory_limit_mb=512, rss=rss, cache_class=cache_cls)
    early = m.stats()["budget"]
    assert early["total_bytes"] is None and early["source"].startswith("pending")
    rss.value = 300 * MB
    m.create_cache("users", maxsize=None)
    budget = m.stats()["budget"]
    assert budget["baseline_rss_bytes"] == 300 * MB
    assert budget["total_bytes"] == int(0.5 * (int(0.8 * 512 * MB) - 300 * MB))


def test_limits_and_totals_past_the_address_space_are_clear_errors(cache_cls: type) -> None:
    """A total past sys.maxsize failed at the first create_cache, naming a max_bytes
    the caller never passed; a 1e-9 MB limit was a 0-byte "configured" limit."""
    for kw, message in (
        ({"max_total_bytes": 2**63}, "max_total_bytes must be <="),
        ({"memory_limit_mb": 1e300}, "memory_limit_mb must be from 1 byte to"),
        ({"memory_limit_mb": 1e-9}, "memory_limit_mb must be from 1 byte to"),
        ({"memory_limit_mb": 100, "baseline_mb": 1e300}, "baseline_mb must be from 1 byte to"),
    ):
        with pytest.raises(ValueError, match=message):
            CacheManager(cache_class=cache_cls, **kw)


def test_names_and_reasons_are_checked(cache_cls: type) -> None:
    m = make(cache_cls)
    with pytest.raises(TypeError, match="reason must be a str"):
        m.cleanup(reason=123)  # type: ignore[arg-type]  # deliberately wrong
    with pytest.raises(TypeError, match="reason must be a str or None"):
        m.cleanup_steps(reason=123)  # type: ignore[arg-type]  # at the call, not at next()
    with pytest.raises(ValueError, match="fraction"):
        m.cleanup_steps("forced", fraction=7.0)
    with pytest.raises(TypeError, match="name must be a non-empty str"):
        m.register_stats_source(5, dict)  # type: ignore[arg-type]  # deliberately wrong
    assert m.stats()["cleanup_count"] == 0
