"""CLruCache: the compiled cache, bounded by entries and by bytes, LRU or S3-FIFO.

Layout
------
Entries live in one C array, ``entries`` (a pool indexed by uint32; the
structs and the pure-C helpers are in ``_entry.h``). Indices 0 and 1 are the
sentinels of two circular doubly-linked lists, each from its oldest entry
(``sentinel.next``) to its newest::

    entries[0]  MAIN   LRU: every entry, least recently used first.
                       S3-FIFO: the main FIFO.
    entries[1]  SMALL  S3-FIFO: the small FIFO (about 10% of the bounds).

A C open-addressing table (uint32 slots, linear probing, load <= 1/2) maps
29 bits of a key's hash to its entry. Each live entry owns one reference to
its key and one to its value. Under S3-FIFO, ``ghost`` (``_ghost.h``) keeps
the hash bits of keys recently evicted from the small FIFO, no references.

The rule
--------
No Python code runs between reading the structure and finishing the change
that depends on that read. Every operation runs in four steps:

1. argument checks, then ``sizeof()`` (the measurement), ``timer()`` and
   ``__hash__`` (once per call; evictions reuse the stored hash bits);
2. the lookup (``_find``), which may run ``__eq__`` and changes nothing; if
   the structure changed while ``__eq__`` ran (``version``), it starts over,
   and a store whose settings changed meanwhile (``settings_version``:
   ``resize``, ``__init__``) starts again at step 1;
3. one *region* of C code that calls no Python code, allocates no Python
   object and releases no reference, so no ``__del__`` and no garbage
   collection can run in it. A removed entry becomes a *victim*: out of the
   table and the lists, still holding its key and value in its slot;
4. ``_release``: ``on_evict`` for each victim, then the release of every
   removed or replaced reference, one victim at a time. Victims' slots stay
   out of the free list until then (``pending``), and the pool is never
   repacked while any are pending, so indices held across these calls stay
   valid.

Where Python code can run (keep this list true):

* ``__init__``, ``set``, ``get_or_set``, ``fill``, ``trim``, ``resize``,
  ``expire``, ``__setstate__``: argument checks, before any read (``check_state`` also
  hashes every key, and the new timer is read before anything changes; then
  each ``_restore`` is its own step 1-4);
* ``_measure``: ``sizeof`` or ``deep_sizeof`` (step 1);
* ``_clock``: a custom ``timer`` (step 1);
* ``PyObject_Hash`` (step 1);
* ``_find``: ``__eq__`` (step 2);
* ``_release``: ``on_evict`` and deallocations (step 4);
* ``get_or_set``: the factory, between the lookup that missed and ``fill``,
  which starts again at step 1 (the lease decides whether it may store);
* ``_snapshot_list`` and friends: building Python objects from a snapshot of
  owned references (the cache is not read while they are built);
* ``_measure_all`` (``resize``): ``sizeof`` over a snapshot taken once the
  new byte bound is set (every store from then on measures its own entry),
  applied in a region to the entries, found through the table, that still
  hold the same key and value and have no size of their own;
* ``stats``: building the dict, from counters read into C first.

Allocation failure is a MemoryError raised before the region changes
anything (the pool and the table are grown first), or, for what is optional
(shrinking, the ghost), the work is skipped.

The GIL is the lock. The module does not declare free-threading support: on
a free-threaded CPython, importing it re-enables the GIL.
"""

from collections.abc import Mapping, MutableMapping
from types import GenericAlias

cimport cython
from cpython.object cimport PyObject, PyObject_Hash, PyObject_RichCompareBool, Py_EQ
from cpython.ref cimport Py_INCREF
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from cpython.pyport cimport PY_SSIZE_T_MAX
from libc.math cimport INFINITY, NAN, isnan, ceil
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memset

from memcache_ext._constants import GHOST_MAX, MAX_LOOKUP_RESTARTS, UNSET
from memcache_ext._stats import repr_cache, stats_dict
from memcache_ext._validate import (
    BOUND_TAKEN_DURING_MEASURE, MUTATED_DURING_LOOKUP, NO_BOUND_ON_HELD_ENTRIES, POLICIES,
    LazySignature, check_fraction, check_limit, check_nbytes, check_size, check_state, check_ttl,
    iter_pairs, parse_cache_args,
)

from memcache_ext._sizeof_c cimport c_deep_sizeof

cdef Py_ssize_t c_GHOST_MAX = GHOST_MAX   # as a C integer, for _set_bounds

cdef extern from "_clock.h":
    double mc_monotonic() nogil

cdef extern from "_entry.h":
    uint32_t MC_MAIN, MC_SMALL, MC_FIRST, MC_TAKEN, MC_HASH_MASK, MC_SMALL_BIT
    uint32_t MC_ENTRY_BYTES_MAX
    Py_ssize_t MC_MAX_ENTRIES
    uint32_t mc_hash_bits(Py_hash_t h) noexcept
    unsigned mc_freq(mc_entry* e) noexcept
    void mc_set_freq(mc_entry* e, unsigned f) noexcept
    size_t mc_ideal(uint32_t hbits, size_t mask) noexcept
    void mc_unlink(mc_entry* entries, uint32_t idx) noexcept
    void mc_link_newest(mc_entry* entries, uint32_t lst, uint32_t idx) noexcept
    void mc_list_init(mc_entry* entries, uint32_t lst) noexcept
    void mc_table_insert(uint32_t* table, size_t mask, mc_entry* entries, uint32_t idx) noexcept
    void mc_table_delete(uint32_t* table, size_t mask, mc_entry* entries, uint32_t idx) noexcept
    uint32_t* mc_table_build(mc_entry* entries, size_t size) noexcept
    size_t mc_table_size(Py_ssize_t n) noexcept
    void mc_victims_init(mc_victims* v) noexcept

cdef extern from "_ghost.h":
    uint32_t mc_fingerprint(uint32_t hbits) noexcept
    int mc_ghost_remove(mc_ghost* g, uint32_t fp) noexcept
    void mc_ghost_add(mc_ghost* g, uint32_t fp) noexcept
    void mc_ghost_set_limit(mc_ghost* g, Py_ssize_t limit) noexcept
    void mc_ghost_follow(mc_ghost* g, Py_ssize_t held, Py_ssize_t cap) noexcept
    void mc_ghost_free(mc_ghost* g) noexcept

cdef extern from "Python.h":
    void Py_DECREF_p "Py_DECREF"(PyObject*)
    void Py_XDECREF_p "Py_XDECREF"(PyObject*)
    void Py_INCREF_p "Py_INCREF"(PyObject*)
    int Py_ReprEnter(object) except -1
    void Py_ReprLeave(object)
    ctypedef int (*visitproc)(PyObject*, void*) noexcept
    ctypedef int (*traverseproc)(PyObject*, visitproc, void*) noexcept
    ctypedef int (*inquiry)(PyObject*) noexcept
    ctypedef struct TypeSlots "PyTypeObject":
        traverseproc tp_traverse
        inquiry tp_clear


cdef enum:
    R_NONE = -1            # a removal that calls no on_evict
    R_CAPACITY = 0
    R_BYTES = 1
    R_EXPIRED = 2
    R_TRIM = 3
    P_LRU = 0
    P_S3FIFO = 1
    L_FREE = 0
    L_VALID = 1
    L_INVALID = 2
    S_SET = 0              # _store modes: insert or replace,
    S_KEEP = 1             #   keep a live entry (setdefault),
    S_FILL = 2             #   keep a live entry, store only under a valid lease
    MIN_POOL = 8
    MIN_TABLE = 8

cdef tuple REASONS = ("capacity", "bytes", "expired", "trim")
cdef object _MISSING = object()


@cython.final
@cython.trashcan(True)   # deeply nested caches are released without deep C recursion
cdef class CLruCache:
    """CLruCache(maxsize=128, ttl=None, *, max_bytes=None, sizeof=None, timer=None,
    on_evict=None, policy='lru')

    A thread-safe cache with optional TTL and byte bound, compiled; a drop-in
    for a dict. ``policy`` is ``"lru"`` or ``"s3fifo"``. See the docs for the
    contract, which ``PyLruCache`` keeps too.
    """

    __signature__ = LazySignature()

    def __cinit__(self, *args, **kwargs):
        self.entries = <mc_entry*>PyMem_Malloc(MIN_POOL * sizeof(mc_entry))
        self.table = <uint32_t*>PyMem_Malloc(MIN_TABLE * sizeof(uint32_t))
        if self.entries == NULL or self.table == NULL:
            raise MemoryError()   # __dealloc__ frees what was allocated
        memset(self.table, 0, MIN_TABLE * sizeof(uint32_t))
        mc_ghost_free(&self.ghost)   # an empty ghost
        self.ecap = MIN_POOL
        self.mask = MIN_TABLE - 1
        self._reset_lists()
        self._set_bounds(128, -1)   # an LRU cache until __init__ says otherwise
        self._ttl = INFINITY

    def __init__(self, *args, **kwargs):
        maxsize, ttl, max_bytes, measure, timer, on_evict, policy = parse_cache_args(
            "CLruCache", args, kwargs, stacklevel=1)
        cdef int new_policy = POLICIES.index(policy)
        cdef mc_victims v
        mc_victims_init(&v)
        # Calling __init__ again on a live cache starts it afresh, as PyLruCache
        # does: the entries (no callbacks) and the ghost go, and the new settings
        # are made before the old values are released, so that a value whose
        # __del__ stores into the cache stores under them (under the old policy,
        # such a store into the small queue was out of reach of lru's eviction).
        try:
            self._take_all(&v)
            self.bytes_epoch += 1
            mc_ghost_set_limit(&self.ghost, 0)   # frees it
            self.hits = self.misses = self.rejected = 0
            memset(self.by_reason, 0, sizeof(self.by_reason))
            self._ttl = INFINITY if ttl is None else ttl
            self._policy = new_policy
            self._set_bounds(-1 if maxsize is None else maxsize,
                             -1 if max_bytes is None else max_bytes)
            # the old callables' references go last (dropping one may run code)
            self._sizeof = measure
            self._timer = timer
            self._on_evict = on_evict
            self._ttl_obj = ttl
        finally:
            self._release(&v, NULL)
        self._maybe_shrink()

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.entries != NULL:
            for i in range(MC_FIRST, self.top):
                if self.entries[i].key != NULL:
                    Py_DECREF_p(self.entries[i].key)
                    Py_DECREF_p(self.entries[i].value)
        PyMem_Free(self.entries)
        PyMem_Free(self.table)
        PyMem_Free(self.leases)
        mc_ghost_free(&self.ghost)

    # -- memory ---------------------------------------------------------------

    cdef void _reset_lists(self) noexcept:
        """An empty structure in the current pool and table (region)."""
        mc_list_init(self.entries, MC_MAIN)
        mc_list_init(self.entries, MC_SMALL)
        self.top = MC_FIRST
        self.free_head = 0
        self.count = 0
        self.n_ttl = 0
        self.total_bytes = 0
        self.small_count = 0
        self.small_bytes = 0
        self.has_evicted = False
        self.version += 1

    cdef inline int _reserve(self) except -1:
        """Room for one more entry in the pool and the table; changes no entry."""
        if ((self.free_head == 0 and self.top >= self.ecap)
                or (self.count + 1) * 2 > <Py_ssize_t>(self.mask + 1)):
            return self._grow()
        return 0

    cdef int _grow(self) except -1:
        """_reserve's slow path: a larger pool, or a larger table, or both."""
        cdef Py_ssize_t newcap
        cdef mc_entry* grown
        cdef uint32_t* t
        cdef size_t size
        if self.free_head == 0 and self.top >= self.ecap:
            newcap = self.ecap * 2
            # A bounded cache needs its entries, the sentinels and one slot
            # for the entry being inserted while its victim is pending.
            if 0 <= self._maxsize < MC_MAX_ENTRIES and newcap > self._maxsize + MC_FIRST + 1:
                newcap = max(self._maxsize + MC_FIRST + 1, self.ecap + 1)
            if newcap > MC_MAX_ENTRIES:
                if self.ecap >= MC_MAX_ENTRIES:
                    raise OverflowError(f"CLruCache holds at most {MC_MAX_ENTRIES} entries")
                newcap = MC_MAX_ENTRIES
            grown = <mc_entry*>PyMem_Realloc(self.entries, newcap * sizeof(mc_entry))
            if grown == NULL:
                raise MemoryError()
            self.entries = grown
            self.ecap = newcap
        if (self.count + 1) * 2 > <Py_ssize_t>(self.mask + 1):   # load <= 1/2
            size = mc_table_size(self.count + 1)
            t = mc_table_build(self.entries, size)
            if t == NULL:
                raise MemoryError()
            PyMem_Free(self.table)
            self.table = t
            self.mask = size - 1
        return 0

    cdef void _maybe_shrink(self) noexcept:
        """After bulk removals, give memory back: a packed pool and a smaller
        table. Skipped while victims are pending (their indices must hold) or
        when an allocation fails (nothing is lost). The pool keeps its order,
        so a limited expire() goes on from the same entry."""
        cdef Py_ssize_t newcap, i, j, cursor
        cdef size_t size
        cdef mc_entry* packed
        cdef uint32_t* t
        cdef uint32_t* moved
        cdef uint32_t lst, idx
        if self.pending or self.ecap <= 64 or self.count * 4 >= self.ecap:
            return
        newcap = max(self.count * 2 + MC_FIRST, MIN_POOL)
        size = mc_table_size(self.count)
        packed = <mc_entry*>PyMem_Malloc(newcap * sizeof(mc_entry))
        t = <uint32_t*>PyMem_Malloc(size * sizeof(uint32_t))
        moved = <uint32_t*>PyMem_Malloc(self.top * sizeof(uint32_t))  # old index -> new
        if packed == NULL or t == NULL or moved == NULL:
            PyMem_Free(packed)
            PyMem_Free(t)
            PyMem_Free(moved)
            return
        memset(t, 0, size * sizeof(uint32_t))
        j = MC_FIRST
        cursor = MC_FIRST
        for i in range(MC_FIRST, self.top):
            if i == self.expire_cursor:
                cursor = j
            if self.entries[i].key != NULL:  # live: no victim is pending
                packed[j] = self.entries[i]
                moved[i] = <uint32_t>j
                j += 1
        for lst in range(MC_MAIN, MC_SMALL + 1):
            mc_list_init(packed, lst)
            idx = self.entries[lst].next
            while idx != lst:
                mc_link_newest(packed, lst, moved[idx])
                mc_table_insert(t, size - 1, packed, moved[idx])
                idx = self.entries[idx].next
        PyMem_Free(moved)
        PyMem_Free(self.entries)
        PyMem_Free(self.table)
        self.entries = packed
        self.table = t
        self.ecap = newcap
        self.mask = size - 1
        self.top = j
        self.free_head = 0
        self.expire_cursor = cursor
        self.version += 1

    # -- region helpers (no Python code) ----------------------------------------

    cdef inline uint32_t _list_of(self, uint32_t idx) noexcept:
        return MC_SMALL if self.entries[idx].hm & MC_SMALL_BIT else MC_MAIN

    cdef uint32_t _add(self, object key, object value, Py_hash_t h, Py_ssize_t nbytes,
                       double expires, uint32_t lst) noexcept:
        """Insert a new entry into list lst; _reserve() must have made room."""
        cdef uint32_t idx
        cdef mc_entry* e
        if self.free_head:
            idx = self.free_head
            self.free_head = self.entries[idx].next
        else:
            idx = <uint32_t>self.top
            self.top += 1
        e = &self.entries[idx]
        Py_INCREF(key)
        Py_INCREF(value)
        e.key = <PyObject*>key
        e.value = <PyObject*>value
        e.hm = mc_hash_bits(h) | (MC_SMALL_BIT if lst == MC_SMALL else 0)
        e.expires = expires
        e.nbytes = <uint32_t>nbytes
        mc_table_insert(self.table, self.mask, self.entries, idx)
        mc_link_newest(self.entries, lst, idx)
        self.count += 1
        self.total_bytes += nbytes
        if lst == MC_SMALL:
            self.small_count += 1
            self.small_bytes += nbytes
        if expires != INFINITY:
            self.n_ttl += 1
        self.version += 1
        return idx

    cdef void _take(self, uint32_t idx, int reason, mc_victims* v) noexcept:
        """Take entry idx out as a victim of this operation (see _release)."""
        cdef mc_entry* e = &self.entries[idx]
        mc_table_delete(self.table, self.mask, self.entries, idx)
        mc_unlink(self.entries, idx)
        self.count -= 1
        self.total_bytes -= e.nbytes
        if e.hm & MC_SMALL_BIT:
            self.small_count -= 1
            self.small_bytes -= e.nbytes
        if e.expires != INFINITY:
            self.n_ttl -= 1
        if reason >= 0:
            self.by_reason[reason] += 1
        e.nbytes = <uint32_t>(reason + 1)
        e.prev = MC_TAKEN
        e.next = 0
        if v.tail:
            self.entries[v.tail].next = idx
        else:
            v.head = idx
        v.tail = idx
        v.n += 1
        self.pending += 1
        self.version += 1

    cdef inline void _to_main(self, uint32_t idx) noexcept:
        """S3-FIFO: move a small-FIFO entry to the newest end of the main FIFO."""
        cdef mc_entry* e = &self.entries[idx]
        mc_unlink(self.entries, idx)
        self.small_count -= 1
        self.small_bytes -= e.nbytes
        e.hm &= ~MC_SMALL_BIT
        mc_link_newest(self.entries, MC_MAIN, idx)

    cdef inline void _on_hit(self, uint32_t idx) noexcept:
        """A hit: LRU makes the entry the most recently used; S3-FIFO only
        bumps its 2-bit frequency (it moves nothing)."""
        cdef mc_entry* e
        if self._policy == P_LRU:
            if self.entries[MC_MAIN].prev != idx:
                mc_unlink(self.entries, idx)
                mc_link_newest(self.entries, MC_MAIN, idx)
        else:
            e = &self.entries[idx]
            if mc_freq(e) < 3:
                mc_set_freq(e, mc_freq(e) + 1)

    cdef inline bint _main_over(self) noexcept:
        return (self.count - self.small_count > self.main_cap
                or self.total_bytes - self.small_bytes > self.main_cap_bytes)

    cdef inline bint _small_full(self) noexcept:
        return ((self._maxsize >= 0 and self.small_count >= self.small_cap)
                or (self._max_bytes >= 0 and self.small_bytes >= self.small_cap_bytes))

    cdef inline uint32_t _victim(self, double* now, bint to_ghost, bint* expired) noexcept:
        """The entry to evict next, or 0 when empty (region).

        LRU: the least recently used. S3-FIFO's common case is inline here:
        while the main FIFO is within its share, the small FIFO's oldest entry,
        hit less than twice and without TTL, is the victim (its hash bits go to
        the ghost when ``to_ghost``); every other case is _victim_scan's.
        """
        cdef uint32_t idx
        expired[0] = False
        if self._policy == P_LRU:
            idx = self.entries[MC_MAIN].next
            if idx == MC_MAIN:
                return 0
            expired[0] = self._expired(idx, now)
            return idx
        idx = self.entries[MC_SMALL].next
        if (idx != MC_SMALL and self.entries[idx].expires == INFINITY
                and mc_freq(&self.entries[idx]) < 2 and not self._main_over()):
            self.has_evicted = True
            if to_ghost:
                mc_ghost_add(&self.ghost, mc_fingerprint(self.entries[idx].hm & MC_HASH_MASK))
            return idx
        return self._victim_scan(now, to_ghost, expired)

    cdef uint32_t _victim_scan(self, double* now, bint to_ghost, bint* expired) noexcept:
        """S3-FIFO's victim in general (region).

        First the second chances, as libCacheSim's S3FIFO gives them: while the
        main FIFO is over its share (or the small one is empty), its oldest
        entry goes round again with one frequency less, until one at 0 is the
        victim; otherwise the small FIFO's oldest entry moves to the main FIFO
        if it was hit twice or more, until one that was not is the victim,
        leaving its hash bits in the ghost when ``to_ghost``. An expired
        candidate is the victim at once.
        """
        cdef uint32_t idx
        cdef unsigned f
        if self.count == 0:
            return 0
        self.has_evicted = True
        while True:
            # (an empty main queue is never "over": maxsize=0 makes its share -1)
            if self.small_count == 0 or (self.count > self.small_count and self._main_over()):
                idx = self.entries[MC_MAIN].next
                while idx != MC_MAIN:
                    if self._expired(idx, now):
                        expired[0] = True
                        return idx
                    f = mc_freq(&self.entries[idx])
                    if f == 0:
                        return idx
                    mc_set_freq(&self.entries[idx], f - 1)
                    mc_unlink(self.entries, idx)
                    mc_link_newest(self.entries, MC_MAIN, idx)
                    idx = self.entries[MC_MAIN].next
            else:
                idx = self.entries[MC_SMALL].next
                while idx != MC_SMALL:
                    if self._expired(idx, now):
                        expired[0] = True
                        return idx
                    if mc_freq(&self.entries[idx]) < 2:
                        if to_ghost:
                            mc_ghost_add(&self.ghost,
                                         mc_fingerprint(self.entries[idx].hm & MC_HASH_MASK))
                        return idx
                    mc_set_freq(&self.entries[idx], 0)
                    self._to_main(idx)
                    idx = self.entries[MC_SMALL].next
            # the small FIFO emptied into the main one: choose again

    cdef void _evict_to_fit(self, Py_ssize_t more, Py_ssize_t more_bytes, double* now,
                            mc_victims* v) noexcept:
        """Evict until ``more`` entries of ``more_bytes`` fit within the bounds."""
        cdef int reason
        cdef uint32_t idx
        cdef bint expired
        while self.count:
            if self._maxsize >= 0 and self.count + more > self._maxsize:
                reason = R_CAPACITY
            elif self._max_bytes >= 0 and self.total_bytes + more_bytes > self._max_bytes:
                reason = R_BYTES
            else:
                return
            idx = self._victim(now, True, &expired)
            if idx == 0:
                return
            self._take(idx, R_EXPIRED if expired else reason, v)

    cdef void _set_bounds(self, Py_ssize_t maxsize, Py_ssize_t max_bytes) noexcept:
        """New bounds and the S3-FIFO shares derived from them (region)."""
        self._maxsize = maxsize
        self._max_bytes = max_bytes
        self.small_cap = max(1, maxsize // 10) if maxsize >= 0 else 0
        self.small_cap_bytes = max_bytes // 10 if max_bytes >= 0 else 0
        # the main FIFO's shares, PY_SSIZE_T_MAX where there is no bound
        self.main_cap = maxsize - self.small_cap if maxsize >= 0 else PY_SSIZE_T_MAX
        self.main_cap_bytes = max_bytes - self.small_cap_bytes if max_bytes >= 0 else PY_SSIZE_T_MAX
        # The ghost's limit follows the entries held (see _put) up to ghost_cap:
        # floor(0.9 * maxsize), as libCacheSim sizes it (without overflow), at
        # most GHOST_MAX; 0 under LRU.
        self.ghost_cap = 0
        if self._policy == P_S3FIFO:
            self.ghost_cap = c_GHOST_MAX
            if maxsize >= 0:
                self.ghost_cap = min(maxsize - maxsize // 10 - (1 if maxsize % 10 else 0),
                                     c_GHOST_MAX)
            mc_ghost_set_limit(&self.ghost, min(max(self.count * 9 // 10, self.ghost.limit),
                                                self.ghost_cap))
        self.settings_version += 1

    # -- time -----------------------------------------------------------------

    cdef inline double _clock(self, bint need) except? -1.0:
        """The time for this operation, read before any lookup (step 1).

        A custom timer is Python code, so it is called here, up front, and only
        when some entry (or the one being stored) has a TTL. The C clock is
        read lazily instead: NaN means "not read yet".
        """
        if self._timer is not None and (need or self.n_ttl):
            return <double>self._timer()
        return NAN

    cdef inline bint _expired(self, uint32_t idx, double* now) noexcept:
        cdef double exp = self.entries[idx].expires
        if exp == INFINITY:
            return False
        if isnan(now[0]):
            if self._timer is not None:
                return False   # the entry appeared after the timer was read
            now[0] = mc_monotonic()
        return now[0] >= exp

    cdef inline double _expires(self, double ttl, double* now) noexcept:
        if ttl == INFINITY:
            return INFINITY
        if isnan(now[0]):
            now[0] = mc_monotonic()
        return now[0] + ttl

    # -- lookup ---------------------------------------------------------------

    cdef Py_ssize_t _find(self, object key, Py_hash_t h) except -1:
        """The index of key's entry, or 0. May run __eq__ (changes nothing)."""
        cdef size_t i, mask
        cdef uint32_t idx, hbits = mc_hash_bits(h)
        cdef mc_entry* e
        cdef object other
        cdef uint64_t version
        cdef int restarts = 0
        cdef bint equal
        while True:
            mask = self.mask
            i = mc_ideal(hbits, mask)
            while True:
                idx = self.table[i]
                if idx == 0:
                    return 0
                e = &self.entries[idx]
                if e.key == <PyObject*>key:
                    return idx
                if (e.hm & MC_HASH_MASK) == hbits:
                    other = <object>e.key   # keeps the key alive while __eq__ runs
                    version = self.version
                    equal = PyObject_RichCompareBool(other, key, Py_EQ)
                    if self.version != version:
                        break   # the table changed under __eq__: start over
                    if equal:
                        return idx
                i = (i + 1) & mask
            restarts += 1
            if restarts > MAX_LOOKUP_RESTARTS:
                raise RuntimeError(MUTATED_DURING_LOOKUP)

    # -- releasing (step 4) ---------------------------------------------------

    cdef inline int _release(self, mc_victims* v, PyObject* replaced) except -1:
        """Step 4, when there is anything to release (most reads: nothing)."""
        if v.head or replaced != NULL:
            return self._release_all(v, replaced)
        return 0

    cdef int _release_all(self, mc_victims* v, PyObject* replaced) except -1:
        """Call on_evict for each victim removed automatically, then release it.

        One victim at a time: its slot goes back to the free list before any
        Python code runs for it. Every reference is released even if a
        callback raises; the first exception is raised at the end.
        """
        cdef uint32_t idx
        cdef PyObject* k
        cdef PyObject* val
        cdef int reason
        cdef object on_evict = self._on_evict
        cdef object error = None
        Py_XDECREF_p(replaced)
        if on_evict is None:
            while v.head:
                idx = v.head
                v.head = self.entries[idx].next
                k = self.entries[idx].key
                val = self.entries[idx].value
                self._free_slot(idx)
                Py_DECREF_p(k)
                Py_DECREF_p(val)
            v.tail = 0
            return 0
        while v.head:
            idx = v.head
            v.head = self.entries[idx].next
            k = self.entries[idx].key
            val = self.entries[idx].value
            reason = <int>self.entries[idx].nbytes - 1
            self._free_slot(idx)
            try:
                if on_evict is not None and reason >= 0:
                    on_evict(<object>k, <object>val, REASONS[reason])
            except BaseException as exc:
                if error is None:
                    error = exc
            finally:
                Py_DECREF_p(k)
                Py_DECREF_p(val)
        v.tail = 0
        if error is not None:
            raise error
        return 0

    cdef inline void _free_slot(self, uint32_t idx) noexcept:
        """A released victim's slot goes back to the free list."""
        self.entries[idx].key = NULL
        self.entries[idx].value = NULL
        self.entries[idx].next = self.free_head
        self.free_head = idx
        self.pending -= 1

    # -- measuring (step 1) ---------------------------------------------------

    cdef Py_ssize_t _measure(self, object key, object value) except -1:
        """An entry's size: sizeof(key) + sizeof(value), each capped just above
        the largest size an entry may have (so the sum never overflows)."""
        if self._max_bytes < 0:
            return 0
        if self._sizeof is None:
            return (min(c_deep_sizeof(key), MC_ENTRY_BYTES_MAX + 1)
                    + min(c_deep_sizeof(value), MC_ENTRY_BYTES_MAX + 1))
        return self._size_of(key) + self._size_of(value)

    cdef Py_ssize_t _size_of(self, object obj) except -1:
        return min(check_nbytes(self._sizeof(obj)), MC_ENTRY_BYTES_MAX + 1)

    # -- leases ---------------------------------------------------------------

    cdef Py_ssize_t _lease_new(self, Py_hash_t h) except -1:
        """A valid lease on hash h (a slot index); MemoryError if none can be had."""
        cdef Py_ssize_t i, cap
        cdef mc_lease* grown
        for i in range(self.lease_cap):
            if self.leases[i].state == L_FREE:
                break
        else:
            cap = max(4, self.lease_cap * 2)
            grown = <mc_lease*>PyMem_Realloc(self.leases, cap * sizeof(mc_lease))
            if grown == NULL:
                raise MemoryError()
            memset(&grown[self.lease_cap], 0, (cap - self.lease_cap) * sizeof(mc_lease))
            self.leases = grown
            i = self.lease_cap
            self.lease_cap = cap
        self.leases[i].hash = mc_hash_bits(h)
        self.leases[i].state = L_VALID
        self.leases[i].gen += 1
        self.n_leases += 1
        return i

    cdef void _lease_end(self, Py_ssize_t i, uint32_t gen) noexcept:
        """End lease i of generation gen (a token used twice: the slot may have
        ended and been taken by another lease meanwhile, which stays)."""
        if (0 <= i < self.lease_cap and self.leases[i].state != L_FREE
                and self.leases[i].gen == gen):
            self.leases[i].state = L_FREE
            self.n_leases -= 1

    cdef inline void _invalidate_leases(self, uint32_t hbits, bint every) noexcept:
        """A write to (or the removal of) a key with these hash bits: the
        outstanding fills of every key with those bits may not store (region;
        a fill refused by a collision only costs one more miss). ``every``:
        all keys (clear)."""
        cdef Py_ssize_t i
        if self.n_leases == 0:
            return
        for i in range(self.lease_cap):
            if self.leases[i].state == L_VALID and (every or self.leases[i].hash == hbits):
                self.leases[i].state = L_INVALID

    cdef Py_ssize_t _lease_slot(self, object token) except -2:
        """The slot of a token from lease(), or ValueError for an unknown one."""
        if isinstance(token, int) and not isinstance(token, bool):
            i = token & 0xFFFFFFFF
            if (0 <= token < (1 << 64) and i < self.lease_cap
                    and self.leases[i].state != L_FREE and self.leases[i].gen == token >> 32):
                return i
        raise ValueError(f"not an outstanding lease of this cache: {token!r}")

    # -- storing --------------------------------------------------------------

    cdef object _store(self, object key, object value, double ttl, int mode,
                       Py_hash_t h=-1, Py_ssize_t lease=-1, uint32_t gen=0):
        """set() (S_SET: returns True, or False when refused), setdefault()
        (S_KEEP) and fill() (S_FILL): these two return a live value stored
        meanwhile, else ``value``, stored unless refused (or, for a fill,
        unless the lease was invalidated). A fill's lease is slot ``lease`` of
        generation ``gen``."""
        if mode != S_FILL:
            return self._steps(key, value, ttl, mode, h, lease, gen)
        try:
            return self._steps(key, value, ttl, mode, h, lease, gen)
        finally:
            self._lease_end(lease, gen)   # a lease ends with its fill, whatever happened

    cdef inline object _steps(self, object key, object value, double ttl, int mode,
                              Py_hash_t h, Py_ssize_t lease, uint32_t gen):
        """_store's steps 1 and 2, then the region (_put)."""
        cdef Py_ssize_t nbytes, idx
        cdef double now
        cdef uint64_t settings
        while True:
            settings = self.settings_version
            nbytes = self._measure(key, value)
            now = self._clock(ttl != INFINITY)
            if h == -1:
                h = PyObject_Hash(key)
            idx = self._find(key, h)
            if self.settings_version == settings:
                break   # else resize() or __init__ ran meanwhile: measure again
        return self._put(key, value, h, nbytes, idx, ttl, &now, mode, lease, gen)

    cdef object _put(self, object key, object value, Py_hash_t h, Py_ssize_t nbytes,
                     Py_ssize_t idx, double ttl, double* now, int mode, Py_ssize_t lease,
                     uint32_t gen):
        """_store's region (step 3), then the release (step 4)."""
        cdef mc_victims v
        cdef PyObject* old = NULL
        cdef mc_entry* e
        cdef double expires
        cdef bint expired, in_ghost
        cdef uint32_t lst
        mc_victims_init(&v)
        if not (idx and mode == S_SET):
            self._reserve()   # first: raising MemoryError allocates, so before any change
        try:
            expired = idx != 0 and self._expired(<uint32_t>idx, now)
            if mode == S_FILL and (self.leases[lease].state != L_VALID
                                   or self.leases[lease].gen != gen):
                return value   # written or removed since the lease (or it ended): not stored
            if mode != S_SET:
                if idx and not expired:
                    return <object>self.entries[idx].value   # another fill's value wins
            else:
                self._invalidate_leases(mc_hash_bits(h), False)
            if (self._maxsize == 0 or nbytes > MC_ENTRY_BYTES_MAX
                    or (self._max_bytes >= 0 and nbytes > self._max_bytes)):
                self.rejected += 1
                if idx:   # never serve what the caller just replaced
                    self._take(<uint32_t>idx, R_EXPIRED if expired else R_NONE, &v)
                return False if mode == S_SET else value
            if idx and mode == S_SET:
                e = &self.entries[idx]
                old = e.value
                Py_INCREF(value)
                e.value = <PyObject*>value
                self.total_bytes += nbytes - e.nbytes
                if e.hm & MC_SMALL_BIT:
                    self.small_bytes += nbytes - e.nbytes
                e.nbytes = <uint32_t>nbytes
                expires = self._expires(ttl, now)
                self.n_ttl += (expires != INFINITY) - (e.expires != INFINITY)
                e.expires = expires
                self._on_hit(<uint32_t>idx)
                self.version += 1
                self._evict_to_fit(0, 0, now, &v)
                return True
            if idx:   # an expired entry stored meanwhile (setdefault, fill)
                self._take(<uint32_t>idx, R_EXPIRED, &v)
            if self._policy == P_LRU:
                self._evict_to_fit(1, nbytes, now, &v)
                lst = MC_MAIN
            else:
                # a key the ghost remembers goes to the main FIFO; until the
                # first eviction, so do the keys the full small FIFO refuses
                in_ghost = mc_ghost_remove(&self.ghost, mc_fingerprint(mc_hash_bits(h)))
                self._evict_to_fit(1, nbytes, now, &v)
                lst = (MC_MAIN if in_ghost or (not self.has_evicted and self._small_full())
                       else MC_SMALL)
                if self.ghost.limit < self.ghost_cap:
                    # 90% of the most entries held, this one included: a cache
                    # far below its maxsize (a byte bound, trim) keeps a ghost
                    # that size, not maxsize's
                    mc_ghost_follow(&self.ghost, self.count + 1, self.ghost_cap)
            self._add(key, value, h, nbytes, self._expires(ttl, now), lst)
            return True if mode == S_SET else value
        finally:
            self._release(&v, old)

    cdef inline uint32_t _first_probe(self, object key, Py_hash_t h) noexcept:
        """The entry of key if it sits, identical and without TTL, in its home
        slot (the common hit); 0 otherwise. Runs no Python code."""
        cdef uint32_t idx = self.table[mc_ideal(mc_hash_bits(h), self.mask)]
        if idx != 0 and self.entries[idx].key == <PyObject*>key and \
                self.entries[idx].expires == INFINITY:
            return idx
        return 0

    cdef object _get(self, object key, object default, Py_hash_t* hash_out=NULL):
        """_get_inline for the other compiled modules (through the vtable)."""
        return self._get_inline(key, default, hash_out)

    cdef inline object _get_inline(self, object key, object default, Py_hash_t* hash_out):
        """get()/[]: the home-slot hit inline, everything else in _lookup.

        hash_out, when given, receives the key's hash for a following store.
        """
        cdef Py_hash_t h
        cdef uint32_t idx
        cdef double now
        if self._timer is not None:   # the timer runs before hashing (step 1)
            now = self._clock(False)
            h = PyObject_Hash(key)
            if hash_out != NULL:
                hash_out[0] = h
            return self._lookup(key, h, now, True, default)
        h = PyObject_Hash(key)
        if hash_out != NULL:
            hash_out[0] = h
        idx = self._first_probe(key, h)
        if idx:
            self.hits += 1
            self._on_hit(idx)
            return <object>self.entries[idx].value
        return self._lookup(key, h, NAN, True, default)

    cdef object _lookup(self, object key, Py_hash_t h, double now, bint count,
                        object default):
        """A lookup; when ``count``, a hit counts and touches, a miss counts, and
        an expired entry is removed (as a miss)."""
        cdef Py_ssize_t idx
        cdef mc_victims v
        if h == -1:
            h = PyObject_Hash(key)
        idx = self._find(key, h)
        if idx:
            if not self._expired(<uint32_t>idx, &now):
                if count:
                    self.hits += 1
                    self._on_hit(<uint32_t>idx)
                return <object>self.entries[idx].value
            if count:
                mc_victims_init(&v)
                self._take(<uint32_t>idx, R_EXPIRED, &v)
                self.misses += 1
                self._release(&v, NULL)
                return default
        if count:
            self.misses += 1
        return default

    def __getitem__(self, key):
        cdef object value = self._get_inline(key, _MISSING, NULL)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def get(self, key, default=None):
        """Return the value for key, or default (counts a hit or a miss)."""
        return self._get_inline(key, default, NULL)

    def __setitem__(self, key, value):
        self._store(key, value, self._ttl, S_SET)

    def set(self, key, value, ttl=None):
        """Insert or replace key; ttl (seconds) overrides the default TTL.

        Returns False when the entry is refused: larger than max_bytes by
        itself (or 4 GiB and more), or maxsize is 0. A refusal is counted in
        ``rejected`` and drops any older value for key.
        """
        return self._store(key, value, self._ttl if ttl is None else check_ttl(ttl), S_SET)

    def __delitem__(self, key):
        self.pop(key)

    def __contains__(self, key):
        return self._peek(key, _MISSING) is not _MISSING

    def __len__(self):
        return self.count

    cdef object _peek(self, object key, object default):
        return self._lookup(key, -1, self._clock(False), False, default)

    def peek(self, key, default=None):
        """Return the value for key without counting or changing recency."""
        return self._peek(key, default)

    cdef object _remove_key(self, object key):
        """pop()/invalidate(): the value of the live entry removed, or _MISSING
        (an expired entry is removed as expired). Refuses the key's fills."""
        cdef double now = self._clock(False)
        cdef Py_hash_t h = PyObject_Hash(key)
        cdef Py_ssize_t idx = self._find(key, h)
        cdef mc_victims v
        cdef object value = _MISSING
        mc_victims_init(&v)
        try:
            self._invalidate_leases(mc_hash_bits(h), False)
            if idx:
                if self._expired(<uint32_t>idx, &now):
                    self._take(<uint32_t>idx, R_EXPIRED, &v)
                else:
                    value = <object>self.entries[idx].value
                    self._take(<uint32_t>idx, R_NONE, &v)
        finally:
            self._release(&v, NULL)
        return value

    def pop(self, key, default=_MISSING):
        """Remove key and return its value (counts nothing, calls no on_evict)."""
        cdef object value = self._remove_key(key)
        if value is not _MISSING:
            return value
        if default is _MISSING:
            raise KeyError(key)
        return default

    def invalidate(self, key):
        """Remove key if present and refuse the fills of every lease on it taken
        before now (get_or_set, cached, the tiers). True if an entry was removed."""
        return self._remove_key(key) is not _MISSING

    def popitem(self):
        """Remove and return the entry eviction would take next: the least
        recently used under LRU (see the docs for S3-FIFO)."""
        cdef double now = self._clock(False)
        cdef mc_victims v
        cdef uint32_t idx
        cdef bint expired
        cdef object key = _MISSING, value = None
        mc_victims_init(&v)
        try:
            while self.count:
                idx = self._victim(&now, False, &expired)
                if expired:
                    self._take(idx, R_EXPIRED, &v)
                    continue
                key = <object>self.entries[idx].key     # a new reference, no allocation
                value = <object>self.entries[idx].value
                self._invalidate_leases(self.entries[idx].hm & MC_HASH_MASK, False)
                self._take(idx, R_NONE, &v)
                break
        finally:
            self._release(&v, NULL)
        if key is _MISSING:
            raise KeyError("popitem(): cache is empty")
        return (key, value)

    def setdefault(self, key, default=None):
        """Return the value for key, inserting default on a miss (never overwrites)."""
        cdef Py_hash_t h
        cdef object value = self._get_inline(key, _MISSING, &h)
        if value is not _MISSING:
            return value
        try:
            return self._store(key, default, self._ttl, S_KEEP, h)
        except BaseException:
            self.misses -= 1   # a failed measurement leaves the statistics as they were
            raise

    def get_or_set(self, key, factory, ttl=None):
        """Return the cached value, or call factory() (no lock held) and store
        its result, unless the key was invalidated meanwhile (a lease: see
        invalidate()); the caller gets the value either way. A live value
        stored meanwhile by another fill wins and is returned."""
        if not callable(factory):
            raise TypeError(f"factory must be callable, not {type(factory).__name__}")
        cdef double t = self._ttl if ttl is None else check_ttl(ttl)
        cdef Py_hash_t h
        cdef object value = self._get_inline(key, _MISSING, &h)
        cdef Py_ssize_t lease
        cdef uint32_t gen
        if value is not _MISSING:
            return value
        lease = self._lease_new(h)
        gen = self.leases[lease].gen
        try:
            value = factory()
        except BaseException:
            self._lease_end(lease, gen)
            raise
        try:
            return self._store(key, value, t, S_FILL, h, lease, gen)
        except BaseException:
            self.misses -= 1   # the measurement failed: statistics as they were
            raise

    def lease(self, key):
        """Start a fill of key (after a miss): a token for fill() or
        drop_lease(). A write to or removal of key before the fill refuses it."""
        return self._lease_token(self._lease_new(PyObject_Hash(key)))

    cdef object _lease_token(self, Py_ssize_t i):
        return (<object>self.leases[i].gen << 32) | i

    def fill(self, key, value, lease, ttl=None):
        """End a lease: store value unless key was invalidated since lease()
        or a live value was stored meanwhile by another fill (returned
        instead). Counts nothing."""
        cdef Py_ssize_t i = self._lease_slot(lease)
        cdef uint32_t gen = self.leases[i].gen
        cdef double t
        try:
            t = self._ttl if ttl is None else check_ttl(ttl)
        except BaseException:
            self._lease_end(i, gen)
            raise
        return self._store(key, value, t, S_FILL, -1, i, gen)

    def drop_lease(self, lease):
        """End a lease without storing (the fill failed)."""
        cdef Py_ssize_t i = self._lease_slot(lease)
        self._lease_end(i, self.leases[i].gen)

    def lease_valid(self, lease):
        """Whether a fill through this lease would still store (no write since):
        False once the key was written or removed, or the lease ended."""
        try:
            return self.leases[self._lease_slot(lease)].state == L_VALID
        except ValueError:
            return False

    def update(self, other=(), **kwargs):
        """Insert every pair of other (a mapping or pairs) and of kwargs."""
        for key, value in iter_pairs(other, kwargs):
            self._store(key, value, self._ttl, S_SET)

    cdef int _clear(self) except -1:
        """Remove every entry (victims, released after, no callbacks) and refuse
        every outstanding fill."""
        cdef mc_victims v
        mc_victims_init(&v)
        try:
            self._take_all(&v)
        finally:
            self._release(&v, NULL)
        self._maybe_shrink()
        return 0

    def clear(self):
        """Remove every entry (no callbacks; statistics are kept)."""
        self._clear()

    cdef void _take_all(self, mc_victims* v) noexcept:
        cdef uint32_t lst, idx
        self._invalidate_leases(0, True)
        for lst in range(MC_MAIN, MC_SMALL + 1):
            while self.entries[lst].next != lst:
                self._take(self.entries[lst].next, R_NONE, v)
        self.has_evicted = False

    # -- snapshots ------------------------------------------------------------

    cdef Snap* _snapshot(self, Py_ssize_t* n, double now, bint reverse) except NULL:
        """Owned references to the live entries in a C array, in iteration order
        (S3-FIFO: the small FIFO, then the main one; each oldest first)."""
        cdef Snap* snap = <Snap*>PyMem_Malloc((self.count + 1) * sizeof(Snap))
        cdef uint32_t idx, lst, k
        cdef mc_entry* e
        cdef Py_ssize_t j = 0
        if snap == NULL:
            raise MemoryError()
        for k in range(2):
            lst = (MC_SMALL if k == 0 else MC_MAIN) if not reverse else \
                (MC_MAIN if k == 0 else MC_SMALL)
            idx = self.entries[lst].prev if reverse else self.entries[lst].next
            while idx != lst:
                if not self._expired(idx, &now):
                    e = &self.entries[idx]
                    Py_INCREF_p(e.key)
                    Py_INCREF_p(e.value)
                    snap[j].key = e.key
                    snap[j].value = e.value
                    snap[j].expires = e.expires
                    snap[j].nbytes = e.nbytes
                    snap[j].state = e.hm & ~MC_HASH_MASK
                    snap[j].idx = idx
                    snap[j].hbits = e.hm & MC_HASH_MASK
                    j += 1
                idx = self.entries[idx].prev if reverse else self.entries[idx].next
        n[0] = j
        return snap

    cdef list _snapshot_list(self, int what, bint reverse=False):
        """0: keys, 1: values, 2: (key, value) pairs."""
        cdef double now = self._clock(False)
        cdef Py_ssize_t n, i
        cdef Snap* snap = self._snapshot(&n, now, reverse)
        cdef list out = []
        try:
            for i in range(n):
                if what == 0:
                    out.append(<object>snap[i].key)
                elif what == 1:
                    out.append(<object>snap[i].value)
                else:
                    out.append((<object>snap[i].key, <object>snap[i].value))
        finally:
            _free_snapshot(snap, n)
        return out

    def __iter__(self):
        """Iterate over a snapshot of the keys, in eviction order (LRU first)."""
        return iter(self._snapshot_list(0))

    def __reversed__(self):
        """Iterate over a snapshot of the keys, most recently used first."""
        return iter(self._snapshot_list(0, True))

    def keys(self):
        """A snapshot list of the keys, in eviction order (LRU first)."""
        return self._snapshot_list(0)

    def values(self):
        """A snapshot list of the values, in eviction order (LRU first)."""
        return self._snapshot_list(1)

    def items(self):
        """A snapshot list of (key, value) pairs, in eviction order (LRU first)."""
        return self._snapshot_list(2)

    def __eq__(self, other):
        if not isinstance(other, Mapping):
            return NotImplemented
        return dict(self._snapshot_list(2)) == dict(other.items())

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = None

    def __repr__(self):
        if Py_ReprEnter(self):
            return f"{type(self).__name__}(...)"
        try:
            return repr_cache(type(self).__name__, self._snapshot_list(2), self.maxsize)
        finally:
            Py_ReprLeave(self)

    # -- cache-specific -------------------------------------------------------

    def expire(self, limit=None):
        """Drop expired entries now; return how many were dropped.

        ``limit``: look at no more than that many entries, from where the last
        limited call stopped (in the pool's order, wrapping around), so that a
        long expiry runs in bounded steps; calls whose limits add up to
        ``len(cache)`` look at every entry that stayed meanwhile.
        """
        cdef double now
        cdef mc_victims v
        cdef uint32_t idx, nxt, lst
        cdef Py_ssize_t n = -1
        if limit is not None:
            n = check_limit(limit)
        if not self.n_ttl:
            return 0
        now = self._timer() if self._timer is not None else mc_monotonic()
        mc_victims_init(&v)
        try:
            if n < 0:
                for lst in range(MC_MAIN, MC_SMALL + 1):
                    idx = self.entries[lst].next
                    while idx != lst:
                        nxt = self.entries[idx].next
                        if self.entries[idx].expires <= now:
                            self._take(idx, R_EXPIRED, &v)
                        idx = nxt
            else:
                self._expire_some(n, now, &v)
        finally:
            self._release(&v, NULL)
        self._maybe_shrink()
        return v.n

    cdef void _expire_some(self, Py_ssize_t n, double now, mc_victims* v) noexcept:
        """Look at up to n live entries from the cursor, in pool order (region)."""
        cdef Py_ssize_t top = self.top, i, start, seen = 0
        cdef mc_entry* e
        if top <= MC_FIRST:
            return
        i = self.expire_cursor
        if i < MC_FIRST or i >= top:
            i = MC_FIRST
        start = i
        while seen < n:
            e = &self.entries[i]
            if e.key != NULL and e.prev != MC_TAKEN:  # live: not free, not a victim
                seen += 1
                if e.expires <= now:
                    self._take(<uint32_t>i, R_EXPIRED, v)
            i += 1
            if i == top:
                i = MC_FIRST
            if i == start:
                break
        self.expire_cursor = i

    def trim(self, fraction=0.5):
        """Evict ceil(len * fraction) entries, in eviction order; return how many."""
        cdef double f = check_fraction(fraction)
        cdef double now = NAN
        cdef Py_ssize_t n, i
        cdef mc_victims v
        cdef uint32_t idx
        cdef bint expired
        mc_victims_init(&v)
        try:
            n = min(self.count, <Py_ssize_t>ceil(<double>self.count * f))
            for i in range(n):
                idx = self._victim(&now, True, &expired)
                if idx == 0:
                    break
                self._take(idx, R_TRIM, &v)
        finally:
            self._release(&v, NULL)
        self._maybe_shrink()
        return v.n

    def resize(self, maxsize=UNSET, max_bytes=UNSET):
        """Change the bounds (None removes one), evicting to fit."""
        cdef double now
        cdef mc_victims v
        cdef Py_ssize_t new_maxsize = -1, new_max_bytes = -1, restarts
        if maxsize is not UNSET:
            maxsize = check_size("maxsize", maxsize)
            new_maxsize = -1 if maxsize is None else maxsize
        if max_bytes is not UNSET:
            max_bytes = check_size("max_bytes", max_bytes)
            new_max_bytes = -1 if max_bytes is None else max_bytes
        now = self._clock(False)
        restarts = 0
        while new_max_bytes >= 0 and self._max_bytes < 0:
            # sizeof may raise (the bound is then taken back); another resize that took
            # the bound away meanwhile makes it start over
            restarts += 1
            if restarts > MAX_LOOKUP_RESTARTS:
                raise RuntimeError(BOUND_TAKEN_DURING_MEASURE)
            self._measure_all(new_max_bytes)
        # region: a bound not given is the one there now (Python code ran since the call)
        if maxsize is UNSET:
            new_maxsize = self._maxsize
        if max_bytes is UNSET:
            new_max_bytes = self._max_bytes
        elif max_bytes is None:
            self._set_all_nbytes_zero()
        mc_victims_init(&v)
        try:
            self._set_bounds(new_maxsize, new_max_bytes)
            self._evict_to_fit(0, 0, &now, &v)
        finally:
            self._release(&v, NULL)
        self._maybe_shrink()

    cdef int _measure_all(self, Py_ssize_t max_bytes) except -1:
        """Measure every entry when a byte bound is first set. The bound is set
        first, so that every store from then on measures its own entry; sizeof
        then runs on a snapshot (Python code), and in one region each size goes
        to the entry that still holds the key and value measured and no size of
        its own: found through the table (pointers compared: no __eq__), so that
        an entry moved by a repack is found and a removed one (waiting for its
        release in another operation) is not; one stored meanwhile measured
        itself. If another resize took the bound away meanwhile, nothing is
        applied (resize starts over). If sizeof raises, the bound is taken back,
        unless the sizes were zeroed meanwhile (that resize decides)."""
        cdef Py_ssize_t n = 0, i
        cdef Snap* snap = NULL
        cdef Py_ssize_t* sizes = NULL
        cdef uint32_t idx
        cdef uint64_t epoch = self.bytes_epoch
        self._set_bounds(self._maxsize, max_bytes)
        self.measuring += 1
        try:
            snap = self._snapshot(&n, -INFINITY, False)   # expired ones too
            sizes = <Py_ssize_t*>PyMem_Malloc((n + 1) * sizeof(Py_ssize_t))
            if sizes == NULL:
                raise MemoryError()
            for i in range(n):
                sizes[i] = self._sizes_uncapped(<object>snap[i].key, <object>snap[i].value)
            if self._max_bytes < 0:
                return 0   # another resize took the bound away: resize starts over
            for i in range(n):
                idx = self._find_same(snap[i].key, snap[i].hbits)
                if idx and self.entries[idx].value == snap[i].value \
                        and self.entries[idx].nbytes == 0:
                    self._set_nbytes(idx, sizes[i])
        except BaseException:
            if self.bytes_epoch == epoch and self._max_bytes >= 0:
                self._set_bounds(self._maxsize, -1)
                self._set_all_nbytes_zero()
            raise
        finally:
            self.measuring -= 1
            PyMem_Free(sizes)
            if snap != NULL:
                _free_snapshot(snap, n)
        return 0

    cdef uint32_t _find_same(self, PyObject* key, uint32_t hbits) noexcept:
        """The index of the entry whose key is this very object, or 0 (no __eq__)."""
        cdef size_t mask = self.mask
        cdef size_t i = mc_ideal(hbits, mask)
        cdef uint32_t idx
        while True:
            idx = self.table[i]
            if idx == 0 or self.entries[idx].key == key:
                return idx
            i = (i + 1) & mask

    cdef Py_ssize_t _sizes_uncapped(self, object key, object value) except -1:
        if self._sizeof is None:
            return (min(c_deep_sizeof(key), MC_ENTRY_BYTES_MAX)
                    + min(c_deep_sizeof(value), MC_ENTRY_BYTES_MAX))
        return min(self._size_of(key) + self._size_of(value), MC_ENTRY_BYTES_MAX)

    cdef void _set_nbytes(self, uint32_t idx, Py_ssize_t nbytes) noexcept:
        cdef mc_entry* e = &self.entries[idx]
        if nbytes > MC_ENTRY_BYTES_MAX:
            nbytes = MC_ENTRY_BYTES_MAX
        self.total_bytes += nbytes - e.nbytes
        if e.hm & MC_SMALL_BIT:
            self.small_bytes += nbytes - e.nbytes
        e.nbytes = <uint32_t>nbytes

    cdef void _set_all_nbytes_zero(self) noexcept:
        cdef uint32_t lst, idx
        for lst in range(MC_MAIN, MC_SMALL + 1):
            idx = self.entries[lst].next
            while idx != lst:
                self.entries[idx].nbytes = 0
                idx = self.entries[idx].next
        self.total_bytes = 0
        self.small_bytes = 0
        self.bytes_epoch += 1

    def stats(self):
        """Counters and sizes (see the docs for each key)."""
        cdef uint64_t hits = self.hits, misses = self.misses, rejected = self.rejected
        cdef uint64_t cap = self.by_reason[R_CAPACITY], byt = self.by_reason[R_BYTES]
        cdef uint64_t exp = self.by_reason[R_EXPIRED], trm = self.by_reason[R_TRIM]
        cdef Py_ssize_t size = self.count, nbytes = self.total_bytes
        by_reason = {"capacity": cap, "bytes": byt, "expired": exp, "trim": trm}
        return stats_dict(size, self.maxsize, nbytes, self.max_bytes, hits, misses,
                          by_reason, rejected, self._ttl_obj, POLICIES[self._policy])

    def reset_stats(self):
        """Zero the hit, miss, eviction, expiration and rejection counters."""
        self.hits = self.misses = self.rejected = 0
        memset(self.by_reason, 0, sizeof(self.by_reason))

    @property
    def maxsize(self):
        return None if self._maxsize < 0 else self._maxsize

    @property
    def ttl(self):
        return self._ttl_obj

    @property
    def max_bytes(self):
        return None if self._max_bytes < 0 else self._max_bytes

    @property
    def nbytes(self):
        return self.total_bytes

    @property
    def policy(self):
        return POLICIES[self._policy]

    @classmethod
    def __class_getitem__(cls, params):
        return GenericAlias(cls, params)

    # -- copying and pickling -------------------------------------------------

    def copy(self):
        """A shallow copy with the same settings and entries (fresh statistics)."""
        cls, args, state = self.__reduce__()
        new = cls(*args)
        new.__setstate__(state)
        return new

    def __copy__(self):
        return self.copy()

    def __reduce__(self):
        """The entries and the settings as one region saw them: building the
        state allocates, and a collection then may run Python code. While a
        byte bound is being set (sizes not all measured yet), the state is the
        one before it: no bound, no sizes."""
        cdef double now = NAN
        cdef Py_ssize_t n, i
        cdef Snap* snap
        if self.n_ttl:
            now = self._timer() if self._timer is not None else mc_monotonic()
        snap = self._snapshot(&n, now, False)
        cdef Py_ssize_t maxsize = self._maxsize
        cdef Py_ssize_t max_bytes = -1 if self.measuring else self._max_bytes
        cdef int policy = self._policy
        cdef object measure = self._sizeof, timer = self._timer, on_evict = self._on_evict
        cdef object ttl = self._ttl_obj
        entries = []
        try:
            for i in range(n):
                entries.append((<object>snap[i].key, <object>snap[i].value,
                                None if snap[i].expires == INFINITY else snap[i].expires - now,
                                snap[i].nbytes if max_bytes >= 0 else 0,
                                snap[i].state >> 29))
        finally:
            _free_snapshot(snap, n)
        state = (None if max_bytes < 0 else max_bytes, measure, timer, on_evict,
                 POLICIES[policy], entries)
        return (type(self), (None if maxsize < 0 else maxsize, ttl), state)

    def __setstate__(self, state):
        max_bytes, measure, timer, on_evict, policy, entries = check_state(
            state, MC_ENTRY_BYTES_MAX)
        # the timer too runs before anything changes (check_state hashed the keys)
        cdef double now = NAN
        if any(e[2] is not None for e in entries):
            now = timer() if timer is not None else mc_monotonic()
        if self.count and POLICIES.index(policy) != self._policy:
            raise ValueError("cannot change the policy of a cache that holds entries")
        if self.count and max_bytes is not None and self._max_bytes < 0:
            raise ValueError(NO_BOUND_ON_HELD_ENTRIES)
        self._sizeof = measure
        self._timer = timer
        self._on_evict = on_evict
        self._policy = POLICIES.index(policy)
        self._set_bounds(self._maxsize, -1 if max_bytes is None else max_bytes)
        for key, value, remaining, nbytes, state_bits in entries:
            self._restore(key, value, nbytes,
                          INFINITY if remaining is None else now + remaining, state_bits)

    cdef int _restore(self, object key, object value, Py_ssize_t nbytes, double expires,
                      unsigned state_bits) except -1:
        """Insert a pickled entry as it was (size, expiry, queue and frequency)."""
        cdef Py_hash_t h = PyObject_Hash(key)
        cdef Py_ssize_t idx = self._find(key, h)
        cdef mc_victims v
        cdef double now = NAN
        cdef uint32_t new
        mc_victims_init(&v)
        self._reserve()
        try:
            if idx:
                self._take(<uint32_t>idx, R_NONE, &v)
            self._evict_to_fit(1, nbytes, &now, &v)
            new = self._add(key, value, h, nbytes, expires,
                            MC_SMALL if self._policy == P_S3FIFO and state_bits & 4 else MC_MAIN)
            if self._policy == P_S3FIFO:
                mc_set_freq(&self.entries[new], state_bits & 3)
                mc_ghost_follow(&self.ghost, self.count, self.ghost_cap)
        finally:
            self._release(&v, NULL)
        return 0


cdef void _free_snapshot(Snap* snap, Py_ssize_t n) noexcept:
    """Drop the references a snapshot took (may run __del__: call it last)."""
    cdef Py_ssize_t i
    for i in range(n):
        Py_DECREF_p(snap[i].key)
        Py_DECREF_p(snap[i].value)
    PyMem_Free(snap)


# -- garbage collector support -------------------------------------------------
# Cython generates traverse/clear for the object attributes only; the keys and
# values held in the C pool (victims included) are added here, so that a value
# that refers back to its cache is collected once both are unreachable.

cdef traverseproc _base_traverse
cdef inquiry _base_clear


cdef int _cache_traverse(PyObject* o, visitproc visit, void* arg) noexcept:
    cdef CLruCache self = <CLruCache>o
    cdef Py_ssize_t i
    cdef int r
    cdef mc_entry* entries = self.entries
    for i in range(MC_FIRST, self.top):
        if entries[i].key != NULL:
            r = visit(entries[i].key, arg)
            if r:
                return r
            r = visit(entries[i].value, arg)
            if r:
                return r
    return _base_traverse(o, visit, arg)


cdef int _cache_clear(PyObject* o) noexcept:
    """tp_clear: an unreachable cache lets go of its entries (no callbacks)."""
    cdef CLruCache self = <CLruCache>o
    cdef mc_victims v
    mc_victims_init(&v)
    self._take_all(&v)
    try:
        self._release(&v, NULL)   # no victim has a reason: no callback runs
    except BaseException:
        pass
    return _base_clear(o)


cdef TypeSlots* _slots = <TypeSlots*>CLruCache
_base_traverse = _slots.tp_traverse
_base_clear = _slots.tp_clear
_slots.tp_traverse = _cache_traverse
_slots.tp_clear = _cache_clear

MutableMapping.register(CLruCache)
