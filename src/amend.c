/*
 * amend.c - qk_amend(): change an image's compat level, lazy_refcounts,
 * refcount width and size in place, as QEMU 7.2's qcow2_amend_options does
 * (block/qcow2.c, qcow2_change_refcount_order in block/qcow2-refcount.c).
 *
 * Steps, in QEMU's order: upgrade (v2 -> v3: header rewritten), refcount
 * width, lazy_refcounts, size, downgrade (v3 -> v2) last.
 *
 * Invariants and write ordering:
 *  1. Every step starts from a flushed image: all cached tables are on disk.
 *  2. Refcount width change: the new refcount table and blocks are built in
 *     memory from the current refcounts and written past the end of the file,
 *     in clusters no current structure uses; the file is flushed; only then
 *     does one header write switch refcount_order, the table offset and its
 *     size together. In the new blocks the old table and blocks are already
 *     free (nothing references them once the header is switched), so a crash
 *     before the switch leaves the old structures in force and the new ones
 *     as unreferenced clusters past the old end (leaks at worst), and a crash
 *     after it leaves a consistent image.
 *  3. lazy_refcounts=off first makes the image clean (flush, dirty bit off).
 *  4. Downgrade: zero clusters are expanded first (a plain zero cluster
 *     becomes unallocated without a backing file, otherwise a cluster of
 *     written zeros; an allocated one gets zeros written over its data and a
 *     normal entry), then the v2 header is written with no feature bits.
 *
 * Refused beyond QEMU (its result would be an image QEMU misreads or that
 * leaks): a downgrade with persistent bitmaps (QEMU 7.2 writes a v2 image
 * that keeps the bitmaps extension, warns on every open and leaks it), with
 * zstd compression (v2 has no compression type: compressed clusters would
 * be read as zlib) and with internal snapshots (zero clusters reached only
 * from a snapshot's tables would not be expanded here).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "endian.h"

static int mark_clean(qk_image *img)
{
    int r = image_mark_clean(img);
    return r < 0 ? qk_set_error(img, r, "Failed to make the image clean: %s", qk_strerror(r)) : 0;
}

static int rewrite_header(qk_image *img)
{
    int r = image_rewrite_header(img);
    return r < 0 ? qk_set_error(img, r, "Failed to update the image header: %s", qk_errmsg(img)) : 0;
}

/* ---- refcount width ----------------------------------------------------- */

/* Entry I of a refcount block B of width BITS (refblock_set for any width). */
static void put_refcount(uint8_t *b, uint64_t i, unsigned bits, uint64_t v)
{
    if (bits < 8) {
        unsigned shift = (unsigned)(i % (8 / bits)) * bits;
        uint8_t mask = (uint8_t)(((1u << bits) - 1) << shift);
        b[i / (8 / bits)] = (uint8_t)((b[i / (8 / bits)] & ~mask) | (v << shift));
    } else if (bits == 8) {
        b[i] = (uint8_t)v;
    } else if (bits == 16) {
        be16_store(b + i * 2, (uint16_t)v);
    } else if (bits == 32) {
        be32_store(b + i * 4, (uint32_t)v);
    } else {
        be64_store(b + i * 8, v);
    }
}

/* Clusters (from index START on, in one run) that hold the new table and
 * blocks for a file of N clusters plus themselves: blocks, table. */
static void new_structure_size(uint64_t n, uint64_t cs, unsigned bits, uint64_t *blocks, uint64_t *table)
{
    uint64_t per_block = cs * 8 / bits, b = 0, t = 0, last;
    do {
        last = b + t;
        b = (n + b + t + per_block - 1) / per_block;
        t = (b * 8 + cs - 1) / cs;
    } while (b + t != last);
    *blocks = b;
    *table = t;
}

static int change_refcount_order(qk_image *img, unsigned order)
{
    uint64_t cs = img->cluster_size, bits = 1ull << order, max = bits == 64 ? UINT64_MAX : (1ull << bits) - 1;
    uint64_t n = (img->file_size + cs - 1) / cs, nb, nt, v;
    uint64_t old_table = img->hdr.reftable_offset, old_table_n = img->hdr.reftable_clusters;
    uint8_t *blocks = NULL, *table = NULL;
    int r;

    uint64_t fsz;
    if ((r = qk_flush(img)) < 0 || (r = img->io->ops->get_size(img->io, &fsz)) < 0)
        return r;
    if ((fsz + cs - 1) / cs > n)
        n = (fsz + cs - 1) / cs;   /* the new structures go past everything */
    new_structure_size(n, cs, (unsigned)bits, &nb, &nt);
    if (nb > SIZE_MAX / cs || nt > UINT32_MAX)
        return qk_set_error(img, QK_E_TOO_LARGE, "The new refcount structures are too large");
    blocks = calloc((size_t)nb, (size_t)cs);
    table = calloc((size_t)nt, (size_t)cs);
    if (!blocks || !table) {
        r = qk_set_error(img, -ENOMEM, "Out of memory for the new refcount structures");
        goto out;
    }
    uint64_t per_block = cs * 8 / bits, table_at = n * cs, blocks_at = table_at + nt * cs;
    for (uint64_t c = 0; c < n + nt + nb; c++) {
        if (c < n) {
            if ((r = refcount_get(img, c, &v)) < 0)
                goto out;
            uint64_t off = c * cs;
            if (off >= old_table && off < old_table + old_table_n * cs)
                v = 0;   /* the old table: free once the header points at the new one */
            for (uint64_t i = 0; v && i < img->reftable_entries; i++)
                if (img->reftable[i] && (img->reftable[i] & REFT_OFFSET_MASK) == off)
                    v = 0;   /* an old refcount block, likewise */
        } else {
            v = 1;       /* the new table and blocks */
        }
        if (v > max) {
            r = qk_set_error(img, -EINVAL, "Cannot decrease refcount entry width to %u bits: Cluster at "
                             "offset %#llx has a refcount of %llu", (unsigned)bits,
                             (unsigned long long)(c * cs), (unsigned long long)v);
            goto out;
        }
        put_refcount(blocks + c / per_block * cs, c % per_block, (unsigned)bits, v);
    }
    for (uint64_t i = 0; i < nb; i++)
        be64_store(table + i * 8, blocks_at + i * cs);
    if ((r = io_pwrite(img->io, table, (size_t)(nt * cs), table_at)) < 0 ||
        (r = io_pwrite(img->io, blocks, (size_t)(nb * cs), blocks_at)) < 0 ||
        (r = img->io->ops->flush(img->io)) < 0) {
        r = qk_set_error(img, r, "Could not write the new refcount structures: %s", qk_strerror(r));
        goto out;
    }
    img->file_size = blocks_at + nb * cs;
    img->hdr.refcount_order = order;
    img->hdr.reftable_offset = table_at;
    img->hdr.reftable_clusters = (uint32_t)nt;
    if ((r = rewrite_header(img)) < 0)
        goto out;
    refcount_close(img);
    img->free_cluster_index = 0;
    r = refcount_open(img);
out:
    free(blocks);
    free(table);
    return r;
}

/* ---- downgrade ---------------------------------------------------------- */

/* qcow2_expand_zero_clusters for the active L1 table. */
static int expand_zero_clusters(qk_image *img)
{
    uint64_t cs = img->cluster_size;
    uint8_t *zeros = calloc(1, (size_t)cs);
    int r = zeros ? 0 : qk_set_error(img, -ENOMEM, "Out of memory");

    for (uint64_t off = 0; r == 0 && off < img->size; off += cs) {
        struct l2_slot s;
        if ((r = l2_entry_get(img, off, &s)) < 0)
            break;
        if (!s.l2_offset) {   /* no L2 table: skip to the next one */
            off = ((off / cs) / img->l2_entries + 1) * img->l2_entries * cs - cs;
            continue;
        }
        if (!(s.entry & OFLAG_ZERO) || (s.entry & OFLAG_COMPRESSED))
            continue;
        if (!(s.entry & L2E_OFFSET_MASK) && !img->hdr.backing_name)
            r = write_drop_entry(img, &s);
        else
            r = qk_pwrite(img, zeros, img->size - off < cs ? img->size - off : cs, off);
    }
    free(zeros);
    if (r == 0)
        r = qk_flush(img);
    return r < 0 ? qk_set_error(img, r, "Failed to turn zero into data clusters: %s", qk_errmsg(img)) : 0;
}

static int downgrade(qk_image *img)
{
    struct qk_header *h = &img->hdr;
    int r;

    if (h->refcount_order != 4)
        return qk_set_error(img, QK_E_UNSUPPORTED, "compat=0.10 requires refcount_bits=16");
    if (h->data_file)
        return qk_set_error(img, QK_E_UNSUPPORTED, "Cannot downgrade an image with a data file");
    if (img->nb_snapshots)
        return qk_set_error(img, QK_E_UNSUPPORTED, "Cannot downgrade an image with internal snapshots");
    if (h->has_bitmaps_ext)
        return qk_set_error(img, QK_E_UNSUPPORTED, "Cannot downgrade an image with persistent bitmaps "
                            "(qcow2 v2 cannot store them); remove them first");
    if ((r = mark_clean(img)) < 0)
        return r;
    if (h->incompat & ~(uint64_t)INCOMPAT_COMPRESSION)
        return qk_set_error(img, QK_E_UNSUPPORTED, "Cannot downgrade an image with incompatible features "
                            "0x%llx set", (unsigned long long)(h->incompat & ~(uint64_t)INCOMPAT_COMPRESSION));
    if (h->compression_type != 0)
        return qk_set_error(img, QK_E_UNSUPPORTED, "Cannot downgrade an image with zstd compression "
                            "(qcow2 v2 only has zlib)");
    if ((r = expand_zero_clusters(img)) < 0)
        return r;
    h->compat = 0;
    h->autoclear = 0;
    h->incompat = 0;
    h->version = 2;
    free(h->unknown_fields);
    h->unknown_fields = NULL;
    h->unknown_fields_len = 0;
    return rewrite_header(img);
}

/* ---- entry point -------------------------------------------------------- */

static int set_lazy_refcounts(qk_image *img, int on, int version)
{
    int r;
    if (on) {
        if (version < 3)
            return qk_set_error(img, QK_E_INVALID, "Lazy refcounts only supported with compatibility level "
                                "1.1 and above (use compat=1.1 or greater)");
        img->hdr.compat |= COMPAT_LAZY_REFCOUNTS;
        return rewrite_header(img);
    }
    if ((r = mark_clean(img)) < 0)
        return r;
    img->hdr.compat &= ~(uint64_t)COMPAT_LAZY_REFCOUNTS;
    return rewrite_header(img);
}

QK_API int qk_amend(qk_image *img, const qk_amend_opts *o)
{
    if (!img || !o)
        return QK_E_INVALID;
    img->errmsg[0] = '\0';
    if (!img->is_open || img->fmt != QK_FMT_QCOW2)
        return qk_set_error(img, QK_E_UNSUPPORTED, "Format driver 'raw' does not support option amendment");
    if (!img->writable)
        return qk_set_error(img, QK_E_READONLY, "The image is opened read-only");
    if (o->struct_version < 1)
        return qk_set_error(img, QK_E_INVALID, "qk_amend_opts: unknown struct version %u", o->struct_version);

    struct qk_header *h = &img->hdr;
    int old_version = (int)h->version, version = o->compat ? o->compat : old_version;
    unsigned order = h->refcount_order;
    int r;

    if (version != 2 && version != 3)
        return qk_set_error(img, QK_E_INVALID, "Unknown compatibility level %d", o->compat);
    if (o->refcount_bits) {
        int rb = o->refcount_bits;
        if (rb < 1 || rb > 64 || (rb & (rb - 1)))
            return qk_set_error(img, QK_E_INVALID,
                                "Refcount width must be a power of two and may not exceed 64 bits");
        for (order = 0; (1 << order) < rb; order++)
            ;
    }
    if (version > old_version) {
        if ((r = qk_flush(img)) < 0)
            return r;
        h->version = (uint32_t)version;
        h->refcount_order = 4;
        if ((r = rewrite_header(img)) < 0)
            return r;
    }
    if (order != h->refcount_order) {
        if (version < 3)
            return qk_set_error(img, QK_E_INVALID, "Refcount widths other than 16 bits require compatibility "
                                "level 1.1 or above (use compat=1.1 or greater)");
        if ((r = change_refcount_order(img, order)) < 0)
            return r;
    }
    if (o->lazy_refcounts >= 0 && o->lazy_refcounts != !!(h->compat & COMPAT_LAZY_REFCOUNTS) &&
        (r = set_lazy_refcounts(img, o->lazy_refcounts, version)) < 0)
        return r;
    if (o->size && o->size != img->size && (r = qk_resize(img, o->size, QK_RESIZE_SHRINK)) < 0)
        return r;
    if (version < old_version && (r = downgrade(img)) < 0)
        return r;
    return 0;
}
