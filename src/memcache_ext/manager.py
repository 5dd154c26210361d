"""CacheManager: named caches, the process's memory, and cleanup under pressure.

    from memcache_ext import cache_manager

    users = cache_manager.create_cache("users", maxsize=10_000, ttl=300)
    ...
    cache_manager.cleanup_if_needed()     # e.g. from a periodic task
    cache_manager.stats()                 # for a /memory/stats endpoint

Policy, precisely:

* Memory: RSS from ``/proc/self/statm`` (psutil elsewhere), see ``_procmem``.
  The limit is ``memory_limit_mb`` when given, else the process's cgroup
  limit, else physical memory; ``stats()["limit"]["source"]`` says which.
* Hysteresis: ``cleanup_if_needed()`` does nothing while RSS is at or below
  ``high_water * limit``. Above it, and if the last cleanup ended at least
  ``min_interval`` seconds ago, it runs one cleanup aiming at
  ``low_water * limit`` (default ``high_water - 0.1``, or half of
  ``high_water`` when that is 0.1 or less).
* One cleanup expires, trims least recently used caches first, collects,
  trims the heap and records the event: see ``_cleanup_pass``.
* "Last used" for a cache: see ``_observe``.
* Errors: a cache removed while a cleanup runs is skipped (listed under
  ``skipped``); a cache whose ``on_evict`` (or anything else) raises during
  ``expire``/``trim`` is recorded under ``errors`` and the cleanup goes on
  with the rest. Only one cleanup runs at a time; ``cleanup_if_needed()`` while
  another runs returns None, and a cleanup started from inside a cleanup
  (an ``on_evict`` that calls it) returns None instead of deadlocking.
* Total byte budget (``max_total_bytes``): every cache the manager creates
  gets a byte bound and a ``sizeof`` wrapper that makes room in the least
  recently used caches, or refuses the entry; see ``_budget``.
* Thread safety: one lock guards the registry, timestamps and history. It is
  never held while calling into a cache (trim, expire, stats, clear), since
  those run user callbacks that may call back into the manager.
"""

from __future__ import annotations

import functools
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Optional

from . import _procmem
from ._budget import BudgetSizeof, fit
from ._cleanup_pass import CleanupEvent, sweep
from ._constants import MIB, MISSING
from ._manager_stats import ManagedCacheStats, ManagerStats, StatsSources, cache_stats
from .deque import BoundedDeque

__all__ = [
    "CacheManager",
    "CleanupEvent",
    "ManagerStats",
    "ManagedCacheStats",
    "cache_manager",
    "manager_or_default",
]


def manager_or_default(manager: Optional[CacheManager]) -> CacheManager:
    """``manager``, or the process-wide ``cache_manager`` when None."""
    return cache_manager if manager is None else manager


def _default_cache_class() -> Callable[..., Any]:
    from ._core import LruCache

    return LruCache


def _check_fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not 0 < value <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return float(value)


def _check_positive(name: str, value: Any, *, integer: bool = False) -> Any:
    if value is None:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise TypeError(
            f"{name} must be {'an int' if integer else 'a number'} or None, "
            f"not {type(value).__name__}"
        )
    if not value > 0 or (not integer and math.isinf(value)):
        raise ValueError(f"{name} must be > 0 and finite, got {value!r}")
    return value


class _Entry:
    """A registered cache and what the manager knows about it."""

    __slots__ = ("cache", "settings", "created", "last_used", "seq", "fingerprint")

    def __init__(self, cache: Any, settings: dict[str, Any], now: float, seq: int) -> None:
        self.cache = cache
        self.settings = settings
        self.created = now
        self.last_used = now
        self.seq = seq
        self.fingerprint: tuple[Any, ...] = ()


class CacheManager:
    """A registry of named caches that keeps the process under its memory limit.

    ``memory_limit_mb``: the limit in MiB (None: detect, see the module doc).
    ``high_water``/``low_water``: fractions of the limit where a cleanup starts
    and what it aims at. ``cleanup_fraction``: share of a cache's entries each
    trim evicts. ``min_interval``: seconds between automatic cleanups.
    ``max_total_bytes``: optional budget on the sum of the caches' accounted
    bytes. ``history``: how many cleanup events to keep.

    For tests and special setups: ``cache_class`` (default ``LruCache``),
    ``rss`` (a callable returning RSS in bytes), ``cgroup_root`` (file-system
    root for limit detection) and ``clock`` (monotonic seconds).
    """

    def __init__(
        self,
        memory_limit_mb: Optional[float] = None,
        high_water: float = 0.8,
        cleanup_fraction: float = 0.5,
        *,
        low_water: Optional[float] = None,
        min_interval: float = 10.0,
        max_total_bytes: Optional[int] = None,
        history: int = 100,
        cache_class: Optional[Callable[..., Any]] = None,
        rss: Optional[Callable[[], int]] = None,
        cgroup_root: str = "/",
        clock: Optional[Callable[[], float]] = None,
    ) -> None:
        self._memory_limit_mb = _check_positive("memory_limit_mb", memory_limit_mb)
        self.high_water = _check_fraction("high_water", high_water)
        if low_water is None:
            low_water = high_water - 0.1 if high_water > 0.1 else high_water / 2
        self.low_water = _check_fraction("low_water", low_water)
        if self.low_water > self.high_water:
            raise ValueError(f"low_water ({low_water}) must be <= high_water ({high_water})")
        self.cleanup_fraction = _check_fraction("cleanup_fraction", cleanup_fraction)
        if isinstance(min_interval, bool) or not isinstance(min_interval, (int, float)):
            raise TypeError("min_interval must be a number")
        if not min_interval >= 0:
            raise ValueError(f"min_interval must be >= 0, got {min_interval!r}")
        self.min_interval = float(min_interval)
        self.max_total_bytes = _check_positive("max_total_bytes", max_total_bytes, integer=True)
        if isinstance(history, bool) or not isinstance(history, int):
            raise TypeError("history must be an int")
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        if cache_class is not None and not callable(cache_class):
            raise TypeError("cache_class must be callable")
        if rss is not None and not callable(rss):
            raise TypeError("rss must be callable")
        self._cache_class = cache_class
        self._rss = rss if rss is not None else _procmem.rss_bytes
        self._rss_source = None if rss is None else "injected"
        self._cgroup_root = cgroup_root
        self._clock = clock if clock is not None else time.monotonic
        self._lock = threading.RLock()
        self._caches: dict[str, _Entry] = {}
        self._seq = 0
        self._limit: Optional[_procmem.MemoryLimit] = None
        self._history: BoundedDeque[CleanupEvent] = BoundedDeque(history)
        self._cleanup_lock = threading.Lock()
        self._cleanup_thread: Optional[int] = None
        self._last_cleanup_end: Optional[float] = None
        self._cleanups = 0
        self._skipped_interval = 0
        self._sources = StatsSources()

    # -- registry -------------------------------------------------------------

    def create_cache(
        self,
        name: str,
        maxsize: Optional[int] = 128,
        ttl: Optional[float] = None,
        max_bytes: Optional[int] = None,
        **kwargs: Any,
    ) -> Any:
        """The cache called ``name``, created with these settings if new.

        Calling again with the same settings returns the same cache; with
        different ones raises ValueError. ``kwargs`` go to the cache class
        (``sizeof``, ``timer``, ``on_evict``).
        """
        if not isinstance(name, str):
            raise TypeError(f"cache name must be a str, not {type(name).__name__}")
        if not name:
            raise ValueError("cache name must not be empty")
        settings = {"maxsize": maxsize, "ttl": ttl, "max_bytes": max_bytes, **kwargs}
        with self._lock:
            entry = self._caches.get(name)
            if entry is not None:
                return self._same(name, entry, settings)
        # Build outside the lock: a cache class may run user code.
        wrapper = None
        ctor_kwargs = dict(kwargs)
        real_max_bytes = max_bytes
        if self.max_total_bytes is not None:
            wrapper = BudgetSizeof(self, name, kwargs.get("sizeof"))
            ctor_kwargs["sizeof"] = wrapper
            if real_max_bytes is None:
                real_max_bytes = self.max_total_bytes
        cls = self._cache_class or _default_cache_class()
        cache = cls(maxsize, ttl, max_bytes=real_max_bytes, **ctor_kwargs)
        if wrapper is not None:
            wrapper.cache_ref = weakref.ref(cache)
        with self._lock:
            entry = self._caches.get(name)
            if entry is not None:  # another thread won the race
                return self._same(name, entry, settings)
            self._seq += 1
            self._caches[name] = _Entry(cache, settings, self._clock(), self._seq)
        return cache

    def _same(self, name: str, entry: _Entry, settings: dict[str, Any]) -> Any:
        if entry.settings != settings:
            diff = sorted(
                k
                for k in set(entry.settings) | set(settings)
                if entry.settings.get(k, MISSING) != settings.get(k, MISSING)
            )
            raise ValueError(
                f"cache {name!r} already exists with different settings "
                f"({', '.join(diff)}): "
                f"{ {k: entry.settings.get(k) for k in diff} }"
            )
        entry.last_used = self._clock()
        return entry.cache

    def get_cache(self, name: str) -> Any:
        """The cache called ``name`` (KeyError if there is none); marks it used."""
        with self._lock:
            entry = self._caches[name]
            entry.last_used = self._clock()
            return entry.cache

    def touch(self, name: str) -> None:
        """Mark a cache as used now (it will be trimmed later than idle ones)."""
        self.get_cache(name)

    def remove_cache(self, name: str, *, clear: bool = True) -> bool:
        """Forget the cache called ``name``; clear it unless ``clear=False``.

        Returns whether it existed. The cache object itself keeps working for
        whoever still holds it, outside the manager's accounting.
        """
        with self._lock:
            entry = self._caches.pop(name, None)
        if entry is None:
            return False
        if clear:
            entry.cache.clear()
        return True

    def __contains__(self, name: object) -> bool:
        return name in self._caches

    def __len__(self) -> int:
        return len(self._caches)

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._caches))

    def names(self) -> list[str]:
        with self._lock:
            return list(self._caches)

    def caches(self) -> dict[str, Any]:
        """A snapshot ``{name: cache}``."""
        with self._lock:
            return {name: e.cache for name, e in self._caches.items()}

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} caches={len(self)} "
            f"high_water={self.high_water} low_water={self.low_water}>"
        )

    # -- memory ---------------------------------------------------------------

    def rss_bytes(self) -> int:
        """The process's RSS in bytes."""
        return int(self._rss())

    def memory_usage_mb(self) -> float:
        """The process's RSS in MiB."""
        return self.rss_bytes() / MIB

    @property
    def rss_source(self) -> str:
        return self._rss_source or _procmem.rss_source()

    @property
    def limit(self) -> _procmem.MemoryLimit:
        """The memory limit and its source (detected once, then cached)."""
        limit = self._limit
        if limit is None:
            given = None if self._memory_limit_mb is None else int(self._memory_limit_mb * MIB)
            limit = _procmem.memory_limit(given, root=self._cgroup_root)
            self._limit = limit
        return limit

    @property
    def memory_limit_mb(self) -> float:
        return self.limit.nbytes / MIB

    def total_nbytes(self) -> int:
        """Sum of every cache's accounted bytes."""
        with self._lock:
            caches = [e.cache for e in self._caches.values()]
        return sum(c.nbytes for c in caches)

    # -- usage tracking -------------------------------------------------------

    def _observe(self) -> list[tuple[str, _Entry]]:
        """Update last-used times from counter changes; entries LRU-first.

        "Last used" for a cache is the last time the manager saw it used:
        ``create_cache``/``get_cache``/``touch`` calls, an insert measured by the
        manager's ``sizeof`` (caches under a total byte budget), or a change in its
        counters (hits, misses, size, bytes) between two observations (each
        cleanup, budget check and ``stats()`` observes every cache). Reads made
        straight on a cache object are therefore seen at the next observation,
        with that observation's time. Ties go to the older cache by creation.
        """
        now = self._clock()
        with self._lock:
            entries = list(self._caches.items())
        for _, entry in entries:
            try:
                st = entry.cache.stats()
                fp = (st.get("hits"), st.get("misses"), st.get("size"), st.get("nbytes"))
            except Exception:  # noqa: BLE001 - a broken cache must not stop the manager
                continue
            if fp != entry.fingerprint:
                if entry.fingerprint:
                    entry.last_used = now
                entry.fingerprint = fp
        entries.sort(key=lambda item: (item[1].last_used, item[1].seq))
        return entries

    # -- total byte budget ----------------------------------------------------

    def _make_room(self, name: str, cache: Any, incoming: int) -> bool:
        """Make ``incoming`` more bytes fit the budget; False if they don't."""
        budget = self.max_total_bytes
        if budget is None:
            return True
        if incoming > budget:
            return False  # cannot fit even in empty caches: trim nothing
        with self._lock:
            entry = self._caches.get(name)
            if entry is not None and entry.cache is cache:
                entry.last_used = self._clock()
            others = sorted(
                (
                    (e.last_used, e.seq, e.cache)
                    for n, e in self._caches.items()
                    if e.cache is not cache
                ),
                key=lambda t: (t[0], t[1]),
            )
            caches = [e.cache for e in self._caches.values()]
        return fit(incoming, budget, cache, [c for _, _, c in others], caches)

    # -- cleanup --------------------------------------------------------------

    def cleanup_if_needed(self) -> Optional[CleanupEvent]:
        """Run a cleanup when RSS is above the high-water mark (see the module doc).

        Returns the event, or None when none ran (below the mark, within
        ``min_interval`` of the last one, or another cleanup is running).
        """
        rss = self.rss_bytes()
        limit = self.limit.nbytes
        if rss <= self.high_water * limit:
            return None
        last = self._last_cleanup_end
        if last is not None and self._clock() - last < self.min_interval:
            self._skipped_interval += 1
            return None
        return self._run("high_water", rss, int(self.low_water * limit), blocking=False)

    def cleanup(
        self, reason: str = "forced", *, fraction: Optional[float] = None, collect: bool = True
    ) -> Optional[CleanupEvent]:
        """Run one cleanup now, trimming every cache; returns its event.

        ``fraction`` overrides ``cleanup_fraction`` for this run, ``collect=False``
        skips ``gc.collect()``. Waits for a cleanup running on another thread;
        returns None when called from inside a cleanup on this thread.
        """
        if fraction is not None:
            fraction = _check_fraction("fraction", fraction)
        return self._run(
            reason, self.rss_bytes(), None, blocking=True, fraction=fraction, collect=collect
        )

    def _run(
        self,
        reason: str,
        rss_before: int,
        target: Optional[int],
        *,
        blocking: bool,
        fraction: Optional[float] = None,
        collect: bool = True,
    ) -> Optional[CleanupEvent]:
        if self._cleanup_thread == threading.get_ident():
            return None  # re-entered from a callback of the running cleanup
        if not self._cleanup_lock.acquire(blocking=blocking):
            return None
        self._cleanup_thread = threading.get_ident()
        try:
            return self._cleanup(
                reason, rss_before, target, fraction or self.cleanup_fraction, collect
            )
        finally:
            self._cleanup_thread = None
            self._last_cleanup_end = self._clock()
            self._cleanup_lock.release()

    def _registered(self, name: str, entry: _Entry) -> bool:
        with self._lock:
            return self._caches.get(name) is entry

    def _cleanup(
        self, reason: str, rss_before: int, target: Optional[int], fraction: float, collect: bool
    ) -> CleanupEvent:
        started = time.perf_counter()
        limit = self.limit.nbytes
        event = CleanupEvent(
            time=time.time(),
            reason=reason,
            rss_before=rss_before,
            limit_bytes=limit,
            target_bytes=target,
        )
        entries = self._observe()
        sweep(
            event,
            [
                (name, entry.cache, functools.partial(self._registered, name, entry))
                for name, entry in entries
            ],
            fraction,
            collect,
        )
        event.rss_after = self.rss_bytes()
        event.duration = time.perf_counter() - started
        self._history.append(event)
        with self._lock:
            self._cleanups += 1
        return event

    @property
    def history(self) -> list[CleanupEvent]:
        """Recorded cleanup events, oldest first."""
        return self._history.snapshot()

    # -- stats ----------------------------------------------------------------

    def register_stats_source(self, name: str, source: Callable[[], Any]) -> None:
        """Add ``source()`` to ``stats()["sources"][name]`` (e.g. a Redis tier's stats)."""
        self._sources.register(name, source)

    def unregister_stats_source(self, name: str) -> bool:
        return self._sources.unregister(name)

    def stats(self) -> ManagerStats:
        """Process memory, the limit, every cache, totals and recent cleanups."""
        rss = self.rss_bytes()
        limit = self.limit
        entries = self._observe()
        now = self._clock()
        caches, totals = cache_stats(
            [(name, entry.cache, now - entry.last_used) for name, entry in sorted(entries)]
        )
        return {
            "process": {
                "rss_bytes": rss,
                "rss_mb": rss / MIB,
                "rss_source": self.rss_source,
                "limit_fraction": rss / limit.nbytes if limit.nbytes else None,
            },
            "limit": {
                "bytes": limit.nbytes,
                "mb": limit.mb,
                "source": limit.source,
                "high_water": self.high_water,
                "low_water": self.low_water,
                "high_water_bytes": int(self.high_water * limit.nbytes),
                "low_water_bytes": int(self.low_water * limit.nbytes),
            },
            "max_total_bytes": self.max_total_bytes,
            "cleanup_fraction": self.cleanup_fraction,
            "min_interval": self.min_interval,
            "caches": caches,
            "totals": totals,
            "sources": self._sources.collect(),
            "cleanups": [e.as_dict() for e in self._history.snapshot()],
            "cleanup_count": self._cleanups,
            "cleanups_dropped": self._history.dropped,
            "cleanups_skipped_interval": self._skipped_interval,
        }


#: The process-wide default manager (limit detected on first use).
cache_manager = CacheManager()
