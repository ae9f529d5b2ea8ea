/*
 * check.c - the consistency check and repair of a qcow2 image (qemu-img
 * check, qemu-img check -r leaks|all), and the repair of a dirty
 * lazy-refcounts image on a read-write open.
 *
 * Owns: counting every reference to every host cluster in memory, comparing
 * the counts with the refcounts on disk, QEMU's diagnostic lines and counters
 * (block/qcow2-refcount.c qcow2_check_refcounts and friends, QEMU 7.2), and
 * QEMU's repairs: refcounts raised or lowered, the refcount structure
 * rebuilt, COPIED flags, the dirty and corrupt bits; and the order of the
 * whole run (run_check). The repairs QEMU does not make are in check-fix.c;
 * the state both share is in check-int.h. qemu-reference.md §1.4-1.6, §4.4,
 * §5.5, §7.
 *
 * Counting follows QEMU step by step, so that corruptions, leaks and
 * check-errors agree with qemu-img: header, active L1 and its L2 tables and
 * data (normal, zero-allocated, each host cluster a compressed descriptor
 * spans), snapshot L1/L2 tables and data, snapshot table, refcount table,
 * crypto header, bitmap directory, tables and data, then the refcount blocks.
 *
 * Invariants:
 *  1. The in-memory count array covers [0, nb) clusters, where nb starts at
 *     the file size in clusters and only grows for a reference that ends
 *     less than one cluster past the end of the file (anything further is a
 *     corruption and is not counted): memory follows the real file size.
 *     Counts are 16-bit; a count of 0xFFFF or more lives in a small hash
 *     (only images with refcount_bits > 16 get there).
 *  2. A count never exceeds the image's refcount maximum: a reference more
 *     is reported as overflow, as QEMU does.
 *  3. Every value read from the image is range-checked before it indexes
 *     anything; tables are read whole only when they lie inside the file.
 *
 * Repair order (what makes a repair safe):
 *  0. (check-fix.c) L1/L2 entries QEMU would keep reporting are rewritten in
 *     place and snapshots with unusable L1 tables dropped, before anything
 *     is counted, so that the count sees the final references.
 *  1. Refcounts are repaired first, from the counts: too high (leaks) are
 *     lowered, too low raised; when a refcount block is missing, misplaced
 *     or shared, a new refcount structure is written into clusters nothing
 *     references (count 0), flushed, and only then does the header point at
 *     it; the old structure then shows up as leaks and is freed.
 *  2. COPIED flags are set from the repaired refcounts.
 *  3. Only once every refcount equals its references (no corruption left
 *     but in bitmaps) are refcount overflows given copies and inconsistent
 *     bitmaps removed: new clusters are allocated with accurate refcounts;
 *     the bitmaps' clusters are not freed through their own (untrusted)
 *     pointers but found again as leaks by a second count.
 *  4. The dirty and corrupt bits are cleared last, when nothing is left.
 *
 * Bitmaps: QEMU counts their clusters but reports nothing about them. We
 * report every inconsistent bitmap on its own line (not in the counters,
 * which stay QEMU's, except for problems that make QEMU refuse the image,
 * where there is no QEMU counter to agree with).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "check-int.h"
#include "endian.h"

void ck_msg(struct ck *c, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (c->res->message)
        c->res->message(c->res->opaque, line);
}

/* ---- the in-memory count array ---------------------------------------- */

static uint64_t *ovf_slot(struct ck *c, uint64_t k)
{
    uint64_t h = (k * 0x9E3779B97F4A7C15ull) & (c->ovf_cap - 1);
    while (c->ovf_key[h] && c->ovf_key[h] != k + 1)
        h = (h + 1) & (c->ovf_cap - 1);
    return &c->ovf_key[h];
}

static uint64_t rc_get(struct ck *c, uint64_t k)
{
    if (k >= c->nb)
        return 0;
    if (c->rc[k] != CK_BIG)
        return c->rc[k];
    uint64_t *key = ovf_slot(c, k);
    return c->ovf_val[key - c->ovf_key];
}

static int ovf_grow(struct ck *c)
{
    uint64_t old_cap = c->ovf_cap, *ok = c->ovf_key, *ov = c->ovf_val;
    uint64_t cap = old_cap ? old_cap * 2 : 64;
    c->ovf_key = calloc(cap, 8);
    c->ovf_val = calloc(cap, 8);
    if (!c->ovf_key || !c->ovf_val) {
        free(c->ovf_key);
        free(c->ovf_val);
        c->ovf_key = ok;
        c->ovf_val = ov;
        return -ENOMEM;
    }
    c->ovf_cap = cap;
    for (uint64_t i = 0; i < old_cap; i++) {
        if (!ok[i])
            continue;
        uint64_t *key = ovf_slot(c, ok[i] - 1);
        *key = ok[i];
        c->ovf_val[key - c->ovf_key] = ov[i];
    }
    free(ok);
    free(ov);
    return 0;
}

static int rc_set(struct ck *c, uint64_t k, uint64_t v)
{
    if (v < CK_BIG && c->rc[k] != CK_BIG) {
        c->rc[k] = (uint16_t)v;
        return 0;
    }
    if ((c->ovf_used + 1) * 2 > c->ovf_cap && ovf_grow(c) < 0)
        return -ENOMEM;
    uint64_t *key = ovf_slot(c, k);
    if (!*key) {
        *key = k + 1;
        c->ovf_used++;
    }
    c->ovf_val[key - c->ovf_key] = v;
    c->rc[k] = CK_BIG;
    return 0;
}

static int rc_grow(struct ck *c, uint64_t n)
{
    if (n <= c->nb)
        return 0;
    uint16_t *v = realloc(c->rc, n * sizeof *v);
    if (!v)
        return -ENOMEM;
    memset(v + c->nb, 0, (n - c->nb) * sizeof *v);
    c->rc = v;
    c->nb = n;
    return 0;
}

static void rc_reset(struct ck *c)
{
    memset(c->rc, 0, c->nb * sizeof *c->rc);
    if (c->ovf_cap) {
        memset(c->ovf_key, 0, c->ovf_cap * 8);
        c->ovf_used = 0;
    }
}

/* QEMU's qcow2_inc_refcounts_imrt: one more reference to every cluster of
 * [offset, offset+size). */
static int inc_ref(struct ck *c, uint64_t offset, uint64_t size)
{
    if (size == 0)
        return 0;
    uint64_t end;
    int sane = offset <= (uint64_t)INT64_MAX && !ck_add(offset, size, &end) && end <= (uint64_t)INT64_MAX;
    if (!sane || (end > c->file_len && end - c->file_len >= c->cs)) {
        ck_msg(c, "ERROR: counting reference for region exceeding the end of the file by one "
               "cluster or more: offset 0x%" PRIx64 " size 0x%" PRIx64, offset, size);
        c->res->corruptions++;
        c->rejected = 1;
        if (sane && size <= CK_LEFT_MAX_BYTES && c->nb_left < CK_MAX_LEFT) {
            c->left[c->nb_left].first = offset >> c->cb;
            c->left[c->nb_left].last = (end - 1) >> c->cb;
            c->left[c->nb_left++].counted = 0;
        }
        return 0;
    }
    uint64_t first = offset >> c->cb, last = (end - 1) >> c->cb;
    if (rc_grow(c, last + 1) < 0) {
        c->res->check_errors++;
        return -ENOMEM;
    }
    for (uint64_t k = first; k <= last; k++) {
        uint64_t v = c->rc[k] != CK_BIG ? c->rc[k] : rc_get(c, k);
        if (v == c->rc_max) {
            ck_msg(c, "ERROR: overflow cluster offset=0x%" PRIx64, k << c->cb);
            ck_msg(c, "Use qemu-img amend to increase the refcount entry width or qemu-img convert "
                   "to create a clean copy if the image cannot be opened for writing");
            c->res->corruptions++;
            ck_note_overflow(c, k);
            continue;
        }
        if (v + 1 < CK_BIG && c->rc[k] != CK_BIG)
            c->rc[k] = (uint16_t)(v + 1);
        else if (rc_set(c, k, v + 1) < 0) {
            c->res->check_errors++;
            return -ENOMEM;
        }
    }
    return 0;
}

/* ---- refcounts on disk ------------------------------------------------- */

void ck_memo_reset(struct ck *c)
{
    c->memo_i = UINT64_MAX;
    c->memo_b = NULL;
}

/* QEMU's qcow2_get_refcount: reserved bits of the table entry are ignored,
 * a block past the end of the file reads as zeros, an unaligned block is an
 * error. */
static int disk_rc(struct ck *c, uint64_t k, uint64_t *v)
{
    qk_image *img = c->img;
    uint64_t i = k / img->refblock_entries;
    *v = 0;
    if (i == c->memo_i) {
        *v = refblock_get(img, c->memo_b, k % img->refblock_entries);
        return 0;
    }
    if (i >= img->reftable_entries)
        return 0;
    uint64_t off = img->reftable[i] & REFT_OFFSET_MASK;
    if (!off)
        return 0;
    if (!is_aligned(off, c->cs) || off > MAX_CLUSTER_OFFSET)
        return QK_CORRUPT(img, "Refblock offset %#" PRIx64 " unaligned (reftable index: %#" PRIx64 ")",
                          off, i);
    const uint8_t *b;
    int r = cache_get(img->rb_cache, off, &b);
    if (r < 0)
        return r;
    c->memo_i = i;
    c->memo_b = b;
    *v = refblock_get(img, b, k % img->refblock_entries);
    return 0;
}

/* Change the refcount of cluster K on disk from OLD to NEW (in one step:
 * a 64-bit refcount may be off by 2^63). */
static int disk_rc_adjust(struct ck *c, uint64_t k, uint64_t old, uint64_t new_v)
{
    ck_memo_reset(c);
    if (new_v == old)
        return 0;
    return refcount_change(c->img, k << c->cb, c->cs, new_v > old ? new_v - old : old - new_v, new_v < old);
}

/* ---- L1 and L2 tables -------------------------------------------------- */

enum ctype ck_l2_type(const struct ck *c, uint64_t e)
{
    const qk_image *img = c->img;
    if (e & OFLAG_COMPRESSED)
        return CT_COMPRESSED_;
    if ((e & OFLAG_ZERO) && !img->extl2)
        return (e & L2E_OFFSET_MASK) ? CT_ZERO_ALLOC_ : CT_ZERO_PLAIN_;
    if (!(e & L2E_OFFSET_MASK))
        return (img->data_io != img->io && (e & OFLAG_COPIED)) ? CT_NORMAL_ : CT_UNALLOC_;
    return CT_NORMAL_;
}

uint64_t ck_l2_get(const struct ck *c, const uint8_t *t, uint32_t i, uint64_t *bitmap)
{
    const uint8_t *p = t + (size_t)i * c->img->l2_entry_size;
    *bitmap = c->img->extl2 ? be64_load(p + 8) : 0;
    return be64_load(p);
}

/* QEMU's fix_l2_entry_by_zero: an unaligned preallocated zero cluster
 * becomes a plain zero cluster. */
static int fix_l2_by_zero(struct ck *c, uint64_t l2_offset, uint8_t *t, uint32_t i)
{
    qk_image *img = c->img;
    uint8_t *p = t + (size_t)i * img->l2_entry_size;
    if (img->extl2) {
        uint64_t bm = be64_load(p + 8);
        bm |= bm << 32;
        bm &= 0xffffffff00000000ull;
        be64_store(p + 8, bm);
        be64_store(p, 0);
    } else {
        be64_store(p, OFLAG_ZERO);
    }
    int r = image_write_sync(img, l2_offset + (uint64_t)i * img->l2_entry_size, p, img->l2_entry_size,
                             "an L2 table entry");
    if (r < 0) {
        ck_msg(c, "ERROR: Failed to overwrite L2 table entry: %s", qk_strerror(r));
        c->res->check_errors++;
        return r;
    }
    cache_forget(img->l2_cache, l2_offset);
    c->res->corruptions--;
    c->res->corruptions_fixed++;
    return 0;
}

static int check_l2(struct ck *c, uint64_t l2_offset, int flags)
{
    qk_image *img = c->img;
    uint64_t next_contiguous = 0, bm;
    int has_data_file = img->data_io != img->io;
    int r = io_pread(img->io, c->buf, c->cs, l2_offset);
    if (r < 0) {
        ck_msg(c, "ERROR: I/O error in check_refcounts_l2");
        c->res->check_errors++;
        return r;
    }
    for (uint32_t i = 0; i < img->l2_entries; i++) {
        uint64_t e = ck_l2_get(c, c->buf, i, &bm);
        enum ctype type = ck_l2_type(c, e);
        if (type != CT_COMPRESSED_ && (e & L2E_STD_RESERVED)) {
            ck_msg(c, "ERROR found l2 entry with reserved bits set: %" PRIx64, e);
            c->res->corruptions++;
        }
        switch (type) {
        case CT_COMPRESSED_: {
            uint64_t coff, nsec;
            if (e & OFLAG_COPIED) {
                compressed_extent(img, e, &coff, &nsec);
                ck_msg(c, "ERROR: coffset=0x%" PRIx64 ": copied flag must never be set for compressed clusters",
                    coff);
                e &= ~OFLAG_COPIED;
                c->res->corruptions++;
            }
            if (has_data_file) {
                ck_msg(c, "ERROR compressed cluster %u with data file, entry=0x%" PRIx64, i, e);
                c->res->corruptions++;
                break;
            }
            if (bm) {
                ck_msg(c, "ERROR compressed cluster %u with non-zero subcluster allocation bitmap, "
                       "entry=0x%" PRIx64, i, e);
                c->res->corruptions++;
                break;
            }
            compressed_extent(img, e, &coff, &nsec);
            if ((r = inc_ref(c, coff, nsec * 512 - (coff & 511))) < 0)
                return r;
            if (flags & CK_FRAG_INFO) {
                c->res->allocated_clusters++;
                c->res->compressed_clusters++;
                c->res->fragmented_clusters++;
            }
            break;
        }
        case CT_ZERO_ALLOC_:
        case CT_NORMAL_: {
            uint64_t off = e & L2E_OFFSET_MASK;
            if ((bm >> 32) & bm) {
                c->res->corruptions++;
                ck_msg(c, "ERROR offset=%" PRIx64 ": Allocated cluster has corrupted subcluster allocation bitmap",
                    off);
            }
            if (!is_aligned(off, c->cs)) {
                int has_data = img->extl2 ? (bm & 0xffffffffull) != 0 : !(e & OFLAG_ZERO);
                c->res->corruptions++;
                if (!has_data) {
                    ck_msg(c, "%s offset=%" PRIx64 ": Preallocated cluster is not properly aligned; "
                           "L2 entry corrupted.", (c->fix & QK_CHECK_FIX_ERRORS) ? "Repairing" : "ERROR", off);
                    if ((c->fix & QK_CHECK_FIX_ERRORS) && fix_l2_by_zero(c, l2_offset, c->buf, i) == 0)
                        continue;
                } else {
                    ck_msg(c, "ERROR offset=%" PRIx64 ": Data cluster is not properly aligned; L2 entry corrupted.",
                        off);
                }
            }
            if (flags & CK_FRAG_INFO) {
                c->res->allocated_clusters++;
                if (next_contiguous && off != next_contiguous)
                    c->res->fragmented_clusters++;
                next_contiguous = off + c->cs;
            }
            if (!has_data_file && (r = inc_ref(c, off, c->cs)) < 0)
                return r;
            break;
        }
        case CT_ZERO_PLAIN_:
            break;
        case CT_UNALLOC_:
            if (bm & 0xffffffffull) {
                c->res->corruptions++;
                ck_msg(c, "ERROR: Unallocated cluster has non-zero subcluster allocation map");
            }
            break;
        }
    }
    return 0;
}

static int check_l1(struct ck *c, uint64_t l1_offset, uint32_t l1_size, int flags)
{
    qk_image *img = c->img;
    int r;
    if (!l1_size)
        return 0;
    if ((r = inc_ref(c, l1_offset, (uint64_t)l1_size * 8)) < 0)
        return r;
    uint64_t *l1 = malloc((size_t)l1_size * 8);
    if (!l1) {
        c->res->check_errors++;
        return -ENOMEM;
    }
    /* io_pread reads zeros past the end of the file, as QEMU's file layer. */
    if ((r = io_pread(img->io, l1, (size_t)l1_size * 8, l1_offset)) < 0) {
        ck_msg(c, "ERROR: I/O error in check_refcounts_l1");
        c->res->check_errors++;
        free(l1);
        return r;
    }
    for (uint32_t i = 0; i < l1_size && r == 0; i++) {
        uint64_t e = be64_load(&l1[i]);
        if (!e)
            continue;
        if (e & L1E_RESERVED_MASK) {
            ck_msg(c, "ERROR found L1 entry with reserved bits set: %" PRIx64, e);
            c->res->corruptions++;
        }
        uint64_t l2_offset = e & L1E_OFFSET_MASK;
        if ((r = inc_ref(c, l2_offset, c->cs)) < 0)
            break;
        if (!is_aligned(l2_offset, c->cs)) {
            ck_msg(c, "ERROR l2_offset=%" PRIx64 ": Table is not cluster aligned; L1 entry corrupted", l2_offset);
            c->res->corruptions++;
        }
        r = check_l2(c, l2_offset, flags);
    }
    free(l1);
    return r;
}

/* ---- bitmaps ----------------------------------------------------------- */

static void bitmap_problem(struct ck *c, uint32_t i, const char *why)
{
    if (!c->bm[i].problem)
        c->bm[i].problem = why;
}

/* QEMU's check_table_entry. */
static int bad_table_entry(uint64_t e, uint64_t cs)
{
    uint64_t off = e & BME_TABLE_OFFSET_MASK;
    return (e & BME_TABLE_RESERVED) || (off && ((e & BME_TABLE_ALL_ONES) || !is_aligned(off, cs)));
}

/* Count one bitmap's table and data (QEMU's qcow2_check_bitmaps_refcounts
 * for a bitmap whose directory entry QEMU accepts). */
static int count_bitmap(struct ck *c, uint32_t i)
{
    qk_image *img = c->img;
    const struct qk_bitmap *b = &img->bitmaps[i];
    uint64_t bytes = (uint64_t)b->table_size * 8;
    int r;
    if (!b->table_offset || !is_aligned(b->table_offset, c->cs) || !b->table_size ||
        b->table_size > BME_MAX_TABLE_SIZE) {
        bitmap_problem(c, i, b->reason ? b->reason : "its bitmap table is invalid");
        return 0;
    }
    int64_t before = c->res->corruptions;
    if ((r = inc_ref(c, b->table_offset, bytes)) < 0)
        return r;
    if (c->res->corruptions != before || b->table_offset + bytes > c->file_len) {
        bitmap_problem(c, i, "its bitmap table is past the end of the file");
        return 0;
    }
    uint64_t *t = malloc(bytes);
    if (!t) {
        c->res->check_errors++;
        return -ENOMEM;
    }
    if ((r = io_pread(img->io, t, bytes, b->table_offset)) < 0) {
        free(t);
        ck_msg(c, "ERROR: could not read the table of bitmap '%s': %s", b->name, qk_strerror(r));
        c->res->check_errors++;
        return r;
    }
    for (uint32_t j = 0; j < b->table_size; j++) {
        uint64_t e = be64_load(&t[j]), off = e & BME_TABLE_OFFSET_MASK;
        t[j] = e;
        if (bad_table_entry(e, c->cs)) {
            c->res->corruptions++;
            bitmap_problem(c, i, "an entry of its bitmap table is invalid");
            if ((b->flags & BME_FLAG_IN_USE) && !(c->fix & QK_CHECK_FIX_ERRORS)) {
                /* QEMU opens the image (an in-use table is not loaded),
                 * then its check stops here with -EINVAL. */
                ck_msg(c, "ERROR bitmap '%s': table entry %u (%" PRIx64 ") is invalid; the check stops here "
                       "as qemu-img's does (repair with -r all)", b->name, j, e);
                free(t);
                return -EINVAL;
            }
            continue;
        }
        before = c->res->corruptions;
        if (off && (r = inc_ref(c, off, c->cs)) < 0) {
            free(t);
            return r;
        }
        if (c->res->corruptions != before)
            bitmap_problem(c, i, "a data cluster is past the end of the file");
    }
    c->bm[i].table = t;
    return 0;
}

/* Which of QEMU's rules makes it refuse the whole directory (then QEMU
 * cannot open the image at all). */
static int qemu_refuses(const struct qk_bitmap *b)
{
    return b->reason && !(b->flags & BME_FLAG_IN_USE);
}

static int count_bitmaps_counted(struct ck *c);

static int count_bitmaps(struct ck *c)
{
    qk_image *img = c->img;
    const struct qk_header *h = &img->hdr;
    int r;
    free(c->bm);
    c->bm = NULL;
    c->count_bitmaps = 0;
    if (!h->has_bitmaps_ext)
        return 0;
    c->bm = calloc(img->nb_bitmaps ? img->nb_bitmaps : 1, sizeof *c->bm);
    if (!c->bm) {
        c->res->check_errors++;
        return -ENOMEM;
    }
    /* QEMU ignores an extension with the autoclear bit clear (or in a v2
     * image): nothing of it is counted, and its clusters are leaks. */
    if (h->version < 3 || !(h->autoclear & AUTOCLEAR_BITMAPS))
        return 0;
    c->count_bitmaps = 1;
    if (h->bitmaps_ext_error || !h->bitmaps.dir_size)
        return 0;
    int64_t before = c->res->corruptions;
    r = count_bitmaps_counted(c);
    c->bm_corrupt += c->res->corruptions - before;
    return r;
}

static int count_bitmaps_counted(struct ck *c)
{
    qk_image *img = c->img;
    const struct qk_header *h = &img->hdr;
    int r;
    if (is_aligned(h->bitmaps.dir_offset, c->cs) && h->bitmaps.dir_offset &&
        (r = inc_ref(c, h->bitmaps.dir_offset, h->bitmaps.dir_size)) < 0)
        return r;
    if (img->bitmap_dir_error)
        return 0;
    for (uint32_t i = 0; i < img->nb_bitmaps; i++) {
        const struct qk_bitmap *b = &img->bitmaps[i];
        if (b->reason)
            bitmap_problem(c, i, b->reason);
        if (!qemu_refuses(b) && (r = count_bitmap(c, i)) < 0)
            return r;
    }
    return 0;
}

void ck_free_bitmaps(struct ck *c)
{
    if (c->bm)
        for (uint32_t i = 0; i < c->img->nb_bitmaps; i++)
            free(c->bm[i].table);
    free(c->bm);
    c->bm = NULL;
}

/* After counting: a bitmap cluster that something else also references
 * means the bitmap's table or data overlaps other structures; a bitmap
 * cluster whose refcount on disk is wrong is reported for that bitmap. */
static void review_bitmaps(struct ck *c)
{
    qk_image *img = c->img;
    if (!c->bm)
        return;
    for (uint32_t i = 0; i < img->nb_bitmaps; i++) {
        const struct qk_bitmap *b = &img->bitmaps[i];
        uint64_t *t = c->bm[i].table;
        if (!t)
            continue;
        for (int64_t j = -1; j < (int64_t)b->table_size; j++) {
            uint64_t first, n;
            if (j < 0) {
                first = b->table_offset >> c->cb;
                n = div_round_up((uint64_t)b->table_size * 8, c->cs);
            } else {
                uint64_t off = t[j] & BME_TABLE_OFFSET_MASK;
                if (!off || bad_table_entry(t[j], c->cs))
                    continue;
                first = off >> c->cb;
                n = 1;
            }
            for (uint64_t k = first; k < first + n; k++) {
                uint64_t disk = 0, mem = rc_get(c, k);
                if (mem > 1)
                    bitmap_problem(c, i, j < 0 ? "its bitmap table overlaps other metadata or data"
                                               : "a data cluster is also used by something else");
                if (disk_rc(c, k, &disk) == 0 && disk != mem)
                    ck_msg(c, "Bitmap '%s': cluster %" PRIu64 " refcount=%" PRIu64 " reference=%" PRIu64,
                        b->name, k, disk, mem);
            }
        }
    }
    for (uint32_t i = 0; i < img->nb_bitmaps; i++) {
        if (!c->bm[i].problem)
            continue;
        c->res->bitmaps_inconsistent++;
        /* Not an error where QEMU sees none (in use): a warning. */
        ck_msg(c, "%s bitmap '%s' is inconsistent (%s)",
               (c->fix & QK_CHECK_FIX_ERRORS) ? "Repairing"
               : qemu_refuses(&img->bitmaps[i]) || c->bm[i].table == NULL ? "ERROR" : "Warning:",
               img->bitmaps[i].name, c->bm[i].problem);
        /* QEMU refuses such a directory, or never sees the problem: count
         * it only when QEMU would not open the image (no counter to agree
         * with), so that QEMU's counters stay ours. */
        if (qemu_refuses(&img->bitmaps[i])) {
            c->res->corruptions++;
            c->bm_corrupt++;
            c->bm[i].counted_corrupt = 1;
        }
    }
    if (img->hdr.has_bitmaps_ext && img->bitmap_dir_error && c->count_bitmaps) {
        c->res->bitmaps_inconsistent += img->nb_bitmaps ? 0 : 1;
        c->res->corruptions++;
        c->bm_corrupt++;
        ck_msg(c, "%s bitmaps extension cannot be used: %s",
            (c->fix & QK_CHECK_FIX_ERRORS) ? "Repairing" : "ERROR", img->bitmap_dir_reason);
    } else if (img->hdr.has_bitmaps_ext && !c->count_bitmaps) {
        ck_msg(c, "Warning: the bitmaps extension is ignored (%s); its clusters are leaked",
            img->hdr.version < 3 ? "v2 image" : "the bitmaps autoclear bit is clear");
    }
}

/* ---- refcount blocks --------------------------------------------------- */

static int truncate_file(struct ck *c, uint64_t size)
{
    qk_image *img = c->img;
    int r = img->io->ops->truncate(img->io, size);
    if (r == 0)
        r = img->io->ops->get_size(img->io, &c->file_len);
    if (r == 0)
        img->file_size = c->file_len;
    return r;
}

static int check_refblocks(struct ck *c)
{
    qk_image *img = c->img;
    int r;
    for (uint64_t i = 0; i < img->reftable_entries; i++) {
        uint64_t e = img->reftable[i], off = e & REFT_OFFSET_MASK, k = off >> c->cb;
        if (e & REFT_RESERVED_MASK) {
            ck_msg(c, "ERROR refcount table entry %" PRIu64 " has reserved bits set", i);
            c->res->corruptions++;
            c->rebuild = 1;
            continue;
        }
        if (!is_aligned(off, c->cs)) {
            ck_msg(c, "ERROR refcount block %" PRIu64 " is not cluster aligned; refcount table entry corrupted", i);
            c->res->corruptions++;
            c->rebuild = 1;
            continue;
        }
        if (k >= c->nb) {
            c->res->corruptions++;
            ck_msg(c, "%s refcount block %" PRIu64 " is outside image",
                (c->fix & QK_CHECK_FIX_ERRORS) ? "Repairing" : "ERROR", i);
            if (!(c->fix & QK_CHECK_FIX_ERRORS))
                continue;
            /* QEMU grows the file up to the block; far away that would make
             * a huge sparse file and a count array to match (memory follows
             * the real file size): rebuild instead. */
            if (off > 2 * c->file_len + ((uint64_t)64 << 20)) {
                ck_msg(c, "ERROR refcount block %" PRIu64 " is far past the end of the file; "
                       "rebuilding the refcount structure instead of growing the file", i);
                c->rebuild = 1;
                continue;
            }
            r = off > MAX_CLUSTER_OFFSET ? -EINVAL : truncate_file(c, off + c->cs);
            if (r == 0 && (r = rc_grow(c, div_round_up(c->file_len, c->cs))) < 0) {
                c->res->check_errors++;
                return r;
            }
            if (r == 0 && k >= c->nb)
                r = -EINVAL;
            if (r < 0) {
                c->rebuild = 1;
                ck_msg(c, "ERROR could not resize image: %s", strerror(r > -1000 ? -r : EINVAL));
                continue;
            }
            c->grown = 1;
            c->res->corruptions--;
            c->res->corruptions_fixed++;
            if ((r = inc_ref(c, off, c->cs)) < 0)
                return r;
            continue;
        }
        if (off) {
            if ((r = inc_ref(c, off, c->cs)) < 0)
                return r;
            uint64_t v = rc_get(c, k);
            if (v != 1) {
                ck_msg(c, "ERROR refcount block %" PRIu64 " refcount=%" PRIu64, i, v);
                c->res->corruptions++;
                c->rebuild = 1;
            }
        }
    }
    return 0;
}

/* QEMU's calculate_refcounts. */
static int calculate(struct ck *c)
{
    qk_image *img = c->img;
    const struct qk_header *h = &img->hdr;
    int r;
    ck_free_bitmaps(c);
    c->bm_corrupt = 0;
    c->nb_over = 0;
    c->rejected = c->grown = 0;
    c->nb_left = 0;
    if ((r = inc_ref(c, 0, c->cs)) < 0)
        return r;
    if ((r = check_l1(c, h->l1_offset, img->l1_size, CK_FRAG_INFO)) < 0)
        return r;
    if (img->data_io != img->io && img->nb_snapshots)
        ck_msg(c, "ERROR %u snapshots in image with data file", img->nb_snapshots);
    for (uint32_t i = 0; i < img->nb_snapshots; i++) {
        const struct qk_snapshot *sn = &img->snapshots[i];
        if (!is_aligned(sn->l1_offset, c->cs)) {
            ck_msg(c, "ERROR snapshot %s (%s) l1_offset=%#" PRIx64 ": L1 table is not cluster aligned; snapshot table entry corrupted",
                sn->id, sn->name, sn->l1_offset);
            c->res->corruptions++;
            continue;
        }
        if (sn->l1_size > MAX_L1_BYTES / 8) {
            ck_msg(c, "ERROR snapshot %s (%s) l1_size=%#" PRIx32 ": L1 table is too large; snapshot table "
                   "entry corrupted", sn->id, sn->name, sn->l1_size);
            c->res->corruptions++;
            continue;
        }
        if ((r = check_l1(c, sn->l1_offset, sn->l1_size, 0)) < 0)
            return r;
    }
    if ((r = inc_ref(c, h->snapshots_offset, img->snapshots_size)) < 0)
        return r;
    if ((r = inc_ref(c, h->reftable_offset, (uint64_t)img->reftable_entries * 8)) < 0)
        return r;
    if (h->has_crypto_ext && h->crypto_length && (r = inc_ref(c, h->crypto_offset, h->crypto_length)) < 0)
        return r;
    if ((r = count_bitmaps(c)) < 0)
        return r;
    return check_refblocks(c);
}

/* QEMU's compare_refcounts. */
static void compare(struct ck *c, unsigned fix, uint64_t *highest)
{
    *highest = 0;
    for (uint64_t i = 0; i < c->nb; i++) {
        uint64_t r1, r2 = rc_get(c, i);
        int r = disk_rc(c, i, &r1);
        if (r < 0) {
            ck_msg(c, "Can't get refcount for cluster %" PRIu64 ": %s", i,
                r == QK_E_CORRUPT ? "Input/output error" : qk_strerror(r));
            c->res->check_errors++;
            continue;
        }
        if (r1 || r2)
            *highest = i;
        if (r1 == r2)
            continue;
        int64_t *fixed = NULL;
        if (r1 == 0)
            c->rebuild = 1;
        else if (r1 > r2 && (fix & QK_CHECK_FIX_LEAKS))
            fixed = &c->res->leaks_fixed;
        else if (r1 < r2 && (fix & QK_CHECK_FIX_ERRORS))
            fixed = &c->res->corruptions_fixed;
        ck_msg(c, "%s cluster %" PRIu64 " refcount=%" PRIu64 " reference=%" PRIu64,
            fixed ? "Repairing" : r1 < r2 ? "ERROR" : "Leaked", i, r1, r2);
        if (fixed && disk_rc_adjust(c, i, r1, r2) == 0) {
            (*fixed)++;
            continue;
        }
        if (r1 < r2)
            c->res->corruptions++;
        else
            c->res->leaks++;
    }
}

/* ---- rebuilding the refcount structure ---------------------------------- */

/* Cluster K belongs to a reference the count left out past the end of the
 * file and the rebuild has not counted yet. */
static int left_out(const struct ck *c, uint64_t k)
{
    for (unsigned i = 0; i < c->nb_left; i++)
        if (!c->left[i].counted && k >= c->left[i].first && k <= c->left[i].last)
            return 1;
    return 0;
}

/* First run of N clusters with count 0 at or after *hint (the array grows
 * past the end as needed), outside the references left out; they get
 * count 1. */
static int alloc_imrt(struct ck *c, uint64_t n, uint64_t *hint, uint64_t *first)
{
    uint64_t k = *hint, run = 0;
    for (;; k++) {
        if ((k >= c->nb || rc_get(c, k) == 0) && !left_out(c, k)) {
            if (++run == n)
                break;
        } else {
            run = 0;
        }
    }
    *first = k + 1 - n;
    if (rc_grow(c, k + 1) < 0)
        return -ENOMEM;
    for (uint64_t i = *first; i <= k; i++)
        c->rc[i] = 1;
    if (*first == *hint)
        *hint = k + 1;
    return 0;
}

static int range_used(struct ck *c, uint64_t first, uint64_t n)
{
    for (uint64_t k = first; k < first + n && k < c->nb; k++)
        if (c->rc[k])
            return 1;
    return 0;
}

/* Write refcount blocks and a refcount table describing the counts into
 * clusters nothing references, then point the header at them (QEMU's
 * rebuild_refcount_structure, same first-fit placement). */
static int rebuild(struct ck *c)
{
    qk_image *img = c->img;
    uint64_t per = img->refblock_entries, hint = 0, *rt = NULL, rt_n = 0;
    uint64_t table_first = 0, table_n = 0;
    uint8_t *blk = NULL;
    int r = 0;
    ck_msg(c, "Rebuilding refcount structure");
    ck_memo_reset(c);
    if ((r = ck_flush(img)) < 0)
        return r;
    for (int changed = 1; changed;) {
        changed = 0;
        /* A reference the count left out past the end of the file (the
         * snapshot table) lies inside it once the new structure is written
         * past its start: count it then, so that the new refcounts cover it
         * and no allocation lands on it. */
        for (unsigned i = 0; i < c->nb_left; i++) {
            if (c->left[i].counted || c->left[i].first >= c->nb)
                continue;
            if ((r = rc_grow(c, c->left[i].last + 1)) < 0)
                goto out;
            for (uint64_t k = c->left[i].first; k <= c->left[i].last && r == 0; k++)
                if (rc_get(c, k) < c->rc_max)
                    r = rc_set(c, k, rc_get(c, k) + 1);
            if (r < 0)
                goto out;
            c->left[i].counted = 1;
            changed = 1;
        }
        uint64_t nblocks = div_round_up(c->nb, per);
        if (nblocks > rt_n) {
            uint64_t *v = realloc(rt, nblocks * 8);
            if (!v) {
                r = -ENOMEM;
                goto out;
            }
            memset(v + rt_n, 0, (nblocks - rt_n) * 8);
            rt = v;
            rt_n = nblocks;
        }
        /* Up to rt_n: an allocation may grow the count array past it (over a
         * reference left out), the next pass covers those blocks. */
        for (uint64_t bi = 0; bi < rt_n; bi++) {
            if (rt[bi] || !range_used(c, bi * per, per))
                continue;
            uint64_t k;
            if ((r = alloc_imrt(c, 1, &hint, &k)) < 0)
                goto out;
            rt[bi] = k << c->cb;
            changed = 1;
        }
        uint64_t need = div_round_up(div_round_up(c->nb, per) * 8, c->cs);
        if (need > table_n) {
            for (uint64_t k = table_first; k < table_first + table_n; k++)
                c->rc[k] = 0;
            if ((r = alloc_imrt(c, need, &hint, &table_first)) < 0)
                goto out;
            table_n = need;
            changed = 1;
        }
    }
    if (table_n * c->cs > MAX_REFTABLE_BYTES) {
        r = QK_E_TOO_LARGE;
        goto out;
    }
    if (!(blk = malloc(table_n * c->cs))) {
        r = -ENOMEM;
        goto out;
    }
    for (uint64_t bi = 0; bi < rt_n && r == 0; bi++) {
        if (!rt[bi])
            continue;
        memset(blk, 0, c->cs);
        for (uint64_t j = 0; j < per && bi * per + j < c->nb; j++)
            refblock_set(img, blk, j, rc_get(c, bi * per + j));
        r = io_pwrite(img->io, blk, c->cs, rt[bi]);
    }
    memset(blk, 0, table_n * c->cs);
    for (uint64_t bi = 0; bi < rt_n; bi++)
        be64_store(blk + bi * 8, rt[bi]);
    if (r == 0)
        r = io_pwrite(img->io, blk, table_n * c->cs, table_first << c->cb);
    if (r == 0)
        r = img->io->ops->flush(img->io);
    if (r < 0)
        goto out;
    uint8_t hdr[12];
    be64_store(hdr, table_first << c->cb);
    be32_store(hdr + 8, (uint32_t)table_n);
    if ((r = image_write_sync(img, HDR_REFTABLE_OFFSET, hdr, sizeof hdr, "the header")) < 0)
        goto out;
    img->hdr.reftable_offset = table_first << c->cb;
    img->hdr.reftable_clusters = (uint32_t)table_n;
    refcount_close(img);
    if ((r = img->io->ops->get_size(img->io, &c->file_len)) == 0) {
        img->file_size = c->file_len;
        img->free_cluster_index = 0;
        r = refcount_open(img);
    }
out:
    if (r < 0 && r != QK_E_CORRUPT)
        ck_msg(c, "ERROR: could not rebuild the refcount structure: %s", qk_strerror(r));
    free(rt);
    free(blk);
    return r;
}

/* ---- COPIED flags -------------------------------------------------------- */

static int check_copied(struct ck *c, unsigned fix)
{
    qk_image *img = c->img;
    int repair, r;
    if (fix & QK_CHECK_FIX_ERRORS)
        repair = 1;
    else if (fix & QK_CHECK_FIX_LEAKS)
        repair = !c->res->check_errors && !c->res->corruptions && !c->res->leaks;
    else
        repair = 0;
    for (uint32_t i = 0; i < img->l1_size; i++) {
        uint64_t l1e = img->l1[i], l2_offset = l1e & L1E_OFFSET_MASK, rc, bm;
        if (!l2_offset)
            continue;
        if (disk_rc(c, l2_offset >> c->cb, &rc) < 0)
            continue;
        if ((rc == 1) != ((l1e & OFLAG_COPIED) != 0)) {
            c->res->corruptions++;
            ck_msg(c, "%s OFLAG_COPIED L2 cluster: l1_index=%u l1_entry=%" PRIx64 " refcount=%" PRIu64,
                repair ? "Repairing" : "ERROR", i, l1e, rc);
            if (repair) {
                if ((r = l1_entry_set(img, i, rc == 1 ? l1e | OFLAG_COPIED : l1e & ~OFLAG_COPIED)) < 0) {
                    c->res->check_errors++;
                    return r;
                }
                c->res->corruptions--;
                c->res->corruptions_fixed++;
            }
        }
        if ((r = io_pread(img->io, c->buf, c->cs, l2_offset)) < 0) {
            ck_msg(c, "ERROR: Could not read L2 table: %s", qk_strerror(r));
            c->res->check_errors++;
            return r;
        }
        int dirty = 0;
        for (uint32_t j = 0; j < img->l2_entries; j++) {
            uint64_t e = ck_l2_get(c, c->buf, j, &bm);
            enum ctype t = ck_l2_type(c, e);
            if (t != CT_NORMAL_ && t != CT_ZERO_ALLOC_)
                continue;
            if (img->data_io != img->io)
                rc = 1;
            else if (disk_rc(c, (e & L2E_OFFSET_MASK) >> c->cb, &rc) < 0)
                continue;
            if ((rc == 1) == ((e & OFLAG_COPIED) != 0))
                continue;
            c->res->corruptions++;
            ck_msg(c, "%s OFLAG_COPIED data cluster: l2_entry=%" PRIx64 " refcount=%" PRIu64,
                repair ? "Repairing" : "ERROR", e, rc);
            if (repair) {
                be64_store(c->buf + (size_t)j * img->l2_entry_size, rc == 1 ? e | OFLAG_COPIED : e & ~OFLAG_COPIED);
                dirty++;
            }
        }
        if (!dirty)
            continue;
        const char *what = overlap_find(img, l2_offset, c->cs);
        if (what && strcmp(what, "active L2 table")) {
            ck_msg(c, "ERROR: Could not write L2 table; metadata overlap check failed: %s", "Input/output error");
            c->res->check_errors++;
            return QK_E_CORRUPT;
        }
        cache_forget(img->l2_cache, l2_offset);
        if ((r = io_pwrite(img->io, c->buf, c->cs, l2_offset)) < 0) {
            ck_msg(c, "ERROR: Could not write L2 table: %s", qk_strerror(r));
            c->res->check_errors++;
            return r;
        }
        c->res->corruptions -= dirty;
        c->res->corruptions_fixed += dirty;
    }
    return 0;
}

/* ---- the whole check ----------------------------------------------------- */

/* qk_flush() without the open-handle check (the dirty repair runs inside
 * the open). */
int ck_flush(qk_image *img)
{
    if (!img->writable)
        return 0;
    int r = cache_write_dirty(img->l2_cache);
    if (r == 0)
        r = cache_write_dirty(img->rb_cache);
    if (r == 0)
        r = img->io->ops->flush(img->io);
    return r < 0 ? qk_set_error(img, r, "Flush failed: %s", qk_strerror(r)) : 0;
}

static void result_reset(qk_check_result *res)
{
    void (*m)(void *, const char *) = res->message;
    void *o = res->opaque;
    memset(res, 0, sizeof *res);
    res->struct_version = QK_CHECK_RESULT_VERSION;
    res->message = m;
    res->opaque = o;
}

/* The count grew the file up to a refcount block past its end (QEMU's
 * repair) after leaving out a reference past the end of the file: that
 * reference may lie inside the file now. Left out, its clusters look free, a
 * rebuild would place the new refcount structure there, and the repair that
 * later moves the referencing structure (the snapshot table) would free them
 * under the new structure. Count again from BEFORE, quietly (the first count
 * wrote the lines), keeping what it fixed. */
static int recount(struct ck *c, const qk_check_result *before)
{
    qk_check_result *res = c->res, first = *res;
    *res = *before;
    res->message = NULL;
    rc_reset(c);
    c->rebuild = 0;
    int r = calculate(c);
    res->message = first.message;
    res->corruptions_fixed += first.corruptions_fixed - before->corruptions_fixed;
    res->leaks_fixed += first.leaks_fixed - before->leaks_fixed;
    return r;
}

/* QEMU's qcow2_check_refcounts + check_oflag_copied. */
static int check_refcounts(struct ck *c)
{
    qk_check_result *res = c->res;
    uint64_t highest = 0;
    int r;
    res->total_clusters = div_round_up(c->img->size, c->cs);
    c->rebuild = 0;
    ck_memo_reset(c);
    qk_check_result before = *res;
    if ((r = calculate(c)) < 0)
        return r;
    if (c->rejected && c->grown && (r = recount(c, &before)) < 0)
        return r;
    review_bitmaps(c);
    qk_check_result pre = *res;
    compare(c, 0, &highest);
    if (c->rebuild && (c->fix & QK_CHECK_FIX_ERRORS)) {
        qk_check_result old = *res;
        int64_t fresh_leaks = 0, fresh_corruptions = 0;
        if ((r = rebuild(c)) < 0) {
            res->check_errors++;
            return r;
        }
        res->corruptions = res->leaks = 0;
        c->rebuild = 0;
        rc_reset(c);
        if ((r = calculate(c)) < 0)
            return r;
        if (c->fix & QK_CHECK_FIX_LEAKS) {
            qk_check_result saved = *res;
            result_reset(res);
            compare(c, QK_CHECK_FIX_LEAKS, &highest);
            if (c->rebuild)
                ck_msg(c, "ERROR rebuilt refcount structure is still broken");
            fresh_leaks = res->leaks;
            /* QEMU ignores these; we report them as left, since a repair
             * must not claim a clean image it did not make. */
            fresh_corruptions = res->corruptions;
            *res = saved;
        }
        if (res->corruptions < old.corruptions)
            res->corruptions_fixed += old.corruptions - res->corruptions;
        if (res->leaks < old.leaks)
            res->leaks_fixed += old.leaks - res->leaks;
        res->leaks += fresh_leaks;
        res->corruptions += fresh_corruptions;
    } else if (c->fix) {
        if (c->rebuild) {
            ck_msg(c, "ERROR need to rebuild refcount structures");
            res->check_errors++;
            return -EIO;
        }
        if (res->leaks || res->corruptions) {
            uint64_t keep_inc = res->bitmaps_inconsistent;
            *res = pre;
            res->bitmaps_inconsistent = keep_inc;
            compare(c, c->fix, &highest);
        }
    }
    ck_memo_reset(c);
    if ((r = ck_flush(c->img)) < 0) {
        res->check_errors++;
        return r;
    }
    if ((r = check_copied(c, c->fix)) < 0)
        return r;
    res->image_end_offset = (highest + 1) * c->cs;
    return 0;
}

static int run_check(qk_image *img, unsigned fix, qk_check_result *res)
{
    struct ck c = { .img = img, .res = res, .fix = fix & (QK_CHECK_FIX_LEAKS | QK_CHECK_FIX_ERRORS) };
    ck_memo_reset(&c);
    int r;
    result_reset(res);
    c.cs = img->cluster_size;
    c.cb = img->cluster_bits;
    if ((r = refcount_ensure(img)) < 0 || (r = img->io->ops->get_size(img->io, &c.file_len)) < 0) {
        res->check_errors++;
        return r;
    }
    c.rc_max = img->refcount_bits == 64 ? UINT64_MAX : (1ull << img->refcount_bits) - 1;
    if (div_round_up(c.file_len, c.cs) > INT32_MAX) {   /* QEMU's limit too */
        res->check_errors++;
        return -EFBIG;
    }
    c.buf = malloc(c.cs);
    if (!c.buf || rc_grow(&c, div_round_up(c.file_len, c.cs)) < 0) {
        free(c.buf);
        res->check_errors++;
        return -ENOMEM;
    }
    int64_t incomplete = ck_snapshots_incomplete(&c);
    r = (c.fix & QK_CHECK_FIX_ERRORS) ? ck_fix_entries(&c) : 0;
    if (r == 0 && (c.fix & QK_CHECK_FIX_ERRORS) && (r = ck_drop_broken_snapshots(&c)) > 0)
        r = 0;
    if (r == 0)
        r = check_refcounts(&c);
    for (int round = 0; round < 4 && r == 0 && (c.fix & QK_CHECK_FIX_ERRORS) && c.nb_over &&
                        !res->check_errors && (r = ck_unshare_overflows(&c)) > 0; round++) {
        /* Count again: the copies are new references, the overflow gone. */
        qk_check_result first = *res;
        result_reset(res);
        rc_reset(&c);
        c.nb_over = 0;
        r = check_refcounts(&c);
        res->corruptions_fixed += first.corruptions_fixed;
        res->leaks_fixed += first.leaks_fixed;
    }
    if (r == 0 && (c.fix & QK_CHECK_FIX_ERRORS) && !(fix & CK_NO_BITMAP_REPAIR) &&
        res->corruptions <= c.bm_corrupt && !res->check_errors && (r = ck_remove_bad_bitmaps(&c)) > 0) {
        /* Second pass: the removed bitmaps' clusters are leaks now. */
        qk_check_result first = *res;
        result_reset(res);
        rc_reset(&c);
        r = check_refcounts(&c);
        res->corruptions_fixed += first.corruptions_fixed;
        res->leaks_fixed += first.leaks_fixed;
        res->bitmaps_inconsistent = first.bitmaps_inconsistent;
        res->bitmaps_removed = first.bitmaps_removed;
    }
    if (r == 0 && incomplete) {
        /* Counted apart, as QEMU's snapshot result is added after the
         * refcount result (a rebuild resets the latter). */
        /* Freeing the old table can bring a cluster it shared with an L2
         * table or data cluster down to refcount 1 after check_copied ran:
         * fix the COPIED flags again. */
        if ((c.fix & QK_CHECK_FIX_ERRORS) && !res->check_errors && (r = ck_fix_snapshot_extra(&c)) == 0 &&
            (r = check_copied(&c, c.fix)) == 0)
            res->corruptions_fixed += incomplete;
        else
            res->corruptions += incomplete;
    }
    if (r == 0 && c.fix && !res->check_errors && !res->corruptions &&
        (img->hdr.incompat & (INCOMPAT_DIRTY | INCOMPAT_CORRUPT))) {
        if ((r = ck_flush(img)) == 0 &&
            (r = image_write_be64_sync(img, HDR_INCOMPAT, img->hdr.incompat & ~(INCOMPAT_DIRTY | INCOMPAT_CORRUPT),
                                       "the header")) == 0) {
            img->hdr.incompat &= ~(INCOMPAT_DIRTY | INCOMPAT_CORRUPT);
            img->lazy_dirty = 0;
            img->broken = 0;
        }
    }
    ck_free_bitmaps(&c);
    free(c.rc);
    free(c.ovf_key);
    free(c.ovf_val);
    free(c.over);
    free(c.over_n);
    free(c.buf);
    return r < 0 ? r : 0;
}

int check_image(qk_image *img, unsigned fix, qk_check_result *res)
{
    if (fix && !img->writable)
        return qk_set_error(img, QK_E_READONLY, "Repairs need an image opened read-write");
    return run_check(img, fix, res);
}

static void dirty_message(void *opaque, const char *line)
{
    qk_add_warning(opaque, "%s", line);
}

int check_repair_dirty(qk_image *img)
{
    qk_check_result res = QK_CHECK_RESULT_INIT;
    res.message = dirty_message;
    res.opaque = img;
    int r = run_check(img, QK_CHECK_FIX_LEAKS | QK_CHECK_FIX_ERRORS | CK_NO_BITMAP_REPAIR, &res);
    if (r < 0 || res.check_errors)
        return qk_set_error(img, r < 0 ? r : -EIO, "Could not repair dirty image: %s",
                            r < 0 ? qk_strerror(r) : "Input/output error");
    return 0;
}

QK_API int qk_check(qk_image *img, unsigned flags, qk_check_result *res)
{
    if (!img || !res)
        return -EINVAL;
    if (!img->is_open)
        return qk_set_error(img, QK_E_INVALID, "The image is not open");
    if (img->fmt != QK_FMT_QCOW2)
        return qk_set_error(img, QK_E_UNSUPPORTED, "This image format does not support checks");
    if (flags & ~(QK_CHECK_FIX_LEAKS | QK_CHECK_FIX_ERRORS))
        return qk_set_error(img, QK_E_INVALID, "Unknown check flags %#x", flags);
    return check_image(img, flags, res);
}
