/*
 * read.c - guest reads and block status across the backing chain.
 *
 * Invariants:
 *  1. qk_pread() never reads guest bytes past the virtual size; a range that
 *     a layer does not allocate reads from its backing file, or zeros beyond
 *     the backing file's size or without one.
 *  2. A compressed cluster is inflated into img->cbuf from at most
 *     img->zbuf's two clusters of input; img->cbuf_host remembers which
 *     cluster it holds, so sequential reads inflate each cluster once.
 *  3. qk_block_status() reports what QEMU's bdrv_block_status + qemu-img map
 *     report: the first layer whose status is data or zero wins.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "internal.h"

static int read_compressed(qk_image *img, struct qk_map *m, uint64_t in_cluster,
                           uint8_t *buf, uint64_t n)
{
    int r;
    if ((r = compressed_check(img, m)) < 0)
        return r;
    if (!img->cbuf) {
        img->cbuf = malloc(img->cluster_size);
        img->zbuf = malloc((size_t)img->cluster_size * 2);
        if (!img->cbuf || !img->zbuf)
            return qk_set_error(img, -ENOMEM, "Out of memory");
    }
    if (img->cbuf_host != m->host) {
        size_t clen = (size_t)min_u64(m->clen, (uint64_t)img->cluster_size * 2);
        img->cbuf_host = UINT64_MAX;
        if ((r = io_pread(img->io, img->zbuf, clen, m->host)) < 0)
            return qk_set_error(img, r, "Could not read compressed cluster: %s", qk_strerror(r));
        r = compress_decode(&img->decoder, img->hdr.compression_type, img->zbuf, clen, img->cbuf,
                            img->cluster_size);
        if (r < 0)
            return QK_CORRUPT(img, "Could not decompress the %s cluster at host offset %#llx",
                              img->hdr.compression_type ? "zstd" : "deflate",
                              (unsigned long long)m->host);
        img->cbuf_host = m->host;
    }
    memcpy(buf, img->cbuf + in_cluster, n);
    return 0;
}

static int read_backing(qk_image *img, uint8_t *buf, uint64_t n, uint64_t off)
{
    qk_image *b = img->backing;
    if (!b || off >= b->size) {
        memset(buf, 0, n);
        return 0;
    }
    uint64_t avail = min_u64(n, b->size - off);
    int r = qk_pread(b, buf, avail, off);
    if (r < 0)
        return qk_set_error(img, r, "%s", qk_errmsg(b));
    memset(buf + avail, 0, n - avail);
    return 0;
}

QK_API int qk_pread(qk_image *img, void *buf, uint64_t len, uint64_t offset)
{
    uint8_t *p = buf;
    int r;
    if (!img->is_open)
        return qk_set_error(img, QK_E_INVALID, "The image is not open");
    uint64_t end;
    if (ck_add(offset, len, &end) || end > img->size)
        return qk_set_error(img, -EINVAL, "Read of %llu bytes at offset %llu is past the end of the image",
                            (unsigned long long)len, (unsigned long long)offset);
    if (img->fmt == QK_FMT_RAW) {
        r = io_pread(img->io, p, len, offset);
        return r < 0 ? qk_set_error(img, r, "Read failed: %s", qk_strerror(r)) : 0;
    }
    while (len > 0) {
        struct qk_map m;
        if ((r = cluster_map(img, offset, len, &m)) < 0)
            return r;
        uint64_t n = m.len;
        switch (m.type) {
        case CT_UNALLOCATED:
            r = read_backing(img, p, n, offset);
            break;
        case CT_ZERO:
            memset(p, 0, n);
            r = 0;
            break;
        case CT_NORMAL:
            r = io_pread(img->data_io, p, n, m.host);
            if (r < 0)
                r = qk_set_error(img, r, "Read failed: %s", qk_strerror(r));
            break;
        case CT_COMPRESSED:
            r = read_compressed(img, &m, offset & (img->cluster_size - 1), p, n);
            break;
        }
        if (r < 0)
            return r;
        p += n;
        offset += n;
        len -= n;
    }
    return 0;
}

/* The status of one layer, as its driver plus QEMU's generic block layer
 * report it (before the chain walk). */
int layer_status(qk_image *img, uint64_t off, uint64_t len, qk_extent *e)
{
    int r;
    e->flags = 0;
    e->host_offset = 0;
    e->file = NULL;
    if (img->fmt == QK_FMT_RAW) {
        int is_data;
        uint64_t run;
        if ((r = img->io->ops->data_status(img->io, off, len, &is_data, &run)) < 0)
            return qk_set_error(img, r, "Block status failed: %s", qk_strerror(r));
        e->length = run;
        e->flags = (is_data ? QK_BS_DATA : QK_BS_ZERO) | QK_BS_OFFSET_VALID | QK_BS_PRESENT;
        e->host_offset = off;
        e->file = img->filename;
        return 0;
    }
    struct qk_map m;
    if ((r = cluster_map(img, off, len, &m)) < 0)
        return r;
    e->length = m.len;
    if (m.has_host) {
        e->flags |= QK_BS_OFFSET_VALID;
        e->host_offset = m.host;
        e->file = img->data_io != img->io ? img->data_file_full : img->filename;
    }
    switch (m.type) {
    case CT_ZERO:
        e->flags |= QK_BS_ZERO | QK_BS_PRESENT;
        break;
    case CT_NORMAL:
        e->flags |= QK_BS_DATA | QK_BS_PRESENT;
        break;
    case CT_COMPRESSED:
        e->flags |= QK_BS_DATA | QK_BS_PRESENT | QK_BS_COMPRESSED;
        break;
    case CT_UNALLOCATED:
        if (!img->backing || off >= img->backing->size)
            e->flags |= QK_BS_ZERO;
        break;
    }
    if (m.type == CT_NORMAL) {
        if (!img->prealloc_checked) {
            img->meta_prealloc = refcount_detect_metadata_prealloc(img);
            img->prealloc_checked = 1;
        }
        /* Like QEMU's BDRV_BLOCK_RECURSE: holes in the file read as zeros. */
        int is_data;
        uint64_t run;
        if (img->meta_prealloc &&
            img->data_io->ops->data_status(img->data_io, e->host_offset, e->length, &is_data, &run) == 0) {
            e->length = run;
            if (!is_data)
                e->flags |= QK_BS_ZERO;
        }
    }
    return 0;
}

/* One extent of the chain walk that qemu-img map does per request. */
static int chain_status(qk_image *img, uint64_t offset, uint64_t len, qk_extent *ext)
{
    qk_image *layer = img;
    int depth = 0;
    for (;;) {
        int r = layer_status(layer, offset, len, ext);
        if (r < 0)
            return layer == img ? r : qk_set_error(img, r, "%s", qk_errmsg(layer));
        len = ext->length;
        if ((ext->flags & (QK_BS_DATA | QK_BS_ZERO)) || !layer->backing)
            break;
        layer = layer->backing;
        len = min_u64(len, layer->size - offset);
        depth++;
    }
    ext->offset = offset;
    ext->depth = depth;
    return 0;
}

static int same_run(const qk_extent *a, const qk_extent *b)
{
    if (a->flags != b->flags || a->depth != b->depth)
        return 0;
    if (!(a->flags & QK_BS_OFFSET_VALID))
        return 1;
    return a->host_offset + a->length == b->host_offset &&
           (a->file == b->file || (a->file && b->file && !strcmp(a->file, b->file)));
}

int status_range(qk_image *img, uint64_t offset, uint64_t *len)
{
    if (!img->is_open)
        return qk_set_error(img, QK_E_INVALID, "The image is not open");
    if (offset >= img->size || *len == 0)
        return qk_set_error(img, -EINVAL, "Block status at offset %llu is past the end of the image",
                            (unsigned long long)offset);
    *len = min_u64(*len, img->size - offset);
    return 0;
}

QK_API int qk_block_status(qk_image *img, uint64_t offset, uint64_t len, qk_extent *ext)
{
    int r = status_range(img, offset, &len);
    if (r == 0)
        r = chain_status(img, offset, len, ext);
    /* Layers answer per L2 table or cluster type; join what reads the same. */
    while (r == 0 && ext->length < len) {
        qk_extent next;
        if ((r = chain_status(img, offset + ext->length, len - ext->length, &next)) < 0)
            return r;
        if (!same_run(ext, &next))
            break;
        ext->length += next.length;
    }
    return r;
}
