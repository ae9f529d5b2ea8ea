/*
 * measure.c - qk_measure(): the file sizes `qemu-img measure` reports for a
 * new image (QEMU 7.2's qcow2_measure and raw_measure, block/qcow2.c and
 * block/raw-format.c).
 *
 * qcow2 target:
 *   1. fully allocated = header cluster + L2 tables + L1 table + refcount
 *      table and blocks (the fixed point of qcow2_refcount_metadata_size)
 *      + the virtual size rounded up to the cluster size;
 *   2. required = fully allocated - virtual size + the data the source holds:
 *      each block-status run that is allocated data (not zero) anywhere in
 *      the source's chain counts from the start of its first target cluster to
 *      the end of its last; all of it with a backing file (the new image's
 *      backing file may share nothing) or falloc/full preallocation;
 *   3. bitmaps (v3 target, v3 qcow2 source): per persistent bitmap, its data
 *      clusters and table clusters, plus the directory rounded to a cluster.
 *      QEMU loads in_use bitmaps too (as inconsistent ones), so they count.
 * raw target: required = fully allocated = the source's size (or the size
 * given, rounded up to 512 bytes).
 * The source is only read; nothing here writes.
 */
#include <errno.h>
#include <string.h>

#include "internal.h"

/* qcow2_refcount_metadata_size() without generous_increase. */
static uint64_t refcount_metadata_size(uint64_t clusters, uint64_t cs, unsigned refcount_order)
{
    uint64_t per_table = cs / 8, per_block = cs * 8 >> refcount_order;
    uint64_t table = 0, blocks = 0, n = 0, last;

    do {
        last = n;
        blocks = (clusters + table + blocks + per_block - 1) / per_block;
        table = (blocks + per_table - 1) / per_table;
        n = clusters + blocks + table;
    } while (n != last);
    return (blocks + table) * cs;
}

/* qcow2_calc_prealloc_size() for an already cluster-aligned SIZE. */
static uint64_t prealloc_size(uint64_t size, uint64_t cs, unsigned refcount_order, int extl2)
{
    uint64_t l2e = extl2 ? 16 : 8, meta = cs;
    uint64_t nl2e = size / cs;

    nl2e = (nl2e + cs / l2e - 1) / (cs / l2e) * (cs / l2e);
    meta += nl2e * l2e;
    uint64_t nl1e = nl2e * l2e / cs;
    nl1e = (nl1e + cs / 8 - 1) / (cs / 8) * (cs / 8);
    meta += nl1e * 8;
    meta += refcount_metadata_size((meta + size) / cs, cs, refcount_order);
    return meta + size;
}

/* The bytes of target clusters the source's allocated data touches. */
static int required_data(qk_image *src, uint64_t cs, uint64_t *out)
{
    uint64_t size = qk_size(src), off, pnum, req = 0;
    qk_extent e;

    for (off = 0; off < size; off += pnum) {
        int r = qk_block_status(src, off, size - off, &e);
        if (r)
            return r;
        pnum = e.length;
        if (!(e.flags & QK_BS_ZERO) && (e.flags & QK_BS_DATA) && (e.flags & QK_BS_PRESENT)) {
            pnum = (off + pnum + cs - 1) / cs * cs - off;
            req += off % cs + pnum;
        }
    }
    *out = req;
    return 0;
}

/* qcow2_get_persistent_dirty_bitmap_size(). */
static int bitmaps_size(qk_image *src, uint64_t cs, uint64_t *out)
{
    qk_bitmap_info *list;
    size_t n;
    uint64_t total = 0, dir = 0;
    int r = qk_bitmap_list(src, &list, &n);

    if (r)
        return r;
    for (size_t i = 0; i < n; i++) {
        uint64_t g = list[i].granularity ? list[i].granularity : 1;
        uint64_t bits = qk_size(src) / g + (qk_size(src) % g != 0);
        uint64_t bytes = (bits + 7) / 8;
        uint64_t clusters = (bytes + cs - 1) / cs;
        total += clusters * cs + (clusters * 8 + cs - 1) / cs * cs;
        dir += (24 + strlen(list[i].name) + 7) / 8 * 8;
    }
    qk_bitmap_list_free(list, n);
    *out = total + (dir + cs - 1) / cs * cs;
    return 0;
}

/* QEMU's option checks of qcow2_measure, in its order. */
static int check_qcow2_opts(qk_image *img, const qk_create_opts *o, unsigned *refcount_order)
{
    uint32_t cs = o->cluster_size;
    int rb = o->refcount_bits;

    if (cs < 512 || cs > (2u << 20) || (cs & (cs - 1)))
        return qk_set_error(img, QK_E_INVALID, "Cluster size must be a power of two between %d and %dk",
                            512, 2048);
    if (o->extended_l2 && cs < 16384)
        return qk_set_error(img, QK_E_INVALID,
                            "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes");
    if (o->compat != 2 && o->compat != 3)
        return qk_set_error(img, QK_E_INVALID, "Invalid compatibility level: '%d'", o->compat);
    if (rb < 1 || rb > 64 || (rb & (rb - 1)))
        return qk_set_error(img, QK_E_INVALID,
                            "Refcount width must be a power of two and may not exceed 64 bits");
    if (o->compat < 3 && rb != 16)
        return qk_set_error(img, QK_E_INVALID, "Different refcount widths than 16 bits require "
                            "compatibility level 1.1 or above (use compat=1.1 or greater)");
    if (o->preallocation < QK_PREALLOC_OFF || o->preallocation > QK_PREALLOC_FULL)
        return qk_set_error(img, QK_E_INVALID, "Invalid preallocation mode %d", o->preallocation);
    *refcount_order = 0;
    while ((1 << *refcount_order) < rb)
        (*refcount_order)++;
    return 0;
}

static int measure_qcow2(qk_image *img, qk_image *src, const qk_create_opts *o, qk_measure_result *res)
{
    uint64_t cs = o->cluster_size, size, req = 0, l2e = o->extended_l2 ? 16 : 8;
    unsigned order = 0;
    int r;

    if ((r = check_qcow2_opts(img, o, &order)))
        return r;
    size = src ? qk_size(src) : o->size;
    if (size > INT64_MAX - cs)
        return qk_set_error(img, QK_E_TOO_LARGE, "The image size is too large (try using a larger cluster size)");
    size = (size + cs - 1) / cs * cs;
    if ((size / cs + cs / l2e - 1) / (cs / l2e) * 8 > MAX_L1_BYTES)
        return qk_set_error(img, QK_E_TOO_LARGE, "The image size is too large (try using a larger cluster size)");
    if (src && o->backing_file)
        req = size;
    else if (src && (r = required_data(src, cs, &req)))
        return qk_set_error(img, r, "Unable to get block status: %s", qk_errmsg(src));
    if (o->preallocation == QK_PREALLOC_FULL || o->preallocation == QK_PREALLOC_FALLOC)
        req = size;
    res->fully_allocated = prealloc_size(size, cs, order, o->extended_l2);
    res->required = res->fully_allocated - size + req;
    res->has_bitmaps = o->compat >= 3 && src && src->fmt == QK_FMT_QCOW2 && src->hdr.version >= 3;
    if (res->has_bitmaps && (r = bitmaps_size(src, cs, &res->bitmaps)))
        return qk_set_error(img, r, "%s", qk_errmsg(src));
    return 0;
}

QK_API int qk_measure(qk_image *img, qk_image *src, const qk_create_opts *opts, qk_measure_result *res)
{
    if (!img || !opts || !res)
        return QK_E_INVALID;
    img->errmsg[0] = '\0';
    memset(res, 0, sizeof *res);
    if (opts->struct_version < 1)
        return qk_set_error(img, QK_E_INVALID, "qk_create_opts: unknown struct version %u",
                            opts->struct_version);
    if (opts->format == QK_FMT_QCOW2)
        return measure_qcow2(img, src, opts, res);
    if (opts->format != QK_FMT_RAW)
        return qk_set_error(img, QK_E_INVALID, "Unknown file format");
    if (src) {
        res->required = qk_size(src);
    } else {
        if (opts->size > INT64_MAX - 511)
            return qk_set_error(img, QK_E_TOO_LARGE, "Image size too large");
        res->required = (opts->size + 511) / 512 * 512;
    }
    res->fully_allocated = res->required;
    return 0;
}
