/* The compiled cache's entry pool, its lists and its hash table.
 *
 * Pure C: nothing here calls Python code, allocates Python objects or
 * releases a reference, so every function may run inside a region (see
 * _core_c.pyx). Allocation failures are reported to the caller, never
 * half-applied.
 *
 * entries[0] and entries[1] are the sentinels of two circular doubly-linked
 * lists (MC_MAIN, MC_SMALL). A list runs from its oldest entry
 * (sentinel.next) to its newest (sentinel.prev). Live entries start at
 * MC_FIRST. The table maps a key's hash to an entry index: uint32 slots,
 * 0 = empty, linear probing, backward-shift deletion (no tombstones).
 */
#ifndef MEMCACHE_EXT_ENTRY_H
#define MEMCACHE_EXT_ENTRY_H

#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MC_MAIN 0u
#define MC_SMALL 1u
#define MC_FIRST 2u
/* The prev of a victim (out of the lists, still holding its key and value). */
#define MC_TAKEN 0xFFFFFFFFu

/* hm: bits 0-28 the key's hash, bits 29-30 the S3-FIFO frequency (0-3),
 * bit 31 set while the entry is in the small FIFO. */
#define MC_HASH_MASK 0x1FFFFFFFu
#define MC_FREQ_SHIFT 29
#define MC_FREQ_MASK (3u << MC_FREQ_SHIFT)
#define MC_SMALL_BIT (1u << 31)

/* The largest size one entry may have (bytes); larger ones are refused. */
#define MC_ENTRY_BYTES_MAX 0xFFFFFFFEu
/* More entries than this and the uint32 links would overflow. */
#define MC_MAX_ENTRIES 0xFFFFFFF0

typedef struct {
    PyObject *key;       /* owned; NULL: a free slot */
    PyObject *value;     /* owned */
    double expires;      /* INFINITY: never */
    uint32_t hm;         /* hash bits and policy state, see above */
    uint32_t nbytes;     /* size; for a victim: its removal reason + 1 */
    uint32_t prev;       /* towards the oldest end (free list: unused; victim: MC_TAKEN) */
    uint32_t next;       /* towards the newest end (free list and victims: link) */
} mc_entry;

/* Entries taken out of the table and the lists by one operation, still
 * holding their key and value until the operation releases them. */
typedef struct {
    uint32_t head;
    uint32_t tail;
    Py_ssize_t n;
} mc_victims;

static inline uint32_t mc_hash_bits(Py_hash_t h) { return (uint32_t)h & MC_HASH_MASK; }

static inline unsigned mc_freq(const mc_entry *e) { return (e->hm & MC_FREQ_MASK) >> MC_FREQ_SHIFT; }

static inline void mc_set_freq(mc_entry *e, unsigned f)
{
    e->hm = (e->hm & ~MC_FREQ_MASK) | ((uint32_t)f << MC_FREQ_SHIFT);
}

/* A key's home slot: Fibonacci hashing, so that runs of consecutive int
 * hashes (hash(i) == i) spread out instead of forming one long cluster. */
static inline size_t mc_ideal(uint32_t hbits, size_t mask)
{
    return (size_t)(((uint64_t)hbits * 0x9E3779B97F4A7C15ULL) >> 32) & mask;
}

static inline void mc_unlink(mc_entry *entries, uint32_t idx)
{
    mc_entry *e = &entries[idx];
    entries[e->prev].next = e->next;
    entries[e->next].prev = e->prev;
}

static inline void mc_link_newest(mc_entry *entries, uint32_t list, uint32_t idx)
{
    uint32_t last = entries[list].prev;
    entries[idx].prev = last;
    entries[idx].next = list;
    entries[last].next = idx;
    entries[list].prev = idx;
}

static inline void mc_list_init(mc_entry *entries, uint32_t list)
{
    entries[list].key = NULL;
    entries[list].value = NULL;
    entries[list].prev = list;
    entries[list].next = list;
}

static inline void mc_table_insert(uint32_t *table, size_t mask, const mc_entry *entries,
                                   uint32_t idx)
{
    size_t i = mc_ideal(entries[idx].hm & MC_HASH_MASK, mask);
    while (table[i] != 0)
        i = (i + 1) & mask;
    table[i] = idx;
}

/* Backward-shift deletion in a linear-probing table: the element at j, whose
 * home slot is k, stays where it is after slot i empties iff k lies cyclically
 * in (i, j], that is iff k is nearer to j than i is (no branch). */
static inline int mc_probe_stays(size_t i, size_t j, size_t k, size_t mask)
{
    return ((j - k) & mask) < ((j - i) & mask);
}

static inline void mc_table_delete(uint32_t *table, size_t mask, const mc_entry *entries, uint32_t idx)
{
    size_t i = mc_ideal(entries[idx].hm & MC_HASH_MASK, mask), j, k;
    while (table[i] != idx)
        i = (i + 1) & mask;
    j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (table[j] == 0)
            break;
        k = mc_ideal(entries[table[j]].hm & MC_HASH_MASK, mask);
        if (mc_probe_stays(i, j, k, mask))
            continue;
        table[i] = table[j];
        i = j;
    }
    table[i] = 0;
}

/* A new table of `size` slots (a power of two) holding every entry of the
 * two lists; NULL when the allocation fails (nothing changed). */
static inline uint32_t *mc_table_build(const mc_entry *entries, size_t size)
{
    uint32_t *t = (uint32_t *)PyMem_Calloc(size, sizeof(uint32_t));
    uint32_t list, idx;
    if (t == NULL)
        return NULL;
    for (list = MC_MAIN; list <= MC_SMALL; list++)
        for (idx = entries[list].next; idx != list; idx = entries[idx].next)
            mc_table_insert(t, size - 1, entries, idx);
    return t;
}

/* The smallest power of two >= 8 with room for n entries at load <= 1/2. */
static inline size_t mc_table_size(Py_ssize_t n)
{
    size_t size = 8;
    while ((Py_ssize_t)(size / 2) < n + 1)
        size *= 2;
    return size;
}

static inline void mc_victims_init(mc_victims *v)
{
    v->head = v->tail = 0;
    v->n = 0;
}

#endif
