/* A cheap monotonic clock in seconds, for TTL checks on the hot path.
 *
 * Linux: CLOCK_MONOTONIC_COARSE (a few ns through the vDSO, resolution of one
 * scheduler tick, 1-4 ms), so a TTL check adds almost nothing to a hit. An
 * entry may outlive its TTL by up to one tick. Elsewhere: the platform's
 * monotonic clock.
 */
#ifndef MEMCACHE_EXT_CLOCK_H
#define MEMCACHE_EXT_CLOCK_H

#if defined(_WIN32)
#include <windows.h>
static inline double mc_monotonic(void) { return (double)GetTickCount64() / 1000.0; }
#else
#include <time.h>
static inline double mc_monotonic(void) {
    struct timespec ts;
#if defined(CLOCK_MONOTONIC_COARSE)
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
#else
    clock_gettime(CLOCK_MONOTONIC, &ts);
#endif
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
#endif

#endif
