/*
 * overlap.c - metadata overlap checks before writes, and the corrupt bit.
 *
 * QEMU checks every write against its metadata ("cached" template: header,
 * active L1, refcount table, snapshot table, inactive L1 tables, bitmap
 * directory, and the L2 tables and refcount blocks in its caches) and marks
 * the image corrupt instead of overwriting metadata (qemu-reference.md §7.1).
 * We check the same places: a write that would overlap metadata can only come
 * from corrupt refcounts or L2 entries, and must not make things worse.
 *
 * Invariants:
 *  1. After a corruption event the handle refuses every further write, and
 *     the corrupt bit (incompatible bit 1) is on disk if the write of the
 *     header succeeded.
 */
#include <stdarg.h>
#include <stdio.h>

#include "internal.h"

static int overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return alen && blen && a < b + blen && b < a + alen;
}

const char *overlap_find(const qk_image *img, uint64_t off, uint64_t len)
{
    const struct qk_header *h = &img->hdr;
    uint64_t cs = img->cluster_size;
    if (overlaps(off, len, 0, cs))
        return "qcow2_header";
    if (overlaps(off, len, h->l1_offset, (uint64_t)img->l1_size * 8))
        return "active L1 table";
    if (overlaps(off, len, h->reftable_offset, (uint64_t)h->reftable_clusters * cs))
        return "refcount table";
    if (overlaps(off, len, h->snapshots_offset, img->snapshots_size))
        return "snapshot table";
    for (uint32_t i = 0; i < img->nb_snapshots; i++)
        if (overlaps(off, len, img->snapshots[i].l1_offset, (uint64_t)img->snapshots[i].l1_size * 8))
            return "inactive L1 table";
    if (h->has_bitmaps_ext && (h->autoclear & AUTOCLEAR_BITMAPS) &&
        overlaps(off, len, h->bitmaps.dir_offset, h->bitmaps.dir_size))
        return "bitmap directory";
    for (uint64_t c = off & ~(cs - 1); c < off + len; c += cs) {
        if (img->l2_cache && cache_contains(img->l2_cache, c))
            return "active L2 table";
        if (img->rb_cache && cache_contains(img->rb_cache, c))
            return "refcount block";
    }
    return NULL;
}

int image_signal_corruption(qk_image *img, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (img->writable && !img->broken) {
        img->hdr.incompat |= INCOMPAT_CORRUPT;
        image_write_be64_sync(img, HDR_INCOMPAT, img->hdr.incompat, "the corrupt bit");
        qk_add_warning(img, "qcow2: Marking image as corrupt: %s; further corruption events will be suppressed",
                       msg);
    }
    img->broken = 1;
    return qk_set_error(img, QK_E_CORRUPT, "%s", msg);
}

int overlap_check(qk_image *img, uint64_t off, uint64_t len)
{
    const char *what = overlap_find(img, off, len);
    if (!what)
        return 0;
    return image_signal_corruption(img, "Preventing invalid write on metadata (overlaps with %s)", what);
}
