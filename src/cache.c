/*
 * cache.c - the metadata table cache: L2 tables and refcount blocks, write
 * back, with the flush dependencies that order metadata on disk.
 *
 * A fixed number of cluster-sized slots, found through a hash of the host
 * offset and replaced by the clock algorithm. Each cache has its own I/O
 * backend (the image file).
 *
 * Ordering (qemu-reference.md §7.1, design.md §5), as in QEMU's qcow2-cache:
 *  - cache_set_dependency(A, B): before any dirty table of A is written, every
 *    dirty table of B is written and the file is flushed (fdatasync).
 *  - cache_depends_on_flush(A): before A's next table write the file is
 *    flushed (data written before reaches the disk before the table).
 *
 * Invariants:
 *  1. A clean slot holds exactly the bytes of the table at its host offset.
 *     A dirty slot holds bytes not yet written; it is written before it is
 *     evicted and by cache_flush(), after its dependencies.
 *  2. The memory used is nb_tables * table_size, fixed at creation: nothing
 *     read from an image changes it.
 *  3. A pointer returned by cache_get*() stays valid until the next
 *     cache_get*() on the same cache (an eviction may reuse its slot).
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
    uint8_t dirty;
};

struct qk_cache {
    qk_io *io;
    size_t table_size;
    uint32_t nb;
    uint32_t nb_buckets;
    uint32_t hand;
    uint32_t nb_dirty;
    struct qk_cache *depends;  /* flush this one (and the file) before writing */
    int depends_on_flush;      /* flush the file before writing */
    struct cache_slot *slots;
    uint32_t *buckets;
    uint8_t *data;
};

static uint32_t bucket_of(const struct qk_cache *c, uint64_t offset)
{
    uint64_t h = (offset / c->table_size) * 0x9E3779B97F4A7C15ull;
    return (uint32_t)(h >> 32) % c->nb_buckets;
}

int cache_new(struct qk_cache **out, qk_io *io, size_t table_size, size_t nb_tables)
{
    if (nb_tables == 0 || nb_tables > (1u << 20))
        return -EINVAL;
    struct qk_cache *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->io = io;
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

int cache_set_dependency(struct qk_cache *c, struct qk_cache *dep)
{
    int r;
    /* Break cycles as QEMU does: a dependency that itself depends on
     * something is written out first, and so is C if it depended on
     * another cache. */
    if (dep->depends && (r = cache_write_dirty(dep)) < 0)
        return r;
    if (c->depends && c->depends != dep && (r = cache_write_dirty(c)) < 0)
        return r;
    c->depends = dep;
    return 0;
}

void cache_depends_on_flush(struct qk_cache *c)
{
    c->depends_on_flush = 1;
}

static uint8_t *slot_data(const struct qk_cache *c, uint32_t s)
{
    return c->data + (size_t)s * c->table_size;
}

/* Honour the dependencies before the first table write. */
static int write_barrier(struct qk_cache *c)
{
    int r;
    if (c->depends) {
        struct qk_cache *d = c->depends;
        c->depends = NULL;
        if ((r = cache_write_dirty(d)) < 0)
            return r;
        c->depends_on_flush = 1;
    }
    if (c->depends_on_flush) {
        if ((r = c->io->ops->flush(c->io)) < 0)
            return r;
        c->depends_on_flush = 0;
    }
    return 0;
}

static int write_slot(struct qk_cache *c, uint32_t s)
{
    int r = write_barrier(c);
    if (r < 0)
        return r;
    if (!c->slots[s].dirty)
        return 0;                /* written while honouring a dependency */
    if ((r = io_pwrite(c->io, slot_data(c, s), c->table_size, c->slots[s].offset)) < 0)
        return r;
    c->slots[s].dirty = 0;
    c->nb_dirty--;
    return 0;
}

int cache_write_dirty(struct qk_cache *c)
{
    for (uint32_t s = 0; s < c->nb && c->nb_dirty; s++) {
        if (c->slots[s].dirty) {
            int r = write_slot(c, s);
            if (r < 0)
                return r;
        }
    }
    return 0;
}

int cache_flush(struct qk_cache *c)
{
    int r = cache_write_dirty(c);
    if (r < 0)
        return r;
    return c->io->ops->flush(c->io);
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

static int pick_victim(struct qk_cache *c, uint32_t *out)
{
    for (;;) {
        uint32_t s = c->hand;
        c->hand = (c->hand + 1) % c->nb;
        if (c->slots[s].offset == EMPTY) {
            *out = s;
            return 0;
        }
        if (c->slots[s].referenced) {
            c->slots[s].referenced = 0;
            continue;
        }
        if (c->slots[s].dirty) {
            int r = write_slot(c, s);
            if (r < 0)
                return r;
        }
        unlink_slot(c, s);
        c->slots[s].offset = EMPTY;
        *out = s;
        return 0;
    }
}

static uint32_t find_slot(const struct qk_cache *c, uint64_t offset)
{
    for (uint32_t s = c->buckets[bucket_of(c, offset)]; s != NO_SLOT; s = c->slots[s].next)
        if (c->slots[s].offset == offset)
            return s;
    return NO_SLOT;
}

/* Find or load the table at OFFSET; READ=0 makes a zeroed table instead. */
static int get_slot(struct qk_cache *c, uint64_t offset, int read, uint32_t *out)
{
    uint32_t s = find_slot(c, offset);
    if (s != NO_SLOT) {
        c->slots[s].referenced = 1;
        if (!read)
            memset(slot_data(c, s), 0, c->table_size);
        *out = s;
        return 0;
    }
    int r = pick_victim(c, &s);
    if (r < 0)
        return r;
    if (read) {
        if ((r = io_pread(c->io, slot_data(c, s), c->table_size, offset)) < 0)
            return r;
    } else {
        memset(slot_data(c, s), 0, c->table_size);
    }
    uint32_t b = bucket_of(c, offset);
    c->slots[s].offset = offset;
    c->slots[s].referenced = 1;
    c->slots[s].dirty = 0;
    c->slots[s].next = c->buckets[b];
    c->buckets[b] = s;
    *out = s;
    return 0;
}

int cache_contains(const struct qk_cache *c, uint64_t offset)
{
    return find_slot(c, offset) != NO_SLOT;
}

int cache_get(struct qk_cache *c, uint64_t offset, const uint8_t **table)
{
    uint32_t s;
    int r = get_slot(c, offset, 1, &s);
    if (r == 0)
        *table = slot_data(c, s);
    return r;
}

static int get_dirty(struct qk_cache *c, uint64_t offset, int read, uint8_t **table)
{
    uint32_t s;
    int r = get_slot(c, offset, read, &s);
    if (r == 0) {
        *table = slot_data(c, s);
        if (!c->slots[s].dirty) {
            c->slots[s].dirty = 1;
            c->nb_dirty++;
        }
    }
    return r;
}

int cache_get_mut(struct qk_cache *c, uint64_t offset, uint8_t **table)
{
    return get_dirty(c, offset, 1, table);
}

int cache_get_empty(struct qk_cache *c, uint64_t offset, uint8_t **table)
{
    return get_dirty(c, offset, 0, table);
}

void cache_forget(struct qk_cache *c, uint64_t offset)
{
    uint32_t s = find_slot(c, offset);
    if (s == NO_SLOT)
        return;
    if (c->slots[s].dirty)
        c->nb_dirty--;
    unlink_slot(c, s);
    c->slots[s].offset = EMPTY;
    c->slots[s].dirty = 0;
    c->slots[s].referenced = 0;
}
