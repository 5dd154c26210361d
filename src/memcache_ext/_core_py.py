"""PyLruCache: the pure-Python twin of the compiled CLruCache.

It is the fallback where no compiled extension is available, the reference in
differential tests and the baseline in benchmarks. It follows the compiled
core step by step (read the docstring of ``_core_c.pyx``), so that both give
the same results, the same errors and the same hit/miss sequence:

* one ``threading.RLock`` around every operation; it is re-entrant because a
  key's ``__eq__``, called under it, may call back into the cache;
* ``sizeof``, ``timer`` and ``__hash__`` first (once per call), then a lookup
  in a plain dict from the hash to a chain of nodes, comparing keys here: if
  ``__eq__`` changed the cache (``_version``) the lookup starts over, as in C.
  User code never runs inside an OrderedDict operation: the orders (LRU, or
  S3-FIFO's two FIFOs) are OrderedDicts keyed by int tokens;
* removed entries are released, and ``on_evict`` called, after the lock is
  dropped; nothing the cache held is released while it is held;
* a failed allocation (MemoryError) leaves the structure whole, as in C: a
  region computes its new counters and grows its containers (undone if that
  fails) before it links or unlinks anything, and runs no generator
  expression (on CPython 3.12 and 3.13 a generator whose allocation fails
  computes garbage, or crashes the interpreter).

A node is a list: ``[key, value, expires, nbytes, token, next node with the
same hash, hash, frequency, in the small FIFO, slot]``; ``expires`` is None
for never, ``token`` None once the node left the cache. ``slot`` is its place
in ``_slots``, which holds every node as CLruCache's pool holds its entries
(a removed node's place is reused by the next one), in the order a limited
``expire`` goes through them.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Generic, Optional, TypeVar, Union, overload

from ._constants import GHOST_MAX, MAX_LOOKUP_RESTARTS, MISSING, UNSET
from ._stats import EVICTION_REASONS, CacheStats, repr_cache, stats_dict
from ._validate import (
    BOUND_TAKEN_DURING_MEASURE,
    MUTATED_DURING_LOOKUP,
    NO_BOUND_ON_HELD_ENTRIES,
    LazySignature,
    check_fraction,
    check_limit,
    check_nbytes,
    check_size,
    check_state,
    check_ttl,
    iter_pairs,
    parse_cache_args,
    trim_count,
)

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")

KEY, VALUE, EXPIRES, NBYTES, TOKEN, CHAIN, HASH, FREQ, SMALL, SLOT = range(10)
_HASH_MASK = 0x1FFFFFFF  # the hash bits the compiled core keeps
_ENTRY_BYTES_MAX = 0xFFFFFFFE  # larger entries are refused (as in C)
_INF = math.inf
_S_SET, _S_KEEP, _S_FILL = range(3)
_L_FREE, _L_VALID, _L_INVALID = range(3)
_CAPACITY, _BYTES, _EXPIRED, _TRIM = EVICTION_REASONS
_monotonic = time.monotonic


def _fingerprint(h: int) -> int:
    """The ghost's record of a key: its hash bits with the top bit set (as in _ghost.h)."""
    return (h & _HASH_MASK) | 0x80000000


class PyLruCache(Generic[K, V]):
    """A thread-safe cache with optional TTL and byte bound (pure Python).

    ``PyLruCache(maxsize=128, ttl=None, *, max_bytes=None, sizeof=None,
    timer=None, on_evict=None, policy="lru")``: the contract of CLruCache.
    """

    __slots__ = (
        "_lock",
        "_acquire",
        "_release_lock",
        "_buckets",
        "_main",
        "_small",
        "_tokens",
        "_ghost",
        "_ghost_cap",
        "_ghost_room",
        "_peak",
        "_expire_pos",
        "_slots",
        "_free_slots",
        "_ghost_limit",
        "_leases",
        "_n_leases",
        "_maxsize",
        "_max_bytes",
        "_ttl",
        "_sizeof",
        "_timer",
        "_on_evict",
        "_lru",
        "_policy",
        "_nbytes",
        "_n_ttl",
        "_small_bytes",
        "_small_cap",
        "_small_cap_bytes",
        "_has_evicted",
        "_version",
        "_settings_version",
        "_bytes_epoch",
        "_measuring",
        "_hits",
        "_misses",
        "_rejected",
        "_by_reason",
        "__weakref__",
    )

    __signature__ = LazySignature()

    # Set by __init__ (the rest by _new_state).
    _ttl: Optional[float]
    _policy: str
    _lru: bool
    _sizeof: Optional[Callable[[Any], int]]
    _timer: Optional[Callable[[], float]]
    _on_evict: Optional[Callable[[Any, Any, str], Any]]
    _hits: int
    _misses: int
    _rejected: int
    _by_reason: dict[str, int]

    if TYPE_CHECKING:

        def __init__(
            self,
            maxsize: Optional[int] = 128,
            ttl: Optional[float] = None,
            *,
            max_bytes: Optional[int] = None,
            sizeof: Optional[Callable[[Any], int]] = None,
            timer: Optional[Callable[[], float]] = None,
            on_evict: Optional[Callable[[Any, Any, str], Any]] = None,
            policy: str = "lru",
        ) -> None: ...
    else:

        def __init__(self, *args, **kwargs):
            maxsize, ttl, max_bytes, sizeof, timer, on_evict, policy = parse_cache_args(
                "PyLruCache", args, kwargs, stacklevel=2
            )
            if not hasattr(self, "_lock"):  # the first __init__
                self._new_state()
            # __init__ again on a live cache starts it afresh, as CLruCache does:
            # the new settings are made before the old values are released
            victims: list[Any] = []
            try:
                with self._lock:
                    before = len(self._main) + len(self._small)
                    self._take_all(victims)
                    self._bytes_epoch += 1
                    self._ghost.clear()
                    self._ghost_limit = self._ghost_room = 0  # it follows the new bounds
                    self._hits = self._misses = self._rejected = 0
                    self._by_reason = dict.fromkeys(EVICTION_REASONS, 0)
                    self._sizeof, self._timer, self._on_evict = sizeof, timer, on_evict
                    self._ttl = ttl
                    self._policy = policy
                    self._lru = policy == "lru"
                    self._set_bounds(maxsize, max_bytes)
                    self._maybe_shrink(before)
            finally:
                self._release(victims)

    def _new_state(self) -> None:
        try:
            self._lock = threading.RLock()
        except RuntimeError as exc:  # "can't allocate lock": a MemoryError, as in C
            raise MemoryError(str(exc)) from None
        # The hot paths take the lock through these (cheaper than `with`).
        self._acquire, self._release_lock = self._lock.acquire, self._lock.release
        self._buckets: dict[int, list[Any]] = {}
        self._main: OrderedDict[int, list[Any]] = OrderedDict()
        self._small: OrderedDict[int, list[Any]] = OrderedDict()
        self._tokens = itertools.count().__next__
        self._ghost: OrderedDict[int, None] = OrderedDict()
        self._ghost_limit = self._ghost_cap = 0
        self._ghost_room = 0  # the most records the ghost's dict has had room for
        self._peak = 0  # the most entries the last bulk removals started from
        self._slots: list[Any] = []  # every node at its slot, None where free (see above)
        self._free_slots: list[int] = []  # slots to reuse, the last freed first
        self._expire_pos = 0  # the slot the next limited expire() looks at first
        self._leases: list[list[int]] = []  # [hash bits, generation, state] per slot
        self._n_leases = 0
        self._nbytes = self._n_ttl = self._small_bytes = 0
        self._small_cap = self._small_cap_bytes = 0
        self._has_evicted = False
        self._version = self._settings_version = self._bytes_epoch = 0
        self._measuring = 0  # _measure_all calls under way (the bound set, sizes not yet)
        self._maxsize: Optional[int] = 128
        self._max_bytes: Optional[int] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # CLruCache is a final type; the twin refuses subclasses the same way.
        raise TypeError("type 'PyLruCache' is not an acceptable base type")

    # -- region helpers (lock held; no user code) --------------------------------

    def _add(self, node: list[Any]) -> None:
        """Link a new node (already filled in) into the hash chain and its list.
        What allocates comes first, undone if it fails: nothing is linked then."""
        h, token, nbytes = node[HASH], node[TOKEN], node[NBYTES]
        total, version = self._nbytes + nbytes, self._version + 1
        small_bytes = self._small_bytes + nbytes if node[SMALL] else self._small_bytes
        n_ttl = self._n_ttl + (node[EXPIRES] is not None)
        slots, free = self._slots, self._free_slots
        reused = bool(free)
        if reused:
            slot = free.pop()  # a list that shrinks may allocate too
        else:
            slot = len(slots)
            slots.append(None)
        order = self._small if node[SMALL] else self._main
        last = self._buckets.get(h)
        try:
            order[token] = node
            if last is None:
                self._buckets[h] = node
        except BaseException:
            order.pop(token, None)
            if reused:
                free.append(slot)
            else:
                slots.pop()
            raise
        if last is not None:  # at the end: colliding keys are compared oldest first, as C probes
            while last[CHAIN] is not None:
                last = last[CHAIN]
            last[CHAIN] = node
        slots[slot] = node
        node[SLOT] = slot
        self._nbytes, self._small_bytes, self._version = total, small_bytes, version
        self._n_ttl = n_ttl

    @staticmethod
    def _push(victims: list[Any], key: Any, value: Any, reason: Optional[str]) -> None:
        """One victim onto victims, flat, undone if an append fails. Appends make no
        tuple, so no garbage collection (whose finalizers may re-enter the cache) runs
        between a region's reads and its writes."""
        n = len(victims)
        try:
            victims.append(key)
            victims.append(value)
            victims.append(reason)
        except BaseException:
            del victims[n:]
            raise

    def _take(self, node: list[Any], reason: Optional[str], victims: list[Any]) -> None:
        """Take a node out; its key and value go to victims, released after the lock.
        What allocates comes first, undone if it fails: nothing is taken then."""
        h, nbytes, slot = node[HASH], node[NBYTES], node[SLOT]
        total, version = self._nbytes - nbytes, self._version + 1
        small_bytes = self._small_bytes - nbytes if node[SMALL] else self._small_bytes
        n_ttl = self._n_ttl - (node[EXPIRES] is not None)
        by_reason = self._by_reason[reason] + 1 if reason is not None else 0
        n = len(victims)
        try:  # _push, written out (the hot path), and the slot to reuse
            victims.append(node[KEY])
            victims.append(node[VALUE])
            victims.append(reason)
            self._free_slots.append(slot)
        except BaseException:
            del victims[n:]
            raise
        first = self._buckets[h]
        if first is node:
            if node[CHAIN] is None:
                del self._buckets[h]
            else:
                self._buckets[h] = node[CHAIN]
        else:
            while first[CHAIN] is not node:
                first = first[CHAIN]
            first[CHAIN] = node[CHAIN]
        del (self._small if node[SMALL] else self._main)[node[TOKEN]]
        node[TOKEN] = None
        self._slots[slot] = None
        self._nbytes, self._small_bytes, self._version = total, small_bytes, version
        self._n_ttl = n_ttl
        if reason is not None:
            self._by_reason[reason] = by_reason

    def _to_main(self, node: list[Any]) -> None:
        small_bytes = self._small_bytes - node[NBYTES]
        self._main[node[TOKEN]] = node  # first: if it fails, nothing moved
        del self._small[node[TOKEN]]
        self._small_bytes = small_bytes
        node[SMALL] = False

    def _on_hit(self, node: list[Any]) -> None:
        if self._lru:
            self._main.move_to_end(node[TOKEN])
        elif node[FREQ] < 3:
            node[FREQ] += 1

    def _main_over(self) -> bool:
        return (
            self._maxsize is not None and len(self._main) > self._maxsize - self._small_cap
        ) or (
            self._max_bytes is not None
            and self._nbytes - self._small_bytes > self._max_bytes - self._small_cap_bytes
        )

    def _small_full(self) -> bool:
        return (self._maxsize is not None and len(self._small) >= self._small_cap) or (
            self._max_bytes is not None and self._small_bytes >= self._small_cap_bytes
        )

    def _victim(self, now: Optional[float], to_ghost: bool) -> tuple[Optional[list[Any]], bool]:
        """(the node to evict next, whether it expired); see CLruCache._victim and _victim_scan."""
        main, small = self._main, self._small
        if self._lru:
            if not main:
                return None, False
            node = next(iter(main.values()))
            return node, self._expired(node, now)
        if not main and not small:
            return None, False
        self._has_evicted = True
        while True:
            # (an empty main queue is never "over": maxsize=0 makes its share -1)
            if not small or (main and self._main_over()):
                while main:
                    node = next(iter(main.values()))
                    if self._expired(node, now):
                        return node, True
                    if node[FREQ] == 0:
                        return node, False
                    node[FREQ] -= 1
                    main.move_to_end(node[TOKEN])
            else:
                while small:
                    node = next(iter(small.values()))
                    if self._expired(node, now):
                        return node, True
                    if node[FREQ] < 2:
                        if to_ghost:
                            self._ghost_add(_fingerprint(node[HASH]))
                        return node, False
                    node[FREQ] = 0
                    self._to_main(node)

    def _evict_to_fit(
        self, more: int, more_bytes: int, now: Optional[float], victims: list[Any]
    ) -> None:
        maxsize, max_bytes, main = self._maxsize, self._max_bytes, self._main
        if self._lru:  # _victim's LRU case, written out: this runs on every insert
            while main:
                if maxsize is not None and len(main) + more > maxsize:
                    reason = _CAPACITY
                elif max_bytes is not None and self._nbytes + more_bytes > max_bytes:
                    reason = _BYTES
                else:
                    return
                node = next(iter(main.values()))
                if node[EXPIRES] is not None and self._expired(node, now):
                    reason = _EXPIRED
                self._take(node, reason, victims)
            return
        while self._main or self._small:
            count = len(self._main) + len(self._small)
            if self._maxsize is not None and count + more > self._maxsize:
                reason = _CAPACITY
            elif self._max_bytes is not None and self._nbytes + more_bytes > self._max_bytes:
                reason = _BYTES
            else:
                return
            victim, expired = self._victim(now, True)
            if victim is None:
                return
            self._take(victim, _EXPIRED if expired else reason, victims)

    def _set_bounds(self, maxsize: Optional[int], max_bytes: Optional[int]) -> None:
        """The bounds and what follows from them, computed before any is set (a
        MemoryError leaves the old ones)."""
        small_cap = max(1, maxsize // 10) if maxsize is not None else 0
        small_cap_bytes = max_bytes // 10 if max_bytes is not None else 0
        # the ghost's limit follows the entries held (see _put) up to _ghost_cap
        ghost_cap = 0
        if not self._lru:
            ghost_cap = GHOST_MAX if maxsize is None else min(maxsize * 9 // 10, GHOST_MAX)
        version = self._settings_version + 1  # a store in flight measures again
        if not self._lru:  # first: a MemoryError here (the call) leaves the bounds as they were
            held = len(self._main) + len(self._small)
            self._ghost_set_limit(min(max(held * 9 // 10, self._ghost_limit), ghost_cap))
        self._maxsize, self._max_bytes, self._settings_version = maxsize, max_bytes, version
        self._small_cap, self._small_cap_bytes = small_cap, small_cap_bytes
        self._ghost_cap = ghost_cap

    def _ghost_follow(self, held: int) -> None:
        """The ghost's limit follows the most entries held: 90 % of them, at most
        _ghost_cap (a cache far below its maxsize keeps a ghost that size)."""
        limit = held * 9 // 10
        if limit > self._ghost_limit:
            self._ghost_set_limit(min(limit, self._ghost_cap))

    def _ghost_add(self, fp: int) -> None:
        """Add fp unless it is there (it keeps its place); a full ghost drops its
        oldest first, as _ghost.h does."""
        ghost = self._ghost
        if self._ghost_limit <= 0:
            return
        while len(ghost) >= self._ghost_limit:
            ghost.popitem(last=False)
        ghost.setdefault(fp, None)

    def _ghost_set_limit(self, limit: int) -> None:
        self._ghost_limit = max(0, limit)
        self._ghost_room = max(self._ghost_room, self._ghost_limit)
        ghost = self._ghost
        try:  # optional: skipped on a MemoryError, as _ghost.h skips its repack (a ghost
            # over its limit drops its oldest at the next add)
            while len(ghost) > self._ghost_limit:
                ghost.popitem(last=False)
            if self._ghost_limit * 4 < self._ghost_room:
                # a dict keeps its size when emptied: a copy gives the memory back
                # (as _ghost.h repacks, when the limit fell under a quarter)
                self._ghost = OrderedDict(ghost)
                self._ghost_room = self._ghost_limit
        except MemoryError:
            pass

    def _maybe_shrink(self, before: int) -> None:
        """After bulk removals from ``before`` entries (clear, expire, trim, resize),
        give memory back as CLruCache does: a dict keeps its size when emptied, a
        copy does not. Only when the entries fell under a quarter of the most
        that these calls saw (order and nodes are kept)."""
        self._peak = max(self._peak, before)
        held = len(self._main) + len(self._small)
        if self._peak <= 64 or held * 4 >= self._peak:
            return
        # Everything is made first: a MemoryError leaves the old structure whole.
        buckets = dict(self._buckets)
        main, small = OrderedDict(self._main), OrderedDict(self._small)
        # The slots packed in their order, as CLruCache's pool: the cursor stays put.
        pos = 0
        for node in self._slots[: self._expire_pos]:  # no generator: see the module docstring
            pos += node is not None
        slots = [node for node in self._slots if node is not None]
        numbers = iter(list(range(len(slots))))  # made here: the loop below allocates nothing
        version = self._version + 1  # as CLruCache's repack: a lookup under way starts over
        free: list[int] = []
        self._buckets, self._main, self._small = buckets, main, small
        self._slots, self._free_slots, self._expire_pos = slots, free, pos
        for slot in numbers:
            slots[slot][SLOT] = slot
        self._peak, self._version = held, version

    def _take_all(self, victims: list[Any]) -> None:
        self._invalidate_leases(0, True)
        for order in (self._main, self._small):
            while order:
                self._take(next(iter(order.values())), None, victims)
        self._has_evicted = False

    # -- time (before the lock) ---------------------------------------------------

    def _clock(self, need: bool) -> Optional[float]:
        """The time for this operation: a custom timer is read up front, and only
        when some entry (or the one being stored) has a TTL; None: read lazily."""
        if self._timer is not None and (need or self._n_ttl):
            return _seconds(self._timer())
        return None

    def _expired(self, node: list[Any], now: Optional[float]) -> bool:
        exp = node[EXPIRES]
        if exp is None:
            return False
        if now is None:
            if self._timer is not None:
                return False  # the entry appeared after the timer was read
            now = _monotonic()
        return bool(now >= exp)

    @staticmethod
    def _expires(ttl: Optional[float], now: Optional[float]) -> Optional[float]:
        if ttl is None or ttl == _INF:
            return None
        return (_monotonic() if now is None else now) + ttl

    # -- lookup ---------------------------------------------------------------------

    def _find(self, key: Any, h: int) -> Optional[list[Any]]:
        """key's node or None (lock held). May run __eq__ (changes nothing)."""
        restarts = 0
        while True:
            version = self._version
            node = self._buckets.get(h)
            while node is not None:
                k = node[KEY]
                if k is key:
                    return node
                equal = bool(k == key)
                if self._version != version:
                    break  # the cache changed under __eq__: start over
                if equal:
                    return node
                node = node[CHAIN]
            else:
                return None
            restarts += 1
            if restarts > MAX_LOOKUP_RESTARTS:
                raise RuntimeError(MUTATED_DURING_LOOKUP)

    # -- releasing (after the lock) ---------------------------------------------------

    def _release(self, victims: list[Any]) -> None:
        """Call on_evict for the automatic removals, releasing each entry after
        its callback; every entry is released even if a callback raises, and
        the first exception is raised at the end."""
        on_evict = self._on_evict
        if on_evict is None:
            victims.clear()
            return
        error: Optional[BaseException] = None
        i = 0
        while i < len(victims):
            try:  # a MemoryError in this loop's own steps too: the other callbacks run
                key, value, reason = victims[i], victims[i + 1], victims[i + 2]
                victims[i] = victims[i + 1] = None
                if reason is not None:
                    on_evict(key, value, reason)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                if error is None:
                    error = exc
            key = value = None  # released after its callback
            i += 3
        victims.clear()
        if error is not None:
            raise error

    # -- measuring (before the lock) ----------------------------------------------------

    def _measure(self, key: Any, value: Any) -> int:
        if self._max_bytes is None:
            return 0
        return self._size_of(key) + self._size_of(value)

    def _size_of(self, obj: Any) -> int:
        if self._sizeof is None:
            from ._sizeof import deep_sizeof

            return min(deep_sizeof(obj), _ENTRY_BYTES_MAX + 1)
        return min(check_nbytes(self._sizeof(obj)), _ENTRY_BYTES_MAX + 1)

    # -- leases -----------------------------------------------------------------------

    def _lease_new(self, h: int) -> int:
        with self._lock:
            leases = self._leases
            i = len(leases)
            for j, slot in enumerate(leases):  # no generator: see the module docstring
                if slot[2] == _L_FREE:
                    i = j
                    break
            if i == len(leases):
                leases.append([0, 0, _L_FREE])
            slot = leases[i]
            slot[0], slot[1], slot[2] = h & _HASH_MASK, (slot[1] + 1) & 0xFFFFFFFF, _L_VALID
            self._n_leases += 1
            return i

    def _lease_end(self, i: int, gen: int) -> None:
        """End lease i of generation gen: see CLruCache._lease_end."""
        with self._lock:
            if (
                0 <= i < len(self._leases)
                and self._leases[i][2] != _L_FREE
                and self._leases[i][1] == gen
            ):
                self._leases[i][2] = _L_FREE
                self._n_leases -= 1

    def _invalidate_leases(self, hbits: int, every: bool) -> None:
        if self._n_leases:
            for slot in self._leases:
                if slot[2] == _L_VALID and (every or slot[0] == hbits):
                    slot[2] = _L_INVALID

    def _lease_slot(self, token: Any) -> int:
        if isinstance(token, int) and not isinstance(token, bool) and 0 <= token < 1 << 64:
            i = token & 0xFFFFFFFF
            with self._lock:
                if (
                    i < len(self._leases)
                    and self._leases[i][2] != _L_FREE
                    and self._leases[i][1] == token >> 32
                ):
                    return i
        raise ValueError(f"not an outstanding lease of this cache: {token!r}")

    # -- storing ------------------------------------------------------------------------

    def _store(
        self,
        key: Any,
        value: Any,
        ttl: Optional[float],
        mode: int,
        h: Optional[int] = None,
        lease: int = -1,
        gen: int = 0,
    ) -> Any:
        """set() (_S_SET: True, or False when refused), setdefault() (_S_KEEP)
        and fill() (_S_FILL) under lease ``lease`` of generation ``gen``: see
        CLruCache._store."""
        victims: list[Any] = []
        try:
            while True:
                settings = self._settings_version
                nbytes = 0 if self._max_bytes is None else self._measure(key, value)
                now = None if self._timer is None else self._clock(ttl is not None and ttl != _INF)
                if h is None:
                    h = hash(key)
                with self._lock:
                    node = self._buckets.get(h)
                    if node is not None and node[KEY] is not key:
                        node = self._find(key, h)
                    if self._settings_version != settings:
                        continue  # resize() or __init__ ran meanwhile: measure again
                    result = self._put(
                        key, value, h, nbytes, node, ttl, now, mode, lease, gen, victims
                    )
                    break
        finally:
            try:
                if mode == _S_FILL:
                    self._lease_end(lease, gen)
            finally:
                if victims:  # released even after a MemoryError, as in C
                    self._release(victims)
        return result

    def _put(
        self,
        key: Any,
        value: Any,
        h: int,
        nbytes: int,
        node: Optional[list[Any]],
        ttl: Optional[float],
        now: Optional[float],
        mode: int,
        lease: int,
        gen: int,
        victims: list[Any],
    ) -> Any:
        """_store's region (lock held)."""
        expired = node is not None and self._expired(node, now)
        if mode == _S_FILL and (
            self._leases[lease][1] != gen or self._leases[lease][2] != _L_VALID
        ):
            return value  # written or removed since the lease (or it ended): not stored
        if mode != _S_SET:
            if node is not None and not expired:
                return node[VALUE]  # another fill's value wins
        else:
            self._invalidate_leases(h & _HASH_MASK, False)
        if (
            self._maxsize == 0
            or nbytes > _ENTRY_BYTES_MAX
            or (self._max_bytes is not None and nbytes > self._max_bytes)
        ):
            self._rejected += 1
            if node is not None:  # never serve what the caller just replaced
                self._take(node, _EXPIRED if expired else None, victims)
            return False if mode == _S_SET else value
        if node is not None and mode == _S_SET:
            old_value, old_nbytes, old_expires = node[VALUE], node[NBYTES], node[EXPIRES]
            self._push(victims, None, old_value, None)  # the replaced value, released after
            self._replace(node, value, nbytes, self._expires(ttl, now))
            self._on_hit(node)
            self._version += 1
            try:
                self._evict_to_fit(0, 0, now, victims)
            except BaseException:  # a MemoryError: the old value back, unless it went too
                if node[TOKEN] is not None:
                    self._replace(node, old_value, old_nbytes, old_expires)
                raise
            return True
        if node is not None:  # an expired entry stored meanwhile (setdefault, fill)
            self._take(node, _EXPIRED, victims)
        in_ghost = False
        if not self._lru:
            fp = _fingerprint(h)
            if fp in self._ghost:
                del self._ghost[fp]
                in_ghost = True
        self._evict_to_fit(1, nbytes, now, victims)
        small = not (self._lru or in_ghost or (not self._has_evicted and self._small_full()))
        if self._ghost_limit < self._ghost_cap:
            self._ghost_follow(len(self._main) + len(self._small) + 1)
        self._add(
            [key, value, self._expires(ttl, now), nbytes, self._tokens(), None, h, 0, small, 0]
        )
        return True if mode == _S_SET else value

    def _lookup(self, key: Any, default: Any, count: bool) -> Any:
        """get()/[] (count) and peek(): see CLruCache._lookup."""
        now = self._clock(False)
        return self._lookup_hashed(key, hash(key), now, default, count)

    def _lookup_hashed(
        self, key: Any, h: int, now: Optional[float], default: Any, count: bool
    ) -> Any:
        victims: list[Any] = []
        try:
            with self._lock:
                node = self._find(key, h)
                if node is not None:
                    if not self._expired(node, now):
                        if count:
                            self._hits += 1
                            self._on_hit(node)
                        return node[VALUE]
                    if count:
                        self._take(node, _EXPIRED, victims)
                if count:
                    self._misses += 1
        finally:
            if victims:
                self._release(victims)
        return default

    # -- mapping interface ----------------------------------------------------------------

    def __getitem__(self, key: K) -> V:
        if self._timer is None:
            h = hash(key)
            self._acquire()
            try:  # get()'s common hit, written out again: this is the hot path
                node = self._buckets.get(h)
                if node is not None and node[KEY] is key and node[EXPIRES] is None:
                    self._hits += 1
                    if self._lru:
                        self._main.move_to_end(node[TOKEN])
                    elif node[FREQ] < 3:
                        node[FREQ] += 1
                    return node[VALUE]  # type: ignore[no-any-return]  # a stored value
            finally:
                self._release_lock()
            value = self._lookup_hashed(key, h, None, MISSING, True)
        else:
            value = self._lookup(key, MISSING, True)
        if value is MISSING:
            raise KeyError(key)
        return value  # type: ignore[no-any-return]  # a stored value

    @overload
    def get(self, key: K) -> Optional[V]: ...
    @overload
    def get(self, key: K, default: Union[V, D]) -> Union[V, D]: ...

    def get(self, key: Any, default: Any = None) -> Any:
        """Return the value for ``key``, or ``default`` (counts a hit or a miss)."""
        if self._timer is not None:
            return self._lookup(key, default, True)  # the timer runs before hashing
        h = hash(key)
        self._acquire()
        try:  # the common hit written out: the key itself, first in its chain, no TTL
            node = self._buckets.get(h)
            if node is not None and node[KEY] is key and node[EXPIRES] is None:
                self._hits += 1
                if self._lru:
                    self._main.move_to_end(node[TOKEN])
                elif node[FREQ] < 3:
                    node[FREQ] += 1
                return node[VALUE]
        finally:
            self._release_lock()
        return self._lookup_hashed(key, h, None, default, True)

    def __setitem__(self, key: K, value: V) -> None:
        self._store(key, value, self._ttl, _S_SET)

    def set(self, key: K, value: V, ttl: Optional[float] = None) -> bool:
        """Insert or replace ``key``; ``ttl`` overrides the default TTL.

        Returns False when the entry is refused: larger than ``max_bytes`` by
        itself (or 4 GiB and more), or ``maxsize`` is 0. A refusal is counted
        in ``rejected`` and drops any older value for the key.
        """
        return bool(self._store(key, value, self._ttl if ttl is None else check_ttl(ttl), _S_SET))

    def __delitem__(self, key: K) -> None:
        self.pop(key)

    def __contains__(self, key: object) -> bool:
        return self._lookup(key, MISSING, False) is not MISSING

    def __len__(self) -> int:
        with self._lock:  # not while another thread's store has removed but not yet added
            return len(self._main) + len(self._small)

    def peek(self, key: K, default: Any = None) -> Any:
        """Return the value for ``key`` without counting or changing recency."""
        return self._lookup(key, default, False)

    def _remove_key(self, key: Any) -> Any:
        now = self._clock(False)
        h = hash(key)
        victims: list[Any] = []
        value = MISSING
        try:
            with self._lock:
                node = self._find(key, h)
                self._invalidate_leases(h & _HASH_MASK, False)
                if node is not None:
                    if self._expired(node, now):
                        self._take(node, _EXPIRED, victims)
                    else:
                        value = node[VALUE]
                        self._take(node, None, victims)
        finally:
            self._release(victims)
        return value

    def pop(self, key: K, default: Any = MISSING) -> Any:
        """Remove ``key`` and return its value (counts nothing, calls no on_evict)."""
        value = self._remove_key(key)
        if value is not MISSING:
            return value
        if default is MISSING:
            raise KeyError(key)
        return default

    def invalidate(self, key: K) -> bool:
        """Remove ``key`` if present and refuse the fills of every lease on it
        taken before now. True if an entry was removed."""
        return self._remove_key(key) is not MISSING

    def popitem(self) -> tuple[K, V]:
        """Remove and return the entry eviction would take next (LRU: the least
        recently used)."""
        now = self._clock(False)
        victims: list[Any] = []
        item = None
        try:
            with self._lock:
                while self._main or self._small:
                    node, expired = self._victim(now, False)
                    assert node is not None
                    if expired:
                        self._take(node, _EXPIRED, victims)
                        continue
                    item = (node[KEY], node[VALUE])
                    self._invalidate_leases(node[HASH] & _HASH_MASK, False)
                    self._take(node, None, victims)
                    break
        finally:
            self._release(victims)
        if item is None:
            raise KeyError("popitem(): cache is empty")
        return item

    def setdefault(self, key: K, default: Any = None) -> Any:
        """Return the value for ``key``, inserting ``default`` on a miss (never
        overwrites)."""
        now = self._clock(False)
        h = hash(key)
        value = self._counted_lookup(key, h, now)
        if value is not MISSING:
            return value
        try:
            return self._store(key, default, self._ttl, _S_KEEP, h)
        except BaseException:
            with self._lock:
                self._misses -= 1  # a failed measurement leaves the statistics as they were
            raise

    def _counted_lookup(self, key: Any, h: int, now: Optional[float]) -> Any:
        victims: list[Any] = []
        try:
            with self._lock:
                node = self._find(key, h)
                if node is not None:
                    if not self._expired(node, now):
                        self._hits += 1
                        self._on_hit(node)
                        return node[VALUE]
                    self._take(node, _EXPIRED, victims)
                self._misses += 1
        finally:
            if victims:  # not on a hit: no call there, as before
                self._release(victims)
        return MISSING

    def get_or_set(self, key: K, factory: Callable[[], V], ttl: Optional[float] = None) -> V:
        """Return the cached value, or call ``factory()`` (no lock held) and store
        its result, unless the key was invalidated meanwhile (a lease: see
        ``invalidate``); the caller gets the value either way. A live value
        stored meanwhile by another fill wins and is returned."""
        if not callable(factory):
            raise TypeError(f"factory must be callable, not {type(factory).__name__}")
        ttl = self._ttl if ttl is None else check_ttl(ttl)
        now = self._clock(False)
        h = hash(key)
        value = self._counted_lookup(key, h, now)
        if value is not MISSING:
            return value  # type: ignore[no-any-return]  # a stored value
        lease = self._lease_new(h)
        gen = self._leases[lease][1]
        try:
            value = factory()
        except BaseException:
            self._lease_end(lease, gen)
            raise
        try:
            return self._store(key, value, ttl, _S_FILL, h, lease, gen)  # type: ignore[no-any-return]
        except BaseException:
            with self._lock:
                self._misses -= 1  # the measurement failed: statistics as they were
            raise

    def lease(self, key: K) -> int:
        """Start a fill of ``key`` (after a miss): a token for ``fill()`` or
        ``drop_lease()``. A write to or removal of the key before the fill
        refuses it."""
        i = self._lease_new(hash(key))
        return self._leases[i][1] << 32 | i

    def fill(self, key: K, value: V, lease: int, ttl: Optional[float] = None) -> V:
        """End a lease: store ``value`` unless the key was invalidated since
        ``lease()`` or a live value was stored meanwhile by another fill
        (returned instead).
        Counts nothing."""
        i, gen = self._lease_slot(lease), lease >> 32
        try:
            t = self._ttl if ttl is None else check_ttl(ttl)
        except BaseException:
            self._lease_end(i, gen)
            raise
        return self._store(key, value, t, _S_FILL, None, i, gen)  # type: ignore[no-any-return]

    def drop_lease(self, lease: int) -> None:
        """End a lease without storing (the fill failed)."""
        with self._lock:  # checked and ended at once, as CLruCache does
            self._lease_end(self._lease_slot(lease), lease >> 32)

    def lease_valid(self, lease: int) -> bool:
        """Whether a fill through this lease would still store (no write since):
        False once the key was written or removed, or the lease ended."""
        with self._lock:  # checked and read at once, as CLruCache does
            try:
                return self._leases[self._lease_slot(lease)][2] == _L_VALID
            except ValueError:
                return False

    def update(self, other: Any = (), /, **kwargs: V) -> None:
        """Insert every pair of ``other`` (a mapping or pairs) and ``kwargs``."""
        for key, value in iter_pairs(other, kwargs):
            self._store(key, value, self._ttl, _S_SET)

    def clear(self) -> None:
        """Remove every entry (no callbacks; statistics are kept)."""
        victims: list[Any] = []
        try:
            with self._lock:
                before = len(self._main) + len(self._small)
                self._take_all(victims)
                self._maybe_shrink(before)
        finally:
            self._release(victims)

    # -- snapshots ------------------------------------------------------------------------

    def _snapshot(self, reverse: bool = False, now: Any = MISSING) -> list[list[Any]]:
        """The live nodes in iteration order (S3-FIFO: the small FIFO, then the
        main one; each oldest first), or the reverse."""
        if now is MISSING:
            now = self._clock(False)
        with self._lock:
            orders = (self._main, self._small) if reverse else (self._small, self._main)
            nodes = [
                node
                for order in orders
                for node in (reversed(order.values()) if reverse else order.values())
                if not self._expired(node, now)
            ]
        return nodes

    def __iter__(self) -> Iterator[K]:
        """Iterate over a snapshot of the keys, in eviction order (LRU first)."""
        return iter([n[KEY] for n in self._snapshot()])

    def __reversed__(self) -> Iterator[K]:
        """Iterate over a snapshot of the keys, most recently used first."""
        return iter([n[KEY] for n in self._snapshot(True)])

    def keys(self) -> list[K]:  # snapshot lists, not views
        """A snapshot list of the keys, in eviction order (LRU first)."""
        return [n[KEY] for n in self._snapshot()]

    def values(self) -> list[V]:  # snapshot lists, not views
        """A snapshot list of the values, in eviction order (LRU first)."""
        return [n[VALUE] for n in self._snapshot()]

    def items(self) -> list[tuple[K, V]]:  # snapshot lists, not views
        """A snapshot list of (key, value) pairs, in eviction order (LRU first)."""
        return [(n[KEY], n[VALUE]) for n in self._snapshot()]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return dict(self.items()) == dict(other.items())

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = None  # type: ignore[assignment]  # mutable, as dict

    def __repr__(self) -> str:
        running = _repr_running()
        if id(self) in running:
            return f"{type(self).__name__}(...)"
        running.add(id(self))
        try:
            return repr_cache(type(self).__name__, self.items(), self._maxsize)
        finally:
            running.discard(id(self))

    # -- cache-specific -----------------------------------------------------------------

    def expire(self, limit: Optional[int] = None) -> int:
        """Drop expired entries now; return how many were dropped.

        ``limit``: look at no more than that many entries, from where the last
        limited call stopped (in slot order, as CLruCache's pool, wrapping
        around), so that a long expiry runs in bounded steps; calls whose
        limits add up to ``len(cache)`` look at every entry that stayed
        meanwhile.
        """
        if limit is not None:
            limit = check_limit(limit)
        if not self._n_ttl:
            return 0
        now = _seconds(self._timer()) if self._timer is not None else _monotonic()
        victims: list[Any] = []
        try:
            with self._lock:
                before = len(self._main) + len(self._small)
                if limit is None:
                    for order in (self._main, self._small):
                        for node in list(order.values()):
                            if node[EXPIRES] is not None and node[EXPIRES] <= now:
                                self._take(node, _EXPIRED, victims)
                else:
                    self._expire_some(limit, now, victims)
                self._maybe_shrink(before)
            count = len(victims) // 3
        finally:
            self._release(victims)
        return count

    def _expire_some(self, limit: int, now: float, victims: list[Any]) -> None:
        """Look at up to ``limit`` nodes from the cursor, in slot order, wrapping round once."""
        slots = self._slots
        top = len(slots)
        if not top:
            return
        i = self._expire_pos if self._expire_pos < top else 0
        start, seen = i, 0
        while seen < limit:
            node = slots[i]
            if node is not None:
                seen += 1
                if node[EXPIRES] is not None and node[EXPIRES] <= now:
                    self._take(node, _EXPIRED, victims)
            i += 1
            if i == top:
                i = 0
            if i == start:
                break
        self._expire_pos = i

    def trim(self, fraction: float = 0.5) -> int:
        """Evict ``ceil(len * fraction)`` entries, in eviction order; return how many."""
        fraction = check_fraction(fraction)
        victims: list[Any] = []
        try:
            with self._lock:
                count = len(self._main) + len(self._small)
                for _ in range(trim_count(count, fraction)):
                    node, _expired = self._victim(None, True)
                    if node is None:
                        break
                    self._take(node, _TRIM, victims)
                self._maybe_shrink(count)
            removed = len(victims) // 3
        finally:
            self._release(victims)
        return removed

    def resize(self, maxsize: Any = UNSET, max_bytes: Any = UNSET) -> None:
        """Change the bounds (None removes one), evicting to fit."""
        if maxsize is not UNSET:
            maxsize = check_size("maxsize", maxsize)
        if max_bytes is not UNSET:
            max_bytes = check_size("max_bytes", max_bytes)
        now = self._clock(False)
        measure = max_bytes is not UNSET and max_bytes is not None
        restarts = 0
        victims: list[Any] = []
        epoch = None  # the first byte bound's, once measured
        try:
            while True:
                with self._lock:  # checked in the region: another resize may take it away
                    if not (measure and self._max_bytes is None):
                        self._resize_region(maxsize, max_bytes, now, victims)
                        break
                # sizeof may raise (the bound is then taken back); another resize that
                # took the bound away meanwhile makes it start over
                restarts += 1
                if restarts > MAX_LOOKUP_RESTARTS:
                    raise RuntimeError(BOUND_TAKEN_DURING_MEASURE)
                epoch = self._measure_all(max_bytes)
        except BaseException:
            if epoch is not None:  # measured, not fitted (a MemoryError): taken back
                with self._lock:
                    self._take_bound_back(epoch)
            raise
        finally:
            self._release(victims)

    def _resize_region(
        self, maxsize: Any, max_bytes: Any, now: Optional[float], victims: list[Any]
    ) -> None:
        """resize()'s region (lock held). A MemoryError leaves the bounds as they were
        (a byte bound taken away stays so), and what was evicted evicted."""
        before = len(self._main) + len(self._small)
        old_maxsize, old_max_bytes = self._maxsize, self._max_bytes
        # a bound not given is the one there now (Python code ran since the call)
        new_maxsize = old_maxsize if maxsize is UNSET else maxsize
        if max_bytes is None:
            self._drop_byte_bound(new_maxsize)
        else:
            self._set_bounds(new_maxsize, old_max_bytes if max_bytes is UNSET else max_bytes)
        try:
            self._evict_to_fit(0, 0, now, victims)
        except BaseException:
            self._set_bounds(old_maxsize, None if max_bytes is None else old_max_bytes)
            raise
        self._maybe_shrink(before)

    def _measure_all(self, max_bytes: int) -> int:
        """Measure every entry when a byte bound is first set: see CLruCache. Returns
        the byte epoch the bound was set in."""
        nodes: list[list[Any]] = []
        sizes: list[tuple[int, Any, Any, int]] = []
        epoch, counted = self._bytes_epoch, False
        # Whatever fails (a MemoryError too), the bound is taken back and the count
        # ends. The count ends in the region that applies the sizes or takes the bound
        # back: a `with` in a `finally` could fail to enter, and leave it counted.
        try:
            with self._lock:
                epoch = self._bytes_epoch
                self._set_bounds(self._maxsize, max_bytes)  # from here, every store measures
                self._measuring, counted = self._measuring + 1, True
            nodes = self._snapshot(now=-_INF)  # expired ones too
            sizes = [self._entry_size(node) for node in nodes]
            with self._lock:
                if self._max_bytes is not None:  # else another resize took it: start over
                    self._apply_sizes(sizes)
                self._measuring, counted = self._measuring - 1, False
        except BaseException:
            with self._lock:
                if counted:
                    self._measuring, counted = self._measuring - 1, False
                self._take_bound_back(epoch)
            raise
        finally:
            del nodes, sizes  # released here, as C's snapshot is (a __del__ may run)
        return epoch

    def _take_bound_back(self, epoch: int) -> None:
        """A first byte bound set in ``epoch`` taken back, unless the sizes were zeroed
        since (another resize decided) (lock held)."""
        if self._bytes_epoch == epoch and self._max_bytes is not None:
            self._drop_byte_bound(self._maxsize)

    def _entry_size(self, node: list[Any]) -> tuple[int, Any, Any, int]:
        key, value = node[KEY], node[VALUE]
        size = min(self._size_of(key) + self._size_of(value), _ENTRY_BYTES_MAX)
        return size, key, value, node[HASH]

    def _apply_sizes(self, sizes: list[tuple[int, Any, Any, int]]) -> None:
        """Each size to the entry that still holds that key and value and has no size
        of its own (one stored meanwhile measured itself)."""
        for size, key, value, h in sizes:
            node = self._find_same(key, h)
            if node is not None and node[VALUE] is value and node[NBYTES] == 0:
                self._replace(node, value, size, node[EXPIRES])

    def _find_same(self, key: Any, h: int) -> Optional[list[Any]]:
        """The node whose key is this very object, or None (no __eq__)."""
        node = self._buckets.get(h)
        while node is not None and node[KEY] is not key:
            node = node[CHAIN]
        return node

    def _replace(self, node: list[Any], value: Any, nbytes: int, expires: Optional[float]) -> None:
        """A node's value, size and expiry, and the totals (computed first: a
        MemoryError changes nothing)."""
        total = self._nbytes + nbytes - node[NBYTES]
        small_bytes = self._small_bytes + (nbytes - node[NBYTES] if node[SMALL] else 0)
        n_ttl = self._n_ttl + (expires is not None) - (node[EXPIRES] is not None)
        node[VALUE], node[NBYTES], node[EXPIRES] = value, nbytes, expires
        self._nbytes, self._small_bytes, self._n_ttl = total, small_bytes, n_ttl

    def _drop_byte_bound(self, maxsize: Optional[int]) -> None:
        """No byte bound (and ``maxsize``): every entry's size to 0, and the totals.
        What allocates comes first: a MemoryError changes nothing."""
        nodes = iter([*self._main.values(), *self._small.values()])  # the loop allocates nothing
        epoch = self._bytes_epoch + 1
        self._set_bounds(maxsize, None)
        for node in nodes:
            node[NBYTES] = 0
        self._nbytes = self._small_bytes = 0
        self._bytes_epoch = epoch

    def stats(self) -> CacheStats:
        """Counters and sizes (see the docs for each key)."""
        with self._lock:
            return stats_dict(
                len(self),
                self._maxsize,
                self._nbytes,
                self._max_bytes,
                self._hits,
                self._misses,
                dict(self._by_reason),
                self._rejected,
                self._ttl,
                self._policy,
            )

    def reset_stats(self) -> None:
        """Zero the hit, miss, eviction, expiration and rejection counters."""
        with self._lock:
            self._hits = self._misses = self._rejected = 0
            self._by_reason = dict.fromkeys(EVICTION_REASONS, 0)

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
        with self._lock:  # not while another thread's store has counted but not evicted
            return self._nbytes

    @property
    def policy(self) -> str:
        return self._policy

    # -- copying and pickling -----------------------------------------------------------

    def copy(self) -> PyLruCache[K, V]:
        """A shallow copy with the same settings and entries (fresh statistics)."""
        cls, args, state = self.__reduce__()
        new = cls(*args)
        new.__setstate__(state)
        return new  # type: ignore[no-any-return]  # cls is type(self)

    __copy__ = copy

    def __reduce__(self) -> tuple[Any, ...]:
        """The entries and the settings read in one region (as CLruCache's are);
        while a byte bound is being set, the state before it (see CLruCache)."""
        now: Optional[float] = None
        while True:
            if now is None and self._n_ttl:
                now = _seconds(self._timer()) if self._timer is not None else _monotonic()
            with self._lock:
                if now is None and self._n_ttl:
                    continue  # an entry with a TTL came meanwhile: read the clock
                max_bytes = None if self._measuring else self._max_bytes
                entries = [
                    (
                        n[KEY],
                        n[VALUE],
                        None if n[EXPIRES] is None else n[EXPIRES] - now,
                        0 if max_bytes is None else n[NBYTES],
                        n[FREQ] | (4 if n[SMALL] else 0),
                    )
                    for n in self._snapshot(now=now)
                ]
                state = (
                    max_bytes,
                    self._sizeof,
                    self._timer,
                    self._on_evict,
                    self._policy,
                    entries,
                )
                return (type(self), (self._maxsize, self._ttl), state)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        max_bytes, sizeof, timer, on_evict, policy, entries = check_state(state, _ENTRY_BYTES_MAX)
        # the timer too runs before anything changes (check_state hashed the keys)
        now = 0.0
        for entry in entries:  # no generator: see the module docstring
            if entry[2] is not None:
                now = _seconds(timer()) if timer is not None else _monotonic()
                break
        with self._lock:
            if len(self) and policy != self._policy:
                raise ValueError("cannot change the policy of a cache that holds entries")
            if len(self) and max_bytes is not None and self._max_bytes is None:
                raise ValueError(NO_BOUND_ON_HELD_ENTRIES)
            self._sizeof, self._timer, self._on_evict = sizeof, timer, on_evict
            self._policy, self._lru = policy, policy == "lru"
            self._set_bounds(self._maxsize, max_bytes)
        for key, value, remaining, nbytes, state_bits in entries:
            self._restore(
                key,
                value,
                nbytes,
                None if remaining is None else now + remaining,
                state_bits,
            )

    def _restore(
        self, key: Any, value: Any, nbytes: int, expires: Optional[float], state_bits: int
    ) -> None:
        h = hash(key)
        victims: list[Any] = []
        try:
            with self._lock:
                node = self._find(key, h)
                if node is not None:
                    self._take(node, None, victims)
                self._evict_to_fit(1, nbytes, None, victims)
                small = not self._lru and bool(state_bits & 4)
                self._add(
                    [
                        key,
                        value,
                        expires,
                        nbytes,
                        self._tokens(),
                        None,
                        h,
                        0 if self._lru else state_bits & 3,
                        small,
                        0,
                    ]
                )
                if not self._lru:
                    self._ghost_follow(len(self._main) + len(self._small))
        finally:
            self._release(victims)


def _seconds(now: Any) -> float:
    """A custom timer's reading as a float, refused as C refuses it (a str is no time)."""
    if type(now) is float:
        return now
    if not hasattr(type(now), "__float__") and not hasattr(type(now), "__index__"):
        raise TypeError(f"must be real number, not {type(now).__name__}")
    return float(now)


_repr_local = threading.local()


def _repr_running() -> set[int]:
    """Ids of caches whose repr is being built on this thread (recursion guard)."""
    running: Optional[set[int]] = getattr(_repr_local, "running", None)
    if running is None:
        running = _repr_local.running = set()
    return running


MutableMapping.register(PyLruCache)
