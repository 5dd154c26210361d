# The compiled cache's C-level surface, for the other compiled modules
# (_fastcall_c cimports it to take the hit path without a Python call).
#
# Layout and invariants: see the docstring of _core_c.pyx.

cimport cython
from cpython.object cimport PyObject
from libc.stdint cimport uint32_t, uint64_t


cdef extern from "_entry.h":
    ctypedef struct mc_entry:
        PyObject* key
        PyObject* value
        double expires
        uint32_t hm
        uint32_t nbytes
        uint32_t prev
        uint32_t next

    ctypedef struct mc_victims:
        uint32_t head
        uint32_t tail
        Py_ssize_t n

cdef extern from "_ghost.h":
    ctypedef struct mc_ghost:
        uint32_t* ring
        Py_ssize_t rcap
        Py_ssize_t head
        Py_ssize_t npos
        Py_ssize_t live
        Py_ssize_t limit
        uint32_t* tab
        size_t tmask


ctypedef struct mc_lease:
    Py_hash_t hash         # the leased key's hash
    uint32_t gen           # bumped when the slot is reused (stale tokens are refused)
    int state              # L_FREE, L_VALID or L_INVALID


ctypedef struct Snap:
    PyObject* key          # owned
    PyObject* value        # owned
    double expires
    uint32_t nbytes
    uint32_t state         # queue and frequency bits (for pickling)
    uint32_t idx
    uint32_t hbits         # the key's hash bits: where the table has it now


@cython.final
cdef class CLruCache:
    cdef mc_entry* entries
    cdef uint32_t* table
    cdef size_t mask
    cdef Py_ssize_t ecap
    cdef Py_ssize_t top
    cdef Py_ssize_t expire_cursor  # where the next limited expire() looks first
    cdef uint32_t free_head
    cdef Py_ssize_t count
    cdef Py_ssize_t n_ttl
    cdef Py_ssize_t total_bytes
    cdef Py_ssize_t pending
    cdef uint64_t version
    cdef uint64_t settings_version
    cdef uint64_t bytes_epoch    # moves when every size is zeroed (a byte bound taken away)
    cdef Py_ssize_t measuring    # _measure_all calls under way (the bound set, sizes not yet)
    cdef Py_ssize_t _maxsize
    cdef Py_ssize_t _max_bytes
    cdef double _ttl
    cdef object _ttl_obj
    cdef object _sizeof
    cdef object _timer
    cdef object _on_evict
    cdef int _policy
    cdef Py_ssize_t small_count
    cdef Py_ssize_t small_bytes
    cdef Py_ssize_t small_cap
    cdef Py_ssize_t small_cap_bytes
    cdef Py_ssize_t main_cap
    cdef Py_ssize_t main_cap_bytes
    cdef Py_ssize_t ghost_cap
    cdef bint has_evicted
    cdef mc_ghost ghost
    cdef mc_lease* leases
    cdef Py_ssize_t lease_cap
    cdef Py_ssize_t n_leases
    cdef uint64_t hits
    cdef uint64_t misses
    cdef uint64_t rejected
    cdef uint64_t by_reason[4]
    cdef object __weakref__

    # memory
    cdef void _reset_lists(self) noexcept
    cdef inline int _reserve(self) except -1
    cdef int _grow(self) except -1
    cdef void _maybe_shrink(self) noexcept
    # region helpers: no Python code
    cdef inline uint32_t _list_of(self, uint32_t idx) noexcept
    cdef uint32_t _add(self, object key, object value, Py_hash_t h, Py_ssize_t nbytes,
                       double expires, uint32_t lst) noexcept
    cdef void _take(self, uint32_t idx, int reason, mc_victims* v) noexcept
    cdef void _expire_some(self, Py_ssize_t n, double now, mc_victims* v) noexcept
    cdef inline void _to_main(self, uint32_t idx) noexcept
    cdef inline void _on_hit(self, uint32_t idx) noexcept
    cdef inline bint _main_over(self) noexcept
    cdef inline bint _small_full(self) noexcept
    cdef inline uint32_t _victim(self, double* now, bint to_ghost, bint* expired) noexcept
    cdef uint32_t _victim_scan(self, double* now, bint to_ghost, bint* expired) noexcept
    cdef void _evict_to_fit(self, Py_ssize_t more, Py_ssize_t more_bytes, double* now,
                            mc_victims* v) noexcept
    cdef void _set_bounds(self, Py_ssize_t maxsize, Py_ssize_t max_bytes) noexcept
    cdef void _take_all(self, mc_victims* v) noexcept
    cdef void _set_nbytes(self, uint32_t idx, Py_ssize_t nbytes) noexcept
    cdef void _set_all_nbytes_zero(self) noexcept
    cdef inline uint32_t _first_probe(self, object key, Py_hash_t h) noexcept
    cdef inline bint _expired(self, uint32_t idx, double* now) noexcept
    cdef inline void _free_slot(self, uint32_t idx) noexcept
    cdef inline double _expires(self, double ttl, double* now) noexcept
    cdef void _lease_end(self, Py_ssize_t i, uint32_t gen) noexcept
    cdef inline void _invalidate_leases(self, uint32_t hbits, bint every) noexcept
    # steps 1, 2 and 4: where Python code may run
    cdef inline double _clock(self, bint need) except? -1.0
    cdef Py_ssize_t _measure(self, object key, object value) except -1
    cdef Py_ssize_t _size_of(self, object obj) except -1
    cdef Py_ssize_t _sizes_uncapped(self, object key, object value) except -1
    cdef Py_ssize_t _find(self, object key, Py_hash_t h) except -1
    cdef inline int _release(self, mc_victims* v, PyObject* replaced) except -1
    cdef int _release_all(self, mc_victims* v, PyObject* replaced) except -1
    # leases
    cdef Py_ssize_t _lease_new(self, Py_hash_t h) except -1
    cdef Py_ssize_t _lease_slot(self, object token) except -2
    cdef object _lease_token(self, Py_ssize_t i)
    # operations
    cdef object _store(self, object key, object value, double ttl, int mode,
                       Py_hash_t h=*, Py_ssize_t lease=*, uint32_t gen=*)
    cdef inline object _steps(self, object key, object value, double ttl, int mode,
                              Py_hash_t h, Py_ssize_t lease, uint32_t gen)
    cdef object _put(self, object key, object value, Py_hash_t h, Py_ssize_t nbytes,
                     Py_ssize_t idx, double ttl, double* now, int mode, Py_ssize_t lease,
                     uint32_t gen)
    cdef object _get(self, object key, object default, Py_hash_t* hash_out=*)
    cdef inline object _get_inline(self, object key, object default, Py_hash_t* hash_out)
    cdef object _lookup(self, object key, Py_hash_t h, double now, bint count, object default)
    cdef object _peek(self, object key, object default)
    cdef object _remove_key(self, object key)
    cdef int _clear(self) except -1
    cdef Snap* _snapshot(self, Py_ssize_t* n, double now, bint reverse) except NULL
    cdef list _snapshot_list(self, int what, bint reverse=*)
    cdef int _measure_all(self, Py_ssize_t max_bytes) except -1
    cdef uint32_t _find_same(self, PyObject* key, uint32_t hbits) noexcept
    cdef int _restore(self, object key, object value, Py_ssize_t nbytes, double expires,
                      unsigned state_bits) except -1
