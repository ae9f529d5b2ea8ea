/*
 * refcount.c - the refcount table and blocks, and the cluster allocator.
 *
 * Spec: qcow2.txt "Host cluster management". Order of writes follows QEMU
 * (qemu-reference.md §7.1):
 *  1. A new refcount block is written (with every dirty block) and flushed
 *     before the refcount-table entry that points at it.
 *  2. A grown refcount table is written and flushed, with its new blocks,
 *     before the header points at it; the old table is freed afterwards.
 *  3. Increments reach the disk before any L2/L1 entry that uses the
 *     cluster: the L2 cache depends on this cache (set by the caller).
 *  4. A decrement is written only after the L2 tables that dropped the
 *     reference: update_refcount() makes this cache depend on the L2 cache.
 *
 * Invariants:
 *  1. img->reftable holds reftable_entries host-endian entries; an entry is
 *     validated (reserved bits, alignment, inside the file) before use.
 *  2. A refcount never goes below 0 or above 2^refcount_bits - 1: either is
 *     reported as corruption / overflow and nothing is changed.
 *  3. Every cluster below img->free_cluster_index has a non-zero refcount.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "endian.h"
#include "internal.h"

#define REFCOUNT_CACHE_BYTES (1u << 20)
/* An allocation retries after making refcount blocks; a sane image needs a
 * few rounds, a hostile one could loop: it gets this many. */
#define ALLOC_RETRIES 64

static uint64_t rc_max(const qk_image *img)
{
    return img->refcount_bits == 64 ? UINT64_MAX : (1ull << img->refcount_bits) - 1;
}

uint64_t refblock_get(const qk_image *img, const uint8_t *b, uint64_t i)
{
    switch (img->refcount_bits) {
    case 64: return be64_load(b + i * 8);
    case 32: return be32_load(b + i * 4);
    case 16: return be16_load(b + i * 2);
    case 8: return b[i];
    default: {
        unsigned bits = img->refcount_bits, per = 8 / bits;
        return (b[i / per] >> (bits * (i % per))) & ((1u << bits) - 1);
    }
    }
}

void refblock_set(const qk_image *img, uint8_t *b, uint64_t i, uint64_t v)
{
    switch (img->refcount_bits) {
    case 64: be64_store(b + i * 8, v); break;
    case 32: be32_store(b + i * 4, (uint32_t)v); break;
    case 16: be16_store(b + i * 2, (uint16_t)v); break;
    case 8: b[i] = (uint8_t)v; break;
    default: {
        unsigned bits = img->refcount_bits, per = 8 / bits;
        unsigned shift = bits * (unsigned)(i % per);
        uint8_t mask = (uint8_t)(((1u << bits) - 1) << shift);
        b[i / per] = (uint8_t)((b[i / per] & ~mask) | ((v << shift) & mask));
        break;
    }
    }
}

int refcount_open(qk_image *img)
{
    const struct qk_header *h = &img->hdr;
    img->refcount_bits = 1u << h->refcount_order;
    img->refblock_entries = (uint64_t)img->cluster_size * 8 / img->refcount_bits;
    img->reftable_entries = (uint32_t)((uint64_t)h->reftable_clusters * img->cluster_size / 8);
    img->reftable = malloc((size_t)img->reftable_entries * 8);
    if (!img->reftable)
        return qk_set_error(img, -ENOMEM, "Out of memory for the refcount table");
    int r = io_pread(img->io, img->reftable, (size_t)img->reftable_entries * 8, h->reftable_offset);
    if (r < 0)
        return qk_set_error(img, r, "Could not read the refcount table: %s", qk_strerror(r));
    for (uint32_t i = 0; i < img->reftable_entries; i++)
        img->reftable[i] = be64_load(&img->reftable[i]);
    size_t nb = REFCOUNT_CACHE_BYTES / img->cluster_size;
    if ((r = cache_new(&img->rb_cache, img->io, img->cluster_size, nb < 4 ? 4 : nb)) < 0)
        return qk_set_error(img, r, "Out of memory for the refcount cache");
    return 0;
}

int refcount_ensure(qk_image *img)
{
    return img->reftable ? 0 : refcount_open(img);
}

/* QEMU's qcow2_detect_metadata_preallocation: more clusters in use than the
 * host has allocated (with slack) means the image was made with
 * preallocation=metadata, and block status then asks the file for holes.
 * The slack is calibrated against qemu-img 7.2 (with 6 clusters in use it
 * detects at 4 allocated clusters and not at 5): in use > max(real*10/9,
 * real+1). */
int refcount_detect_metadata_prealloc(qk_image *img)
{
    uint64_t real, count = 0;
    if (refcount_ensure(img) < 0 || img->io->ops->allocated_size(img->io, &real) < 0)
        return 0;
    uint64_t real_clusters = real / img->cluster_size;
    uint64_t threshold = max_u64(real_clusters * 10 / 9, real_clusters + 1);
    uint64_t end = div_round_up(img->file_size, img->cluster_size);
    for (uint64_t c = 0; c < end && count <= threshold; c++) {
        uint64_t v;
        if (refcount_get(img, c, &v) < 0)
            return 0;
        count += v != 0;
    }
    return count > threshold;
}

void refcount_close(qk_image *img)
{
    cache_free(img->rb_cache);
    img->rb_cache = NULL;
    free(img->reftable);
    img->reftable = NULL;
}

/* The refcount block offset for table index I (0 if none), validated. */
static int block_offset(qk_image *img, uint64_t i, uint64_t *off)
{
    *off = 0;
    if (i >= img->reftable_entries)
        return 0;
    uint64_t e = img->reftable[i];
    if (e & REFT_RESERVED_MASK)
        return QK_CORRUPT(img, "Refcount table entry %llu has reserved bits set",
                          (unsigned long long)i);
    uint64_t o = e & REFT_OFFSET_MASK;
    if (o && (!is_aligned(o, img->cluster_size) || o > MAX_CLUSTER_OFFSET ||
              o + img->cluster_size > img->file_size))
        return QK_CORRUPT(img, "Refblock offset %#llx invalid (reftable index: %#llx)",
                          (unsigned long long)o, (unsigned long long)i);
    *off = o;
    return 0;
}

int refcount_get(qk_image *img, uint64_t cluster, uint64_t *value)
{
    uint64_t boff;
    int r = block_offset(img, cluster / img->refblock_entries, &boff);
    if (r < 0)
        return r;
    if (!boff) {
        *value = 0;
        return 0;
    }
    const uint8_t *b;
    if ((r = cache_get(img->rb_cache, boff, &b)) < 0)
        return qk_set_error(img, r, "Could not read refcount block: %s", qk_strerror(r));
    *value = refblock_get(img, b, cluster % img->refblock_entries);
    return 0;
}

/* First run of N (>= 1) free clusters at or after img->free_cluster_index. */
static int find_free(qk_image *img, uint64_t n, uint64_t *start)
{
    uint64_t c = img->free_cluster_index, run = 0, first = c;
    if (n == 0)   /* no run would ever match: the scan would end only at 2^56 */
        return qk_set_error(img, QK_E_INVALID, "Allocating zero clusters");
    for (;;) {
        uint64_t v;
        if (c > (MAX_CLUSTER_OFFSET >> img->cluster_bits))
            return qk_set_error(img, -ENOSPC, "The image cannot grow any further");
        int r = refcount_get(img, c, &v);
        if (r < 0)
            return r;
        if (v == 0) {
            if (run == 0)
                first = c;
            if (++run == n) {
                *start = first;
                return 0;
            }
        } else {
            run = 0;
            if (c == img->free_cluster_index)
                img->free_cluster_index = c + 1;
        }
        c++;
    }
}

static void note_file_end(qk_image *img, uint64_t end)
{
    if (end > img->file_size)
        img->file_size = end;
}

static int grow_reftable(qk_image *img, uint64_t min_index);

/* Make sure refcount table index I has a block; *made says whether one was
 * allocated (which may have used free clusters a caller had found). */
static int ensure_block(qk_image *img, uint64_t i, int *made)
{
    uint64_t boff;
    int r;
    for (int tries = 0;; tries++) {
        if (tries > ALLOC_RETRIES)
            return QK_CORRUPT(img, "Could not allocate a refcount block: the refcounts are inconsistent");
        if (i >= img->reftable_entries) {
            if ((r = grow_reftable(img, i)) < 0)
                return r;
            *made = 1;
            continue;
        }
        if ((r = block_offset(img, i, &boff)) < 0)
            return r;
        if (boff)
            return 0;
        uint64_t c;
        if ((r = find_free(img, 1, &c)) < 0)
            return r;
        uint64_t ci = c / img->refblock_entries;
        if (ci != i) {
            int sub = 0;
            if ((r = ensure_block(img, ci, &sub)) < 0)
                return r;
            if (sub) {
                *made = 1;
                continue;        /* that may have taken cluster c: look again */
            }
            if ((r = refcount_update(img, c << img->cluster_bits, img->cluster_size, 1)) < 0)
                return r;
        }
        uint8_t *b;
        uint64_t new_off = c << img->cluster_bits;
        if ((r = overlap_check(img, new_off, img->cluster_size)) < 0)
            return r;
        note_file_end(img, new_off + img->cluster_size);
        if ((r = cache_get_empty(img->rb_cache, new_off, &b)) < 0)
            return qk_set_error(img, r, "Could not allocate a refcount block: %s", qk_strerror(r));
        if (ci == i)
            refblock_set(img, b, c % img->refblock_entries, 1);   /* it describes itself */
        if ((r = cache_flush(img->rb_cache)) < 0)
            return qk_set_error(img, r, "Could not write a refcount block: %s", qk_strerror(r));
        if ((r = image_write_be64_sync(img, img->hdr.reftable_offset + i * 8, new_off,
                                       "the refcount table")) < 0)
            return r;
        img->reftable[i] = new_off;
        *made = 1;
        return 0;
    }
}

/* Add DELTA to (DECREASE: subtract it from) the refcount of every cluster
 * in [off, off+len), in one step per cluster whatever DELTA is. */
int refcount_change(qk_image *img, uint64_t off, uint64_t len, uint64_t delta, int decrease)
{
    uint64_t first = off >> img->cluster_bits;
    uint64_t last = (off + len - 1) >> img->cluster_bits;
    int r;
    if (decrease && (r = cache_set_dependency(img->rb_cache, img->l2_cache)) < 0)
        return qk_set_error(img, r, "Could not write metadata: %s", qk_strerror(r));
    for (uint64_t c = first; c <= last; c++) {
        uint64_t i = c / img->refblock_entries, boff;
        if (!decrease) {
            int made = 0;
            if ((r = ensure_block(img, i, &made)) < 0)
                return r;
        }
        if ((r = block_offset(img, i, &boff)) < 0)
            return r;
        if (!boff)
            return QK_CORRUPT(img, "Freeing cluster %#llx, which has no refcount block",
                              (unsigned long long)(c << img->cluster_bits));
        uint8_t *b;
        if ((r = cache_get_mut(img->rb_cache, boff, &b)) < 0)
            return qk_set_error(img, r, "Could not read refcount block: %s", qk_strerror(r));
        uint64_t idx = c % img->refblock_entries;
        uint64_t v = refblock_get(img, b, idx);
        if (decrease && v < delta)
            return QK_CORRUPT(img, "Refcount of cluster %#llx would drop below 0",
                              (unsigned long long)(c << img->cluster_bits));
        if (!decrease && delta > rc_max(img) - v)
            return qk_set_error(img, QK_E_TOO_LARGE, "Refcount of cluster %#llx would overflow",
                                (unsigned long long)(c << img->cluster_bits));
        v = decrease ? v - delta : v + delta;
        refblock_set(img, b, idx, v);
        if (v == 0 && c < img->free_cluster_index)
            img->free_cluster_index = c;
        if (v == 0 && c == (img->free_byte_offset >> img->cluster_bits))
            img->free_byte_offset = 0;   /* no more packing into a freed cluster */
    }
    return 0;
}

/* Add ADDEND (+1 or -1) to the refcount of every cluster in [off, off+len). */
int refcount_update(qk_image *img, uint64_t off, uint64_t len, int addend)
{
    return refcount_change(img, off, len, 1, addend < 0);
}

int refcount_alloc(qk_image *img, uint64_t n, uint64_t *offset)
{
    for (int tries = 0;; tries++) {
        if (tries > ALLOC_RETRIES)
            return QK_CORRUPT(img, "Could not allocate clusters: the refcounts are inconsistent");
        uint64_t start;
        int r = find_free(img, n, &start);
        if (r < 0)
            return r;
        /* Give every block the run needs a home first; if that took clusters,
         * search again. */
        int made = 0;
        uint64_t last = start + n - 1;
        for (uint64_t i = start / img->refblock_entries; i <= last / img->refblock_entries; i++)
            if ((r = ensure_block(img, i, &made)) < 0)
                return r;
        if (made)
            continue;
        if ((r = refcount_update(img, start << img->cluster_bits, n << img->cluster_bits, 1)) < 0)
            return r;
        *offset = start << img->cluster_bits;
        if ((r = overlap_check(img, *offset, n << img->cluster_bits)) < 0)
            return r;
        if (start == img->free_cluster_index)
            img->free_cluster_index = start + n;
        note_file_end(img, *offset + (n << img->cluster_bits));
        return 0;
    }
}

int refcount_alloc_at(qk_image *img, uint64_t cluster)
{
    int made = 0, r;
    uint64_t v;
    if ((r = ensure_block(img, cluster / img->refblock_entries, &made)) < 0 ||
        (r = refcount_get(img, cluster, &v)) < 0)
        return r;
    if (v)
        return 1;                  /* in use (perhaps by the block just made) */
    uint64_t off = cluster << img->cluster_bits;
    if ((r = overlap_check(img, off, img->cluster_size)) < 0 ||
        (r = refcount_update(img, off, img->cluster_size, 1)) < 0)
        return r;
    note_file_end(img, off + img->cluster_size);
    return 0;
}

/* Grow the refcount table so that index MIN_INDEX exists. The new table and
 * the blocks that describe it go into a free run; blocks for ranges that had
 * none are made there too and describe themselves and the table. */
static int grow_reftable(qk_image *img, uint64_t min_index)
{
    uint64_t cs = img->cluster_size, per_cluster = cs / 8;
    uint64_t entries = max_u64(min_index + 1, (uint64_t)img->reftable_entries * 3 / 2);
    uint64_t extra = 0, start = 0;
    int r;
    for (int tries = 0;; tries++) {
        entries = div_round_up(entries, per_cluster) * per_cluster;
        if (entries * 8 > MAX_REFTABLE_BYTES)
            return qk_set_error(img, QK_E_TOO_LARGE, "Refcount table too large");
        uint64_t tclusters = entries / per_cluster;
        if ((r = find_free(img, tclusters + extra, &start)) < 0)
            return r;
        uint64_t end = start + tclusters + extra;  /* exclusive, in clusters */
        uint64_t need = 0, top = (end - 1) / img->refblock_entries;
        for (uint64_t i = start / img->refblock_entries; i <= top; i++) {
            uint64_t boff = 0;
            if ((r = block_offset(img, i, &boff)) < 0)
                return r;
            need += boff == 0;
        }
        if (top >= entries) {
            entries = top + 1;
            continue;
        }
        if (need == extra)
            break;
        extra = need;
        if (tries > 64)
            return qk_set_error(img, QK_E_TOO_LARGE, "Could not place a new refcount table");
    }
    uint64_t tclusters = entries / per_cluster;
    if ((r = overlap_check(img, start << img->cluster_bits, (tclusters + extra) << img->cluster_bits)) < 0)
        return r;
    uint64_t *table = calloc(entries, 8);
    if (!table)
        return qk_set_error(img, -ENOMEM, "Out of memory for the refcount table");
    memcpy(table, img->reftable, (size_t)img->reftable_entries * 8);

    /* New blocks go right after the table, one per index that has none. */
    uint64_t end = start + tclusters + extra;
    uint64_t next_block = start + tclusters;
    for (uint64_t i = start / img->refblock_entries; i <= (end - 1) / img->refblock_entries; i++)
        if (table[i] == 0)
            table[i] = (next_block++) << img->cluster_bits;
    note_file_end(img, end << img->cluster_bits);
    r = 0;
    for (uint64_t i = start / img->refblock_entries; r == 0 && i <= (end - 1) / img->refblock_entries; i++) {
        uint8_t *b;
        if (i >= img->reftable_entries || img->reftable[i] == 0)
            r = cache_get_empty(img->rb_cache, table[i], &b);
    }
    for (uint64_t c = start; r == 0 && c < end; c++) {
        uint8_t *b;
        uint64_t i = c / img->refblock_entries, idx = c % img->refblock_entries;
        if ((r = cache_get_mut(img->rb_cache, table[i], &b)) == 0)
            refblock_set(img, b, idx, refblock_get(img, b, idx) + 1);
    }
    if (r < 0) {
        free(table);
        return qk_set_error(img, r, "Could not grow the refcount table: %s", qk_strerror(r));
    }
    /* Write blocks, then the table, then point the header at it. */
    uint8_t *be = malloc(entries * 8);
    if (!be) {
        free(table);
        return qk_set_error(img, -ENOMEM, "Out of memory");
    }
    for (uint64_t i = 0; i < entries; i++)
        be64_store(be + i * 8, table[i]);
    uint64_t toff = start << img->cluster_bits;
    if ((r = cache_flush(img->rb_cache)) == 0 &&
        (r = io_pwrite(img->io, be, entries * 8, toff)) == 0)
        r = img->io->ops->flush(img->io);
    free(be);
    if (r < 0) {
        free(table);
        return qk_set_error(img, r, "Could not write the refcount table: %s", qk_strerror(r));
    }
    uint8_t hdr[12];
    be64_store(hdr, toff);
    be32_store(hdr + 8, (uint32_t)tclusters);
    if ((r = image_write_sync(img, HDR_REFTABLE_OFFSET, hdr, sizeof hdr, "the header")) < 0) {
        free(table);
        return r;
    }
    uint64_t old_off = img->hdr.reftable_offset;
    uint64_t old_clusters = img->hdr.reftable_clusters;
    free(img->reftable);
    img->reftable = table;
    img->reftable_entries = (uint32_t)entries;
    img->hdr.reftable_offset = toff;
    img->hdr.reftable_clusters = (uint32_t)tclusters;
    return refcount_update(img, old_off, old_clusters * cs, -1);
}
