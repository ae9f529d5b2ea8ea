/*
 * cluster.c - guest -> host mapping through the L1 and L2 tables.
 *
 * Spec: qcow2.txt "Cluster mapping", "Extended L2 Entries", "Compressed
 * Clusters Descriptor". Classification follows QEMU's
 * qcow2_get_cluster_type / qcow2_get_subcluster_type.
 *
 * Invariants:
 *  1. Every L1 and L2 entry is validated when it is used: an L2 table offset
 *     must be cluster aligned, past the header and inside the file; a data
 *     offset must be cluster aligned; a compressed descriptor must lie inside
 *     the file and be at most two clusters long; an extended L2 bitmap must
 *     not mark a subcluster both allocated and zero, nor allocate inside an
 *     unallocated cluster; zero entries are invalid in v2 images.
 *  2. A mapping never crosses an L2 table: each call returns the run that
 *     starts at the requested offset and ends at the first change of status,
 *     of host contiguity, or at the end of the L2 table.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "endian.h"
#include "internal.h"

static int load_l2(qk_image *img, uint64_t l1_index, const uint8_t **l2)
{
    if (l1_index >= img->l1_size) {
        *l2 = NULL;               /* beyond the L1 table: unallocated */
        return 0;
    }
    uint64_t e = img->l1[l1_index];
    uint64_t off = e & L1E_OFFSET_MASK;
    if (off == 0) {
        *l2 = NULL;
        return 0;
    }
    if (!is_aligned(off, img->cluster_size))
        return QK_CORRUPT(img, "L2 table offset %#llx unaligned (L1 index: %#llx)",
                          (unsigned long long)off, (unsigned long long)l1_index);
    if (off + img->cluster_size > img->file_size)
        return QK_CORRUPT(img, "L2 table offset %#llx is past the end of the file (L1 index: %#llx)",
                          (unsigned long long)off, (unsigned long long)l1_index);
    int r = cache_get(img->l2_cache, off, l2);
    if (r < 0)
        return qk_set_error(img, r, "Could not read L2 table at %#llx: %s",
                            (unsigned long long)off, qk_strerror(r));
    return 0;
}

/* The status of one subcluster (or whole cluster without extended L2). */
struct sc_status {
    enum qk_ctype type;
    uint64_t host;   /* host offset of the subcluster's start, when has_host */
    int has_host;    /* NORMAL, ZERO_ALLOC or UNALLOCATED_ALLOC */
};

static int classify(qk_image *img, const uint8_t *l2, uint32_t l2_index, uint32_t sc,
                    struct sc_status *st)
{
    const uint8_t *p = l2 + (size_t)l2_index * img->l2_entry_size;
    uint64_t e = be64_load(p);
    uint64_t host = e & L2E_OFFSET_MASK;
    int has_data_file = img->data_io != img->io;

    st->host = 0;
    st->has_host = 0;
    if (e & OFLAG_COMPRESSED) {
        if (has_data_file)
            return QK_CORRUPT(img, "Compressed cluster entry found in image with external data file "
                              "(L2 index: %#x)", l2_index);
        st->type = CT_COMPRESSED;
        return 0;
    }
    int allocated = host != 0 || (has_data_file && (e & OFLAG_COPIED));
    if (allocated && !is_aligned(host, img->cluster_size))
        return QK_CORRUPT(img, "Cluster allocation offset %#llx unaligned (L2 index: %#x)",
                          (unsigned long long)host, l2_index);
    if (!img->extl2) {
        if (e & OFLAG_ZERO) {
            if (img->hdr.version < 3)
                return QK_CORRUPT(img, "Zero cluster entry found in pre-v3 image (L2 index: %#x)",
                                  l2_index);
            st->type = CT_ZERO;
            st->has_host = allocated;
            st->host = host;
            return 0;
        }
        st->type = allocated ? CT_NORMAL : CT_UNALLOCATED;
        st->has_host = allocated;
        st->host = host;
        return 0;
    }
    uint64_t bm = be64_load(p + 8);
    if (allocated) {
        if ((bm >> 32) & bm)
            return QK_CORRUPT(img, "Invalid cluster entry found (L2 index: %#x)", l2_index);
        st->host = host + (uint64_t)sc * img->subcluster_size;
        st->has_host = 1;
        if (bm & (1ull << (32 + sc))) {
            st->type = CT_ZERO;
        } else if (bm & (1ull << sc)) {
            st->type = CT_NORMAL;
        } else {
            st->type = CT_UNALLOCATED;
        }
        return 0;
    }
    if (bm & 0xffffffffull)
        return QK_CORRUPT(img, "Invalid cluster entry found (L2 index: %#x)", l2_index);
    st->type = (bm & (1ull << (32 + sc))) ? CT_ZERO : CT_UNALLOCATED;
    return 0;
}

void compressed_extent(const qk_image *img, uint64_t e, uint64_t *coff, uint64_t *nsec)
{
    uint32_t cb = img->cluster_bits;
    unsigned shift = 62 - (cb - 8);
    *coff = e & ((1ull << shift) - 1);
    *nsec = ((e >> shift) & ((1ull << (cb - 8)) - 1)) + 1;
}

int compressed_check(qk_image *img, struct qk_map *m)
{
    uint64_t coff = m->host, clen = m->clen;
    if (coff > MAX_CLUSTER_OFFSET)
        return QK_CORRUPT(img, "Compressed cluster offset %#llx out of range",
                          (unsigned long long)coff);
    if (coff < img->cluster_size)
        return QK_CORRUPT(img, "Compressed cluster at offset %#llx overlaps the header",
                          (unsigned long long)coff);
    if (coff >= img->file_size)
        return QK_CORRUPT(img, "Compressed cluster at offset %#llx is past the end of the file",
                          (unsigned long long)coff);
    /* The sector count may run past EOF by the slack of the last sector. */
    if (clen > img->file_size - coff)
        clen = img->file_size - coff;
    m->host = coff;
    m->clen = clen;
    return 0;
}

int cluster_map(qk_image *img, uint64_t offset, uint64_t len, struct qk_map *m)
{
    uint64_t cs = img->cluster_size;
    uint64_t cluster = offset >> img->cluster_bits;
    uint64_t l1_index = cluster / img->l2_entries;
    uint32_t l2_index = (uint32_t)(cluster % img->l2_entries);
    uint64_t in_cluster = offset & (cs - 1);
    const uint8_t *l2;
    int r;

    /* Clamp to the end of this L2 table's coverage. */
    uint64_t table_end = (l1_index + 1) * img->l2_entries * cs;
    if (len > table_end - offset)
        len = table_end - offset;

    if ((r = load_l2(img, l1_index, &l2)) < 0)
        return r;
    m->has_host = 0;
    m->clen = 0;
    if (!l2) {
        m->type = CT_UNALLOCATED;
        m->host = 0;
        m->len = len;
        return 0;
    }

    uint64_t sc_size = img->extl2 ? img->subcluster_size : cs;
    uint32_t sc = img->extl2 ? (uint32_t)(in_cluster / sc_size) : 0;
    struct sc_status first;
    if ((r = classify(img, l2, l2_index, sc, &first)) < 0)
        return r;

    if (first.type == CT_COMPRESSED) {
        uint64_t e = be64_load(l2 + (size_t)l2_index * img->l2_entry_size);
        uint64_t coff, nsec;
        compressed_extent(img, e, &coff, &nsec);
        m->host = coff;            /* validated by compressed_check() before use */
        m->clen = nsec * 512 - (coff & 511);
        m->type = CT_COMPRESSED;
        m->len = min_u64(cs - in_cluster, len);
        return 0;
    }

    m->type = first.type;
    m->has_host = first.has_host;
    uint64_t within = offset & (sc_size - 1);
    m->host = first.has_host ? first.host + within : 0;
    uint64_t run = sc_size - within;
    uint64_t expect_host = first.host + sc_size;

    /* Extend over following subclusters/clusters of the same kind. */
    uint32_t i = l2_index;
    uint32_t s = sc + 1;
    while (run < len) {
        if (!img->extl2 || s >= EXTL2_SUBCLUSTERS) {
            i++;
            s = 0;
            if (i >= img->l2_entries)
                break;
        }
        struct sc_status next;
        if ((r = classify(img, l2, i, s, &next)) < 0)
            return r;
        if (next.type != first.type || next.has_host != first.has_host)
            break;
        if (first.has_host && next.host != expect_host)
            break;
        expect_host += sc_size;
        run += sc_size;
        s++;
    }
    m->len = min_u64(run, len);
    return 0;
}

/* ---- write side --------------------------------------------------------- */

int l2_entry_get(qk_image *img, uint64_t guest_off, struct l2_slot *slot)
{
    uint64_t cluster = guest_off >> img->cluster_bits;
    uint64_t l1_index = cluster / img->l2_entries;
    const uint8_t *l2;
    int r = load_l2(img, l1_index, &l2);
    if (r < 0)
        return r;
    slot->l1_index = l1_index;
    slot->l2_index = (uint32_t)(cluster % img->l2_entries);
    slot->l2_offset = l2 ? img->l1[l1_index] & L1E_OFFSET_MASK : 0;
    slot->l2_copied = l2 && (img->l1[l1_index] & OFLAG_COPIED);
    slot->entry = slot->bitmap = 0;
    if (l2) {
        const uint8_t *p = l2 + (size_t)slot->l2_index * img->l2_entry_size;
        slot->entry = be64_load(p);
        if (img->extl2)
            slot->bitmap = be64_load(p + 8);
    }
    return 0;
}

int l1_entry_set(qk_image *img, uint64_t l1_index, uint64_t value)
{
    int r = image_write_be64_sync(img, img->hdr.l1_offset + l1_index * 8, value, "the L1 table");
    if (r == 0)
        img->l1[l1_index] = value;
    return r;
}

int l2_prepare_write(qk_image *img, struct l2_slot *slot)
{
    if (slot->l2_offset && slot->l2_copied)
        return 0;
    if (slot->l1_index >= img->l1_size)
        return qk_set_error(img, QK_E_INVALID, "Write beyond the L1 table");
    uint64_t old = slot->l2_offset, new_off;
    int r;
    if ((r = image_mark_dirty(img)) < 0)
        return r;
    if ((r = refcount_alloc(img, 1, &new_off)) < 0)
        return r;
    if ((r = cache_flush(img->rb_cache)) < 0)
        return qk_set_error(img, r, "Could not write refcounts: %s", qk_strerror(r));
    uint8_t *copy = NULL;
    if (old) {
        const uint8_t *t;
        if ((r = cache_get(img->l2_cache, old, &t)) < 0)
            return qk_set_error(img, r, "Could not read L2 table: %s", qk_strerror(r));
        if (!(copy = malloc(img->cluster_size)))
            return qk_set_error(img, -ENOMEM, "Out of memory");
        memcpy(copy, t, img->cluster_size);
    }
    uint8_t *t;
    if ((r = cache_get_empty(img->l2_cache, new_off, &t)) < 0) {
        free(copy);
        return qk_set_error(img, r, "Could not make an L2 table: %s", qk_strerror(r));
    }
    if (copy)
        memcpy(t, copy, img->cluster_size);
    free(copy);
    if ((r = cache_flush(img->l2_cache)) < 0)
        return qk_set_error(img, r, "Could not write an L2 table: %s", qk_strerror(r));
    if ((r = l1_entry_set(img, slot->l1_index, new_off | OFLAG_COPIED)) < 0)
        return r;
    slot->l2_offset = new_off;
    slot->l2_copied = 1;
    if (old && (r = refcount_update(img, old, img->cluster_size, -1)) < 0)
        return r;
    return 0;
}

int l2_entry_set(qk_image *img, const struct l2_slot *slot, uint64_t entry, uint64_t bitmap,
                 int data_written, int refs_added)
{
    uint8_t *t;
    int r;
    if (data_written)
        cache_depends_on_flush(img->l2_cache);
    if (refs_added && !img->lazy_dirty && (r = cache_set_dependency(img->l2_cache, img->rb_cache)) < 0)
        return qk_set_error(img, r, "Could not write metadata: %s", qk_strerror(r));
    r = cache_get_mut(img->l2_cache, slot->l2_offset, &t);
    if (r < 0)
        return qk_set_error(img, r, "Could not read L2 table: %s", qk_strerror(r));
    uint8_t *p = t + (size_t)slot->l2_index * img->l2_entry_size;
    be64_store(p, entry);
    if (img->extl2)
        be64_store(p + 8, bitmap);
    return 0;
}
