"""Every statistics dict has exactly the keys of its TypedDict (the models are made from them).

``/memory/stats``'s response models are generated from these TypedDicts
(``memcache_ext.fastapi.model_of``), so a key added to a dict and not to its
TypedDict, or the reverse, fails here before it reaches a client.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import typing
from typing import Any

import pytest

import memcache_ext
from memcache_ext import CacheManager, GCStats, PyLruCache
from memcache_ext._cleanup_pass import CleanupEvent, CleanupEventDict
from memcache_ext._manager_stats import CacheError, ManagedCacheStats, ManagerStats
from memcache_ext._version import __version__
from memcache_ext.asgi import RequestMemoryMonitor, RequestMonitorStats
from memcache_ext.cleanup import CleanupServiceStats, MemoryCleanupService
from memcache_ext.gcstats import GCSnapshot
from support import sample_manager


def assert_shape(value: Any, hint: Any, where: str = "value") -> None:
    """``value`` fits ``hint``: a TypedDict's keys exactly (optional ones may be absent),
    recursively through lists, dicts, Optional and unions of TypedDicts."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return assert_shape(value, args[0], where)
    if typing.is_typeddict(hint):
        assert isinstance(value, dict), f"{where}: {type(value).__name__}, not a dict"
        keys = set(value)
        missing = hint.__required_keys__ - keys
        extra = keys - hint.__required_keys__ - hint.__optional_keys__
        assert not missing and not extra, (
            f"{where} ({hint.__name__}): missing {missing}, not in the TypedDict {extra}"
        )
        for key, sub in typing.get_type_hints(hint, include_extras=True).items():
            if key in value:
                assert_shape(value[key], sub, f"{where}[{key!r}]")
    elif origin is list:
        for i, item in enumerate(value):
            assert_shape(item, args[0], f"{where}[{i}]")
    elif origin is dict:
        for k, item in value.items():
            assert_shape(item, args[1], f"{where}[{k!r}]")
    elif origin is typing.Union:
        if value is None and type(None) in args:
            return
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                assert_shape(value, option, where)
                return
            except AssertionError as exc:
                errors.append(str(exc))
        raise AssertionError(" / ".join(errors))


def _manager() -> CacheManager:
    return sample_manager(rss_mb=300)


def test_manager_stats() -> None:
    manager = _manager()
    manager.register_stats_source("extra", lambda: {"any": 1})
    assert_shape(manager.stats(), ManagerStats)


def test_a_broken_cache_reports_an_error_in_its_place() -> None:
    class Broken:
        def stats(self) -> dict[str, Any]:
            raise RuntimeError("no stats")

        def clear(self) -> None:
            pass

    # A limit well above this process's RSS: a limit below it is refused (the byte budget).
    manager = CacheManager(memory_limit_mb=4096, cache_class=lambda *a, **k: Broken())
    manager.create_cache("broken")
    st = manager.stats()
    assert_shape(st, ManagerStats)
    assert_shape(st["caches"]["broken"], CacheError)
    assert_shape(_manager().stats()["caches"]["users"], ManagedCacheStats)


def test_cleanup_event() -> None:
    event = CleanupEvent(time=1.0, reason="forced", rss_before=10, caches_trimmed=["a"])
    assert_shape(event.as_dict(), CleanupEventDict)


def test_gc_snapshot() -> None:
    with GCStats() as gcs:
        import gc

        gc.collect()
        assert_shape(gcs.snapshot(), GCSnapshot)


def test_request_monitor_stats() -> None:
    monitor = RequestMemoryMonitor(1)
    monitor.record({"method": "GET"}, 0, 10 * 2**20, 0.01, 200)
    st = monitor.stats()
    assert st["high_memory_requests"] and st["routes"]
    assert_shape(st, RequestMonitorStats)


def test_cleanup_service_stats() -> None:
    service = MemoryCleanupService(_manager(), interval=60)
    service.run_once()
    assert_shape(service.stats(), CleanupServiceStats)
    asyncio.run(service.stop())


def test_tier_stats() -> None:
    redis = pytest.importorskip("redis")
    from memcache_ext.redis import COUNTERS, TierCounters, TieredCache, TierStats

    # the client only gives connection settings: nothing connects before a call
    tier = TieredCache(PyLruCache(10), redis.Redis(port=1), "shapes", start=False)
    assert tuple(tier.counters()) == COUNTERS
    assert_shape(tier.counters(), TierCounters)
    assert_shape(tier.stats(), TierStats)


def test_the_response_model_is_made_from_the_typeddicts() -> None:
    pytest.importorskip("fastapi")
    from memcache_ext.fastapi import MemoryStats, MemoryStatsDict

    fields = set(MemoryStats.model_fields)
    assert fields == set(MemoryStatsDict.__annotations__) | set(ManagerStats.__annotations__)


def test_version_comes_from_the_package_metadata() -> None:
    assert __version__ == importlib.metadata.version("memcache-ext")
    assert memcache_ext.__version__ == __version__
