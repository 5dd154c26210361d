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
  trims the heap and records the event: see ``_cleanup_pass``. It runs in
  short steps; ``cleanup_steps()`` hands them out one at a time so that an
  event loop can run between them (the cleanup service does).
* "Last used" for a cache: see ``_observe``.
* Errors: a cache removed while a cleanup runs is skipped (listed under
  ``skipped``); a cache whose ``on_evict`` (or anything else) raises during
  ``expire``/``trim`` is recorded under ``errors`` and the cleanup goes on
  with the rest. Only one cleanup runs at a time; ``cleanup_if_needed()`` while
  another runs returns None, and a cleanup started from inside a cleanup
  (an ``on_evict`` that calls it) returns None instead of deadlocking.
* Byte budget: under a real limit (configured or a cgroup's), the caches the
  manager creates share ``cache_share`` of the headroom between the
  process's baseline RSS and the high-water mark, as byte bounds set through
  each cache's own ``max_bytes``/``resize()``; ``max_total_bytes`` sets the
  total by hand. See ``_budget`` for the arithmetic; ``stats()["budget"]``
  reports it.
* Thread safety: one lock guards the registry, timestamps and history. It is
  never held while calling into a cache (trim, expire, stats, clear, resize),
  since those run user callbacks that may call back into the manager; a
  second, re-entrant lock serializes budget splits.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any, Optional, Union

from . import _procmem
from ._budget import BudgetError, BudgetGrant, BudgetInfo, headroom_error, split
from ._cleanup_pass import CleanupEvent, sweep_steps
from ._constants import MIB, MISSING
from ._manager_stats import ManagedCacheStats, ManagerStats, StatsSources, cache_stats
from ._validate import (
    check_collect,
    check_fraction,
    check_max_total,
    check_mb,
    check_size,
)
from .deque import BoundedDeque

__all__ = [
    "BudgetError",
    "CacheManager",
    "CleanupEvent",
    "ManagerStats",
    "ManagedCacheStats",
    "cache_manager",
    "manager_or_default",
]


def _drain(steps: Generator[None, None, Optional[CleanupEvent]]) -> Optional[CleanupEvent]:
    """Run a generator of cleanup steps to its end; its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            result: Optional[CleanupEvent] = stop.value
            return result


def manager_or_default(manager: Optional[CacheManager]) -> CacheManager:
    """``manager``, or the process-wide ``cache_manager`` when None; TypeError otherwise."""
    if manager is None:
        return cache_manager
    if not isinstance(manager, CacheManager):
        raise TypeError(f"manager must be a CacheManager or None, not {type(manager).__name__}")
    return manager


def _default_cache_class() -> Callable[..., Any]:
    from ._core import LruCache

    return LruCache


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
    ``cache_share``: share of the headroom above the baseline RSS that the
    caches get as byte bounds under a real limit (None: no derived budget).
    ``baseline_mb``: the baseline RSS (default: measured when the first cache
    is created). ``max_total_bytes``: the caches' total byte budget, instead
    of the derived one. ``history``: how many cleanup events to keep.

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
        cache_share: Optional[float] = 0.5,
        baseline_mb: Optional[float] = None,
        history: int = 100,
        cache_class: Optional[Callable[..., Any]] = None,
        rss: Optional[Callable[[], int]] = None,
        cgroup_root: str = "/",
        clock: Optional[Callable[[], float]] = None,
    ) -> None:
        self._memory_limit_mb = check_mb("memory_limit_mb", memory_limit_mb)
        self.high_water = check_fraction(high_water, "high_water")
        if low_water is None:
            low_water = high_water - 0.1 if high_water > 0.1 else high_water / 2
        self.low_water = check_fraction(low_water, "low_water")
        if self.low_water > self.high_water:
            raise ValueError(f"low_water ({low_water}) must be <= high_water ({high_water})")
        self.cleanup_fraction = check_fraction(cleanup_fraction, "cleanup_fraction")
        if isinstance(min_interval, bool) or not isinstance(min_interval, (int, float)):
            raise TypeError("min_interval must be a number")
        if not min_interval >= 0:
            raise ValueError(f"min_interval must be >= 0, got {min_interval!r}")
        self.min_interval = float(min_interval)
        self.max_total_bytes = check_max_total(max_total_bytes)
        self.cache_share = (
            None if cache_share is None else check_fraction(cache_share, "cache_share")
        )
        self._baseline_mb = check_mb("baseline_mb", baseline_mb)
        self._baseline: Optional[int] = None if baseline_mb is None else int(baseline_mb * MIB)
        if isinstance(history, bool) or not isinstance(history, int):
            raise TypeError("history must be an int")
        if not 1 <= history <= sys.maxsize:
            raise ValueError(f"history must be in 1..{sys.maxsize}, got {history}")
        if cache_class is not None and not callable(cache_class):
            raise TypeError("cache_class must be callable")
        if rss is not None and not callable(rss):
            raise TypeError("rss must be callable")
        self._cache_class = cache_class
        self._rss = rss if rss is not None else _procmem.rss_bytes
        self._rss_source = None if rss is None else "injected"
        self._probe = _procmem.shared_probe if rss is None else _procmem.RssProbe(self._rss)
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
        # Serializes budget splits (re-entrant: a cache's on_evict may create a cache).
        self._budget_lock = threading.RLock()
        self._budget_depth = threading.local()  # .n: how deep this thread holds it

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
        max_bytes = check_size("max_bytes", max_bytes)
        settings = {"maxsize": maxsize, "ttl": ttl, "max_bytes": max_bytes, **kwargs}
        with self._lock:
            entry = self._caches.get(name)
            if entry is not None:
                return self._same(name, entry, settings)
        with self._budget_held():
            with self._lock:  # created while this thread waited for the budget lock?
                entry = self._caches.get(name)
                if entry is not None:
                    return self._same(name, entry, settings)
            # The cache's bound is its share of the budget with it counted in.
            # The others shrink to their new shares before it is registered (and
            # after it is built: a cache that cannot be built costs them nothing),
            # so the bounds never add up to more than the total.
            grants = self._grants(extra=(name, max_bytes))
            granted = grants.get(name, max_bytes)
            # Build outside the registry lock: a cache class may run user code.
            cls = self._cache_class or _default_cache_class()
            cache = cls(maxsize, ttl, max_bytes=granted, **kwargs)
            try:
                self._apply_budget(grants, shrink_only=True)
                with self._lock:
                    entry = self._caches.get(name)
                    if entry is not None:  # another thread won the race
                        return self._same(name, entry, settings)
                    self._seq += 1
                    self._caches[name] = _Entry(cache, settings, self._clock(), self._seq)
            finally:
                self._apply_budget()  # the grows, or all back if it was not registered
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
        with self._budget_held():
            with self._lock:
                entry = self._caches.pop(name, None)
            if entry is None:
                return False
            if clear:
                entry.cache.clear()
            self._apply_budget()  # its share goes to the others
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

    @property
    def probe(self) -> _procmem.RssProbe:
        """The RSS probe the request middlewares share (process-wide, or one over ``rss``)."""
        return self._probe

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
        ``create_cache``/``get_cache``/``touch`` calls, or a change in its
        counters (hits, misses, size, bytes) between two observations (each
        cleanup and ``stats()`` observes every cache). Reads made
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

    # -- byte budget ------------------------------------------------------------

    def baseline_rss_bytes(self) -> int:
        """The RSS the budget is counted from: configured, or measured once now."""
        if self._baseline is None:
            self._baseline = self.rss_bytes()
        return self._baseline

    def budget_total(self, *, measure: bool = True) -> tuple[Optional[int], str]:
        """The caches' total byte budget (None: no budget) and where it comes from.

        Raises BudgetError when the limit leaves the caches no room (both
        figures in the message). With ``measure=False`` a baseline not yet
        measured stays so (None, "pending: ..."): a stats read during start-up
        must not fix the baseline the first cache is counted from.
        """
        if self.max_total_bytes is not None:
            return self.max_total_bytes, "max_total_bytes"
        if self.cache_share is None:
            return None, "none: cache_share=None"
        limit = self.limit
        if limit.source != "configured" and not limit.source.startswith("cgroup"):
            return None, f"none: no memory limit ({limit.source})"
        if not measure and self._baseline is None:
            return None, "pending: the baseline RSS is measured at the first create_cache"
        baseline = self.baseline_rss_bytes()
        high = int(self.high_water * limit.nbytes)
        problem = headroom_error(limit.nbytes, high, baseline, limit.source)
        if problem:
            raise BudgetError(problem)
        return int(self.cache_share * (high - baseline)), "derived"

    def _grants(self, extra: Optional[tuple[str, Optional[int]]] = None) -> dict[str, int]:
        """Each registered cache's share of the budget ({} without a budget)."""
        total, _ = self.budget_total()
        if total is None:
            return {}
        with self._lock:
            requests = {n: e.settings.get("max_bytes") for n, e in self._caches.items()}
        if extra is not None:
            requests[extra[0]] = extra[1]
        return split(total, requests)

    def _apply_budget(
        self, grants: Optional[dict[str, int]] = None, *, shrink_only: bool = False
    ) -> None:
        """Resize every registered cache whose share changed (outside the registry
        lock): the shrinks first, so the bounds never add up to more than the
        total; with ``shrink_only``, the shrinks only."""
        if grants is None:
            grants = self._grants()
        if not grants:
            return
        changes = []
        for name, cache in self.caches().items():
            grant, now = grants.get(name), getattr(cache, "max_bytes", None)
            if grant is None or now == grant or getattr(cache, "resize", None) is None:
                continue  # a cache class without resize() keeps the bound it was built with
            grows = now is not None and grant > now
            if not (grows and shrink_only):
                changes.append((grows, cache, grant))
        for _grows, cache, grant in sorted(changes, key=lambda change: change[0]):
            try:
                cache.resize(max_bytes=grant)
            except Exception:  # noqa: BLE001, S110 - an on_evict raised; the resize is done
                pass

    @contextlib.contextmanager
    def _budget_held(self) -> Iterator[None]:
        """The budget lock, with a note that this thread holds it (see _steps)."""
        with self._budget_lock:
            self._budget_depth.n = getattr(self._budget_depth, "n", 0) + 1
            try:
                yield
            finally:
                self._budget_depth.n -= 1

    def _budget_info(self, caches: dict[str, Any]) -> BudgetInfo:
        limit = self.limit
        high = int(self.high_water * limit.nbytes)
        try:
            total, source = self.budget_total(measure=False)
        except BudgetError as exc:
            total, source = None, f"none: {exc}"
        baseline = self._baseline
        with self._lock:
            requested = {n: e.settings.get("max_bytes") for n, e in self._caches.items()}
        grants: dict[str, BudgetGrant] = {}
        for name, want in sorted(requested.items()):
            st = caches.get(name) or {}
            grants[name] = {
                "requested_bytes": want,
                "granted_bytes": st.get("max_bytes") if total is not None else None,
            }
        return {
            "source": source,
            "limit_bytes": limit.nbytes,
            "high_water_bytes": high,
            "baseline_rss_bytes": baseline,
            "baseline_source": None
            if baseline is None
            else (
                "configured" if self._baseline_mb is not None else "measured at first create_cache"
            ),
            "headroom_bytes": None if baseline is None else high - baseline,
            "cache_share": self.cache_share if self.max_total_bytes is None else None,
            "total_bytes": total,
            "granted_bytes": sum(g["granted_bytes"] or 0 for g in grants.values()),
            "accounted_bytes": sum(int((caches.get(n) or {}).get("nbytes", 0)) for n in grants),
            "caches": grants,
        }

    # -- cleanup --------------------------------------------------------------

    def _due(self) -> Optional[int]:
        """RSS when a high-water cleanup is due now, else None (counts interval skips)."""
        rss = self.rss_bytes()
        if rss <= self.high_water * self.limit.nbytes:
            return None
        last = self._last_cleanup_end
        if last is not None and self._clock() - last < self.min_interval:
            self._skipped_interval += 1
            return None
        return rss

    def cleanup_if_needed(self) -> Optional[CleanupEvent]:
        """Run a cleanup when RSS is above the high-water mark (see the module doc).

        Returns the event, or None when none ran (below the mark, within
        ``min_interval`` of the last one, or another cleanup is running).
        """
        rss = self._due()
        if rss is None:
            return None
        target = int(self.low_water * self.limit.nbytes)
        return _drain(self._steps("high_water", rss, target, blocking=False))

    def cleanup(
        self,
        reason: str = "forced",
        *,
        fraction: Optional[float] = None,
        collect: Union[bool, int] = True,
    ) -> Optional[CleanupEvent]:
        """Run one cleanup now, trimming every cache; returns its event.

        ``fraction`` overrides ``cleanup_fraction`` for this run, ``collect=False``
        skips ``gc.collect()`` and ``collect=1`` collects the young generations only.
        Waits for a cleanup running on another thread; returns None when called
        from inside a cleanup on this thread, or when one runs elsewhere and this
        is a callback of a budget change (that cleanup may be waiting for it).
        """
        if not isinstance(reason, str):
            raise TypeError(f"reason must be a str, not {type(reason).__name__}")
        if fraction is not None:
            fraction = check_fraction(fraction, "fraction")
        collect = check_collect(collect)
        return _drain(
            self._steps(reason, None, None, blocking=True, fraction=fraction, collect=collect)
        )

    def cleanup_steps(
        self,
        reason: Optional[str] = None,
        *,
        fraction: Optional[float] = None,
        collect: Union[bool, int] = True,
    ) -> Generator[None, None, Optional[CleanupEvent]]:
        """A cleanup in bounded steps: a generator to advance with ``next()`` or ``yield from``.

        Without ``reason`` it is ``cleanup_if_needed()`` (nothing happens below
        the high-water mark or within ``min_interval``); with one it is a
        forced ``cleanup(reason)``. Each step is short (a trim slice aims at
        2 ms); between two steps the caller may run other work, which is how
        the cleanup service keeps the event loop answering. The generator's
        return value is the event, or None when no cleanup ran (not due, or
        another one is running: this form never waits for it). Only one
        cleanup runs at a time; the cleanup lock is held from the first step
        to the last, and released if the generator is closed early. Bad
        arguments raise at the call, before the generator is made.
        """
        if reason is not None and not isinstance(reason, str):
            raise TypeError(f"reason must be a str or None, not {type(reason).__name__}")
        if fraction is not None:
            fraction = check_fraction(fraction, "fraction")
        return self._checked_cleanup_steps(reason, fraction, check_collect(collect))

    def _checked_cleanup_steps(
        self, reason: Optional[str], fraction: Optional[float], collect: Union[bool, int]
    ) -> Generator[None, None, Optional[CleanupEvent]]:
        if reason is None:
            rss = self._due()
            if rss is None:
                return None
            target: Optional[int] = int(self.low_water * self.limit.nbytes)
            reason = "high_water"
        else:
            rss, target = self.rss_bytes(), None
        return (
            yield from self._steps(
                reason, rss, target, blocking=False, fraction=fraction, collect=collect
            )
        )

    def _steps(
        self,
        reason: str,
        rss_before: Optional[int],
        target: Optional[int],
        *,
        blocking: bool,
        fraction: Optional[float] = None,
        collect: Union[bool, int] = True,
    ) -> Generator[None, None, Optional[CleanupEvent]]:
        if self._cleanup_thread == threading.get_ident():
            return None  # re-entered from a callback of the running cleanup
        if getattr(self._budget_depth, "n", 0):
            # a callback of a budget resize: the running cleanup may be waiting
            # for the budget lock this thread holds, so waiting for it would deadlock
            blocking = False
        if not self._cleanup_lock.acquire(blocking=blocking):
            return None
        self._cleanup_thread = threading.get_ident()
        try:
            if rss_before is None:  # read once the lock is ours, not before waiting for it
                rss_before = self.rss_bytes()
            started = time.perf_counter()
            event = CleanupEvent(
                time=time.time(),
                reason=reason,
                rss_before=rss_before,
                limit_bytes=self.limit.nbytes,
                target_bytes=target,
            )
            entries = self._observe()
            yield from sweep_steps(
                event,
                [
                    (name, entry.cache, functools.partial(self._registered, name, entry))
                    for name, entry in entries
                ],
                fraction or self.cleanup_fraction,
                collect,
                rss=self.rss_bytes,
            )
            event.rss_after = self.rss_bytes()
            event.duration = time.perf_counter() - started
            with self._lock:  # stats() reads the two together
                self._history.append(event)
                self._cleanups += 1
            return event
        finally:
            self._cleanup_thread = None
            self._last_cleanup_end = self._clock()
            self._cleanup_lock.release()

    def _registered(self, name: str, entry: _Entry) -> bool:
        with self._lock:
            return self._caches.get(name) is entry

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
        with self._lock:  # the events and their count as one cleanup left them
            history, count, dropped = (
                self._history.snapshot(),
                self._cleanups,
                self._history.dropped,
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
            "budget": self._budget_info(dict(caches)),
            "cleanup_fraction": self.cleanup_fraction,
            "min_interval": self.min_interval,
            "caches": caches,
            "totals": totals,
            "sources": self._sources.collect(),
            "cleanups": [e.as_dict() for e in history],
            "cleanup_count": count,
            "cleanups_dropped": dropped,
            "cleanups_skipped_interval": self._skipped_interval,
        }


#: The process-wide default manager (limit detected on first use).
cache_manager = CacheManager()
