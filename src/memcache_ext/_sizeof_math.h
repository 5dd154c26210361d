/* deep_sizeof: the arithmetic of the budget, the sampling and the totals.
 *
 * Totals saturate at PY_SSIZE_T_MAX (a user __sizeof__ may report up to
 * MAX_OBJECT_SIZE per object, and sampled weights multiply along chains), and
 * sampling positions are computed without forming j * n, so nothing can wrap
 * whatever the container size or the budget. _sizeof_py computes the same
 * numbers with Python ints (see its _walk).
 */
#ifndef MEMCACHE_EXT_SIZEOF_MATH_H
#define MEMCACHE_EXT_SIZEOF_MATH_H

#include <Python.h>
#include <stdint.h>

/* a + b for a, b >= 0, saturated */
static inline Py_ssize_t mc_add_sat(Py_ssize_t a, Py_ssize_t b) {
    return b > PY_SSIZE_T_MAX - a ? PY_SSIZE_T_MAX : a + b;
}
/* The exact part of a walk's total, unsigned. An object's own size (up to
   MAX_OBJECT_SIZE from a user __sizeof__) is added with saturation at
   PY_SSIZE_T_MAX; a leaf's size (an exact builtin, each counted once, so all
   of them fit in the address space) is added plainly: the sum stays under
   PY_SSIZE_T_MAX + 2**48 and cannot wrap, and the hot loop pays nothing. */
static inline size_t mc_add_node(size_t exact, Py_ssize_t size) {
    exact += (size_t)size;
    return exact > (size_t)PY_SSIZE_T_MAX ? (size_t)PY_SSIZE_T_MAX : exact;
}
/* The walk's result: the exact part plus the weighted part rounded half up,
   saturated (an infinite or NaN weighted part saturates too). */
static inline Py_ssize_t mc_total(size_t exact, double weighted) {
    double r = weighted + 0.5;
    if (exact >= (size_t)PY_SSIZE_T_MAX || !(r < (double)PY_SSIZE_T_MAX)) return PY_SSIZE_T_MAX;
    return mc_add_sat((Py_ssize_t)exact, (Py_ssize_t)r);
}

/* _sizeof_py.sample_phase before the modulo: splitmix64 of the counter */
static inline uint64_t mc_phase(uint64_t counter) {
    uint64_t z = counter * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Sampling positions (j * n + r) // m for j = 0, 1, ... (0 <= r < n, 1 <= m
   <= n): each step adds divmod(n, m) to a quotient and remainder, so every
   position of the first m lies in [0, n) and no product is formed. */
typedef struct { size_t pos, acc, q, rem, m; } mc_cursor;
static inline void mc_cursor_init(mc_cursor *c, Py_ssize_t n, Py_ssize_t m, Py_ssize_t r) {
    c->m = (size_t)m; c->q = (size_t)n / c->m; c->rem = (size_t)n % c->m;
    c->pos = (size_t)r / c->m; c->acc = (size_t)r % c->m;
}
static inline void mc_cursor_next(mc_cursor *c) {
    c->pos += c->q; c->acc += c->rem;        /* acc < 2m: no wrap */
    if (c->acc >= c->m) { c->acc -= c->m; c->pos++; }
}
static inline Py_ssize_t mc_cursor_pos(const mc_cursor *c) { return (Py_ssize_t)c->pos; }
/* The item compared with position p to spot a repeated object: the next one,
   or the previous one at the end; with one item, itself (as Python's
   seq[p - 1] reads it). Always in [0, n). */
static inline Py_ssize_t mc_neighbour(Py_ssize_t p, Py_ssize_t n) {
    return p + 1 < n ? p + 1 : (p > 0 ? p - 1 : p);
}

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

/* A hint only: never faults, whatever the address. */
#if defined(__GNUC__) || defined(__clang__)
#define MC_PREFETCH(p) __builtin_prefetch((const void *)(p))
#else
#define MC_PREFETCH(p) ((void)0)
#endif
static inline void mc_prefetch(const void *p) { MC_PREFETCH(p); }

#endif
