/*
 * write.c - guest writes, zero writes, discard and flush.
 *
 * A write touches one cluster at a time (write_cluster): in place when the
 * cluster is ours alone (COPIED) and already holds the bytes' units,
 * otherwise into a new cluster that first receives the guest's current view
 * of the units it must hold (copy-on-write from the backing file, a
 * compressed or shared cluster, or zeros). The unit is the subcluster with
 * extended L2 entries, else the cluster.
 *
 * Ordering (design.md §5, qemu-reference.md §7.1):
 *  1. data (and copy-on-write data) is written before the L2 entry that
 *     points to it: the L2 cache depends on a flush;
 *  2. refcounts raised for a new cluster reach the disk before the L2 entry
 *     (the L2 cache depends on the refcount cache), unless the image runs
 *     with lazy refcounts and the dirty bit is set;
 *  3. an old cluster's refcount drops only after the L2 entry that stopped
 *     using it is on disk (refcount.c makes the refcount cache depend on the
 *     L2 cache).
 * So a crash at any point leaves at worst leaked clusters.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "endian.h"
#include "internal.h"

#define SUB_ALLOC_ALL 0x00000000ffffffffull
#define SUB_ZERO_ALL  0xffffffff00000000ull

static int has_data_file(const qk_image *img)
{
    return img->data_io != img->io;
}

/* Is the entry a cluster that this image allocated (not compressed)? */
static int entry_allocated(const qk_image *img, uint64_t e)
{
    if (e & OFLAG_COMPRESSED)
        return 0;
    return (e & L2E_OFFSET_MASK) != 0 || (has_data_file(img) && (e & OFLAG_COPIED));
}

/* Release whatever host clusters entry E held (after it was replaced). */
static int free_entry(qk_image *img, uint64_t e)
{
    if (has_data_file(img))
        return 0;
    if (e & OFLAG_COMPRESSED) {
        uint64_t coff, nsec;
        compressed_extent(img, e, &coff, &nsec);
        return refcount_update(img, coff & ~511ull, nsec * 512, -1);
    }
    uint64_t host = e & L2E_OFFSET_MASK;
    if (!host)
        return 0;
    return refcount_update(img, host, img->cluster_size, -1);
}

/* Read the guest's current view of [off, off+len) into buf, zero past the
 * virtual size. */
static int guest_view(qk_image *img, uint8_t *buf, uint64_t off, uint64_t len)
{
    if (off >= img->size) {
        memset(buf, 0, len);
        return 0;
    }
    uint64_t n = min_u64(len, img->size - off);
    memset(buf + n, 0, len - n);
    return qk_pread(img, buf, n, off);
}

/* Write DATA (NULL: zeros) at guest [cstart+a, cstart+a+n), within one cluster. */
static int write_cluster(qk_image *img, uint64_t cstart, uint64_t a, uint64_t n,
                         const uint8_t *data)
{
    uint64_t cs = img->cluster_size;
    uint64_t unit = img->extl2 ? img->subcluster_size : cs;
    struct l2_slot slot;
    int r;
    if ((r = l2_entry_get(img, cstart, &slot)) < 0)
        return r;
    uint64_t old = slot.entry, bm = slot.bitmap;
    uint64_t host = old & L2E_OFFSET_MASK;
    int compressed = (old & OFLAG_COMPRESSED) != 0;
    int in_place = entry_allocated(img, old) && (old & OFLAG_COPIED);
    /* A cluster of ours wholly past the end of the file cannot come from a
     * sane image: writing there could grow the file without bound. */
    if (in_place && !has_data_file(img) && host >= ((img->file_size + cs - 1) & ~(cs - 1)))
        return QK_CORRUPT(img, "Data cluster offset %#llx is past the end of the file",
                          (unsigned long long)host);
    uint32_t u0 = (uint32_t)(a / unit), u1 = (uint32_t)((a + n - 1) / unit);

    /* Fast path: our own cluster whose touched units already hold data. */
    if (in_place) {
        int direct = img->extl2 ? 1 : !(old & OFLAG_ZERO);
        for (uint32_t u = u0; img->extl2 && u <= u1; u++)
            if (!(bm & (1ull << u)) || (bm & (1ull << (32 + u))))
                direct = 0;
        if (direct) {
            if (!has_data_file(img) && (r = overlap_check(img, host + a, n)) < 0)
                return r;
            if (data)
                r = io_pwrite(img->data_io, data, n, host + a);
            else {
                uint8_t *z = calloc(1, n);
                r = z ? io_pwrite(img->data_io, z, n, host + a) : -ENOMEM;
                free(z);
            }
            return r < 0 ? qk_set_error(img, r, "Write failed: %s", qk_strerror(r)) : 0;
        }
    }

    /* Units to materialize in the (new or reused) cluster. */
    uint32_t m0 = u0, m1 = u1;
    uint64_t new_bm = bm;
    if (!img->extl2 || compressed || (entry_allocated(img, old) && !in_place)) {
        m0 = 0;
        m1 = (uint32_t)(cs / unit) - 1;   /* the whole cluster */
    }
    if (img->extl2) {
        for (uint32_t u = m0; u <= m1; u++) {
            new_bm |= 1ull << u;
            new_bm &= ~(1ull << (32 + u));
        }
    }

    uint64_t mlen = (uint64_t)(m1 - m0 + 1) * unit;
    uint8_t *buf = malloc(mlen);
    if (!buf)
        return qk_set_error(img, -ENOMEM, "Out of memory");
    /* The old contents are needed only where the write does not cover. */
    if ((a != (uint64_t)m0 * unit || n != mlen) &&
        (r = guest_view(img, buf, cstart + (uint64_t)m0 * unit, mlen)) < 0)
        goto out;
    if (data)
        memcpy(buf + (a - (uint64_t)m0 * unit), data, n);
    else
        memset(buf + (a - (uint64_t)m0 * unit), 0, n);

    int refs_added = 0;
    uint64_t new_host = host;
    if (!in_place) {
        if ((r = image_mark_dirty(img)) < 0)
            goto out;
        if (has_data_file(img)) {
            new_host = cstart;
        } else {
            if ((r = refcount_alloc(img, 1, &new_host)) < 0)
                goto out;
            refs_added = 1;
        }
    }
    if ((r = l2_prepare_write(img, &slot)) < 0)
        goto out;
    if (!has_data_file(img) && (r = overlap_check(img, new_host + (uint64_t)m0 * unit, mlen)) < 0)
        goto out;
    if ((r = io_pwrite(img->data_io, buf, mlen, new_host + (uint64_t)m0 * unit)) < 0) {
        r = qk_set_error(img, r, "Write failed: %s", qk_strerror(r));
        goto out;
    }
    if ((r = l2_entry_set(img, &slot, new_host | OFLAG_COPIED, new_bm, 1, refs_added)) < 0)
        goto out;
    if (!in_place)
        r = free_entry(img, old);
out:
    free(buf);
    return r;
}

int write_drop_entry(qk_image *img, const struct l2_slot *slot)
{
    int r = l2_entry_set(img, slot, 0, 0, 0, 0);
    return r < 0 ? r : free_entry(img, slot->entry);
}

static int check_writable(qk_image *img, uint64_t len, uint64_t offset)
{
    uint64_t end;
    if (!img->is_open)
        return qk_set_error(img, QK_E_INVALID, "The image is not open");
    if (!img->writable)
        return qk_set_error(img, QK_E_READONLY, "The image is opened read-only");
    if (img->broken)
        return qk_set_error(img, QK_E_CORRUPT, "The image was marked corrupt; it takes no more writes");
    if (ck_add(offset, len, &end) || end > img->size)
        return qk_set_error(img, -EINVAL, "Write of %llu bytes at offset %llu is past the end of the image",
                            (unsigned long long)len, (unsigned long long)offset);
    return 0;
}

/* Fast path for large writes: whole clusters that are unallocated in one
 * L2 table get one contiguous allocation and one data write. Returns the
 * bytes written (0 when the path does not apply). */
static int64_t write_fresh_run(qk_image *img, const uint8_t *data, uint64_t len, uint64_t offset)
{
    uint64_t cs = img->cluster_size;
    if (!data || (offset & (cs - 1)) || len < 2 * cs || has_data_file(img))
        return 0;
    uint64_t table_end = (offset / ((uint64_t)img->l2_entries * cs) + 1) * img->l2_entries * cs;
    uint64_t max = min_u64(len, table_end - offset) / cs, n = 0;
    struct l2_slot slot;
    int r;
    while (n < max) {
        if ((r = l2_entry_get(img, offset + n * cs, &slot)) < 0)
            return r;
        if (slot.entry || slot.bitmap)
            break;
        n++;
    }
    if (n < 2)
        return 0;
    uint64_t host;
    if ((r = image_mark_dirty(img)) < 0 || (r = refcount_alloc(img, n, &host)) < 0)
        return r;
    if ((r = l2_entry_get(img, offset, &slot)) < 0 || (r = l2_prepare_write(img, &slot)) < 0)
        return r;
    if ((r = overlap_check(img, host, n * cs)) < 0)
        return r;
    if ((r = io_pwrite(img->io, data, n * cs, host)) < 0)
        return qk_set_error(img, r, "Write failed: %s", qk_strerror(r));
    uint64_t bm = img->extl2 ? SUB_ALLOC_ALL : 0;
    for (uint64_t i = 0; i < n; i++) {
        slot.l2_index = (uint32_t)(((offset >> img->cluster_bits) + i) % img->l2_entries);
        if ((r = l2_entry_set(img, &slot, (host + i * cs) | OFLAG_COPIED, bm, 1, 1)) < 0)
            return r;
    }
    return (int64_t)(n * cs);
}

/* Checks shared by every guest write, then bitmap tracking of the range. */
static int begin_write(qk_image *img, uint64_t len, uint64_t offset)
{
    int r = check_writable(img, len, offset);
    return r < 0 ? r : bitmap_track_write(img, offset, len);
}

static int write_range(qk_image *img, const uint8_t *data, uint64_t len, uint64_t offset)
{
    uint64_t cs = img->cluster_size;
    while (len > 0) {
        int64_t done = write_fresh_run(img, data, len, offset);
        if (done < 0)
            return (int)done;
        if (done > 0) {
            data += done;
            offset += (uint64_t)done;
            len -= (uint64_t)done;
            continue;
        }
        uint64_t cstart = offset & ~(cs - 1), a = offset - cstart;
        uint64_t n = min_u64(len, cs - a);
        int r = write_cluster(img, cstart, a, n, data);
        if (r < 0)
            return r;
        if (data)
            data += n;
        offset += n;
        len -= n;
    }
    return 0;
}

QK_API int qk_pwrite(qk_image *img, const void *buf, uint64_t len, uint64_t offset)
{
    int r = begin_write(img, len, offset);
    if (r < 0)
        return r;
    if (img->fmt == QK_FMT_RAW) {
        r = io_pwrite(img->io, buf, len, offset);
        return r < 0 ? qk_set_error(img, r, "Write failed: %s", qk_strerror(r)) : 0;
    }
    return write_range(img, buf, len, offset);
}

/* Mark units [u0, u1] of the cluster at CSTART as zero (v3). With UNMAP, or
 * when the cluster is compressed or shared, its allocation is dropped for a
 * whole-cluster request. */
static int zero_units(qk_image *img, uint64_t cstart, uint32_t u0, uint32_t u1, int unmap)
{
    struct l2_slot slot;
    int r;
    if ((r = l2_entry_get(img, cstart, &slot)) < 0)
        return r;
    uint64_t old = slot.entry, bm = slot.bitmap;
    uint32_t units = img->extl2 ? EXTL2_SUBCLUSTERS : 1;
    int whole = u0 == 0 && u1 == units - 1;
    int owned = entry_allocated(img, old) && (old & OFLAG_COPIED);
    if (!whole && ((old & OFLAG_COMPRESSED) || (entry_allocated(img, old) && !owned))) {
        /* Part of a compressed or shared cluster: write zeros as data. */
        uint64_t unit = img->subcluster_size;
        return write_cluster(img, cstart, u0 * unit, (uint64_t)(u1 - u0 + 1) * unit, NULL);
    }
    int keep = owned && !unmap;
    uint64_t entry, nbm = 0;
    int drop;
    if (img->extl2) {
        if (whole) {
            drop = !keep && (entry_allocated(img, old) || (old & OFLAG_COMPRESSED));
            entry = drop ? 0 : old;
            nbm = SUB_ZERO_ALL;
        } else {
            drop = 0;
            entry = old;
            nbm = bm;
            for (uint32_t u = u0; u <= u1; u++) {
                nbm &= ~(1ull << u);
                nbm |= 1ull << (32 + u);
            }
        }
    } else {
        drop = !keep && (entry_allocated(img, old) || (old & OFLAG_COMPRESSED));
        entry = drop ? OFLAG_ZERO : (old | OFLAG_ZERO);
    }
    if (entry == old && nbm == bm)
        return 0;
    if ((r = l2_prepare_write(img, &slot)) < 0)
        return r;
    if ((r = l2_entry_set(img, &slot, entry, nbm, 0, 0)) < 0)
        return r;
    return drop ? free_entry(img, old) : 0;
}

QK_API int qk_pwrite_zeroes(qk_image *img, uint64_t len, uint64_t offset, unsigned flags)
{
    int r = begin_write(img, len, offset);
    if (r < 0)
        return r;
    if (img->fmt == QK_FMT_RAW || img->hdr.version < 3 || has_data_file(img)) {
        if (img->fmt == QK_FMT_RAW) {
            /* With unmap QEMU's file driver punches a hole (inside the file). */
            uint64_t fsize;
            if ((flags & QK_ZERO_MAY_UNMAP) && img->io->ops->get_size(img->io, &fsize) == 0 &&
                offset + len <= fsize && img->io->ops->punch_hole(img->io, offset, len) == 0)
                return 0;
            uint8_t *z = calloc(1, (size_t)min_u64(len, 1u << 20));
            if (!z)
                return qk_set_error(img, -ENOMEM, "Out of memory");
            while (len > 0 && r == 0) {
                uint64_t n = min_u64(len, 1u << 20);
                r = io_pwrite(img->io, z, n, offset);
                offset += n;
                len -= n;
            }
            free(z);
            return r < 0 ? qk_set_error(img, r, "Write failed: %s", qk_strerror(r)) : 0;
        }
        return write_range(img, NULL, len, offset);
    }
    uint64_t unit = img->extl2 ? img->subcluster_size : img->cluster_size;
    uint64_t cs = img->cluster_size;
    uint64_t end = offset + len;
    uint64_t a = offset, b = end;
    /* The virtual end counts as aligned, as in QEMU. */
    uint64_t astart = (a + unit - 1) & ~(unit - 1);
    uint64_t aend = b == img->size ? b : b & ~(unit - 1);
    if (astart >= aend) {
        return write_range(img, NULL, len, offset);
    }
    if (a < astart && (r = write_range(img, NULL, astart - a, a)) < 0)
        return r;
    if (aend < b && (r = write_range(img, NULL, b - aend, aend)) < 0)
        return r;
    for (uint64_t o = astart; o < aend;) {
        uint64_t cstart = o & ~(cs - 1);
        uint64_t stop = min_u64(aend, cstart + cs);
        uint32_t u0 = (uint32_t)((o - cstart) / unit);
        uint32_t u1 = (uint32_t)((stop - cstart + unit - 1) / unit) - 1;
        if ((r = zero_units(img, cstart, u0, u1, flags & QK_ZERO_MAY_UNMAP)) < 0)
            return r;
        o = stop;
    }
    return 0;
}

QK_API int qk_discard(qk_image *img, uint64_t len, uint64_t offset)
{
    int r = begin_write(img, len, offset);
    if (r < 0)
        return r;
    if (img->fmt == QK_FMT_RAW) {
        r = img->io->ops->punch_hole(img->io, offset, len);
        return r < 0 && r != -EOPNOTSUPP ? qk_set_error(img, r, "Discard failed: %s", qk_strerror(r)) : 0;
    }
    /* Without zero clusters a discard would expose the backing file's
     * stale data: QEMU ignores it, and so do we. */
    if (img->hdr.version < 3 && img->backing)
        return 0;
    uint64_t cs = img->cluster_size;
    uint64_t start = (offset + cs - 1) & ~(cs - 1);
    uint64_t end = offset + len == img->size ? offset + len : (offset + len) & ~(cs - 1);
    for (uint64_t c = start; c < end; c += cs) {
        struct l2_slot slot;
        if ((r = l2_entry_get(img, c, &slot)) < 0)
            return r;
        uint64_t old = slot.entry;
        int allocated = entry_allocated(img, old) || (old & OFLAG_COMPRESSED);
        if (!img->backing && !allocated)
            continue;
        uint64_t entry, nbm;
        if (img->extl2) {
            entry = 0;
            nbm = SUB_ZERO_ALL;
        } else {
            entry = img->hdr.version >= 3 ? OFLAG_ZERO : 0;
            nbm = 0;
        }
        if (entry == old && nbm == slot.bitmap)
            continue;
        if ((r = l2_prepare_write(img, &slot)) < 0)
            return r;
        if ((r = l2_entry_set(img, &slot, entry, nbm, 0, 0)) < 0)
            return r;
        if ((r = free_entry(img, old)) < 0)
            return r;
        uint64_t host = old & L2E_OFFSET_MASK;
        uint64_t rc;
        if (allocated && !(old & OFLAG_COMPRESSED) && !has_data_file(img) &&
            refcount_get(img, host >> img->cluster_bits, &rc) == 0 && rc == 0)
            img->io->ops->punch_hole(img->io, host, cs);
    }
    return 0;
}

QK_API int qk_flush(qk_image *img)
{
    if (!img->is_open)
        return qk_set_error(img, QK_E_INVALID, "The image is not open");
    if (!img->writable)
        return 0;
    int r = 0;
    if (img->fmt == QK_FMT_QCOW2) {
        if ((r = cache_write_dirty(img->l2_cache)) == 0)
            r = cache_write_dirty(img->rb_cache);
    }
    if (r == 0 && img->data_io != img->io)
        r = img->data_io->ops->flush(img->data_io);
    if (r == 0)
        r = img->io->ops->flush(img->io);
    return r < 0 ? qk_set_error(img, r, "Flush failed: %s", qk_strerror(r)) : 0;
}

QK_API int qk_compression_type(const qk_image *img)
{
    return img->fmt == QK_FMT_QCOW2 ? img->hdr.compression_type : 0;
}

QK_API uint32_t qk_cluster_size(const qk_image *img)
{
    return img->fmt == QK_FMT_QCOW2 ? img->cluster_size : 512;
}

/* Find LEN bytes for compressed data, packed after the previous compressed
 * cluster as QEMU's qcow2_alloc_bytes does: every host cluster the bytes
 * touch gets one more reference; a run past the partly used cluster takes
 * the next cluster when that one is free, else starts afresh. */
static int alloc_bytes(qk_image *img, size_t len, uint64_t *out)
{
    uint64_t cs = img->cluster_size;
    uint64_t off = img->free_byte_offset;
    int r;
    if (off && (off & (cs - 1))) {
        uint64_t cur = off & ~(cs - 1);
        if ((off & (cs - 1)) + len > cs) {
            /* Spill into the next cluster, if it is free. */
            if ((r = refcount_alloc_at(img, (cur >> img->cluster_bits) + 1)) < 0)
                return r;
            if (r == 1)
                goto fresh;
        }
        if ((r = refcount_update(img, cur, cs, 1)) < 0)
            return r;
        *out = off;
        img->free_byte_offset = off + len;
        return 0;
    }
fresh:;
    uint64_t n = div_round_up(len, cs), start;
    if ((r = refcount_alloc(img, n, &start)) < 0)
        return r;
    *out = start;
    img->free_byte_offset = start + len;
    return 0;
}

QK_API int qk_pwrite_compressed_data(qk_image *img, const void *data, size_t len, uint64_t offset)
{
    uint64_t cs = img->cluster_size;
    int r = check_writable(img, cs > img->size - offset ? img->size - offset : cs, offset);
    if (r < 0)
        return r;
    if (img->fmt != QK_FMT_QCOW2 || has_data_file(img))
        return qk_set_error(img, QK_E_UNSUPPORTED, "Compressed writes need a qcow2 image without an external data file");
    if (offset & (cs - 1))
        return qk_set_error(img, -EINVAL, "Compressed writes must be cluster aligned");
    if (len == 0 || len >= cs)
        return qk_set_error(img, -EINVAL, "Compressed data must be smaller than a cluster");
    if ((r = bitmap_track_write(img, offset, min_u64(cs, img->size - offset))) < 0)
        return r;
    struct l2_slot slot;
    if ((r = l2_entry_get(img, offset, &slot)) < 0)
        return r;
    uint64_t old = slot.entry, coff;
    if ((r = image_mark_dirty(img)) < 0)
        return r;
    if ((r = alloc_bytes(img, len, &coff)) < 0)
        return r;
    if ((r = l2_prepare_write(img, &slot)) < 0)
        return r;
    if ((r = overlap_check(img, coff, len)) < 0)
        return r;
    if ((r = io_pwrite(img->io, data, len, coff)) < 0)
        return qk_set_error(img, r, "Write failed: %s", qk_strerror(r));
    uint64_t nsec_field = ((coff + len - 1) >> 9) - (coff >> 9);
    unsigned shift = 62 - (img->cluster_bits - 8);
    uint64_t entry = OFLAG_COMPRESSED | (nsec_field << shift) | coff;
    if ((r = l2_entry_set(img, &slot, entry, 0, 1, 1)) < 0)
        return r;
    return free_entry(img, old);
}

QK_API int qk_pwrite_compressed(qk_image *img, const void *buf, uint64_t len, uint64_t offset)
{
    uint64_t cs = img->cluster_size;
    int r = check_writable(img, len, offset);
    if (r < 0)
        return r;
    if (img->fmt != QK_FMT_QCOW2 || (offset & (cs - 1)) || len > cs ||
        (len < cs && offset + len != img->size))
        return qk_set_error(img, -EINVAL, "Compressed writes take one whole cluster, cluster aligned");
    uint8_t *in = NULL, *out = malloc(cs);
    const uint8_t *src = buf;
    if (!out)
        return qk_set_error(img, -ENOMEM, "Out of memory");
    if (len < cs) {          /* the last, partial cluster: pad with zeros */
        if (!(in = calloc(1, cs))) {
            free(out);
            return qk_set_error(img, -ENOMEM, "Out of memory");
        }
        memcpy(in, buf, len);
        src = in;
    }
    size_t outlen = cs - 1;
    r = qk_compress(img->hdr.compression_type, src, cs, out, &outlen);
    if (r == -ENOSPC)
        r = qk_pwrite(img, buf, len, offset);      /* incompressible: store it plain */
    else if (r < 0)
        r = qk_set_error(img, r, "Compression failed: %s", qk_strerror(r));
    else
        r = qk_pwrite_compressed_data(img, out, outlen, offset);
    free(in);
    free(out);
    return r;
}
