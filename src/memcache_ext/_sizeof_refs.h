/* deep_sizeof: reading an object's children into the walk's buffer.
 *
 * Nothing here runs Python code or allocates Python objects, so the borrowed
 * pointers it collects stay valid until the caller next calls something that
 * can (see "pinning" in _sizeof_c.pyx). Buffer growth can fail: MemoryError.
 */
#ifndef MEMCACHE_EXT_SIZEOF_REFS_H
#define MEMCACHE_EXT_SIZEOF_REFS_H

#include <Python.h>
#include <stdint.h>
#include "_sizeof_mem.h"

/* Exact list or tuple: the item array and one item. */
static inline PyObject **mc_seq_items(PyObject *o) {
    return PyList_CheckExact(o) ? ((PyListObject *)o)->ob_item : ((PyTupleObject *)o)->ob_item;
}
static inline PyObject *mc_seq_item(PyObject *o, Py_ssize_t i) {
    return PyList_CheckExact(o) ? PyList_GET_ITEM(o, i) : PyTuple_GET_ITEM(o, i);
}

/* Appends what gc.get_referents(o) would return. */
static int mc_visit(PyObject *o, void *arg) {
    return mc_buf_push((mc_buf *)arg, o) < 0 ? -1 : 0;
}
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
/* Appends k0, v0, k1, v1, ... of any dict. */
static int mc_dict_entries(PyObject *d, mc_buf *b) {
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    if (mc_buf_reserve(b, 2 * PyDict_GET_SIZE(d)) < 0) return -1;
    while (mc_dict_next(d, &pos, &k, &v)) {
        if (mc_buf_push(b, k) < 0 || mc_buf_push(b, v) < 0) return -1;
    }
    return 0;
}

#endif
