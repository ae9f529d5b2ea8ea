/*
 * format.h - the qcow2 on-disk layout: field offsets, masks, feature bits and
 * the limits we enforce (at least as strict as QEMU 7.2's).
 *
 * Source: docs/interop/qcow2.txt plus the bitmaps extension
 * (shared/spec/000_527c7e902fdcab1e.txt). All integers are big-endian.
 */
#ifndef QK_FORMAT_H
#define QK_FORMAT_H

#include <stdint.h>

#define QCOW_MAGIC 0x514649FBu

/* Header field offsets */
enum {
    HDR_MAGIC = 0, HDR_VERSION = 4, HDR_BACKING_OFFSET = 8, HDR_BACKING_SIZE = 16,
    HDR_CLUSTER_BITS = 20, HDR_SIZE = 24, HDR_CRYPT_METHOD = 32, HDR_L1_SIZE = 36,
    HDR_L1_OFFSET = 40, HDR_REFTABLE_OFFSET = 48, HDR_REFTABLE_CLUSTERS = 56,
    HDR_NB_SNAPSHOTS = 60, HDR_SNAPSHOTS_OFFSET = 64,
    HDR_INCOMPAT = 72, HDR_COMPAT = 80, HDR_AUTOCLEAR = 88,
    HDR_REFCOUNT_ORDER = 96, HDR_HEADER_LENGTH = 100, HDR_COMPRESSION_TYPE = 104,
    HDR_V2_LENGTH = 72, HDR_V3_MIN_LENGTH = 104, HDR_V3_LENGTH = 112,
};

/* Feature bits */
#define INCOMPAT_DIRTY        (1ull << 0)
#define INCOMPAT_CORRUPT      (1ull << 1)
#define INCOMPAT_DATA_FILE    (1ull << 2)
#define INCOMPAT_COMPRESSION  (1ull << 3)
#define INCOMPAT_EXTL2        (1ull << 4)
#define INCOMPAT_KNOWN        0x1Full
#define COMPAT_LAZY_REFCOUNTS (1ull << 0)
#define AUTOCLEAR_BITMAPS     (1ull << 0)
#define AUTOCLEAR_DATA_RAW    (1ull << 1)
#define AUTOCLEAR_KNOWN       0x3ull

/* Header extension types */
#define EXT_END          0x00000000u
#define EXT_BACKING_FMT  0xE2792ACAu
#define EXT_FEATURES     0x6803F857u
#define EXT_BITMAPS      0x23852875u
#define EXT_CRYPTO       0x0537BE77u
#define EXT_DATA_FILE    0x44415441u

#define FEATURE_ENTRY_SIZE 48
#define FEATURE_NAME_SIZE  46

/* Limits */
#define MIN_CLUSTER_BITS 9
#define MAX_CLUSTER_BITS 21
#define MAX_BACKING_NAME 1023
#define MAX_BACKING_FMT  15             /* QEMU: len < 16 */
#define MAX_L1_BYTES     (32u << 20)    /* QCOW_MAX_L1_SIZE */
#define MAX_REFTABLE_BYTES (8u << 20)   /* QCOW_MAX_REFTABLE_SIZE */
#define MAX_CLUSTER_OFFSET ((1ull << 56) - 1)
#define MAX_SNAPSHOTS    65536
#define MAX_SNAPSHOTS_BYTES (1024u * 65536u)
#define MAX_SNAPSHOT_EXTRA 1024
#define MAX_BACKING_DEPTH QK_MAX_BACKING_DEPTH
#define MAX_DATA_FILE_NAME 4096

/* L1/L2 */
#define L1E_OFFSET_MASK    0x00fffffffffffe00ull
#define L1E_RESERVED_MASK  0x7f000000000001ffull
#define L2E_OFFSET_MASK    0x00fffffffffffe00ull
#define L2E_STD_RESERVED   0x3f000000000001feull
#define OFLAG_COPIED       (1ull << 63)
#define OFLAG_COMPRESSED   (1ull << 62)
#define OFLAG_ZERO         (1ull << 0)
#define REFT_OFFSET_MASK   0xfffffffffffffe00ull
#define REFT_RESERVED_MASK 0x1ffull
#define EXTL2_SUBCLUSTERS  32

/* Snapshot table */
#define SNAP_FIXED_SIZE 40

/* Bitmaps extension */
#define BITMAPS_EXT_SIZE 24
#define MAX_BITMAPS 65535
#define MAX_BITMAP_DIR_SIZE (1024u * 65535u)
#define BME_FIXED_SIZE 24
#define BME_FLAG_IN_USE 1u
#define BME_FLAG_AUTO 2u
#define BME_FLAG_EXTRA_COMPAT 4u
#define BME_SPEC_RESERVED_FLAGS 0xFFFFFFF8u
#define BME_MAX_TABLE_SIZE 0x8000000u
#define BME_MAX_PHYS_SIZE 0x20000000ull
#define BME_MIN_GRAN_BITS 9
#define BME_MAX_GRAN_BITS 31
#define BME_MAX_NAME_SIZE 1023
#define BME_TYPE_DIRTY 1
#define BME_TABLE_RESERVED 0xff000000000001feull
#define BME_TABLE_OFFSET_MASK 0x00fffffffffffe00ull
#define BME_TABLE_ALL_ONES 1ull

#endif
