/* deep_sizeof: the C memory of one walk (pointer sets, the stack, the child
 * buffer).
 *
 * Every allocation goes through mc_malloc/mc_calloc/mc_realloc/mc_free: a
 * failure sets MemoryError and leaves the structure as it was (a failed
 * realloc keeps the old block), and sizes are checked before they are
 * multiplied, so a capacity can never wrap. mc_live_blocks counts the blocks
 * held, so the tests can check that every path, failed ones included, frees
 * what it took.
 *
 * The sets hold borrowed pointers and only compare them (never dereference);
 * the stack holds strong references; the buffer holds borrowed pointers that
 * the caller must not use across a call that can run Python code (see
 * _sizeof_c.pyx, "pinning").
 */
#ifndef MEMCACHE_EXT_SIZEOF_MEM_H
#define MEMCACHE_EXT_SIZEOF_MEM_H

#include <Python.h>
#include <stdint.h>
#include <string.h>

/* ----------------------------------------------------------- allocation */
static Py_ssize_t mc_live_blocks = 0;

static inline int mc_no_memory(void) { PyErr_NoMemory(); return -1; }

static void *mc_malloc(size_t size) {
    void *p = PyMem_Malloc(size);
    if (p == NULL) { PyErr_NoMemory(); return NULL; }
    mc_live_blocks++;
    return p;
}
static void *mc_calloc(size_t n, size_t size) {
    void *p = PyMem_Calloc(n, size);
    if (p == NULL) { PyErr_NoMemory(); return NULL; }
    mc_live_blocks++;
    return p;
}
static void *mc_realloc(void *p, size_t size) {  /* NULL: p is untouched */
    void *q = PyMem_Realloc(p, size);
    if (q == NULL) PyErr_NoMemory();
    return q;
}
static void mc_free(void *p) {
    if (p != NULL) { mc_live_blocks--; PyMem_Free(p); }
}

/* Capacity of a growable array of `elem`-byte items: doubled until it holds
 * `need`, capped so that cap * elem cannot overflow. -1: MemoryError. */
static Py_ssize_t mc_grow(Py_ssize_t cap, Py_ssize_t need, size_t elem) {
    const Py_ssize_t max = PY_SSIZE_T_MAX / (Py_ssize_t)elem;
    if (need < 0 || need > max) return mc_no_memory();
    while (cap < need) cap = cap > max / 2 ? max : cap * 2;
    return cap;
}

/* ------------------------------------------------------------- pointer set */
#define MC_SMALL 8
typedef struct {
    PyObject **table;      /* open addressing, NULL while small */
    Py_ssize_t mask;
    Py_ssize_t used;
    PyObject *small[MC_SMALL];
} mc_set;

static inline void mc_set_init(mc_set *s) { s->table = NULL; s->mask = 0; s->used = 0; }
static inline void mc_set_free(mc_set *s) {
    mc_free(s->table);
    s->table = NULL; s->used = 0; s->mask = 0;
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
    PyObject **t = (PyObject **)mc_calloc((size_t)size, sizeof(PyObject *));
    if (t == NULL) return -1;
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
        mc_free(old);
    }
    return 0;
}
/* 1 added, 0 already there, -1 MemoryError (the set is unchanged) */
static inline int mc_set_add(mc_set *s, PyObject *p) {
    Py_ssize_t i;
    if (s->table == NULL) {
        for (i = 0; i < s->used; i++) if (s->small[i] == p) return 0;
        if (s->used < MC_SMALL) { s->small[s->used++] = p; return 1; }
        if (mc_set_rehash(s, 64) < 0) return -1;
    } else if ((s->used + 1) * 2 > s->mask + 1) {
        if (s->mask + 1 > PY_SSIZE_T_MAX / 2) return mc_no_memory();
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

/* --------------------------------------------------------------- the stack */
/* Objects still to expand, each a strong reference, with its weight and
 * allowance. */
typedef struct { PyObject *obj; double w; Py_ssize_t a; } mc_entry;
#define MC_STACK_SMALL 32
typedef struct { mc_entry *items; Py_ssize_t len, cap; mc_entry small[MC_STACK_SMALL]; } mc_stack;

static inline void mc_stack_init(mc_stack *s) { s->items = s->small; s->len = 0; s->cap = MC_STACK_SMALL; }
/* Room for one more entry; -1: MemoryError, the stack unchanged. */
static int mc_stack_grow(mc_stack *s) {
    Py_ssize_t ncap = mc_grow(s->cap, s->len + 1, sizeof(mc_entry));
    mc_entry *n;
    if (ncap < 0) return -1;
    if (s->items == s->small) {
        n = (mc_entry *)mc_malloc((size_t)ncap * sizeof(mc_entry));
        if (n != NULL) memcpy(n, s->small, (size_t)s->len * sizeof(mc_entry));
    } else {
        n = (mc_entry *)mc_realloc(s->items, (size_t)ncap * sizeof(mc_entry));
    }
    if (n == NULL) return -1;
    s->items = n; s->cap = ncap;
    return 0;
}
/* increfs o; -1: MemoryError, the stack unchanged */
static inline int mc_stack_push(mc_stack *s, PyObject *o, double w, Py_ssize_t a) {
    if (s->len == s->cap && mc_stack_grow(s) < 0) return -1;
    Py_INCREF(o);
    s->items[s->len].obj = o; s->items[s->len].w = w; s->items[s->len].a = a;
    s->len++;
    return 0;
}
/* Releases the stack. The decrefs can run finalizers: call it last. */
static inline void mc_stack_free(mc_stack *s) {
    while (s->len > 0) {
        s->len--;
        Py_DECREF(s->items[s->len].obj);
    }
    if (s->items != s->small) mc_free(s->items);
    s->items = s->small; s->cap = MC_STACK_SMALL;
}

/* -------------------------------------------------------------- the buffer */
/* The children of the object being expanded: borrowed pointers. */
#define MC_BUF_SMALL 64
typedef struct { PyObject **items; Py_ssize_t len, cap; PyObject *small[MC_BUF_SMALL]; } mc_buf;

static inline void mc_buf_init(mc_buf *b) { b->items = b->small; b->len = 0; b->cap = MC_BUF_SMALL; }
static inline void mc_buf_free(mc_buf *b) {
    if (b->items != b->small) mc_free(b->items);
    b->items = b->small; b->cap = MC_BUF_SMALL; b->len = 0;
}
/* Room for `extra` more items; -1: MemoryError, the buffer unchanged. */
static int mc_buf_grow(mc_buf *b, Py_ssize_t extra) {
    Py_ssize_t ncap;
    PyObject **n;
    if (extra > PY_SSIZE_T_MAX - b->len) return mc_no_memory();
    ncap = mc_grow(b->cap, b->len + extra, sizeof(PyObject *));
    if (ncap < 0) return -1;
    if (b->items == b->small) {
        n = (PyObject **)mc_malloc((size_t)ncap * sizeof(PyObject *));
        if (n != NULL) memcpy(n, b->small, (size_t)b->len * sizeof(PyObject *));
    } else {
        n = (PyObject **)mc_realloc(b->items, (size_t)ncap * sizeof(PyObject *));
    }
    if (n == NULL) return -1;
    b->items = n; b->cap = ncap;
    return 0;
}
static inline int mc_buf_reserve(mc_buf *b, Py_ssize_t extra) {
    return extra <= b->cap - b->len ? 0 : mc_buf_grow(b, extra);
}
static inline int mc_buf_push(mc_buf *b, PyObject *o) {
    if (b->len == b->cap && mc_buf_grow(b, 1) < 0) return -1;
    b->items[b->len++] = o;
    return 0;
}

#endif
