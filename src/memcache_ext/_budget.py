"""The manager's byte budget: from the memory limit to a ``max_bytes`` for each cache.

The arithmetic, all in bytes:

* ``high_water = high_water_fraction * limit`` (where cleanups start);
* ``headroom = high_water - baseline``, where ``baseline`` is the process's RSS
  before its caches hold anything (measured when the manager creates its first
  cache, or configured);
* ``total = cache_share * headroom`` (default share 0.5: half the room above
  the baseline goes to cached entries, the other half is left for the
  allocator's overhead on them, request handling and everything the caches
  cannot see); ``max_total_bytes`` replaces the derived total when given;
* the total is split over the caches by max-min fairness ("water-filling"):
  a cache never gets more than the ``max_bytes`` it asked for, what one does
  not need goes to the others in equal parts, and a cache created without
  ``max_bytes`` asks for as much as it can get.

The grants are applied through the caches' public API (``max_bytes=`` at
construction, ``resize(max_bytes=...)`` when a cache comes or goes), so a
cache bounds itself and no insert ever calls back into the manager.
Without a real limit (the limit is physical memory: no cgroup limit and none
configured) and without ``max_total_bytes`` there is no budget: caches keep
the bounds they asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Optional, TypedDict

from ._constants import MIB

__all__ = ["BudgetError", "BudgetGrant", "BudgetInfo", "headroom_error", "split"]


class BudgetError(ValueError):
    """The memory limit leaves no room for caches (names both figures)."""


class BudgetGrant(TypedDict):
    """One cache's part of the budget."""

    requested_bytes: Annotated[Optional[int], "max_bytes given to create_cache (null: none)"]
    granted_bytes: Annotated[Optional[int], "max_bytes the cache runs with (null: no budget)"]


class BudgetInfo(TypedDict):
    """How the caches' byte bounds follow from the memory limit (``stats()["budget"]``)."""

    source: Annotated[
        str,
        '"derived" (from the limit), "max_total_bytes", or why there is none ("none: ...")',
    ]
    limit_bytes: int
    high_water_bytes: int
    baseline_rss_bytes: Annotated[Optional[int], "RSS before the caches held anything"]
    baseline_source: Annotated[Optional[str], '"measured at first create_cache" or "configured"']
    headroom_bytes: Annotated[Optional[int], "high_water_bytes - baseline_rss_bytes"]
    cache_share: Annotated[Optional[float], "Share of the headroom given to the caches"]
    total_bytes: Annotated[Optional[int], "cache_share * headroom_bytes, or max_total_bytes"]
    granted_bytes: Annotated[int, "Sum of the caches' granted max_bytes"]
    accounted_bytes: Annotated[int, "Sum of the caches' nbytes now"]
    caches: dict[str, BudgetGrant]


def headroom_error(limit: int, high_water: int, baseline: int, limit_source: str) -> str:
    """The message of a limit that leaves the caches no room, or "" when there is room."""
    mb = MIB
    if limit <= baseline:
        return (
            f"the memory limit ({limit / mb:.1f} MB, {limit_source}) is below the process's "
            f"baseline RSS ({baseline / mb:.1f} MB): nothing is left for caches; raise the "
            f"limit above {baseline / mb:.0f} MB"
        )
    if high_water <= baseline:
        return (
            f"the high-water mark ({high_water / mb:.1f} MB of the {limit / mb:.1f} MB limit, "
            f"{limit_source}) is at or below the process's baseline RSS ({baseline / mb:.1f} "
            f"MB): nothing is left for caches; raise the limit or high_water"
        )
    return ""


def split(total: int, requests: Mapping[str, Optional[int]]) -> dict[str, int]:
    """Max-min fair shares of ``total`` bytes for caches asking for ``requests``.

    ``None`` asks for as much as it can get. Every cache gets at least 1 byte
    (a bound of 0 would mean "no bound" to nobody, but is refused by the core).
    """
    grants: dict[str, int] = {}
    left = max(0, int(total))
    order = sorted(requests, key=lambda n: (requests[n] is None, requests[n] or 0, n))
    for i, name in enumerate(order):
        fair = left // (len(order) - i)
        want = requests[name]
        grant = fair if want is None else min(int(want), fair)
        grants[name] = grant = max(1, grant)
        left = max(0, left - grant)
    return grants
