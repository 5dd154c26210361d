"""Garbage-collector statistics through ``gc.callbacks``.

``GCStats.install()`` registers a callback that the interpreter calls at the
start and end of every collection; per generation it counts collections,
objects collected and uncollectable, and the total and longest pause. The
callback takes no lock (it can run inside any allocation, on any thread,
including one that is itself reading the statistics): it replaces its
generation's row of counters with a new tuple in one assignment, and
``reset()`` replaces all the rows in one, so ``snapshot()`` reads figures that
belong together without retrying.

The module-level ``gc_stats`` is not installed at import: call
``gc_stats.install()`` where you want it (the stats endpoint does).
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any, Optional, TypedDict

__all__ = ["GCStats", "GCSnapshot", "gc_stats"]

_GENERATIONS = 3


class GCTotals(TypedDict):
    """The generations summed."""

    collections: int
    collected: int
    uncollectable: int
    pause_total_s: float
    pause_max_s: float


class GCGeneration(GCTotals):
    """One generation's counters."""

    pause_mean_s: float


class GCSnapshot(TypedDict):
    """Garbage-collector statistics (since ``gc_stats.install()``): ``GCStats.snapshot()``."""

    installed: bool
    generations: list[GCGeneration]
    total: GCTotals
    last_pause_s: float
    gc_counts: list[int]
    gc_enabled: bool


class GCStats:
    """Per-generation collection counts and pause times."""

    def __init__(self) -> None:
        self._install_lock = threading.Lock()
        self._installed = False
        self._callback = self._on_gc  # one bound method, so remove() finds it
        self._start: Optional[float] = None
        self.reset()

    # -- installation ---------------------------------------------------------

    @property
    def installed(self) -> bool:
        return self._installed

    def install(self) -> GCStats:
        """Start recording (idempotent). Returns self."""
        with self._install_lock:
            if self._callback not in gc.callbacks:
                gc.callbacks.append(self._callback)
            self._installed = True
        return self

    def uninstall(self) -> None:
        """Stop recording (idempotent); the counters are kept."""
        with self._install_lock:
            while self._callback in gc.callbacks:
                gc.callbacks.remove(self._callback)
            self._installed = False
            self._start = None

    def __enter__(self) -> GCStats:
        return self.install()

    def __exit__(self, *exc: Any) -> None:
        self.uninstall()

    # -- recording ------------------------------------------------------------

    def reset(self) -> None:
        """Zero every counter."""
        # One assignment: a snapshot or a callback sees the old rows or the new
        # ones, never some of each.
        self._rows: list[tuple[int, int, int, float, float]] = [
            (0, 0, 0, 0.0, 0.0) for _ in range(_GENERATIONS)
        ]
        self._last_pause = 0.0

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        # Runs inside the collector: no locks, no allocation-heavy work, never raise.
        if phase == "start":
            self._start = time.perf_counter()
            return
        start, self._start = self._start, None
        gen = info.get("generation", 0)
        if not 0 <= gen < _GENERATIONS:
            return
        pause = time.perf_counter() - start if start is not None else 0.0
        rows = self._rows
        n, collected, uncollectable, total, longest = rows[gen]
        # a new row, stored in one assignment: a reader never sees half an update
        rows[gen] = (
            n + 1,
            collected + info.get("collected", 0),
            uncollectable + info.get("uncollectable", 0),
            total + pause,
            max(longest, pause),
        )
        self._last_pause = pause

    # -- reading --------------------------------------------------------------

    def snapshot(self) -> GCSnapshot:
        """The counters as a dict (JSON-ready).

        ``generations`` is a list of three dicts (collections, collected,
        uncollectable, pause_total_s, pause_max_s, pause_mean_s); ``total``
        sums them; ``installed``, ``last_pause_s``, and ``gc_counts`` (the
        interpreter's current allocation counters) are included.
        """
        rows = list(self._rows)  # each row is one collection's consistent result
        last = self._last_pause
        generations: list[GCGeneration] = []
        for n, collected, uncollectable, total, longest in rows:
            generations.append(
                {
                    "collections": n,
                    "collected": collected,
                    "uncollectable": uncollectable,
                    "pause_total_s": total,
                    "pause_max_s": longest,
                    "pause_mean_s": total / n if n else 0.0,
                }
            )
        return {
            "installed": self._installed,
            "generations": generations,
            "total": {
                "collections": sum(g["collections"] for g in generations),
                "collected": sum(g["collected"] for g in generations),
                "uncollectable": sum(g["uncollectable"] for g in generations),
                "pause_total_s": sum(g["pause_total_s"] for g in generations),
                "pause_max_s": max(g["pause_max_s"] for g in generations),
            },
            "last_pause_s": last,
            "gc_counts": list(gc.get_count()),
            "gc_enabled": gc.isenabled(),
        }

    def __repr__(self) -> str:
        total = self.snapshot()["total"]
        return (
            f"<GCStats installed={self._installed} collections={total['collections']} "
            f"pause_total={total['pause_total_s'] * 1e3:.3f}ms>"
        )


#: The process-wide instance (not installed at import).
gc_stats = GCStats()
