/*
 * test_l2.c - L2 entry decoding (cluster.c, compress.c) seen through
 * qk_pread(), qk_block_status() and cluster_map(), on tiny images built byte
 * by byte with mkimage.h and opened from a temporary folder with qk_open().
 *
 * Covered: standard entries (unallocated, zero plain, zero alloc, normal with
 * and without COPIED, contiguous and shared hosts, reserved bits, unaligned
 * offsets, zero flag on v2), compressed descriptors at every cluster size
 * from 512 B to 2 MiB with real raw-deflate (windowBits -12) data at
 * unaligned offsets, across host cluster boundaries, with the sector-count
 * field's lowest and highest bits set, and at a host offset above 2^40;
 * zstd when built with it; extended L2 entries (per-subcluster alloc/zero
 * bits, invalid combinations); and unallocated ranges over a raw backing file.
 *
 * Set QK_TEST_KEEP=1 to keep the images (the folder is printed) for a look
 * with qemu-img check / qemu-io.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "internal.h"
#include "mkimage.h"

#ifdef QK_HAVE_ZSTD
#include <zstd.h>
#endif

#define BS_MASK (QK_BS_PRESENT | QK_BS_ZERO | QK_BS_DATA | QK_BS_OFFSET_VALID | QK_BS_COMPRESSED)

/* ---- fixtures ---------------------------------------------------------- */

struct tdir {
    char dir[64];
    char img[96];
    char backing[96];
};

/* The folder of the running test, so that teardown can remove it when a
 * failed assertion jumps out of the test. */
static struct tdir live_dir;
static int live;
static qk_image *live_img;   /* the open image of the running test */

static void tdir_make(struct tdir *t)
{
    strcpy(t->dir, "/tmp/qk-test-l2.XXXXXX");
    assert_non_null(mkdtemp(t->dir));
    snprintf(t->img, sizeof t->img, "%s/img.qcow2", t->dir);
    snprintf(t->backing, sizeof t->backing, "%s/backing.raw", t->dir);
    live_dir = *t;
    live = 1;
}

static void tdir_remove(struct tdir *t)
{
    live = 0;
    if (getenv("QK_TEST_KEEP")) {
        fprintf(stderr, "kept %s\n", t->dir);
        return;
    }
    unlink(t->img);
    unlink(t->backing);
    rmdir(t->dir);
}

static int teardown(void **state)
{
    (void)state;
    if (live_img) {
        qk_close(live_img);
        live_img = NULL;
    }
    if (live)
        tdir_remove(&live_dir);
    return 0;
}

/* Write M into a fresh folder and open it read-only. */
static qk_image *save_and_open(struct mkimg *m, struct tdir *t)
{
    tdir_make(t);
    int rc = mkimg_write(m, t->img);
    assert_int_equal(rc, 0);
    qk_image *img = NULL;
    assert_int_equal(qk_image_new(&img), 0);
    live_img = img;
    rc = qk_open(img, t->img, QK_OPEN_FMT_QCOW2);
    if (rc != 0)
        fail_msg("qk_open(%s) = %d (%s): %s", t->img, rc, qk_strerror(rc), qk_errmsg(img));
    return img;
}

static void close_and_remove(qk_image *img, struct tdir *t)
{
    live_img = NULL;
    assert_int_equal(qk_close(img), 0);
    tdir_remove(t);
}

/* Compressible: period 251, so a misplaced byte shows. */
static void fill_pattern(uint8_t *b, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        b[i] = (uint8_t)(seed * 17 + i % 251);
}

/* Incompressible: deflate output is a little larger than the input. */
static void fill_random(uint8_t *b, size_t n, uint64_t seed)
{
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b[i] = (uint8_t)(x >> 24);
    }
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    assert_non_null(p);
    return p;
}

/* qk_pread(off, len) must succeed and return EXPECT. */
static void expect_read(qk_image *img, uint64_t off, uint64_t len, const uint8_t *expect)
{
    uint8_t *got = xmalloc(len);
    memset(got, 0xa5, len);
    int rc = qk_pread(img, got, len, off);
    if (rc != 0)
        fail_msg("qk_pread(off=%llu, len=%llu) = %d (%s): %s", (unsigned long long)off,
                 (unsigned long long)len, rc, qk_strerror(rc), qk_errmsg(img));
    for (uint64_t i = 0; i < len; i++)
        if (got[i] != expect[i])
            fail_msg("qk_pread(off=%llu, len=%llu): byte %llu (guest %llu) is 0x%02x, want 0x%02x",
                     (unsigned long long)off, (unsigned long long)len, (unsigned long long)i,
                     (unsigned long long)(off + i), got[i], expect[i]);
    free(got);
}

static void expect_read_fails(qk_image *img, uint64_t off, uint64_t len, int code)
{
    uint8_t *got = xmalloc(len);
    int rc = qk_pread(img, got, len, off);
    if (rc != code)
        fail_msg("qk_pread(off=%llu, len=%llu) = %d (%s), want %d (%s); message \"%s\"",
                 (unsigned long long)off, (unsigned long long)len, rc, qk_strerror(rc), code,
                 qk_strerror(code), qk_errmsg(img));
    assert_true(qk_errmsg(img)[0] != '\0');
    free(got);
}

/* qk_block_status(off, len): flags (masked) and length must match; a
 * want_host of UINT64_MAX means "don't care". */
static void expect_status(qk_image *img, uint64_t off, uint64_t len, unsigned flags,
                          uint64_t want_len, uint64_t want_host)
{
    qk_extent e;
    memset(&e, 0, sizeof e);
    int rc = qk_block_status(img, off, len, &e);
    if (rc != 0)
        fail_msg("qk_block_status(%llu, %llu) = %d (%s): %s", (unsigned long long)off,
                 (unsigned long long)len, rc, qk_strerror(rc), qk_errmsg(img));
    if (e.offset != off || (e.flags & BS_MASK) != flags || e.length != want_len)
        fail_msg("qk_block_status(%llu, %llu): got offset %llu length %llu flags 0x%x, "
                 "want length %llu flags 0x%x", (unsigned long long)off,
                 (unsigned long long)len, (unsigned long long)e.offset,
                 (unsigned long long)e.length, e.flags & BS_MASK,
                 (unsigned long long)want_len, flags);
    if (want_host != UINT64_MAX && e.host_offset != want_host)
        fail_msg("qk_block_status(%llu): host offset %llu, want %llu", (unsigned long long)off,
                 (unsigned long long)e.host_offset, (unsigned long long)want_host);
}

static void expect_map(qk_image *img, uint64_t off, uint64_t len, enum qk_ctype type,
                       uint64_t want_len, uint64_t want_host)
{
    struct qk_map m;
    memset(&m, 0, sizeof m);
    int rc = cluster_map(img, off, len, &m);
    if (rc != 0)
        fail_msg("cluster_map(%llu, %llu) = %d (%s): %s", (unsigned long long)off,
                 (unsigned long long)len, rc, qk_strerror(rc), qk_errmsg(img));
    if (m.type != type || m.len != want_len)
        fail_msg("cluster_map(%llu, %llu): type %d len %llu, want type %d len %llu",
                 (unsigned long long)off, (unsigned long long)len, m.type,
                 (unsigned long long)m.len, type, (unsigned long long)want_len);
    if (want_host != UINT64_MAX && m.host != want_host)
        fail_msg("cluster_map(%llu): host %llu, want %llu", (unsigned long long)off,
                 (unsigned long long)m.host, (unsigned long long)want_host);
}

/* ---- standard L2 entries ------------------------------------------------ */

/*
 * Guest clusters:
 *   0 unallocated            4 normal, shared host H (refcount 2, no COPIED)
 *   1 zero plain             5 normal, same host H
 *   2 normal + COPIED        6 normal + COPIED, host K
 *   3 zero alloc (garbage)   7 normal + COPIED, host K + CS (contiguous)
 * Expected block status is what `qemu-img map --output=json` 7.2 prints for
 * the same image (zero alloc has an offset; unallocated has zero=true).
 */
static void check_standard_entries(unsigned cluster_bits)
{
    struct mkimg m;
    mkimg_init(&m, cluster_bits, 0, 8);
    uint64_t cs = m.cs, size = 8 * cs;
    uint8_t *expect = calloc(1, size);
    assert_non_null(expect);

    mkimg_set_l2(&m, 1, OFLAG_ZERO, 0);
    fill_pattern(expect + 2 * cs, cs, 2);
    uint64_t h2 = mkimg_data(&m, 2, expect + 2 * cs);
    uint64_t h3 = mkimg_alloc(&m, 1, 1);
    memset(m.buf + h3, 0xee, cs);                 /* must never be read */
    mkimg_set_l2(&m, 3, OFLAG_COPIED | h3 | OFLAG_ZERO, 0);
    fill_pattern(expect + 4 * cs, cs, 4);
    memcpy(expect + 5 * cs, expect + 4 * cs, cs);
    uint64_t h4 = mkimg_alloc(&m, 1, 2);
    memcpy(m.buf + h4, expect + 4 * cs, cs);
    mkimg_set_l2(&m, 4, h4, 0);
    mkimg_set_l2(&m, 5, h4, 0);
    fill_pattern(expect + 6 * cs, 2 * cs, 6);
    mkimg_alloc(&m, 1, 0);              /* a free spacer: h4 + CS != h6 */
    uint64_t h6 = mkimg_alloc(&m, 2, 1);
    memcpy(m.buf + h6, expect + 6 * cs, 2 * cs);
    mkimg_set_l2(&m, 6, OFLAG_COPIED | h6, 0);
    mkimg_set_l2(&m, 7, OFLAG_COPIED | (h6 + cs), 0);

    struct tdir t;
    qk_image *img = save_and_open(&m, &t);
    assert_true(qk_size(img) == size);

    /* whole disk, then reads that straddle entries at odd offsets */
    expect_read(img, 0, size, expect);
    expect_read(img, cs / 2 + 3, 3 * cs + 7, expect + cs / 2 + 3);
    expect_read(img, 5 * cs - 1, 2, expect + 5 * cs - 1);
    expect_read(img, size - 1, 1, expect + size - 1);

    expect_status(img, 0, size, QK_BS_ZERO, cs, UINT64_MAX);
    expect_status(img, cs, size - cs, QK_BS_PRESENT | QK_BS_ZERO, cs, UINT64_MAX);
    expect_status(img, 2 * cs, size - 2 * cs, QK_BS_PRESENT | QK_BS_DATA | QK_BS_OFFSET_VALID,
                  cs, h2);
    expect_status(img, 3 * cs, size - 3 * cs, QK_BS_PRESENT | QK_BS_ZERO | QK_BS_OFFSET_VALID,
                  cs, h3);
    /* 4 and 5 share one host cluster: not contiguous, two extents */
    expect_status(img, 4 * cs, size - 4 * cs, QK_BS_PRESENT | QK_BS_DATA | QK_BS_OFFSET_VALID,
                  cs, h4);
    expect_status(img, 5 * cs, size - 5 * cs, QK_BS_PRESENT | QK_BS_DATA | QK_BS_OFFSET_VALID,
                  cs, h4);
    /* 6 and 7 are contiguous: one extent, and one from the middle of 6 */
    expect_status(img, 6 * cs, 2 * cs, QK_BS_PRESENT | QK_BS_DATA | QK_BS_OFFSET_VALID,
                  2 * cs, h6);
    expect_status(img, 6 * cs + 512, 2 * cs - 512,
                  QK_BS_PRESENT | QK_BS_DATA | QK_BS_OFFSET_VALID, 2 * cs - 512, h6 + 512);
    /* LEN caps the extent */
    expect_status(img, 6 * cs, 512, QK_BS_PRESENT | QK_BS_DATA | QK_BS_OFFSET_VALID, 512, h6);

    expect_map(img, 0, size, CT_UNALLOCATED, cs, UINT64_MAX);
    expect_map(img, cs, size - cs, CT_ZERO, cs, UINT64_MAX);
    expect_map(img, 2 * cs + 100, size - 2 * cs - 100, CT_NORMAL, cs - 100, h2 + 100);
    struct qk_map mp;
    assert_int_equal(cluster_map(img, 1 * cs, cs, &mp), 0);
    assert_int_equal(mp.has_host, 0);
    assert_int_equal(cluster_map(img, 3 * cs + 8, cs - 8, &mp), 0);
    assert_int_equal(mp.type, CT_ZERO);
    assert_int_equal(mp.has_host, 1);   /* zero with an allocation behind it */
    assert_true(mp.host == h3 + 8);
    expect_map(img, 6 * cs, 2 * cs, CT_NORMAL, 2 * cs, h6);

    close_and_remove(img, &t);
    free(expect);
    mkimg_free(&m);
}

static void test_l2__standard_entries_all_cluster_sizes(void **state)
{
    (void)state;
    for (unsigned bits = MIN_CLUSTER_BITS; bits <= MAX_CLUSTER_BITS; bits++)
        check_standard_entries(bits);
}

/* A normal entry whose offset is 512-aligned but not cluster aligned is
 * corruption (QEMU: "Cluster allocation offset ... unaligned"). */
static void test_l2__unaligned_normal_offset_is_corrupt(void **state)
{
    (void)state;
    struct mkimg m;
    mkimg_init(&m, 16, 0, 4);
    uint64_t h = mkimg_alloc(&m, 2, 1);
    mkimg_set_l2(&m, 1, OFLAG_COPIED | (h + 512), 0);
    struct tdir t;
    qk_image *img = save_and_open(&m, &t);
    expect_read_fails(img, m.cs, 4096, QK_E_CORRUPT);
    /* the other clusters are still readable */
    uint8_t *zero = calloc(1, m.cs);
    expect_read(img, 0, m.cs, zero);
    free(zero);
    close_and_remove(img, &t);
    mkimg_free(&m);
}

/* A v2 image cannot have zero clusters ("Zero cluster entry found in pre-v3
 * image"). */
static void test_l2__zero_flag_on_v2_is_corrupt(void **state)
{
    (void)state;
    struct mkimg m;
    mkimg_init(&m, 16, 0, 4);
    m.version = 2;
    mkimg_set_l2(&m, 2, OFLAG_ZERO, 0);
    struct tdir t;
    qk_image *img = save_and_open(&m, &t);
    expect_read_fails(img, 2 * m.cs, 512, QK_E_CORRUPT);
    close_and_remove(img, &t);
    mkimg_free(&m);
}

/* Reserved bits (1-8, 56-61) in a normal entry: QEMU's I/O ignores them,
 * its check reports them. Either way the offset must be decoded with the
 * right mask: the read returns the cluster's data or QK_E_CORRUPT, never
 * something else. */
static void test_l2__reserved_bits(void **state)
{
    (void)state;
    static const uint64_t bits[] = { 1ull << 1, 1ull << 8, 1ull << 56, 1ull << 61,
                                     L2E_STD_RESERVED };
    for (size_t i = 0; i < sizeof bits / sizeof bits[0]; i++) {
        struct mkimg m;
        mkimg_init(&m, 16, 0, 2);
        uint8_t *data = xmalloc(m.cs);
        fill_pattern(data, m.cs, (unsigned)i);
        uint64_t h = mkimg_data(&m, 0, data);
        mkimg_set_l2(&m, 0, OFLAG_COPIED | h | bits[i], 0);
        struct tdir t;
        qk_image *img = save_and_open(&m, &t);
        uint8_t *got = xmalloc(m.cs);
        int rc = qk_pread(img, got, m.cs, 0);
        if (rc == 0)
            assert_memory_equal(got, data, m.cs);
        else if (rc != QK_E_CORRUPT)
            fail_msg("reserved bits %#llx: qk_pread = %d (%s): %s", (unsigned long long)bits[i],
                     rc, qk_strerror(rc), qk_errmsg(img));
        free(got);
        free(data);
        close_and_remove(img, &t);
        mkimg_free(&m);
    }
}

/* An L1 entry whose L2 table offset is not cluster aligned (QEMU: "L2 table
 * offset ... unaligned", a corruption). */
static void test_l2__unaligned_l2_table_is_corrupt(void **state)
{
    (void)state;
    struct mkimg m;
    mkimg_init(&m, 16, 0, 2);
    be64_store(m.buf + m.l1_off, OFLAG_COPIED | (m.l2_off + 4096));
    struct tdir t;
    qk_image *img = save_and_open(&m, &t);
    expect_read_fails(img, 0, 512, QK_E_CORRUPT);
    close_and_remove(img, &t);
    mkimg_free(&m);
}

/* Compressed data said to start inside the header cluster, or past the end
 * of the file (hostile-inputs 12 and 17). */
static void test_l2__compressed_offset_out_of_bounds_is_corrupt(void **state)
{
    (void)state;
    struct mkimg m;
    mkimg_init(&m, 16, 0, 3);
    uint64_t cs = m.cs;
    uint8_t *data = xmalloc(cs), *cdata = xmalloc(2 * cs + 1024);
    fill_pattern(data, cs, 1);
    size_t clen = mkimg_deflate(data, cs, cdata, 2 * cs + 1024);
    memcpy(m.buf + 200, cdata, clen < 300 ? clen : 300); /* looks plausible, but is the header */
    mkimg_set_l2(&m, 0, mkimg_cdesc(16, 200, clen), 0);
    mkimg_set_l2(&m, 1, mkimg_cdesc(16, m.len + 10 * cs, clen), 0);
    mkimg_compressed(&m, 2, cdata, clen, 0);
    struct tdir t;
    qk_image *img = save_and_open(&m, &t);
    expect_read_fails(img, 0, cs, QK_E_CORRUPT);
    expect_read_fails(img, cs, cs, QK_E_CORRUPT);
    expect_read(img, 2 * cs, cs, data);
    close_and_remove(img, &t);
    free(data);
    free(cdata);
    mkimg_free(&m);
}

/*
 * Three L2 tables of E entries each: guest clusters E-1 and E (the last of
 * table 0, the first of table 1) are contiguous on the host; cluster E+1 has
 * its own data; L1 entry 2 is 0, so the whole third range is unallocated.
 * Catches l1_index/l2_index mix-ups and runs that forget the table end.
 */
static void check_l2_tables(unsigned cluster_bits, int extl2)
{
    struct mkimg m;
    mkimg_init(&m, cluster_bits, extl2, 3 * (uint64_t)((1u << cluster_bits) / (extl2 ? 16 : 8)));
    uint64_t cs = m.cs, E = m.l2_entries;
    assert_int_equal(m.nb_l2, 3);
    uint8_t *d = xmalloc(3 * cs);
    fill_pattern(d, 3 * cs, cluster_bits + 1);
    uint64_t h = mkimg_alloc(&m, 2, 1);
    memcpy(m.buf + h, d, 2 * cs);
    mkimg_set_l2(&m, E - 1, OFLAG_COPIED | h, extl2 ? 0xffffffffull : 0);
    mkimg_set_l2(&m, E, OFLAG_COPIED | (h + cs), extl2 ? 0xffffffffull : 0);
    mkimg_alloc(&m, 1, 0);                  /* spacer: E+1 is not contiguous with E */
    uint64_t h3 = mkimg_data(&m, E + 1, d + 2 * cs);
    mkimg_set_l1(&m, 2, 0);
    mkimg_ref(&m, m.l2_off + 2 * cs, -1);   /* that L2 table is no longer used */

    struct tdir t;
    qk_image *img = save_and_open(&m, &t);
    assert_true(qk_size(img) == 3 * E * cs);
    expect_read(img, (E - 1) * cs, 3 * cs, d);
    expect_read(img, (E - 1) * cs + cs / 2 + 1, cs + 7, d + cs / 2 + 1);
    uint8_t *zero = calloc(1, 2 * cs);
    assert_non_null(zero);
    expect_read(img, 2 * E * cs, cs, zero);
    expect_read(img, 3 * E * cs - 2 * cs, 2 * cs, zero);
    expect_read(img, (E - 2) * cs, cs, zero);

    const unsigned data = QK_BS_PRESENT | QK_BS_DATA | QK_BS_OFFSET_VALID;
    /* cluster_map stops at the end of an L2 table even when the host goes on */
    expect_map(img, (E - 1) * cs, 2 * cs, CT_NORMAL, cs, h);
    expect_map(img, E * cs, 2 * cs, CT_NORMAL, cs, h + cs);
    /* an L1 entry of 0: one run to the end of that table's range */
    expect_map(img, 2 * E * cs + 512, E * cs - 512, CT_UNALLOCATED, E * cs - 512, UINT64_MAX);
    expect_status(img, 2 * E * cs, E * cs, QK_BS_ZERO, E * cs, UINT64_MAX);
    expect_status(img, E * cs, cs, data, cs, h + cs);
    expect_status(img, (E + 1) * cs, cs, data, cs, h3);
    /* unallocated up to the last cluster of table 0 */
    expect_status(img, 0, E * cs, QK_BS_ZERO, (E - 1) * cs, UINT64_MAX);

    free(zero);
    free(d);
    close_and_remove(img, &t);
    mkimg_free(&m);
}

static void test_l2__l1_index_and_table_boundaries(void **state)
{
    (void)state;
    check_l2_tables(9, 0);
    check_l2_tables(12, 0);
    check_l2_tables(16, 0);
    check_l2_tables(14, 1);
}

/* ---- compressed clusters ------------------------------------------------ */

struct ccase {
    uint64_t desc;
    uint64_t at;
    size_t clen;
};

/* Place CLEN bytes of CDATA for guest cluster I at an offset AT such that
 * the descriptor's sector-count field has the wanted parity. */
static struct ccase place_compressed(struct mkimg *m, uint64_t i, const uint8_t *cdata,
                                     size_t clen, uint64_t at, int want_odd)
{
    unsigned cb = m->cluster_bits;
    uint64_t max_sectors = 1ull << (cb - 8);
    for (int tries = 0; tries < 64; tries++, at += 37) {
        uint64_t nb = ((at + clen - 1) >> 9) - (at >> 9) + 1;
        if (nb > max_sectors)
            continue;
        if (want_odd < 0 || (int)((nb - 1) & 1) == want_odd)
            break;
    }
    struct ccase c = { mkimg_compressed(m, i, cdata, clen, at), at, clen };
    return c;
}

static void check_compressed_case(qk_image *img, struct mkimg *m, uint64_t i,
                                  const struct ccase *c, const uint8_t *expect)
{
    uint64_t cs = m->cs;
    uint64_t csize = mkimg_csize(m->cluster_bits, c->desc);
    /* the builder's own descriptor must round-trip before we blame anyone */
    assert_true(csize >= c->clen && csize < c->clen + 512);
    expect_read(img, i * cs, cs, expect);
    expect_read(img, i * cs + cs / 2 - 1, 3, expect + cs / 2 - 1);
    expect_status(img, i * cs, cs, QK_BS_PRESENT | QK_BS_DATA | QK_BS_COMPRESSED, cs,
                  UINT64_MAX);
    struct qk_map mp;
    memset(&mp, 0, sizeof mp);
    int rc = cluster_map(img, i * cs, cs, &mp);
    if (rc)
        fail_msg("cluster_map: %d: %s", rc, qk_errmsg(img));
    assert_int_equal(mp.type, CT_COMPRESSED);
    if (mp.host != c->at || mp.clen != csize)
        fail_msg("cluster_bits %u, compressed at %llu len %zu: cluster_map says host %llu "
                 "clen %llu, want %llu / %llu", m->cluster_bits, (unsigned long long)c->at,
                 c->clen, (unsigned long long)mp.host, (unsigned long long)mp.clen,
                 (unsigned long long)c->at, (unsigned long long)csize);
}

/*
 * For one cluster size, four compressed clusters:
 *   0 compressible, unaligned offset, odd sector-count field
 *   1 incompressible (deflate output > CS, so the field's top bit is set),
 *     unaligned offset, spanning host clusters
 *   2 compressible, starting 100 bytes before a host cluster boundary
 *   3 compressible, ending exactly on a sector boundary (csize == clen)
 */
static void check_compressed(unsigned cluster_bits)
{
    struct mkimg m;
    mkimg_init(&m, cluster_bits, 0, 6);
    uint64_t cs = m.cs;
    unsigned shift = 62 - (cluster_bits - 8);
    size_t cap = 2 * cs + 1024;
    uint8_t *data[4], *cdata[4];
    size_t clen[4];
    for (int k = 0; k < 4; k++) {
        data[k] = xmalloc(cs);
        cdata[k] = xmalloc(cap);
        if (k == 1)
            fill_random(data[k], cs, cluster_bits);
        else
            fill_pattern(data[k], cs, (unsigned)(cluster_bits * 4 + k));
        clen[k] = mkimg_deflate(data[k], cs, cdata[k], cap);
    }
    assert_true(clen[1] > cs); /* random data does not compress */

    uint64_t area = mkimg_alloc(&m, 0, 0); /* = end of file */
    struct ccase c[4];
    c[0] = place_compressed(&m, 0, cdata[0], clen[0], area + 7, 1);
    c[1] = place_compressed(&m, 1, cdata[1], clen[1], c[0].at + c[0].clen + 1, -1);
    uint64_t next = (c[1].at + c[1].clen + cs - 1) & ~(cs - 1);
    c[2] = place_compressed(&m, 2, cdata[2], clen[2], next + cs - 100, -1);
    uint64_t end = (c[2].at + c[2].clen + clen[3] + 4096) & ~511ull;
    c[3] = place_compressed(&m, 3, cdata[3], clen[3], end - clen[3], -1);
    assert_true(mkimg_csize(cluster_bits, c[3].desc) == clen[3]);

    uint64_t field1 = (c[1].desc >> shift) & ((1ull << (cluster_bits - 8)) - 1);
    assert_true(field1 >> (cluster_bits - 9) & 1); /* top bit of the count field */
    uint64_t field0 = (c[0].desc >> shift) & ((1ull << (cluster_bits - 8)) - 1);
    assert_true(field0 & 1 || cs == 512); /* at 512 B a compressible cluster fits one sector */

    struct tdir t;
    qk_image *img = save_and_open(&m, &t);
    for (int k = 0; k < 4; k++)
        check_compressed_case(img, &m, (uint64_t)k, &c[k], data[k]);
    /* a read across all four */
    uint8_t *all = xmalloc(4 * cs);
    for (int k = 0; k < 4; k++)
        memcpy(all + k * cs, data[k], cs);
    expect_read(img, cs / 2, 3 * cs, all + cs / 2);
    /* the same compressed cluster read twice in a row, then another */
    expect_read(img, 2 * cs, cs, data[2]);
    expect_read(img, 2 * cs, cs, data[2]);
    expect_read(img, 0, cs, data[0]);
    free(all);
    close_and_remove(img, &t);
    for (int k = 0; k < 4; k++) {
        free(data[k]);
        free(cdata[k]);
    }
    mkimg_free(&m);
}

static void test_l2__compressed_every_cluster_size(void **state)
{
    (void)state;
    for (unsigned bits = MIN_CLUSTER_BITS; bits <= MAX_CLUSTER_BITS; bits++)
        check_compressed(bits);
}

/* A descriptor with a host offset above 2^40 (bit 40 is inside the offset
 * field at every cluster size): the data sits in a sparse file. */
static void test_l2__compressed_high_offset(void **state)
{
    (void)state;
    for (unsigned bits = MIN_CLUSTER_BITS; bits <= MAX_CLUSTER_BITS; bits += 4) {
        struct mkimg m;
        mkimg_init(&m, bits, 0, 2);
        uint64_t cs = m.cs;
        uint8_t *data = xmalloc(cs), *cdata = xmalloc(2 * cs + 1024);
        fill_pattern(data, cs, bits);
        size_t clen = mkimg_deflate(data, cs, cdata, 2 * cs + 1024);
        uint64_t at = (1ull << 40) + 3 * 512 + 5;
        mkimg_set_l2(&m, 1, mkimg_cdesc(bits, at, clen), 0);
        struct tdir t;
        tdir_make(&t);
        assert_int_equal(mkimg_write(&m, t.img), 0);
        /* pad to the end of the last sector so the test is only about bit 40 */
        size_t padded = (size_t)(((at + clen + 511) & ~511ull) - at);
        memset(cdata + clen, 0, padded - clen);
        int fd = open(t.img, O_WRONLY);
        assert_true(fd >= 0);
        ssize_t n = pwrite(fd, cdata, padded, (off_t)at);
        close(fd);
        if (n != (ssize_t)padded) {
            tdir_remove(&t);
            free(data);
            free(cdata);
            mkimg_free(&m);
            skip();
        }
        qk_image *img = NULL;
        assert_int_equal(qk_image_new(&img), 0);
        live_img = img;
        int rc = qk_open(img, t.img, QK_OPEN_FMT_QCOW2);
        if (rc)
            fail_msg("qk_open: %d: %s", rc, qk_errmsg(img));
        expect_read(img, cs, cs, data);
        struct qk_map mp;
        assert_int_equal(cluster_map(img, cs, cs, &mp), 0);
        assert_int_equal(mp.type, CT_COMPRESSED);
        assert_true(mp.host == at);
        close_and_remove(img, &t);
        free(data);
        free(cdata);
        mkimg_free(&m);
    }
}

/* A stream that ends early, garbage, or a count field that cuts the stream
 * short: the cluster cannot be inflated to exactly CS bytes. */
static void test_l2__compressed_bad_data_is_corrupt(void **state)
{
    (void)state;
    struct mkimg m;
    mkimg_init(&m, 16, 0, 4);
    uint64_t cs = m.cs;
    uint8_t *data = xmalloc(cs), *cdata = xmalloc(2 * cs + 1024);
    fill_random(data, cs / 2, 7);
    fill_pattern(data + cs / 2, cs / 2, 7);
    size_t clen = mkimg_deflate(data, cs, cdata, 2 * cs + 1024);
    assert_true(clen > 4096);
    /* 0: the stream of a cluster only half as big (valid deflate, short output) */
    uint8_t *half = xmalloc(cs);
    size_t hlen = mkimg_deflate(data, cs / 2, half, cs);
    mkimg_compressed(&m, 0, half, hlen, 0);
    /* 1: garbage */
    uint8_t junk[2048];
    memset(junk, 0xff, sizeof junk);
    mkimg_compressed(&m, 1, junk, sizeof junk, 0);
    /* 2: a descriptor that covers only the first 1024 bytes of the stream */
    uint64_t at = m.len + 512;
    mkimg_compressed(&m, 2, cdata, clen, at);
    mkimg_set_l2(&m, 2, mkimg_cdesc(16, at, 1024), 0);
    /* 3: fine, to show the others fail for their own reason */
    mkimg_compressed(&m, 3, cdata, clen, 0);

    struct tdir t;
    qk_image *img = save_and_open(&m, &t);
    expect_read_fails(img, 0, cs, QK_E_CORRUPT);
    expect_read_fails(img, cs, cs, QK_E_CORRUPT);
    expect_read_fails(img, 2 * cs, 512, QK_E_CORRUPT);
    expect_read(img, 3 * cs, cs, data);
    close_and_remove(img, &t);
    free(half);
    free(data);
    free(cdata);
    mkimg_free(&m);
}

#ifdef QK_HAVE_ZSTD
static void test_l2__compressed_zstd(void **state)
{
    (void)state;
    static const unsigned sizes[] = { 9, 16, 21 };
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        struct mkimg m;
        mkimg_init(&m, sizes[s], 0, 2);
        m.compression_type = 1;
        uint64_t cs = m.cs;
        uint8_t *data = xmalloc(cs);
        size_t cap = ZSTD_compressBound(cs);
        uint8_t *cdata = xmalloc(cap);
        fill_pattern(data, cs, 3);
        size_t clen = ZSTD_compress(cdata, cap, data, cs, 3);
        assert_false(ZSTD_isError(clen));
        mkimg_compressed(&m, 1, cdata, clen, m.len + 99);
        struct tdir t;
        qk_image *img = save_and_open(&m, &t);
        expect_read(img, cs, cs, data);
        expect_status(img, cs, cs, QK_BS_PRESENT | QK_BS_DATA | QK_BS_COMPRESSED, cs,
                      UINT64_MAX);
        close_and_remove(img, &t);
        free(data);
        free(cdata);
        mkimg_free(&m);
    }
}
#endif

/* ---- extended L2 -------------------------------------------------------- */

#define SUB_ALLOC(x) (1ull << (x))
#define SUB_ZERO(x) (1ull << ((x) + 32))

/*
 * Cluster 0: host H full of pattern; subclusters 0,1,5,31 allocated, 2,3
 * zero, the rest unallocated (they must read zeros, not H's bytes).
 * Cluster 1: no host, every subcluster zero. Cluster 2: no host, nothing.
 * Block status as `qemu-img map` 7.2 shows it: subclusters of an allocated
 * cluster all have an offset, the unallocated ones too (present=false).
 */
static void check_extl2(unsigned cluster_bits)
{
    struct mkimg m;
    mkimg_init(&m, cluster_bits, 1, 3);
    uint64_t cs = m.cs, sc = cs / 32;
    uint8_t *hostdata = xmalloc(cs);
    fill_pattern(hostdata, cs, 5);
    uint64_t h = mkimg_alloc(&m, 1, 1);
    memcpy(m.buf + h, hostdata, cs);
    uint64_t bm = SUB_ALLOC(0) | SUB_ALLOC(1) | SUB_ALLOC(5) | SUB_ALLOC(31) |
                  SUB_ZERO(2) | SUB_ZERO(3);
    mkimg_set_l2(&m, 0, OFLAG_COPIED | h, bm);
    mkimg_set_l2(&m, 1, 0, 0xffffffff00000000ull);

    uint8_t *expect = calloc(1, 3 * cs);
    assert_non_null(expect);
    memcpy(expect, hostdata, 2 * sc);
    memcpy(expect + 5 * sc, hostdata + 5 * sc, sc);
    memcpy(expect + 31 * sc, hostdata + 31 * sc, sc);

    struct tdir t;
    qk_image *img = save_and_open(&m, &t);
    expect_read(img, 0, 3 * cs, expect);
    expect_read(img, sc + 1, 5 * sc, expect + sc + 1);

    const unsigned data = QK_BS_PRESENT | QK_BS_DATA | QK_BS_OFFSET_VALID;
    expect_status(img, 0, cs, data, 2 * sc, h);
    expect_status(img, sc, cs - sc, data, sc, h + sc);
    const unsigned zero_here = QK_BS_ZERO | QK_BS_OFFSET_VALID;
    expect_status(img, 2 * sc, cs - 2 * sc, QK_BS_PRESENT | zero_here, 2 * sc, h + 2 * sc);
    expect_status(img, 4 * sc, cs - 4 * sc, zero_here, sc, h + 4 * sc);
    expect_status(img, 5 * sc, cs - 5 * sc, data, sc, h + 5 * sc);
    expect_status(img, 6 * sc, cs - 6 * sc, zero_here, 25 * sc, h + 6 * sc);
    expect_status(img, 31 * sc, sc, data, sc, h + 31 * sc);
    expect_status(img, cs, cs, QK_BS_PRESENT | QK_BS_ZERO, cs, UINT64_MAX);
    expect_status(img, 2 * cs, cs, QK_BS_ZERO, cs, UINT64_MAX);

    expect_map(img, 0, cs, CT_NORMAL, 2 * sc, h);
    expect_map(img, 2 * sc, cs - 2 * sc, CT_ZERO, 2 * sc, h + 2 * sc);
    expect_map(img, 6 * sc + 3, cs - 6 * sc - 3, CT_UNALLOCATED, 25 * sc - 3, h + 6 * sc + 3);
    expect_map(img, cs, cs, CT_ZERO, cs, UINT64_MAX);
    expect_map(img, 2 * cs, cs, CT_UNALLOCATED, cs, UINT64_MAX);

    close_and_remove(img, &t);
    free(expect);
    free(hostdata);
    mkimg_free(&m);
}

static void test_l2__extl2_subclusters(void **state)
{
    (void)state;
    for (unsigned bits = 14; bits <= MAX_CLUSTER_BITS; bits++)
        check_extl2(bits);
}

/* Alloc and zero bit for the same subcluster; or alloc bits without a host
 * cluster: QEMU's QCOW2_SUBCLUSTER_INVALID, a corruption. */
static void test_l2__extl2_invalid_bitmaps_are_corrupt(void **state)
{
    (void)state;
    struct mkimg m;
    mkimg_init(&m, 16, 1, 4);
    uint64_t cs = m.cs, sc = cs / 32;
    uint64_t h = mkimg_alloc(&m, 1, 1);
    mkimg_set_l2(&m, 0, OFLAG_COPIED | h, SUB_ALLOC(7) | SUB_ZERO(7));
    mkimg_set_l2(&m, 1, 0, SUB_ALLOC(0));
    uint64_t h2 = mkimg_alloc(&m, 1, 1);
    mkimg_set_l2(&m, 2, OFLAG_COPIED | h2, SUB_ALLOC(31) | SUB_ZERO(31) | SUB_ALLOC(0));
    struct tdir t;
    qk_image *img = save_and_open(&m, &t);
    expect_read_fails(img, 7 * sc, sc, QK_E_CORRUPT);
    expect_read_fails(img, cs, sc, QK_E_CORRUPT);
    expect_read_fails(img, 2 * cs + 31 * sc, sc, QK_E_CORRUPT);
    /* cluster 3 is fine */
    uint8_t *zero = calloc(1, cs);
    expect_read(img, 3 * cs, cs, zero);
    free(zero);
    close_and_remove(img, &t);
    mkimg_free(&m);
}

/* ---- over a backing file ------------------------------------------------ */

static void write_file(const char *path, const uint8_t *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

/* Unallocated clusters and subclusters show the backing file; zero entries
 * hide it. With MERGE, also require what the API promises ("the longest
 * extent whose status and host mapping are uniform") and qemu-img map shows:
 * the unallocated tail of cluster 2 and unallocated cluster 3 are one extent
 * in the raw backing file. */
static void check_backing(int merge)
{
    struct mkimg m;
    mkimg_init(&m, 16, 1, 4);
    uint64_t cs = m.cs, sc = cs / 32;
    m.backing = "backing.raw";
    m.backing_fmt = "raw";
    uint8_t *base = xmalloc(4 * cs), *expect = xmalloc(4 * cs), *top = xmalloc(cs);
    fill_pattern(base, 4 * cs, 77);
    fill_pattern(top, cs, 11);
    memcpy(expect, base, 4 * cs);
    /* cluster 0: unallocated; 1: all zero; 2: sc 0 data, sc 1 zero, rest backing */
    mkimg_set_l2(&m, 1, 0, 0xffffffff00000000ull);
    memset(expect + cs, 0, cs);
    uint64_t h = mkimg_alloc(&m, 1, 1);
    memcpy(m.buf + h, top, cs);
    mkimg_set_l2(&m, 2, OFLAG_COPIED | h, SUB_ALLOC(0) | SUB_ZERO(1));
    memcpy(expect + 2 * cs, top, sc);
    memset(expect + 2 * cs + sc, 0, sc);

    struct tdir t;
    tdir_make(&t);
    write_file(t.backing, base, 4 * cs);
    assert_int_equal(mkimg_write(&m, t.img), 0);
    qk_image *img = NULL;
    assert_int_equal(qk_image_new(&img), 0);
    live_img = img;
    int rc = qk_open(img, t.img, QK_OPEN_FMT_QCOW2);
    if (rc)
        fail_msg("qk_open: %d: %s", rc, qk_errmsg(img));
    assert_non_null(qk_backing(img));
    expect_read(img, 0, 4 * cs, expect);

    /* as `qemu-img map --output=json` 7.2 shows it */
    const unsigned data = QK_BS_PRESENT | QK_BS_DATA | QK_BS_OFFSET_VALID;
    qk_extent e;
    expect_status(img, 0, cs, data, cs, 0);
    assert_int_equal(qk_block_status(img, 0, cs, &e), 0);
    assert_int_equal(e.depth, 1);
    expect_status(img, cs, cs, QK_BS_PRESENT | QK_BS_ZERO, cs, UINT64_MAX);
    assert_int_equal(qk_block_status(img, cs, cs, &e), 0);
    assert_int_equal(e.depth, 0);
    expect_status(img, 2 * cs, cs, data, sc, h);
    expect_status(img, 2 * cs + sc, cs, QK_BS_PRESENT | QK_BS_ZERO | QK_BS_OFFSET_VALID, sc,
                  h + sc);
    expect_status(img, 2 * cs + 2 * sc, cs - 2 * sc, data, cs - 2 * sc, 2 * cs + 2 * sc);
    assert_int_equal(qk_block_status(img, 2 * cs + 2 * sc, cs - 2 * sc, &e), 0);
    assert_int_equal(e.depth, 1);
    expect_status(img, 3 * cs, cs, data, cs, 3 * cs);
    free(base);
    free(expect);
    free(top);
    mkimg_free(&m);
    if (merge)
        expect_status(img, 2 * cs + 2 * sc, 2 * cs - 2 * sc, data, 2 * cs - 2 * sc,
                      2 * cs + 2 * sc);
    close_and_remove(img, &t);
}

static void test_l2__unallocated_reads_backing(void **state)
{
    (void)state;
    check_backing(0);
}

static void test_l2__backing_extent_spans_clusters(void **state)
{
    (void)state;
    check_backing(1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_l2__standard_entries_all_cluster_sizes, teardown),
        cmocka_unit_test_teardown(test_l2__unaligned_normal_offset_is_corrupt, teardown),
        cmocka_unit_test_teardown(test_l2__zero_flag_on_v2_is_corrupt, teardown),
        cmocka_unit_test_teardown(test_l2__reserved_bits, teardown),
        cmocka_unit_test_teardown(test_l2__unaligned_l2_table_is_corrupt, teardown),
        cmocka_unit_test_teardown(test_l2__l1_index_and_table_boundaries, teardown),
        cmocka_unit_test_teardown(test_l2__compressed_offset_out_of_bounds_is_corrupt, teardown),
        cmocka_unit_test_teardown(test_l2__compressed_every_cluster_size, teardown),
        cmocka_unit_test_teardown(test_l2__compressed_high_offset, teardown),
        cmocka_unit_test_teardown(test_l2__compressed_bad_data_is_corrupt, teardown),
#ifdef QK_HAVE_ZSTD
        cmocka_unit_test_teardown(test_l2__compressed_zstd, teardown),
#endif
        cmocka_unit_test_teardown(test_l2__extl2_subclusters, teardown),
        cmocka_unit_test_teardown(test_l2__extl2_invalid_bitmaps_are_corrupt, teardown),
        cmocka_unit_test_teardown(test_l2__unallocated_reads_backing, teardown),
        cmocka_unit_test_teardown(test_l2__backing_extent_spans_clusters, teardown),
    };
    return cmocka_run_group_tests_name("l2", tests, NULL, NULL);
}
