/* deep_sizeof: the arithmetic of the budget and the sampling. */
#ifndef MEMCACHE_EXT_SIZEOF_MATH_H
#define MEMCACHE_EXT_SIZEOF_MATH_H

#include <Python.h>
#include <stdint.h>

/* _sizeof_py.sample_phase before the modulo: splitmix64 of the counter */
static inline uint64_t mc_phase(uint64_t counter) {
    uint64_t z = counter * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
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
