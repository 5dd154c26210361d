"""PyLruCache: the pure-Python twin of the compiled CLruCache.

It is the fallback where no compiled extension is available, the reference in
differential tests and the baseline in benchmarks. Behaviour, errors and their
messages are the same as CLruCache's; the test suite runs against both.

Layout (functools' pure lru_cache): a dict maps each key to a node, and the
nodes form a circular doubly-linked list through a sentinel ``root``:
``root[NEXT]`` is the least recently used entry, ``root[PREV]`` the most
recently used. One RLock guards both; it is re-entrant because user code (a
key's ``__eq__``, a ``sizeof``, a custom ``timer``) runs while it is held and
may call back into the cache. Every dict operation that can run ``__eq__``
happens before the list is touched, and removed entries are released (and
``on_evict`` called) only after the lock is dropped.
"""

from __future__ import annotations

import threading
import time
import types
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, Callable, Generic, Iterable, Optional, TypeVar, Union, overload

from ._common import (
    UNSET,
    check_callable,
    check_fraction,
    check_nbytes,
    check_size,
    check_ttl,
    repr_cache,
    stats_dict,
    trim_count,
)

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")

PREV, NEXT, KEY, VALUE, EXPIRES, NBYTES = range(6)
_MISSING: Any = object()
_Dropped = list  # list of (key, value, reason); reason None means "no callback"


class PyLruCache(Generic[K, V]):
    """A thread-safe LRU cache with optional TTL and byte bound (pure Python).

    See CLruCache for the contract; both classes keep the same one.
    """

    __slots__ = (
        "_map", "_root", "_lock", "_maxsize", "_ttl", "_max_bytes", "_sizeof",
        "_timer", "_on_evict", "_nbytes", "_n_ttl", "_hits", "_misses",
        "_by_reason", "_rejected", "__weakref__",
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
        self._map: dict[Any, list[Any]] = {}
        root: list[Any] = [None, None, None, None, None, 0]
        root[PREV] = root[NEXT] = root
        self._root = root
        self._lock = threading.RLock()
        self._nbytes = 0
        self._n_ttl = 0
        self._hits = 0
        self._misses = 0
        self._rejected = 0
        self._by_reason = {"capacity": 0, "bytes": 0, "expired": 0, "trim": 0}

    __class_getitem__ = classmethod(types.GenericAlias)

    # -- internals (call with the lock held) ----------------------------------

    def _now(self) -> float:
        return self._timer() if self._timer is not None else time.monotonic()

    def _clock(self, need: bool) -> float:
        """The time for this operation, read only when some entry has a TTL."""
        return self._now() if (need or self._n_ttl) else 0.0

    def _measure(self, key: Any, value: Any) -> int:
        return 0 if self._max_bytes is None else self._sizes(key, value)

    def _sizes(self, key: Any, value: Any) -> int:
        sizeof = self._sizeof
        if sizeof is None:
            from ._sizeof import deep_sizeof as sizeof
        return check_nbytes(sizeof(key)) + check_nbytes(sizeof(value))

    @staticmethod
    def _expired(node: list[Any], now: float) -> bool:
        exp = node[EXPIRES]
        return exp is not None and now >= exp

    def _unlink(self, node: list[Any]) -> None:
        prev, nxt = node[PREV], node[NEXT]
        prev[NEXT] = nxt
        nxt[PREV] = prev
        node[PREV] = node[NEXT] = None
        self._nbytes -= node[NBYTES]
        if node[EXPIRES] is not None:
            self._n_ttl -= 1

    def _link_mru(self, node: list[Any]) -> None:
        root = self._root
        last = root[PREV]
        node[PREV] = last
        node[NEXT] = root
        last[NEXT] = root[PREV] = node
        self._nbytes += node[NBYTES]
        if node[EXPIRES] is not None:
            self._n_ttl += 1

    def _touch(self, node: list[Any]) -> None:
        """Make ``node`` the most recently used."""
        root = self._root
        if root[PREV] is not node:
            prev, nxt = node[PREV], node[NEXT]
            prev[NEXT] = nxt
            nxt[PREV] = prev
            last = root[PREV]
            node[PREV] = last
            node[NEXT] = root
            last[NEXT] = root[PREV] = node

    def _remove(self, node: list[Any], reason: Optional[str], dropped: list[Any]) -> None:
        """Take ``node`` out of the map and the list; release it later."""
        if self._map.pop(node[KEY], None) is not node:  # may run __eq__
            return
        if node[NEXT] is not None:
            self._unlink(node)
        if reason is not None:
            self._by_reason[reason] += 1
        dropped.append((node[KEY], node[VALUE], reason))

    def _evict_to_fit(self, now: float, dropped: list[Any]) -> None:
        root = self._root
        maxsize, max_bytes = self._maxsize, self._max_bytes
        while root[NEXT] is not root:
            if maxsize is not None and len(self._map) > maxsize:
                reason = "capacity"
            elif max_bytes is not None and self._nbytes > max_bytes:
                reason = "bytes"
            else:
                return
            node = root[NEXT]
            if self._expired(node, now):
                reason = "expired"
            self._remove(node, reason, dropped)

    def _release(self, dropped: list[Any]) -> None:
        """Call ``on_evict`` for automatic removals, outside the lock."""
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

    def _lookup(self, key: Any, now: float, dropped: list[Any]) -> Optional[list[Any]]:
        """The live node for ``key`` or None; drops it if it has expired."""
        node = self._map.get(key)  # may run __eq__
        if node is not None and node[EXPIRES] is not None and now >= node[EXPIRES]:
            self._remove(node, "expired", dropped)
            return None
        return node

    def _insert(self, key: Any, value: Any, nbytes: int, expires: Optional[float],
                now: float, dropped: list[Any]) -> bool:
        max_bytes = self._max_bytes
        if max_bytes is not None and nbytes > max_bytes:
            self._rejected += 1
            old = self._map.get(key)
            if old is not None:
                self._remove(old, None, dropped)
            return False
        node = [None, None, key, value, expires, nbytes]
        # get + setitem, not setdefault: on 3.11 dict.setdefault can file the
        # key under a stale slot when a key's __eq__ mutates the dict.
        cur = self._map.get(key)  # may run __eq__
        if cur is None:
            self._map[key] = cur = node  # may run __eq__ again
        if cur is not node:
            dropped.append((cur[KEY], cur[VALUE], None))
            self._unlink(cur)
            cur[VALUE], cur[EXPIRES], cur[NBYTES] = value, expires, nbytes
            node = cur
        self._link_mru(node)
        self._evict_to_fit(now, dropped)
        return True

    def _expires(self, ttl: Optional[float], now: float) -> Optional[float]:
        return now + ttl if ttl is not None and ttl != float("inf") else None

    # -- mapping interface ----------------------------------------------------

    def __getitem__(self, key: K) -> V:
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
        dropped: list[Any] = []
        with self._lock:
            node = self._lookup(key, self._clock(False), dropped)
            if node is None:
                self._misses += 1
                value = default
            else:
                self._hits += 1
                self._touch(node)
                value = node[VALUE]
        if dropped:
            self._release(dropped)
        return value

    def __setitem__(self, key: K, value: V) -> None:
        self.set(key, value)

    def set(self, key: K, value: V, ttl: Optional[float] = None) -> bool:
        """Insert or replace ``key``; ``ttl`` overrides the default TTL.

        Returns False when the entry alone is larger than ``max_bytes`` (it is
        refused, counted in ``rejected``, and any older value for the key is
        dropped).
        """
        ttl = self._ttl if ttl is None else check_ttl(ttl)
        dropped: list[Any] = []
        with self._lock:
            nbytes = self._measure(key, value)
            now = self._clock(ttl is not None)
            stored = self._insert(key, value, nbytes, self._expires(ttl, now), now, dropped)
        self._release(dropped)
        return stored

    def __delitem__(self, key: K) -> None:
        if self.pop(key, _MISSING) is _MISSING:
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            node = self._map.get(key)
            return node is not None and not self._expired(node, self._clock(False))

    def __len__(self) -> int:
        return len(self._map)

    def _snapshot(self) -> list[tuple[Any, Any]]:
        with self._lock:
            now = self._clock(False)
            out = []
            root = self._root
            node = root[NEXT]
            while node is not root:
                if not self._expired(node, now):
                    out.append((node[KEY], node[VALUE]))
                node = node[NEXT]
            return out

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
        with self._lock:
            node = self._map.get(key)
            if node is None or self._expired(node, self._clock(False)):
                return default
            return node[VALUE]

    def pop(self, key: K, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value (no counting, no callback)."""
        dropped: list[Any] = []
        with self._lock:
            node = self._lookup(key, self._clock(False), dropped)
            if node is not None:
                self._remove(node, None, dropped)
        self._release(dropped)
        if node is not None:
            return node[VALUE]
        if default is _MISSING:
            raise KeyError(key)
        return default

    def popitem(self) -> tuple[K, V]:
        """Remove and return the least recently used (key, value) pair."""
        dropped: list[Any] = []
        with self._lock:
            now = self._clock(False)
            root = self._root
            item = None
            while root[NEXT] is not root:
                node = root[NEXT]
                if self._expired(node, now):
                    self._remove(node, "expired", dropped)
                    continue
                self._remove(node, None, dropped)
                item = (node[KEY], node[VALUE])
                break
        self._release(dropped)
        if item is None:
            raise KeyError("popitem(): cache is empty")
        return item

    def setdefault(self, key: K, default: Any = None) -> Any:
        """Return the value for ``key``, inserting ``default`` on a miss."""
        dropped: list[Any] = []
        with self._lock:
            node = self._lookup(key, self._clock(False), dropped)
            if node is not None:
                self._hits += 1
                self._touch(node)
                value = node[VALUE]
            else:
                self._misses += 1
                nbytes = self._measure(key, default)
                now = self._clock(self._ttl is not None)
                self._insert(key, default, nbytes, self._expires(self._ttl, now), now, dropped)
                value = default
        self._release(dropped)
        return value

    def get_or_set(self, key: K, factory: Callable[[], V], ttl: Optional[float] = None) -> V:
        """Return the cached value, or store and return ``factory()``.

        The factory runs once per miss, outside the lock. If another caller
        stored the key meanwhile, that value wins and is returned.
        """
        if not callable(factory):
            raise TypeError(f"factory must be callable, not {type(factory).__name__}")
        ttl = self._ttl if ttl is None else check_ttl(ttl)
        dropped: list[Any] = []
        with self._lock:
            node = self._lookup(key, self._clock(False), dropped)
            if node is not None:
                self._hits += 1
                self._touch(node)
                hit = node[VALUE]
            else:
                self._misses += 1
                hit = _MISSING
        self._release(dropped)
        if hit is not _MISSING:
            return hit  # type: ignore[no-any-return]
        value = factory()
        with self._lock:
            node = self._lookup(key, self._clock(False), dropped)
            if node is not None:
                value = node[VALUE]
            else:
                nbytes = self._measure(key, value)
                now = self._clock(ttl is not None)
                self._insert(key, value, nbytes, self._expires(ttl, now), now, dropped)
        self._release(dropped)
        return value

    def update(self, other: Any = (), /, **kwargs: V) -> None:
        """Insert every pair of ``other`` (a mapping or pairs) and ``kwargs``."""
        if hasattr(other, "keys"):
            for key in other.keys():
                self.set(key, other[key])
        else:
            for key, value in other:
                self.set(key, value)
        for key, value in kwargs.items():
            self.set(key, value)  # type: ignore[arg-type]

    def clear(self) -> None:
        """Remove every entry (no callbacks; statistics are kept)."""
        with self._lock:
            # In place: a lookup running in a key's __eq__ holds this dict.
            self._map.clear()
            root = self._root
            node = root[NEXT]
            root[PREV][NEXT] = None
            root[PREV] = root[NEXT] = root
            self._nbytes = 0
            self._n_ttl = 0
        # Outside the lock: break the detached chain so values are released
        # now, not at the next garbage collection.
        while node is not None and node is not root:
            nxt = node[NEXT]
            node[PREV] = node[NEXT] = None
            node = nxt

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

    # -- cache-specific -------------------------------------------------------

    def expire(self) -> int:
        """Drop every expired entry now; return how many were dropped."""
        dropped: list[Any] = []
        with self._lock:
            if self._n_ttl:
                now = self._now()
                root = self._root
                node = root[NEXT]
                while node is not root:
                    nxt = node[NEXT]
                    if self._expired(node, now):
                        self._remove(node, "expired", dropped)
                    node = nxt
        count = len(dropped)
        self._release(dropped)
        return count

    def trim(self, fraction: float = 0.5) -> int:
        """Evict ``fraction`` of the entries, least recently used first."""
        fraction = check_fraction(fraction)
        dropped: list[Any] = []
        with self._lock:
            root = self._root
            for _ in range(trim_count(len(self._map), fraction)):
                self._remove(root[NEXT], "trim", dropped)
        count = len(dropped)
        self._release(dropped)
        return count

    def resize(self, maxsize: Any = UNSET, max_bytes: Any = UNSET) -> None:
        """Change the bounds (None removes one), evicting to fit."""
        if maxsize is not UNSET:
            maxsize = check_size("maxsize", maxsize)
        if max_bytes is not UNSET:
            max_bytes = check_size("max_bytes", max_bytes)
        dropped: list[Any] = []
        with self._lock:
            if max_bytes is not UNSET and max_bytes is not None and self._max_bytes is None:
                self._measure_all()
            if maxsize is not UNSET:
                self._maxsize = maxsize
            if max_bytes is not UNSET:
                self._max_bytes = max_bytes
                if max_bytes is None:
                    self._set_all_nbytes(None)
            self._evict_to_fit(self._clock(False), dropped)
        self._release(dropped)

    def _measure_all(self) -> None:
        """Measure every entry when a byte bound is first set."""
        sizes = {id(n): self._sizes(n[KEY], n[VALUE]) for n in list(self._map.values())}
        self._set_all_nbytes(sizes)

    def _set_all_nbytes(self, sizes: Optional[dict[int, int]]) -> None:
        total = 0
        for node in self._map.values():
            node[NBYTES] = 0 if sizes is None else sizes.get(id(node), 0)
            total += node[NBYTES]
        self._nbytes = total

    def stats(self) -> dict[str, Any]:
        """Counters and sizes; see the README for each key."""
        with self._lock:
            return stats_dict(len(self._map), self._maxsize, self._nbytes, self._max_bytes,
                              self._hits, self._misses, self._by_reason, self._rejected,
                              self._ttl)

    def reset_stats(self) -> None:
        """Zero the hit, miss, eviction, expiration and rejection counters."""
        with self._lock:
            self._hits = self._misses = self._rejected = 0
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

    # -- copying and pickling -------------------------------------------------

    def copy(self) -> "PyLruCache[K, V]":
        """A shallow copy with the same settings and entries (fresh statistics)."""
        cls, args, state = self.__reduce__()
        new = cls(*args)
        new.__setstate__(state)
        return new  # type: ignore[no-any-return]

    __copy__ = copy

    def __reduce__(self) -> tuple[Any, ...]:
        with self._lock:
            now = self._now() if self._n_ttl else 0.0
            entries = []
            root = self._root
            node = root[NEXT]
            while node is not root:
                exp = node[EXPIRES]
                if exp is None or now < exp:
                    entries.append((node[KEY], node[VALUE],
                                    None if exp is None else exp - now, node[NBYTES]))
                node = node[NEXT]
            state = (self._max_bytes, self._sizeof, self._timer, self._on_evict, entries)
        return (type(self), (self._maxsize, self._ttl), state)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        max_bytes, sizeof, timer, on_evict, entries = state
        self._max_bytes = check_size("max_bytes", max_bytes)
        self._sizeof = check_callable("sizeof", sizeof)
        self._timer = check_callable("timer", timer)
        self._on_evict = check_callable("on_evict", on_evict)
        dropped: list[Any] = []
        with self._lock:
            now = self._now() if any(e[2] is not None for e in entries) else 0.0
            for key, value, remaining, nbytes in entries:
                self._insert(key, value, check_nbytes(nbytes),
                             None if remaining is None else now + remaining, now, dropped)
        self._release(dropped)


_repr_local = threading.local()


def _repr_running() -> set[int]:
    """Ids of caches whose repr is being built on this thread (recursion guard)."""
    running: Optional[set[int]] = getattr(_repr_local, "running", None)
    if running is None:
        running = _repr_local.running = set()
    return running


MutableMapping.register(PyLruCache)
