/* deep_sizeof: the C memory of one walk (pointer sets, the stack, the child
 * buffer).
 *
 * The sets hold borrowed pointers and only compare them (never dereference);
 * the stack holds strong references; the buffer holds borrowed pointers.
 */
#ifndef MEMCACHE_EXT_SIZEOF_MEM_H
#define MEMCACHE_EXT_SIZEOF_MEM_H

#include <Python.h>
#include <stdint.h>
#include <string.h>

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

#endif
