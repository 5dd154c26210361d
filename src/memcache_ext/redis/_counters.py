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
    writes: Annotated[int, "Values and tombstones written to Redis by set, delete and fills"]
    deletes: int
    version_refusals: Annotated[int, "Writes and fills refused: Redis holds a newer version"]
    skipped_writes: Annotated[int, "Writes and deletes not sent while Redis was away"]
    expired_writes: Annotated[int, "Writes that reached Redis past their deadline: not applied"]
    invalidations_sent: Annotated[int, "Invalidations published (writes, deletes, clears)"]
    invalidations_received: Annotated[int, "Other instances' invalidations applied here"]
    invalidations_ignored_own: int
    invalidations_ignored_old: Annotated[int, "Messages older than the version seen here"]
    invalidations_dropped: Annotated[int, "Not queued (max_pending reached): a clear instead"]
    bad_messages: Annotated[int, "Unparseable messages on the channel (ignored)"]
    redis_errors: Annotated[int, "Failed Redis calls, every kind"]
    errors_timeout: int
    errors_connection: int
    errors_response: int
    errors_other: int
    breaker_opened: int
    breaker_half_opened: Annotated[int, "Background probes started"]
    breaker_closed: int
    channel_losses: Annotated[int, "Times the invalidation channel was lost"]
    reconnects: Annotated[int, "Resubscriptions after a loss (each drops the local tier)"]
    stale_bypasses: Annotated[int, "Times max_stale ran out and the local tier was dropped"]
    local_clears: int
    remote_clears: Annotated[int, "Namespace clears done in Redis: asked for, or owed"]
    oversized_writes: int
    oversized_reads: int
    serialization_failures: int
    deserialization_failures: int
    bad_signatures: Annotated[int, "Signed values whose signature did not verify (misses)"]


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
