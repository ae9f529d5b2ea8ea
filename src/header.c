/*
 * header.c - the qcow2 header and its extensions: parse, validate, serialize,
 * and the feature-bit policy.
 *
 * Spec: qcow2.txt "Header" and "Header extensions"; checks and messages follow
 * QEMU 7.2's qcow2_do_open / qcow2_read_extensions (qemu-reference.md §1.1-1.3,
 * §3.1, §3.4).
 *
 * Invariants:
 *  1. header_parse() validates every field it stores that later code uses to
 *     size or index anything: cluster_bits, header_length, extension lengths,
 *     backing name, refcount_order, compression_type, feature bits. Table
 *     offsets and sizes (L1, refcount, snapshots) are validated by image.c
 *     against the file size, where the file size is known.
 *  2. Unknown header fields (past byte 112) and unknown extensions are kept
 *     byte for byte and written back by header_serialize().
 *  3. A malformed bitmaps extension never fails the parse: it is recorded in
 *     h->bitmaps_ext_error, and bitmap.c reports every bitmap inconsistent.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "endian.h"
#include "internal.h"

static const struct qk_feature_name qemu_features[] = {
    { 0, 0, "dirty bit" },
    { 0, 1, "corrupt bit" },
    { 0, 2, "external data file" },
    { 0, 3, "compression type" },
    { 0, 4, "extended L2 entries" },
    { 1, 0, "lazy refcounts" },
    { 2, 0, "bitmaps" },
    { 2, 1, "raw external data" },
};
#define NB_QEMU_FEATURES (sizeof qemu_features / sizeof qemu_features[0])

void header_free(struct qk_header *h)
{
    free(h->unknown_fields);
    free(h->backing_name);
    free(h->backing_fmt);
    free(h->data_file);
    free(h->features);
    for (size_t i = 0; i < h->nb_unknown_exts; i++)
        free(h->unknown_exts[i].data);
    free(h->unknown_exts);
    memset(h, 0, sizeof *h);
}

const char *header_feature_name(const struct qk_header *h, int type, int bit)
{
    for (size_t i = 0; i < h->nb_features; i++)
        if (h->features[i].type == type && h->features[i].bit == bit)
            return h->features[i].name;
    return NULL;
}

static char *dup_bytes(const uint8_t *p, size_t n)
{
    char *s = malloc(n + 1);
    if (s) {
        memcpy(s, p, n);
        s[n] = '\0';
    }
    return s;
}

/* A string stored in an image must not contain NUL bytes: we hand it to
 * open(2) and print it. */
static int has_nul(const uint8_t *p, size_t n)
{
    return memchr(p, 0, n) != NULL;
}

static int parse_features(qk_image *img, const uint8_t *p, uint32_t len, struct qk_header *h)
{
    size_t n = len / FEATURE_ENTRY_SIZE;
    free(h->features);
    h->features = NULL;
    h->nb_features = 0;
    if (n == 0)
        return 0;
    h->features = calloc(n, sizeof *h->features);
    if (!h->features)
        return qk_set_error(img, -ENOMEM, "Out of memory reading the feature name table");
    for (size_t i = 0; i < n; i++) {
        const uint8_t *e = p + i * FEATURE_ENTRY_SIZE;
        h->features[i].type = e[0];
        h->features[i].bit = e[1];
        memcpy(h->features[i].name, e + 2, FEATURE_NAME_SIZE);
        h->features[i].name[FEATURE_NAME_SIZE] = '\0';
    }
    h->nb_features = n;
    return 0;
}

static int keep_unknown_ext(qk_image *img, struct qk_header *h, uint32_t type,
                            const uint8_t *p, uint32_t len)
{
    struct qk_raw_ext *v = realloc(h->unknown_exts, (h->nb_unknown_exts + 1) * sizeof *v);
    if (!v)
        return qk_set_error(img, -ENOMEM, "Out of memory reading header extensions");
    h->unknown_exts = v;
    uint8_t *d = malloc(len ? len : 1);
    if (!d)
        return qk_set_error(img, -ENOMEM, "Out of memory reading header extensions");
    memcpy(d, p, len);
    v[h->nb_unknown_exts].type = type;
    v[h->nb_unknown_exts].len = len;
    v[h->nb_unknown_exts].data = d;
    h->nb_unknown_exts++;
    return 0;
}

/* Walk the extension area [start, end) of BUF. */
static int parse_extensions(qk_image *img, const uint8_t *buf, uint64_t start, uint64_t end,
                            struct qk_header *h)
{
    uint64_t off = start;
    int r;
    while (off < end) {
        if (end - off < 8)
            return QK_CORRUPT(img, "Header extension too large");
        uint32_t type = be32_load(buf + off);
        uint32_t len = be32_load(buf + off + 4);
        off += 8;
        if (type == EXT_END)
            return 0;
        if (len > end - off)
            return QK_CORRUPT(img, "Header extension too large");
        const uint8_t *p = buf + off;
        switch (type) {
        case EXT_BACKING_FMT:
            if (len > MAX_BACKING_FMT)
                return QK_CORRUPT(img, "ERROR: ext_backing_format: len=%u too large (>=%u)",
                                  len, MAX_BACKING_FMT + 1);
            if (has_nul(p, len))
                return QK_CORRUPT(img, "Backing file format name contains a NUL byte");
            free(h->backing_fmt);
            if (!(h->backing_fmt = dup_bytes(p, len)))
                return qk_set_error(img, -ENOMEM, "Out of memory");
            break;
        case EXT_FEATURES:
            if ((r = parse_features(img, p, len, h)) < 0)
                return r;
            break;
        case EXT_BITMAPS:
            h->has_bitmaps_ext = 1;
            h->bitmaps_ext_error = 0;
            if (len != BITMAPS_EXT_SIZE) {
                h->bitmaps_ext_error = 1;
                memset(&h->bitmaps, 0, sizeof h->bitmaps);
            } else {
                h->bitmaps.nb_bitmaps = be32_load(p);
                h->bitmaps.reserved = be32_load(p + 4);
                h->bitmaps.dir_size = be64_load(p + 8);
                h->bitmaps.dir_offset = be64_load(p + 16);
            }
            break;
        case EXT_CRYPTO:
            h->has_crypto_ext = 1;
            if (len == 16) {
                h->crypto_offset = be64_load(p);
                h->crypto_length = be64_load(p + 8);
            }
            break;
        case EXT_DATA_FILE:
            if (len > MAX_DATA_FILE_NAME)
                return QK_CORRUPT(img, "External data file name too long (%u bytes)", len);
            if (has_nul(p, len))
                return QK_CORRUPT(img, "External data file name contains a NUL byte");
            free(h->data_file);
            if (!(h->data_file = dup_bytes(p, len)))
                return qk_set_error(img, -ENOMEM, "Out of memory");
            break;
        default:
            if ((r = keep_unknown_ext(img, h, type, p, len)) < 0)
                return r;
            break;
        }
        uint64_t padded;
        if (ck_align_up(len, 8, &padded) || padded > end - off)
            padded = end - off;
        off += padded;
    }
    return 0;
}

static int report_unsupported(qk_image *img, const struct qk_header *h, uint64_t mask)
{
    char msg[512];
    size_t n = 0;
    msg[0] = '\0';
    for (int bit = 0; bit < 64; bit++) {
        if (!(mask & (1ull << bit)))
            continue;
        const char *name = header_feature_name(h, 0, bit);
        if (!name)
            continue;
        n += (size_t)snprintf(msg + n, n < sizeof msg ? sizeof msg - n : 0, "%s%s",
                              n ? ", " : "", name);
        mask &= ~(1ull << bit);
        if (n >= sizeof msg)
            n = sizeof msg - 1;
    }
    if (mask)
        snprintf(msg + n, sizeof msg - n, "%sUnknown incompatible feature: %llx", n ? ", " : "",
                 (unsigned long long)mask);
    return qk_set_error(img, QK_E_UNSUPPORTED, "Unsupported qcow2 feature(s): %s", msg);
}

int header_parse(qk_image *img, const uint8_t *buf, size_t len, uint64_t file_size,
                 struct qk_header *h)
{
    int r;
    memset(h, 0, sizeof *h);
    if (len < HDR_V3_LENGTH)
        return qk_set_error(img, QK_E_INVALID, "internal: header buffer too small");
    if (be32_load(buf + HDR_MAGIC) != QCOW_MAGIC)
        return qk_set_error(img, QK_E_NOT_FORMAT, "Image is not in qcow2 format");
    h->version = be32_load(buf + HDR_VERSION);
    if (h->version < 2 || h->version > 3)
        return qk_set_error(img, QK_E_UNSUPPORTED, "Unsupported qcow2 version %u", h->version);
    h->backing_offset = be64_load(buf + HDR_BACKING_OFFSET);
    h->backing_size = be32_load(buf + HDR_BACKING_SIZE);
    h->cluster_bits = be32_load(buf + HDR_CLUSTER_BITS);
    if (h->cluster_bits < MIN_CLUSTER_BITS || h->cluster_bits > MAX_CLUSTER_BITS)
        return qk_set_error(img, QK_E_UNSUPPORTED, "Unsupported cluster size: 2^%u",
                            h->cluster_bits);
    uint64_t cs = 1ull << h->cluster_bits;
    h->size = be64_load(buf + HDR_SIZE);
    h->crypt_method = be32_load(buf + HDR_CRYPT_METHOD);
    h->l1_size = be32_load(buf + HDR_L1_SIZE);
    h->l1_offset = be64_load(buf + HDR_L1_OFFSET);
    h->reftable_offset = be64_load(buf + HDR_REFTABLE_OFFSET);
    h->reftable_clusters = be32_load(buf + HDR_REFTABLE_CLUSTERS);
    h->nb_snapshots = be32_load(buf + HDR_NB_SNAPSHOTS);
    h->snapshots_offset = be64_load(buf + HDR_SNAPSHOTS_OFFSET);

    if (h->version == 2) {
        h->refcount_order = 4;
        h->header_length = HDR_V2_LENGTH;
    } else {
        h->incompat = be64_load(buf + HDR_INCOMPAT);
        h->compat = be64_load(buf + HDR_COMPAT);
        h->autoclear = be64_load(buf + HDR_AUTOCLEAR);
        h->refcount_order = be32_load(buf + HDR_REFCOUNT_ORDER);
        h->header_length = be32_load(buf + HDR_HEADER_LENGTH);
        if (h->header_length < HDR_V3_MIN_LENGTH)
            return QK_CORRUPT(img, "qcow2 header too short");
        if (h->header_length > cs)
            return QK_CORRUPT(img, "qcow2 header exceeds cluster size");
        if (h->header_length % 8)
            return QK_CORRUPT(img, "qcow2 header length %u is not a multiple of 8",
                              h->header_length);
        if (h->header_length > len)
            return qk_set_error(img, QK_E_INVALID, "internal: header buffer too small");
        if (h->header_length > HDR_COMPRESSION_TYPE)
            h->compression_type = buf[HDR_COMPRESSION_TYPE];
        if (h->header_length > HDR_V3_LENGTH) {
            h->unknown_fields_len = h->header_length - HDR_V3_LENGTH;
            h->unknown_fields = malloc(h->unknown_fields_len);
            if (!h->unknown_fields)
                return qk_set_error(img, -ENOMEM, "Out of memory");
            memcpy(h->unknown_fields, buf + HDR_V3_LENGTH, h->unknown_fields_len);
        }
    }
    if (file_size < h->header_length)
        return QK_CORRUPT(img, "qcow2 header too short: the file has only %llu bytes",
                          (unsigned long long)file_size);

    if (h->backing_offset > cs)
        return QK_CORRUPT(img, "Invalid backing file offset");
    if (h->backing_offset && h->backing_offset < h->header_length)
        return QK_CORRUPT(img, "Invalid backing file offset");
    uint64_t ext_end = h->backing_offset ? h->backing_offset : cs;
    if (ext_end > len)
        return qk_set_error(img, QK_E_INVALID, "internal: header buffer too small");

    if ((r = parse_extensions(img, buf, h->header_length, ext_end, h)) < 0)
        goto fail;

    if (h->incompat & ~INCOMPAT_KNOWN) {
        r = report_unsupported(img, h, h->incompat & ~INCOMPAT_KNOWN);
        goto fail;
    }
    if (h->refcount_order > 6) {
        r = QK_CORRUPT(img, "Reference count entry width too large; may not exceed 64 bits");
        goto fail;
    }
    if (h->compression_type > 1) {
        r = qk_set_error(img, QK_E_UNSUPPORTED, "qcow2: unknown compression type: %u",
                         h->compression_type);
        goto fail;
    }
    if (h->compression_type == 0 && (h->incompat & INCOMPAT_COMPRESSION)) {
        r = QK_CORRUPT(img, "qcow2: Compression type incompatible feature bit must not be set");
        goto fail;
    }
    if (h->compression_type != 0 && !(h->incompat & INCOMPAT_COMPRESSION)) {
        r = QK_CORRUPT(img, "qcow2: Compression type incompatible feature bit must be set");
        goto fail;
    }
    if ((h->incompat & INCOMPAT_EXTL2) && h->cluster_bits < 14) {
        r = qk_set_error(img, QK_E_UNSUPPORTED, "Unsupported subcluster size: %u",
                         (unsigned)(cs / EXTL2_SUBCLUSTERS));
        goto fail;
    }
    if ((h->incompat & INCOMPAT_DATA_FILE) && !h->data_file) {
        r = qk_set_error(img, QK_E_UNSUPPORTED, "'data-file' is required for this image");
        goto fail;
    }
    if ((h->autoclear & AUTOCLEAR_DATA_RAW) && !(h->incompat & INCOMPAT_DATA_FILE)) {
        r = QK_CORRUPT(img, "data-file-raw requires a data file");
        goto fail;
    }
    if (h->crypt_method) {
        if (h->crypt_method > 2)
            r = qk_set_error(img, QK_E_UNSUPPORTED, "Unsupported encryption method: %u",
                             h->crypt_method);
        else
            r = qk_set_error(img, QK_E_UNSUPPORTED,
                             "Encrypted images are not supported (%s encryption)",
                             h->crypt_method == 1 ? "AES" : "LUKS");
        goto fail;
    }
    if (h->has_crypto_ext) {
        r = QK_CORRUPT(img, "CRYPTO header extension only expected with LUKS encryption method");
        goto fail;
    }

    if (h->backing_offset) {
        uint64_t blen = h->backing_size;
        if (blen > MAX_BACKING_NAME || blen > cs - h->backing_offset) {
            r = QK_CORRUPT(img, "Backing file name too long");
            goto fail;
        }
        if (h->backing_offset + blen > file_size) {
            r = QK_CORRUPT(img, "Backing file name runs past the end of the file");
            goto fail;
        }
        if (has_nul(buf + h->backing_offset, blen)) {
            r = QK_CORRUPT(img, "Backing file name contains a NUL byte");
            goto fail;
        }
        if (!(h->backing_name = dup_bytes(buf + h->backing_offset, blen))) {
            r = qk_set_error(img, -ENOMEM, "Out of memory");
            goto fail;
        }
    }
    return 0;
fail:
    header_free(h);
    return r;
}

/* Append one extension at *off; returns -1 if it does not fit before LIMIT. */
static int put_ext(uint8_t *buf, size_t *off, size_t limit, uint32_t type,
                   const void *data, uint32_t len)
{
    size_t padded = ((size_t)len + 7) & ~(size_t)7;
    if (*off + 8 + padded > limit)
        return -1;
    be32_store(buf + *off, type);
    be32_store(buf + *off + 4, len);
    if (len)
        memcpy(buf + *off + 8, data, len);
    *off += 8 + padded;
    return 0;
}

int header_serialize(struct qk_header *h, uint8_t *buf, size_t cs)
{
    memset(buf, 0, cs);
    if (h->version == 3)
        h->header_length = (uint32_t)(HDR_V3_LENGTH + h->unknown_fields_len);
    else
        h->header_length = HDR_V2_LENGTH;
    if (h->header_length > cs)
        return QK_E_TOO_LARGE;

    be32_store(buf + HDR_MAGIC, QCOW_MAGIC);
    be32_store(buf + HDR_VERSION, h->version);
    be32_store(buf + HDR_CLUSTER_BITS, h->cluster_bits);
    be64_store(buf + HDR_SIZE, h->size);
    be32_store(buf + HDR_CRYPT_METHOD, h->crypt_method);
    be32_store(buf + HDR_L1_SIZE, h->l1_size);
    be64_store(buf + HDR_L1_OFFSET, h->l1_offset);
    be64_store(buf + HDR_REFTABLE_OFFSET, h->reftable_offset);
    be32_store(buf + HDR_REFTABLE_CLUSTERS, h->reftable_clusters);
    be32_store(buf + HDR_NB_SNAPSHOTS, h->nb_snapshots);
    be64_store(buf + HDR_SNAPSHOTS_OFFSET, h->snapshots_offset);
    if (h->version == 3) {
        be64_store(buf + HDR_INCOMPAT, h->incompat);
        be64_store(buf + HDR_COMPAT, h->compat);
        be64_store(buf + HDR_AUTOCLEAR, h->autoclear);
        be32_store(buf + HDR_REFCOUNT_ORDER, h->refcount_order);
        be32_store(buf + HDR_HEADER_LENGTH, h->header_length);
        buf[HDR_COMPRESSION_TYPE] = h->compression_type;
        if (h->unknown_fields_len)
            memcpy(buf + HDR_V3_LENGTH, h->unknown_fields, h->unknown_fields_len);
    }

    size_t off = h->header_length;
    if (h->backing_fmt &&
        put_ext(buf, &off, cs, EXT_BACKING_FMT, h->backing_fmt, (uint32_t)strlen(h->backing_fmt)))
        return QK_E_TOO_LARGE;
    if (h->data_file &&
        put_ext(buf, &off, cs, EXT_DATA_FILE, h->data_file, (uint32_t)strlen(h->data_file)))
        return QK_E_TOO_LARGE;
    if (h->version == 3 && cs > 4096) {
        uint8_t table[NB_QEMU_FEATURES * FEATURE_ENTRY_SIZE];
        memset(table, 0, sizeof table);
        for (size_t i = 0; i < NB_QEMU_FEATURES; i++) {
            uint8_t *e = table + i * FEATURE_ENTRY_SIZE;
            e[0] = qemu_features[i].type;
            e[1] = qemu_features[i].bit;
            memcpy(e + 2, qemu_features[i].name, strlen(qemu_features[i].name));
        }
        if (put_ext(buf, &off, cs, EXT_FEATURES, table, sizeof table))
            return QK_E_TOO_LARGE;
    }
    if (h->has_bitmaps_ext && !h->bitmaps_ext_error && h->bitmaps.nb_bitmaps > 0) {
        uint8_t ext[BITMAPS_EXT_SIZE];
        be32_store(ext, h->bitmaps.nb_bitmaps);
        be32_store(ext + 4, h->bitmaps.reserved);
        be64_store(ext + 8, h->bitmaps.dir_size);
        be64_store(ext + 16, h->bitmaps.dir_offset);
        if (put_ext(buf, &off, cs, EXT_BITMAPS, ext, sizeof ext))
            return QK_E_TOO_LARGE;
    }
    for (size_t i = 0; i < h->nb_unknown_exts; i++)
        if (put_ext(buf, &off, cs, h->unknown_exts[i].type, h->unknown_exts[i].data,
                    h->unknown_exts[i].len))
            return QK_E_TOO_LARGE;
    if (put_ext(buf, &off, cs, EXT_END, NULL, 0))
        return QK_E_TOO_LARGE;

    if (h->backing_name) {
        size_t blen = strlen(h->backing_name);
        if (blen > MAX_BACKING_NAME || off + blen > cs)
            return QK_E_TOO_LARGE;
        memcpy(buf + off, h->backing_name, blen);
        h->backing_offset = off;
        h->backing_size = (uint32_t)blen;
    } else {
        h->backing_offset = 0;
        h->backing_size = 0;
    }
    be64_store(buf + HDR_BACKING_OFFSET, h->backing_offset);
    be32_store(buf + HDR_BACKING_SIZE, h->backing_size);
    return 0;
}
