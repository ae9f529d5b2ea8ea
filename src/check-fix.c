/*
 * check-fix.c - the repairs of `check -r all` that QEMU does not make, for
 * problems its repair leaves (and reports again on the next check).
 *
 * Owns: making L1/L2 entries usable (reserved bits cleared, unreadable L2
 * tables dropped, data outside the file or unreadable turned into zero
 * clusters, invalid extended-L2 bitmaps and v2 zero clusters fixed),
 * dropping snapshots whose L1 table can never be used, giving refcount
 * overflows their own copies, and removing inconsistent bitmaps.
 *
 * Invariants:
 *  1. Nothing here frees a cluster through a pointer it does not trust:
 *     entries are only rewritten in place; what they no longer reference is
 *     found as a leak by the count that follows (check.c) and freed there.
 *  2. Guest data QEMU can read is kept: an entry changes only where QEMU's
 *     read fails (EIO) or reads zeros from outside the file; reserved bits
 *     QEMU ignores when reading are cleared without changing the mapping.
 *  3. Allocations (overflow copies, a new bitmap directory) happen only once
 *     the refcounts equal the references (check.c's repair order).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "check-int.h"
#include "endian.h"

/* ---- entry repairs beyond QEMU ------------------------------------------- */

/* What a guest cluster becomes when its entry cannot be kept: reads as
 * zeros (v3), unallocated (v2, which has no zero clusters). */
static void zero_entry(const struct ck *c, uint64_t *e, uint64_t *bm)
{
    const qk_image *img = c->img;
    *e = img->hdr.version >= 3 && !img->extl2 ? OFLAG_ZERO : 0;
    *bm = img->extl2 ? 0xffffffff00000000ull : 0;
}

/* One active L2 entry: the problems QEMU's repair leaves (it reports them
 * again on every check). Returns what was wrong, or NULL. */
static const char *fix_l2_entry(const struct ck *c, uint64_t *e, uint64_t *bm)
{
    const qk_image *img = c->img;
    enum ctype t = ck_l2_type(c, *e);
    if (t == CT_COMPRESSED_) {
        uint64_t coff, nsec;
        compressed_extent(img, *e, &coff, &nsec);
        if (coff + nsec * 512 > c->file_len + c->cs - 1 || coff < c->cs) {
            zero_entry(c, e, bm);
            return "compressed data outside the file; the cluster now reads as zeros";
        }
        if (*e & OFLAG_COPIED) {
            *e &= ~OFLAG_COPIED;
            return "COPIED set on a compressed cluster; cleared";
        }
        if (*bm) {
            *bm = 0;
            return "subcluster bitmap on a compressed cluster; cleared";
        }
        return NULL;
    }
    if (*e & L2E_STD_RESERVED) {
        *e &= ~L2E_STD_RESERVED;
        return "reserved bits cleared";
    }
    if (img->hdr.version < 3 && (*e & OFLAG_ZERO)) {
        *e = 0;
        return "zero cluster in a pre-v3 image; now unallocated (reads as zeros)";
    }
    if (t == CT_NORMAL_ || t == CT_ZERO_ALLOC_) {
        uint64_t off = *e & L2E_OFFSET_MASK;
        int has_data = img->extl2 ? (*bm & 0xffffffffull) != 0 : !(*e & OFLAG_ZERO);
        if (!is_aligned(off, c->cs) && has_data) {
            zero_entry(c, e, bm);
            return "unaligned data cluster; the cluster now reads as zeros";
        }
        if (off >= c->file_len && img->data_io == img->io) {
            zero_entry(c, e, bm);
            return "data cluster past the end of the file (it read as zeros); now a zero cluster";
        }
        if ((*bm >> 32) & *bm) {
            *bm &= ~(*bm >> 32);
            return "subclusters both allocated and zero; they read as zeros now";
        }
    } else if (t == CT_UNALLOC_ && (*bm & 0xffffffffull)) {
        *bm &= 0xffffffff00000000ull;
        return "allocation bits on an unallocated cluster; cleared";
    }
    return NULL;
}

static int fix_l2_table(struct ck *c, uint64_t l2_offset)
{
    qk_image *img = c->img;
    int r, dirty = 0;
    if ((r = io_pread(img->io, c->buf, c->cs, l2_offset)) < 0)
        return r;
    for (uint32_t i = 0; i < img->l2_entries; i++) {
        uint64_t bm, e = ck_l2_get(c, c->buf, i, &bm), old = e;
        const char *why;
        int n = 0;
        /* One problem at a time: clearing reserved bits may reveal the next. */
        while (n < 4 && (why = fix_l2_entry(c, &e, &bm))) {
            ck_msg(c, "Repairing l2 entry %" PRIx64 " (L2 table %#" PRIx64 ", index %u): %s", old, l2_offset, i, why);
            n++;
        }
        if (!n)
            continue;
        uint8_t *p = c->buf + (size_t)i * img->l2_entry_size;
        be64_store(p, e);
        if (img->extl2)
            be64_store(p + 8, bm);
        dirty++;
        c->res->corruptions_fixed++;
    }
    if (!dirty)
        return 0;
    cache_forget(img->l2_cache, l2_offset);
    return image_write_sync(img, l2_offset, c->buf, c->cs, "an L2 table");
}

/* Before counting (QK_CHECK_FIX_ERRORS): make every L1 and L2 entry (active
 * and snapshots) usable, so that no corruption stays that QEMU would report
 * again: reserved bits cleared, an L2 table that cannot be read (unaligned,
 * past the end of the file, the header) dropped, data entries that read as an
 * error or as zeros from outside the file made zero clusters. Clusters they
 * leave are found as leaks by the count that follows. */
static int fix_l1_table(struct ck *c, uint64_t l1_offset, uint32_t l1_size, int active)
{
    qk_image *img = c->img;
    int r;
    for (uint32_t i = 0; i < l1_size; i++) {
        uint64_t e, n, off;
        if (active) {
            e = img->l1[i];
        } else {
            uint8_t be[8];
            if ((r = io_pread(img->io, be, 8, l1_offset + (uint64_t)i * 8)) < 0)
                return r;
            e = be64_load(be);
        }
        if (!(n = e))
            continue;
        if (n & L1E_RESERVED_MASK) {
            n &= ~L1E_RESERVED_MASK;
            ck_msg(c, "Repairing L1 entry %u (%" PRIx64 "): reserved bits cleared", i, e);
            c->res->corruptions_fixed++;
        }
        off = n & L1E_OFFSET_MASK;
        if (n && (!is_aligned(off, c->cs) || off < c->cs || off >= c->file_len)) {
            ck_msg(c, "Repairing L1 entry %u (%" PRIx64 "): L2 table offset %#" PRIx64 " is unaligned, the header "
                   "or past the end of the file; entry dropped (the range reads as unallocated)", i, e, off);
            c->res->corruptions_fixed++;
            n = 0;
        }
        if (n != e) {
            r = active ? l1_entry_set(img, i, n)
                       : image_write_be64_sync(img, l1_offset + (uint64_t)i * 8, n, "a snapshot L1 table");
            if (r < 0)
                return r;
        }
        if (n && (r = fix_l2_table(c, n & L1E_OFFSET_MASK)) < 0)
            return r;
    }
    return 0;
}

/* A snapshot whose L1 table QEMU can never use (unaligned, too large, past
 * the end of the file, in the header cluster). Its L1 entries are not
 * repaired in place: in the header, that would overwrite the header. */
static int snapshot_broken(const struct ck *c, const struct qk_snapshot *sn)
{
    uint64_t end = sn->l1_offset + (uint64_t)sn->l1_size * 8;
    return !is_aligned(sn->l1_offset, c->cs) || sn->l1_size > MAX_L1_BYTES / 8 ||
           (sn->l1_size && sn->l1_offset < c->cs) ||
           (sn->l1_size && end - c->file_len < end && end - c->file_len >= c->cs);
}

/* The active L1 table ends a cluster or more past the end of the file (it
 * read as zeros): write it at the end of the file and point the header at
 * it. Runs after the entries are fixed, so nothing points there. */
static int move_l1_table(struct ck *c)
{
    qk_image *img = c->img;
    uint64_t bytes = (uint64_t)img->l1_size * 8, end = img->hdr.l1_offset + bytes, off;
    if (!bytes || end <= c->file_len || end - c->file_len < c->cs)
        return 0;
    if (ck_align_up(c->file_len, c->cs, &off) < 0)
        return -EFBIG;
    uint8_t *t = calloc(1, bytes);
    if (!t)
        return -ENOMEM;
    for (uint32_t i = 0; i < img->l1_size; i++)
        be64_store(t + (size_t)i * 8, img->l1[i]);
    int r = image_write_sync(img, off, t, bytes, "the L1 table");
    free(t);
    if (r == 0 && (r = image_write_be64_sync(img, HDR_L1_OFFSET, off, "the header")) == 0) {
        ck_msg(c, "Repairing the active L1 table: it was past the end of the file (offset %#" PRIx64
                  "); written again at %#" PRIx64, img->hdr.l1_offset, off);
        c->res->corruptions_fixed++;
        img->hdr.l1_offset = off;
        if ((r = img->io->ops->get_size(img->io, &c->file_len)) == 0)
            img->file_size = c->file_len;
    }
    return r;
}

int ck_fix_entries(struct ck *c)
{
    qk_image *img = c->img;
    int r = fix_l1_table(c, img->hdr.l1_offset, img->l1_size, 1);
    if (r == 0)
        r = move_l1_table(c);
    for (uint32_t i = 0; i < img->nb_snapshots && r == 0; i++)
        if (!snapshot_broken(c, &img->snapshots[i]))
            r = fix_l1_table(c, img->snapshots[i].l1_offset, img->snapshots[i].l1_size, 0);
    if (r < 0)
        c->res->check_errors++;
    return r;
}

/* The index of cluster K in c->over, or -1. */
static int64_t over_index(const struct ck *c, uint64_t k)
{
    for (uint64_t i = 0; i < c->nb_over; i++)
        if (c->over[i] == k)
            return (int64_t)i;
    return -1;
}

void ck_note_overflow(struct ck *c, uint64_t k)
{
    int64_t i = over_index(c, k);
    if (i < 0 && c->nb_over < CK_MAX_OVER) {
        uint64_t *o = realloc(c->over, (c->nb_over + 1) * 8), *n;
        if (o)
            c->over = o;
        n = o ? realloc(c->over_n, (c->nb_over + 1) * 8) : NULL;
        if (!n)
            return;
        c->over_n = n;
        c->over[c->nb_over] = k;
        n[c->nb_over] = 0;
        i = (int64_t)c->nb_over++;
    }
    if (i >= 0)
        c->over_n[i]++;
}

/* Copy the cluster at K to a new cluster; *n gets its offset. */
static int copy_cluster(struct ck *c, uint64_t k, uint8_t *data, uint64_t *n)
{
    qk_image *img = c->img;
    int r;
    if ((r = refcount_alloc(img, 1, n)) < 0 || (r = ck_flush(img)) < 0 ||
        (r = io_pread(img->io, data, c->cs, k << c->cb)) < 0 || (r = io_pwrite(img->io, data, c->cs, *n)) < 0)
        return r;
    return img->io->ops->flush(img->io);
}

/* One walk of the active L1/L2 references (each L1 entry, then its L2
 * entries): COPY 0 counts the references to each overflowing cluster in
 * SEEN; COPY 1 gives the last over_n of them their own copy. */
static int unshare_walk(struct ck *c, uint64_t *seen, const uint64_t *total, int copy, uint8_t *data)
{
    qk_image *img = c->img;
    int r = 0, copied = 0;
    for (uint32_t i = 0; i < img->l1_size && r == 0; i++) {
        uint64_t l2_offset = img->l1[i] & L1E_OFFSET_MASK, bm, n;
        int64_t x = l2_offset ? over_index(c, l2_offset >> c->cb) : -1;
        if (!l2_offset)
            continue;
        if (x >= 0 && ++seen[x] > (total[x] > c->over_n[x] ? total[x] - c->over_n[x] : 0) && copy) {
            if ((r = copy_cluster(c, l2_offset >> c->cb, data, &n)) < 0 ||
                (r = l1_entry_set(img, i, n | OFLAG_COPIED)) < 0)
                break;
            ck_msg(c, "Repairing refcount overflow: L1 entry %u gets its own copy of L2 table %#" PRIx64 " at %#" PRIx64,
                   i, l2_offset, n);
            c->res->corruptions_fixed++;
            copied = 1;
            l2_offset = n;
        }
        if ((r = io_pread(img->io, c->buf, c->cs, l2_offset)) < 0)
            break;
        int dirty = 0;
        for (uint32_t j = 0; j < img->l2_entries && r == 0; j++) {
            uint64_t e = ck_l2_get(c, c->buf, j, &bm), k = (e & L2E_OFFSET_MASK) >> c->cb;
            enum ctype t = ck_l2_type(c, e);
            if ((t != CT_NORMAL_ && t != CT_ZERO_ALLOC_) || (x = over_index(c, k)) < 0)
                continue;
            if (++seen[x] <= (total[x] > c->over_n[x] ? total[x] - c->over_n[x] : 0) || !copy)
                continue;
            if ((r = copy_cluster(c, k, data, &n)) < 0)
                break;
            ck_msg(c, "Repairing refcount overflow: l2_entry=%" PRIx64 " gets its own copy at %#" PRIx64, e, n);
            be64_store(c->buf + (size_t)j * img->l2_entry_size, n | OFLAG_COPIED | (e & OFLAG_ZERO));
            dirty = 1;
            copied = 1;
            c->res->corruptions_fixed++;
        }
        if (dirty && r == 0) {
            cache_forget(img->l2_cache, l2_offset);
            r = image_write_sync(img, l2_offset, c->buf, c->cs, "an L2 table");
        }
    }
    return r < 0 ? r : copied;
}

/* After a repair pass left refcount overflows (more references than
 * refcount_bits can count): the last active L1/L2 references to each such
 * cluster get their own copy (an L2 table or a data cluster), as many as
 * could not be counted. Returns 1 if it copied (count again: copied L2
 * tables add references to their data clusters, which a next round splits). */
int ck_unshare_overflows(struct ck *c)
{
    ck_memo_reset(c);
    uint64_t *seen = calloc(c->nb_over, 8), *total = calloc(c->nb_over, 8);
    uint8_t *data = malloc(c->cs);
    int r = -ENOMEM;
    if (seen && total && data && (r = unshare_walk(c, total, total, 0, data)) >= 0)
        r = unshare_walk(c, seen, total, 1, data);
    free(seen);
    free(total);
    free(data);
    return r;
}

/* Snapshots whose L1 table QEMU can never use (unaligned, too large, past
 * the end of the file, in the header cluster) are dropped from the snapshot table, which is
 * rewritten in place (it only shrinks) before the header count changes. Their
 * clusters are found as leaks by the count. Returns 1 if it dropped any. */
int ck_drop_broken_snapshots(struct ck *c)
{
    qk_image *img = c->img;
    uint32_t kept = 0;
    size_t bytes = 0;
    for (uint32_t i = 0; i < img->nb_snapshots; i++)
        if (!snapshot_broken(c, &img->snapshots[i]))
            bytes += snapshot_entry_put(&img->snapshots[i], NULL);
    uint8_t *t = malloc(bytes ? bytes : 1);
    if (!t)
        return -ENOMEM;
    size_t pos = 0;
    for (uint32_t i = 0; i < img->nb_snapshots; i++) {
        struct qk_snapshot *sn = &img->snapshots[i];
        if (snapshot_broken(c, sn)) {
            ck_msg(c, "Repairing snapshot %s (%s): its L1 table (offset %#" PRIx64 ", %u entries) cannot be used; "
                   "snapshot removed", sn->id, sn->name, sn->l1_offset, sn->l1_size);
            c->res->corruptions_fixed++;
            free(sn->id);
            free(sn->name);
            free(sn->extra);
            continue;
        }
        pos += snapshot_entry_put(sn, t + pos);
        img->snapshots[kept++] = *sn;
    }
    if (kept == img->nb_snapshots) {
        free(t);
        return 0;
    }
    img->nb_snapshots = kept;
    img->snapshots_size = bytes;
    int r = bytes ? image_write_sync(img, img->hdr.snapshots_offset, t, bytes, "the snapshot table") : 0;
    free(t);
    uint8_t h[12];
    be32_store(h, kept);
    be64_store(h + 4, kept ? img->hdr.snapshots_offset : 0);
    if (r == 0 && (r = image_write_sync(img, HDR_NB_SNAPSHOTS, h, sizeof h, "the header")) == 0) {
        img->hdr.nb_snapshots = kept;
        if (!kept)
            img->hdr.snapshots_offset = 0;
    }
    return r < 0 ? r : 1;
}

/* Remove the bitmaps found inconsistent (and an extension that cannot be
 * parsed). Refcounts are accurate here (Repair order 3): the directory is
 * rewritten with normal allocation; the bitmaps' own clusters are not freed
 * through their pointers, the next count finds them. Returns 1 if anything
 * was removed. */
int ck_remove_bad_bitmaps(struct ck *c)
{
    qk_image *img = c->img;
    struct qk_header *h = &img->hdr;
    int r, removed = 0;
    ck_memo_reset(c);
    if (!h->has_bitmaps_ext)
        return 0;
    if (img->bitmap_dir_error || !c->count_bitmaps) {
        ck_msg(c, "Dropping the bitmaps extension (%u bitmaps): %s", img->nb_bitmaps,
            img->bitmap_dir_error ? img->bitmap_dir_reason : "it is not consistent");
        c->res->bitmaps_removed += img->nb_bitmaps;
        h->has_bitmaps_ext = 0;
        h->bitmaps_ext_error = 0;
        memset(&h->bitmaps, 0, sizeof h->bitmaps);
        h->autoclear &= ~AUTOCLEAR_BITMAPS;
        ck_free_bitmaps(c);
        bitmap_free_all(img);
        img->bitmap_dir_error = 0;
        if ((r = image_rewrite_header(img)) < 0)
            return r;
        return 1;
    }
    for (uint32_t i = img->nb_bitmaps; i-- > 0;) {
        if (!c->bm || !c->bm[i].problem)
            continue;
        char *name = strdup(img->bitmaps[i].name);
        if (!name)
            return -ENOMEM;
        ck_msg(c, "Removing bitmap '%s'", name);
        free(c->bm[i].table);
        memmove(&c->bm[i], &c->bm[i + 1], (img->nb_bitmaps - i - 1) * sizeof *c->bm);
        r = qk_bitmap_remove(img, name);
        free(name);
        if (r < 0)
            return r;
        img->removed[img->nb_removed - 1].on_disk = 0;   /* freed by the next count */
        c->res->bitmaps_removed++;
        removed = 1;
    }
    if (removed && (r = bitmap_store_all(img)) < 0)
        return r;
    return removed;
}

/* v3 snapshots whose extra data is shorter than 16 bytes (no disk size):
 * QEMU's qcow2_check_read_snapshot_table reports them before the count. */
int64_t ck_snapshots_incomplete(struct ck *c)
{
    qk_image *img = c->img;
    int64_t n = 0;
    if (img->hdr.version < 3)
        return 0;
    for (uint32_t i = 0; i < img->nb_snapshots; i++) {
        if (img->snapshots[i].extra_size >= 16)
            continue;
        ck_msg(c, "%s snapshot table entry %u is incomplete",
               (c->fix & QK_CHECK_FIX_ERRORS) ? "Repairing" : "ERROR", i);
        n++;
    }
    return n;
}

/* QEMU's qcow2_check_fix_snapshot_table: incomplete entries get 24 bytes of
 * extra data (VM state size, the disk size, icount -1) and the table is
 * written to new clusters (refcounts are accurate here), the header
 * switched, the old table freed. */
int ck_fix_snapshot_extra(struct ck *c)
{
    qk_image *img = c->img;
    size_t bytes = 0;
    int r;
    if (img->nb_snapshots == 0)
        return 0;   /* the incomplete ones were broken too, and dropped with the table */
    for (uint32_t i = 0; i < img->nb_snapshots; i++) {
        struct qk_snapshot *sn = &img->snapshots[i];
        if (sn->extra_size < 16) {
            uint8_t *x = calloc(1, 24);
            if (!x)
                return -ENOMEM;
            if (sn->extra_size)
                memcpy(x, sn->extra, sn->extra_size);
            be64_store(x, sn->vm_state_size);
            be64_store(x + 8, img->size);
            be64_store(x + 16, UINT64_MAX);
            free(sn->extra);
            sn->extra = x;
            sn->extra_size = 24;
            sn->disk_size = img->size;
            sn->has_disk_size = 1;
        }
        bytes += snapshot_entry_put(sn, NULL);
    }
    uint8_t *t = calloc(1, bytes ? bytes : 1);
    if (!t)
        return -ENOMEM;
    size_t pos = 0;
    for (uint32_t i = 0; i < img->nb_snapshots; i++)
        pos += snapshot_entry_put(&img->snapshots[i], t + pos);
    uint64_t off, old = img->hdr.snapshots_offset, old_size = img->snapshots_size;
    ck_memo_reset(c);
    if ((r = refcount_alloc(img, div_round_up(bytes, c->cs), &off)) == 0 && (r = ck_flush(img)) == 0 &&
        (r = image_write_sync(img, off, t, bytes, "the snapshot table")) == 0) {
        uint8_t h[12];
        be32_store(h, img->nb_snapshots);
        be64_store(h + 4, off);
        r = image_write_sync(img, HDR_NB_SNAPSHOTS, h, sizeof h, "the header");
    }
    free(t);
    if (r < 0)
        return r;
    img->hdr.snapshots_offset = off;
    img->snapshots_size = bytes;
    /* Free what the count gave the old table (a table ending less than a
     * cluster past the end of the file was counted). */
    if (old_size && (old + old_size <= c->file_len || old + old_size - c->file_len < c->cs))
        r = refcount_update(img, old, old_size, -1);
    if (r == 0)
        r = ck_flush(img);
    if (r == 0 && (r = img->io->ops->get_size(img->io, &c->file_len)) == 0)
        img->file_size = c->file_len;
    return r;
}
