"""deep_sizeof, compiled: the same rules and the same numbers as ``_sizeof_py``.

The walk keeps its own stack, visited set and child buffer in C memory; small
exact builtins (int, float, str, bytes) are sized with C formulas equal to
``sys.getsizeof``; other objects' children come straight from their
``tp_traverse`` (what ``gc.get_referents`` returns) and their own size from
``sys.getsizeof``, or from the type's basic size when the type does not
override ``__sizeof__``. See ``_sizeof_py`` for the rules.
"""

from cpython.object cimport PyObject, PyTypeObject
from libc.stdint cimport uint64_t
from cpython.pyport cimport PY_SSIZE_T_MAX

import sys as _sys

from memcache_ext import _sizeof_py as _ref

cdef extern from *:
    """
    #include <Python.h>
    #include <string.h>
    #include <stdint.h>

    /* ---------------------------------------------------------------- sets */
    #define MC_SMALL 8
    typedef struct {
        PyObject **table;      /* open addressing, NULL while small */
        Py_ssize_t mask;
        Py_ssize_t used;
        PyObject *small[MC_SMALL];
    } mc_set;

    static inline void mc_set_init(mc_set *s) { s->table = NULL; s->mask = 0; s->used = 0; }
    static inline void mc_set_free(mc_set *s) {
        if (s->table != NULL) { PyMem_Free(s->table); s->table = NULL; }
        s->used = 0; s->mask = 0;
    }
    static inline size_t mc_hash(PyObject *p) {
        uint64_t x = (uint64_t)(uintptr_t)p;
        x ^= x >> 33;
        x *= 0xff51afd7ed558ccdULL;
        x ^= x >> 33;
        return (size_t)x;
    }
    static int mc_set_rehash(mc_set *s, Py_ssize_t size) {
        PyObject **old = s->table;
        Py_ssize_t oldsize = old ? s->mask + 1 : 0, i;
        PyObject **t = (PyObject **)PyMem_Calloc((size_t)size, sizeof(PyObject *));
        if (t == NULL) { PyErr_NoMemory(); return -1; }
        s->table = t; s->mask = size - 1;
        if (old == NULL) {
            for (i = 0; i < s->used; i++) {
                size_t h = mc_hash(s->small[i]) & (size_t)s->mask;
                while (t[h] != NULL) h = (h + 1) & (size_t)s->mask;
                t[h] = s->small[i];
            }
        } else {
            for (i = 0; i < oldsize; i++) {
                PyObject *p = old[i];
                if (p != NULL) {
                    size_t h = mc_hash(p) & (size_t)s->mask;
                    while (t[h] != NULL) h = (h + 1) & (size_t)s->mask;
                    t[h] = p;
                }
            }
            PyMem_Free(old);
        }
        return 0;
    }
    /* 1 added, 0 already there, -1 error */
    static inline int mc_set_add(mc_set *s, PyObject *p) {
        Py_ssize_t i;
        if (s->table == NULL) {
            for (i = 0; i < s->used; i++) if (s->small[i] == p) return 0;
            if (s->used < MC_SMALL) { s->small[s->used++] = p; return 1; }
            if (mc_set_rehash(s, 64) < 0) return -1;
        } else if ((s->used + 1) * 2 > s->mask + 1) {
            if (mc_set_rehash(s, (s->mask + 1) * 2) < 0) return -1;
        }
        size_t h = mc_hash(p) & (size_t)s->mask;
        PyObject **t = s->table;
        while (t[h] != NULL) {
            if (t[h] == p) return 0;
            h = (h + 1) & (size_t)s->mask;
        }
        t[h] = p;
        s->used++;
        return 1;
    }
    static inline int mc_set_has(mc_set *s, PyObject *p) {
        Py_ssize_t i;
        if (s->table == NULL) {
            for (i = 0; i < s->used; i++) if (s->small[i] == p) return 1;
            return 0;
        }
        size_t h = mc_hash(p) & (size_t)s->mask;
        while (s->table[h] != NULL) {
            if (s->table[h] == p) return 1;
            h = (h + 1) & (size_t)s->mask;
        }
        return 0;
    }

    /* -------------------------------------------------------- stack/buffer */
    typedef struct { PyObject *obj; double w; Py_ssize_t a; } mc_entry;
    typedef struct { mc_entry *items; Py_ssize_t len, cap; mc_entry small[32]; } mc_stack;
    static inline void mc_stack_init(mc_stack *s) { s->items = s->small; s->len = 0; s->cap = 32; }
    /* steals nothing: increfs obj */
    static inline int mc_stack_push(mc_stack *s, PyObject *o, double w, Py_ssize_t a) {
        if (s->len == s->cap) {
            Py_ssize_t ncap = s->cap * 2;
            mc_entry *n;
            if (s->items == s->small) {
                n = (mc_entry *)PyMem_Malloc((size_t)ncap * sizeof(mc_entry));
                if (n != NULL) memcpy(n, s->small, (size_t)s->len * sizeof(mc_entry));
            } else {
                n = (mc_entry *)PyMem_Realloc(s->items, (size_t)ncap * sizeof(mc_entry));
            }
            if (n == NULL) { PyErr_NoMemory(); return -1; }
            s->items = n; s->cap = ncap;
        }
        Py_INCREF(o);
        s->items[s->len].obj = o; s->items[s->len].w = w; s->items[s->len].a = a;
        s->len++;
        return 0;
    }
    static inline void mc_stack_free(mc_stack *s) {
        Py_ssize_t i;
        for (i = 0; i < s->len; i++) Py_DECREF(s->items[i].obj);
        s->len = 0;
        if (s->items != s->small) PyMem_Free(s->items);
        s->items = s->small; s->cap = 32;
    }

    typedef struct { PyObject **items; Py_ssize_t len, cap; PyObject *small[64]; } mc_buf;
    static inline void mc_buf_init(mc_buf *b) { b->items = b->small; b->len = 0; b->cap = 64; }
    static inline void mc_buf_free(mc_buf *b) {
        if (b->items != b->small) PyMem_Free(b->items);
        b->items = b->small; b->cap = 64; b->len = 0;
    }
    static int mc_buf_reserve(mc_buf *b, Py_ssize_t extra) {
        Py_ssize_t need = b->len + extra, ncap = b->cap;
        PyObject **n;
        if (need <= b->cap) return 0;
        while (ncap < need) ncap *= 2;
        if (b->items == b->small) {
            n = (PyObject **)PyMem_Malloc((size_t)ncap * sizeof(PyObject *));
            if (n != NULL) memcpy(n, b->small, (size_t)b->len * sizeof(PyObject *));
        } else {
            n = (PyObject **)PyMem_Realloc(b->items, (size_t)ncap * sizeof(PyObject *));
        }
        if (n == NULL) { PyErr_NoMemory(); return -1; }
        b->items = n; b->cap = ncap;
        return 0;
    }
    static inline int mc_buf_push(mc_buf *b, PyObject *o) {
        if (b->len == b->cap && mc_buf_reserve(b, 1) < 0) return -1;
        b->items[b->len++] = o;
        return 0;
    }
    static int mc_visit(PyObject *o, void *arg) {
        return mc_buf_push((mc_buf *)arg, o) < 0 ? -1 : 0;
    }
    /* Appends what gc.get_referents(o) would return. */
    static int mc_traverse(PyObject *o, mc_buf *b) {
        traverseproc tr;
        if (!PyObject_IS_GC(o)) return 0;
        tr = Py_TYPE(o)->tp_traverse;
        if (tr == NULL) return 0;
        if (tr(o, mc_visit, (void *)b) != 0) {
            if (!PyErr_Occurred()) PyErr_NoMemory();
            return -1;
        }
        return 0;
    }
    /* PyDict_Next, with the combined tables of CPython 3.11 read in place
       (the layout of pycore_dict.h; checked against PyDict_Next at import by
       mc_dict_next_selftest, which turns it on). */
    static int mc_dict_direct = 0;
    #if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000 && !defined(PYPY_VERSION) && !defined(Py_LIMITED_API)
    typedef struct {
        Py_ssize_t dk_refcnt;
        uint8_t dk_log2_size;
        uint8_t dk_log2_index_bytes;
        uint8_t dk_kind;            /* 0: general entries (hash, key, value) */
        uint32_t dk_version;
        Py_ssize_t dk_usable;
        Py_ssize_t dk_nentries;
        char dk_indices[];
    } mc_dictkeys311;
    #define MC_DICT_DIRECT_POSSIBLE 1
    #else
    #define MC_DICT_DIRECT_POSSIBLE 0
    #endif
    static inline int mc_dict_next(PyObject *d, Py_ssize_t *pos, PyObject **k, PyObject **v) {
    #if MC_DICT_DIRECT_POSSIBLE
        PyDictObject *mp = (PyDictObject *)d;
        if (mc_dict_direct && mp->ma_values == NULL) {
            mc_dictkeys311 *dk = (mc_dictkeys311 *)mp->ma_keys;
            Py_ssize_t i = *pos, n = dk->dk_nentries;
            PyObject **e = (PyObject **)(dk->dk_indices + ((size_t)1 << dk->dk_log2_index_bytes));
            if (i < 0) return 0;
            if (dk->dk_kind != 0) {
                e += 2 * i;                           /* key, value */
                while (i < n && e[1] == NULL) { e += 2; i++; }
                if (i >= n) return 0;
                *k = e[0]; *v = e[1];
            } else {
                e += 3 * i;                           /* hash, key, value */
                while (i < n && e[2] == NULL) { e += 3; i++; }
                if (i >= n) return 0;
                *k = e[1]; *v = e[2];
            }
            *pos = i + 1;
            return 1;
        }
    #endif
        return PyDict_Next(d, pos, k, v);
    }
    /* Turns mc_dict_next's direct reading on if it agrees with PyDict_Next on
       these dicts (compare with the order and positions PyDict_Next gives). */
    static int mc_dict_next_selftest(PyObject *dicts) {
    #if MC_DICT_DIRECT_POSSIBLE
        Py_ssize_t j, nd = PyList_GET_SIZE(dicts);
        int ok = 1, r1, r2;
        mc_dict_direct = 1;
        for (j = 0; ok && j < nd; j++) {
            PyObject *d = PyList_GET_ITEM(dicts, j), *k1, *v1, *k2, *v2;
            Py_ssize_t p1 = 0, p2 = 0;
            if (!PyDict_CheckExact(d)) { ok = 0; break; }
            do {
                r1 = PyDict_Next(d, &p1, &k1, &v1);
                r2 = mc_dict_next(d, &p2, &k2, &v2);
                if (r1 != r2 || (r1 && (p1 != p2 || k1 != k2 || v1 != v2))) ok = 0;
            } while (ok && r1);
        }
        mc_dict_direct = ok;
        return ok;
    #else
        (void)dicts;
        return 0;
    #endif
    }
    /* Appends k0, v0, k1, v1, ... of any dict (no user code runs). */
    static int mc_dict_entries(PyObject *d, mc_buf *b) {
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        if (mc_buf_reserve(b, 2 * PyDict_GET_SIZE(d)) < 0) return -1;
        while (mc_dict_next(d, &pos, &k, &v)) {
            if (mc_buf_push(b, k) < 0 || mc_buf_push(b, v) < 0) return -1;
        }
        return 0;
    }

    /* --------------------------------------------------------- object info */
    #if defined(__GNUC__) || defined(__clang__)
    #define MC_PREFETCH(p) __builtin_prefetch((const void *)(p))
    #else
    #define MC_PREFETCH(p) ((void)0)
    #endif
    static inline void mc_prefetch(const void *p) { MC_PREFETCH(p); }
    /* bits of x > 0: 2 ** mc_bit_length(x) > x */
    static inline int mc_bit_length(size_t x) {
    #if defined(__GNUC__) || defined(__clang__)
        return x ? (int)(8 * sizeof(unsigned long long)) - __builtin_clzll((unsigned long long)x) : 0;
    #else
        int b = 0;
        while (x) { b++; x >>= 1; }
        return b;
    #endif
    }
    static inline PyObject **mc_seq_items(PyObject *o) {  /* exact list or tuple */
        return PyList_CheckExact(o) ? ((PyListObject *)o)->ob_item : ((PyTupleObject *)o)->ob_item;
    }
    static inline uint64_t mc_phase(uint64_t counter) {  /* _sizeof_py.sample_phase */
        uint64_t z = counter * 0x9E3779B97F4A7C15ULL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        return z ^ (z >> 31);
    }
    static inline PyTypeObject *mc_type(PyObject *o) { return Py_TYPE(o); }
    static inline Py_ssize_t mc_refcnt(PyObject *o) { return Py_REFCNT(o); }
    static inline unsigned long mc_flags(PyTypeObject *t) { return t->tp_flags; }
    static inline unsigned int mc_version(PyTypeObject *t) { return t->tp_version_tag; }
    static inline Py_ssize_t mc_basic_size(PyObject *o) {
        PyTypeObject *t = Py_TYPE(o);
        Py_ssize_t s = t->tp_basicsize;
        if (t->tp_itemsize > 0) s += Py_SIZE(o) * t->tp_itemsize;
        return s;
    }
    static inline Py_ssize_t mc_list_size(PyObject *o) {
        return Py_TYPE(o)->tp_basicsize + ((PyListObject *)o)->allocated * (Py_ssize_t)sizeof(PyObject *);
    }
    static inline Py_ssize_t mc_var_size(PyObject *o) { return Py_SIZE(o); }
    /* CPython 3.13 inline values (see _sizeof_py.inline_extra): the block after
       tp_basicsize (capacity byte, valid byte 3) and the pre-header's managed
       dict pointer. Called only for Py_TPFLAGS_INLINE_VALUES types on 3.13. */
    static inline Py_ssize_t mc_inline_extra(PyObject *o, Py_ssize_t dict_shell) {
        const uint8_t *v = (const uint8_t *)o + Py_TYPE(o)->tp_basicsize;
        const Py_ssize_t p = (Py_ssize_t)sizeof(PyObject *);
        Py_ssize_t cap = v[0];
        Py_ssize_t s = ((cap + p - 1) / p) * p + (cap + 1) * p;
        if (v[3] && ((PyObject **)o)[-3] != NULL) s += dict_shell;
        return s;
    }
    static inline PyObject *mc_seq_item(PyObject *o, Py_ssize_t i) {  /* exact list or tuple */
        return PyList_CheckExact(o) ? PyList_GET_ITEM(o, i) : PyTuple_GET_ITEM(o, i);
    }
    static inline Py_ssize_t mc_dict_size(PyObject *o) {  /* dict.__sizeof__, -1: ask Python */
    #if PY_VERSION_HEX < 0x030D0000
        return _PyDict_SizeOf((PyDictObject *)o);
    #else
        (void)o; return -1;
    #endif
    }
    #if PY_VERSION_HEX < 0x030D0000
    #define MC_DIRECT_OBJECT_SIZEOF 1
    #else
    #define MC_DIRECT_OBJECT_SIZEOF 0
    #endif
    static inline PyObject *mc_type_lookup(PyTypeObject *t, PyObject *name) { return _PyType_Lookup(t, name); }

    /* str.__sizeof__ without a call; -1 when the rare layouts need Python. */
    static inline Py_ssize_t mc_str_size(PyObject *o) {
        Py_ssize_t n, s;
    #if PY_VERSION_HEX < 0x030C0000
        if (!PyUnicode_IS_READY(o) || ((PyASCIIObject *)o)->wstr != NULL) return -1;
    #endif
        if (!PyUnicode_IS_COMPACT(o)) return -1;
        n = PyUnicode_GET_LENGTH(o);
        if (PyUnicode_IS_ASCII(o)) return (Py_ssize_t)sizeof(PyASCIIObject) + n + 1;
        s = (Py_ssize_t)sizeof(PyCompactUnicodeObject) + (n + 1) * (Py_ssize_t)PyUnicode_KIND(o);
        if (((PyCompactUnicodeObject *)o)->utf8 != NULL)
            s += ((PyCompactUnicodeObject *)o)->utf8_length + 1;
        return s;
    }
    /* Shared strs: empty, one latin-1 character (cached), interned. */
    static inline int mc_str_shared(PyObject *o) {
        Py_ssize_t n;
    #if PY_VERSION_HEX < 0x030C0000
        if (!PyUnicode_IS_READY(o)) return 0;
    #endif
        n = PyUnicode_GET_LENGTH(o);
        if (n == 0) return 1;
        if (n == 1 && PyUnicode_READ_CHAR(o, 0) < 256) return 1;
        return PyUnicode_CHECK_INTERNED(o) != 0;
    }
    /* 1: small cached int (shared); 0: *size set; -1: needs sys.getsizeof */
    static inline int mc_int_size(PyObject *o, Py_ssize_t *size, int digit_bits) {
    #if PY_VERSION_HEX < 0x030C0000
        /* 3.11: the digit count is |ob_size|, int.__sizeof__ is
           offsetof(ob_digit) (== tp_basicsize) + |ob_size| * sizeof(digit) */
        Py_ssize_t sz = Py_SIZE(o), nd = sz < 0 ? -sz : sz;
        (void)digit_bits;
        if (nd <= 1) {
            long v = nd ? (long)((PyLongObject *)o)->ob_digit[0] : 0;
            if (sz < 0) v = -v;
            if (v >= -5 && v <= 256) return 1;
        }
        *size = PyLong_Type.tp_basicsize + nd * PyLong_Type.tp_itemsize;
        return 0;
    #else
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        unsigned long long u;
        Py_ssize_t nd = 0;
        if (overflow) return -1;
        if (v == -1 && PyErr_Occurred()) { PyErr_Clear(); return -1; }
        if (v >= -5 && v <= 256) return 1;
        u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
        do { nd++; u >>= digit_bits; } while (u);
        *size = PyLong_Type.tp_basicsize + nd * PyLong_Type.tp_itemsize;
        return 0;
    #endif
    }
    static inline Py_ssize_t mc_float_size(void) { return PyFloat_Type.tp_basicsize; }
    static inline Py_ssize_t mc_bytes_size(PyObject *o) {
        return PyBytes_Type.tp_basicsize + Py_SIZE(o) * PyBytes_Type.tp_itemsize;
    }
    static inline Py_ssize_t mc_complex_size(void) { return PyComplex_Type.tp_basicsize; }
    static inline int mc_is_singleton(PyObject *o) {
        return o == Py_None || o == Py_True || o == Py_False || o == Py_Ellipsis || o == Py_NotImplemented;
    }

    /* --------------------------------------------------------- type cache */
    #define MC_TI_SHARED 1
    #define MC_TI_DEFAULT_SIZEOF 2
    #define MC_TI_DICT 4
    typedef struct { PyTypeObject *tp; unsigned int version; int info; } mc_tinfo;
    static mc_tinfo mc_tcache[512];
    static inline mc_tinfo *mc_tcache_slot(PyTypeObject *t) {
        return &mc_tcache[((uintptr_t)t >> 4) & 511];
    }
    """
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
    int mc_traverse(PyObject*, mc_buf*) except -1
    int mc_dict_entries(PyObject*, mc_buf*) except -1
    bint mc_dict_next(PyObject*, Py_ssize_t*, PyObject**, PyObject**)
    int mc_dict_next_selftest(PyObject*)

    PyTypeObject* mc_type(PyObject*)
    uint64_t mc_phase(uint64_t)
    void mc_prefetch(const void*)
    int mc_bit_length(size_t)
    PyObject** mc_seq_items(PyObject*)
    Py_ssize_t mc_refcnt(PyObject*)
    unsigned long mc_flags(PyTypeObject*)
    unsigned int mc_version(PyTypeObject*)
    Py_ssize_t mc_basic_size(PyObject*)
    Py_ssize_t mc_list_size(PyObject*)
    Py_ssize_t mc_var_size(PyObject*)
    Py_ssize_t mc_inline_extra(PyObject*, Py_ssize_t)
    PyObject* mc_seq_item(PyObject*, Py_ssize_t)
    Py_ssize_t mc_dict_size(PyObject*)
    bint MC_DIRECT_OBJECT_SIZEOF
    PyObject* mc_type_lookup(PyTypeObject*, PyObject*)
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

    int PyType_IsSubtype(PyTypeObject*, PyTypeObject*)
    bint PyDict_Next(PyObject*, Py_ssize_t*, PyObject**, PyObject**)
    Py_ssize_t PyDict_GET_SIZE(PyObject*)
    PyObject* PyObject_GetIter(PyObject*) except NULL
    PyObject* PyIter_Next(PyObject*)
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


cdef int _type_info(PyTypeObject* t) except -1:
    """Bits: shared type / __sizeof__ is object's / dict subclass. Cached per
    (type, version tag); a type with no valid tag is recomputed each time."""
    cdef mc_tinfo* slot = mc_tcache_slot(t)
    cdef unsigned int version = mc_version(t)
    if version != 0 and slot.tp == t and slot.version == version:
        return slot.info
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
    if mc_type_lookup(t, <PyObject*>_sizeof_name) == <PyObject*>_object_sizeof_descr:
        info |= MC_TI_DEFAULT_SIZEOF
    version = mc_version(t)  # the lookup assigns a tag if there was none
    if version != 0:
        slot.tp = t
        slot.version = version
        slot.info = info
    return info


cdef Py_ssize_t _slow_getsizeof(PyObject* o) except -1:
    """sys.getsizeof for builtins that cannot fail (big ints, odd strs, sets)."""
    return _getsizeof(<object>o)


cdef Py_ssize_t _checked_getsizeof(PyObject* o, bint is_root) except -1:
    """sys.getsizeof with the exception rule: the top-level object's errors
    propagate, a nested object falls back to its basic size."""
    cdef object r
    try:
        r = _getsizeof(<object>o)
        if r > _MAX_OBJECT_SIZE:
            raise ValueError(f"__sizeof__() returned an implausible size: {r}")
    except Exception:
        if is_root:
            raise
        return _object_sizeof(<object>o) + _header(mc_type(o))
    return r


cdef inline Py_ssize_t _leaf_size(PyObject* o, PyTypeObject* t) except -3:
    """Size of an exact int/float/str/bytes/complex; -2 if it is shared; -1 if
    ``o`` is not a leaf."""
    cdef Py_ssize_t size
    cdef int r
    if t == &PyFloat_Type:
        return mc_float_size()
    if t == &PyUnicode_Type:
        if mc_str_shared(o):
            return -2
        size = mc_str_size(o)
        if size < 0:
            size = _slow_getsizeof(o)
        return size
    if t == &PyLong_Type:
        r = mc_int_size(o, &size, _DIGIT_BITS)
        if r == 1:
            return -2
        if r < 0:
            size = _slow_getsizeof(o)
        return size
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
    return (_type_info(t) & MC_TI_SHARED) != 0


# ------------------------------------------------------ small-object fast path
# A graph of exact dicts/lists/tuples with leaf (or shared) children and at
# most SMALL_WALK_UNITS units in all is measured by a plain recursion with a
# visited array on the C stack: no stack entries, no refcount traffic, no
# heap. It returns exactly what the general walk returns, or -1 ("walk it"):
#
# * no sampling can happen: a container is expanded here only when it has at
#   most `a` units, where `a` is a lower bound of the allowance the general
#   walk would give it (the root gets the budget; a child at least
#   (a - n) // (number of children)), or when it has at most SMALL_UNITS units
#   and the whole walk stays under the small cap (SMALL_WALK_UNITS <= 8 * budget,
#   checked by the callers); so every weight is 1 and the result is the sum of
#   the own sizes of the distinct non-shared reachable objects, whatever the
#   order of the walk;
# * deduplication follows the general walk: the root and every object with
#   more than one reference are remembered.

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
    """Size of the exact dict/list/tuple ``o`` given allowance ``a``, or -1."""
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
    if st.units + n > SMALL_WALK_UNITS or (n > a and n > _SMALL_UNITS):
        return -1
    st.units += n
    # a lower bound of (a - n) // (children pushed), without a division
    ca = (a - n) >> mc_bit_length(<size_t>nchildren) if a > n else 0
    if t == &PyDict_Type:
        while mc_dict_next(o, &pos, &k, &v):
            s = _small_child(k, st)
            if s == -2:
                s = _small_walk(k, mc_type(k), ca, st)
            if s < 0:
                return -1
            total += s
            s = _small_child(v, st)
            if s == -2:
                s = _small_walk(v, mc_type(v), ca, st)
            if s < 0:
                return -1
            total += s
        return total
    items = mc_seq_items(o)
    for i in range(n):
        s = _small_child(items[i], st)
        if s == -2:
            s = _small_walk(items[i], mc_type(items[i]), ca, st)
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
    Py_ssize_t total_i
    double total_f
    Py_ssize_t units
    Py_ssize_t sampled


cdef inline void _charge(Walk* wk, Py_ssize_t size, double w) noexcept:
    if w == 1.0:
        wk.total_i += size
    else:
        wk.total_f += <double>size * w


cdef Py_ssize_t _own_size(PyObject* o, PyTypeObject* t, bint is_root, mc_buf* refs,
                          bint* have_refs) except -1:
    cdef Py_ssize_t size, k, i
    cdef PyObject* r
    cdef bint materialized
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
            if mc_type(r) == &PyDict_Type:
                materialized = True
                break
            if r != <PyObject*>t:
                k += 1
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


cdef inline Py_ssize_t _position(Py_ssize_t j, Py_ssize_t m, Py_ssize_t r, Py_ssize_t q,
                                 Py_ssize_t rem) noexcept:
    """(j * n + r) // m without overflow, with q, rem = divmod(n, m)."""
    return j * q + (j * rem + r) // m


cdef int _dict_sample(PyObject* d, mc_buf* buf, Py_ssize_t m, Py_ssize_t r, Py_ssize_t q,
                      Py_ssize_t rem) except -1:
    cdef Py_ssize_t p = 0, idx = 0, j = 0, target = _position(0, m, r, q, rem)
    cdef PyObject* k
    cdef PyObject* v
    mc_buf_reserve(buf, 2 * m)
    while j < m and mc_dict_next(d, &p, &k, &v):
        if idx == target:
            buf.items[buf.len] = k
            buf.items[buf.len + 1] = v
            buf.len += 2
            j += 1
            target = _position(j, m, r, q, rem)
        idx += 1
    return 0


cdef int _iter_sample(PyObject* s, mc_buf* buf, Py_ssize_t m, Py_ssize_t r, Py_ssize_t q,
                      Py_ssize_t rem) except -1:
    """Sampled members of an exact set/frozenset (iteration runs no user code;
    the set keeps the members alive, so borrowed pointers are safe)."""
    cdef Py_ssize_t idx = 0, j = 0, target = _position(0, m, r, q, rem)
    cdef PyObject* it = PyObject_GetIter(s)
    cdef PyObject* item
    try:
        mc_buf_reserve(buf, m)
        while j < m:
            item = PyIter_Next(it)
            if item == NULL:
                break
            Py_DECREF(item)
            if idx == target:
                buf.items[buf.len] = item
                buf.len += 1
                j += 1
                target = _position(j, m, r, q, rem)
            idx += 1
    finally:
        Py_DECREF(it)
    return 0


cdef int _iter_all(PyObject* s, mc_buf* buf) except -1:
    cdef PyObject* it = PyObject_GetIter(s)
    cdef PyObject* item
    try:
        while True:
            item = PyIter_Next(it)
            if item == NULL:
                break
            Py_DECREF(item)
            mc_buf_push(buf, item)
    finally:
        Py_DECREF(it)
    return 0


cdef Py_ssize_t _walk(object root, Py_ssize_t budget, Walk* wk) except -1:
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
    cdef PyObject* o = NULL
    cdef PyObject* c
    cdef PyObject** items
    cdef double w, wc, cw
    cdef Py_ssize_t a, m, used, r, j, q, rem, i, pushed, ca, start, pos
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
            t = mc_type(o)
            buf.len = 0
            have_refs = False
            dedup_all = False
            # ---- own size
            size = _own_size(o, t, is_root, &buf, &have_refs)
            is_root = False
            _charge(wk, size, w)

            # ---- units
            pairs = t == &PyDict_Type
            if t == &PyList_Type or t == &PyTuple_Type or pairs or t == &PySet_Type or t == &PyFrozenSet_Type:
                n = mc_var_size(o) if not pairs else PyDict_GET_SIZE(o)
                if t == &PySet_Type or t == &PyFrozenSet_Type:
                    n = len(<object>o)
            else:
                if not have_refs:
                    mc_traverse(o, &buf)
                if _type_info(t) & MC_TI_DICT:
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

            if n > a and n <= _SMALL_UNITS and w != 1.0 and wk.units + n > hard_cap:
                Py_DECREF(o)
                o = NULL
                continue
            sampling = n > a and not (n <= _SMALL_UNITS and wk.units + n <= hard_cap)
            if not sampling:
                used = n
                if t == &PyList_Type or t == &PyTuple_Type:
                    mc_buf_reserve(&buf, n)
                    for i in range(n):
                        buf.items[i] = mc_seq_item(o, i)
                    buf.len = n
                elif pairs:
                    mc_dict_entries(o, &buf)
                elif t == &PySet_Type or t == &PyFrozenSet_Type:
                    _iter_all(o, &buf)
                wc = w
            else:
                wk.sampled += 1
                m = a if a > 0 else 1
                used = m
                r = <Py_ssize_t>(mc_phase(<uint64_t>wk.sampled) % <uint64_t>n)
                q = n // m
                rem = n % m
                mc_set_free(&once)
                mc_set_free(&dups)
                if t == &PyList_Type or t == &PyTuple_Type:
                    mc_buf_reserve(&buf, m)
                    items = mc_seq_items(o)
                    for j in range(m):
                        if j + 16 < m:
                            mc_prefetch(&items[_position(j + 16, m, r, q, rem)])
                        pos = _position(j, m, r, q, rem)
                        c = items[pos]
                        buf.items[j] = c
                        if items[pos + 1 if pos + 1 < n else pos - 1] == c:
                            mc_set_add(&dups, c)
                    buf.len = m
                elif pairs:
                    _dict_sample(o, &buf, m, r, q, rem)
                elif t == &PySet_Type or t == &PyFrozenSet_Type:
                    _iter_sample(o, &buf, m, r, q, rem)
                else:
                    for j in range(m):
                        pos = _position(j, m, r, q, rem)
                        c = buf.items[pos]
                        if buf.items[pos + 1 if pos + 1 < n else pos - 1] == c:
                            mc_set_add(&dups, c)
                    for j in range(m):
                        buf.items[j] = buf.items[_position(j, m, r, q, rem)]
                    buf.len = m
                wc = w * <double>n / <double>m
                # objects met twice or more in the sample are shared: weight w
                for i in range(buf.len):
                    c = buf.items[i]
                    if (dedup_all or mc_refcnt(c) > 1) and not mc_set_add(&once, c):
                        mc_set_add(&dups, c)
            wk.units += used

            # ---- examine the children
            pushed = 0
            start = stack.len
            for i in range(buf.len):
                c = buf.items[i]
                if sampling and i + 8 < buf.len:
                    mc_prefetch(buf.items[i + 8])
                t = mc_type(c)
                size = _leaf_size(c, t)
                if size == -2:
                    continue
                if size == -1 and _node_shared(c, t):
                    continue
                # an object with a single reference can be reached only once:
                # no need to remember it (most leaves and fresh containers)
                if (dedup_all or mc_refcnt(c) > 1) and not mc_set_add(&seen, c):
                    continue
                cw = wc
                if sampling and dups.used and mc_set_has(&dups, c):
                    cw = w
                if size >= 0:
                    _charge(wk, size, cw)
                else:
                    mc_stack_push(&stack, c, cw, 0)
                    pushed += 1
            if pushed:
                ca = (a - used) // pushed if a - used > 0 else 0
                if ca:
                    for i in range(start, stack.len):
                        stack.items[i].a = ca
            Py_DECREF(o)
            o = NULL
    finally:
        if o != NULL:
            Py_DECREF(o)
        mc_stack_free(&stack)
        mc_set_free(&seen)
        mc_set_free(&once)
        mc_set_free(&dups)
        mc_buf_free(&buf)
    return wk.total_i + <Py_ssize_t>(wk.total_f + 0.5)


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


def _deep_sizeof_stats(obj, *, budget=DEFAULT_BUDGET):
    """``(nbytes, units_examined, containers_sampled)``, for tests and tuning."""
    cdef Walk wk
    cdef Py_ssize_t size = _walk(obj, _budget_arg(budget), &wk)
    return size, wk.units, wk.sampled
