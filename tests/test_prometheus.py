"""memcache_ext.prometheus: the scrape-time collector and its FastAPI helpers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from memcache_ext import CacheManager, GCStats
from memcache_ext.prometheus import metrics_app, register

MB = 2**20


def _manager() -> CacheManager:
    # No derived byte budget: "pages" keeps no byte bound (the budget has its own test).
    m = CacheManager(memory_limit_mb=512, rss=lambda: 300 * MB, min_interval=0, cache_share=None)
    users = m.create_cache("users", maxsize=2, ttl=60, max_bytes=100_000)
    # fresh objects only the cache refers to, so deep_sizeof charges them
    users["a"] = bytearray(1000)
    users["b"] = bytearray(1000)
    users["c"] = bytearray(1000)  # evicts "a" (capacity)
    users.get("b")
    users.get("a")  # miss
    m.create_cache("pages", maxsize=None)
    return m


def scrape(registry: CollectorRegistry) -> dict[str, Any]:
    text = generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(fam: Any, **labels: str) -> list[float]:
    return [s.value for s in fam.samples if all(s.labels.get(k) == v for k, v in labels.items())]


def test_metric_names_types_and_values() -> None:
    gcs = GCStats().install()
    try:
        reg = CollectorRegistry()
        register(_manager(), reg, gc=gcs)
        fams = scrape(reg)
    finally:
        gcs.uninstall()
    counters = {
        "memcache_ext_cache_hits",
        "memcache_ext_cache_misses",
        "memcache_ext_cache_lookups",
        "memcache_ext_cache_evictions",
        "memcache_ext_cache_expirations",
        "memcache_ext_cache_rejected",
        "memcache_ext_cleanups",
        "memcache_ext_cleanup_accounted_freed_bytes",
        "memcache_ext_cleanup_rss_freed_bytes",
        "memcache_ext_gc_collections",
        "memcache_ext_gc_pause_seconds",
    }
    gauges = {
        "memcache_ext_cache_entries",
        "memcache_ext_cache_bytes",
        "memcache_ext_cache_max_bytes",
        "memcache_ext_cache_max_entries",
        "memcache_ext_process_resident_memory_bytes",
        "memcache_ext_memory_limit_bytes",
        "memcache_ext_gc_pause_max_seconds",
    }
    for name in counters:
        assert fams[name].type == "counter", name
        assert all(s.name == name + "_total" for s in fams[name].samples), name
    for name in gauges:
        assert fams[name].type == "gauge", name
    assert samples(fams["memcache_ext_cache_hits"], cache="users") == [1]
    assert samples(fams["memcache_ext_cache_misses"], cache="users") == [1]
    assert samples(fams["memcache_ext_cache_lookups"], cache="users") == [2]
    assert samples(fams["memcache_ext_cache_evictions"], cache="users", reason="capacity") == [1]
    assert samples(fams["memcache_ext_cache_evictions"], cache="users", reason="trim") == [0]
    assert samples(fams["memcache_ext_cache_entries"], cache="users") == [2]
    assert samples(fams["memcache_ext_cache_bytes"], cache="users")[0] >= 2000
    assert samples(fams["memcache_ext_cache_max_bytes"], cache="users") == [100_000]
    assert samples(fams["memcache_ext_cache_max_bytes"], cache="pages") == []  # no bound
    assert samples(fams["memcache_ext_process_resident_memory_bytes"]) == [300 * MB]
    assert samples(fams["memcache_ext_memory_limit_bytes"]) == [512 * MB]
    assert samples(fams["memcache_ext_memory_limit_info"], source="configured") == [1]
    assert len(samples(fams["memcache_ext_gc_collections"])) == 3  # one per generation


def test_computed_at_scrape_time_and_cleanup_bytes_not_double_counted() -> None:
    m = _manager()
    reg = CollectorRegistry()
    register(m, reg)
    first = scrape(reg)
    assert samples(first["memcache_ext_cleanups"]) == [0]
    users = m.get_cache("users")
    before = users.nbytes
    m.cleanup(collect=False)
    second = scrape(reg)
    assert samples(second["memcache_ext_cleanups"]) == [1]
    freed = samples(second["memcache_ext_cleanup_accounted_freed_bytes"])[0]
    assert freed == before - users.nbytes > 0
    assert samples(second["memcache_ext_cache_evictions"], cache="users", reason="trim") == [1]
    third = scrape(reg)  # no new cleanup: the counter does not move
    assert samples(third["memcache_ext_cleanup_accounted_freed_bytes"]) == [freed]


def test_gc_families_only_when_installed() -> None:
    reg = CollectorRegistry()
    register(_manager(), reg, gc=GCStats())
    assert "memcache_ext_gc_collections" not in scrape(reg)


def test_route_metrics_with_a_monitor() -> None:
    pytest.importorskip("fastapi")
    from memcache_ext.fastapi import RequestMemoryMonitor

    mon = RequestMemoryMonitor(100)
    route = type("R", (), {"path": "/users/{user_id}"})()
    mon.record({"route": route}, 0, 200 * MB, 0.5, 200)
    mon.record({"route": route}, 0, 0, 0.25, 200)
    reg = CollectorRegistry()
    register(_manager(), reg, monitor=mon)
    fams = scrape(reg)
    assert samples(fams["memcache_ext_http_requests"], route="/users/{user_id}") == [2]
    assert samples(fams["memcache_ext_http_high_memory_requests"]) == [1]
    assert samples(fams["memcache_ext_http_request_duration_seconds"]) == [0.75]
    assert samples(fams["memcache_ext_http_request_max_memory_delta_bytes"]) == [200 * MB]


def test_duplicate_registration_detected_without_scrape() -> None:
    reg = CollectorRegistry(auto_describe=True)
    register(_manager(), reg)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        register(_manager(), reg)


def test_collector_survives_broken_cache_stats() -> None:
    class Broken:
        def stats(self) -> Any:
            raise RuntimeError("nope")

        nbytes = 0

    m = _manager()
    m._caches["users"].cache = Broken()  # a cache whose stats() raises
    reg = CollectorRegistry()
    register(m, reg)
    fams = scrape(reg)
    assert samples(fams["memcache_ext_cache_hits"], cache="users") == []
    assert samples(fams["memcache_ext_cache_entries"], cache="pages") == [0]


def _get(app: Any, path: str, **kw: Any) -> Any:
    httpx = pytest.importorskip("httpx")

    async def go() -> Any:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.get(path, **kw)

    return asyncio.run(go())


def test_metrics_app_mounted_on_fastapi() -> None:
    fastapi = pytest.importorskip("fastapi")
    app = fastapi.FastAPI()
    app.mount("/metrics", metrics_app(manager=_manager()))
    r = _get(app, "/metrics/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'memcache_ext_cache_hits_total{cache="users"} 1.0' in r.text


def test_metrics_router_with_dependency() -> None:
    fastapi = pytest.importorskip("fastapi")
    from memcache_ext.prometheus import metrics_router

    def require_key(x_key: str | None = fastapi.Header(None)) -> None:
        if x_key != "k":
            raise fastapi.HTTPException(401)

    reg = CollectorRegistry()
    register(_manager(), reg)
    app = fastapi.FastAPI()
    app.include_router(metrics_router(reg, dependencies=[fastapi.Depends(require_key)]))
    assert _get(app, "/metrics").status_code == 401
    r = _get(app, "/metrics", headers={"x-key": "k"})
    assert r.status_code == 200 and "memcache_ext_cache_entries" in r.text
    assert "/metrics" not in app.openapi()["paths"]


def test_cleanup_counters_add_up_while_cleanups_and_scrapes_race(isolated: Any) -> None:
    """A cleanup appended its event and counted it in two steps, and stats()
    read the two at different times: a scrape between them counted an event
    twice or lost one (81,458 evicted against 81,456 true)."""
    isolated(
        """
        import time
        from memcache_ext import CacheManager
        from memcache_ext.prometheus import MemcacheCollector
        sys.setswitchinterval(1e-6)
        m = CacheManager(max_total_bytes=10**6, cache_class=Cache, history=10**6)
        c = m.create_cache("a", maxsize=None)
        collector = MemcacheCollector(m)
        stop = threading.Event()
        def cleaner():
            i = 0
            while not stop.is_set():
                i += 1
                c.update({(i, j): b"x" * (10 + i % 7) for j in range(4 + i % 5)})
                m.cleanup(collect=False)
        def scraper():
            while not stop.is_set():
                collector.collect()
        threads = [threading.Thread(target=cleaner), threading.Thread(target=scraper)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join()
        collector.collect()
        history = m.history
        assert len(history) == m.stats()["cleanup_count"] > 0
        assert collector._evicted == sum(e.entries_evicted for e in history)
        assert collector._freed_accounted == sum(e.accounted_bytes_released for e in history)
    """,
        timeout=60,
    )


@pytest.mark.parametrize("prefix", ["", "bad-prefix", "1x", 5])
def test_a_prefix_that_is_not_a_metric_name_is_refused(prefix: Any) -> None:
    """ "" made names start with "_"; prometheus_client rewrote the others."""
    from memcache_ext.prometheus import MemcacheCollector

    with pytest.raises(ValueError, match="prefix must be a metric name"):
        MemcacheCollector(CacheManager(memory_limit_mb=100), prefix=prefix)
