"""CLruCache: the compiled LRU/TTL cache, bounded by entries and by bytes.

Layout
------
Entries live in one C array, ``entries`` (a pool indexed by uint32). Index 0 is
the sentinel of a circular doubly-linked list in recency order::

    entries[0].next -> LRU -> ... -> MRU -> entries[0]     (and back by .prev)

A C open-addressing hash table, ``table`` (uint32 slots, 0 = empty, linear
probing, load <= 1/2, backward-shift deletion), maps a key's hash to its entry
index. Each live entry owns one reference to its key and one to its value;
freed entries have ``key == NULL`` and are chained through ``next`` in a free
list. Indices, not pointers, so the pool can be reallocated as it grows.

Locking and re-entrancy
-----------------------
The GIL is the cache's single lock. Every change to the structure is one
*region* of C code that calls no Python code: no ``__hash__``/``__eq__``, no
``__del__`` (references to removed objects are moved to a ``DropList`` and
released after the region), no allocation of GC-tracked objects (which could
run a collection and with it finalizers). A region is therefore atomic with
respect to other threads and to re-entrant calls, and waiting for it is
waiting for the GIL, which holds nothing else.

User code runs only between regions, at points where the structure is
consistent:

* ``timer()`` and ``sizeof()`` run before the key is looked up;
* ``__hash__`` runs once per call, before the lookup (evictions reuse the
  stored hash);
* ``__eq__`` runs during the lookup, which changes nothing; after it returns
  the lookup restarts if the table changed meanwhile (``version``);
* ``on_evict`` and the release of evicted or replaced objects run after the
  region, when the cache is consistent and shows the operation's result.

Snapshots (iteration, ``items()``, ``repr``, pickling) first copy owned
references into a C array, then build Python objects from it, so a garbage
collection triggered by those allocations never sees a half-read cache.

The module does not declare free-threading support: on a free-threaded
CPython, importing it re-enables the GIL.
"""

from collections.abc import MutableMapping, Mapping
from types import GenericAlias

from cpython.object cimport PyObject, PyObject_Hash, PyObject_RichCompareBool, Py_EQ
from cpython.ref cimport Py_INCREF
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from libc.math cimport INFINITY, NAN, isnan
from libc.stdint cimport uint32_t, uint64_t
cimport cython
from libc.string cimport memset, memcpy

from memcache_ext._constants import UNSET, MAX_LOOKUP_RESTARTS
from memcache_ext._stats import repr_cache, stats_dict
from memcache_ext._validate import (
    MUTATED_DURING_LOOKUP, check_callable, check_fraction, check_nbytes, check_size, check_ttl,
    iter_pairs, trim_count,
)

from memcache_ext._sizeof_c cimport c_deep_sizeof

cdef extern from "_clock.h":
    double mc_monotonic() nogil

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
    ctypedef PyObject* (*ternaryfunc)(PyObject*, PyObject*, PyObject*)
    ctypedef PyObject* (*vectorcallfunc)(PyObject*, PyObject**, size_t, PyObject*)
    ctypedef struct CallSlots "PyTypeObject":
        ternaryfunc tp_call
        Py_ssize_t tp_vectorcall_offset
        unsigned long tp_flags
    unsigned long Py_TPFLAGS_HAVE_VECTORCALL
    Py_ssize_t PyVectorcall_NARGS(size_t)


ctypedef struct Entry:
    PyObject* key          # NULL: free entry
    PyObject* value
    Py_hash_t hash
    double expires         # INFINITY: never
    Py_ssize_t nbytes
    uint32_t prev          # towards the LRU end
    uint32_t next          # towards the MRU end (free list link when free)

ctypedef struct Drop:
    PyObject* key          # owned (NULL for a replaced value)
    PyObject* value        # owned
    int reason             # index in REASONS, or -1: no on_evict

ctypedef struct DropList:
    Drop* items
    Py_ssize_t n
    Py_ssize_t cap
    Drop small[4]

ctypedef struct Snap:
    PyObject* key          # owned
    PyObject* value        # owned
    double expires
    Py_ssize_t nbytes
    uint32_t idx


cdef enum:
    R_NONE = -1
    R_CAPACITY = 0
    R_BYTES = 1
    R_EXPIRED = 2
    R_TRIM = 3
    MIN_TABLE = 8
    MIN_POOL = 8

cdef tuple REASONS = ("capacity", "bytes", "expired", "trim")
cdef object _MISSING = object()
cdef Py_ssize_t MAX_ENTRIES = 0xFFFFFFF0U


cdef inline void dl_init(DropList* dl) noexcept:
    dl.items = dl.small
    dl.n = 0
    dl.cap = 4


cdef int dl_push(DropList* dl, PyObject* key, PyObject* value, int reason) except -1:
    """Take over the references to key and value; release them later."""
    cdef Drop* grown
    if dl.n == dl.cap:
        if dl.items == dl.small:
            grown = <Drop*>PyMem_Malloc(dl.cap * 2 * sizeof(Drop))
            if grown != NULL:
                memcpy(grown, dl.small, dl.n * sizeof(Drop))
        else:
            grown = <Drop*>PyMem_Realloc(dl.items, dl.cap * 2 * sizeof(Drop))
        if grown == NULL:
            raise MemoryError()
        dl.items = grown
        dl.cap *= 2
    dl.items[dl.n].key = key
    dl.items[dl.n].value = value
    dl.items[dl.n].reason = reason
    dl.n += 1
    return 0


cdef void _free_snapshot(Snap* snap, Py_ssize_t n) noexcept:
    """Drop the references a snapshot took (may run __del__: call it last)."""
    cdef Py_ssize_t i
    for i in range(n):
        Py_DECREF_p(snap[i].key)
        Py_DECREF_p(snap[i].value)
    PyMem_Free(snap)


cdef inline size_t _ideal(Py_hash_t h, size_t mask) noexcept:
    """A key's home slot: Fibonacci hashing, so that runs of consecutive int
    hashes (hash(i) == i) spread out instead of forming one long cluster."""
    return <size_t>((<uint64_t>h * <uint64_t>0x9E3779B97F4A7C15ULL) >> 32) & mask


@cython.final
@cython.trashcan(True)   # deeply nested caches are released without deep C recursion
cdef class CLruCache:
    """A thread-safe LRU cache with optional TTL and byte bound (compiled).

    CLruCache(maxsize=128, ttl=None, *, max_bytes=None, sizeof=None,
              timer=None, on_evict=None)
    """

    cdef Entry* entries
    cdef uint32_t* table
    cdef size_t mask
    cdef Py_ssize_t ecap          # entries allocated, root included
    cdef Py_ssize_t top           # next never-used index
    cdef uint32_t free_head
    cdef Py_ssize_t count
    cdef Py_ssize_t n_ttl         # entries with a finite expiry
    cdef Py_ssize_t total_bytes
    cdef unsigned long long version   # bumped on every insert, delete and rebuild
    cdef Py_ssize_t _maxsize      # -1: no count bound
    cdef Py_ssize_t _max_bytes    # -1: no byte bound
    cdef double _ttl              # INFINITY: no default TTL
    cdef object _ttl_obj
    cdef object _sizeof
    cdef object _timer
    cdef object _on_evict
    cdef unsigned long long hits
    cdef unsigned long long misses
    cdef unsigned long long rejected
    cdef unsigned long long by_reason[4]
    cdef object __weakref__

    def __cinit__(self, *args, **kwargs):
        if self._alloc_empty(&self.entries, &self.table) < 0:
            raise MemoryError()
        self._reset_state()

    # "sizeof" is a Cython keyword, so that keyword argument arrives in **kwargs.
    def __init__(self, maxsize=128, ttl=None, *, max_bytes=None, timer=None,
                 on_evict=None, **kwargs):
        maxsize = check_size("maxsize", maxsize)
        ttl = check_ttl(ttl)
        max_bytes = check_size("max_bytes", max_bytes)
        self._sizeof = check_callable("sizeof", kwargs.pop("sizeof", None))
        if kwargs:
            raise TypeError(f"CLruCache() got an unexpected keyword argument "
                            f"'{next(iter(kwargs))}'")
        self._timer = check_callable("timer", timer)
        self._on_evict = check_callable("on_evict", on_evict)
        self._maxsize = -1 if maxsize is None else min(maxsize, MAX_ENTRIES)
        self._max_bytes = -1 if max_bytes is None else max_bytes
        self._ttl_obj = ttl
        self._ttl = INFINITY if ttl is None else ttl

    def __dealloc__(self):
        CLruCache._free_entries(self.entries, self.top)
        PyMem_Free(self.table)

    # -- memory ---------------------------------------------------------------

    cdef int _alloc_empty(self, Entry** entries, uint32_t** table) noexcept:
        entries[0] = <Entry*>PyMem_Malloc(MIN_POOL * sizeof(Entry))
        table[0] = <uint32_t*>PyMem_Malloc(MIN_TABLE * sizeof(uint32_t))
        if entries[0] == NULL or table[0] == NULL:
            PyMem_Free(entries[0])
            PyMem_Free(table[0])
            return -1
        memset(table[0], 0, MIN_TABLE * sizeof(uint32_t))
        return 0

    cdef void _reset_state(self) noexcept:
        """Make the freshly allocated minimal pool and table an empty cache."""
        self.ecap = MIN_POOL
        self.mask = MIN_TABLE - 1
        self.top = 1
        self.free_head = 0
        self.count = 0
        self.n_ttl = 0
        self.total_bytes = 0
        self.version += 1
        self.entries[0].key = NULL
        self.entries[0].value = NULL
        self.entries[0].prev = 0
        self.entries[0].next = 0

    @staticmethod
    cdef void _free_entries(Entry* entries, Py_ssize_t top) noexcept:
        """Release every reference a detached pool holds, then the pool."""
        cdef Py_ssize_t i
        if entries == NULL:
            return
        for i in range(1, top):
            if entries[i].key != NULL:
                Py_DECREF_p(entries[i].key)
                Py_DECREF_p(entries[i].value)
        PyMem_Free(entries)

    cdef int _detach_all(self) noexcept:
        """Empty the cache in one region; release the old entries afterwards."""
        cdef Entry* old = self.entries
        cdef uint32_t* old_table = self.table
        cdef Py_ssize_t old_top = self.top
        cdef Entry* fresh
        cdef uint32_t* fresh_table
        if self._alloc_empty(&fresh, &fresh_table) < 0:
            return -1
        self.entries = fresh
        self.table = fresh_table
        self._reset_state()
        PyMem_Free(old_table)
        CLruCache._free_entries(old, old_top)   # may run __del__: the cache is valid
        return 0

    cdef int _reserve(self) except -1:
        """Make room for one more entry (pool and table); changes no entry."""
        cdef Py_ssize_t newcap
        cdef Entry* grown
        if self.free_head == 0 and self.top >= self.ecap:
            newcap = self.ecap * 2
            if self._maxsize >= 0 and newcap > self._maxsize + 2:
                newcap = max(self._maxsize + 2, self.ecap + 1)
            if newcap > MAX_ENTRIES:
                raise OverflowError("CLruCache holds at most 4294967280 entries")
            grown = <Entry*>PyMem_Realloc(self.entries, newcap * sizeof(Entry))
            if grown == NULL:
                raise MemoryError()
            self.entries = grown
            self.ecap = newcap
        if (self.count + 1) * 2 > <Py_ssize_t>(self.mask + 1):
            self._rebuild_table((self.mask + 1) * 2)
        return 0

    cdef int _rebuild_table(self, size_t size) except -1:
        cdef uint32_t* t = <uint32_t*>PyMem_Malloc(size * sizeof(uint32_t))
        cdef size_t mask = size - 1, i
        cdef uint32_t idx
        if t == NULL:
            raise MemoryError()
        memset(t, 0, size * sizeof(uint32_t))
        idx = self.entries[0].next
        while idx != 0:
            i = _ideal(self.entries[idx].hash, mask)
            while t[i] != 0:
                i = (i + 1) & mask
            t[i] = idx
            idx = self.entries[idx].next
        PyMem_Free(self.table)
        self.table = t
        self.mask = mask
        self.version += 1
        return 0

    cdef int _maybe_shrink(self) except -1:
        """After bulk removals, give memory back: repack the pool, resize the table."""
        cdef Py_ssize_t newcap, j
        cdef size_t size
        cdef Entry* packed
        cdef uint32_t idx
        if self.ecap <= 64 or self.count * 4 >= self.ecap:
            return 0
        newcap = max(self.count * 2 + 2, MIN_POOL)
        packed = <Entry*>PyMem_Malloc(newcap * sizeof(Entry))
        if packed == NULL:
            return 0   # keep the larger pool; nothing is lost
        j = 0
        idx = self.entries[0].next
        while idx != 0:
            j += 1
            packed[j] = self.entries[idx]
            packed[j].prev = <uint32_t>(j - 1)
            packed[j].next = <uint32_t>(j + 1)
            idx = self.entries[idx].next
        packed[0].key = NULL
        packed[0].value = NULL
        packed[0].next = 1 if j else 0
        packed[0].prev = <uint32_t>j
        if j:
            packed[j].next = 0
        PyMem_Free(self.entries)
        self.entries = packed
        self.ecap = newcap
        self.top = j + 1
        self.free_head = 0
        size = MIN_TABLE
        while <Py_ssize_t>size < (self.count + 1) * 2:
            size *= 2
        self._rebuild_table(size)
        return 0

    # -- list and table surgery (no Python code) ------------------------------

    cdef inline void _unlink(self, uint32_t idx) noexcept:
        cdef Entry* e = &self.entries[idx]
        self.entries[e.prev].next = e.next
        self.entries[e.next].prev = e.prev

    cdef inline void _link_mru(self, uint32_t idx) noexcept:
        cdef Entry* root = &self.entries[0]
        cdef uint32_t last = root.prev
        self.entries[idx].prev = last
        self.entries[idx].next = 0
        self.entries[last].next = idx
        root.prev = idx

    cdef inline void _touch(self, uint32_t idx) noexcept:
        if self.entries[0].prev != idx:
            self._unlink(idx)
            self._link_mru(idx)

    cdef void _table_delete(self, uint32_t idx) noexcept:
        """Remove idx from the table by backward shift (no tombstones)."""
        cdef size_t mask = self.mask
        cdef uint32_t* t = self.table
        cdef size_t i = _ideal(self.entries[idx].hash, mask), j, k
        while t[i] != idx:
            i = (i + 1) & mask
        j = i
        while True:
            j = (j + 1) & mask
            if t[j] == 0:
                break
            k = _ideal(self.entries[t[j]].hash, mask)
            # Leave t[j] where it is if its ideal slot k lies cyclically in (i, j].
            if (i <= j and i < k and k <= j) or (i > j and (i < k or k <= j)):
                continue
            t[i] = t[j]
            i = j
        t[i] = 0

    cdef uint32_t _add(self, object key, object value, Py_hash_t h, Py_ssize_t nbytes,
                       double expires) noexcept:
        """Insert a new entry; _reserve() must have made room."""
        cdef uint32_t idx
        cdef size_t i, mask = self.mask
        cdef Entry* e
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
        e.hash = h
        e.expires = expires
        e.nbytes = nbytes
        i = _ideal(h, mask)
        while self.table[i] != 0:
            i = (i + 1) & mask
        self.table[i] = idx
        self._link_mru(idx)
        self.count += 1
        self.total_bytes += nbytes
        if expires != INFINITY:
            self.n_ttl += 1
        self.version += 1
        return idx

    cdef int _remove(self, uint32_t idx, int reason, DropList* dl) except -1:
        """Take entry idx out; its references go to dl, released after the region."""
        cdef Entry* e = &self.entries[idx]
        dl_push(dl, e.key, e.value, reason)
        self._table_delete(idx)
        self._unlink(idx)
        self.count -= 1
        self.total_bytes -= e.nbytes
        if e.expires != INFINITY:
            self.n_ttl -= 1
        e.key = NULL
        e.value = NULL
        e.next = self.free_head
        self.free_head = idx
        self.version += 1
        if reason >= 0:
            self.by_reason[reason] += 1
        return 0

    # -- time -----------------------------------------------------------------

    cdef inline double _start_clock(self, bint need) except? -1.0:
        """The time for this operation, read before any lookup.

        A custom timer is Python code, so it is called here, up front, and
        only when some entry (or the one being stored) has a TTL. The C clock
        is read lazily instead: NaN means "not read yet".
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
        cdef uint32_t idx
        cdef Entry* e
        cdef object other
        cdef unsigned long long version
        cdef int restarts = 0
        cdef bint equal
        while True:
            mask = self.mask
            i = _ideal(h, mask)
            while True:
                idx = self.table[i]
                if idx == 0:
                    return 0
                e = &self.entries[idx]
                if e.key == <PyObject*>key:
                    return idx
                if e.hash == h:
                    other = <object>e.key   # keeps the key alive while __eq__ runs
                    version = self.version
                    equal = PyObject_RichCompareBool(other, key, Py_EQ)
                    if self.version != version:
                        other = None
                        break   # the table changed under __eq__: start over
                    if equal:
                        return idx
                i = (i + 1) & mask
            restarts += 1
            if restarts > MAX_LOOKUP_RESTARTS:
                raise RuntimeError(MUTATED_DURING_LOOKUP)

    # -- releasing ------------------------------------------------------------

    cdef int _release(self, DropList* dl) except -1:
        """After the region: call on_evict for automatic removals, drop references.

        Every reference is released even if a callback raises; the first
        exception is raised at the end.
        """
        cdef Py_ssize_t i
        cdef Drop* d
        cdef object on_evict = self._on_evict
        cdef object error = None
        try:
            for i in range(dl.n):
                d = &dl.items[i]
                if on_evict is not None and d.reason >= 0:
                    try:
                        on_evict(<object>d.key, <object>d.value, REASONS[d.reason])
                    except BaseException as exc:
                        if error is None:
                            error = exc
        finally:
            for i in range(dl.n):
                Py_XDECREF_p(dl.items[i].key)
                Py_XDECREF_p(dl.items[i].value)
            if dl.items != dl.small:
                PyMem_Free(dl.items)
            dl_init(dl)
        if error is not None:
            raise error
        return 0

    # -- measuring ------------------------------------------------------------

    cdef Py_ssize_t _measure(self, object key, object value) except -1:
        if self._max_bytes < 0:
            return 0
        return self._sizes(key, value)

    cdef Py_ssize_t _sizes(self, object key, object value) except -1:
        if self._sizeof is None:
            return c_deep_sizeof(key) + c_deep_sizeof(value)
        return check_nbytes(self._sizeof(key)) + check_nbytes(self._sizeof(value))

    # -- the operations -------------------------------------------------------

    cdef int _evict_to_fit(self, double* now, DropList* dl) except -1:
        cdef int reason
        cdef uint32_t idx
        while self.count:
            if self._maxsize >= 0 and self.count > self._maxsize:
                reason = R_CAPACITY
            elif self._max_bytes >= 0 and self.total_bytes > self._max_bytes:
                reason = R_BYTES
            else:
                return 0
            idx = self.entries[0].next
            if self._expired(idx, now):
                reason = R_EXPIRED
            self._remove(idx, reason, dl)
        return 0

    cdef int _store(self, object key, object value, double ttl, bint keep=False,
                    Py_hash_t h=-1) except -1:
        """set(): measure, read the clock, hash, look up, then one region.

        Returns 1 when stored, 0 when refused as oversized, and 2 when ``keep``
        is set and a live entry for key already exists (it is left as it is).
        """
        cdef Py_ssize_t nbytes = self._measure(key, value)
        cdef double now = self._start_clock(ttl != INFINITY)
        if h == -1:
            h = PyObject_Hash(key)
        cdef Py_ssize_t idx = self._find(key, h)
        cdef Entry* e
        cdef DropList dl
        cdef double expires
        dl_init(&dl)
        try:
            if keep and idx and not self._expired(<uint32_t>idx, &now):
                return 2
            if self._max_bytes >= 0 and nbytes > self._max_bytes:
                self.rejected += 1
                if idx:
                    self._remove(<uint32_t>idx, R_NONE, &dl)
                return False
            expires = self._expires(ttl, &now)
            if idx:
                e = &self.entries[idx]
                dl_push(&dl, NULL, e.value, R_NONE)
                Py_INCREF(value)
                e.value = <PyObject*>value
                self.total_bytes += nbytes - e.nbytes
                e.nbytes = nbytes
                self.n_ttl += (expires != INFINITY) - (e.expires != INFINITY)
                e.expires = expires
                self._touch(<uint32_t>idx)
            else:
                self._reserve()
                self._add(key, value, h, nbytes, expires)
            self._evict_to_fit(&now, &dl)
            return True
        finally:
            self._release(&dl)

    cdef inline uint32_t _first_probe(self, object key, Py_hash_t h) noexcept:
        """The entry of key if it sits, identical and without TTL, in its home
        slot (the common hit); 0 otherwise. Runs no Python code."""
        cdef uint32_t idx = self.table[_ideal(h, self.mask)]
        if idx != 0 and self.entries[idx].key == <PyObject*>key and \
                self.entries[idx].expires == INFINITY:
            return idx
        return 0

    cdef inline object _get(self, object key, object default, Py_hash_t* hash_out=NULL):
        """get()/[]: the home-slot hit inline, everything else in _lookup_hashed.

        hash_out, when given, receives the key's hash for a following store
        (-1: not computed here).
        """
        cdef Py_hash_t h
        cdef uint32_t idx
        if self._timer is not None:
            if hash_out != NULL:
                hash_out[0] = -1
            return self._lookup(key, True, default)   # the timer runs before hashing
        h = PyObject_Hash(key)
        if hash_out != NULL:
            hash_out[0] = h
        idx = self._first_probe(key, h)
        if idx:
            self.hits += 1
            self._touch(idx)
            return <object>self.entries[idx].value
        return self._lookup_hashed(key, h, NAN, True, default)

    cdef object _lookup(self, object key, bint count, object default):
        """get()/[] when count: a hit counts and becomes the MRU; else neither."""
        cdef double now = self._start_clock(False)
        return self._lookup_hashed(key, PyObject_Hash(key), now, count, default)

    cdef object _lookup_hashed(self, object key, Py_hash_t h, double now, bint count,
                               object default):
        cdef Py_ssize_t idx = self._find(key, h)
        cdef DropList dl
        if idx:
            if not self._expired(<uint32_t>idx, &now):
                if count:
                    self.hits += 1
                    self._touch(<uint32_t>idx)
                return <object>self.entries[idx].value
            dl_init(&dl)
            try:
                self._remove(<uint32_t>idx, R_EXPIRED, &dl)
            finally:
                self._release(&dl)
        if count:
            self.misses += 1
        return default

    cdef object _peek(self, object key, object default):
        cdef double now = self._start_clock(False)
        cdef Py_ssize_t idx = self._find(key, PyObject_Hash(key))
        if idx and not self._expired(<uint32_t>idx, &now):
            return <object>self.entries[idx].value
        return default

    def __getitem__(self, key):
        cdef object value = self._get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def get(self, key, default=None):
        """Return the value for key, or default (a hit makes it most recently used)."""
        return self._get(key, default)

    def __setitem__(self, key, value):
        self._store(key, value, self._ttl)

    def set(self, key, value, ttl=None):
        """Insert or replace key; ttl (seconds) overrides the default TTL.

        Returns False when the entry alone is larger than max_bytes: it is
        refused, counted in ``rejected``, and any older value for key dropped.
        """
        return self._store(key, value, self._ttl if ttl is None else check_ttl(ttl)) == 1

    def __delitem__(self, key):
        self.pop(key)

    def __contains__(self, key):
        return self._peek(key, _MISSING) is not _MISSING

    def __len__(self):
        return self.count

    def peek(self, key, default=None):
        """Return the value for key without counting or changing recency."""
        return self._peek(key, default)

    def pop(self, key, default=_MISSING):
        """Remove key and return its value (no counting, no callback)."""
        cdef double now = self._start_clock(False)
        cdef Py_ssize_t idx = self._find(key, PyObject_Hash(key))
        cdef DropList dl
        cdef bint expired
        cdef object value
        if idx:
            expired = self._expired(<uint32_t>idx, &now)
            value = <object>self.entries[idx].value
            dl_init(&dl)
            try:
                self._remove(<uint32_t>idx, R_EXPIRED if expired else R_NONE, &dl)
            finally:
                self._release(&dl)
            if not expired:
                return value
        if default is _MISSING:
            raise KeyError(key)
        return default

    def popitem(self):
        """Remove and return the least recently used (key, value) pair."""
        cdef double now = self._start_clock(False)
        cdef DropList dl
        cdef uint32_t idx
        cdef object key = _MISSING, value = None
        dl_init(&dl)
        try:
            while self.count:
                idx = self.entries[0].next
                if self._expired(idx, &now):
                    self._remove(idx, R_EXPIRED, &dl)
                    continue
                key = <object>self.entries[idx].key       # no allocation in the region
                value = <object>self.entries[idx].value
                self._remove(idx, R_NONE, &dl)
                break
        finally:
            self._release(&dl)
        if key is _MISSING:
            raise KeyError("popitem(): cache is empty")
        return (key, value)

    def setdefault(self, key, default=None):
        """Return the value for key, inserting default on a miss."""
        cdef Py_hash_t h
        cdef object value = self._get(key, _MISSING, &h)
        if value is not _MISSING:
            return value
        self._store(key, default, self._ttl, False, h)
        return default

    def get_or_set(self, key, factory, ttl=None):
        """Return the cached value, or store and return factory().

        The factory runs once per miss, with no lock held. If another caller
        stored the key meanwhile, that value wins and is returned.
        """
        if not callable(factory):
            raise TypeError(f"factory must be callable, not {type(factory).__name__}")
        cdef double t = self._ttl if ttl is None else check_ttl(ttl)
        cdef Py_hash_t h
        cdef object value = self._get(key, _MISSING, &h)
        if value is not _MISSING:
            return value
        value = factory()
        if self._store(key, value, t, True, h) == 2:  # stored meanwhile: that value wins
            return self._lookup(key, False, value)
        return value

    def update(self, other=(), **kwargs):
        """Insert every pair of other (a mapping or pairs) and of kwargs."""
        for key, value in iter_pairs(other, kwargs):
            self._store(key, value, self._ttl)

    def clear(self):
        """Remove every entry (no callbacks; statistics are kept)."""
        if self._detach_all() < 0:
            raise MemoryError()

    # -- snapshots ------------------------------------------------------------

    cdef Snap* _snapshot(self, Py_ssize_t* n, double now) except NULL:
        """Owned references to the live entries, LRU first, in a C array."""
        cdef Snap* snap = <Snap*>PyMem_Malloc((self.count + 1) * sizeof(Snap))
        cdef uint32_t idx
        cdef Entry* e
        cdef Py_ssize_t j = 0
        if snap == NULL:
            raise MemoryError()
        idx = self.entries[0].next
        while idx != 0:
            if not self._expired(idx, &now):
                e = &self.entries[idx]
                Py_INCREF_p(e.key)
                Py_INCREF_p(e.value)
                snap[j].key = e.key
                snap[j].value = e.value
                snap[j].expires = e.expires
                snap[j].nbytes = e.nbytes
                snap[j].idx = idx
                j += 1
            idx = self.entries[idx].next
        n[0] = j
        return snap

    cdef list _snapshot_list(self, int what):
        """0: keys, 1: values, 2: (key, value) pairs."""
        cdef double now = self._start_clock(False)
        cdef Py_ssize_t n, i
        cdef Snap* snap = self._snapshot(&n, now)
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
        """Iterate over a snapshot of the keys, least recently used first."""
        return iter(self._snapshot_list(0))

    def keys(self):
        """A snapshot list of the keys, least recently used first."""
        return self._snapshot_list(0)

    def values(self):
        """A snapshot list of the values, least recently used first."""
        return self._snapshot_list(1)

    def items(self):
        """A snapshot list of (key, value) pairs, least recently used first."""
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

    def expire(self):
        """Drop every expired entry now; return how many were dropped."""
        cdef double now
        cdef DropList dl
        cdef uint32_t idx, nxt
        cdef Py_ssize_t dropped
        if not self.n_ttl:
            return 0
        now = self._timer() if self._timer is not None else mc_monotonic()
        dl_init(&dl)
        try:
            idx = self.entries[0].next
            while idx != 0:
                nxt = self.entries[idx].next
                if self.entries[idx].expires <= now:
                    self._remove(idx, R_EXPIRED, &dl)
                idx = nxt
            dropped = dl.n
            self._maybe_shrink()
        finally:
            self._release(&dl)
        return dropped

    def trim(self, fraction=0.5):
        """Evict fraction of the entries, least recently used first; return how many."""
        cdef double f = check_fraction(fraction)
        cdef Py_ssize_t n = trim_count(self.count, f), i
        cdef DropList dl
        dl_init(&dl)
        try:
            for i in range(n):
                self._remove(self.entries[0].next, R_TRIM, &dl)
            self._maybe_shrink()
        finally:
            self._release(&dl)
        return n

    def resize(self, maxsize=UNSET, max_bytes=UNSET):
        """Change the bounds (None removes one), evicting to fit."""
        cdef double now = NAN
        cdef DropList dl
        if maxsize is not UNSET:
            maxsize = check_size("maxsize", maxsize)
        if max_bytes is not UNSET:
            max_bytes = check_size("max_bytes", max_bytes)
            if max_bytes is not None and self._max_bytes < 0:
                self._measure_all()
            elif max_bytes is None:
                self._set_all_nbytes(0)
            self._max_bytes = -1 if max_bytes is None else max_bytes
        if maxsize is not UNSET:
            self._maxsize = -1 if maxsize is None else min(maxsize, MAX_ENTRIES)
        now = self._start_clock(False)
        dl_init(&dl)
        try:
            self._evict_to_fit(&now, &dl)
            self._maybe_shrink()
        finally:
            self._release(&dl)

    cdef int _measure_all(self) except -1:
        """Measure every entry when a byte bound is first set.

        sizeof runs on a snapshot first (Python code); the sizes are then
        applied in one region to the entries that still hold the same key and
        value.
        """
        cdef Py_ssize_t n, i
        cdef Snap* snap = self._snapshot(&n, INFINITY)
        cdef Py_ssize_t* sizes = <Py_ssize_t*>PyMem_Malloc((n + 1) * sizeof(Py_ssize_t))
        cdef uint32_t idx
        try:
            if sizes == NULL:
                raise MemoryError()
            for i in range(n):
                sizes[i] = self._sizes(<object>snap[i].key, <object>snap[i].value)
            self._set_all_nbytes(0)
            for i in range(n):
                idx = snap[i].idx
                if (idx < self.top and self.entries[idx].key == snap[i].key
                        and self.entries[idx].value == snap[i].value):
                    self.entries[idx].nbytes = sizes[i]
                    self.total_bytes += sizes[i]
        finally:
            PyMem_Free(sizes)
            _free_snapshot(snap, n)
        return 0

    cdef void _set_all_nbytes(self, Py_ssize_t value) noexcept:
        cdef uint32_t idx = self.entries[0].next
        while idx != 0:
            self.entries[idx].nbytes = value
            idx = self.entries[idx].next
        self.total_bytes = value * self.count

    def stats(self):
        """Counters and sizes; see the README for each key."""
        by_reason = {"capacity": self.by_reason[R_CAPACITY], "bytes": self.by_reason[R_BYTES],
                     "expired": self.by_reason[R_EXPIRED], "trim": self.by_reason[R_TRIM]}
        return stats_dict(self.count, self.maxsize, self.total_bytes, self.max_bytes,
                          self.hits, self.misses, by_reason, self.rejected, self._ttl_obj)

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
        cdef double now = NAN
        cdef Py_ssize_t n, i
        cdef Snap* snap
        if self.n_ttl:
            now = self._timer() if self._timer is not None else mc_monotonic()
        snap = self._snapshot(&n, now)
        entries = []
        try:
            for i in range(n):
                entries.append((<object>snap[i].key, <object>snap[i].value,
                                None if snap[i].expires == INFINITY else snap[i].expires - now,
                                snap[i].nbytes))
        finally:
            _free_snapshot(snap, n)
        state = (self.max_bytes, self._sizeof, self._timer, self._on_evict, entries)
        return (type(self), (self.maxsize, self._ttl_obj), state)

    def __setstate__(self, state):
        max_bytes, measure, timer, on_evict, entries = state
        max_bytes = check_size("max_bytes", max_bytes)
        self._max_bytes = -1 if max_bytes is None else max_bytes
        self._sizeof = check_callable("sizeof", measure)
        self._timer = check_callable("timer", timer)
        self._on_evict = check_callable("on_evict", on_evict)
        cdef double now = NAN
        if any(e[2] is not None for e in entries):
            now = self._timer() if self._timer is not None else mc_monotonic()
        for key, value, remaining, nbytes in entries:
            self._restore(key, value, check_nbytes(nbytes),
                          INFINITY if remaining is None else now + remaining)

    cdef int _restore(self, object key, object value, Py_ssize_t nbytes, double expires) except -1:
        """Insert a pickled entry as it was (size and expiry kept)."""
        cdef Py_hash_t h = PyObject_Hash(key)
        cdef Py_ssize_t idx = self._find(key, h)
        cdef DropList dl
        cdef double now = NAN
        dl_init(&dl)
        try:
            if idx:
                self._remove(<uint32_t>idx, R_NONE, &dl)
            self._reserve()
            self._add(key, value, h, nbytes, expires)
            self._evict_to_fit(&now, &dl)
        finally:
            self._release(&dl)
        return 0


# -- garbage collector support -------------------------------------------------
# Cython generates traverse/clear for the object attributes only; the keys and
# values held in the C pool are added here so that a value that refers back to
# its cache is collected once both are unreachable.

cdef traverseproc _base_traverse
cdef inquiry _base_clear


cdef int _cache_traverse(PyObject* o, visitproc visit, void* arg) noexcept:
    cdef CLruCache self = <CLruCache>o
    cdef Py_ssize_t i
    cdef int r
    cdef Entry* entries = self.entries
    for i in range(1, self.top):
        if entries[i].key != NULL:
            r = visit(entries[i].key, arg)
            if r:
                return r
            r = visit(entries[i].value, arg)
            if r:
                return r
    return _base_traverse(o, visit, arg)


cdef int _cache_clear(PyObject* o) noexcept:
    cdef CLruCache self = <CLruCache>o
    self._detach_all()
    return _base_clear(o)


cdef TypeSlots* _slots = <TypeSlots*>CLruCache
_base_traverse = _slots.tp_traverse
_base_clear = _slots.tp_clear
_slots.tp_traverse = _cache_traverse
_slots.tp_clear = _cache_clear

MutableMapping.register(CLruCache)


# -- compiled call paths -------------------------------------------------------
# Small callables whose hit path is a key build and a lookup in C. They take
# calls through vectorcall (PEP 590: no argument tuple on the common call) and
# through tp_call (set by hand: Cython's __call__ would build a kwargs dict).


cdef object _vectorcall_as_tp_call(PyObject* o, PyObject** args, size_t nargsf,
                                   PyObject* kwnames):
    """The rare calls with keywords: rebuild (args, kwargs) and go through tp_call."""
    cdef Py_ssize_t n = PyVectorcall_NARGS(nargsf), i
    cdef object self = <object>o
    cdef tuple pos = tuple([<object>args[i] for i in range(n)])
    cdef dict kw = {}
    if kwnames != NULL:
        for i in range(len(<tuple>kwnames)):
            kw[(<tuple>kwnames)[i]] = <object>args[n + i]
    return type(self).__call__(self, *pos, **kw)


@cython.final
cdef class CachedCall:
    """The hit path of ``memcache_ext.cached`` for a plain function over a CLruCache.

    Builds the default key and looks it up without a Python-level frame; a
    miss goes to ``miss(key, args, kwargs)`` (the decorator's single-flight
    code). The key rule is ``decorators.make_key``'s, kept in step by tests.
    """

    cdef vectorcallfunc _vectorcall
    cdef CLruCache _cache
    cdef object _miss
    cdef frozenset _fast
    cdef object _mark
    cdef dict __dict__

    def __cinit__(self, *args, **kwargs):
        self._vectorcall = <vectorcallfunc>_cached_vectorcall

    def __init__(self, CLruCache cache not None, miss, frozenset fast, mark):
        self._cache = cache
        self._miss = miss
        self._fast = fast
        self._mark = mark

    def __call__(self, *args, **kwargs):
        return _cached_call(self, args, kwargs or None)


cdef object _cached_call(CachedCall self, tuple args, object kwargs):
    cdef object key
    if kwargs:
        key = (*args, self._mark, *sorted(kwargs.items()))
    elif len(args) == 1 and type(args[0]) in self._fast:
        key = args[0]
    else:
        key = args
    cdef object value = self._cache._get(key, _MISSING)
    if value is _MISSING:
        return self._miss(key, args, {} if kwargs is None else kwargs)
    return value


cdef object _cached_tp_call(PyObject* o, PyObject* args, PyObject* kwargs):
    return _cached_call(<CachedCall>o, <tuple>args, None if kwargs == NULL else <object>kwargs)


cdef object _cached_vectorcall(PyObject* o, PyObject** args, size_t nargsf, PyObject* kwnames):
    """f(x) with one argument of a simple type: no tuple, no frame."""
    cdef CachedCall self
    cdef object arg, value
    if kwnames == NULL and PyVectorcall_NARGS(nargsf) == 1:
        self = <CachedCall>o
        arg = <object>args[0]
        if type(arg) in self._fast:
            value = self._cache._get(arg, _MISSING)
            if value is not _MISSING:
                return value
            return self._miss(arg, (arg,), {})
    return _vectorcall_as_tp_call(o, args, nargsf, kwnames)


@cython.final
cdef class GetOr:
    """``get(key, default=None)`` over a CLruCache, calling ``fallback(key, default)``
    only on a miss: a second tier's hit path without a Python frame."""

    cdef vectorcallfunc _vectorcall
    cdef CLruCache _cache
    cdef object _fallback
    cdef dict __dict__

    def __cinit__(self, *args, **kwargs):
        self._vectorcall = <vectorcallfunc>_get_or_vectorcall

    def __init__(self, CLruCache cache not None, fallback):
        if not callable(fallback):
            raise TypeError(f"fallback must be callable, not {type(fallback).__name__}")
        self._cache = cache
        self._fallback = fallback

    def __call__(self, key, default=None):
        return _get_or(self, key, default)


cdef object _get_or(GetOr self, object key, object default):
    cdef object value = self._cache._get(key, _MISSING)
    if value is _MISSING:
        return self._fallback(key, default)
    return value


cdef object _get_or_tp_call(PyObject* o, PyObject* args, PyObject* kwargs):
    """The common call, get(key) or get(key, default), parsed by hand."""
    cdef tuple a = <tuple>args
    if kwargs == NULL and 1 <= len(a) <= 2:
        return _get_or(<GetOr>o, a[0], a[1] if len(a) == 2 else None)
    return GetOr.__call__(<GetOr>o, *a, **(<dict>kwargs if kwargs != NULL else {}))


cdef object _get_or_vectorcall(PyObject* o, PyObject** args, size_t nargsf, PyObject* kwnames):
    cdef Py_ssize_t n = PyVectorcall_NARGS(nargsf)
    if kwnames == NULL and (n == 1 or n == 2):
        return _get_or(<GetOr>o, <object>args[0], <object>args[1] if n == 2 else None)
    return _vectorcall_as_tp_call(o, args, nargsf, kwnames)


cdef void _install_call_slots(type cls, object instance, vectorcallfunc* field,
                              ternaryfunc tp_call) noexcept:
    """tp_call, and vectorcall at the offset of ``field`` in ``instance``."""
    cdef CallSlots* slots = <CallSlots*>cls
    slots.tp_call = tp_call
    slots.tp_vectorcall_offset = <Py_ssize_t>(<char*>field - <char*><PyObject*>instance)
    slots.tp_flags |= Py_TPFLAGS_HAVE_VECTORCALL


cdef CachedCall _cc_probe = CachedCall.__new__(CachedCall)
_install_call_slots(CachedCall, _cc_probe, &_cc_probe._vectorcall, <ternaryfunc>_cached_tp_call)
cdef GetOr _go_probe = GetOr.__new__(GetOr)
_install_call_slots(GetOr, _go_probe, &_go_probe._vectorcall, <ternaryfunc>_get_or_tp_call)
_cc_probe = None
_go_probe = None
