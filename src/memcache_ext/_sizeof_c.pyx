"""deep_sizeof, compiled: the same rules and the same numbers as ``_sizeof_py``.

The walk keeps its own stack, visited set and child buffer in C memory; small
exact builtins (int, float, str, bytes) are sized with C formulas equal to
``sys.getsizeof``; other objects' children come straight from their
``tp_traverse`` (what ``gc.get_referents`` returns) and their own size from
``sys.getsizeof``, or from the type's basic size when the type does not
override ``__sizeof__``. See ``_sizeof_py`` for the rules.

The C helpers live in headers, one concern each: ``_sizeof_mem.h`` (the walk's
C memory), ``_sizeof_refs.h`` (reading children), ``_sizeof_layout.h`` (own
sizes from layouts), ``_sizeof_math.h`` (saturating totals, sampling
positions). The one memory rule: no borrowed pointer is used across a call
that can run Python code; which calls can, and how the walk copes, is written
at ``_walk`` and at the small-object fast path.
"""

from cpython.object cimport PyObject, PyTypeObject
from libc.stdint cimport uint64_t
from cpython.pyport cimport PY_SSIZE_T_MAX

import sys as _sys

from memcache_ext import _sizeof_py as _ref

cdef extern from "_sizeof_mem.h":
    Py_ssize_t mc_live_blocks

    ctypedef struct mc_set:
        Py_ssize_t used
    void mc_set_init(mc_set*)
    void mc_set_free(mc_set*)
    int mc_set_add(mc_set*, PyObject*) except -1
    int mc_set_has(mc_set*, PyObject*)

    ctypedef struct mc_entry:
        PyObject* obj
        double w
        Py_ssize_t a
    ctypedef struct mc_stack:
        mc_entry* items
        Py_ssize_t len
    void mc_stack_init(mc_stack*)
    int mc_stack_push(mc_stack*, PyObject*, double, Py_ssize_t) except -1
    void mc_stack_free(mc_stack*)

    ctypedef struct mc_buf:
        PyObject** items
        Py_ssize_t len
    void mc_buf_init(mc_buf*)
    void mc_buf_free(mc_buf*)
    int mc_buf_reserve(mc_buf*, Py_ssize_t) except -1
    int mc_buf_push(mc_buf*, PyObject*) except -1

cdef extern from "_sizeof_refs.h":
    PyObject** mc_seq_items(PyObject*)
    PyObject* mc_seq_item(PyObject*, Py_ssize_t)
    int mc_traverse(PyObject*, mc_buf*) except -1
    bint mc_dict_next(PyObject*, Py_ssize_t*, PyObject**, PyObject**)
    int mc_dict_next_selftest(PyObject*)
    int mc_dict_entries(PyObject*, mc_buf*) except -1

cdef extern from "_sizeof_layout.h":
    PyTypeObject* mc_type(PyObject*)
    Py_ssize_t mc_refcnt(PyObject*)
    unsigned long mc_flags(PyTypeObject*)
    unsigned int mc_version(PyTypeObject*)
    Py_ssize_t mc_var_size(PyObject*)
    PyObject* mc_type_lookup(PyTypeObject*, PyObject*)
    Py_ssize_t mc_basic_size(PyObject*)
    Py_ssize_t mc_list_size(PyObject*)
    Py_ssize_t mc_dict_size(PyObject*)
    bint MC_DIRECT_OBJECT_SIZEOF
    Py_ssize_t mc_inline_extra(PyObject*, Py_ssize_t)
    int mc_has_inline_values(PyObject*)
    Py_ssize_t mc_str_size(PyObject*)
    int mc_str_shared(PyObject*)
    int mc_int_size(PyObject*, Py_ssize_t*, int)
    Py_ssize_t mc_float_size()
    Py_ssize_t mc_bytes_size(PyObject*)
    Py_ssize_t mc_complex_size()
    int mc_is_singleton(PyObject*)

    int MC_TI_SHARED, MC_TI_DEFAULT_SIZEOF, MC_TI_DICT
    ctypedef struct mc_tinfo:
        PyTypeObject* tp
        unsigned int version
        int info
    mc_tinfo* mc_tcache_slot(PyTypeObject*)

cdef extern from "_sizeof_math.h":
    size_t mc_add_node(size_t, Py_ssize_t)
    Py_ssize_t mc_total(size_t, double)
    uint64_t mc_phase(uint64_t)
    ctypedef struct mc_cursor:
        pass
    void mc_cursor_init(mc_cursor*, Py_ssize_t, Py_ssize_t, uint64_t)
    void mc_cursor_next(mc_cursor*)
    Py_ssize_t mc_cursor_pos(const mc_cursor*)
    Py_ssize_t mc_neighbour(Py_ssize_t, Py_ssize_t)
    int mc_bit_length(size_t)
    void mc_prefetch(const void*)

cdef extern from "Python.h":
    int PyType_IsSubtype(PyTypeObject*, PyTypeObject*)
    Py_ssize_t PyDict_GET_SIZE(PyObject*)
    PyObject* PyObject_GetIter(PyObject*) except NULL
    PyObject* PyIter_Next(PyObject*)
    PyObject* PyErr_Occurred()
    void Py_INCREF(PyObject*)
    void Py_DECREF(PyObject*)
    PyObject* Py_None
    PyTypeObject PyLong_Type, PyFloat_Type, PyUnicode_Type, PyBytes_Type, PyComplex_Type
    PyTypeObject PyList_Type, PyTuple_Type, PyDict_Type, PySet_Type, PyFrozenSet_Type
    PyTypeObject PyBool_Type

# ---------------------------------------------------------------- constants
# Everything that defines the rules comes from the reference module, so both
# implementations apply the same numbers.
DEFAULT_BUDGET = _ref.DEFAULT_BUDGET
cdef Py_ssize_t _DEFAULT_BUDGET = _ref.DEFAULT_BUDGET
cdef Py_ssize_t _MAX_OBJECT_SIZE = _ref.MAX_OBJECT_SIZE
cdef Py_ssize_t _SMALL_UNITS = _ref.SMALL_UNITS
cdef Py_ssize_t _SMALL_CAP_FACTOR = _ref.SMALL_CAP_FACTOR
cdef Py_ssize_t _GC_HEAD = _ref.GC_HEAD
cdef Py_ssize_t _PREHEADER = _ref.PREHEADER
cdef unsigned long _F_GC = _ref.TPFLAGS_HAVE_GC
cdef unsigned long _F_PREHEADER = _ref.TPFLAGS_PREHEADER
cdef unsigned long _F_MANAGED_DICT = _ref.TPFLAGS_MANAGED_DICT
cdef bint _INLINE_VALUES = _ref.INLINE_VALUES
cdef bint _HAS_VALUES_PROBED = _ref.HAS_VALUES_PROBED
cdef unsigned long _F_INLINE_VALUES = _ref.TPFLAGS_INLINE_VALUES  # 0 unless 3.13 and probed
cdef Py_ssize_t _DICT_SHELL = _ref.DICT_SHELL
cdef int _DIGIT_BITS = _sys.int_info.bits_per_digit
cdef Py_ssize_t _PTR = sizeof(void*)

cdef object _getsizeof = _sys.getsizeof
cdef object _object_sizeof = object.__sizeof__
cdef object _check_budget = _ref.check_budget
cdef object _sizeof_name = "__sizeof__"
cdef object _object_sizeof_descr = object.__dict__["__sizeof__"]
cdef tuple _SHARED_TYPES = _ref.SHARED_TYPES
cdef object _ENUM_META = _ref.ENUM_META
cdef Py_ssize_t _N_SHARED = len(_SHARED_TYPES)


def _dict_probes():
    class _Split:
        def __init__(self):
            self.a = 1
            self.b = 2
    holes = {f"k{i}": i for i in range(40)}
    for i in range(0, 40, 3):
        del holes[f"k{i}"]
    general = {i: str(i) for i in range(20)}
    del general[0], general[7]
    general[(1, 2)] = None
    wide = {i: i for i in range(300)}  # 2-byte indices
    for i in range(0, 300, 7):
        del wide[i]
    return [{}, {"a": 1, "b": 2.5}, holes, general, {"x": 1, 2: "y"},
            {f"s{i}": i for i in range(300)}, wide, _Split().__dict__]


# reading 3.11 dict tables in place is enabled only if it matches PyDict_Next
cdef list _probes = _dict_probes()
_DICT_DIRECT = bool(mc_dict_next_selftest(<PyObject*>_probes))
_probes = None


cdef inline Py_ssize_t _header(PyTypeObject* t) noexcept:
    cdef unsigned long f = mc_flags(t)
    cdef Py_ssize_t h = 0
    if f & _F_GC:
        h += _GC_HEAD
    if f & _F_PREHEADER:
        h += _PREHEADER
    return h


cdef Py_ssize_t _values_size(Py_ssize_t k) noexcept:
    cdef Py_ssize_t n = k + 1
    return ((n + 2 + _PTR - 1) // _PTR) * _PTR + n * _PTR


cdef int _subtype_bits(PyTypeObject* t) noexcept:
    """MC_TI_SHARED and MC_TI_DICT: subtype tests only, which run no Python code."""
    cdef int info = 0
    cdef Py_ssize_t i
    for i in range(_N_SHARED):
        if PyType_IsSubtype(t, <PyTypeObject*>_SHARED_TYPES[i]):
            info |= MC_TI_SHARED
            break
    if PyType_IsSubtype(mc_type(<PyObject*>t), <PyTypeObject*>_ENUM_META):
        info |= MC_TI_SHARED
    if PyType_IsSubtype(t, &PyDict_Type):
        info |= MC_TI_DICT
    return info


cdef int _type_info(PyTypeObject* t) except -1:
    """Bits: shared type / __sizeof__ is object's / dict subclass. Cached per
    (type, version tag); a type with no valid tag is recomputed each time. The
    __sizeof__ lookup can run Python code (the __eq__ of a non-str key in a
    type's dict that collides with "__sizeof__"): call it only where no
    borrowed pointer is held, else _type_kind."""
    cdef mc_tinfo* slot = mc_tcache_slot(t)
    cdef unsigned int version = mc_version(t)
    if version != 0 and slot.tp == t and slot.version == version:
        return slot.info
    cdef int info = _subtype_bits(t)
    if mc_type_lookup(t, <PyObject*>_sizeof_name) == <PyObject*>_object_sizeof_descr:
        info |= MC_TI_DEFAULT_SIZEOF
    version = mc_version(t)  # the lookup assigns a tag if there was none
    if version != 0:
        slot.tp = t
        slot.version = version
        slot.info = info
    return info


cdef int _type_kind(PyTypeObject* t) noexcept:
    """The MC_TI_SHARED and MC_TI_DICT bits of _type_info without its lookup,
    for the places that hold borrowed pointers (the children loops and the fast
    path). Not cached on a miss (the next _own_size of the type caches it)."""
    cdef mc_tinfo* slot = mc_tcache_slot(t)
    cdef unsigned int version = mc_version(t)
    if version != 0 and slot.tp == t and slot.version == version:
        return slot.info
    return _subtype_bits(t)


cdef Py_ssize_t _slow_getsizeof(PyObject* o) except -1:
    """sys.getsizeof for builtins whose layout the C formulas do not cover
    (big ints, legacy strs, sets). It allocates, so it can run Python code (a
    collection, finalizers): see "pinning" in _walk."""
    return _getsizeof(<object>o)


cdef Py_ssize_t _checked_getsizeof(PyObject* o, bint is_root) except -1:
    """sys.getsizeof with the exception rule: the top-level object's errors
    propagate, a nested object falls back to its basic size. A MemoryError
    always propagates: the walk cannot tell a right size from a wrong one; so
    does a SystemError, the interpreter's own failure (CPython 3.10 turns some
    failed allocations in a Python ``__sizeof__`` into one)."""
    cdef object r
    cdef Py_ssize_t basic
    try:
        r = _getsizeof(<object>o)
        if r > _MAX_OBJECT_SIZE:
            raise ValueError(f"__sizeof__() returned an implausible size: {r}")
    except (MemoryError, SystemError):
        raise
    except Exception:
        if is_root:
            raise
        # |Py_SIZE| items: object.__sizeof__ is negative for a negative int subclass
        basic = mc_type(o).tp_basicsize
        return basic + abs(<Py_ssize_t>_object_sizeof(<object>o) - basic) + _header(mc_type(o))
    return r


cdef inline Py_ssize_t _leaf_size(PyObject* o, PyTypeObject* t) noexcept:
    """Size of an exact int/float/str/bytes/complex; -2 if it is shared; -1 if
    ``o`` is not a leaf; -3 if only sys.getsizeof can tell (_slow_getsizeof).
    Runs no Python code."""
    cdef Py_ssize_t size
    cdef int r
    if t == &PyFloat_Type:
        return mc_float_size()
    if t == &PyUnicode_Type:
        if mc_str_shared(o):
            return -2
        size = mc_str_size(o)
        return size if size >= 0 else -3
    if t == &PyLong_Type:
        r = mc_int_size(o, &size, _DIGIT_BITS)
        if r == 1:
            return -2
        return size if r == 0 else -3
    if t == &PyBytes_Type:
        if mc_var_size(o) < 2:
            return -2
        return mc_bytes_size(o)
    if t == &PyComplex_Type:
        return mc_complex_size()
    return -1


cdef inline bint _node_shared(PyObject* o, PyTypeObject* t) except -1:
    if t == &PyList_Type or t == &PyDict_Type:
        return False
    if t == &PyTuple_Type:
        return mc_var_size(o) == 0
    if mc_is_singleton(o):
        return True
    return (_type_kind(t) & MC_TI_SHARED) != 0


# ------------------------------------------------------ small-object fast path
# A graph of exact dicts/lists/tuples with leaf (or shared) children and at
# most SMALL_WALK_UNITS units in all is measured by a plain recursion with a
# visited array on the C stack: no stack entries, no refcount traffic, no
# heap. It returns exactly what the general walk returns, or -1 ("walk it"):
#
# * no sampling can happen: a container is expanded here only when it has at
#   most `a` units, where `a` is a lower bound of the allowance the general
#   walk would give it (the root gets the budget; a child with one reference
#   at least (a - n) // (number of children); a child with more references
#   0, since the general walk may reach it first from elsewhere, with less
#   allowance, in another order), or when it has at most SMALL_UNITS units
#   and the whole walk stays under the small cap (SMALL_WALK_UNITS <= 8 * budget,
#   checked by the callers); so every weight is 1 and the result is the sum of
#   the own sizes of the distinct non-shared reachable objects, whatever the
#   order of the walk;
# * deduplication follows the general walk: the root and every object with
#   more than one reference are remembered;
# * it runs no Python code and allocates nothing, so the borrowed pointers it
#   reads (items, dict entries, the objects themselves) stay valid: a leaf that
#   needs sys.getsizeof makes it give up, and the general walk measures it.

cdef enum:
    SMALL_WALK_UNITS = 64
    SMALL_WALK_SEEN = 32


# the walk's units stay under the small cap (SMALL_CAP_FACTOR * budget)
cdef Py_ssize_t _SMALL_WALK_MIN_BUDGET = (SMALL_WALK_UNITS + _SMALL_CAP_FACTOR - 1) // _SMALL_CAP_FACTOR


ctypedef struct SmallWalk:
    Py_ssize_t units
    Py_ssize_t nseen
    PyObject* seen[SMALL_WALK_SEEN]


cdef inline int _small_seen(SmallWalk* st, PyObject* c) noexcept:
    """1 if ``c`` was met before, else remember it and 0; -1 when full."""
    cdef Py_ssize_t i
    for i in range(st.nseen):
        if st.seen[i] == c:
            return 1
    if st.nseen == SMALL_WALK_SEEN:
        return -1
    st.seen[st.nseen] = c
    st.nseen += 1
    return 0


cdef inline Py_ssize_t _small_child(PyObject* c, SmallWalk* st) except -3:
    """Charge of child ``c`` (0 if shared or already counted); -2: a container
    to expand (first visit); -1: give up."""
    cdef PyTypeObject* t = mc_type(c)
    cdef Py_ssize_t size = _leaf_size(c, t)
    cdef int r
    if size == -2:
        return 0
    if size == -3:
        return -1
    if size == -1:
        if t == &PyDict_Type or t == &PyList_Type or (t == &PyTuple_Type and mc_var_size(c) != 0):
            size = -2
        elif mc_is_singleton(c) or t == &PyTuple_Type or _node_shared(c, t):
            return 0
        else:
            return -1
    if mc_refcnt(c) > 1:
        r = _small_seen(st, c)
        if r != 0:
            return 0 if r > 0 else -1
    return size


cdef Py_ssize_t _small_walk(PyObject* o, PyTypeObject* t, Py_ssize_t a,
                            SmallWalk* st) except -3:
    """Size of the exact dict/list/tuple ``o`` given allowance ``a``, or -1.
    (The sizes summed are those of at most SMALL_WALK_UNITS + 1 real objects:
    the total cannot overflow.)"""
    cdef Py_ssize_t n, total, s, i, nchildren, ca, pos = 0
    cdef PyObject* k
    cdef PyObject* v
    cdef PyObject** items
    if t == &PyDict_Type:
        n = PyDict_GET_SIZE(o)
        total = mc_dict_size(o)
        if total < 0:
            return -1
        nchildren = 2 * n
    else:
        n = mc_var_size(o)
        total = mc_list_size(o) if t == &PyList_Type else mc_basic_size(o)
        nchildren = n
    total += _GC_HEAD
    if n == 0:
        return total
    if n > SMALL_WALK_UNITS - st.units or (n > a and n > _SMALL_UNITS):
        return -1
    st.units += n
    # a lower bound of (a - n) // (children pushed), without a division
    ca = (a - n) >> mc_bit_length(<size_t>nchildren) if a > n else 0
    if t == &PyDict_Type:
        while mc_dict_next(o, &pos, &k, &v):
            s = _small_child(k, st)
            if s == -2:
                s = _small_walk(k, mc_type(k), ca if mc_refcnt(k) == 1 else 0, st)
            if s < 0:
                return -1
            total += s
            s = _small_child(v, st)
            if s == -2:
                s = _small_walk(v, mc_type(v), ca if mc_refcnt(v) == 1 else 0, st)
            if s < 0:
                return -1
            total += s
        return total
    items = mc_seq_items(o)
    for i in range(n):
        s = _small_child(items[i], st)
        if s == -2:
            s = _small_walk(items[i], mc_type(items[i]), ca if mc_refcnt(items[i]) == 1 else 0, st)
        if s < 0:
            return -1
        total += s
    return total


cdef inline Py_ssize_t _small_root(PyObject* o, PyTypeObject* t, Py_ssize_t budget,
                                   Py_ssize_t* units) except -3:
    """The fast path for an exact dict/list/non-empty tuple root; -1: walk it."""
    cdef SmallWalk st
    cdef Py_ssize_t size
    if budget < _SMALL_WALK_MIN_BUDGET:
        return -1
    st.units = 0
    st.nseen = 1
    st.seen[0] = o
    size = _small_walk(o, t, budget, &st)
    units[0] = st.units
    return size


ctypedef struct Walk:
    size_t total_i
    double total_f
    Py_ssize_t units
    Py_ssize_t sampled


cdef inline void _charge_node(Walk* wk, Py_ssize_t size, double w) noexcept:
    """An object's own size (a user ``__sizeof__`` may report up to
    MAX_OBJECT_SIZE): the exact part saturates."""
    if w == 1.0:
        wk.total_i = mc_add_node(wk.total_i, size)
    else:
        wk.total_f += <double>size * w


cdef inline void _charge_leaf(Walk* wk, Py_ssize_t size, double w) noexcept:
    """An exact builtin leaf, counted once: all of them fit in the address
    space, so a plain unsigned add cannot wrap (see mc_add_node)."""
    if w == 1.0:
        wk.total_i += <size_t>size
    else:
        wk.total_f += <double>size * w


cdef Py_ssize_t _own_size(PyObject* o, PyTypeObject* t, bint is_root, mc_buf* refs,
                          bint* have_refs) except -1:
    """Own size of ``o`` (of type ``t``). May run Python code (a user
    ``__sizeof__``) before it fills ``refs``, never after."""
    cdef Py_ssize_t size, k, i
    cdef PyObject* r
    cdef bint materialized
    cdef object t_ref
    if t == &PyList_Type:
        return mc_list_size(o) + _GC_HEAD
    if t == &PyTuple_Type:
        return mc_basic_size(o) + _GC_HEAD
    if t == &PyDict_Type:
        size = mc_dict_size(o)
        if size < 0:
            return _slow_getsizeof(o)
        return size + _GC_HEAD
    if t == &PySet_Type or t == &PyFrozenSet_Type:
        return _slow_getsizeof(o)
    t_ref = <object>t  # __sizeof__ (or the lookup's __eq__) may assign __class__ and free t
    if MC_DIRECT_OBJECT_SIZEOF and (_type_info(t) & MC_TI_DEFAULT_SIZEOF):
        size = mc_basic_size(o) + _header(t)
    else:
        size = _checked_getsizeof(o, is_root)
    if _INLINE_VALUES and (mc_flags(t) & _F_MANAGED_DICT):
        mc_traverse(o, refs)
        have_refs[0] = True
        k = 0
        materialized = False
        for i in range(refs.len):
            r = refs.items[i]
            if not _HAS_VALUES_PROBED and mc_type(r) == &PyDict_Type:
                materialized = True
                break
            if r != <PyObject*>t:
                k += 1
        if _HAS_VALUES_PROBED:
            materialized = not mc_has_inline_values(o)
        if not materialized:
            size += _values_size(k)
    elif _F_INLINE_VALUES and (mc_flags(t) & _F_INLINE_VALUES):
        size += mc_inline_extra(o, _DICT_SHELL)
    return size


cdef void _reverse(PyObject** a, Py_ssize_t lo, Py_ssize_t hi) noexcept:
    cdef PyObject* x
    hi -= 1
    while lo < hi:
        x = a[lo]
        a[lo] = a[hi]
        a[hi] = x
        lo += 1
        hi -= 1


cdef void _rotate(PyObject** a, Py_ssize_t m, Py_ssize_t n) noexcept:
    """[a0..a(m-1)][am..a(n-1)] -> [am..a(n-1)][a0..a(m-1)]"""
    _reverse(a, 0, m)
    _reverse(a, m, n)
    _reverse(a, 0, n)


cdef int _dict_sample(PyObject* d, mc_buf* buf, Py_ssize_t n, Py_ssize_t m,
                      uint64_t seed) except -1:
    """Keys and values of the sampled entries of an exact dict."""
    cdef Py_ssize_t p = 0, idx = 0, j = 0
    cdef PyObject* k
    cdef PyObject* v
    cdef mc_cursor cur
    mc_cursor_init(&cur, n, m, seed)
    mc_buf_reserve(buf, 2 * m)
    while j < m and mc_dict_next(d, &p, &k, &v):
        if idx == mc_cursor_pos(&cur):
            buf.items[buf.len] = k
            buf.items[buf.len + 1] = v
            buf.len += 2
            j += 1
            mc_cursor_next(&cur)
        idx += 1
    return 0


cdef PyObject* _set_iter(PyObject* s) except NULL:
    """An iterator over an exact set/frozenset. It is allocated, so a
    collection can run here: call it while the buffer holds nothing."""
    return PyObject_GetIter(s)


cdef int _iter_sample(PyObject* s, mc_buf* buf, Py_ssize_t n, Py_ssize_t m,
                      uint64_t seed) except -1:
    """Sampled members of an exact set/frozenset (iteration runs no user code;
    the set keeps the members alive until Python code runs)."""
    cdef Py_ssize_t idx = 0, j = 0
    cdef PyObject* it = _set_iter(s)
    cdef PyObject* item
    cdef mc_cursor cur
    mc_cursor_init(&cur, n, m, seed)
    try:
        mc_buf_reserve(buf, m)
        while j < m:
            item = PyIter_Next(it)
            if item == NULL:
                if PyErr_Occurred():
                    return -1
                break
            Py_DECREF(item)
            if idx == mc_cursor_pos(&cur):
                buf.items[buf.len] = item
                buf.len += 1
                j += 1
                mc_cursor_next(&cur)
            idx += 1
    finally:
        Py_DECREF(it)
    return 0


cdef int _iter_all(PyObject* s, mc_buf* buf) except -1:
    cdef PyObject* it = _set_iter(s)
    cdef PyObject* item
    try:
        while True:
            item = PyIter_Next(it)
            if item == NULL:
                if PyErr_Occurred():
                    return -1
                break
            Py_DECREF(item)
            mc_buf_push(buf, item)
    finally:
        Py_DECREF(it)
    return 0


cdef inline void _unpin(mc_buf* buf, Py_ssize_t* lo, Py_ssize_t* hi) noexcept:
    """Drops the references _walk took on buf.items[lo:hi]. The decrefs can
    run finalizers: only when nothing borrowed is used any more."""
    cdef Py_ssize_t i = lo[0], end = hi[0]
    lo[0] = 0
    hi[0] = 0
    while i < end:
        Py_DECREF(buf.items[i])
        i += 1


cdef Py_ssize_t _walk(object root, Py_ssize_t budget, Walk* wk) except -1:
    """The general walk. Memory rules: the stack holds strong references; the
    buffer ``buf`` holds borrowed pointers to the children of ``o`` (which the
    walk owns), valid only while no Python code runs. Python code can run in
    _own_size (before the buffer is filled), in _set_iter (before) and in
    _slow_getsizeof for a child leaf: before that call the children not yet
    examined are pinned (increfed), since a collection started by its
    allocations can run a finalizer that empties ``o``. After _own_size the
    type of ``o`` is read again (a user ``__sizeof__`` may assign
    ``__class__``; the layout, and so the dict-ness, cannot change)."""
    cdef PyObject* ro = <PyObject*>root
    cdef PyTypeObject* t = mc_type(ro)
    cdef Py_ssize_t size, n
    wk.total_i = 0
    wk.total_f = 0.0
    wk.units = 0
    wk.sampled = 0
    size = _leaf_size(ro, t)
    if size == -2:
        return 0
    if size == -3:
        return _slow_getsizeof(ro)
    if size >= 0:
        return size
    if _node_shared(ro, t):
        return 0
    if t == &PyDict_Type or t == &PyList_Type or t == &PyTuple_Type:
        size = _small_root(ro, t, budget, &n)
        if size >= 0:
            wk.units = n
            return size

    cdef mc_stack stack
    cdef mc_set seen, once, dups
    cdef mc_buf buf
    cdef mc_cursor cur, ahead
    cdef PyObject* o = NULL
    cdef PyObject* c
    cdef PyObject** items
    cdef PyTypeObject* ot
    cdef double w, wc, cw
    cdef Py_ssize_t a, m, used, j, i, pushed, ca, start, pos
    cdef uint64_t seed
    cdef Py_ssize_t pin_lo = 0, pin_hi = 0, single
    cdef bint is_root = True, pairs, have_refs, sampling, dedup_all
    cdef Py_ssize_t hard_cap = (budget * _SMALL_CAP_FACTOR
                                if budget <= PY_SSIZE_T_MAX // _SMALL_CAP_FACTOR else PY_SSIZE_T_MAX)
    mc_stack_init(&stack)
    mc_set_init(&seen)
    mc_set_init(&once)
    mc_set_init(&dups)
    mc_buf_init(&buf)
    try:
        mc_set_add(&seen, ro)
        mc_stack_push(&stack, ro, 1.0, budget)
        while stack.len:
            stack.len -= 1
            o = stack.items[stack.len].obj   # we now own this reference
            w = stack.items[stack.len].w
            a = stack.items[stack.len].a
            ot = mc_type(o)
            buf.len = 0
            have_refs = False
            dedup_all = False
            # ---- own size
            size = _own_size(o, ot, is_root, &buf, &have_refs)
            is_root = False
            _charge_node(wk, size, w)
            ot = mc_type(o)

            # ---- units
            pairs = ot == &PyDict_Type
            if (ot == &PyList_Type or ot == &PyTuple_Type or pairs or ot == &PySet_Type
                    or ot == &PyFrozenSet_Type):
                n = mc_var_size(o) if not pairs else PyDict_GET_SIZE(o)
                if ot == &PySet_Type or ot == &PyFrozenSet_Type:
                    n = len(<object>o)
            else:
                if not have_refs:
                    mc_traverse(o, &buf)
                if _type_kind(ot) & MC_TI_DICT:
                    # entries and dict_traverse both reach the values: the
                    # single-reference shortcut does not hold here
                    dedup_all = True
                    # entries first, then the referents
                    m = buf.len
                    mc_dict_entries(o, &buf)
                    # rotate so the entries come first: [refs][entries] -> [entries][refs]
                    _rotate(buf.items, m, buf.len)
                n = buf.len
            if n == 0:
                Py_DECREF(o)
                o = NULL
                continue

            if n > a and n <= _SMALL_UNITS and w != 1.0 and n > hard_cap - wk.units:
                Py_DECREF(o)
                o = NULL
                continue
            sampling = n > a and not (n <= _SMALL_UNITS and n <= hard_cap - wk.units)
            if not sampling:
                used = n
                if ot == &PyList_Type or ot == &PyTuple_Type:
                    mc_buf_reserve(&buf, n)
                    for i in range(n):
                        buf.items[i] = mc_seq_item(o, i)
                    buf.len = n
                elif pairs:
                    mc_dict_entries(o, &buf)
                elif ot == &PySet_Type or ot == &PyFrozenSet_Type:
                    _iter_all(o, &buf)
                wc = w
            else:
                wk.sampled += 1
                m = a if a > 0 else 1
                used = m
                seed = mc_phase(<uint64_t>wk.sampled)
                mc_set_free(&once)
                mc_set_free(&dups)
                if ot == &PyList_Type or ot == &PyTuple_Type:
                    mc_buf_reserve(&buf, m)
                    items = mc_seq_items(o)
                    mc_cursor_init(&cur, n, m, seed)
                    mc_cursor_init(&ahead, n, m, seed)
                    for j in range(16 if m > 16 else 0):
                        mc_cursor_next(&ahead)
                    for j in range(m):
                        if j + 16 < m:
                            mc_prefetch(&items[mc_cursor_pos(&ahead)])
                            mc_cursor_next(&ahead)
                        pos = mc_cursor_pos(&cur)
                        c = items[pos]
                        buf.items[j] = c
                        if items[mc_neighbour(pos, n)] == c:
                            mc_set_add(&dups, c)
                        mc_cursor_next(&cur)
                    buf.len = m
                elif pairs:
                    _dict_sample(o, &buf, n, m, seed)
                elif ot == &PySet_Type or ot == &PyFrozenSet_Type:
                    _iter_sample(o, &buf, n, m, seed)
                else:
                    mc_cursor_init(&cur, n, m, seed)
                    for j in range(m):
                        pos = mc_cursor_pos(&cur)
                        c = buf.items[pos]
                        if buf.items[mc_neighbour(pos, n)] == c:
                            mc_set_add(&dups, c)
                        mc_cursor_next(&cur)
                    # in place: position j is at or after j
                    mc_cursor_init(&cur, n, m, seed)
                    for j in range(m):
                        buf.items[j] = buf.items[mc_cursor_pos(&cur)]
                        mc_cursor_next(&cur)
                    buf.len = m
                wc = w * <double>n / <double>m
                # objects met twice or more in the sample are shared: weight w
                for i in range(buf.len):
                    c = buf.items[i]
                    if (dedup_all or mc_refcnt(c) > 1) and not mc_set_add(&once, c):
                        mc_set_add(&dups, c)
            wk.units += used

            # ---- examine the children (borrowed from o: see "pinning" above)
            pushed = 0
            start = stack.len
            pin_lo = pin_hi = buf.len
            single = 1
            for i in range(buf.len):
                c = buf.items[i]
                if sampling and i + 8 < buf.len:
                    mc_prefetch(buf.items[i + 8])
                t = mc_type(c)
                size = _leaf_size(c, t)
                if size == -2:
                    continue
                if size == -3:
                    if pin_lo == pin_hi:
                        pin_lo = i
                        pin_hi = buf.len
                        for j in range(pin_lo, pin_hi):
                            Py_INCREF(buf.items[j])
                        single = 2  # from here on each child carries our reference too
                    size = _slow_getsizeof(c)
                if size == -1 and _node_shared(c, t):
                    continue
                # an object with a single reference can be reached only once:
                # no need to remember it (most leaves and fresh containers)
                if (dedup_all or mc_refcnt(c) > single) and not mc_set_add(&seen, c):
                    continue
                cw = wc
                if sampling and dups.used and mc_set_has(&dups, c):
                    cw = w
                if size >= 0:
                    _charge_leaf(wk, size, cw)
                else:
                    mc_stack_push(&stack, c, cw, 0)
                    pushed += 1
            if pushed:
                ca = (a - used) // pushed if a - used > 0 else 0
                if ca:
                    for i in range(start, stack.len):
                        stack.items[i].a = ca
            if pin_lo < pin_hi:
                _unpin(&buf, &pin_lo, &pin_hi)
            Py_DECREF(o)
            o = NULL
    finally:
        _unpin(&buf, &pin_lo, &pin_hi)
        if o != NULL:
            Py_DECREF(o)
        mc_stack_free(&stack)
        mc_set_free(&seen)
        mc_set_free(&once)
        mc_set_free(&dups)
        mc_buf_free(&buf)
    return mc_total(wk.total_i, wk.total_f)


# ------------------------------------------------------------- entry points

cdef Py_ssize_t c_deep_sizeof(object obj) except -1:
    """deep_sizeof(obj) with the default budget, callable from Cython."""
    cdef PyObject* o = <PyObject*>obj
    cdef PyTypeObject* t = mc_type(o)
    cdef Py_ssize_t size, units
    cdef int r
    cdef Walk wk
    # fast paths: a handful of ns, no Python-level call
    if t == &PyUnicode_Type:
        if mc_str_shared(o):
            return 0
        size = mc_str_size(o)
        if size >= 0:
            return size
        return _slow_getsizeof(o)
    if t == &PyLong_Type:
        r = mc_int_size(o, &size, _DIGIT_BITS)
        if r == 0:
            return size
        if r == 1:
            return 0
        return _slow_getsizeof(o)
    if t == &PyFloat_Type:
        return mc_float_size()
    if o == Py_None or t == &PyBool_Type:
        return 0
    if t == &PyDict_Type or t == &PyList_Type or (t == &PyTuple_Type and mc_var_size(o) != 0):
        size = _small_root(o, t, _DEFAULT_BUDGET, &units)
        if size >= 0:
            return size
    return _walk(obj, _DEFAULT_BUDGET, &wk)


cdef inline Py_ssize_t _budget_arg(object budget) except -1:
    if type(budget) is int and 1 <= budget <= _sys.maxsize:
        return budget
    return _check_budget(budget)


def deep_sizeof(obj, *, budget=DEFAULT_BUDGET):
    """deep_sizeof(obj, *, budget=DEFAULT_BUDGET) -> int

    Approximate bytes that dropping ``obj`` (and what only it holds) frees.
    Same rules and results as ``memcache_ext._sizeof_py.deep_sizeof``.
    """
    cdef Walk wk
    if budget is DEFAULT_BUDGET:
        return c_deep_sizeof(obj)
    return _walk(obj, _budget_arg(budget), &wk)


def _live_blocks():
    """C memory blocks the walks hold now: 0 between calls, failed ones
    included (for the tests)."""
    return mc_live_blocks


def _deep_sizeof_stats(obj, *, budget=DEFAULT_BUDGET):
    """``(nbytes, units_examined, containers_sampled)``, for tests and tuning."""
    cdef Walk wk
    cdef Py_ssize_t size = _walk(obj, _budget_arg(budget), &wk)
    return size, wk.units, wk.sampled
