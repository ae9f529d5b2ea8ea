/*
 * resize.c - changing the virtual size (qemu-img resize), with L1 growth.
 *
 * Order, as QEMU's qcow2_co_truncate and qcow2_grow_l1_table:
 *  grow:   new L1 table allocated, written and flushed; header l1_size and
 *          l1_table_offset switched (one synchronous write); old L1 freed;
 *          then the header size.
 *  shrink: clusters past the new end dropped from their L2 tables (entries
 *          first, refcounts after, by the cache dependencies), L2 tables
 *          wholly past the end unlinked from the L1 and freed, then the
 *          header size.
 * A crash at any point leaves at worst leaked clusters.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "endian.h"
#include "internal.h"

int resize_grow_l1(qk_image *img, uint32_t new_size)
{
    uint64_t bytes = (uint64_t)new_size * 8, off;
    uint64_t clusters = div_round_up(bytes, img->cluster_size);
    int r;
    if (bytes > MAX_L1_BYTES)
        return qk_set_error(img, QK_E_TOO_LARGE,
                            "The image size is too large for file format 'qcow2' (try using a larger cluster size)");
    uint64_t *l1 = calloc(new_size, 8);
    uint8_t *be = calloc(clusters, img->cluster_size);
    if (!l1 || !be) {
        free(l1);
        free(be);
        return qk_set_error(img, -ENOMEM, "Out of memory");
    }
    memcpy(l1, img->l1, (size_t)img->l1_size * 8);
    for (uint32_t i = 0; i < new_size; i++)
        be64_store(be + (size_t)i * 8, l1[i]);
    r = refcount_alloc(img, clusters, &off);
    if (r == 0 && (r = cache_flush(img->rb_cache)) < 0)
        qk_set_error(img, r, "Could not write refcounts: %s", qk_strerror(r));
    if (r == 0)
        r = image_write_sync(img, off, be, clusters * img->cluster_size, "the L1 table");
    free(be);
    if (r < 0) {
        free(l1);
        return r;
    }
    uint8_t hdr[12];
    be32_store(hdr, new_size);
    be64_store(hdr + 4, off);
    if ((r = image_write_sync(img, HDR_L1_SIZE, hdr, sizeof hdr, "the header")) < 0) {
        free(l1);
        return r;
    }
    uint64_t old_off = img->hdr.l1_offset, old_bytes = (uint64_t)img->l1_size * 8;
    free(img->l1);
    img->l1 = l1;
    img->l1_size = new_size;
    img->hdr.l1_size = new_size;
    img->hdr.l1_offset = off;
    return old_bytes ? refcount_update(img, old_off, old_bytes, -1) : 0;
}

/* Drop every cluster at or past guest offset START (cluster aligned). A
 * shared L2 table (a snapshot's too) is copied first, so the snapshot keeps
 * its references; a table wholly past the end is then unlinked and freed. */
static int drop_tail(qk_image *img, uint64_t start)
{
    uint64_t cs = img->cluster_size, per_l2 = (uint64_t)img->l2_entries * cs;
    int r;
    for (uint64_t l1i = start / per_l2; l1i < img->l1_size; l1i++) {
        if (!(img->l1[l1i] & L1E_OFFSET_MASK))
            continue;
        uint64_t first = max_u64(start, l1i * per_l2);
        for (uint64_t g = first; g < (l1i + 1) * per_l2; g += cs) {
            struct l2_slot slot;
            if ((r = l2_entry_get(img, g, &slot)) < 0)
                return r;
            if ((slot.entry || slot.bitmap) &&
                ((r = l2_prepare_write(img, &slot)) < 0 || (r = write_drop_entry(img, &slot)) < 0))
                return r;
        }
        if (first != l1i * per_l2)
            continue;
        uint64_t e = img->l1[l1i];
        if ((r = cache_flush(img->l2_cache)) < 0)
            return qk_set_error(img, r, "Could not write L2 tables: %s", qk_strerror(r));
        if ((r = l1_entry_set(img, l1i, 0)) < 0)
            return r;
        cache_forget(img->l2_cache, e & L1E_OFFSET_MASK);
        if ((r = refcount_update(img, e & L1E_OFFSET_MASK, cs, -1)) < 0)
            return r;
    }
    return 0;
}

QK_API int qk_resize(qk_image *img, uint64_t size, unsigned flags)
{
    int r;
    if (!img->is_open || !img->writable)
        return qk_set_error(img, QK_E_READONLY, "The image is not open for writing");
    if (size % 512)
        return qk_set_error(img, -EINVAL, "The new size must be a multiple of 512");
    if (size < img->size && !(flags & QK_RESIZE_SHRINK))
        return qk_set_error(img, -EINVAL,
                            "Use the --shrink option to perform a shrink operation.");
    if (img->fmt == QK_FMT_RAW) {
        if ((r = img->io->ops->truncate(img->io, size)) < 0)
            return qk_set_error(img, r, "Could not resize file: %s", qk_strerror(r));
        img->size = img->file_size = size;
        return 0;
    }
    /* v2 snapshots need not record their size: QEMU refuses (qcow2_co_truncate). */
    if (img->hdr.version < 3 && img->nb_snapshots)
        return qk_set_error(img, -ENOTSUP, "Can't resize a v2 image which has snapshots");
    if (size != img->size && (r = bitmap_resize_all(img, size)) < 0)
        return r;
    uint64_t per_l2 = (uint64_t)img->l2_entries * img->cluster_size;
    uint64_t l1_needed = div_round_up(size, per_l2);
    if (l1_needed > MAX_L1_BYTES / 8)
        return qk_set_error(img, QK_E_TOO_LARGE,
                            "The image size is too large for file format 'qcow2' (try using a larger cluster size)");
    if (size > img->size && l1_needed > img->l1_size && (r = resize_grow_l1(img, (uint32_t)l1_needed)) < 0)
        return r;
    if (size < img->size) {
        uint64_t cs = img->cluster_size;
        if ((r = drop_tail(img, (size + cs - 1) & ~(cs - 1))) < 0)
            return r;
        if ((r = qk_flush(img)) < 0)
            return r;
    }
    if ((r = image_write_be64_sync(img, HDR_SIZE, size, "the header")) < 0)
        return r;
    img->size = size;
    img->hdr.size = size;
    return 0;
}
