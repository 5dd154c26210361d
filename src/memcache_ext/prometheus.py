"""Prometheus metrics (extra ``[prometheus]``), computed at scrape time.

    from prometheus_client import REGISTRY
    from memcache_ext.prometheus import MemcacheCollector, metrics_app

    REGISTRY.register(MemcacheCollector(cache_manager))   # the default registry
    app.mount("/metrics", metrics_app())                  # serves REGISTRY

or, on FastAPI, a plain route (no ``/metrics`` -> ``/metrics/`` redirect)::

    app.include_router(metrics_router(registry, dependencies=[...]))

Nothing is counted on the request path: every figure is read from the
manager, its caches, ``gc_stats`` and an optional request monitor when
Prometheus scrapes. Metric families (prefix ``memcache_ext_``):

==================================================  =======  ======================
name                                                type     labels
==================================================  =======  ======================
cache_hits_total / cache_misses_total               counter  cache
cache_lookups_total                                 counter  cache
cache_evictions_total                               counter  cache, reason
cache_expirations_total / cache_rejected_total      counter  cache
cache_entries / cache_max_entries                   gauge    cache
cache_bytes / cache_max_bytes                       gauge    cache
process_resident_memory_bytes                       gauge
memory_limit_bytes / memory_high_water_bytes        gauge
memory_limit_info                                   gauge    source (value 1)
memory_cache_budget_bytes                           gauge
memory_baseline_bytes                               gauge
cleanups_total                                      counter
cleanup_accounted_freed_bytes_total                 counter
cleanup_rss_freed_bytes_total                       counter
cleanup_evicted_entries_total                       counter
gc_collections_total                                counter  generation
gc_collected_objects_total                          counter  generation
gc_uncollectable_objects_total                      counter  generation
gc_pause_seconds_total                              counter  generation
gc_pause_max_seconds                                gauge    generation
http_requests_total                                 counter  route
http_high_memory_requests_total                     counter  route
http_request_duration_seconds_total                 counter  route
http_request_max_memory_delta_bytes                 gauge    route
guard_shed_requests_total                           counter
guard_shed_episodes_total                           counter
guard_shedding                                      gauge
guard_body_rejected_total                           counter
guard_memory_errors_total                           counter
guard_in_flight_requests                            gauge
loop_stall_max_seconds                              gauge
loop_stalls_over_10ms_total                         counter
tier_hits_total / tier_misses_total                 counter  namespace, tier
tier_redis_errors_total                             counter  namespace, kind
tier_breaker_transitions_total                      counter  namespace, to
tier_invalidations_total                            counter  namespace, event
tier_<counter>_total (the other redis.COUNTERS)     counter  namespace
tier_breaker_state                                  gauge    namespace, state
tier_breaker_state_seconds                          gauge    namespace
tier_connected / tier_channel_state_seconds         gauge    namespace
tier_local_bypassed / tier_max_stale_seconds        gauge    namespace
tier_listener_lag_seconds / _lag_max_seconds        gauge    namespace
tier_pending_invalidations                          gauge    namespace
==================================================  =======  ======================

``cache_max_*`` are only exported for caches that have that bound; the
budget and baseline only when the manager has a byte budget (see
``stats()["budget"]``); the ``guard_*`` families only with a ``guard``
(``MemoryGuard``), the ``loop_*`` ones only with a ``loop_monitor``
(``LoopStallMonitor``); the GC
families only when ``gc_stats`` is installed; the ``http_*`` families only
with a ``monitor`` (``MemoryMonitorMiddleware(...).monitor`` or a shared
``RequestMemoryMonitor``; label values are route templates, so their number is
bounded by the app's routes); the ``tier_*`` families only with ``tiers``
(Redis tiers, ``TieredCache``/``AsyncTieredCache``, read at each scrape, so a
live view such as ``dict.values()`` follows tiers created later). For a tier:
``tier`` is ``local`` or ``redis``; ``kind`` one of ``redis.ERROR_KINDS``
(timeouts and connection errors open the breaker); ``to`` and ``state`` one of
``redis.BREAKER_STATES`` (``state`` is one-hot: 1 for the current one);
``event`` is ``published``, ``received``, ``ignored_own``, ``ignored_old``
(older than the version seen), ``dropped`` (not queued, ``max_pending``
reached: a namespace clear instead) or ``unparseable``; ``tier_connected`` is 1
while the invalidation channel is up, and ``tier_channel_state_seconds`` how
long it has been up or down.

The cleanup byte counters are accumulated by the collector from the manager's
event history as it sees new events; events pushed out of the bounded history
between two scrapes (more than ``history`` cleanups in one scrape interval)
are counted in ``cleanups_total`` but their bytes are not.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence
from typing import Any, Optional, Union

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from ._constants import MIB
from ._stats import EVICTION_REASONS
from .asgi import RequestMemoryMonitor
from .cleanup import LoopStallMonitor
from .gcstats import GCStats, gc_stats
from .guard import MemoryGuard
from .manager import CacheManager, ManagerStats, manager_or_default

__all__ = ["MemcacheCollector", "register", "metrics_app", "metrics_router"]

PREFIX = "memcache_ext"
#: The reasons an eviction is counted under (expiry has its own family).
_EVICTED = tuple(r for r in EVICTION_REASONS if r != "expired")

Family = Union[CounterMetricFamily, GaugeMetricFamily]

#: Redis tier counters shown as one labelled family: name -> (family, label value).
#: ("", "") drops a counter that another family already covers (the total of errors).
_TIER_GROUPED: dict[str, tuple[str, str]] = {
    "local_hits": ("tier_hits", "local"),
    "remote_hits": ("tier_hits", "redis"),
    "local_misses": ("tier_misses", "local"),
    "remote_misses": ("tier_misses", "redis"),
    "errors_timeout": ("tier_redis_errors", "timeout"),
    "errors_connection": ("tier_redis_errors", "connection"),
    "errors_response": ("tier_redis_errors", "response"),
    "errors_other": ("tier_redis_errors", "other"),
    "redis_errors": ("", ""),
    "breaker_opened": ("tier_breaker_transitions", "open"),
    "breaker_half_opened": ("tier_breaker_transitions", "half_open"),
    "breaker_closed": ("tier_breaker_transitions", "closed"),
    "invalidations_sent": ("tier_invalidations", "published"),
    "invalidations_received": ("tier_invalidations", "received"),
    "invalidations_ignored_own": ("tier_invalidations", "ignored_own"),
    "invalidations_ignored_old": ("tier_invalidations", "ignored_old"),
    "invalidations_dropped": ("tier_invalidations", "dropped"),
    "bad_messages": ("tier_invalidations", "unparseable"),
}


#: What Prometheus accepts as a metric name (the prefix starts every name).
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


class MemcacheCollector(Collector):
    """A ``prometheus_client`` collector for a CacheManager (default ``cache_manager``).

    ``gc``: the GCStats to export (default ``gc_stats``; exported only while
    installed). ``monitor``: a RequestMemoryMonitor for per-route figures.
    ``tiers``: Redis tiers whose ``stats()`` to export, iterated at each scrape.
    ``guard``: a MemoryGuard (load shedding, body limit); ``loop_monitor``: a
    LoopStallMonitor (event-loop stalls).
    """

    def __init__(
        self,
        manager: Optional[CacheManager] = None,
        *,
        gc: Optional[GCStats] = None,
        monitor: Optional[RequestMemoryMonitor] = None,
        tiers: Iterable[Any] = (),
        prefix: str = PREFIX,
        guard: Optional[MemoryGuard] = None,
        loop_monitor: Optional[LoopStallMonitor] = None,
    ) -> None:
        if not isinstance(prefix, str) or not _METRIC_NAME.fullmatch(prefix):
            raise ValueError(
                f"prefix must be a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*), got {prefix!r}"
            )
        self.manager = manager_or_default(manager)
        self.guard = guard
        self.loop_monitor = loop_monitor
        self.gc = gc if gc is not None else gc_stats
        self.monitor = monitor
        self.tiers = tiers
        self.prefix = prefix
        self._lock = threading.Lock()
        self._seen_cleanups = 0
        self._freed_accounted = 0
        self._freed_rss = 0
        self._evicted = 0

    def _name(self, name: str) -> str:
        return f"{self.prefix}_{name}"

    def _families(self) -> dict[str, Family]:
        n = self._name
        c, g = CounterMetricFamily, GaugeMetricFamily
        fams: dict[str, Family] = {
            "hits": c(n("cache_hits"), "Cache lookups that found a live entry", labels=["cache"]),
            "misses": c(
                n("cache_misses"),
                "Cache lookups that found nothing (or an expired entry)",
                labels=["cache"],
            ),
            "lookups": c(
                n("cache_lookups"),
                "Counted lookups, hits + misses (get, [], setdefault, get_or_set; "
                "`in` and peek count nothing)",
                labels=["cache"],
            ),
            "evictions": c(
                n("cache_evictions"),
                "Entries evicted, by reason (capacity, bytes, trim)",
                labels=["cache", "reason"],
            ),
            "expirations": c(
                n("cache_expirations"), "Entries removed because their TTL passed", labels=["cache"]
            ),
            "rejected": c(
                n("cache_rejected"), "Entries refused as larger than max_bytes", labels=["cache"]
            ),
            "entries": g(n("cache_entries"), "Entries in the cache", labels=["cache"]),
            "max_entries": g(
                n("cache_max_entries"), "Entry bound of the cache (maxsize)", labels=["cache"]
            ),
            "bytes": g(
                n("cache_bytes"),
                "Bytes accounted by the cache (deep_sizeof of its entries)",
                labels=["cache"],
            ),
            "max_bytes": g(
                n("cache_max_bytes"), "Byte bound of the cache (max_bytes)", labels=["cache"]
            ),
            "rss": g(n("process_resident_memory_bytes"), "Resident memory of the process"),
            "limit": g(n("memory_limit_bytes"), "Memory limit the manager keeps the process under"),
            "high_water": g(n("memory_high_water_bytes"), "RSS above which a cleanup runs"),
            "limit_info": g(
                n("memory_limit_info"), "Where the memory limit came from", labels=["source"]
            ),
            "cleanups": c(n("cleanups"), "Cleanups run by the manager"),
            "freed_accounted": c(
                n("cleanup_accounted_freed_bytes"),
                "Cache bytes released by cleanups (the caches' accounting)",
            ),
            "freed_rss": c(
                n("cleanup_rss_freed_bytes"),
                "RSS drop measured around cleanups (negative drops count as 0)",
            ),
            "evicted": c(n("cleanup_evicted_entries"), "Entries trimmed by cleanups"),
            "budget": g(
                n("memory_cache_budget_bytes"),
                "Byte budget the caches share (from the limit, or max_total_bytes)",
            ),
            "baseline": g(n("memory_baseline_bytes"), "Baseline RSS the budget is counted from"),
        }
        if self.guard is not None:
            fams.update(
                {
                    "guard_shed": c(
                        n("guard_shed_requests"),
                        "Requests answered 503 because RSS was above the critical mark",
                    ),
                    "guard_episodes": c(n("guard_shed_episodes"), "Times load shedding started"),
                    "guard_shedding": g(n("guard_shedding"), "1 while new requests are shed"),
                    "guard_413": c(
                        n("guard_body_rejected"), "Requests answered 413 (body over the limit)"
                    ),
                    "guard_oom": c(
                        n("guard_memory_errors"), "Requests that raised MemoryError (answered 503)"
                    ),
                    "guard_in_flight": g(n("guard_in_flight_requests"), "Requests in flight"),
                }
            )
        if self.loop_monitor is not None:
            fams.update(
                {
                    "loop_max": g(
                        n("loop_stall_max_seconds"),
                        "The longest the event loop ran a timer late (since start)",
                    ),
                    "loop_10ms": c(
                        n("loop_stalls_over_10ms"), "Event-loop checks that ran 10 ms late or more"
                    ),
                }
            )
        if self.gc.installed:
            fams.update(
                {
                    "gc_collections": c(
                        n("gc_collections"), "Garbage collections", labels=["generation"]
                    ),
                    "gc_collected": c(
                        n("gc_collected_objects"),
                        "Objects freed by the collector",
                        labels=["generation"],
                    ),
                    "gc_uncollectable": c(
                        n("gc_uncollectable_objects"),
                        "Objects the collector found uncollectable",
                        labels=["generation"],
                    ),
                    "gc_pause": c(
                        n("gc_pause_seconds"),
                        "Time spent in garbage collections",
                        labels=["generation"],
                    ),
                    "gc_pause_max": g(
                        n("gc_pause_max_seconds"),
                        "Longest garbage-collection pause",
                        labels=["generation"],
                    ),
                }
            )
        if self.monitor is not None:
            fams.update(
                {
                    "http_requests": c(
                        n("http_requests"),
                        "HTTP requests seen by the memory monitor",
                        labels=["route"],
                    ),
                    "http_high": c(
                        n("http_high_memory_requests"),
                        "HTTP requests that ended with RSS above the monitor's limit",
                        labels=["route"],
                    ),
                    "http_duration": c(
                        n("http_request_duration_seconds"),
                        "Total time spent in requests",
                        labels=["route"],
                    ),
                    "http_delta": g(
                        n("http_request_max_memory_delta_bytes"),
                        "Largest RSS growth during one request",
                        labels=["route"],
                    ),
                }
            )
        if self.tiers:
            fams.update(self._tier_families())
        return fams

    def _tier_families(self) -> dict[str, Family]:
        from .redis import COUNTERS

        n = self._name
        c, g = CounterMetricFamily, GaugeMetricFamily
        ns = ["namespace"]
        fams: dict[str, Family] = {
            "tier_hits": c(
                n("tier_hits"), "Redis tier: lookups answered, by tier", labels=[*ns, "tier"]
            ),
            "tier_misses": c(
                n("tier_misses"), "Redis tier: lookups not answered, by tier", labels=[*ns, "tier"]
            ),
            "tier_redis_errors": c(
                n("tier_redis_errors"),
                "Redis tier: failed Redis calls, by kind (timeout and connection open the breaker)",
                labels=[*ns, "kind"],
            ),
            "tier_breaker_transitions": c(
                n("tier_breaker_transitions"),
                "Redis tier: breaker transitions, by the state entered",
                labels=[*ns, "to"],
            ),
            "tier_invalidations": c(
                n("tier_invalidations"),
                "Redis tier: invalidation messages, by what happened to them",
                labels=[*ns, "event"],
            ),
        }
        for name in COUNTERS:
            if name not in _TIER_GROUPED:
                fams[f"tier_{name}"] = c(
                    n(f"tier_{name}"), f"Redis tier: {name.replace('_', ' ')}", labels=ns
                )
        gauges = {
            "tier_breaker_state": (
                "Redis tier: 1 for the breaker's current state (closed, open, half_open)",
                [*ns, "state"],
            ),
            "tier_breaker_state_seconds": ("Redis tier: seconds in the breaker's state", ns),
            "tier_connected": ("Redis tier: 1 while the invalidation channel is up", ns),
            "tier_channel_state_seconds": (
                "Redis tier: seconds since the invalidation channel went up or down",
                ns,
            ),
            "tier_local_bypassed": (
                "Redis tier: 1 while the local tier is dropped and bypassed (max_stale ran out)",
                ns,
            ),
            "tier_max_stale_seconds": (
                "Redis tier: longest local entries are served once the channel is lost",
                ns,
            ),
            "tier_listener_lag_seconds": (
                "Redis tier: publish-to-apply delay of the last invalidation received",
                ns,
            ),
            "tier_listener_lag_max_seconds": (
                "Redis tier: largest publish-to-apply delay in the last minute",
                ns,
            ),
            "tier_pending_invalidations": (
                "Redis tier: keys to delete in Redis once it answers again",
                ns,
            ),
        }
        for key, (doc, labels) in gauges.items():
            fams[key] = g(n(key), doc, labels=labels)
        return fams

    def describe(self) -> Iterable[Metric]:
        """The families without samples (lets a registry check names without a scrape)."""
        return list(self._families().values())

    def collect(self) -> Iterable[Metric]:
        fams = self._families()
        st = self.manager.stats()
        for name, entry in st["caches"].items():
            cs: dict[str, Any] = dict(entry)  # any cache class's stats, or an error
            if "error" in cs and "size" not in cs:
                continue
            fams["hits"].add_metric([name], cs.get("hits", 0))
            fams["misses"].add_metric([name], cs.get("misses", 0))
            fams["lookups"].add_metric(
                [name], cs.get("lookups", cs.get("hits", 0) + cs.get("misses", 0))
            )
            by_reason = cs.get("evictions_by_reason") or {}
            for reason in _EVICTED:
                fams["evictions"].add_metric([name, reason], by_reason.get(reason, 0))
            fams["expirations"].add_metric([name], cs.get("expirations", 0))
            fams["rejected"].add_metric([name], cs.get("rejected", 0))
            fams["entries"].add_metric([name], cs.get("size", 0))
            if cs.get("maxsize") is not None:
                fams["max_entries"].add_metric([name], cs["maxsize"])
            fams["bytes"].add_metric([name], cs.get("nbytes", 0))
            if cs.get("max_bytes") is not None:
                fams["max_bytes"].add_metric([name], cs["max_bytes"])
        fams["rss"].add_metric([], st["process"]["rss_bytes"])
        fams["limit"].add_metric([], st["limit"]["bytes"])
        fams["high_water"].add_metric([], st["limit"]["high_water_bytes"])
        fams["limit_info"].add_metric([st["limit"]["source"]], 1)
        budget = st["budget"]
        if budget["total_bytes"] is not None:
            fams["budget"].add_metric([], budget["total_bytes"])
        if budget["baseline_rss_bytes"] is not None:
            fams["baseline"].add_metric([], budget["baseline_rss_bytes"])
        if self.guard is not None:
            gs = self.guard.stats()
            fams["guard_shed"].add_metric([], gs["shed_total"])
            fams["guard_episodes"].add_metric([], gs["shed_episodes"])
            fams["guard_shedding"].add_metric([], 1 if gs["shedding"] else 0)
            fams["guard_413"].add_metric([], gs["body_rejected_total"])
            fams["guard_oom"].add_metric([], gs["memory_errors_total"])
            fams["guard_in_flight"].add_metric([], gs["in_flight"])
        if self.loop_monitor is not None:
            ls = self.loop_monitor.stats()
            fams["loop_max"].add_metric([], ls["longest_stall"])
            fams["loop_10ms"].add_metric([], ls["over_10ms"])
        self._account_cleanups(st)
        fams["cleanups"].add_metric([], st["cleanup_count"])
        fams["freed_accounted"].add_metric([], self._freed_accounted)
        fams["freed_rss"].add_metric([], self._freed_rss)
        fams["evicted"].add_metric([], self._evicted)
        if "gc_collections" in fams:
            snap = self.gc.snapshot()
            for gen, row in enumerate(snap["generations"]):
                label = [str(gen)]
                fams["gc_collections"].add_metric(label, row["collections"])
                fams["gc_collected"].add_metric(label, row["collected"])
                fams["gc_uncollectable"].add_metric(label, row["uncollectable"])
                fams["gc_pause"].add_metric(label, row["pause_total_s"])
                fams["gc_pause_max"].add_metric(label, row["pause_max_s"])
        if "http_requests" in fams and self.monitor is not None:
            for route in self.monitor.routes():
                label = [route["route"]]
                fams["http_requests"].add_metric(label, route["requests"])
                fams["http_high"].add_metric(label, route["high_memory"])
                fams["http_duration"].add_metric(label, route["total_duration_s"])
                fams["http_delta"].add_metric(label, route["max_delta_mb"] * MIB)
        if "tier_connected" in fams:
            self._collect_tiers(fams)
        return list(fams.values())

    def _collect_tiers(self, fams: dict[str, Family]) -> None:
        from .redis import BREAKER_STATES, COUNTERS

        for tier in list(self.tiers):
            st: dict[str, Any] = dict(tier.stats())
            ns = st["namespace"]
            label = [ns]
            for name in COUNTERS:
                grouped = _TIER_GROUPED.get(name)
                if grouped is None:
                    fams[f"tier_{name}"].add_metric(label, st[name])
                elif grouped[0]:
                    fams[grouped[0]].add_metric([ns, grouped[1]], st[name])
            for state in BREAKER_STATES:
                fams["tier_breaker_state"].add_metric([ns, state], int(st["breaker"] == state))
            fams["tier_breaker_state_seconds"].add_metric(label, st["breaker_state_seconds"])
            fams["tier_connected"].add_metric(label, 1 if st["connected"] else 0)
            fams["tier_channel_state_seconds"].add_metric(label, st["channel_state_seconds"])
            fams["tier_local_bypassed"].add_metric(label, 1 if st["local_bypassed"] else 0)
            fams["tier_max_stale_seconds"].add_metric(label, st["max_stale"])
            lag = st["listener_lag_seconds"]
            fams["tier_listener_lag_seconds"].add_metric(label, 0.0 if lag is None else lag)
            fams["tier_listener_lag_max_seconds"].add_metric(label, st["listener_lag_max_seconds"])
            fams["tier_pending_invalidations"].add_metric(label, st["pending_invalidations"])

    def _account_cleanups(self, st: ManagerStats) -> None:
        """Add the bytes of cleanup events not seen by an earlier scrape."""
        with self._lock:
            count = st["cleanup_count"]
            new = count - self._seen_cleanups
            if new <= 0:
                return
            events = st["cleanups"][-new:] if new <= len(st["cleanups"]) else st["cleanups"]
            for ev in events:
                self._freed_accounted += max(0, int(ev.get("accounted_bytes_released", 0)))
                self._freed_rss += max(0, int(ev.get("rss_freed_bytes", 0)))
                self._evicted += max(0, int(ev.get("entries_evicted", 0)))
            self._seen_cleanups = count


def register(
    manager: Any = None, registry: CollectorRegistry = REGISTRY, **kwargs: Any
) -> MemcacheCollector:
    """Build a MemcacheCollector and register it (default: the global REGISTRY)."""
    collector = MemcacheCollector(manager, **kwargs)
    registry.register(collector)
    return collector


def metrics_app(
    registry: Optional[CollectorRegistry] = None, *, manager: Any = None, **kwargs: Any
) -> Any:
    """An ASGI app serving the metrics of ``registry`` (``app.mount("/metrics", ...)``).

    Without ``registry``: the global REGISTRY, or, when ``manager`` is given, a
    new registry with a MemcacheCollector for it (``kwargs`` go to the collector).
    """
    from prometheus_client import make_asgi_app

    if registry is None:
        if manager is None and not kwargs:
            registry = REGISTRY
        else:
            registry = CollectorRegistry()
            register(manager, registry, **kwargs)
    return make_asgi_app(registry)


def metrics_router(
    registry: Optional[CollectorRegistry] = None,
    *,
    path: str = "/metrics",
    dependencies: Optional[Sequence[Any]] = None,
    include_in_schema: bool = False,
) -> Any:
    """A FastAPI APIRouter with ``GET {path}`` in the Prometheus text format.

    ``dependencies`` protect it like any route. Unlike a mounted app, it
    answers ``/metrics`` itself (no redirect to ``/metrics/``).
    """
    from fastapi import APIRouter, Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    reg = registry if registry is not None else REGISTRY
    router = APIRouter(dependencies=list(dependencies or ()))

    @router.get(path, include_in_schema=include_in_schema, response_class=Response)
    def metrics() -> Response:
        return Response(generate_latest(reg), media_type=CONTENT_TYPE_LATEST)

    return router
