"""The Redis tier's counters: their names (one TypedDict) and a thread-safe tally."""

from __future__ import annotations

import threading
from typing import Annotated, TypedDict

__all__ = ["COUNTERS", "Counters", "TierCounters"]


class TierCounters(TypedDict):
    """The tier's monotonic counters (``counters()``), in order."""

    local_hits: int
    local_misses: int
    remote_hits: int
    remote_misses: int
    remote_skipped: Annotated[int, "Reads that skipped Redis while the breaker was open"]
    loads: int
    load_errors: int
    shared_loads: Annotated[int, "Callers that waited for another caller's load"]
    writes: int
    deletes: int
    skipped_writes: Annotated[int, "Writes and deletes not sent while Redis was away"]
    invalidations_sent: int
    invalidations_received: int
    invalidations_ignored_own: int
    bad_messages: int
    redis_errors: int
    reconnects: int
    local_clears: int
    oversized_writes: int
    oversized_reads: int
    serialization_failures: int
    deserialization_failures: int


#: The counters' names, in order.
COUNTERS: tuple[str, ...] = tuple(TierCounters.__annotations__)
_OWN = COUNTERS[2:]  # local_hits and local_misses are the local cache's own


class Counters:
    """The tier's own counters (all but the local tier's hits and misses)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(_OWN, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def snapshot(self, local_hits: int, local_misses: int) -> TierCounters:
        with self._lock:
            own = dict(self._counts)
        counts = {"local_hits": local_hits, "local_misses": local_misses, **own}
        return counts  # type: ignore[return-value]  # keys: exactly COUNTERS, in order
