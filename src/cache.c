/*
 * cache.c - the metadata table cache (L2 tables, later refcount blocks).
 *
 * A fixed number of cluster-sized slots, found through a hash of the host
 * offset and replaced by the clock algorithm.
 *
 * Invariants:
 *  1. A slot holds exactly the bytes of the table at its host offset as they
 *     were read (the read path never modifies a slot).
 *  2. The memory used is nb_tables * table_size, fixed at creation: no table
 *     count read from an image changes it.
 *  3. A pointer returned by cache_get() stays valid until the next cache_get()
 *     on the same cache.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define NO_SLOT UINT32_MAX
#define EMPTY UINT64_MAX

struct cache_slot {
    uint64_t offset;     /* EMPTY if unused */
    uint32_t next;       /* hash chain */
    uint8_t referenced;  /* clock bit */
};

struct qk_cache {
    size_t table_size;
    uint32_t nb;
    uint32_t nb_buckets;
    uint32_t hand;
    struct cache_slot *slots;
    uint32_t *buckets;
    uint8_t *data;
};

static uint32_t bucket_of(const struct qk_cache *c, uint64_t offset)
{
    uint64_t h = (offset / c->table_size) * 0x9E3779B97F4A7C15ull;
    return (uint32_t)(h >> 32) % c->nb_buckets;
}

int cache_new(struct qk_cache **out, size_t table_size, size_t nb_tables)
{
    if (nb_tables == 0 || nb_tables > (1u << 20))
        return -EINVAL;
    struct qk_cache *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->table_size = table_size;
    c->nb = (uint32_t)nb_tables;
    c->nb_buckets = c->nb * 2;
    c->slots = calloc(c->nb, sizeof *c->slots);
    c->buckets = malloc(c->nb_buckets * sizeof *c->buckets);
    c->data = malloc(table_size * nb_tables);
    if (!c->slots || !c->buckets || !c->data) {
        cache_free(c);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < c->nb; i++)
        c->slots[i].offset = EMPTY;
    for (uint32_t i = 0; i < c->nb_buckets; i++)
        c->buckets[i] = NO_SLOT;
    *out = c;
    return 0;
}

void cache_free(struct qk_cache *c)
{
    if (!c)
        return;
    free(c->slots);
    free(c->buckets);
    free(c->data);
    free(c);
}

static void unlink_slot(struct qk_cache *c, uint32_t s)
{
    uint32_t *p = &c->buckets[bucket_of(c, c->slots[s].offset)];
    while (*p != NO_SLOT) {
        if (*p == s) {
            *p = c->slots[s].next;
            return;
        }
        p = &c->slots[*p].next;
    }
}

static uint32_t pick_victim(struct qk_cache *c)
{
    for (;;) {
        uint32_t s = c->hand;
        c->hand = (c->hand + 1) % c->nb;
        if (c->slots[s].offset == EMPTY || !c->slots[s].referenced)
            return s;
        c->slots[s].referenced = 0;
    }
}

int cache_get(struct qk_cache *c, qk_io *io, uint64_t offset, const uint8_t **table)
{
    uint32_t b = bucket_of(c, offset);
    for (uint32_t s = c->buckets[b]; s != NO_SLOT; s = c->slots[s].next) {
        if (c->slots[s].offset == offset) {
            c->slots[s].referenced = 1;
            *table = c->data + (size_t)s * c->table_size;
            return 0;
        }
    }
    uint32_t s = pick_victim(c);
    if (c->slots[s].offset != EMPTY)
        unlink_slot(c, s);
    c->slots[s].offset = EMPTY;
    uint8_t *t = c->data + (size_t)s * c->table_size;
    int r = io_pread(io, t, c->table_size, offset);
    if (r < 0)
        return r;
    c->slots[s].offset = offset;
    c->slots[s].referenced = 1;
    c->slots[s].next = c->buckets[b];
    c->buckets[b] = s;
    *table = t;
    return 0;
}
