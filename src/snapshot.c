/*
 * snapshot.c - the internal snapshot table (read side).
 *
 * Spec: qcow2.txt "Snapshots"; QEMU's qcow2_read_snapshots (qemu-reference.md
 * §1.6). Entries are variable length, 8-byte aligned and contiguous from
 * snapshots_offset.
 *
 * Invariants:
 *  1. image.c has checked nb_snapshots <= MAX_SNAPSHOTS and that the offset is
 *     cluster aligned; here every entry is bounds-checked against the table
 *     read so far, the file size and MAX_SNAPSHOTS_BYTES before it is used.
 *  2. Extra data (at most MAX_SNAPSHOT_EXTRA bytes) is kept byte for byte.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "endian.h"
#include "internal.h"

void snapshot_free_all(qk_image *img)
{
    for (uint32_t i = 0; i < img->nb_snapshots; i++) {
        free(img->snapshots[i].id);
        free(img->snapshots[i].name);
        free(img->snapshots[i].extra);
    }
    free(img->snapshots);
    img->snapshots = NULL;
    img->nb_snapshots = 0;
}

static char *read_string(qk_image *img, uint64_t off, uint32_t len, int *err)
{
    char *s = malloc((size_t)len + 1);
    if (!s) {
        *err = -ENOMEM;
        return NULL;
    }
    int r = io_pread(img->io, s, len, off);
    if (r < 0) {
        free(s);
        *err = r;
        return NULL;
    }
    s[len] = '\0';
    return s;
}

int snapshot_load(qk_image *img)
{
    uint32_t n = img->hdr.nb_snapshots;
    uint64_t off = img->hdr.snapshots_offset;
    int r = 0;
    if (n == 0)
        return 0;
    img->snapshots = calloc(n, sizeof *img->snapshots);
    if (!img->snapshots)
        return qk_set_error(img, -ENOMEM, "Out of memory reading the snapshot table");

    uint64_t start = off;
    for (uint32_t i = 0; i < n; i++) {
        uint8_t fixed[SNAP_FIXED_SIZE];
        struct qk_snapshot *sn = &img->snapshots[i];
        img->nb_snapshots = i + 1;   /* so that a failure frees what was read */
        if (off - start + SNAP_FIXED_SIZE > MAX_SNAPSHOTS_BYTES)
            return QK_CORRUPT(img, "Snapshot table is too big");
        /* Past the end reads as zeros; a check reports what that gives. */
        if (image_past_eof(img, off + SNAP_FIXED_SIZE))
            return QK_CORRUPT(img, "Snapshot table entry %u is past the end of the file", i);
        if ((r = io_pread(img->io, fixed, sizeof fixed, off)) < 0)
            return qk_set_error(img, r, "Failed to read snapshot table: %s", qk_strerror(r));
        sn->l1_offset = be64_load(fixed);
        sn->l1_size = be32_load(fixed + 8);
        uint16_t id_size = be16_load(fixed + 12);
        uint16_t name_size = be16_load(fixed + 14);
        sn->date_sec = be32_load(fixed + 16);
        sn->date_nsec = be32_load(fixed + 20);
        sn->vm_clock_nsec = be64_load(fixed + 24);
        sn->vm_state_size = be32_load(fixed + 32);
        sn->extra_size = be32_load(fixed + 36);
        if (sn->extra_size > MAX_SNAPSHOT_EXTRA)
            return QK_CORRUPT(img, "Too much extra metadata in snapshot table entry %u", i);
        uint64_t entry_len = SNAP_FIXED_SIZE + (uint64_t)sn->extra_size + id_size + name_size;
        uint64_t padded;
        ck_align_up(entry_len, 8, &padded);
        if (off - start + padded > MAX_SNAPSHOTS_BYTES)
            return QK_CORRUPT(img, "Snapshot table is too big");
        if (image_past_eof(img, off + entry_len))
            return QK_CORRUPT(img, "Snapshot table entry %u is past the end of the file", i);
        off += SNAP_FIXED_SIZE;
        if (sn->extra_size) {
            sn->extra = malloc(sn->extra_size);
            if (!sn->extra)
                return qk_set_error(img, -ENOMEM, "Out of memory");
            if ((r = io_pread(img->io, sn->extra, sn->extra_size, off)) < 0)
                return qk_set_error(img, r, "Failed to read snapshot table: %s", qk_strerror(r));
            if (sn->extra_size >= 8)
                sn->vm_state_size = be64_load(sn->extra);
            if (sn->extra_size >= 16) {
                sn->disk_size = be64_load(sn->extra + 8);
                sn->has_disk_size = 1;
            }
            if (sn->extra_size >= 24) {
                sn->icount = be64_load(sn->extra + 16);
                sn->has_icount = sn->icount != UINT64_MAX;
            }
        }
        if (img->hdr.version >= 3 && sn->extra_size < 16 && !(img->flags & QK_OPEN_CHECK))
            return QK_CORRUPT(img, "Too little extra metadata in snapshot table entry %u", i);
        off += sn->extra_size;
        if (!(sn->id = read_string(img, off, id_size, &r)))
            return qk_set_error(img, r, "Failed to read snapshot table: %s", qk_strerror(r));
        off += id_size;
        if (!(sn->name = read_string(img, off, name_size, &r)))
            return qk_set_error(img, r, "Failed to read snapshot table: %s", qk_strerror(r));
        off += name_size;
        off = start + (((off - start) + 7) & ~7ull);
        /* qk_check reports these per snapshot, as QEMU's check does. */
        if (sn->l1_size > MAX_L1_BYTES / 8 && !(img->flags & QK_OPEN_CHECK))
            return QK_CORRUPT(img, "Snapshot L1 table too large (snapshot %u)", i);
        if (!is_aligned(sn->l1_offset, img->cluster_size) && !(img->flags & QK_OPEN_CHECK))
            return QK_CORRUPT(img, "Snapshot L1 table offset invalid (snapshot %u)", i);
    }
    img->snapshots_size = off - start;
    return 0;
}
