/* S3-FIFO's ghost queue: a FIFO set of the fingerprints (hash bits) of keys
 * recently evicted from the small queue. No reference to any key or value.
 *
 * A ring of fingerprints in insertion order (0 marks one removed from the
 * middle) and an open-addressing table of ring positions + 1 for lookups.
 * It holds at most `limit` live fingerprints; adding one more drops the
 * oldest. The ring is repacked (removed positions squeezed out, grown up to
 * 1.25 x limit) when it fills, and with the table when the table reaches half
 * load (the limit grew): the table is never more than half full. Pure C, no
 * Python: safe inside a region.
 * Every allocation failure leaves the ghost as it was (an add is dropped):
 * the ghost only steers placement, it never decides correctness.
 */
#ifndef MEMCACHE_EXT_GHOST_H
#define MEMCACHE_EXT_GHOST_H

#include "_entry.h"

typedef struct {
    uint32_t *ring;    /* fingerprints, oldest at `head`; 0 = removed */
    Py_ssize_t rcap;   /* ring slots */
    Py_ssize_t head;   /* slot of the oldest position */
    Py_ssize_t npos;   /* positions in use, live or removed */
    Py_ssize_t live;   /* fingerprints present */
    Py_ssize_t limit;  /* most fingerprints kept; 0 = no ghost */
    uint32_t *tab;     /* ring slot + 1 of each live fingerprint; 0 = empty;
                          mc_ghost_no_tab until the first record */
    size_t tmask;
} mc_ghost;

/* A key's record in the ghost: its hash bits with the top bit set, so that no
 * record is 0 (the mark of a removed one) and hash bits map one to one. */
static inline uint32_t mc_fingerprint(uint32_t hbits) { return hbits | 0x80000000u; }

/* The table of a ghost without a ring: one empty slot (tmask 0), never
 * written, so that a lookup needs no NULL check. A ghost owns its table iff
 * it has a ring (each module including this header has its own copy of this
 * array, so ownership is never decided by its address). */
static uint32_t mc_ghost_no_tab[1];

/* Free the ghost's memory and leave it empty; also its initialisation. */
static inline void mc_ghost_free(mc_ghost *g)
{
    if (g->ring != NULL)
        PyMem_Free(g->tab);
    PyMem_Free(g->ring);
    g->ring = NULL;
    g->tab = mc_ghost_no_tab;
    g->rcap = g->head = g->npos = g->live = 0;
    g->tmask = 0;
}

/* The ring slot of position pos (0 = the oldest), pos < rcap: no division. */
static inline Py_ssize_t mc_ghost_ring_slot(const mc_ghost *g, Py_ssize_t pos)
{
    Py_ssize_t slot = g->head + pos;
    return slot < g->rcap ? slot : slot - g->rcap;
}

static inline uint32_t mc_ghost_at(const mc_ghost *g, Py_ssize_t pos)
{
    return g->ring[mc_ghost_ring_slot(g, pos)];
}

/* The table slot holding fp, or -1. */
static inline Py_ssize_t mc_ghost_slot(const mc_ghost *g, uint32_t fp)
{
    size_t i = mc_ideal(fp, g->tmask);
    while (g->tab[i] != 0) {
        if (g->ring[g->tab[i] - 1] == fp)
            return (Py_ssize_t)i;
        i = (i + 1) & g->tmask;
    }
    return -1;
}

static inline void mc_ghost_tab_delete(mc_ghost *g, size_t i)
{
    size_t mask = g->tmask, j = i, k;
    for (;;) {
        j = (j + 1) & mask;
        if (g->tab[j] == 0)
            break;
        k = mc_ideal(g->ring[g->tab[j] - 1], mask);
        if (mc_probe_stays(i, j, k, mask))
            continue;
        g->tab[i] = g->tab[j];
        i = j;
    }
    g->tab[i] = 0;
}

static inline void mc_ghost_tab_insert(uint32_t *tab, size_t mask, uint32_t fp, uint32_t slot1)
{
    size_t i = mc_ideal(fp, mask);
    while (tab[i] != 0)
        i = (i + 1) & mask;
    tab[i] = slot1;
}

/* Remove fp if present; 1 if it was. */
static inline int mc_ghost_remove(mc_ghost *g, uint32_t fp)
{
    Py_ssize_t i = mc_ghost_slot(g, fp);
    if (i < 0)
        return 0;
    g->ring[g->tab[i] - 1] = 0;
    mc_ghost_tab_delete(g, (size_t)i);
    g->live--;
    return 1;
}

/* Drop the oldest live fingerprint (and the removed positions before it). Its
 * table slot is the one holding its ring slot: found without reading the ring. */
static inline void mc_ghost_pop_oldest(mc_ghost *g)
{
    while (g->npos > 0) {
        Py_ssize_t slot = g->head;
        uint32_t fp = g->ring[slot];
        g->head = slot + 1 < g->rcap ? slot + 1 : 0;
        g->npos--;
        if (fp != 0) {
            size_t i = mc_ideal(fp, g->tmask);
            while (g->tab[i] != (uint32_t)(slot + 1))
                i = (i + 1) & g->tmask;
            mc_ghost_tab_delete(g, i);
            g->live--;
            return;
        }
    }
}

/* Copy the live fingerprints, oldest first, into a ring of `cap` slots and
 * rebuild the table; -1 (nothing changed) when an allocation fails. */
static inline int mc_ghost_repack(mc_ghost *g, Py_ssize_t cap)
{
    /* live <= min(cap, limit): size the table for that, at load <= 1/2 */
    size_t tsize = mc_table_size(cap < g->limit ? cap : g->limit);
    uint32_t *ring = (uint32_t *)PyMem_Malloc((size_t)cap * sizeof(uint32_t));
    uint32_t *tab = (uint32_t *)PyMem_Calloc(tsize, sizeof(uint32_t));
    Py_ssize_t pos, n = 0;
    if (ring == NULL || tab == NULL) {
        PyMem_Free(ring);
        PyMem_Free(tab);
        return -1;
    }
    for (pos = 0; pos < g->npos; pos++) {
        uint32_t fp = mc_ghost_at(g, pos);
        if (fp != 0) {
            ring[n] = fp;
            mc_ghost_tab_insert(tab, tsize - 1, fp, (uint32_t)(n + 1));
            n++;
        }
    }
    if (g->ring != NULL)
        PyMem_Free(g->tab);
    PyMem_Free(g->ring);
    g->ring = ring;
    g->tab = tab;
    g->rcap = cap;
    g->head = 0;
    g->npos = n;
    g->tmask = tsize - 1;
    return 0;
}

/* The ring size the ghost grows to: room for limit live fingerprints and a
 * quarter more of removed positions between repacks. */
static inline Py_ssize_t mc_ghost_target(Py_ssize_t limit) { return limit + limit / 4 + 8; }

/* Add fp unless it is already there (a FIFO set: it keeps its place). A full
 * ghost drops its oldest first, so that one probe both looks for fp and finds
 * the slot for it (the pure twin does the same, in the same order). */
static inline void mc_ghost_add(mc_ghost *g, uint32_t fp)
{
    Py_ssize_t target, cap, slot;
    size_t i;
    if (g->live >= g->limit) {   /* live <= limit always (mc_ghost_set_limit trims) */
        if (g->limit <= 0)
            return;
        mc_ghost_pop_oldest(g);   /* frees one ring position at least */
    }
    else if (g->npos == g->rcap || (size_t)g->live >= (g->tmask + 1) / 2) {
        /* The ring is full, or the table is half full (it was sized for a
         * smaller limit: mc_ghost_set_limit raises the limit without
         * resizing, and a full table would make a lookup probe forever).
         * Repack, squeezing out the removed positions, at the size the limit
         * asks for: at once for a count-bound cache, which adds records only
         * once full, when its limit is final (each step of a growth would
         * leave its freed buffers behind in the heap); in steps as the limit
         * follows a byte-bounded cache. When the allocation fails the record
         * is dropped: the table stays at most half full. */
        target = mc_ghost_target(g->limit);
        cap = g->rcap < target ? target : g->rcap;
        if (cap <= g->live || mc_ghost_repack(g, cap) < 0)
            return;
    }
    i = mc_ideal(fp, g->tmask);
    while (g->tab[i] != 0) {
        if (g->ring[g->tab[i] - 1] == fp)
            return;
        i = (i + 1) & g->tmask;
    }
    slot = mc_ghost_ring_slot(g, g->npos);
    g->ring[slot] = fp;
    g->tab[i] = (uint32_t)(slot + 1);
    g->npos++;
    g->live++;
}

/* A new limit: drop the oldest fingerprints beyond it (all of them, and the
 * memory, for 0). A limit that fell to under a quarter of the ring gives the
 * memory back (resize() to a smaller maxsize); if that allocation fails, the
 * ghost keeps its larger ring. */
static inline void mc_ghost_set_limit(mc_ghost *g, Py_ssize_t limit)
{
    g->limit = limit < 0 ? 0 : limit;
    if (g->limit == 0) {
        mc_ghost_free(g);
        return;
    }
    while (g->live > g->limit)
        mc_ghost_pop_oldest(g);
    if (g->ring != NULL && mc_ghost_target(g->limit) < g->rcap / 4)
        (void)mc_ghost_repack(g, mc_ghost_target(g->limit));
}

/* Raise the limit to 90% of the `held` entries, at most cap: the limit follows
 * the most entries the cache has held. */
static inline void mc_ghost_follow(mc_ghost *g, Py_ssize_t held, Py_ssize_t cap)
{
    Py_ssize_t limit = held * 9 / 10;   /* fits: entries take far more than 9 bytes */
    if (limit > g->limit)
        mc_ghost_set_limit(g, limit < cap ? limit : cap);
}

#endif
