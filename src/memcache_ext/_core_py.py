"""PyLruCache: the pure-Python twin of the compiled CLruCache.

It is the fallback where no compiled extension is available, the reference in
differential tests and the baseline in benchmarks. Behaviour, errors and their
messages are the same as CLruCache's; the test suite runs against both.

Layout: an OrderedDict maps each key to an entry ``[value, expires, nbytes]``
in recency order (first = least recently used). OrderedDict is implemented in
C, so each of its operations is atomic under the GIL; that is what the design
leans on:

* Reads take no lock. A hit is ``od[key]`` then ``od.move_to_end(key)``, two
  atomic steps; if a writer removes the key in between, the read still
  returns the value it found (as it would had it run a moment earlier).
  Hit and miss counters are ``itertools.count`` objects, whose ``__next__``
  is one atomic C call, so concurrent reads never lose a count.
* Writes (insert, evict, expire, trim, resize, clear) hold one RLock. It is
  re-entrant because a key's ``__eq__`` runs inside OrderedDict operations
  and may call back into the cache. ``sizeof`` and a custom ``timer`` run
  before the lock is taken, as in the compiled core.
* Removed entries are released, and ``on_evict`` called, after the lock is
  dropped.
"""

from __future__ import annotations

import itertools
import threading
import time
import types
from collections import OrderedDict
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, Callable, Generic, Optional, TypeVar, Union, overload

from ._constants import UNSET
from ._stats import repr_cache, stats_dict
from ._validate import (
    check_callable,
    check_fraction,
    check_nbytes,
    check_size,
    check_ttl,
    iter_pairs,
    trim_count,
)

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")

VALUE, EXPIRES, NBYTES = range(3)
_MISSING: Any = object()
_INF = float("inf")


class _Count:
    """An exact counter that threads bump without a lock (see the module doc)."""

    __slots__ = ("bump", "_reads")

    def __init__(self) -> None:
        self.bump = itertools.count().__next__
        self._reads = 0

    def value(self) -> int:
        """The count so far; reading consumes one tick, which is subtracted."""
        value = self.bump() - self._reads
        self._reads += 1
        return value


class PyLruCache(Generic[K, V]):
    """A thread-safe LRU cache with optional TTL and byte bound (pure Python).

    See CLruCache for the contract; both classes keep the same one.
    """

    __slots__ = (
        "_od", "_od_get", "_move_to_end", "_hit", "_miss", "_lock", "_maxsize", "_ttl", "_max_bytes", "_sizeof", "_timer",
        "_on_evict", "_nbytes", "_n_ttl", "_hits", "_misses", "_by_reason",
        "_rejected", "__weakref__",
    )

    def __init__(
        self,
        maxsize: Optional[int] = 128,
        ttl: Optional[float] = None,
        *,
        max_bytes: Optional[int] = None,
        sizeof: Optional[Callable[[Any], int]] = None,
        timer: Optional[Callable[[], float]] = None,
        on_evict: Optional[Callable[[Any, Any, str], Any]] = None,
    ) -> None:
        self._maxsize = check_size("maxsize", maxsize)
        self._ttl = check_ttl(ttl)
        self._max_bytes = check_size("max_bytes", max_bytes)
        self._sizeof = check_callable("sizeof", sizeof)
        self._timer = check_callable("timer", timer)
        self._on_evict = check_callable("on_evict", on_evict)
        self._od: OrderedDict[Any, list[Any]] = OrderedDict()
        self._od_get = self._od.get  # bound once: the read path is all lookups
        self._move_to_end = self._od.move_to_end
        self._lock = threading.RLock()
        self._nbytes = 0
        self._n_ttl = 0
        self._rejected = 0
        self._by_reason = {"capacity": 0, "bytes": 0, "expired": 0, "trim": 0}
        self._new_counters()

    __class_getitem__ = classmethod(types.GenericAlias)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # CLruCache is a final type; the twin refuses subclasses the same way.
        raise TypeError("type 'PyLruCache' is not an acceptable base type")

    # -- internals --------------------------------------------------------------

    def _new_counters(self) -> None:
        self._hits = _Count()
        self._misses = _Count()
        self._hit = self._hits.bump  # bound once: called on every read
        self._miss = self._misses.bump

    def _now(self) -> float:
        return self._timer() if self._timer is not None else time.monotonic()

    def _clock(self, need: bool = False) -> float:
        """The time for this operation, read only when some entry has a TTL."""
        return self._now() if (need or self._n_ttl) else 0.0

    def _sizes(self, key: Any, value: Any) -> int:
        sizeof = self._sizeof
        if sizeof is None:
            from ._sizeof import deep_sizeof as sizeof
        return check_nbytes(sizeof(key)) + check_nbytes(sizeof(value))

    @staticmethod
    def _live(entry: list[Any], now: float) -> bool:
        exp = entry[EXPIRES]
        return exp is None or now < exp

    def _forget(self, key: Any, entry: list[Any], reason: Optional[str],
                dropped: list[Any]) -> None:
        """Account for an entry already taken out of the dict (lock held)."""
        self._nbytes -= entry[NBYTES]
        if entry[EXPIRES] is not None:
            self._n_ttl -= 1
        if reason is not None:
            self._by_reason[reason] += 1
        dropped.append((key, entry[VALUE], reason))

    def _remove(self, key: Any, entry: list[Any], reason: Optional[str],
                dropped: list[Any]) -> None:
        """Remove ``key`` if it still maps to ``entry`` (lock held)."""
        if self._od.get(key) is entry:  # may run __eq__
            if self._od.pop(key, None) is entry:
                self._forget(key, entry, reason, dropped)

    def _evict_to_fit(self, now: float, dropped: list[Any]) -> None:
        od = self._od
        maxsize, max_bytes = self._maxsize, self._max_bytes
        while od:
            if maxsize is not None and len(od) > maxsize:
                reason = "capacity"
            elif max_bytes is not None and self._nbytes > max_bytes:
                reason = "bytes"
            else:
                return
            key, entry = od.popitem(last=False)
            self._forget(key, entry, reason if self._live(entry, now) else "expired", dropped)

    def _release(self, dropped: list[Any]) -> None:
        """Call ``on_evict`` for automatic removals, after the lock is dropped.

        Every entry is released even if a callback raises; the first exception
        is raised at the end.
        """
        on_evict = self._on_evict
        error: Optional[BaseException] = None
        if on_evict is not None:
            for key, value, reason in dropped:
                if reason is not None:
                    try:
                        on_evict(key, value, reason)
                    except BaseException as exc:  # noqa: BLE001 - re-raised below
                        if error is None:
                            error = exc
        dropped.clear()
        if error is not None:
            raise error

    def _store(self, key: Any, value: Any, ttl: Optional[float]) -> bool:
        """set(): measure and read the clock first, then one locked change."""
        nbytes = 0 if self._max_bytes is None else self._sizes(key, value)
        now = self._now() if (ttl is not None or self._n_ttl) else 0.0
        expires = None if ttl is None or ttl == _INF else now + ttl
        dropped: list[Any] = []
        try:
            with self._lock:
                od = self._od
                if self._max_bytes is not None and nbytes > self._max_bytes:
                    self._rejected += 1
                    old = od.pop(key, None)  # may run __eq__
                    if old is not None:
                        self._forget(key, old, None, dropped)
                    return False
                entry = od.get(key)  # may run __eq__
                if entry is None:
                    od[key] = [value, expires, nbytes]  # may run __eq__
                else:
                    # In place: a pop and re-insert would leave a dummy slot
                    # behind and make the dict resize every few thousand sets.
                    od.move_to_end(key)
                    dropped.append((key, entry[VALUE], None))
                    self._nbytes -= entry[NBYTES]
                    self._n_ttl -= entry[EXPIRES] is not None
                    entry[VALUE], entry[EXPIRES], entry[NBYTES] = value, expires, nbytes
                self._nbytes += nbytes
                if expires is not None:
                    self._n_ttl += 1
                if self._maxsize is not None and len(od) > self._maxsize or (
                        self._max_bytes is not None and self._nbytes > self._max_bytes):
                    self._evict_to_fit(now, dropped)
                return True
        finally:
            if dropped:
                self._release(dropped)

    def _expired_entry(self, key: Any, entry: list[Any]) -> None:
        """Drop an entry a read found expired."""
        dropped: list[Any] = []
        with self._lock:
            self._remove(key, entry, "expired", dropped)
        self._release(dropped)

    def _peek_entry(self, key: Any) -> Optional[list[Any]]:
        entry = self._od.get(key)  # may run __eq__
        if entry is None or (entry[EXPIRES] is not None and self._now() >= entry[EXPIRES]):
            return None
        return entry

    # -- mapping interface ------------------------------------------------------

    def __getitem__(self, key: K) -> V:
        # Fast path for the common hit on an entry without TTL; anything else
        # (a miss, a TTL, a race) goes through get().
        entry = self._od_get(key)  # may run __eq__
        if entry is not None and entry[EXPIRES] is None:
            try:
                self._move_to_end(key)
            except KeyError:
                pass
            self._hit()
            return entry[VALUE]  # type: ignore[no-any-return]
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value  # type: ignore[no-any-return]

    @overload
    def get(self, key: K) -> Optional[V]: ...
    @overload
    def get(self, key: K, default: Union[V, D]) -> Union[V, D]: ...

    def get(self, key: Any, default: Any = None) -> Any:
        """Return the value for ``key`` (a hit makes it most recently used)."""
        entry = self._od_get(key)  # may run __eq__ (its errors propagate)
        if entry is None:
            self._miss()
            return default
        exp = entry[EXPIRES]
        if exp is not None and self._now() >= exp:
            self._expired_entry(key, entry)
            self._miss()
            return default
        try:
            self._move_to_end(key)
        except KeyError:
            pass  # removed by another thread since: still a hit on what we read
        self._hit()
        return entry[VALUE]

    def __setitem__(self, key: K, value: V) -> None:
        self._store(key, value, self._ttl)

    def set(self, key: K, value: V, ttl: Optional[float] = None) -> bool:
        """Insert or replace ``key``; ``ttl`` overrides the default TTL.

        Returns False when the entry alone is larger than ``max_bytes`` (it is
        refused, counted in ``rejected``, and any older value for the key is
        dropped).
        """
        return self._store(key, value, self._ttl if ttl is None else check_ttl(ttl))

    def __delitem__(self, key: K) -> None:
        self.pop(key)

    def __contains__(self, key: object) -> bool:
        return self._peek_entry(key) is not None

    def __len__(self) -> int:
        return len(self._od)

    def _snapshot(self) -> list[tuple[Any, Any]]:
        now = self._clock()
        with self._lock:
            items = list(self._od.items())
        return [(k, e[VALUE]) for k, e in items if self._live(e, now)]

    def __iter__(self) -> Iterator[K]:
        """Iterate over a snapshot of the keys, least recently used first."""
        return iter([k for k, _ in self._snapshot()])

    def keys(self) -> list[K]:  # type: ignore[override]
        """A snapshot list of the keys, least recently used first."""
        return [k for k, _ in self._snapshot()]

    def values(self) -> list[V]:  # type: ignore[override]
        """A snapshot list of the values, least recently used first."""
        return [v for _, v in self._snapshot()]

    def items(self) -> list[tuple[K, V]]:  # type: ignore[override]
        """A snapshot list of (key, value) pairs, least recently used first."""
        return self._snapshot()

    def peek(self, key: K, default: Any = None) -> Any:
        """Return the value for ``key`` without counting or touching recency."""
        entry = self._peek_entry(key)
        return default if entry is None else entry[VALUE]

    def pop(self, key: K, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value (no counting, no callback)."""
        now = self._clock()
        dropped: list[Any] = []
        with self._lock:
            entry = self._od.pop(key, None)  # may run __eq__
            if entry is not None:
                live = self._live(entry, now)
                self._forget(key, entry, None if live else "expired", dropped)
                if not live:
                    entry = None
        self._release(dropped)
        if entry is not None:
            return entry[VALUE]
        if default is _MISSING:
            raise KeyError(key)
        return default

    def popitem(self) -> tuple[K, V]:
        """Remove and return the least recently used (key, value) pair."""
        now = self._clock()
        dropped: list[Any] = []
        item = None
        with self._lock:
            while self._od:
                key, entry = self._od.popitem(last=False)
                live = self._live(entry, now)
                self._forget(key, entry, None if live else "expired", dropped)
                if live:
                    item = (key, entry[VALUE])
                    break
        self._release(dropped)
        if item is None:
            raise KeyError("popitem(): cache is empty")
        return item

    def setdefault(self, key: K, default: Any = None) -> Any:
        """Return the value for ``key``, inserting ``default`` on a miss."""
        value = self.get(key, _MISSING)
        if value is not _MISSING:
            return value
        self._store(key, default, self._ttl)
        return default

    def get_or_set(self, key: K, factory: Callable[[], V], ttl: Optional[float] = None) -> V:
        """Return the cached value, or store and return ``factory()``.

        The factory runs once per miss, with no lock held. If another caller
        stored the key meanwhile, that value wins and is returned.
        """
        if not callable(factory):
            raise TypeError(f"factory must be callable, not {type(factory).__name__}")
        ttl = self._ttl if ttl is None else check_ttl(ttl)
        value = self.get(key, _MISSING)
        if value is not _MISSING:
            return value  # type: ignore[no-any-return]
        value = factory()
        entry = self._od.get(key)  # may run __eq__
        if entry is not None:
            if entry[EXPIRES] is None or self._now() < entry[EXPIRES]:
                return entry[VALUE]  # type: ignore[no-any-return]
            self._expired_entry(key, entry)
        self._store(key, value, ttl)
        return value

    def update(self, other: Any = (), /, **kwargs: V) -> None:
        """Insert every pair of ``other`` (a mapping or pairs) and ``kwargs``."""
        for key, value in iter_pairs(other, kwargs):
            self._store(key, value, self._ttl)

    def clear(self) -> None:
        """Remove every entry (no callbacks; statistics are kept)."""
        with self._lock:
            old = list(self._od.items())
            self._od.clear()
            self._nbytes = 0
            self._n_ttl = 0
        del old  # released outside the lock

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return dict(self.items()) == dict(other.items())

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        running = _repr_running()
        if id(self) in running:
            return f"{type(self).__name__}(...)"
        running.add(id(self))
        try:
            return repr_cache(type(self).__name__, self.items(), self._maxsize)
        finally:
            running.discard(id(self))

    # -- cache-specific ---------------------------------------------------------

    def expire(self) -> int:
        """Drop every expired entry now; return how many were dropped."""
        if not self._n_ttl:
            return 0
        now = self._now()
        dropped: list[Any] = []
        with self._lock:
            od = self._od
            for key, entry in list(od.items()):
                if not self._live(entry, now) and od.pop(key, None) is entry:
                    self._forget(key, entry, "expired", dropped)
        count = len(dropped)
        self._release(dropped)
        return count

    def trim(self, fraction: float = 0.5) -> int:
        """Evict ``fraction`` of the entries, least recently used first."""
        fraction = check_fraction(fraction)
        dropped: list[Any] = []
        with self._lock:
            od = self._od
            for _ in range(trim_count(len(od), fraction)):
                key, entry = od.popitem(last=False)
                self._forget(key, entry, "trim", dropped)
        count = len(dropped)
        self._release(dropped)
        return count

    def resize(self, maxsize: Any = UNSET, max_bytes: Any = UNSET) -> None:
        """Change the bounds (None removes one), evicting to fit."""
        if maxsize is not UNSET:
            maxsize = check_size("maxsize", maxsize)
        if max_bytes is not UNSET:
            max_bytes = check_size("max_bytes", max_bytes)
            if max_bytes is not None and self._max_bytes is None:
                self._measure_all()
            elif max_bytes is None:
                self._set_all_nbytes({})
            self._max_bytes = max_bytes
        if maxsize is not UNSET:
            self._maxsize = maxsize
        now = self._clock()
        dropped: list[Any] = []
        with self._lock:
            self._evict_to_fit(now, dropped)
        self._release(dropped)

    def _measure_all(self) -> None:
        """Measure every entry when a byte bound is first set (sizeof runs unlocked)."""
        with self._lock:
            items = list(self._od.items())
        self._set_all_nbytes({id(e): self._sizes(k, e[VALUE]) for k, e in items})

    def _set_all_nbytes(self, sizes: dict[int, int]) -> None:
        with self._lock:
            total = 0
            for entry in self._od.values():
                entry[NBYTES] = sizes.get(id(entry), 0)
                total += entry[NBYTES]
            self._nbytes = total

    def stats(self) -> dict[str, Any]:
        """Counters and sizes; see the README for each key."""
        with self._lock:
            return stats_dict(len(self._od), self._maxsize, self._nbytes, self._max_bytes,
                              self._hits.value(), self._misses.value(), self._by_reason,
                              self._rejected, self._ttl)

    def reset_stats(self) -> None:
        """Zero the hit, miss, eviction, expiration and rejection counters."""
        with self._lock:
            self._new_counters()
            self._rejected = 0
            for reason in self._by_reason:
                self._by_reason[reason] = 0

    @property
    def maxsize(self) -> Optional[int]:
        return self._maxsize

    @property
    def ttl(self) -> Optional[float]:
        return self._ttl

    @property
    def max_bytes(self) -> Optional[int]:
        return self._max_bytes

    @property
    def nbytes(self) -> int:
        return self._nbytes

    # -- copying and pickling ---------------------------------------------------

    def copy(self) -> "PyLruCache[K, V]":
        """A shallow copy with the same settings and entries (fresh statistics)."""
        cls, args, state = self.__reduce__()
        new = cls(*args)
        new.__setstate__(state)
        return new  # type: ignore[no-any-return]

    __copy__ = copy

    def __reduce__(self) -> tuple[Any, ...]:
        now = self._clock()
        with self._lock:
            items = list(self._od.items())
        entries = [(k, e[VALUE], None if e[EXPIRES] is None else e[EXPIRES] - now, e[NBYTES])
                   for k, e in items if self._live(e, now)]
        state = (self._max_bytes, self._sizeof, self._timer, self._on_evict, entries)
        return (type(self), (self._maxsize, self._ttl), state)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        max_bytes, sizeof, timer, on_evict, entries = state
        self._max_bytes = check_size("max_bytes", max_bytes)
        self._sizeof = check_callable("sizeof", sizeof)
        self._timer = check_callable("timer", timer)
        self._on_evict = check_callable("on_evict", on_evict)
        now = self._now() if any(e[2] is not None for e in entries) else 0.0
        dropped: list[Any] = []
        with self._lock:
            for key, value, remaining, nbytes in entries:
                old = self._od.pop(key, None)
                if old is not None:
                    self._forget(key, old, None, dropped)
                expires = None if remaining is None else now + remaining
                self._od[key] = [value, expires, check_nbytes(nbytes)]
                self._nbytes += nbytes
                self._n_ttl += expires is not None
                self._evict_to_fit(now, dropped)
        self._release(dropped)


_repr_local = threading.local()


def _repr_running() -> set[int]:
    """Ids of caches whose repr is being built on this thread (recursion guard)."""
    running: Optional[set[int]] = getattr(_repr_local, "running", None)
    if running is None:
        running = _repr_local.running = set()
    return running


MutableMapping.register(PyLruCache)
