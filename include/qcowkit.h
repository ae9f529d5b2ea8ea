/*
 * qcowkit.h - the public API of libqcowkit, a library for qcow2 disk images.
 *
 * Conventions (see docs/qcowkit.3):
 *  - Every function returns 0 on success or a negative code: -errno for system
 *    failures, or one of the QK_E_* codes below for format outcomes.
 *    qk_strerror(code) names any code; qk_errmsg(img) gives the words of the
 *    last failure on that handle.
 *  - A qk_image handle is created with qk_image_new() before it is opened, so
 *    that an open failure has a handle to carry its message. qk_close() always
 *    frees the handle.
 *  - Offsets and lengths are in bytes. No global state; distinct handles may be
 *    used from distinct threads, one handle from one thread at a time.
 *  - Option structs are versioned: initialise them with their *_INIT macro;
 *    fields are only ever appended.
 *  - What comes back through an `**out` parameter belongs to the caller and is
 *    released with the matching *_free function.
 */
#ifndef QCOWKIT_H
#define QCOWKIT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) && defined(QK_BUILDING_LIBRARY)
#define QK_API __attribute__((visibility("default")))
#else
#define QK_API
#endif

#define QK_VERSION_MAJOR 0
#define QK_VERSION_MINOR 1
#define QK_VERSION_PATCH 0
#define QK_VERSION_STRING "0.1.0"

/** Run-time version, as QK_VERSION_MAJOR*10000 + MINOR*100 + PATCH. */
QK_API int qk_version_number(void);

/* ------------------------------------------------------------------ */
/* Error codes (negative). System errors are -errno and are below 1000. */

#define QK_E_CORRUPT        (-1001) /**< image metadata is inconsistent or malformed */
#define QK_E_UNSUPPORTED    (-1002) /**< valid image that uses a feature we do not support */
#define QK_E_INVALID        (-1003) /**< invalid argument or option */
#define QK_E_NOT_FORMAT     (-1004) /**< the file is not in the requested format */
#define QK_E_READONLY       (-1005) /**< the handle or image can only be read */
#define QK_E_LOCKED         (-1006) /**< another process holds a conflicting lock */
#define QK_E_NOT_FOUND      (-1007) /**< named object (bitmap, snapshot) does not exist */
#define QK_E_EXISTS         (-1008) /**< named object already exists */
#define QK_E_BITMAP_INCONSISTENT (-1009) /**< the bitmap is inconsistent and cannot be used */
#define QK_E_TOO_LARGE      (-1010) /**< a size exceeds the format's limits */
#define QK_E_NOSPC_META     (-1011) /**< no room left in a metadata structure */

/** A static string naming any return code (never NULL). */
QK_API const char *qk_strerror(int code);

/* ------------------------------------------------------------------ */
/* Handles */

typedef struct qk_image qk_image;

/** Formats an image can be opened as. */
enum qk_format {
    QK_FMT_PROBE = 0, /**< qcow2 if the file starts with the qcow2 magic, else raw */
    QK_FMT_QCOW2 = 1,
    QK_FMT_RAW = 2,
};

/* qk_open flags */
#define QK_OPEN_RDWR         0x0001u /**< open for writing (default read-only) */
#define QK_OPEN_FORCE_SHARE  0x0002u /**< like qemu-img -U: take no refusal locks */
#define QK_OPEN_NO_BACKING   0x0004u /**< do not open backing files (reads of unallocated ranges return zeros) */
#define QK_OPEN_NO_LOCK      0x0008u /**< take no locks at all */
#define QK_OPEN_UNSAFE       0x0010u /**< never flush to disk (qemu-img -t unsafe): fast, but a crash may corrupt the image; for filling new images */
#define QK_OPEN_CHECK        0x0020u /**< open for qk_check (like QEMU's BDRV_O_CHECK): a corrupt image may be opened read-write, a dirty one is not repaired at open, a broken snapshot table is left to qk_check */
#define QK_OPEN_FMT_QCOW2    0x0100u /**< the file must be qcow2 (else QK_E_NOT_FORMAT) */
#define QK_OPEN_FMT_RAW      0x0200u /**< treat the file as raw */

/** The deepest backing chain qk_open() follows (deeper ones are refused). */
#define QK_MAX_BACKING_DEPTH 128

/** Allocate an unopened handle. */
QK_API int qk_image_new(qk_image **out);

/** Open PATH on a handle made by qk_image_new(). Backing files named in the
 *  image are resolved against the image's folder and opened read-only. */
QK_API int qk_open(qk_image *img, const char *path, unsigned flags);

/** Flush (if writable) and free the handle and its backing chain. Returns the
 *  result of the final flush. Passing NULL is allowed. */
QK_API int qk_close(qk_image *img);

/** The message of the last failure on this handle ("" if none). Valid until
 *  the next call on the handle. */
QK_API const char *qk_errmsg(const qk_image *img);

/** Warnings gathered at open time (one per line, "" if none). */
QK_API const char *qk_warnings(const qk_image *img);

/* ------------------------------------------------------------------ */
/* Reading */

/** Read LEN bytes of guest data at OFFSET. Reads past the virtual size fail
 *  with -EINVAL. */
QK_API int qk_pread(qk_image *img, void *buf, uint64_t len, uint64_t offset);

/** Virtual disk size in bytes. */
QK_API uint64_t qk_size(const qk_image *img);

/* Block status flags */
#define QK_BS_PRESENT      0x01u /**< allocated in some layer of the chain */
#define QK_BS_ZERO         0x02u /**< reads as zeros */
#define QK_BS_DATA         0x04u /**< data is stored (not a hole) */
#define QK_BS_OFFSET_VALID 0x08u /**< host_offset is the data's location */
#define QK_BS_COMPRESSED   0x10u /**< the data is stored compressed */

typedef struct qk_extent {
    uint64_t offset;       /**< guest offset of the extent */
    uint64_t length;       /**< length in bytes, > 0 */
    unsigned flags;        /**< QK_BS_* */
    int depth;             /**< layer where the status was found, 0 = this image */
    uint64_t host_offset;  /**< valid with QK_BS_OFFSET_VALID */
    const char *file;      /**< file holding the data at host_offset (borrowed) */
} qk_extent;

/** Describe the range starting at OFFSET, walking the backing chain as
 *  `qemu-img map` does: fills *ext with the longest extent (at most LEN bytes)
 *  whose status and host mapping are uniform. */
QK_API int qk_block_status(qk_image *img, uint64_t offset, uint64_t len, qk_extent *ext);

/* ------------------------------------------------------------------ */
/* Writing (handles opened with QK_OPEN_RDWR) */

/** Write LEN bytes of guest data at OFFSET. The data is durable after the
 *  next successful qk_flush() or qk_close(). */
QK_API int qk_pwrite(qk_image *img, const void *buf, uint64_t len, uint64_t offset);

#define QK_ZERO_MAY_UNMAP 0x1u /**< the range may be deallocated (like qemu-io write -z -u) */

/** Make LEN bytes at OFFSET read as zeros, without writing zero data where
 *  the format can record it (v3 zero clusters). */
QK_API int qk_pwrite_zeroes(qk_image *img, uint64_t len, uint64_t offset, unsigned flags);

/** Discard LEN bytes at OFFSET: whole clusters are deallocated (they read as
 *  zeros on v3 images, as the backing file on v2 images with one), partial
 *  clusters are left as they are, as QEMU does. */
QK_API int qk_discard(qk_image *img, uint64_t len, uint64_t offset);

/** Compress one cluster of guest data (LEN bytes at OFFSET, cluster
 *  aligned; the last cluster of the disk may be shorter) and store it as a
 *  compressed cluster, replacing what the cluster held. If it does not
 *  compress below the cluster size it is written uncompressed, as QEMU does. */
QK_API int qk_pwrite_compressed(qk_image *img, const void *buf, uint64_t len, uint64_t offset);

/** Compress IN with compression TYPE (0 zlib raw deflate with a 4 KiB window,
 *  1 zstd) into OUT, which holds *OUTLEN bytes; *OUTLEN gets the size made.
 *  -ENOSPC if it does not fit. Thread-safe, no handle: for compressing on
 *  worker threads before qk_pwrite_compressed_data(). Deflate is ISA-L's
 *  igzip (level 1) in a build with libisal, zlib otherwise. */
QK_API int qk_compress(int type, const void *in, size_t inlen, void *out, size_t *outlen);

/** Store DATA (LEN bytes made by qk_compress() with the image's compression
 *  type from one full cluster of guest data) as the compressed cluster at
 *  guest OFFSET (cluster aligned). */
QK_API int qk_pwrite_compressed_data(qk_image *img, const void *data, size_t len, uint64_t offset);

/** The image's compression type (0 zlib, 1 zstd) and cluster size. */
QK_API int qk_compression_type(const qk_image *img);
QK_API uint32_t qk_cluster_size(const qk_image *img);

#define QK_RESIZE_SHRINK 0x1u /**< allow the size to go down (data past it is lost) */

/** Change the virtual size to SIZE (a multiple of 512), as `qemu-img resize`. */
QK_API int qk_resize(qk_image *img, uint64_t size, unsigned flags);

/** Write all cached metadata in a crash-safe order and flush the file. */
QK_API int qk_flush(qk_image *img);

/* ------------------------------------------------------------------ */
/* Information */

typedef struct qk_snapshot_info {
    char *id;
    char *name;
    uint64_t vm_state_size;
    uint32_t date_sec;
    uint32_t date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t icount;       /**< valid when has_icount */
    int has_icount;
} qk_snapshot_info;

#define QK_BITMAP_IN_USE 0x1u
#define QK_BITMAP_AUTO   0x2u
#define QK_BITMAP_EXTRA_DATA_COMPATIBLE 0x4u

typedef struct qk_bitmap_info {
    char *name;
    uint64_t granularity;  /**< bytes (0 if the granularity is not representable) */
    unsigned flags;        /**< on-disk flags: QK_BITMAP_* */
    int consistent;        /**< 1 if the bitmap can be used */
    char *reason;          /**< why it is inconsistent (NULL when consistent) */
    uint64_t dirty_bytes;  /**< bytes marked dirty (qk_bitmap_list only; 0 if inconsistent) */
} qk_bitmap_info;

typedef struct qk_info {
    enum qk_format format;     /**< QK_FMT_QCOW2 or QK_FMT_RAW */
    const char *filename;      /**< as opened (borrowed until qk_info_free) */
    uint64_t virtual_size;
    uint64_t actual_size;      /**< bytes allocated on the host for the file */
    /* qcow2 only */
    int version;               /**< 2 or 3 */
    uint32_t cluster_size;
    int refcount_bits;
    int lazy_refcounts;
    int corrupt;
    int dirty;
    int extended_l2;
    int compression_type;      /**< 0 zlib, 1 zstd */
    uint64_t incompatible_features, compatible_features, autoclear_features;
    char *backing_file;        /**< name as stored in the image, or NULL */
    char *full_backing_file;   /**< name resolved against the image's folder */
    char *backing_format;      /**< from the extension, or NULL */
    int backing_format_probed; /**< 1 if the backing format was probed */
    char *data_file;           /**< external data file name, or NULL */
    int data_file_raw;
    size_t nb_snapshots;
    qk_snapshot_info *snapshots;
    size_t nb_bitmaps;
    qk_bitmap_info *bitmaps;
    int bitmaps_ext_error;     /**< 1 if the bitmaps extension could not be parsed */
} qk_info;

/** Gather what `qemu-img info` shows about this image (not its backing chain). */
QK_API int qk_get_info(qk_image *img, qk_info **out);
QK_API void qk_info_free(qk_info *info);

/** The backing image of IMG, or NULL (borrowed: closed with IMG). */
QK_API qk_image *qk_backing(qk_image *img);

/** The file name IMG was opened with (borrowed). */
QK_API const char *qk_filename(const qk_image *img);

/* ------------------------------------------------------------------ */
/* Persistent dirty bitmaps (the qcow2 bitmaps extension)
 *
 * Bitmaps are loaded when first used. An image opened read-write marks its
 * consistent bitmaps in_use on disk before the first guest write; from then
 * on every write, zero write and discard sets the bits it touches in every
 * enabled bitmap, and qk_close() stores them (new data, table and directory,
 * then the header switch, then the old clusters are freed). A bitmap found
 * in_use, or breaking a rule of the spec, is inconsistent: it is listed with
 * the reason and may only be removed. */

#define QK_BITMAP_ADD_DISABLED 0x1u /**< qk_bitmap_add: create it disabled */

/** List the bitmaps, consistent or not, with their dirty byte counts. */
QK_API int qk_bitmap_list(qk_image *img, qk_bitmap_info **out, size_t *count);
QK_API void qk_bitmap_list_free(qk_bitmap_info *list, size_t count);

/** Add an empty bitmap. GRANULARITY is a power of two from 512 B to 2 GiB,
 *  or 0 for the default (the cluster size clamped to 4 KiB..64 KiB). */
QK_API int qk_bitmap_add(qk_image *img, const char *name, uint64_t granularity, unsigned flags);
/** Remove a bitmap (consistent or not) and free its clusters. */
QK_API int qk_bitmap_remove(qk_image *img, const char *name);
/** Clear every bit. */
QK_API int qk_bitmap_clear(qk_image *img, const char *name);
/** Start (enable) or stop (disable) tracking writes. */
QK_API int qk_bitmap_enable(qk_image *img, const char *name);
QK_API int qk_bitmap_disable(qk_image *img, const char *name);
/** DST |= SRC. SRC_IMG may be IMG itself or another open image of the same
 *  virtual size or larger; granularities may differ. */
QK_API int qk_bitmap_merge(qk_image *img, const char *dst, qk_image *src_img, const char *src);

/** Called for each run of equal state; a non-zero return stops the walk
 *  and is returned by qk_bitmap_extents(). */
typedef int (*qk_extent_fn)(void *opaque, uint64_t offset, uint64_t length, int dirty);
/** Walk [OFFSET, OFFSET+LENGTH) of bitmap NAME in runs of equal state,
 *  adjacent runs of the same state merged. */
QK_API int qk_bitmap_extents(qk_image *img, const char *name, uint64_t offset, uint64_t length,
                             qk_extent_fn fn, void *opaque);

/* ------------------------------------------------------------------ */
/* Consistency check and repair (qemu-img check) */

#define QK_CHECK_FIX_LEAKS  0x1u /**< free clusters whose refcount is too high */
#define QK_CHECK_FIX_ERRORS 0x2u /**< also fix refcounts that are too low, COPIED flags, the
                                      refcount structure, and remove inconsistent bitmaps */

/** Counters of one check, with qemu-img's meaning (ImageCheck). */
typedef struct qk_check_result {
    unsigned struct_version;        /**< set by QK_CHECK_RESULT_INIT */
    int64_t corruptions;            /**< references not covered by refcounts, broken metadata */
    int64_t leaks;                  /**< clusters whose refcount is higher than their references */
    int64_t check_errors;           /**< the check itself could not do something (I/O, memory) */
    int64_t corruptions_fixed;
    int64_t leaks_fixed;
    uint64_t image_end_offset;      /**< end of the last used cluster */
    uint64_t total_clusters;        /**< clusters of the virtual disk */
    uint64_t allocated_clusters;
    uint64_t fragmented_clusters;
    uint64_t compressed_clusters;
    uint64_t bitmaps_inconsistent;  /**< bitmaps found inconsistent (QEMU does not report these) */
    uint64_t bitmaps_removed;       /**< of which removed by QK_CHECK_FIX_ERRORS */
    /** Called with each diagnostic line (no newline), as qemu-img prints them
     *  on stderr ("Leaked cluster 5 refcount=1 reference=0", ...). May be NULL. */
    void (*message)(void *opaque, const char *line);
    void *opaque;
} qk_check_result;

#define QK_CHECK_RESULT_VERSION 1
#define QK_CHECK_RESULT_INIT { QK_CHECK_RESULT_VERSION, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, NULL, NULL }

/** Check IMG (open it with QK_OPEN_CHECK, and QK_OPEN_RDWR to repair) as
 *  `qemu-img check` does, repairing what FLAGS (QK_CHECK_FIX_*) allow. The
 *  counters in *RES are reset first (message and opaque are kept). Returns 0
 *  when the check ran (whatever it found), QK_E_UNSUPPORTED for a raw image,
 *  or a negative code when it could not complete (qemu-img's "Check failed"). */
QK_API int qk_check(qk_image *img, unsigned flags, qk_check_result *res);

/* ------------------------------------------------------------------ */
/* Creating */

typedef struct qk_create_opts {
    unsigned struct_version;   /**< set by QK_CREATE_OPTS_INIT */
    enum qk_format format;     /**< QK_FMT_QCOW2 (default) or QK_FMT_RAW */
    uint64_t size;             /**< virtual size; 0 with a backing file means "the backing file's size" */
    int compat;                /**< 2 (0.10) or 3 (1.1, default) */
    uint32_t cluster_size;     /**< default 65536 */
    int refcount_bits;         /**< default 16 */
    int lazy_refcounts;
    int compression_type;      /**< 0 zlib (default), 1 zstd */
    int extended_l2;
    const char *backing_file;
    const char *backing_fmt;   /**< "qcow2", "raw" or NULL */
    const char *data_file;
    int data_file_raw;
    int no_backing_check;      /**< like qemu-img create -u: don't open the backing file */
    int preallocation;         /**< QK_PREALLOC_*: as qemu-img's preallocation= */
} qk_create_opts;

/* qk_create_opts.preallocation (the values of QEMU's PreallocMode) */
#define QK_PREALLOC_OFF      0 /**< nothing allocated beyond the L1 table */
#define QK_PREALLOC_METADATA 1 /**< L2 tables and data clusters mapped, not written */
#define QK_PREALLOC_FALLOC   2 /**< also reserve the data area with fallocate */
#define QK_PREALLOC_FULL     3 /**< also write zeros over the data area */

#define QK_CREATE_OPTS_VERSION 1
#define QK_CREATE_OPTS_INIT { QK_CREATE_OPTS_VERSION, QK_FMT_QCOW2, 0, 3, 65536, 16, 0, 0, 0, NULL, NULL, NULL, 0, 0, 0 }

/** Create an image file at PATH. IMG is used only to carry the error
 *  message and stays unopened. */
QK_API int qk_create(qk_image *img, const char *path, const qk_create_opts *opts);

/* ------------------------------------------------------------------ */
/* Measuring (qemu-img measure) */

typedef struct qk_measure_result {
    uint64_t required;         /**< file size the new image needs for the source's data */
    uint64_t fully_allocated;  /**< file size with every cluster allocated */
    int has_bitmaps;           /**< both the source and the target can hold persistent bitmaps */
    uint64_t bitmaps;          /**< bytes the source's bitmaps would take (valid with has_bitmaps) */
} qk_measure_result;

/** Compute, as `qemu-img measure` does, the file sizes of a new image made
 *  with OPTS (format, compat, cluster_size, refcount_bits, extended_l2,
 *  preallocation, and whether backing_file is set) that holds the guest data
 *  of SRC, or of an empty disk of OPTS->size bytes when SRC is NULL. IMG (an
 *  unopened handle) carries the error message; SRC is only read. */
QK_API int qk_measure(qk_image *img, qk_image *src, const qk_create_opts *opts, qk_measure_result *res);

/* ------------------------------------------------------------------ */
/* Amending (qemu-img amend) */

typedef struct qk_amend_opts {
    unsigned struct_version;   /**< set by QK_AMEND_OPTS_INIT */
    int compat;                /**< 0 keep, 2 (0.10) or 3 (1.1) */
    int lazy_refcounts;        /**< -1 keep, 0 off, 1 on */
    int refcount_bits;         /**< 0 keep, else 1, 2, 4, ..., 64 */
    uint64_t size;             /**< 0 keep, else the new virtual size (may shrink) */
} qk_amend_opts;

#define QK_AMEND_OPTS_VERSION 1
#define QK_AMEND_OPTS_INIT { QK_AMEND_OPTS_VERSION, 0, -1, 0, 0 }

/** Change IMG's (qcow2, opened read-write) options in place as `qemu-img
 *  amend` does, in QEMU's order: upgrade to v3, refcount width (new table and
 *  blocks written, then one header switch), lazy_refcounts (off makes the
 *  image clean first), size, downgrade to v2 (zero clusters expanded; refused
 *  with refcount_bits other than 16, an external data file, incompatible
 *  features such as extended L2, and, unlike QEMU, with persistent bitmaps,
 *  zstd compression or internal snapshots). */
QK_API int qk_amend(qk_image *img, const qk_amend_opts *opts);

/* ------------------------------------------------------------------ */
/* Backing chains: commit and rebase */

/** Record NAME (NULL or "" = no backing file) and FMT ("qcow2", "raw", ...;
 *  NULL = no backing-format extension) as IMG's backing file, as
 *  `qemu-img rebase -u` does. IMG must be opened read-write. The header
 *  cluster is rewritten in one write and flushed; when the new header does
 *  not fit in it the call fails with -ENOSPC and nothing changes. The open
 *  chain is not changed: the new backing file is used from the next open. */
QK_API int qk_set_backing(qk_image *img, const char *name, const char *fmt);

/** 1 if the range at OFFSET is allocated (data or zero clusters) in IMG or a
 *  layer below it and above BASE (BASE itself excluded; NULL = the whole
 *  chain), 0 if not; *pnum gets the length of the run from OFFSET (at most
 *  LEN bytes) of which the same is true. A layer shorter than OFFSET counts
 *  as allocating the zeros read past its end. Like QEMU's bdrv_is_allocated_above,
 *  so qk_is_allocated_above(img, qk_backing(img), ...) asks about IMG alone. */
QK_API int qk_is_allocated_above(qk_image *img, const qk_image *base, uint64_t offset,
                                 uint64_t len, uint64_t *pnum);

/** Turn IMG, opened read-only (typically a backing layer of a chain, as
 *  returned by qk_backing()), into a read-write handle in place: the file is
 *  opened again for writing, the locks become a writer's (failing with
 *  QK_E_LOCKED when another process uses the file), and writes through IMG
 *  track its enabled bitmaps. Images above IMG in the chain keep reading
 *  through it. Refused for an external data file. */
QK_API int qk_reopen_rw(qk_image *img);

/** Drop all guest data of IMG (read-write qcow2), as qemu-img commit empties
 *  the top image (QEMU's qcow2_make_empty): a v3 image without snapshots,
 *  bitmaps, encryption or external data file is rebuilt with an empty L1
 *  table and the file cut short; any other image has every cluster
 *  discarded (unallocated, even over a backing file). Bitmaps are kept and
 *  not marked dirty. */
QK_API int qk_make_empty(qk_image *img);

/* ------------------------------------------------------------------ */
/* Internal snapshots (qcow2, handles opened with QK_OPEN_RDWR) */

/** Create a snapshot of the current state named NAME (names need not be
 *  unique, as in QEMU; the id is one more than the largest numeric id).
 *  Returns 0, -ENOTSUP for an image with an external data file, -EFBIG when
 *  the table is full, or another negative code. */
QK_API int qk_snapshot_create(qk_image *img, const char *name);

/** Revert the image to the snapshot whose id, else whose name, is
 *  ID_OR_NAME (QEMU's qcow2_snapshot_goto): the virtual size follows the
 *  snapshot's. Every enabled persistent bitmap gets the bits of every
 *  range whose mapping differs between the current state and the snapshot
 *  (QEMU refuses to apply while bitmaps exist); disabled bitmaps are left
 *  as they are. Returns 0, -ENOENT when there is no such snapshot,
 *  -ENOTSUP with an external data file, or another negative code. */
QK_API int qk_snapshot_apply(qk_image *img, const char *id_or_name);

/** Delete the snapshot whose id, else whose name, is ID_OR_NAME, and free
 *  the clusters only it used. Returns 0, -ENOENT, or another negative code. */
QK_API int qk_snapshot_delete(qk_image *img, const char *id_or_name);

#ifdef __cplusplus
}
#endif
#endif /* QCOWKIT_H */
