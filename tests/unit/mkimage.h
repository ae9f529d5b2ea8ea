/*
 * mkimage.h - build tiny qcow2 images byte by byte for unit tests.
 *
 * Header-only (every function is static inline) until the Makefile links a
 * tests/unit/mkimage.c; include it from any test_*.c.
 *
 * Layout of an image made by mkimg_init(), like qemu-img's:
 *
 *   cluster 0   header (+ backing format extension, end marker, backing name)
 *   cluster 1   refcount table (one entry -> cluster 2)
 *   cluster 2   refcount block, 16-bit refcounts (covers CS/2 clusters)
 *   cluster 3   L1 table (entry k -> cluster 4+k, COPIED)
 *   cluster 4+  the L2 tables, as many as nb_clusters needs (at most CS/8)
 *   then        whatever the test allocates (data, compressed bytes)
 *
 * The refcounts of everything the builder allocates are kept exact, so the
 * images pass `qemu-img check` unless a test breaks them on purpose. The
 * test sets L2 entries itself (mkimg_set_l2) or through the helpers for the
 * common cases (mkimg_data, mkimg_compressed). Nothing is written to disk
 * until mkimg_write(), which lays out the header last.
 *
 * Compressed descriptors (qcow2.txt, "Compressed Clusters Descriptor"):
 *   x = 62 - (cluster_bits - 8); bits 0..x-1 host byte offset; bits x..61
 *   number of additional 512-byte sectors; csize = nb_sectors*512 - (off & 511).
 */
#ifndef QK_TEST_MKIMAGE_H
#define QK_TEST_MKIMAGE_H

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zlib.h>

#include "endian.h"
#include "format.h"

struct mkimg {
    unsigned cluster_bits;
    uint64_t cs;
    int version;              /* 3 (default) or 2 */
    int extl2;                /* 128-bit L2 entries with subclusters */
    int compression_type;     /* 0 zlib, 1 zstd (sets incompatible bit 3) */
    uint64_t size;            /* virtual size: nb_clusters * cs */
    uint32_t l2_entries;      /* entries per L2 table */
    uint8_t *buf;             /* the whole file */
    uint64_t len;             /* file length (always whole clusters) */
    uint64_t reftable_off, refblock_off, l1_off, l2_off;  /* l2_off: the first L2 table */
    uint32_t nb_l2;           /* L1 entries = L2 tables */
    const char *backing;      /* backing file name, or NULL */
    const char *backing_fmt;  /* backing format extension, or NULL */
};

#define MKIMG_L1_OFF(m)   (3 * (m)->cs)
#define MKIMG_L2_OFF(m)   (4 * (m)->cs)

static inline void mkimg_die(const char *what)
{
    fprintf(stderr, "mkimage: %s\n", what);
    abort();
}

/* Grow the file to NEW_LEN bytes (zero filled). */
static inline void mkimg_grow(struct mkimg *m, uint64_t new_len)
{
    if (new_len <= m->len)
        return;
    uint8_t *b = realloc(m->buf, new_len);
    if (!b)
        mkimg_die("out of memory");
    memset(b + m->len, 0, new_len - m->len);
    m->buf = b;
    m->len = new_len;
}

/* Add DELTA to the refcount of the host cluster at OFF. */
static inline void mkimg_ref(struct mkimg *m, uint64_t off, int delta)
{
    uint64_t idx = off >> m->cluster_bits;
    if (idx >= m->cs / 2)
        mkimg_die("host offset beyond the one refcount block");
    uint8_t *p = m->buf + m->refblock_off + 2 * idx;
    be16_store(p, (uint16_t)(be16_load(p) + delta));
}

static inline uint16_t mkimg_refcount(const struct mkimg *m, uint64_t off)
{
    return be16_load(m->buf + m->refblock_off + 2 * (off >> m->cluster_bits));
}

/* Append N zeroed clusters to the file, each with refcount REF; returns the
 * host offset of the first. */
static inline uint64_t mkimg_alloc(struct mkimg *m, uint64_t n, int ref)
{
    uint64_t off = m->len;
    mkimg_grow(m, m->len + n * m->cs);
    for (uint64_t i = 0; i < n; i++)
        mkimg_ref(m, off + i * m->cs, ref);
    return off;
}

/* Lay out a v3 image of NB_CLUSTERS guest clusters, every L2 table allocated.
 * EXTL2 needs cluster_bits >= 14 (as QEMU). Change m->version,
 * m->compression_type, m->backing, m->backing_fmt before mkimg_write(). */
static inline void mkimg_init(struct mkimg *m, unsigned cluster_bits, int extl2,
                              uint64_t nb_clusters)
{
    memset(m, 0, sizeof *m);
    m->cluster_bits = cluster_bits;
    m->cs = 1ull << cluster_bits;
    m->version = 3;
    m->extl2 = extl2;
    m->l2_entries = (uint32_t)(m->cs / (extl2 ? 16 : 8));
    uint64_t nb_l2 = (nb_clusters + m->l2_entries - 1) / m->l2_entries;
    if (nb_clusters == 0 || nb_l2 > m->cs / 8)
        mkimg_die("nb_clusters must fit the L2 tables of a one-cluster L1");
    m->nb_l2 = (uint32_t)nb_l2;
    m->size = nb_clusters * m->cs;
    m->refblock_off = 2 * m->cs; /* needed by mkimg_ref before it is set below */
    mkimg_grow(m, (4 + nb_l2) * m->cs);
    m->reftable_off = m->cs;
    m->l1_off = MKIMG_L1_OFF(m);
    m->l2_off = MKIMG_L2_OFF(m);
    for (uint64_t c = 0; c < 4 + nb_l2; c++)
        mkimg_ref(m, c * m->cs, 1);
    be64_store(m->buf + m->reftable_off, m->refblock_off);
    for (uint64_t k = 0; k < nb_l2; k++)
        be64_store(m->buf + m->l1_off + 8 * k, OFLAG_COPIED | (m->l2_off + k * m->cs));
}

/* Raw L1 entry K (for example 0: that whole L2 range is unallocated). */
static inline void mkimg_set_l1(struct mkimg *m, uint64_t k, uint64_t entry)
{
    if (k >= m->nb_l2)
        mkimg_die("L1 index beyond the L1 table");
    be64_store(m->buf + m->l1_off + 8 * k, entry);
}

static inline void mkimg_free(struct mkimg *m)
{
    free(m->buf);
    m->buf = NULL;
}

/* Byte offset in the file of the L2 entry of guest cluster I. */
static inline uint64_t mkimg_l2e_off(const struct mkimg *m, uint64_t i)
{
    return m->l2_off + (i / m->l2_entries) * m->cs + (i % m->l2_entries) * (m->extl2 ? 16 : 8);
}

/* Raw L2 entry of guest cluster I; BITMAP is used with extended L2. */
static inline void mkimg_set_l2(struct mkimg *m, uint64_t i, uint64_t entry, uint64_t bitmap)
{
    if (i >= m->size / m->cs)
        mkimg_die("L2 index beyond the virtual size");
    uint8_t *p = m->buf + mkimg_l2e_off(m, i);
    be64_store(p, entry);
    if (m->extl2)
        be64_store(p + 8, bitmap);
}

static inline uint64_t mkimg_get_l2(const struct mkimg *m, uint64_t i)
{
    return be64_load(m->buf + mkimg_l2e_off(m, i));
}

/* Copy N bytes into the file at OFF (the file grows as needed, refcounts are
 * not touched). */
static inline void mkimg_put(struct mkimg *m, uint64_t off, const void *data, size_t n)
{
    uint64_t end = off + n;
    uint64_t alen = (end + m->cs - 1) & ~(m->cs - 1);
    mkimg_grow(m, alen);
    memcpy(m->buf + off, data, n);
}

/* Guest cluster I gets a fresh host cluster holding DATA (CS bytes, or
 * zeros if NULL), entry COPIED | offset; with extended L2 every subcluster
 * is marked allocated. Returns the host offset. */
static inline uint64_t mkimg_data(struct mkimg *m, uint64_t i, const void *data)
{
    uint64_t host = mkimg_alloc(m, 1, 1);
    if (data)
        memcpy(m->buf + host, data, m->cs);
    mkimg_set_l2(m, i, OFLAG_COPIED | host, m->extl2 ? 0xffffffffull : 0);
    return host;
}

/* The compressed cluster descriptor for CLEN bytes at host byte OFF. */
static inline uint64_t mkimg_cdesc(unsigned cluster_bits, uint64_t off, uint64_t clen)
{
    unsigned shift = 62 - (cluster_bits - 8);
    uint64_t nb_sectors = ((off + clen - 1) >> 9) - (off >> 9) + 1;
    if (clen == 0 || off >= (1ull << shift) || nb_sectors - 1 >= (1ull << (cluster_bits - 8)))
        mkimg_die("compressed descriptor out of range");
    return OFLAG_COMPRESSED | (nb_sectors - 1) << shift | off;
}

/* Bytes a reader is told to read for descriptor E: nb_sectors*512 - (off & 511). */
static inline uint64_t mkimg_csize(unsigned cluster_bits, uint64_t e)
{
    unsigned shift = 62 - (cluster_bits - 8);
    uint64_t off = e & ((1ull << shift) - 1);
    uint64_t nb = ((e >> shift) & ((1ull << (cluster_bits - 8)) - 1)) + 1;
    return nb * 512 - (off & 511);
}

/* Store CLEN compressed bytes at host byte AT (which need not be aligned;
 * AT = 0 means "at the start of a fresh cluster") and point guest cluster I
 * at them. Every host cluster the bytes touch gets one more reference, as
 * QEMU counts them. Returns the descriptor. */
static inline uint64_t mkimg_compressed(struct mkimg *m, uint64_t i, const void *cdata,
                                        size_t clen, uint64_t at)
{
    if (at == 0)
        at = m->len;
    if (at < (4 + m->nb_l2) * m->cs)
        mkimg_die("compressed data would overwrite metadata");
    uint64_t first = at & ~(m->cs - 1);
    uint64_t last = (at + clen - 1) & ~(m->cs - 1);
    mkimg_put(m, at, cdata, clen);
    for (uint64_t c = first; c <= last; c += m->cs)
        mkimg_ref(m, c, 1);
    uint64_t e = mkimg_cdesc(m->cluster_bits, at, clen);
    mkimg_set_l2(m, i, e, 0);
    return e;
}

/* Raw deflate with a 4 KiB window, as QEMU writes compressed clusters.
 * Returns the compressed length; DST must hold at least 2*len + 1024. */
static inline size_t mkimg_deflate(const void *src, size_t len, void *dst, size_t cap)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK)
        mkimg_die("deflateInit2");
    z.next_in = (Bytef *)(uintptr_t)src;
    z.avail_in = (uInt)len;
    z.next_out = dst;
    z.avail_out = (uInt)cap;
    if (deflate(&z, Z_FINISH) != Z_STREAM_END)
        mkimg_die("deflate");
    size_t out = z.total_out;
    deflateEnd(&z);
    return out;
}

/* Write the header (cluster 0) into the buffer. */
static inline void mkimg_header(struct mkimg *m)
{
    uint8_t *h = m->buf;
    memset(h, 0, m->cs);
    uint64_t incompat = 0;
    if (m->extl2)
        incompat |= INCOMPAT_EXTL2;
    if (m->compression_type)
        incompat |= INCOMPAT_COMPRESSION;
    be32_store(h + HDR_MAGIC, QCOW_MAGIC);
    be32_store(h + HDR_VERSION, (uint32_t)m->version);
    be32_store(h + HDR_CLUSTER_BITS, m->cluster_bits);
    be64_store(h + HDR_SIZE, m->size);
    be32_store(h + HDR_L1_SIZE, m->nb_l2);
    be64_store(h + HDR_L1_OFFSET, m->l1_off);
    be64_store(h + HDR_REFTABLE_OFFSET, m->reftable_off);
    be32_store(h + HDR_REFTABLE_CLUSTERS, 1);
    size_t pos = HDR_V2_LENGTH;
    if (m->version >= 3) {
        be64_store(h + HDR_INCOMPAT, incompat);
        be32_store(h + HDR_REFCOUNT_ORDER, 4);
        be32_store(h + HDR_HEADER_LENGTH, HDR_V3_LENGTH);
        h[HDR_COMPRESSION_TYPE] = (uint8_t)m->compression_type;
        pos = HDR_V3_LENGTH;
    } else if (incompat) {
        mkimg_die("v2 images have no incompatible features");
    }
    if (m->backing_fmt) {
        uint32_t n = (uint32_t)strlen(m->backing_fmt);
        be32_store(h + pos, EXT_BACKING_FMT);
        be32_store(h + pos + 4, n);
        memcpy(h + pos + 8, m->backing_fmt, n);
        pos += 8 + ((n + 7u) & ~7u);
    }
    pos += 8; /* end marker: 8 zero bytes */
    if (m->backing) {
        size_t n = strlen(m->backing);
        if (pos + n > m->cs)
            mkimg_die("backing name does not fit in the header cluster");
        memcpy(h + pos, m->backing, n);
        be64_store(h + HDR_BACKING_OFFSET, pos);
        be32_store(h + HDR_BACKING_SIZE, (uint32_t)n);
    }
}

/* Write the image to PATH (created or truncated). Returns 0 or -errno. */
static inline int mkimg_write(struct mkimg *m, const char *path)
{
    mkimg_header(m);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return -errno;
    uint64_t done = 0;
    while (done < m->len) {
        ssize_t n = pwrite(fd, m->buf + done, m->len - done, (off_t)done);
        if (n < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
        done += (uint64_t)n;
    }
    if (close(fd) < 0)
        return -errno;
    return 0;
}

#endif
