/*
 * test_header.c - unit tests for header.c: header_parse() / header_serialize()
 * round trips and the rejections of malformed headers.
 *
 * Header buffers are built by hand with be32_store/be64_store, in the order
 * QEMU 7.2's qcow2_update_header() writes them (header, unknown header fields,
 * backing format, data file, feature table, bitmaps, unknown extensions, end
 * marker, backing name). Such a "canonical" cluster must come back byte for
 * byte from serialize(parse(buf)); the layouts were checked against images
 * made by qemu-img 7.2 (e.g. the feature table has QEMU's 8 entries).
 *
 * Rejections check the return code and a substring of qk_errmsg(). The
 * codes follow include/qcowkit.h: QK_E_NOT_FORMAT for a foreign file,
 * QK_E_CORRUPT for values the spec forbids (cluster_bits < 9, header_length
 * rules, refcount_order > 6, extension and backing-name overruns),
 * QK_E_UNSUPPORTED for valid values we do not implement (version, cluster
 * bits > 21, unknown incompatible features, unknown compression types).
 *
 * Assumption about the interface: header_free() is safe on a zeroed struct
 * and on one that header_parse() failed on.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "endian.h"
#include "format.h"
#include "internal.h"

/* ---- a tiny header builder --------------------------------------------- */

struct hb {
    uint8_t *buf;
    size_t cs;
    size_t pos;        /* where the next extension goes */
    uint64_t file_size;
};

static uint32_t l1_entries_for(uint64_t size, unsigned cluster_bits)
{
    uint64_t cs = 1ull << cluster_bits;
    uint64_t per_l2 = cs / 8;
    return (uint32_t)((size + cs * per_l2 - 1) / (cs * per_l2));
}

/* A v3 (or v2) header for a 1 GiB disk laid out as QEMU does: refcount table
 * at cluster 1, refblock at 2, L1 at 3. HEADER_LENGTH is ignored for v2. */
static void hb_init(struct hb *b, uint32_t version, unsigned cluster_bits,
                    uint32_t header_length)
{
    b->cs = (size_t)1 << cluster_bits;
    b->buf = calloc(1, b->cs);
    assert_non_null(b->buf);
    uint8_t *p = b->buf;
    uint64_t size = 1ull << 30;
    uint32_t l1 = l1_entries_for(size, cluster_bits);
    be32_store(p + HDR_MAGIC, QCOW_MAGIC);
    be32_store(p + HDR_VERSION, version);
    be32_store(p + HDR_CLUSTER_BITS, cluster_bits);
    be64_store(p + HDR_SIZE, size);
    be32_store(p + HDR_L1_SIZE, l1);
    be64_store(p + HDR_L1_OFFSET, 3 * (uint64_t)b->cs);
    be64_store(p + HDR_REFTABLE_OFFSET, b->cs);
    be32_store(p + HDR_REFTABLE_CLUSTERS, 1);
    if (version >= 3) {
        be32_store(p + HDR_REFCOUNT_ORDER, 4);
        be32_store(p + HDR_HEADER_LENGTH, header_length);
        b->pos = header_length;
    } else {
        b->pos = HDR_V2_LENGTH;
    }
    uint64_t l1_bytes = (uint64_t)l1 * 8;
    b->file_size = 3 * (uint64_t)b->cs + ((l1_bytes + b->cs - 1) & ~(uint64_t)(b->cs - 1));
}

static void hb_free(struct hb *b)
{
    free(b->buf);
    b->buf = NULL;
}

/* Append an extension (type, length, data, zero padding to 8). */
static void hb_ext(struct hb *b, uint32_t type, const void *data, uint32_t len)
{
    assert_true(b->pos + 8 + ((len + 7u) & ~7u) <= b->cs);
    be32_store(b->buf + b->pos, type);
    be32_store(b->buf + b->pos + 4, len);
    if (len)
        memcpy(b->buf + b->pos + 8, data, len);
    b->pos += 8 + ((len + 7u) & ~7u);
}

static void hb_str_ext(struct hb *b, uint32_t type, const char *s)
{
    hb_ext(b, type, s, (uint32_t)strlen(s));
}

static void put_feature(uint8_t *e, uint8_t type, uint8_t bit, const char *name)
{
    memset(e, 0, FEATURE_ENTRY_SIZE);
    e[0] = type;
    e[1] = bit;
    memcpy(e + 2, name, strnlen(name, FEATURE_NAME_SIZE));
}

/* QEMU 7.2's feature name table, as qemu-img create writes it. */
static const struct { uint8_t type, bit; const char *name; } qemu_features[] = {
    { 0, 0, "dirty bit" }, { 0, 1, "corrupt bit" }, { 0, 2, "external data file" },
    { 0, 3, "compression type" }, { 0, 4, "extended L2 entries" },
    { 1, 0, "lazy refcounts" }, { 2, 0, "bitmaps" }, { 2, 1, "raw external data" },
};
#define NB_QEMU_FEATURES (sizeof qemu_features / sizeof qemu_features[0])

static void hb_qemu_feature_table(struct hb *b)
{
    uint8_t t[NB_QEMU_FEATURES * FEATURE_ENTRY_SIZE];
    for (size_t i = 0; i < NB_QEMU_FEATURES; i++)
        put_feature(t + i * FEATURE_ENTRY_SIZE, qemu_features[i].type, qemu_features[i].bit,
                    qemu_features[i].name);
    hb_ext(b, EXT_FEATURES, t, sizeof t);
}

static void hb_bitmaps_ext(struct hb *b, uint32_t nb, uint64_t dir_size, uint64_t dir_offset)
{
    uint8_t e[BITMAPS_EXT_SIZE];
    be32_store(e, nb);
    be32_store(e + 4, 0);
    be64_store(e + 8, dir_size);
    be64_store(e + 16, dir_offset);
    hb_ext(b, EXT_BITMAPS, e, sizeof e);
}

/* End marker, then the backing name right after it (if any). */
static void hb_end(struct hb *b, const char *backing)
{
    hb_ext(b, EXT_END, NULL, 0);
    if (backing) {
        size_t n = strlen(backing);
        assert_true(b->pos + n <= b->cs);
        memcpy(b->buf + b->pos, backing, n);
        be64_store(b->buf + HDR_BACKING_OFFSET, b->pos);
        be32_store(b->buf + HDR_BACKING_SIZE, (uint32_t)n);
        b->pos += n;
    }
}

static void set64(struct hb *b, size_t off, uint64_t v)
{
    be64_store(b->buf + off, v);
}

static void set32(struct hb *b, size_t off, uint32_t v)
{
    be32_store(b->buf + off, v);
}

/* ---- parse / serialize helpers ---------------------------------------- */

static qk_image *new_img(void)
{
    qk_image *img = NULL;
    assert_int_equal(qk_image_new(&img), 0);
    assert_non_null(img);
    return img;
}

static void parse_ok(struct hb *b, struct qk_header *h)
{
    qk_image *img = new_img();
    memset(h, 0, sizeof *h);
    int rc = header_parse(img, b->buf, b->cs, b->file_size, h);
    if (rc != 0)
        fail_msg("header_parse failed: %d (%s): %s", rc, qk_strerror(rc), qk_errmsg(img));
    qk_close(img);
}

/* Serialize H into a fresh cluster pre-filled with garbage (serialize must
 * zero it), parse that again into H2 and return the cluster (caller frees). */
static uint8_t *reserialize(struct hb *b, struct qk_header *h, struct qk_header *h2)
{
    uint8_t *out = malloc(b->cs);
    assert_non_null(out);
    memset(out, 0xa5, b->cs);
    int rc = header_serialize(h, out, b->cs);
    assert_int_equal(rc, 0);
    struct hb b2 = { out, b->cs, 0, b->file_size };
    parse_ok(&b2, h2);
    return out;
}

/* Report the first differing byte, which is what one wants to know. */
static void assert_same_cluster(const uint8_t *want, const uint8_t *got, size_t cs)
{
    for (size_t i = 0; i < cs; i++)
        if (want[i] != got[i])
            fail_msg("serialized header differs at byte %zu (0x%zx): want 0x%02x, got 0x%02x",
                     i, i, want[i], got[i]);
}

static void assert_str_eq_or_null(const char *a, const char *b)
{
    if (!a || !b) {
        assert_ptr_equal(a, b);
        return;
    }
    assert_string_equal(a, b);
}

/* Everything parse exposes must survive serialize + parse unchanged. */
static void assert_same_header(const struct qk_header *a, const struct qk_header *b)
{
    assert_int_equal(a->version, b->version);
    assert_int_equal(a->cluster_bits, b->cluster_bits);
    assert_true(a->size == b->size);
    assert_int_equal(a->crypt_method, b->crypt_method);
    assert_int_equal(a->l1_size, b->l1_size);
    assert_true(a->l1_offset == b->l1_offset);
    assert_true(a->reftable_offset == b->reftable_offset);
    assert_int_equal(a->reftable_clusters, b->reftable_clusters);
    assert_int_equal(a->nb_snapshots, b->nb_snapshots);
    assert_true(a->snapshots_offset == b->snapshots_offset);
    assert_true(a->incompat == b->incompat);
    assert_true(a->compat == b->compat);
    assert_true(a->autoclear == b->autoclear);
    assert_int_equal(a->refcount_order, b->refcount_order);
    assert_int_equal(a->header_length, b->header_length);
    assert_int_equal(a->compression_type, b->compression_type);
    assert_int_equal(a->unknown_fields_len, b->unknown_fields_len);
    if (a->unknown_fields_len)
        assert_memory_equal(a->unknown_fields, b->unknown_fields, a->unknown_fields_len);
    assert_str_eq_or_null(a->backing_name, b->backing_name);
    assert_str_eq_or_null(a->backing_fmt, b->backing_fmt);
    assert_str_eq_or_null(a->data_file, b->data_file);
    assert_int_equal(a->has_bitmaps_ext, b->has_bitmaps_ext);
    if (a->has_bitmaps_ext) {
        assert_int_equal(a->bitmaps.nb_bitmaps, b->bitmaps.nb_bitmaps);
        assert_true(a->bitmaps.dir_size == b->bitmaps.dir_size);
        assert_true(a->bitmaps.dir_offset == b->bitmaps.dir_offset);
    }
    assert_int_equal(a->nb_unknown_exts, b->nb_unknown_exts);
    for (size_t i = 0; i < a->nb_unknown_exts; i++) {
        assert_int_equal(a->unknown_exts[i].type, b->unknown_exts[i].type);
        assert_int_equal(a->unknown_exts[i].len, b->unknown_exts[i].len);
        if (a->unknown_exts[i].len)
            assert_memory_equal(a->unknown_exts[i].data, b->unknown_exts[i].data,
                                a->unknown_exts[i].len);
    }
}

static void assert_qemu_features(const struct qk_header *h)
{
    assert_int_equal(h->nb_features, NB_QEMU_FEATURES);
    for (size_t i = 0; i < NB_QEMU_FEATURES; i++) {
        assert_int_equal(h->features[i].type, qemu_features[i].type);
        assert_int_equal(h->features[i].bit, qemu_features[i].bit);
        assert_string_equal(h->features[i].name, qemu_features[i].name);
    }
}

/* Parse must fail with CODE and a message containing every NEEDLE (case
 * insensitive) or, for a "a|b" needle, one of its alternatives. */
static void parse_fails_either(struct hb *b, int code, int alt_code, const char *needle1,
                               const char *needle2)
{
    qk_image *img = new_img();
    struct qk_header h;
    memset(&h, 0, sizeof h);
    int rc = header_parse(img, b->buf, b->cs, b->file_size, &h);
    const char *msg = qk_errmsg(img);
    if (rc != code && rc != alt_code)
        fail_msg("header_parse returned %d (%s), want %d (%s); message: \"%s\"", rc,
                 qk_strerror(rc), code, qk_strerror(code), msg);
    const char *needles[2] = { needle1, needle2 };
    for (int n = 0; n < 2; n++) {
        if (!needles[n])
            continue;
        int found = 0;
        char alt[128];
        strncpy(alt, needles[n], sizeof alt - 1);
        alt[sizeof alt - 1] = 0;
        for (char *save = NULL, *tok = strtok_r(alt, "|", &save); tok;
             tok = strtok_r(NULL, "|", &save))
            if (strcasestr(msg, tok))
                found = 1;
        if (!found)
            fail_msg("error message \"%s\" does not mention \"%s\"", msg, needles[n]);
    }
    header_free(&h);
    qk_close(img);
}

static void parse_fails(struct hb *b, int code, const char *needle1, const char *needle2)
{
    parse_fails_either(b, code, code, needle1, needle2);
}

/* ---- round trips -------------------------------------------------------- */

/* What `qemu-img create -f qcow2 -b base.qcow2 -F qcow2` writes. */
static void test_header__v3_canonical_round_trip(void **state)
{
    (void)state;
    struct hb b;
    hb_init(&b, 3, 16, HDR_V3_LENGTH);
    hb_str_ext(&b, EXT_BACKING_FMT, "qcow2");
    hb_qemu_feature_table(&b);
    hb_end(&b, "base.qcow2");

    struct qk_header h, h2;
    parse_ok(&b, &h);
    assert_int_equal(h.version, 3);
    assert_int_equal(h.cluster_bits, 16);
    assert_true(h.size == 1ull << 30);
    assert_int_equal(h.l1_size, 2);
    assert_true(h.l1_offset == 3 * 65536);
    assert_true(h.reftable_offset == 65536);
    assert_int_equal(h.reftable_clusters, 1);
    assert_int_equal(h.refcount_order, 4);
    assert_int_equal(h.header_length, 112);
    assert_int_equal(h.compression_type, 0);
    assert_int_equal(h.unknown_fields_len, 0);
    assert_string_equal(h.backing_name, "base.qcow2");
    assert_int_equal(h.backing_size, 10);
    assert_string_equal(h.backing_fmt, "qcow2");
    assert_null(h.data_file);
    assert_int_equal(h.has_bitmaps_ext, 0);
    assert_int_equal(h.nb_unknown_exts, 0);
    assert_qemu_features(&h);

    uint8_t *out = reserialize(&b, &h, &h2);
    assert_same_cluster(b.buf, out, b.cs);
    assert_same_header(&h, &h2);
    assert_true(h.backing_offset == be64_load(b.buf + HDR_BACKING_OFFSET));
    free(out);
    header_free(&h);
    header_free(&h2);
    hb_free(&b);
}

/* Unknown trailing header fields, zstd, extended L2, bitmaps and two unknown
 * extensions (one with a length that needs padding) all in one header. */
static void test_header__v3_everything_round_trip(void **state)
{
    (void)state;
    struct hb b;
    hb_init(&b, 3, 16, 128);
    set64(&b, HDR_INCOMPAT, INCOMPAT_COMPRESSION | INCOMPAT_EXTL2);
    set64(&b, HDR_COMPAT, COMPAT_LAZY_REFCOUNTS);
    set64(&b, HDR_AUTOCLEAR, AUTOCLEAR_BITMAPS);
    b.buf[HDR_COMPRESSION_TYPE] = 1;
    static const uint8_t extra[16] = { 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4,
                                       5, 6, 7, 8, 0x80, 0x00, 0xff, 0x7f };
    memcpy(b.buf + HDR_V3_LENGTH, extra, sizeof extra);
    hb_str_ext(&b, EXT_BACKING_FMT, "raw");
    hb_qemu_feature_table(&b);
    hb_bitmaps_ext(&b, 2, 64, 5 * 65536);
    static const uint8_t u1[5] = { 'a', 'b', 'c', 'd', 'e' };
    static const uint8_t u2[16] = { 0, 0xff, 0, 0xff, 1, 2, 3, 4, 0, 0, 0, 0, 9, 9, 9, 9 };
    hb_ext(&b, 0x12345678u, u1, sizeof u1);
    hb_ext(&b, 0xcafe0001u, u2, sizeof u2);
    hb_end(&b, "../images/base.raw");
    b.file_size += 6 * 65536;

    struct qk_header h, h2;
    parse_ok(&b, &h);
    assert_int_equal(h.header_length, 128);
    assert_int_equal(h.compression_type, 1);
    assert_true(h.incompat == (INCOMPAT_COMPRESSION | INCOMPAT_EXTL2));
    assert_true(h.compat == COMPAT_LAZY_REFCOUNTS);
    assert_true(h.autoclear == AUTOCLEAR_BITMAPS);
    assert_int_equal(h.unknown_fields_len, 16);
    assert_memory_equal(h.unknown_fields, extra, 16);
    assert_string_equal(h.backing_fmt, "raw");
    assert_string_equal(h.backing_name, "../images/base.raw");
    assert_int_equal(h.has_bitmaps_ext, 1);
    assert_int_equal(h.bitmaps_ext_error, 0);
    assert_int_equal(h.bitmaps.nb_bitmaps, 2);
    assert_true(h.bitmaps.dir_size == 64);
    assert_true(h.bitmaps.dir_offset == 5 * 65536);
    assert_int_equal(h.nb_unknown_exts, 2);
    assert_int_equal(h.unknown_exts[0].type, 0x12345678u);
    assert_int_equal(h.unknown_exts[0].len, 5);
    assert_memory_equal(h.unknown_exts[0].data, u1, 5);
    assert_int_equal(h.unknown_exts[1].type, 0xcafe0001u);
    assert_int_equal(h.unknown_exts[1].len, 16);
    assert_memory_equal(h.unknown_exts[1].data, u2, 16);
    assert_qemu_features(&h);

    uint8_t *out = reserialize(&b, &h, &h2);
    assert_same_cluster(b.buf, out, b.cs);
    assert_same_header(&h, &h2);
    /* never rewrite a shorter header than was read */
    assert_int_equal(be32_load(out + HDR_HEADER_LENGTH), 128);
    free(out);
    header_free(&h);
    header_free(&h2);
    hb_free(&b);
}

/* A v2 header is 72 bytes; extensions follow it directly; no feature table. */
static void test_header__v2_round_trip(void **state)
{
    (void)state;
    struct hb b;
    hb_init(&b, 2, 16, 0);
    hb_str_ext(&b, EXT_BACKING_FMT, "raw");
    hb_end(&b, "base.img");
    assert_int_equal(be64_load(b.buf + HDR_BACKING_OFFSET), 0x60); /* as qemu-img writes it */

    struct qk_header h, h2;
    parse_ok(&b, &h);
    assert_int_equal(h.version, 2);
    assert_int_equal(h.header_length, 72);
    assert_int_equal(h.refcount_order, 4);
    assert_true(h.incompat == 0 && h.compat == 0 && h.autoclear == 0);
    assert_int_equal(h.compression_type, 0);
    assert_string_equal(h.backing_name, "base.img");
    assert_string_equal(h.backing_fmt, "raw");
    assert_int_equal(h.nb_features, 0);

    uint8_t *out = reserialize(&b, &h, &h2);
    assert_same_cluster(b.buf, out, b.cs);
    assert_same_header(&h, &h2);
    free(out);
    header_free(&h);
    header_free(&h2);
    hb_free(&b);
}

/* A v2 header with no extensions and no backing file: all zero after 72. */
static void test_header__v2_bare_round_trip(void **state)
{
    (void)state;
    struct hb b;
    hb_init(&b, 2, 12, 0);
    hb_end(&b, NULL);
    struct qk_header h, h2;
    parse_ok(&b, &h);
    assert_null(h.backing_name);
    assert_null(h.backing_fmt);
    assert_int_equal(h.backing_offset, 0);
    uint8_t *out = reserialize(&b, &h, &h2);
    assert_same_cluster(b.buf, out, b.cs);
    free(out);
    header_free(&h);
    header_free(&h2);
    hb_free(&b);
}

/* External data file: `qemu-img create -o data_file=h.raw,data_file_raw=on`. */
static void test_header__data_file_round_trip(void **state)
{
    (void)state;
    struct hb b;
    hb_init(&b, 3, 16, HDR_V3_LENGTH);
    set64(&b, HDR_INCOMPAT, INCOMPAT_DATA_FILE);
    set64(&b, HDR_AUTOCLEAR, AUTOCLEAR_DATA_RAW);
    hb_str_ext(&b, EXT_DATA_FILE, "h.raw");
    hb_qemu_feature_table(&b);
    hb_end(&b, NULL);

    struct qk_header h, h2;
    parse_ok(&b, &h);
    assert_string_equal(h.data_file, "h.raw");
    assert_true(h.incompat == INCOMPAT_DATA_FILE);
    assert_true(h.autoclear == AUTOCLEAR_DATA_RAW);
    assert_null(h.backing_name);
    uint8_t *out = reserialize(&b, &h, &h2);
    assert_same_cluster(b.buf, out, b.cs);
    assert_same_header(&h, &h2);
    free(out);
    header_free(&h);
    header_free(&h2);
    hb_free(&b);
}

/* Unknown extensions placed out of QEMU's order still come back byte for
 * byte (serialize may move them, but not change them). */
static void test_header__unknown_ext_kept_when_reordered(void **state)
{
    (void)state;
    struct hb b;
    hb_init(&b, 3, 16, HDR_V3_LENGTH);
    uint8_t big[1000];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (uint8_t)(i * 7 + 3);
    hb_ext(&b, 0x0badf00du, big, 999);
    hb_str_ext(&b, EXT_BACKING_FMT, "qcow2");
    hb_ext(&b, 0x00000001u, NULL, 0); /* empty unknown extension */
    hb_end(&b, "b.qcow2");

    struct qk_header h, h2;
    parse_ok(&b, &h);
    assert_int_equal(h.nb_unknown_exts, 2);
    assert_int_equal(h.unknown_exts[0].type, 0x0badf00du);
    assert_int_equal(h.unknown_exts[0].len, 999);
    assert_memory_equal(h.unknown_exts[0].data, big, 999);
    assert_int_equal(h.unknown_exts[1].type, 1);
    assert_int_equal(h.unknown_exts[1].len, 0);
    uint8_t *out = reserialize(&b, &h, &h2);
    assert_same_header(&h, &h2);
    /* the 999 bytes are in the output verbatim, followed by one zero pad byte */
    uint8_t *hit = memmem(out, b.cs, big, 999);
    assert_non_null(hit);
    assert_int_equal(hit[999], 0);
    assert_int_equal(be32_load(hit - 8), 0x0badf00du);
    assert_int_equal(be32_load(hit - 4), 999);
    free(out);
    header_free(&h);
    header_free(&h2);
    hb_free(&b);
}

/* Feature table entries: a 46-byte name has no NUL on disk; lookups by
 * (type, bit) find names; an unused entry for an unknown bit is harmless. */
static void test_header__feature_table(void **state)
{
    (void)state;
    struct hb b;
    hb_init(&b, 3, 16, HDR_V3_LENGTH);
    const char *longname = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRST"; /* 46 */
    assert_int_equal(strlen(longname), FEATURE_NAME_SIZE);
    uint8_t t[3 * FEATURE_ENTRY_SIZE];
    put_feature(t, 0, 9, longname);
    put_feature(t + 48, 1, 0, "lazy refcounts");
    put_feature(t + 96, 2, 63, "x");
    hb_ext(&b, EXT_FEATURES, t, sizeof t);
    hb_end(&b, NULL);

    struct qk_header h;
    parse_ok(&b, &h);
    assert_int_equal(h.nb_features, 3);
    assert_string_equal(h.features[0].name, longname);
    assert_int_equal(h.features[0].type, 0);
    assert_int_equal(h.features[0].bit, 9);
    assert_string_equal(header_feature_name(&h, 0, 9), longname);
    assert_string_equal(header_feature_name(&h, 1, 0), "lazy refcounts");
    assert_string_equal(header_feature_name(&h, 2, 63), "x");
    assert_null(header_feature_name(&h, 0, 0));
    assert_null(header_feature_name(&h, 1, 9));
    header_free(&h);
    hb_free(&b);
}

/* Unknown compatible and autoclear bits do not stop a parse. */
static void test_header__unknown_compat_autoclear_ok(void **state)
{
    (void)state;
    struct hb b;
    hb_init(&b, 3, 16, HDR_V3_LENGTH);
    set64(&b, HDR_COMPAT, 1ull << 40);
    set64(&b, HDR_AUTOCLEAR, 1ull << 63);
    hb_end(&b, NULL);
    struct qk_header h;
    parse_ok(&b, &h);
    assert_true(h.compat == 1ull << 40);
    assert_true(h.autoclear == 1ull << 63);
    header_free(&h);
    hb_free(&b);
}

/* Every cluster size QEMU supports parses; header and length agree. */
static void test_header__all_cluster_sizes(void **state)
{
    (void)state;
    for (unsigned bits = MIN_CLUSTER_BITS; bits <= MAX_CLUSTER_BITS; bits++) {
        struct hb b;
        hb_init(&b, 3, bits, HDR_V3_LENGTH);
        hb_end(&b, bits >= 10 ? "backing" : NULL);
        struct qk_header h, h2;
        parse_ok(&b, &h);
        assert_int_equal(h.cluster_bits, bits);
        uint8_t *out = reserialize(&b, &h, &h2);
        assert_same_header(&h, &h2);
        free(out);
        header_free(&h);
        header_free(&h2);
        hb_free(&b);
    }
}

/* serialize sets backing_offset/backing_size/header_length itself, and says
 * QK_E_TOO_LARGE when the result does not fit in one cluster. */
static void test_header__serialize_sets_offsets_and_too_large(void **state)
{
    (void)state;
    struct hb b;
    hb_init(&b, 3, 9, HDR_V3_LENGTH);
    hb_end(&b, NULL);
    struct qk_header h;
    parse_ok(&b, &h);
    assert_null(h.backing_name);

    h.backing_name = strdup("new-base.qcow2");
    assert_non_null(h.backing_name);
    uint8_t out[512];
    assert_int_equal(header_serialize(&h, out, sizeof out), 0);
    assert_int_equal(h.header_length, 112);
    assert_int_equal(h.backing_size, 14);
    assert_true(h.backing_offset >= 120 && h.backing_offset + 14 <= 512);
    assert_true(be64_load(out + HDR_BACKING_OFFSET) == h.backing_offset);
    assert_int_equal(be32_load(out + HDR_BACKING_SIZE), 14);
    assert_memory_equal(out + h.backing_offset, "new-base.qcow2", 14);

    free(h.backing_name);
    h.backing_name = malloc(501);
    assert_non_null(h.backing_name);
    memset(h.backing_name, 'n', 500);
    h.backing_name[500] = 0;
    assert_int_equal(header_serialize(&h, out, sizeof out), QK_E_TOO_LARGE);
    header_free(&h);
    hb_free(&b);
}

/* ---- rejections -------------------------------------------------------- */

/* One header field set to a bad value on an otherwise valid v3 image (or
 * two, for the compression pair): the parse must fail with CODE (or
 * ALT_CODE) and a message that names what is wrong. */
struct field_case {
    const char *what;
    unsigned cluster_bits;
    const char *backing;        /* backing name written by hb_end, or NULL */
    unsigned off, width;        /* the field: byte offset, 1/4/8 bytes */
    uint64_t value;
    uint64_t incompat;          /* also set as incompatible features when non-zero */
    int code, alt_code;
    const char *needle1, *needle2;
};

static const struct field_case field_cases[] = {
    { "bad magic", 16, NULL, HDR_MAGIC, 4, 0x514649FAu, 0, QK_E_NOT_FORMAT, 0, "qcow2|magic", NULL },
    { "byte-swapped magic", 16, NULL, HDR_MAGIC, 4, 0xFB494651u, 0, QK_E_NOT_FORMAT, 0, "qcow2|magic", NULL },
    { "version 0", 16, NULL, HDR_VERSION, 4, 0, 0, QK_E_UNSUPPORTED, 0, "version", "0" },
    { "version 1", 16, NULL, HDR_VERSION, 4, 1, 0, QK_E_UNSUPPORTED, 0, "version", "1" },
    { "version 4", 16, NULL, HDR_VERSION, 4, 4, 0, QK_E_UNSUPPORTED, 0, "version", "4" },
    { "version byte-swapped 3", 16, NULL, HDR_VERSION, 4, 0x03000000u, 0, QK_E_UNSUPPORTED, 0, "version", NULL },
    { "version 2^32-1", 16, NULL, HDR_VERSION, 4, UINT32_MAX, 0, QK_E_UNSUPPORTED, 0, "version", NULL },
    /* The spec says "must not be less than 9", which makes 8 malformed
     * (CORRUPT); QEMU words it "Unsupported cluster size: 2^8". Either code is
     * a refusal of the right kind; the message must name the size. */
    { "cluster_bits 8", 9, NULL, HDR_CLUSTER_BITS, 4, 8, 0, QK_E_CORRUPT, QK_E_UNSUPPORTED, "cluster", "8" },
    { "cluster_bits 0", 9, NULL, HDR_CLUSTER_BITS, 4, 0, 0, QK_E_CORRUPT, QK_E_UNSUPPORTED, "cluster", NULL },
    /* valid per spec, beyond QEMU's 2 MiB limit; then shifts that would be undefined */
    { "cluster_bits 22", 16, NULL, HDR_CLUSTER_BITS, 4, 22, 0, QK_E_UNSUPPORTED, 0, "cluster", NULL },
    { "cluster_bits 64", 16, NULL, HDR_CLUSTER_BITS, 4, 64, 0, QK_E_UNSUPPORTED, 0, "cluster", NULL },
    { "cluster_bits 2^32-1", 16, NULL, HDR_CLUSTER_BITS, 4, UINT32_MAX, 0, QK_E_UNSUPPORTED, 0, "cluster", NULL },
    { "header_length 0", 16, NULL, HDR_HEADER_LENGTH, 4, 0, 0, QK_E_CORRUPT, 0, "header", "short|length|104" },
    { "header_length 72", 16, NULL, HDR_HEADER_LENGTH, 4, 72, 0, QK_E_CORRUPT, 0, "header", "short|length|104" },
    { "header_length 96", 16, NULL, HDR_HEADER_LENGTH, 4, 96, 0, QK_E_CORRUPT, 0, "header", "short|length|104" },
    { "header_length 100", 16, NULL, HDR_HEADER_LENGTH, 4, 100, 0, QK_E_CORRUPT, 0, "header", "short|length|104" },
    { "header_length past the cluster", 9, NULL, HDR_HEADER_LENGTH, 4, 520, 0, QK_E_CORRUPT, 0, "header", "cluster|exceed|length" },
    { "header_length 2^32-8", 9, NULL, HDR_HEADER_LENGTH, 4, 0xfffffff8u, 0, QK_E_CORRUPT, 0, "header", "cluster|exceed|length" },
    { "header_length 108", 16, NULL, HDR_HEADER_LENGTH, 4, 108, 0, QK_E_CORRUPT, 0, "header", "multiple|align|length" },
    { "header_length 105", 16, NULL, HDR_HEADER_LENGTH, 4, 105, 0, QK_E_CORRUPT, 0, "header", "multiple|align|length" },
    { "backing name past the cluster", 9, "base", HDR_BACKING_OFFSET, 8, 510, 0, QK_E_CORRUPT, 0, "backing", NULL },
    { "backing offset + size overflows", 9, "base", HDR_BACKING_OFFSET, 8, UINT64_MAX - 1, 0, QK_E_CORRUPT, 0, "backing", NULL },
    { "refcount_order 7", 16, NULL, HDR_REFCOUNT_ORDER, 4, 7, 0, QK_E_CORRUPT, 0, "refcount|reference count", NULL },
    { "refcount_order 2^32-1", 16, NULL, HDR_REFCOUNT_ORDER, 4, UINT32_MAX, 0, QK_E_CORRUPT, 0, "refcount|reference count", NULL },
    { "compression_type 2", 16, NULL, HDR_COMPRESSION_TYPE, 1, 2, INCOMPAT_COMPRESSION, QK_E_UNSUPPORTED, 0, "compression", NULL },
    /* compression_type and the compression bit must agree both ways */
    { "zstd without the bit", 16, NULL, HDR_COMPRESSION_TYPE, 1, 1, 0, QK_E_CORRUPT, 0, "compression", NULL },
    { "the bit with zlib", 16, NULL, HDR_COMPRESSION_TYPE, 1, 0, INCOMPAT_COMPRESSION, QK_E_CORRUPT, 0, "compression", NULL },
};

static void test_header__one_field_corruptions(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof field_cases / sizeof field_cases[0]; i++) {
        const struct field_case *c = &field_cases[i];
        struct hb b;
        print_message("case: %s\n", c->what);
        hb_init(&b, 3, c->cluster_bits, HDR_V3_LENGTH);
        hb_end(&b, c->backing);
        if (c->incompat)
            set64(&b, HDR_INCOMPAT, c->incompat);
        if (c->width == 8)
            set64(&b, c->off, c->value);
        else if (c->width == 4)
            set32(&b, c->off, (uint32_t)c->value);
        else
            b.buf[c->off] = (uint8_t)c->value;
        parse_fails_either(&b, c->code, c->alt_code ? c->alt_code : c->code, c->needle1, c->needle2);
        hb_free(&b);
    }
}

static void test_header__extension_past_cluster(void **state)
{
    (void)state;
    struct hb b;
    hb_init(&b, 3, 12, HDR_V3_LENGTH);
    hb_end(&b, NULL);
    /* an unknown extension at 112 whose length runs to byte 4096 + 8 */
    set32(&b, 112, 0x12345678u);
    set32(&b, 116, 4096 - 112 - 8 + 8);
    parse_fails(&b, QK_E_CORRUPT, "extension", NULL);
    /* a length that overflows 32-bit pos + len arithmetic */
    set32(&b, 116, 0xfffffff8u);
    parse_fails(&b, QK_E_CORRUPT, "extension", NULL);
    /* data one byte past the end of the cluster */
    set32(&b, 116, 4096 - 120 + 1);
    parse_fails(&b, QK_E_CORRUPT, "extension", NULL);
    hb_free(&b);
}

/* The extension area ends where the backing name starts. */
static void test_header__extension_past_backing_name(void **state)
{
    (void)state;
    struct hb b;
    hb_init(&b, 3, 16, HDR_V3_LENGTH);
    hb_str_ext(&b, EXT_BACKING_FMT, "qcow2");
    hb_end(&b, "base.qcow2");
    /* the backing format extension now claims 32 bytes: past the end marker
     * and into the backing name at 136 */
    set32(&b, 116, 32);
    parse_fails(&b, QK_E_CORRUPT, "extension", NULL);
    hb_free(&b);
}

static void test_header__backing_name_too_long(void **state)
{
    (void)state;
    struct hb b;
    hb_init(&b, 3, 16, HDR_V3_LENGTH);
    char name[1025];
    memset(name, 'a', 1024);
    name[1024] = 0;
    hb_end(&b, name);
    parse_fails(&b, QK_E_CORRUPT, "backing", NULL);
    hb_free(&b);

    /* exactly 1023 bytes is fine */
    hb_init(&b, 3, 16, HDR_V3_LENGTH);
    name[1023] = 0;
    hb_end(&b, name);
    struct qk_header h;
    parse_ok(&b, &h);
    assert_int_equal(strlen(h.backing_name), 1023);
    header_free(&h);
    hb_free(&b);
}

static void test_header__backing_fmt_too_long(void **state)
{
    (void)state;
    struct hb b;
    hb_init(&b, 3, 16, HDR_V3_LENGTH);
    hb_str_ext(&b, EXT_BACKING_FMT, "0123456789abcdef"); /* 16 > MAX_BACKING_FMT */
    hb_end(&b, "base");
    parse_fails(&b, QK_E_CORRUPT, "format|fmt|backing", NULL);
    hb_free(&b);
}

/* An unknown incompatible bit is refused; the message names the feature as
 * the image's own feature table calls it. */
static void test_header__unknown_incompat_named(void **state)
{
    (void)state;
    struct hb b;
    hb_init(&b, 3, 16, HDR_V3_LENGTH);
    set64(&b, HDR_INCOMPAT, 1ull << 5);
    uint8_t t[2 * FEATURE_ENTRY_SIZE];
    put_feature(t, 0, 0, "dirty bit");
    put_feature(t + 48, 0, 5, "frobnicated clusters");
    hb_ext(&b, EXT_FEATURES, t, sizeof t);
    hb_end(&b, NULL);
    parse_fails(&b, QK_E_UNSUPPORTED, "frobnicated clusters", NULL);
    hb_free(&b);
}

static void test_header__unknown_incompat_unnamed(void **state)
{
    (void)state;
    struct hb b;
    hb_init(&b, 3, 16, HDR_V3_LENGTH);
    set64(&b, HDR_INCOMPAT, 1ull << 63);
    hb_qemu_feature_table(&b);   /* names only the known bits */
    hb_end(&b, NULL);
    parse_fails(&b, QK_E_UNSUPPORTED, "feature", NULL);
    hb_free(&b);
}

static void test_header__refcount_orders_0_to_6(void **state)
{
    (void)state;
    struct hb b;
    /* 0..6 are all valid (7 and up: see one_field_corruptions) */
    for (uint32_t order = 0; order <= 6; order++) {
        hb_init(&b, 3, 16, HDR_V3_LENGTH);
        hb_end(&b, NULL);
        set32(&b, HDR_REFCOUNT_ORDER, order);
        struct qk_header h;
        parse_ok(&b, &h);
        assert_int_equal(h.refcount_order, order);
        header_free(&h);
        hb_free(&b);
    }
}

/* A truncated file: image.c hands over a cluster-sized buffer that is
 * zero-filled past EOF, plus the real file size. */
static void test_header__truncated_file(void **state)
{
    (void)state;
    struct hb b;
    hb_init(&b, 3, 16, HDR_V3_LENGTH);
    hb_end(&b, NULL);
    memset(b.buf + 100, 0, b.cs - 100);
    b.file_size = 100;                          /* ends inside the v3 header */
    parse_fails(&b, QK_E_CORRUPT, "short|truncated|end of", NULL);
    memset(b.buf, 0, b.cs);                     /* an empty file */
    b.file_size = 0;
    parse_fails(&b, QK_E_NOT_FORMAT, "qcow2|magic", NULL);
    hb_free(&b);
}

/* A bitmaps extension of the wrong length never fails the parse: it is
 * recorded, and bitmap.c reports every bitmap inconsistent. */
static void test_header__bitmaps_ext_bad_length_is_not_fatal(void **state)
{
    (void)state;
    struct hb b;
    hb_init(&b, 3, 16, HDR_V3_LENGTH);
    set64(&b, HDR_AUTOCLEAR, AUTOCLEAR_BITMAPS);
    uint8_t e[16] = { 0, 0, 0, 1 };
    hb_ext(&b, EXT_BITMAPS, e, sizeof e);
    hb_end(&b, NULL);
    struct qk_header h;
    parse_ok(&b, &h);
    assert_int_equal(h.has_bitmaps_ext, 1);
    assert_int_equal(h.bitmaps_ext_error, 1);
    header_free(&h);
    hb_free(&b);
}

/* Names handed to open(2) or printed must not hide a NUL byte. */
static void test_header__names_with_nul_are_corrupt(void **state)
{
    (void)state;
    struct hb b;
    hb_init(&b, 3, 16, HDR_V3_LENGTH);
    hb_end(&b, "base.qcow2");
    b.buf[be64_load(b.buf + HDR_BACKING_OFFSET) + 4] = 0;   /* "base\0qcow2" */
    parse_fails(&b, QK_E_CORRUPT, "backing", NULL);
    hb_free(&b);

    hb_init(&b, 3, 16, HDR_V3_LENGTH);
    hb_ext(&b, EXT_BACKING_FMT, "raw\0x", 5);
    hb_end(&b, "base");
    parse_fails(&b, QK_E_CORRUPT, "format|fmt|backing", NULL);
    hb_free(&b);

    hb_init(&b, 3, 16, HDR_V3_LENGTH);
    set64(&b, HDR_INCOMPAT, INCOMPAT_DATA_FILE);
    hb_ext(&b, EXT_DATA_FILE, "d.raw\0../../etc/passwd", 22);
    hb_end(&b, NULL);
    parse_fails(&b, QK_E_CORRUPT, "data file|data-file", NULL);
    hb_free(&b);
}

/* Whatever follows the end marker is not an extension, even if it looks
 * like a broken one. */
static void test_header__end_marker_stops_parsing(void **state)
{
    (void)state;
    struct hb b;
    hb_init(&b, 3, 16, HDR_V3_LENGTH);
    hb_str_ext(&b, EXT_BACKING_FMT, "raw");
    hb_end(&b, NULL);
    set32(&b, b.pos, 0x12345678u);
    set32(&b, b.pos + 4, 0xfffffff0u);
    struct qk_header h;
    parse_ok(&b, &h);
    assert_string_equal(h.backing_fmt, "raw");
    assert_int_equal(h.nb_unknown_exts, 0);
    header_free(&h);
    hb_free(&b);
}

/* Several unknown incompatible bits: the named ones by name, the rest as a
 * hex mask, as QEMU prints "Unsupported qcow2 feature(s): ...". */
static void test_header__unknown_incompat_mixed(void **state)
{
    (void)state;
    struct hb b;
    hb_init(&b, 3, 16, HDR_V3_LENGTH);
    set64(&b, HDR_INCOMPAT, INCOMPAT_DIRTY | 1ull << 5 | 1ull << 6);
    uint8_t t[FEATURE_ENTRY_SIZE];
    put_feature(t, 0, 5, "frobnicated clusters");
    hb_ext(&b, EXT_FEATURES, t, sizeof t);
    hb_end(&b, NULL);
    parse_fails(&b, QK_E_UNSUPPORTED, "frobnicated clusters", "Unknown incompatible feature: 40");
    hb_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header__v3_canonical_round_trip),
        cmocka_unit_test(test_header__v3_everything_round_trip),
        cmocka_unit_test(test_header__v2_round_trip),
        cmocka_unit_test(test_header__v2_bare_round_trip),
        cmocka_unit_test(test_header__data_file_round_trip),
        cmocka_unit_test(test_header__unknown_ext_kept_when_reordered),
        cmocka_unit_test(test_header__feature_table),
        cmocka_unit_test(test_header__unknown_compat_autoclear_ok),
        cmocka_unit_test(test_header__all_cluster_sizes),
        cmocka_unit_test(test_header__serialize_sets_offsets_and_too_large),
        cmocka_unit_test(test_header__one_field_corruptions),
        cmocka_unit_test(test_header__extension_past_cluster),
        cmocka_unit_test(test_header__extension_past_backing_name),
        cmocka_unit_test(test_header__backing_name_too_long),
        cmocka_unit_test(test_header__backing_fmt_too_long),
        cmocka_unit_test(test_header__unknown_incompat_named),
        cmocka_unit_test(test_header__unknown_incompat_unnamed),
        cmocka_unit_test(test_header__refcount_orders_0_to_6),
        cmocka_unit_test(test_header__truncated_file),
        cmocka_unit_test(test_header__bitmaps_ext_bad_length_is_not_fatal),
        cmocka_unit_test(test_header__names_with_nul_are_corrupt),
        cmocka_unit_test(test_header__end_marker_stops_parsing),
        cmocka_unit_test(test_header__unknown_incompat_mixed),
    };
    return cmocka_run_group_tests_name("header", tests, NULL, NULL);
}
