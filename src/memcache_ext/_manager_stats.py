"""The shape of ``CacheManager.stats()`` (one TypedDict per part) and its per-cache part.

``fastapi.py`` generates the ``/memory/stats`` response models from these.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Optional, TypedDict, Union

from ._budget import BudgetInfo
from ._cleanup_pass import CleanupEventDict
from ._constants import MIB
from ._stats import CacheStats

__all__ = [
    "StatsSources",
    "ManagedCacheStats",
    "CacheError",
    "ProcessMemory",
    "MemoryLimitInfo",
    "CacheTotals",
    "ManagerStats",
    "cache_stats",
]


class ManagedCacheStats(CacheStats, total=False):
    """One cache's statistics (``cache.stats()``) plus what the manager adds."""

    idle_seconds: Annotated[float, "Since the manager last saw it used"]


class CacheError(TypedDict):
    """In place of a cache's statistics when its ``stats()`` raised."""

    error: Annotated[str, "Set when the cache's stats() raised"]


class ProcessMemory(TypedDict):
    """The process's resident memory."""

    rss_bytes: Annotated[int, "Resident set size in bytes"]
    rss_mb: Annotated[float, "Resident set size in MiB"]
    rss_source: Annotated[str, 'Where RSS is read from: "/proc/self/statm" or "psutil"']
    limit_fraction: Annotated[Optional[float], "RSS / memory limit"]


class MemoryLimitInfo(TypedDict):
    """The memory limit the manager keeps the process under, and where it came from."""

    bytes: int
    mb: float
    source: Annotated[
        str,
        'e.g. "configured", "cgroup v2 /sys/fs/cgroup/.../memory.max" or "physical memory (...)"',
    ]
    high_water: Annotated[float, "Fraction of the limit where a cleanup starts"]
    low_water: Annotated[float, "Fraction of the limit a cleanup aims at"]
    high_water_bytes: int
    low_water_bytes: int


class CacheTotals(TypedDict):
    """The caches' statistics summed."""

    caches: int
    entries: int
    nbytes: int
    mb: float
    hits: int
    misses: int
    lookups: Annotated[int, "hits + misses: the lookups the hit rate is computed over"]
    hit_rate: float
    evictions: int
    expirations: int
    rejected: int


class ManagerStats(TypedDict):
    """``CacheManager.stats()``."""

    process: ProcessMemory
    limit: MemoryLimitInfo
    max_total_bytes: Optional[int]
    budget: Annotated[BudgetInfo, "How the caches' byte bounds follow from the limit"]
    cleanup_fraction: float
    min_interval: float
    caches: dict[str, Union[ManagedCacheStats, CacheError]]
    totals: CacheTotals
    sources: Annotated[dict[str, Any], "Registered sources (e.g. Redis tiers), by name"]
    cleanups: Annotated[list[CleanupEventDict], "Recent cleanup events, oldest first"]
    cleanup_count: int
    cleanups_dropped: int
    cleanups_skipped_interval: int


_SUMMED = ("nbytes", "hits", "misses", "evictions", "expirations", "rejected")


def cache_stats(
    caches: Sequence[tuple[str, Any, float]],
) -> tuple[dict[str, Union[ManagedCacheStats, CacheError]], CacheTotals]:
    """Every cache's stats and their totals, from ``(name, cache, idle_seconds)``.

    A cache whose ``stats()`` raises is reported as ``{"error": ...}`` and
    left out of the totals; one broken cache never hides the rest.
    """
    out: dict[str, Union[ManagedCacheStats, CacheError]] = {}
    sums = dict.fromkeys(("caches", "entries", *_SUMMED), 0)
    for name, cache, idle in caches:
        try:
            st: ManagedCacheStats = dict(cache.stats())  # type: ignore[assignment]  # any cache
        except Exception as exc:  # noqa: BLE001 - reported in place of its stats
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        st["idle_seconds"] = max(0.0, idle)
        out[name] = st
        sums["caches"] += 1
        counts: dict[str, Any] = dict(st)  # a cache class may report fewer fields
        sums["entries"] += counts.get("size", 0)
        for k in _SUMMED:
            sums[k] += counts.get(k, 0)
    lookups = sums["hits"] + sums["misses"]
    totals: CacheTotals = {
        "caches": sums["caches"],
        "entries": sums["entries"],
        "nbytes": sums["nbytes"],
        "mb": sums["nbytes"] / MIB,
        "hits": sums["hits"],
        "misses": sums["misses"],
        "lookups": lookups,
        "hit_rate": sums["hits"] / lookups if lookups else 0.0,
        "evictions": sums["evictions"],
        "expirations": sums["expirations"],
        "rejected": sums["rejected"],
    }
    return out, totals


class StatsSources:
    """Named callables whose results ``CacheManager.stats()`` reports under ``sources``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: dict[str, Callable[[], Any]] = {}

    def register(self, name: str, source: Callable[[], Any]) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"a stats source's name must be a non-empty str, got {name!r}")
        if not callable(source):
            raise TypeError(f"source must be callable, not {type(source).__name__}")
        with self._lock:
            self._sources[name] = source

    def unregister(self, name: str) -> bool:
        with self._lock:
            return self._sources.pop(name, None) is not None

    def collect(self) -> dict[str, Any]:
        """Every source's answer; one that raises is reported as ``{"error": ...}``."""
        with self._lock:
            sources = list(self._sources.items())
        out: dict[str, Any] = {}
        for name, source in sources:
            try:
                out[name] = source()
            except Exception as exc:  # noqa: BLE001 - one broken source never hides the rest
                out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        return out
