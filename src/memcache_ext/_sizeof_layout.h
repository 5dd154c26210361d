/* deep_sizeof: own sizes read from object layouts, without a Python call.
 *
 * Each formula equals what sys.getsizeof returns for an exact builtin on the
 * CPython versions it is compiled for; where a layout is rare or unknown the
 * function says "ask Python" instead of guessing. Nothing here allocates or
 * runs Python code.
 */
#ifndef MEMCACHE_EXT_SIZEOF_LAYOUT_H
#define MEMCACHE_EXT_SIZEOF_LAYOUT_H

#include <Python.h>
#include <stdint.h>

static inline PyTypeObject *mc_type(PyObject *o) { return Py_TYPE(o); }
static inline Py_ssize_t mc_refcnt(PyObject *o) { return Py_REFCNT(o); }
static inline unsigned long mc_flags(PyTypeObject *t) { return t->tp_flags; }
static inline unsigned int mc_version(PyTypeObject *t) { return t->tp_version_tag; }
static inline Py_ssize_t mc_var_size(PyObject *o) { return Py_SIZE(o); }
static inline PyObject *mc_type_lookup(PyTypeObject *t, PyObject *name) { return _PyType_Lookup(t, name); }

static inline Py_ssize_t mc_basic_size(PyObject *o) {
    PyTypeObject *t = Py_TYPE(o);
    Py_ssize_t s = t->tp_basicsize;
    if (t->tp_itemsize > 0) s += Py_SIZE(o) * t->tp_itemsize;
    return s;
}
static inline Py_ssize_t mc_list_size(PyObject *o) {
    return Py_TYPE(o)->tp_basicsize + ((PyListObject *)o)->allocated * (Py_ssize_t)sizeof(PyObject *);
}
static inline Py_ssize_t mc_dict_size(PyObject *o) {  /* dict.__sizeof__, -1: ask Python */
#if PY_VERSION_HEX < 0x030D0000
    return _PyDict_SizeOf((PyDictObject *)o);
#else
    (void)o; return -1;
#endif
}
/* object.__sizeof__ is basic size (+ items) up to 3.12; 3.13 adds inline values */
#if PY_VERSION_HEX < 0x030D0000
#define MC_DIRECT_OBJECT_SIZEOF 1
#else
#define MC_DIRECT_OBJECT_SIZEOF 0
#endif

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

/* 3.11/3.12: does a managed-dict instance still hold inline values? (3.11:
   the pre-header's values pointer; 3.12: the dict-or-values word, tagged 1
   for values). Used only when _sizeof_py's probe of the same layout passed. */
static inline int mc_has_inline_values(PyObject *o) {
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
    return ((void **)o)[-4] != NULL;
#elif PY_VERSION_HEX >= 0x030C0000 && PY_VERSION_HEX < 0x030D0000
    return (((uintptr_t *)o)[-3] & 1) != 0;
#else
    (void)o; return 0;
#endif
}

/* ------------------------------------------------------------------ leaves */
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
    /* up to 3.11: the digit count is |ob_size|, int.__sizeof__ is
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

/* -------------------------------------------------------------- type cache */
/* What _type_info computed for a type, keyed by (type, version tag): a tag is
   never reused for another type, so a stale slot cannot match. */
#define MC_TI_SHARED 1
#define MC_TI_DEFAULT_SIZEOF 2
#define MC_TI_DICT 4
typedef struct { PyTypeObject *tp; unsigned int version; int info; } mc_tinfo;
static mc_tinfo mc_tcache[512];
static inline mc_tinfo *mc_tcache_slot(PyTypeObject *t) {
    return &mc_tcache[((uintptr_t)t >> 4) & 511];
}

#endif
