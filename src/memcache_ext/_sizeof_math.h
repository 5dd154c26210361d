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

/* _sizeof_py.splitmix64: the seed of the counter-th sampled container */
static inline uint64_t mc_phase(uint64_t counter) {
    uint64_t z = counter * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Sampling positions (_sizeof_py.sample_positions): m strata of [0, n), the
   j-th [j * n // m, (j + 1) * n // m), and one position in each at an offset
   drawn from a 64-bit LCG seeded with ``seed``: its high 32 bits scaled to
   the stratum's length (a multiply and a shift, not a division; a stratum of
   2**32 items or more takes the modulo). The strata follow from divmod(n, m) by adding, so no
   product is formed; positions increase, and the j-th is at or after j (1 <=
   m <= n). An evenly spaced sample would put every position on one residue of
   the stride, and data with that period ([key, value, key, value, ...]) would
   be counted from one kind of item only. */
#define MC_LCG_A 6364136223846793005ULL
#define MC_LCG_C 1442695040888963407ULL
typedef struct { size_t start, acc, q, rem, m, pos; uint64_t s; } mc_cursor;
static inline void mc_cursor_place(mc_cursor *c) {
    size_t len = c->q + (c->acc + c->rem >= c->m ? 1 : 0);
    c->s = c->s * MC_LCG_A + MC_LCG_C;
    uint64_t x = c->s >> 32;
    c->pos = c->start + (len <= 1 ? 0 : len <= 0xFFFFFFFFu ? (size_t)((x * len) >> 32)
                                                          : (size_t)(x % len));
}
static inline void mc_cursor_init(mc_cursor *c, Py_ssize_t n, Py_ssize_t m, uint64_t seed) {
    c->m = (size_t)m; c->q = (size_t)n / c->m; c->rem = (size_t)n % c->m;
    c->start = 0; c->acc = 0; c->s = seed;
    mc_cursor_place(c);
}
static inline void mc_cursor_next(mc_cursor *c) {
    c->start += c->q; c->acc += c->rem;        /* acc < 2m: no wrap */
    if (c->acc >= c->m) { c->acc -= c->m; c->start++; }
    mc_cursor_place(c);
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
