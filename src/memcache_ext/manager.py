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
* One cleanup: (1) ``expire()`` every cache (dead entries go first, so live
  ones are not evicted in their place); (2) trim caches one after another,
  **least recently used cache first**, each by ``cleanup_fraction`` of its
  entries (its own LRU entries), until the accounted bytes released reach
  ``RSS - target``. When the caches account no bytes (none has a byte
  bound) there is no estimate to stop on, so every cache is trimmed; (3)
  ``gc.collect()``; (4) ``malloc_trim(0)`` on glibc; (5) RSS is read again and
  the event recorded. ``cleanup()`` runs the same steps now, whatever RSS is,
  and trims every cache.
* "Last used" for a cache is the last time the manager saw it used:
  ``create_cache``/``get_cache``/``touch`` calls, an insert measured by the
  manager's ``sizeof`` (caches under a total byte budget), or a change in its
  counters (hits, misses, size, bytes) between two observations (each
  cleanup, budget check and ``stats()`` observes every cache). Reads made
  straight on a cache object are therefore seen at the next observation,
  with that observation's time. Ties go to the older cache by creation.
* Freed memory is reported honestly and twice: ``accounted_bytes_released``
  is the drop in the caches' own byte accounting (0 for caches without a byte
  bound), ``rss_freed_bytes`` is RSS before minus RSS after. They differ:
  the allocator keeps freed memory unless ``malloc_trim`` returns it, objects
  referenced elsewhere survive eviction, and other threads allocate meanwhile.
* Errors: a cache removed while a cleanup runs is skipped (listed under
  ``skipped``); a cache whose ``on_evict`` (or anything else) raises during
  ``expire``/``trim`` is recorded under ``errors`` and the cleanup goes on
  with the rest. Only one cleanup runs at a time; ``cleanup_if_needed()`` while
  another runs returns None, and a cleanup started from inside a cleanup
  (an ``on_evict`` that calls it) returns None instead of deadlocking.
* Total byte budget (``max_total_bytes``): every cache the manager creates
  gets a byte bound (its own ``max_bytes``, or the budget when it has none,
  so its entries are measured) and a ``sizeof`` wrapper around
  ``deep_sizeof`` (or the cache's own ``sizeof``). When measuring a new
  entry (the core measures its key, then its value) shows that the sum of
  every cache's ``nbytes`` plus the entry would pass the budget, the wrapper
  trims *other* caches, least recently used cache first, their LRU entries
  first, then the inserting cache's own LRU entries; if the entry still does
  not fit, it reports a size above the cache's ``max_bytes`` so the core
  refuses it (``set`` returns False, counted in ``rejected``), the same way
  as an entry larger than ``max_bytes``. Both cores call ``sizeof`` before
  taking their own lock, so trimming other caches from inside it holds no
  lock and cannot deadlock with another thread doing the same. Limits of the
  approach: concurrent inserts into different caches each check the budget
  without seeing the other's entry in flight, so the sum can pass the budget
  by those entries until the next insert or cleanup; replacing a key counts
  the old value until the core drops it (the check is conservative); a copy
  or unpickled copy of a managed cache keeps the wrapper, bound to the
  original cache.
* Thread safety: one lock guards the registry, timestamps and history. It is
  never held while calling into a cache (trim, expire, stats, clear), since
  those run user callbacks that may call back into the manager.
"""

from __future__ import annotations

import gc
import math
import threading
import time
import weakref
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterator, Optional

from . import _procmem
from .deque import BoundedDeque

__all__ = ["CacheManager", "CleanupEvent", "cache_manager"]

MB = 2**20
_MISSING: Any = object()


def _default_cache_class() -> Callable[..., Any]:
    from . import LruCache

    return LruCache  # type: ignore[no-any-return]


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
        raise TypeError(f"{name} must be {'an int' if integer else 'a number'} or None, "
                        f"not {type(value).__name__}")
    if not value > 0 or (not integer and math.isinf(value)):
        raise ValueError(f"{name} must be > 0 and finite, got {value!r}")
    return value


@dataclass
class CleanupEvent:
    """One cleanup, as recorded in the history (``as_dict()`` for JSON)."""

    time: float  #: wall-clock time the cleanup started (time.time())
    reason: str  #: "high_water" or "forced" (or the caller's reason)
    rss_before: int
    rss_after: int = 0
    limit_bytes: int = 0
    target_bytes: Optional[int] = None  #: RSS aimed at (None: trim everything)
    accounted_bytes_released: int = 0  #: drop in the caches' nbytes
    entries_evicted: int = 0  #: by trim
    entries_expired: int = 0
    objects_collected: int = 0  #: gc.collect()'s return value
    malloc_trimmed: bool = False
    duration: float = 0.0  #: seconds, whole cleanup
    gc_duration: float = 0.0  #: seconds spent in gc.collect()
    caches_trimmed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  #: removed while cleaning
    errors: list[str] = field(default_factory=list)

    @property
    def rss_freed_bytes(self) -> int:
        """RSS before minus RSS after (negative if RSS grew meanwhile)."""
        return self.rss_before - self.rss_after

    def as_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies recursively (~20 us an event,
        # which made up most of a /memory/stats answer with a full history).
        d = {name: getattr(self, name) for name in _EVENT_FIELDS}
        for name in ("caches_trimmed", "skipped", "errors"):
            d[name] = list(d[name])
        d["rss_freed_bytes"] = self.rss_freed_bytes
        d["rss_before_mb"] = self.rss_before / MB
        d["rss_after_mb"] = self.rss_after / MB
        d["accounted_mb_released"] = self.accounted_bytes_released / MB
        return d


_EVENT_FIELDS = tuple(f.name for f in fields(CleanupEvent))


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


class _BudgetSizeof:
    """The ``sizeof`` of a cache under the manager's total byte budget."""

    __slots__ = ("manager_ref", "name", "cache_ref", "inner", "local")

    def __init__(self, manager: "CacheManager", name: str,
                 inner: Optional[Callable[[Any], int]]) -> None:
        self.manager_ref = weakref.ref(manager)
        self.name = name
        self.cache_ref: Callable[[], Any] = lambda: None
        if inner is None:
            from ._sizeof import deep_sizeof as inner
        self.inner = inner
        self.local = threading.local()  # pending key size of this thread's insert

    def __call__(self, obj: Any) -> int:
        # The core measures an entry's key, then its value: the first call of a
        # pair stores the key's size in ``pending``, the second adds it.
        local = self.local
        pending = getattr(local, "pending", None)
        local.pending = None  # nested inserts (from on_evict) start their own pairs
        try:
            size = self.inner(obj)
        except BaseException:
            local.pending = None
            raise
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            return size  # type: ignore[no-any-return]  # the core rejects it
        is_key = pending is None
        if not is_key and pending is _REJECTED:
            return size
        total = size if is_key else pending + size
        manager = self.manager_ref()
        cache = self.cache_ref()
        fits = True
        if manager is not None and cache is not None:
            fits = manager._make_room(self.name, cache, total)
        max_bytes = getattr(cache, "max_bytes", None) if not fits else None
        if max_bytes is not None:
            local.pending = _REJECTED if is_key else None
            return int(max_bytes) + 1  # does not fit the budget: the core refuses it
        local.pending = size if is_key else None
        return size


_REJECTED: Any = object()


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
        self.max_total_bytes = _check_positive("max_total_bytes", max_total_bytes,
                                               integer=True)
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
        self._sources: dict[str, Callable[[], Any]] = {}

    # -- registry -------------------------------------------------------------

    def create_cache(self, name: str, maxsize: Optional[int] = 128,
                     ttl: Optional[float] = None, max_bytes: Optional[int] = None,
                     **kwargs: Any) -> Any:
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
            wrapper = _BudgetSizeof(self, name, kwargs.get("sizeof"))
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
            diff = sorted(k for k in set(entry.settings) | set(settings)
                          if entry.settings.get(k, _MISSING) != settings.get(k, _MISSING))
            raise ValueError(f"cache {name!r} already exists with different settings "
                             f"({', '.join(diff)}): "
                             f"{ {k: entry.settings.get(k) for k in diff} }")
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
        return (f"<{type(self).__name__} caches={len(self)} "
                f"high_water={self.high_water} low_water={self.low_water}>")

    # -- memory ---------------------------------------------------------------

    def rss_bytes(self) -> int:
        """The process's RSS in bytes."""
        return int(self._rss())

    def memory_usage_mb(self) -> float:
        """The process's RSS in MiB."""
        return self.rss_bytes() / MB

    @property
    def rss_source(self) -> str:
        return self._rss_source or _procmem.rss_source()

    @property
    def limit(self) -> _procmem.MemoryLimit:
        """The memory limit and its source (detected once, then cached)."""
        limit = self._limit
        if limit is None:
            given = None if self._memory_limit_mb is None else int(self._memory_limit_mb * MB)
            limit = _procmem.memory_limit(given, root=self._cgroup_root)
            self._limit = limit
        return limit

    @property
    def memory_limit_mb(self) -> float:
        return self.limit.nbytes / MB

    def redetect_limit(self) -> _procmem.MemoryLimit:
        """Forget the cached limit and detect it again."""
        self._limit = None
        return self.limit

    def total_nbytes(self) -> int:
        """Sum of every cache's accounted bytes."""
        with self._lock:
            caches = [e.cache for e in self._caches.values()]
        return sum(c.nbytes for c in caches)

    # -- usage tracking -------------------------------------------------------

    def _observe(self) -> list[tuple[str, _Entry]]:
        """Update last-used times from counter changes; entries LRU-first."""
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
            others = sorted(((e.last_used, e.seq, e.cache) for n, e in self._caches.items()
                             if e.cache is not cache), key=lambda t: (t[0], t[1]))
            caches = [e.cache for e in self._caches.values()]
        if not any(c is cache for c in caches):
            caches.append(cache)
        need = sum(c.nbytes for c in caches) + incoming - budget
        if need <= 0:
            return True
        for _, _, other in others:
            need -= self._free_bytes(other, need)
            if need <= 0:
                return True
        need -= self._free_bytes(cache, need)
        return need <= 0

    @staticmethod
    def _free_bytes(cache: Any, need: int) -> int:
        """Trim LRU entries of ``cache`` until about ``need`` bytes are released.

        Safe to call from inside another cache's ``sizeof``: both cores measure
        before taking their own lock, so no lock is held here.
        """
        freed = 0
        for _ in range(8):
            size, before = len(cache), cache.nbytes
            if size == 0 or before == 0:
                break
            count = max(1, math.ceil((need - freed) / (before / size)))
            try:
                cache.trim(min(1.0, count / size))
            except Exception:  # noqa: BLE001 - on_evict raised; the entries are gone
                pass
            freed += max(0, before - cache.nbytes)
            if freed >= need:
                break
        return freed

    # -- cleanup --------------------------------------------------------------

    def should_cleanup(self, rss: Optional[int] = None) -> bool:
        """Whether RSS is above ``high_water`` of the limit."""
        rss = self.rss_bytes() if rss is None else rss
        return rss > self.high_water * self.limit.nbytes

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

    def cleanup(self, reason: str = "forced", *, fraction: Optional[float] = None,
                collect: bool = True) -> Optional[CleanupEvent]:
        """Run one cleanup now, trimming every cache; returns its event.

        ``fraction`` overrides ``cleanup_fraction`` for this run, ``collect=False``
        skips ``gc.collect()``. Waits for a cleanup running on another thread;
        returns None when called from inside a cleanup on this thread.
        """
        if fraction is not None:
            fraction = _check_fraction("fraction", fraction)
        return self._run(reason, self.rss_bytes(), None, blocking=True,
                         fraction=fraction, collect=collect)

    def _run(self, reason: str, rss_before: int, target: Optional[int], *,
             blocking: bool, fraction: Optional[float] = None,
             collect: bool = True) -> Optional[CleanupEvent]:
        if self._cleanup_thread == threading.get_ident():
            return None  # re-entered from a callback of the running cleanup
        if not self._cleanup_lock.acquire(blocking=blocking):
            return None
        self._cleanup_thread = threading.get_ident()
        try:
            return self._cleanup(reason, rss_before, target,
                                 fraction or self.cleanup_fraction, collect)
        finally:
            self._cleanup_thread = None
            self._last_cleanup_end = self._clock()
            self._cleanup_lock.release()

    def _cleanup(self, reason: str, rss_before: int, target: Optional[int],
                 fraction: float, collect: bool) -> CleanupEvent:
        started = time.perf_counter()
        limit = self.limit.nbytes
        event = CleanupEvent(time=time.time(), reason=reason, rss_before=rss_before,
                             limit_bytes=limit, target_bytes=target)
        entries = self._observe()

        def registered(name: str, entry: _Entry) -> bool:
            with self._lock:
                return self._caches.get(name) is entry

        # 1. expired entries first.
        for name, entry in entries:
            if not registered(name, entry):
                continue
            try:
                event.entries_expired += entry.cache.expire()
            except Exception as exc:  # noqa: BLE001 - recorded, the rest goes on
                event.errors.append(f"{name}: expire: {type(exc).__name__}: {exc}")
        # 2. trim, least recently used cache first.
        need = None if target is None else rss_before - target
        if need is not None and not any(e.cache.nbytes for _, e in entries):
            need = None  # nothing accounted: no estimate to stop on
        for name, entry in entries:
            if need is not None and event.accounted_bytes_released >= need:
                break
            if not registered(name, entry):
                event.skipped.append(name)
                continue
            cache = entry.cache
            try:
                before = cache.stats()
            except Exception as exc:  # noqa: BLE001
                event.errors.append(f"{name}: stats: {type(exc).__name__}: {exc}")
                continue
            if not before.get("size"):
                continue
            try:
                cache.trim(fraction)
            except Exception as exc:  # noqa: BLE001 - on_evict raised; trim finished
                event.errors.append(f"{name}: trim: {type(exc).__name__}: {exc}")
            try:
                after = cache.stats()
            except Exception as exc:  # noqa: BLE001
                event.errors.append(f"{name}: stats: {type(exc).__name__}: {exc}")
                continue
            event.caches_trimmed.append(name)
            event.entries_evicted += max(0, after["evictions_by_reason"]["trim"]
                                         - before["evictions_by_reason"]["trim"])
            event.accounted_bytes_released += max(0, before["nbytes"] - after["nbytes"])
        # 3. collect, 4. give freed heap back to the kernel.
        if collect:
            t0 = time.perf_counter()
            try:
                event.objects_collected = gc.collect()
            except Exception as exc:  # noqa: BLE001 - a finalizer raised
                event.errors.append(f"gc.collect: {type(exc).__name__}: {exc}")
            event.gc_duration = time.perf_counter() - t0
        try:
            event.malloc_trimmed = _procmem.malloc_trim(0)
        except Exception as exc:  # noqa: BLE001
            event.errors.append(f"malloc_trim: {type(exc).__name__}: {exc}")
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
        if not callable(source):
            raise TypeError(f"source must be callable, not {type(source).__name__}")
        with self._lock:
            self._sources[name] = source

    def unregister_stats_source(self, name: str) -> bool:
        with self._lock:
            return self._sources.pop(name, None) is not None

    def _source_stats(self) -> dict[str, Any]:
        with self._lock:
            sources = list(self._sources.items())
        out: dict[str, Any] = {}
        for name, source in sources:
            try:
                out[name] = source()
            except Exception as exc:  # noqa: BLE001 - one broken source never hides the rest
                out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        return out

    def stats(self) -> dict[str, Any]:
        """Process memory, the limit, every cache, totals and recent cleanups."""
        rss = self.rss_bytes()
        limit = self.limit
        entries = self._observe()
        now = self._clock()
        caches: dict[str, Any] = {}
        totals = {"caches": 0, "entries": 0, "nbytes": 0, "hits": 0, "misses": 0,
                  "evictions": 0, "expirations": 0, "rejected": 0}
        for name, entry in sorted(entries):
            try:
                st = dict(entry.cache.stats())
            except Exception as exc:  # noqa: BLE001
                caches[name] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            st["idle_seconds"] = max(0.0, now - entry.last_used)
            caches[name] = st
            totals["caches"] += 1
            totals["entries"] += st.get("size", 0)
            for k in ("nbytes", "hits", "misses", "evictions", "expirations", "rejected"):
                totals[k] += st.get(k, 0)
        lookups = totals["hits"] + totals["misses"]
        totals["hit_rate"] = totals["hits"] / lookups if lookups else 0.0
        totals["mb"] = totals["nbytes"] / MB
        return {
            "process": {"rss_bytes": rss, "rss_mb": rss / MB, "rss_source": self.rss_source,
                        "limit_fraction": rss / limit.nbytes if limit.nbytes else None},
            "limit": {"bytes": limit.nbytes, "mb": limit.mb, "source": limit.source,
                      "high_water": self.high_water, "low_water": self.low_water,
                      "high_water_bytes": int(self.high_water * limit.nbytes),
                      "low_water_bytes": int(self.low_water * limit.nbytes)},
            "max_total_bytes": self.max_total_bytes,
            "cleanup_fraction": self.cleanup_fraction,
            "min_interval": self.min_interval,
            "caches": caches,
            "totals": totals,
            "sources": self._source_stats(),
            "cleanups": [e.as_dict() for e in self._history.snapshot()],
            "cleanup_count": self._cleanups,
            "cleanups_dropped": self._history.dropped,
            "cleanups_skipped_interval": self._skipped_interval,
        }


#: The process-wide default manager (limit detected on first use).
cache_manager = CacheManager()
