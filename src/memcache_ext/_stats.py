"""The shape of a cache's ``stats()``: field names, eviction reasons, rendering.

Both cache implementations build their statistics here, and every consumer
(the manager, ``/memory/stats``, the Prometheus collector) reads the fields
named by ``CacheStats``.
"""

from __future__ import annotations

from typing import Any, Optional, TypedDict

#: Reasons passed to ``on_evict`` (automatic removals only), in the order the
#: compiled core numbers them.
EVICTION_REASONS = ("capacity", "bytes", "expired", "trim")


class CacheStats(TypedDict):
    """What ``CLruCache.stats()`` and ``PyLruCache.stats()`` return."""

    size: int
    maxsize: Optional[int]
    nbytes: int
    max_bytes: Optional[int]
    hits: int
    misses: int
    lookups: int
    hit_rate: float
    evictions: int
    evictions_by_reason: dict[str, int]
    expirations: int
    rejected: int
    ttl: Optional[float]
    policy: str


def stats_dict(
    size: int,
    maxsize: Optional[int],
    nbytes: int,
    max_bytes: Optional[int],
    hits: int,
    misses: int,
    by_reason: dict[str, int],
    rejected: int,
    ttl: Optional[float],
    policy: str,
) -> CacheStats:
    """Build a ``CacheStats`` from a cache's counters."""
    lookups = hits + misses
    return {
        "size": size,
        "maxsize": maxsize,
        "nbytes": nbytes,
        "max_bytes": max_bytes,
        "hits": hits,
        "misses": misses,
        "lookups": lookups,
        "hit_rate": hits / lookups if lookups else 0.0,
        "evictions": by_reason["capacity"] + by_reason["bytes"] + by_reason["trim"],
        "evictions_by_reason": {r: by_reason[r] for r in ("capacity", "bytes", "trim")},
        "expirations": by_reason["expired"],
        "rejected": rejected,
        "ttl": ttl,
        "policy": policy,
    }


def repr_cache(name: str, items: list[tuple[Any, Any]], maxsize: Optional[int]) -> str:
    """``Name({k: v, ...}, maxsize=n)``: a cache's repr."""
    # a list, not a generator: see _core_py's docstring (a failed allocation)
    body = ", ".join([f"{k!r}: {v!r}" for k, v in items])
    return f"{name}({{{body}}}, maxsize={maxsize!r})"
