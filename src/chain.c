/*
 * chain.c - what `commit` and `rebase` need from the library: changing the
 * backing file recorded in the header, asking whether a range is allocated
 * in the layers above a base, and emptying an image the way qemu-img commit
 * empties the top (QEMU 7.2's qcow2_make_empty).
 *
 * Invariants:
 *  1. qk_set_backing() changes the header only when the new one fits in the
 *     header cluster; the whole cluster is written at once and flushed (as
 *     qcow2_update_header does). The open chain is not changed: the new
 *     backing file is used from the next open on.
 *  2. qk_make_empty() leaves no guest data in the image and does not touch
 *     its bitmaps. Images without snapshots, bitmaps, encryption or external
 *     data file are rebuilt from scratch (make_completely_empty): the dirty
 *     bit is set on disk before the first refcount structure is overwritten
 *     and cleared only after the new refcounts are flushed, so a crash in
 *     between leaves an image that the next read-write open repairs (leaked
 *     clusters at worst). Other images get every L2 entry cleared, each
 *     cluster's refcount dropping after the entry is gone.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "endian.h"
#include "internal.h"

#define MAX_BACKING_FMT 15   /* QEMU needs len < sizeof(bs->backing_format) = 16 */
#define CRYPT_LUKS 2

/* IMG is open read-write and qcow2; WHAT ends the message when it is raw. */
static int check_rw_qcow2(qk_image *img, const char *what)
{
    if (!img->is_open)
        return qk_set_error(img, QK_E_INVALID, "The image is not open");
    if (!img->writable)
        return qk_set_error(img, QK_E_READONLY, "The image is opened read-only");
    if (img->fmt != QK_FMT_QCOW2)
        return qk_set_error(img, QK_E_UNSUPPORTED, "Only qcow2 images %s", what);
    return 0;
}

QK_API int qk_set_backing(qk_image *img, const char *name, const char *fmt)
{
    int r = check_rw_qcow2(img, "have a backing file");
    if (r < 0)
        return r;
    if (name && !name[0])
        name = NULL;
    if (fmt && !name)
        return qk_set_error(img, QK_E_INVALID, "A backing format needs a backing file");
    if (name && strlen(name) > MAX_BACKING_NAME)
        return qk_set_error(img, QK_E_INVALID, "Backing file name too long");
    if (fmt && (!fmt[0] || strlen(fmt) > MAX_BACKING_FMT))
        return qk_set_error(img, QK_E_INVALID, "Invalid backing format '%s'", fmt);
    if (name && (img->hdr.autoclear & AUTOCLEAR_DATA_RAW))
        return qk_set_error(img, QK_E_INVALID,
                            "A raw external data file cannot have a backing file");

    char *nname = name ? strdup(name) : NULL;
    char *nfmt = fmt ? strdup(fmt) : NULL;
    uint8_t *buf = malloc(img->cluster_size);
    if ((name && !nname) || (fmt && !nfmt) || !buf) {
        free(nname);
        free(nfmt);
        free(buf);
        return qk_set_error(img, -ENOMEM, "Out of memory");
    }
    /* Try the new header on a copy first: a failure changes nothing. */
    struct qk_header trial = img->hdr;
    trial.backing_name = nname;
    trial.backing_fmt = nfmt;
    r = header_serialize(&trial, buf, img->cluster_size);
    free(buf);
    if (r < 0) {
        free(nname);
        free(nfmt);
        return qk_set_error(img, -ENOSPC, "No space left in the file header");
    }
    char *oname = img->hdr.backing_name, *ofmt = img->hdr.backing_fmt;
    img->hdr.backing_name = nname;
    img->hdr.backing_fmt = nfmt;
    if ((r = image_rewrite_header(img)) < 0) {
        img->hdr.backing_name = oname;
        img->hdr.backing_fmt = ofmt;
        free(nname);
        free(nfmt);
        return r;
    }
    free(oname);
    free(ofmt);
    return 0;
}

QK_API int qk_is_allocated_above(qk_image *img, const qk_image *base, uint64_t offset,
                                 uint64_t len, uint64_t *pnum)
{
    int r = status_range(img, offset, &len);
    if (r < 0)
        return r;
    uint64_t n = len;
    qk_image *layer;
    for (layer = img; layer && layer != base; layer = layer->backing) {
        /* Past a shorter layer's end the zeros it reads count as allocated
         * there (bdrv_co_common_block_status_above). */
        if (offset >= layer->size)
            break;
        qk_extent e;
        r = layer_status(layer, offset, min_u64(n, layer->size - offset), &e);
        if (r < 0)
            return layer == img ? r : qk_set_error(img, r, "%s", qk_errmsg(layer));
        if (e.flags & QK_BS_PRESENT) {
            *pnum = e.length;
            return 1;
        }
        n = min_u64(n, e.length);
    }
    *pnum = n;
    return layer && layer != base;
}

/* qcow2_make_empty's fallback: discard every cluster with full discard (the
 * entry becomes unallocated even over a backing file). L2 tables stay. */
static int discard_all(qk_image *img)
{
    uint64_t cs = img->cluster_size;
    uint64_t span = (uint64_t)img->l2_entries * cs;
    for (uint64_t c = 0; c < img->size;) {
        struct l2_slot slot;
        int r = l2_entry_get(img, c, &slot);
        if (r < 0)
            return r;
        if (!slot.l2_offset) {
            c = (c / span + 1) * span;
            continue;
        }
        if (slot.entry || slot.bitmap) {
            if ((r = l2_prepare_write(img, &slot)) < 0 || (r = write_drop_entry(img, &slot)) < 0)
                return r;
            uint64_t host = slot.entry & L2E_OFFSET_MASK, rc;
            /* QCOW2_DISCARD_SNAPSHOT passes the discard down to the file. */
            if (host && !(slot.entry & OFLAG_COMPRESSED) && img->data_io == img->io &&
                refcount_get(img, host >> img->cluster_bits, &rc) == 0 && rc == 0)
                img->io->ops->punch_hole(img->io, host, cs);
        }
        c += cs;
    }
    return qk_flush(img);
}

static int write_zeroes_sync(qk_image *img, uint64_t off, uint64_t len)
{
    uint8_t *z = calloc(1, img->cluster_size);
    if (!z)
        return qk_set_error(img, -ENOMEM, "Out of memory");
    int r = 0;
    for (uint64_t o = 0; o < len && r == 0; o += img->cluster_size)
        r = io_pwrite(img->io, z, img->cluster_size, off + o);
    free(z);
    if (r == 0)
        r = img->io->ops->flush(img->io);
    return r < 0 ? qk_set_error(img, r, "Could not empty the image: %s", qk_strerror(r)) : 0;
}

/* QEMU's make_completely_empty: header in cluster 0, a one-cluster refcount
 * table in cluster 1, its first refcount block in cluster 2, the (same
 * sized, now empty) L1 table from cluster 3, and the file cut after it. */
static int make_completely_empty(qk_image *img)
{
    struct qk_header *h = &img->hdr;
    uint64_t cs = img->cluster_size;
    uint64_t l1_clusters = div_round_up((uint64_t)img->l1_size * 8, cs);
    int r;
    if ((r = qk_flush(img)) < 0)
        return r;
    if ((r = image_write_be64_sync(img, HDR_INCOMPAT, h->incompat | INCOMPAT_DIRTY, "the dirty bit")) < 0)
        return r;
    h->incompat |= INCOMPAT_DIRTY;
    /* From here on the refcounts on disk are wrong until the dirty bit goes. */
    if (img->l1_size && (r = write_zeroes_sync(img, h->l1_offset, l1_clusters * cs)) < 0)
        return r;
    if (img->l1_size)
        memset(img->l1, 0, (size_t)img->l1_size * 8);
    if ((r = write_zeroes_sync(img, cs, (2 + l1_clusters) * cs)) < 0)
        return r;
    uint8_t fields[20];
    be64_store(fields, 3 * cs);
    be64_store(fields + 8, cs);
    be32_store(fields + 16, 1);
    if ((r = image_write_sync(img, HDR_L1_OFFSET, fields, sizeof fields, "the header")) < 0)
        return r;
    h->l1_offset = 3 * cs;
    h->reftable_offset = cs;
    h->reftable_clusters = 1;
    if ((r = image_write_be64_sync(img, cs, 2 * cs, "the refcount table")) < 0)
        return r;

    /* The in-memory caches describe the old layout: start again. */
    cache_free(img->l2_cache);
    img->l2_cache = NULL;
    refcount_close(img);
    size_t nb = img->depth ? (1u << 20) / cs : (4u << 20) / cs;
    if ((r = cache_new(&img->l2_cache, img->io, cs, nb < 4 ? 4 : nb)) < 0)
        return qk_set_error(img, r, "Out of memory for the L2 cache");
    if ((r = refcount_open(img)) < 0)
        return r;
    img->free_cluster_index = 0;
    img->free_byte_offset = 0;
    img->cbuf_host = UINT64_MAX;
    uint64_t end = (3 + l1_clusters) * cs;
    if ((r = refcount_update(img, 0, end, 1)) < 0 || (r = qk_flush(img)) < 0)
        return r;
    if ((r = image_write_be64_sync(img, HDR_INCOMPAT, h->incompat & ~INCOMPAT_DIRTY, "the dirty bit")) < 0)
        return r;
    h->incompat &= ~INCOMPAT_DIRTY;
    img->lazy_dirty = 0;
    if ((r = img->io->ops->truncate(img->io, end)) < 0)
        return qk_set_error(img, r, "Could not truncate the image: %s", qk_strerror(r));
    img->file_size = end;
    return 0;
}

QK_API int qk_make_empty(qk_image *img)
{
    int r = check_rw_qcow2(img, "can be emptied");
    if (r < 0)
        return r;
    if (img->broken)
        return qk_set_error(img, QK_E_CORRUPT, "The image was marked corrupt; it takes no more writes");
    uint64_t l1_clusters = div_round_up((uint64_t)img->l1_size * 8, img->cluster_size);
    if (img->hdr.version >= 3 && img->nb_snapshots == 0 && img->hdr.nb_snapshots == 0 &&
        !(img->hdr.has_bitmaps_ext && img->hdr.bitmaps.nb_bitmaps) && img->nb_bitmaps == 0 &&
        3 + l1_clusters <= img->refblock_entries && img->hdr.crypt_method != CRYPT_LUKS &&
        img->data_io == img->io && !(img->hdr.incompat & INCOMPAT_DATA_FILE))
        return make_completely_empty(img);
    return discard_all(img);
}
