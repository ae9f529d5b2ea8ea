/*
 * image.c - the public entry points: handle life cycle, open, read, block
 * status and information.
 *
 * Open order (each step validates what the next one relies on):
 *  1. format: requested, or probed (qcow2 magic, else raw)
 *  2. header + extensions (header.c)
 *  3. refcount table, L1 table and snapshot table placement: aligned, inside
 *     the file, within QEMU's size limits, then the L1 table is read
 *  4. external data file, snapshot table, bitmap directory
 *  5. backing chain (backing.c)
 *
 * Invariants:
 *  1. A handle is either open (is_open) with every field valid, or closed
 *     with every resource released; a failed open leaves it closed.
 *  2. Guest reads never go past the virtual size; host reads of metadata
 *     are bounded by the checks of step 3 and of cluster.c.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "endian.h"
#include "internal.h"

#define L2_CACHE_BYTES_TOP (4u << 20)
#define L2_CACHE_BYTES_BACKING (1u << 20)

QK_API int qk_image_new(qk_image **out)
{
    qk_image *img = calloc(1, sizeof *img);
    if (!img)
        return -ENOMEM;
    img->cbuf_host = UINT64_MAX;
    *out = img;
    return 0;
}

int image_write_sync(qk_image *img, uint64_t off, const void *buf, size_t len, const char *what)
{
    int r = io_pwrite(img->io, buf, len, off);
    if (r == 0)
        r = img->io->ops->flush(img->io);
    return r < 0 ? qk_set_error(img, r, "Could not write %s: %s", what, qk_strerror(r)) : 0;
}

int image_write_be64_sync(qk_image *img, uint64_t off, uint64_t value, const char *what)
{
    uint8_t be[8];
    be64_store(be, value);
    return image_write_sync(img, off, be, sizeof be, what);
}

int image_mark_dirty(qk_image *img)
{
    if (img->lazy_dirty || !(img->hdr.compat & COMPAT_LAZY_REFCOUNTS))
        return 0;
    int r = image_write_be64_sync(img, HDR_INCOMPAT, img->hdr.incompat | INCOMPAT_DIRTY, "the dirty bit");
    if (r < 0)
        return r;
    img->hdr.incompat |= INCOMPAT_DIRTY;
    img->lazy_dirty = 1;
    return 0;
}

int image_rewrite_header(qk_image *img)
{
    uint8_t *buf = malloc(img->cluster_size);
    if (!buf)
        return qk_set_error(img, -ENOMEM, "Out of memory");
    int r = header_serialize(&img->hdr, buf, img->cluster_size);
    if (r < 0) {
        free(buf);
        return qk_set_error(img, r, "The header does not fit in one cluster");
    }
    r = io_pwrite(img->io, buf, img->cluster_size, 0);
    free(buf);
    if (r == 0)
        r = img->io->ops->flush(img->io);
    return r < 0 ? qk_set_error(img, r, "Could not write the header: %s", qk_strerror(r)) : 0;
}

int image_mark_clean(qk_image *img)
{
    int r = qk_flush(img);
    if (r == 0 && img->lazy_dirty) {
        r = image_write_be64_sync(img, HDR_INCOMPAT, img->hdr.incompat & ~INCOMPAT_DIRTY,
                                  "the dirty bit");
        if (r == 0) {
            img->hdr.incompat &= ~INCOMPAT_DIRTY;
            img->lazy_dirty = 0;
        }
    }
    return r;
}

/* Flush everything and clear the dirty bit we set. */
static int close_writable(qk_image *img)
{
    int r = bitmap_store_all(img);
    return r == 0 ? image_mark_clean(img) : r;
}

/* What a read-write open changes before the first write: refuse what we
 * cannot keep consistent, clear autoclear bits we do not maintain. */
static int prepare_writable(qk_image *img)
{
    struct qk_header *h = &img->hdr;
    int r;
    if ((r = refcount_open(img)) < 0 || (r = bitmap_open_writable(img)) < 0)
        return r;
    /* A dirty lazy-refcounts image is repaired before use, as QEMU does
     * (qcow2_do_open); an open for qk_check leaves that to the check. */
    if ((h->incompat & INCOMPAT_DIRTY) && !(img->flags & QK_OPEN_CHECK) && (r = check_repair_dirty(img)) < 0)
        return r;
    uint64_t keep = h->autoclear & AUTOCLEAR_KNOWN;
    if (h->autoclear != keep && h->version >= 3) {
        h->autoclear = keep;
        if ((r = image_rewrite_header(img)) < 0)
            return r;
    }
    return 0;
}

static void image_release(qk_image *img)
{
    if (img->backing)
        qk_close(img->backing);
    img->backing = NULL;
    if (img->data_io && img->data_io != img->io)
        io_close(img->data_io);
    io_close(img->io);
    img->io = img->data_io = NULL;
    refcount_close(img);
    cache_free(img->l2_cache);
    img->l2_cache = NULL;
    snapshot_free_all(img);
    bitmap_free_all(img);
    header_free(&img->hdr);
    free(img->l1);
    compress_decoder_free(img->decoder);
    img->decoder = NULL;
    free(img->cbuf);
    free(img->zbuf);
    free(img->filename);
    free(img->backing_full);
    free(img->backing_fmt_used);
    free(img->data_file_full);
    img->l1 = NULL;
    img->cbuf = img->zbuf = NULL;
    img->filename = img->backing_full = img->backing_fmt_used = img->data_file_full = NULL;
    img->is_open = 0;
}

QK_API int qk_close(qk_image *img)
{
    int r = 0;
    if (!img)
        return 0;
    if (img->is_open && img->writable && img->fmt == QK_FMT_QCOW2)
        r = close_writable(img);
    image_release(img);
    free(img->warnings);
    free(img);
    return r;
}

QK_API uint64_t qk_size(const qk_image *img)
{
    return img->size;
}

QK_API const char *qk_filename(const qk_image *img)
{
    return img->filename;
}

QK_API qk_image *qk_backing(qk_image *img)
{
    return img->backing;
}

/* Check that a table of BYTES bytes at OFFSET is aligned and inside the
 * file, with QEMU's messages for the first two cases (qcow2_validate_table). */
int image_past_eof(const qk_image *img, uint64_t end)
{
    return end > img->file_size && end - img->file_size >= img->cluster_size && !(img->flags & QK_OPEN_CHECK);
}

static int validate_table(qk_image *img, uint64_t offset, uint64_t entries, uint64_t entry_len,
                          uint64_t max_bytes, const char *name)
{
    if (entries > max_bytes / entry_len)
        return QK_CORRUPT(img, "%s too large", name);
    uint64_t bytes = entries * entry_len;
    if ((uint64_t)INT64_MAX - bytes < offset || !is_aligned(offset, img->cluster_size))
        return QK_CORRUPT(img, "%s offset invalid", name);
    if (bytes && (offset == 0 || image_past_eof(img, offset + bytes)))
        return QK_CORRUPT(img, "%s is past the end of the file (offset %#llx, %llu bytes)", name,
                          (unsigned long long)offset, (unsigned long long)bytes);
    return 0;
}

static int open_data_file(qk_image *img)
{
    const char *name = img->hdr.data_file;
    if (!(img->hdr.incompat & INCOMPAT_DATA_FILE))
        return 0;
    if (!path_is_plain(name))
        return qk_set_error(img, QK_E_UNSUPPORTED,
                            "External data file '%s' uses a protocol prefix; only local files are opened",
                            name);
    if (!(img->data_file_full = backing_resolve(img->filename, name)))
        return qk_set_error(img, -ENOMEM, "Out of memory");
    int mode = (img->writable ? QK_IO_WRITE : 0) | ((img->flags & QK_OPEN_UNSAFE) ? QK_IO_NOSYNC : 0);
    int r = io_posix_open(&img->data_io, img->data_file_full, mode, 0);
    if (r < 0) {
        img->data_io = img->io;
        return qk_set_error(img, r, "Could not open '%s': %s", img->data_file_full, qk_strerror(r));
    }
    return 0;
}

static int open_qcow2(qk_image *img)
{
    struct qk_header *h = &img->hdr;
    uint8_t first[512];
    int r;

    if ((r = io_pread(img->io, first, sizeof first, 0)) < 0)
        return qk_set_error(img, r, "Could not read qcow2 header: %s", qk_strerror(r));
    uint32_t cb = be32_load(first + HDR_CLUSTER_BITS);
    size_t buflen = (cb >= MIN_CLUSTER_BITS && cb <= MAX_CLUSTER_BITS) ? (size_t)1 << cb : sizeof first;
    if (buflen < HDR_V3_LENGTH * 2)
        buflen = sizeof first;
    uint8_t *buf = malloc(buflen);
    if (!buf)
        return qk_set_error(img, -ENOMEM, "Out of memory");
    if ((r = io_pread(img->io, buf, buflen, 0)) < 0) {
        free(buf);
        return qk_set_error(img, r, "Could not read qcow2 header: %s", qk_strerror(r));
    }
    r = header_parse(img, buf, buflen, img->file_size, h);
    free(buf);
    if (r < 0)
        return r;

    img->cluster_bits = h->cluster_bits;
    img->cluster_size = 1u << h->cluster_bits;
    img->extl2 = (h->incompat & INCOMPAT_EXTL2) != 0;
    img->l2_entry_size = img->extl2 ? 16 : 8;
    img->l2_entries = img->cluster_size / img->l2_entry_size;
    img->subcluster_size = img->extl2 ? img->cluster_size / EXTL2_SUBCLUSTERS : img->cluster_size;
    img->size = h->size & ~511ull;   /* QEMU counts whole 512-byte sectors */

    if ((h->incompat & INCOMPAT_CORRUPT) && img->writable && !(img->flags & QK_OPEN_CHECK))
        return QK_CORRUPT(img, "qcow2: Image is corrupt; cannot be opened read/write");

    if ((r = validate_table(img, h->reftable_offset, h->reftable_clusters, img->cluster_size,
                            MAX_REFTABLE_BYTES, "Reference count table")) < 0)
        return r;
    if (h->reftable_clusters == 0)
        return QK_CORRUPT(img, "Image does not contain a reference count table");

    uint64_t bytes_per_l2 = (uint64_t)img->l2_entries << img->cluster_bits;
    uint64_t l1_needed = div_round_up(h->size, bytes_per_l2);
    if (h->size > (uint64_t)INT64_MAX || l1_needed > INT32_MAX)
        return QK_CORRUPT(img, "Image is too big");
    if (h->l1_size < l1_needed)
        return QK_CORRUPT(img, "L1 table is too small");
    if ((r = validate_table(img, h->l1_offset, h->l1_size, 8, MAX_L1_BYTES, "Active L1 table")) < 0)
        return r;
    if ((r = validate_table(img, h->snapshots_offset, h->nb_snapshots, SNAP_FIXED_SIZE,
                            (uint64_t)SNAP_FIXED_SIZE * MAX_SNAPSHOTS, "Snapshot table")) < 0)
        return r;

    img->l1_size = h->l1_size;
    if (img->l1_size) {
        img->l1 = malloc((size_t)img->l1_size * 8);
        if (!img->l1)
            return qk_set_error(img, -ENOMEM, "Out of memory for the L1 table");
        if ((r = io_pread(img->io, img->l1, (size_t)img->l1_size * 8, h->l1_offset)) < 0)
            return qk_set_error(img, r, "Could not read L1 table: %s", qk_strerror(r));
        for (uint32_t i = 0; i < img->l1_size; i++)
            img->l1[i] = be64_load(&img->l1[i]);
    }

    size_t cache_bytes = img->depth ? L2_CACHE_BYTES_BACKING : L2_CACHE_BYTES_TOP;
    size_t nb_tables = cache_bytes / img->cluster_size;
    if (nb_tables < 4)
        nb_tables = 4;
    if ((r = cache_new(&img->l2_cache, img->io, img->cluster_size, nb_tables)) < 0)
        return qk_set_error(img, r, "Out of memory for the L2 cache");

    img->data_io = img->io;
    if ((r = open_data_file(img)) < 0)
        return r;
    if ((r = snapshot_load(img)) < 0)
        return r;
    if ((r = bitmap_load_directory(img)) < 0)
        return r;
    if (h->has_bitmaps_ext && img->bitmap_dir_error)
        qk_add_warning(img, "bitmaps: %s", img->bitmap_dir_reason);
    return 0;
}

QK_API int qk_open(qk_image *img, const char *path, unsigned flags)
{
    qk_io *io;
    if (!img || !path)
        return -EINVAL;
    if (img->is_open)
        return qk_set_error(img, QK_E_INVALID, "The handle is already open");
    int mode = ((flags & QK_OPEN_RDWR) ? QK_IO_WRITE : 0) | ((flags & QK_OPEN_UNSAFE) ? QK_IO_NOSYNC : 0);
    int r = io_posix_open(&io, path, mode, 0);
    if (r < 0)
        return qk_set_error(img, r, "Could not open '%s': %s", path, qk_strerror(r));
    return image_open_io(img, io, path, flags);
}

int image_open_io(qk_image *img, qk_io *io, const char *path, unsigned flags)
{
    int r;
    img->io = io;
    img->errmsg[0] = '\0';
    img->flags = flags;
    img->writable = (flags & QK_OPEN_RDWR) != 0;
    if (!(img->filename = strdup(path))) {
        r = qk_set_error(img, -ENOMEM, "Out of memory");
        goto fail;
    }
    if ((r = lock_image(img)) < 0)
        goto fail;
    if ((r = img->io->ops->get_size(img->io, &img->file_size)) < 0) {
        qk_set_error(img, r, "Could not get the size of '%s': %s", path, qk_strerror(r));
        goto fail;
    }

    if (flags & QK_OPEN_FMT_RAW) {
        img->fmt = QK_FMT_RAW;
    } else {
        uint8_t magic[4];
        if ((r = io_pread(img->io, magic, 4, 0)) < 0) {
            qk_set_error(img, r, "Could not read '%s': %s", path, qk_strerror(r));
            goto fail;
        }
        int is_qcow2 = img->file_size >= 4 && be32_load(magic) == QCOW_MAGIC;
        if (!is_qcow2 && (flags & QK_OPEN_FMT_QCOW2)) {
            r = qk_set_error(img, QK_E_NOT_FORMAT, "Image is not in qcow2 format");
            goto fail;
        }
        img->fmt = is_qcow2 ? QK_FMT_QCOW2 : QK_FMT_RAW;
    }

    if (img->fmt == QK_FMT_RAW) {
        /* QEMU sees a raw file as whole sectors: the tail reads as zeros. */
        if (ck_align_up(img->file_size, 512, &img->size) < 0) {
            r = qk_set_error(img, QK_E_TOO_LARGE, "File too large");
            goto fail;
        }
        img->data_io = img->io;
    } else {
        if ((r = open_qcow2(img)) < 0)
            goto fail;
        if (!(flags & QK_OPEN_NO_BACKING) && (r = backing_open(img)) < 0)
            goto fail;
        if (img->writable && (r = prepare_writable(img)) < 0)
            goto fail;
    }
    img->is_open = 1;
    return 0;
fail:
    image_release(img);
    return r;
}

/* Put a fresh descriptor for the image file under IMG in MODE, with the
 * locks of the open mode in img->flags. The old descriptor (and its locks)
 * goes first: OFD locks of two descriptors conflict even in one process. */
static int reopen_io(qk_image *img, int mode)
{
    qk_io *io;
    int r = io_posix_open(&io, img->filename, mode, 0);
    if (r < 0)
        return qk_set_error(img, r, "Could not open '%s': %s", img->filename, qk_strerror(r));
    io_close(img->io);
    img->io = img->data_io = io;
    cache_free(img->l2_cache);
    img->l2_cache = NULL;
    refcount_close(img);
    if (img->fmt == QK_FMT_QCOW2) {
        size_t cache_bytes = img->depth ? L2_CACHE_BYTES_BACKING : L2_CACHE_BYTES_TOP;
        size_t nb_tables = cache_bytes / img->cluster_size;
        if ((r = cache_new(&img->l2_cache, img->io, img->cluster_size, nb_tables < 4 ? 4 : nb_tables)) < 0)
            return qk_set_error(img, r, "Out of memory for the L2 cache");
    }
    return lock_image(img);
}

QK_API int qk_reopen_rw(qk_image *img)
{
    if (!img->is_open)
        return qk_set_error(img, QK_E_INVALID, "The image is not open");
    if (img->writable)
        return 0;
    if (img->data_io != img->io)
        return qk_set_error(img, QK_E_UNSUPPORTED, "Cannot reopen an image with an external data file read-write");
    if (img->hdr.incompat & INCOMPAT_CORRUPT)
        return QK_CORRUPT(img, "qcow2: Image is corrupt; cannot be opened read/write");
    unsigned old_flags = img->flags;
    int nosync = (img->flags & QK_OPEN_UNSAFE) ? QK_IO_NOSYNC : 0;
    img->flags |= QK_OPEN_RDWR;
    img->writable = 1;
    int r = reopen_io(img, QK_IO_WRITE | nosync);
    if (r < 0) {
        /* Back to a reader; what failed is in the message already. */
        char msg[sizeof img->errmsg];
        memcpy(msg, img->errmsg, sizeof msg);
        img->flags = old_flags;
        img->writable = 0;
        if (reopen_io(img, nosync) < 0)
            img->is_open = 0;
        memcpy(img->errmsg, msg, sizeof msg);
        return r;
    }
    if ((r = img->io->ops->get_size(img->io, &img->file_size)) < 0)
        return qk_set_error(img, r, "Could not get the size of '%s': %s", img->filename, qk_strerror(r));
    return img->fmt == QK_FMT_QCOW2 ? prepare_writable(img) : 0;
}
