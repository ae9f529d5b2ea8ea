/*
 * snapshot-rw.c - internal snapshots: create, apply (revert) and delete.
 *
 * Spec: qcow2.txt "Snapshots"; QEMU's block/qcow2-snapshot.c
 * (qcow2_snapshot_create / _goto / _delete, qcow2_write_snapshots) and
 * qcow2_update_snapshot_refcount (qemu-reference.md §1.6, §7.1).
 *
 * Invariants:
 *  1. A refcount counts every L1 (active or snapshot) that points at an L2
 *     table and every L2 entry that points at a data or compressed cluster.
 *     COPIED is set in an active L1/L2 entry exactly when that refcount is 1;
 *     update_refcounts() recomputes it while it adds +1 / -1 / 0.
 *  2. The snapshot table is never written in place: a new table goes into new
 *     clusters, the file is flushed, the header's nb_snapshots and
 *     snapshots_offset are switched in one synchronous 12-byte write, then the
 *     old table is freed (write_table()).
 *  3. Entries are written as QEMU writes them: extra data at least 24 bytes
 *     (VM state size, disk size, icount), bytes past those kept as read.
 *  4. A cluster freed here is punched out of the file (QEMU's default
 *     pass-discard-snapshot) only once nothing on disk can reach it: the
 *     header no longer points at the old table, the active L1 on disk no
 *     longer at the old active state, the table no longer at a deleted
 *     snapshot.
 *
 * Ordering, so that a crash leaves at worst leaked clusters:
 *  create: new L1 copy written; refcounts raised (+1 over the active L1, its
 *          L2 tables and data) and flushed, COPIED cleared; active L1 written;
 *          then the table switch (2).
 *  apply:  snapshot's refcounts raised and flushed; active L1 overwritten
 *          (synchronously); old active references dropped; COPIED recomputed.
 *  delete: table switch first (the snapshot is gone), then its references
 *          dropped and its L1 freed, then COPIED recomputed.
 *
 * Apply with bitmaps (beyond QEMU, which refuses): before the switch, every
 * guest range whose L2 mapping differs between the active state and the
 * snapshot (cluster, or subcluster with extended L2) is marked in every
 * enabled bitmap, as a write there would be; a size change marks the new tail.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "checked.h"
#include "endian.h"
#include "internal.h"

#define SNAP_EXTRA_QEMU 24   /* sizeof(QCowSnapshotExtraData) */

size_t snapshot_entry_put(const struct qk_snapshot *sn, uint8_t *p)
{
    size_t id = strlen(sn->id), name = strlen(sn->name);
    size_t len = SNAP_FIXED_SIZE + sn->extra_size + id + name;
    if (!p)
        return (len + 7) & ~(size_t)7;
    memset(p, 0, (len + 7) & ~(size_t)7);
    be64_store(p, sn->l1_offset);
    be32_store(p + 8, sn->l1_size);
    be16_store(p + 12, (uint16_t)id);
    be16_store(p + 14, (uint16_t)name);
    be32_store(p + 16, sn->date_sec);
    be32_store(p + 20, sn->date_nsec);
    be64_store(p + 24, sn->vm_clock_nsec);
    be32_store(p + 32, sn->vm_state_size > UINT32_MAX ? 0 : (uint32_t)sn->vm_state_size);
    be32_store(p + 36, sn->extra_size);
    if (sn->extra_size)
        memcpy(p + SNAP_FIXED_SIZE, sn->extra, sn->extra_size);
    memcpy(p + SNAP_FIXED_SIZE + sn->extra_size, sn->id, id);
    memcpy(p + SNAP_FIXED_SIZE + sn->extra_size + id, sn->name, name);
    return (len + 7) & ~(size_t)7;
}

/* QEMU's qcow2_write_snapshots: MAX(24, extra_data_size) bytes of extra
 * data, the first 24 from the parsed values. */
static int extend_extra(qk_image *img, struct qk_snapshot *sn)
{
    if (sn->extra_size < SNAP_EXTRA_QEMU) {
        uint8_t *x = calloc(1, SNAP_EXTRA_QEMU);
        if (!x)
            return qk_set_error(img, -ENOMEM, "Out of memory");
        free(sn->extra);
        sn->extra = x;
        sn->extra_size = SNAP_EXTRA_QEMU;
    }
    if (!sn->has_disk_size) {
        sn->disk_size = img->size;
        sn->has_disk_size = 1;
    }
    be64_store(sn->extra, sn->vm_state_size);
    be64_store(sn->extra + 8, sn->disk_size);
    be64_store(sn->extra + 16, sn->has_icount ? sn->icount : UINT64_MAX);
    return 0;
}

/* Punch out the clusters of [off, off+len) whose refcount is 0, as QEMU
 * discards what snapshot operations free (pass-discard-snapshot). Only
 * called once nothing on disk can reach them; failures are ignored. */
static void discard_freed(qk_image *img, uint64_t off, uint64_t len)
{
    uint64_t cs = img->cluster_size, rc;
    for (uint64_t c = off & ~(cs - 1); c < off + len; c += cs)
        if (refcount_get(img, c >> img->cluster_bits, &rc) == 0 && rc == 0)
            img->io->ops->punch_hole(img->io, c, cs);
}

/* Drop one reference to [off, off+len) and discard what that frees. */
static int release(qk_image *img, uint64_t off, uint64_t len)
{
    int r = refcount_update(img, off, len, -1);
    if (r == 0)
        discard_freed(img, off, len);
    return r;
}

/* Invariant 2: img->snapshots[0..nb_snapshots) become the table on disk. */
static int write_table(qk_image *img)
{
    uint64_t bytes = 0, off = 0;
    int r;
    for (uint32_t i = 0; i < img->nb_snapshots; i++) {
        const struct qk_snapshot *sn = &img->snapshots[i];
        if ((r = extend_extra(img, &img->snapshots[i])) < 0)
            return r;
        /* The last entry is not padded (QEMU's table size). */
        bytes += i + 1 < img->nb_snapshots ? snapshot_entry_put(sn, NULL)
               : SNAP_FIXED_SIZE + sn->extra_size + strlen(sn->id) + strlen(sn->name);
    }
    if (bytes > MAX_SNAPSHOTS_BYTES)
        return qk_set_error(img, -EFBIG, "The snapshot table is too big");
    if (bytes) {
        uint8_t *t = calloc(1, bytes + 8);   /* room for the last entry's padding */
        if (!t)
            return qk_set_error(img, -ENOMEM, "Out of memory");
        size_t pos = 0;
        for (uint32_t i = 0; i < img->nb_snapshots; i++)
            pos += snapshot_entry_put(&img->snapshots[i], t + pos);
        if ((r = refcount_alloc(img, div_round_up(bytes, img->cluster_size), &off)) == 0 &&
            (r = io_pwrite(img->io, t, bytes, off)) < 0)
            qk_set_error(img, r, "Could not write the snapshot table: %s", qk_strerror(r));
        free(t);
        if (r < 0)
            return r;
    }
    if ((r = qk_flush(img)) < 0)
        return r;
    uint8_t h[12];
    be32_store(h, img->nb_snapshots);
    be64_store(h + 4, off);
    if ((r = image_write_sync(img, HDR_NB_SNAPSHOTS, h, sizeof h, "the header")) < 0)
        return r;
    uint64_t old = img->hdr.snapshots_offset, old_size = img->snapshots_size;
    img->hdr.nb_snapshots = img->nb_snapshots;
    img->hdr.snapshots_offset = off;
    img->snapshots_size = bytes;
    return old_size ? release(img, old, old_size) : 0;
}

/* QEMU's qcow2_validate_table for a snapshot's L1 table. */
static int validate_l1(qk_image *img, const struct qk_snapshot *sn)
{
    uint64_t bytes = (uint64_t)sn->l1_size * 8;
    if (bytes > MAX_L1_BYTES)
        return QK_CORRUPT(img, "Snapshot L1 table too large");
    if (!is_aligned(sn->l1_offset, img->cluster_size) || sn->l1_offset + bytes > img->file_size ||
        (bytes && sn->l1_offset == 0))
        return QK_CORRUPT(img, "Snapshot L1 table offset invalid");
    return 0;
}

/* SN's L1 table, host endian, zero padded to max(l1_size, MIN) entries. */
static int read_l1(qk_image *img, const struct qk_snapshot *sn, uint32_t min, uint64_t **out)
{
    uint32_t n = sn->l1_size > min ? sn->l1_size : min;
    uint64_t *l1 = calloc(n ? n : 1, 8);
    int r;
    if (!l1)
        return qk_set_error(img, -ENOMEM, "Out of memory");
    if (sn->l1_size && (r = io_pread(img->io, l1, (size_t)sn->l1_size * 8, sn->l1_offset)) < 0) {
        free(l1);
        return qk_set_error(img, r, "Could not read a snapshot L1 table: %s", qk_strerror(r));
    }
    for (uint32_t i = 0; i < sn->l1_size; i++)
        l1[i] = be64_load(&l1[i]);
    *out = l1;
    return 0;
}

/* The L2 table at the offset in L1 entry E, validated; *off 0 if none. */
static int l2_offset_of(qk_image *img, uint64_t e, uint64_t l1_index, uint64_t *off)
{
    *off = e & L1E_OFFSET_MASK;
    if (!*off)
        return 0;
    if (!is_aligned(*off, img->cluster_size))
        return QK_CORRUPT(img, "L2 table offset %#llx unaligned (L1 index: %#llx)",
                          (unsigned long long)*off, (unsigned long long)l1_index);
    if (*off + img->cluster_size > img->file_size)
        return QK_CORRUPT(img, "L2 table offset %#llx is past the end of the file (L1 index: %#llx)",
                          (unsigned long long)*off, (unsigned long long)l1_index);
    return 0;
}

/* A private copy of the L2 table at OFF (NULL: all zeros) into BUF. */
static int l2_copy(qk_image *img, uint64_t off, uint8_t *buf)
{
    const uint8_t *t;
    if (!off) {
        memset(buf, 0, img->cluster_size);
        return 0;
    }
    int r = cache_get(img->l2_cache, off, &t);
    if (r < 0)
        return qk_set_error(img, r, "Could not read L2 table: %s", qk_strerror(r));
    memcpy(buf, t, img->cluster_size);
    return 0;
}

/* Add ADDEND to the refcount of what L2 entry E points at; *rc gets the
 * refcount that decides COPIED (2 for compressed clusters, which never
 * have it; 0 for no cluster). */
static int entry_refcount(qk_image *img, uint64_t e, int addend, uint64_t l2_off, uint32_t j, uint64_t *rc)
{
    int r;
    *rc = 0;
    if (e & OFLAG_COMPRESSED) {
        uint64_t coff, nsec;
        compressed_extent(img, e, &coff, &nsec);
        struct qk_map m = { .type = CT_COMPRESSED, .host = coff, .clen = nsec * 512 - (coff & 511) };
        if ((r = compressed_check(img, &m)) < 0)
            return r;
        if (addend && (r = refcount_update(img, coff & ~511ull, nsec * 512, addend)) < 0)
            return r;
        *rc = 2;
        return 0;
    }
    uint64_t host = e & L2E_OFFSET_MASK;
    if (!host)
        return 0;
    if (!is_aligned(host, img->cluster_size))
        return QK_CORRUPT(img, "Cluster allocation offset %#llx unaligned (L2 offset: %#llx, L2 index: %#x)",
                          (unsigned long long)host, (unsigned long long)l2_off, j);
    if (host >= ((img->file_size + img->cluster_size - 1) & ~(uint64_t)(img->cluster_size - 1)))
        return QK_CORRUPT(img, "Cluster allocation offset %#llx is past the end of the file (L2 offset: %#llx, "
                          "L2 index: %#x)", (unsigned long long)host, (unsigned long long)l2_off, j);
    if (addend && (r = refcount_update(img, host, img->cluster_size, addend)) < 0)
        return r;
    if ((r = refcount_get(img, host >> img->cluster_bits, rc)) == 0 && addend < 0 && *rc == 0)
        discard_freed(img, host, img->cluster_size);
    return r;
}

/* QEMU's qcow2_update_snapshot_refcount over the L1 table L1 (L1_SIZE
 * entries, at L1_OFF on disk): ADDEND (+1, -1 or 0) to every L2 table and
 * cluster it references, COPIED recomputed in L2 and L1 entries, L2 tables
 * whose refcount reaches 0 dropped from the cache, then a flush. The L1 is
 * written back (synchronously) when its flags changed, except for -1 (the
 * table is on its way out). L1 is updated in memory. */
static int update_refcounts(qk_image *img, uint64_t *l1, uint32_t l1_size, uint64_t l1_off, int addend)
{
    uint32_t es = img->l2_entry_size;
    int r = 0, l1_modified = 0;
    uint8_t *buf = malloc(img->cluster_size);
    if (!buf)
        return qk_set_error(img, -ENOMEM, "Out of memory");
    for (uint32_t i = 0; i < l1_size && r == 0; i++) {
        uint64_t l2_off, rc;
        if ((r = l2_offset_of(img, l1[i], i, &l2_off)) < 0)
            break;
        if (!l2_off)
            continue;
        if ((r = l2_copy(img, l2_off, buf)) < 0)
            break;
        for (uint32_t j = 0; j < img->l2_entries && r == 0; j++) {
            uint64_t e = be64_load(buf + (size_t)j * es);
            if ((r = entry_refcount(img, e & ~OFLAG_COPIED, addend, l2_off, j, &rc)) < 0)
                break;
            uint64_t n = (e & ~OFLAG_COPIED) | (rc == 1 ? OFLAG_COPIED : 0);
            if (n == e)
                continue;
            uint8_t *t;
            if (addend > 0 && (r = cache_set_dependency(img->l2_cache, img->rb_cache)) < 0)
                r = qk_set_error(img, r, "Could not write metadata: %s", qk_strerror(r));
            else if ((r = cache_get_mut(img->l2_cache, l2_off, &t)) < 0)
                r = qk_set_error(img, r, "Could not read L2 table: %s", qk_strerror(r));
            else
                be64_store(t + (size_t)j * es, n);
        }
        if (r < 0 || (addend && (r = refcount_update(img, l2_off, img->cluster_size, addend)) < 0) ||
            (r = refcount_get(img, l2_off >> img->cluster_bits, &rc)) < 0)
            break;
        if (rc == 0) {
            cache_forget(img->l2_cache, l2_off);   /* freed: its entries no longer matter */
            discard_freed(img, l2_off, img->cluster_size);
        }
        uint64_t n = l2_off | (rc == 1 ? OFLAG_COPIED : 0);
        if (n != l1[i]) {
            l1[i] = n;
            l1_modified = 1;
        }
    }
    free(buf);
    if (r == QK_E_TOO_LARGE)
        return -EINVAL;            /* a refcount would overflow: QEMU's -EINVAL */
    if (r == 0)
        r = qk_flush(img);
    if (r == 0 && addend >= 0 && l1_modified && l1_size) {
        uint8_t *be = malloc((size_t)l1_size * 8);
        if (!be)
            return qk_set_error(img, -ENOMEM, "Out of memory");
        for (uint32_t i = 0; i < l1_size; i++)
            be64_store(be + (size_t)i * 8, l1[i]);
        r = image_write_sync(img, l1_off, be, (size_t)l1_size * 8, "an L1 table");
        free(be);
    }
    return r;
}

static int active_refcounts(qk_image *img, int addend)
{
    return update_refcounts(img, img->l1, img->l1_size, img->hdr.l1_offset, addend);
}

static int snapshot_refcounts(qk_image *img, const struct qk_snapshot *sn, int addend)
{
    uint64_t *l1;
    int r = read_l1(img, sn, 0, &l1);
    if (r == 0)
        r = update_refcounts(img, l1, sn->l1_size, sn->l1_offset, addend);
    free(l1);
    return r;
}

/* What every write operation here needs; -ENOTSUP as QEMU for an external
 * data file (its snapshot code refuses them); RAW_CODE for a raw image
 * (qemu-img: -ENOTSUP from create, its own message from apply). */
static int check_modifiable(qk_image *img, int raw_code)
{
    if (!img->is_open)
        return qk_set_error(img, QK_E_INVALID, "The image is not open");
    if (img->fmt != QK_FMT_QCOW2)
        return qk_set_error(img, raw_code, "Block driver does not support snapshots");
    if (!img->writable)
        return qk_set_error(img, QK_E_READONLY, "The image is opened read-only");
    if (img->broken)
        return qk_set_error(img, QK_E_CORRUPT, "The image was marked corrupt; it takes no more writes");
    if (img->data_io != img->io)
        return qk_set_error(img, -ENOTSUP, "Internal snapshots are not supported with an external data file");
    return 0;
}

/* QEMU's find_snapshot_by_id_or_name: the id first, then the name. */
static int find(const qk_image *img, const char *id_or_name)
{
    for (uint32_t i = 0; i < img->nb_snapshots; i++)
        if (!strcmp(img->snapshots[i].id, id_or_name))
            return (int)i;
    for (uint32_t i = 0; i < img->nb_snapshots; i++)
        if (!strcmp(img->snapshots[i].name, id_or_name))
            return (int)i;
    return -1;
}

QK_API int qk_snapshot_create(qk_image *img, const char *name)
{
    int r;
    if ((r = check_modifiable(img, -ENOTSUP)) < 0)
        return r;
    if (!name || strlen(name) > UINT16_MAX)
        return qk_set_error(img, QK_E_INVALID, "Invalid snapshot name");
    if (img->nb_snapshots >= MAX_SNAPSHOTS)
        return qk_set_error(img, -EFBIG, "Too many snapshots");
    /* QEMU's find_new_snapshot_id: one more than the largest numeric id. */
    unsigned long max_id = 0;
    for (uint32_t i = 0; i < img->nb_snapshots; i++) {
        unsigned long v = strtoul(img->snapshots[i].id, NULL, 10);
        if (v > max_id)
            max_id = v;
    }
    struct qk_snapshot sn = { 0 };
    char id[32];
    snprintf(id, sizeof id, "%lu", max_id + 1);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    sn.date_sec = (uint32_t)ts.tv_sec;
    sn.date_nsec = (uint32_t)(ts.tv_nsec / 1000 * 1000);   /* qemu-img has microseconds */
    sn.disk_size = img->size;
    sn.has_disk_size = 1;
    sn.has_icount = 1;                                      /* qemu-img writes icount 0 */
    sn.l1_size = img->l1_size;
    struct qk_snapshot *grown = realloc(img->snapshots, (img->nb_snapshots + 1) * sizeof *grown);
    if (!grown)
        return qk_set_error(img, -ENOMEM, "Out of memory");
    img->snapshots = grown;
    if (!(sn.id = strdup(id)) || !(sn.name = strdup(name))) {
        r = qk_set_error(img, -ENOMEM, "Out of memory");
        goto fail;
    }
    if ((r = qk_flush(img)) < 0)
        goto fail;
    /* The copy of the active L1 (its flags are fixed by the 0 pass below
     * for the active table; a snapshot's flags are never read). */
    if (sn.l1_size) {
        uint64_t bytes = (uint64_t)sn.l1_size * 8;
        uint8_t *be = malloc(bytes);
        if (!be) {
            r = qk_set_error(img, -ENOMEM, "Out of memory");
            goto fail;
        }
        for (uint32_t i = 0; i < sn.l1_size; i++)
            be64_store(be + (size_t)i * 8, img->l1[i]);
        if ((r = refcount_alloc(img, div_round_up(bytes, img->cluster_size), &sn.l1_offset)) == 0 &&
            (r = io_pwrite(img->io, be, bytes, sn.l1_offset)) < 0)
            qk_set_error(img, r, "Could not write the snapshot L1 table: %s", qk_strerror(r));
        free(be);
        if (r < 0)
            goto fail;
    }
    if ((r = active_refcounts(img, 1)) < 0)
        goto fail;
    img->snapshots[img->nb_snapshots++] = sn;
    if ((r = write_table(img)) < 0) {
        sn = img->snapshots[--img->nb_snapshots];   /* its extra data was added there */
        goto fail;
    }
    return 0;
fail:
    free(sn.id);
    free(sn.name);
    free(sn.extra);
    return r;
}

/* Does unit U (the subcluster with extended L2, else the cluster) map
 * differently under entries XA and XB (COPIED masked off), whose bitmaps
 * follow them at PA + 8 and PB + 8? An unallocated subcluster maps to the
 * backing file whatever its cluster's host offset. */
static int unit_differs(const qk_image *img, uint64_t xa, uint64_t xb, const uint8_t *pa, const uint8_t *pb,
                        uint64_t u)
{
    if (!img->extl2 || ((xa | xb) & OFLAG_COMPRESSED))
        return xa != xb;
    uint64_t ba = be64_load(pa + 8), bb = be64_load(pb + 8);
    int sa = (int)((ba >> u) & 1) | (int)((ba >> (32 + u)) & 1) << 1;
    int sb = (int)((bb >> u) & 1) | (int)((bb >> (32 + u)) & 1) << 1;
    return sa != sb || (sa == 1 && (xa & L2E_OFFSET_MASK) != (xb & L2E_OFFSET_MASK));
}

/* Bitmap side of apply: mark every cluster (subcluster) of [0, LIMIT) whose
 * mapping differs between the active L1 and SN_L1 (SN_SIZE entries). */
static int mark_changed(qk_image *img, const uint64_t *sn_l1, uint32_t sn_size, uint64_t limit)
{
    uint64_t cs = img->cluster_size, per_l2 = (uint64_t)img->l2_entries * cs;
    uint32_t es = img->l2_entry_size;
    uint64_t run_start = 0, run_len = 0;
    int r = 0;
    uint8_t *a = malloc(cs), *b = malloc(cs);
    if (!a || !b) {
        free(a);
        free(b);
        return qk_set_error(img, -ENOMEM, "Out of memory");
    }
    for (uint64_t i = 0; i < div_round_up(limit, per_l2) && r == 0; i++) {
        uint64_t ea = i < img->l1_size ? img->l1[i] : 0, eb = i < sn_size ? sn_l1[i] : 0, oa, ob;
        if ((r = l2_offset_of(img, ea, i, &oa)) < 0 || (r = l2_offset_of(img, eb, i, &ob)) < 0)
            break;
        if (oa == ob)
            continue;                 /* the same table (or none): same mapping */
        if ((r = l2_copy(img, oa, a)) < 0 || (r = l2_copy(img, ob, b)) < 0)
            break;
        for (uint32_t j = 0; j < img->l2_entries && r == 0; j++) {
            uint64_t g = i * per_l2 + (uint64_t)j * cs;
            if (g >= limit)
                break;
            const uint8_t *pa = a + (size_t)j * es, *pb = b + (size_t)j * es;
            uint64_t xa = be64_load(pa) & ~OFLAG_COPIED, xb = be64_load(pb) & ~OFLAG_COPIED;
            uint64_t units = img->extl2 ? 32 : 1, unit = cs / units;
            for (uint64_t u = 0; u < units && r == 0; u++) {
                if (!unit_differs(img, xa, xb, pa, pb, u))
                    continue;
                uint64_t s = g + u * unit;
                if (run_len && run_start + run_len == s) {
                    run_len += unit;
                    continue;
                }
                if (run_len)
                    r = bitmap_track_write(img, run_start, min_u64(run_len, limit - run_start));
                run_start = s;
                run_len = unit;
            }
        }
    }
    free(a);
    free(b);
    if (r == 0 && run_len && run_start < limit)
        r = bitmap_track_write(img, run_start, min_u64(run_len, limit - run_start));
    return r;
}

QK_API int qk_snapshot_apply(qk_image *img, const char *id_or_name)
{
    int r, idx;
    if ((r = check_modifiable(img, QK_E_UNSUPPORTED)) < 0)
        return r;
    if (!id_or_name || (idx = find(img, id_or_name)) < 0)
        return qk_set_error(img, -ENOENT, "Snapshot '%s' not found", id_or_name ? id_or_name : "");
    const struct qk_snapshot *sn = &img->snapshots[idx];
    uint64_t *l1;
    uint64_t old_size = img->size, new_size = sn->has_disk_size ? sn->disk_size : img->size;
    if ((r = validate_l1(img, sn)) < 0 || (r = qk_flush(img)) < 0 || (r = read_l1(img, sn, 0, &l1)) < 0)
        return r;
    r = mark_changed(img, l1, sn->l1_size, min_u64(old_size, new_size));
    free(l1);
    if (r < 0)
        return r;
    if (new_size != old_size && (r = qk_resize(img, new_size, QK_RESIZE_SHRINK)) < 0)
        return r;
    if (new_size > old_size && (r = bitmap_track_write(img, old_size, new_size - old_size)) < 0)
        return r;
    if (sn->l1_size > img->l1_size && (r = resize_grow_l1(img, sn->l1_size)) < 0)
        return r;
    if ((r = snapshot_refcounts(img, sn, 1)) < 0 || (r = read_l1(img, sn, img->l1_size, &l1)) < 0)
        return r;
    uint8_t *be = malloc((size_t)img->l1_size * 8 + 1);
    if (!be) {
        free(l1);
        return qk_set_error(img, -ENOMEM, "Out of memory");
    }
    for (uint32_t i = 0; i < img->l1_size; i++)
        be64_store(be + (size_t)i * 8, l1[i]);
    r = image_write_sync(img, img->hdr.l1_offset, be, (size_t)img->l1_size * 8, "the L1 table");
    free(be);
    /* The old active references go; the in-memory L1 still holds them. */
    if (r == 0)
        r = active_refcounts(img, -1);
    memcpy(img->l1, l1, (size_t)img->l1_size * 8);
    free(l1);
    img->cbuf_host = UINT64_MAX;
    return r < 0 ? r : active_refcounts(img, 0);
}

QK_API int qk_snapshot_delete(qk_image *img, const char *id_or_name)
{
    int r, idx;
    if ((r = check_modifiable(img, QK_E_UNSUPPORTED)) < 0)
        return r;
    if (!id_or_name || (idx = find(img, id_or_name)) < 0)
        return qk_set_error(img, -ENOENT, "Can't find the snapshot");
    struct qk_snapshot sn = img->snapshots[idx];
    if ((r = validate_l1(img, &sn)) < 0 || (r = qk_flush(img)) < 0)
        return r;
    memmove(&img->snapshots[idx], &img->snapshots[idx + 1],
            (img->nb_snapshots - (uint32_t)idx - 1) * sizeof sn);
    img->nb_snapshots--;
    if ((r = write_table(img)) < 0) {
        memmove(&img->snapshots[idx + 1], &img->snapshots[idx],
                (img->nb_snapshots - (uint32_t)idx) * sizeof sn);
        img->snapshots[idx] = sn;
        img->nb_snapshots++;
        return r;
    }
    /* From here a failure only leaks clusters. */
    r = snapshot_refcounts(img, &sn, -1);
    if (r == 0 && sn.l1_size)
        r = release(img, sn.l1_offset, (uint64_t)sn.l1_size * 8);
    free(sn.id);
    free(sn.name);
    free(sn.extra);
    img->cbuf_host = UINT64_MAX;
    return r < 0 ? r : active_refcounts(img, 0);
}
