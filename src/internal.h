/*
 * internal.h - struct qk_image and the library's internal interfaces, grouped
 * by the file that implements them. Nothing outside src/ includes this.
 *
 * Invariants of an open qcow2 image (established by image.c at open):
 *  1. Every header field has been validated (header.c) against the file size
 *     and the limits in format.h before anything is sized or indexed by it.
 *  2. img->l1 holds l1_size entries; entries are validated when used.
 *  3. The backing chain is at most MAX_BACKING_DEPTH deep and has no loops.
 */
#ifndef QK_INTERNAL_H
#define QK_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "qcowkit.h"
#include "format.h"
#include "io.h"

/* ---- header.c ---------------------------------------------------------- */

struct qk_feature_name {
    uint8_t type;   /* 0 incompatible, 1 compatible, 2 autoclear */
    uint8_t bit;
    char name[FEATURE_NAME_SIZE + 1];
};

struct qk_raw_ext {          /* an unknown header extension, kept byte for byte */
    uint32_t type;
    uint32_t len;
    uint8_t *data;
};

struct qk_bitmaps_ext {
    uint32_t nb_bitmaps;
    uint32_t reserved;
    uint64_t dir_size;
    uint64_t dir_offset;
};

struct qk_header {
    uint32_t version;
    uint64_t backing_offset;
    uint32_t backing_size;
    uint32_t cluster_bits;
    uint64_t size;
    uint32_t crypt_method;
    uint32_t l1_size;
    uint64_t l1_offset;
    uint64_t reftable_offset;
    uint32_t reftable_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t incompat;
    uint64_t compat;
    uint64_t autoclear;
    uint32_t refcount_order;
    uint32_t header_length;
    uint8_t compression_type;
    /* bytes of the header past what we know (offset 112 .. header_length) */
    uint8_t *unknown_fields;
    size_t unknown_fields_len;

    /* extensions */
    char *backing_name;      /* NULL if none */
    char *backing_fmt;       /* NULL if no extension */
    char *data_file;         /* NULL if no extension */
    int has_bitmaps_ext;
    struct qk_bitmaps_ext bitmaps;
    int bitmaps_ext_error;   /* extension present but malformed (length) */
    int has_crypto_ext;
    uint64_t crypto_offset, crypto_length;
    struct qk_feature_name *features;
    size_t nb_features;
    struct qk_raw_ext *unknown_exts;
    size_t nb_unknown_exts;
};

/* Parse and validate the header in BUF (the first min(cluster, file) bytes).
 * On failure the message is in img. */
int header_parse(qk_image *img, const uint8_t *buf, size_t len, uint64_t file_size,
                 struct qk_header *h);
/* Serialize H into BUF (CS bytes, zeroed first) in QEMU's order: header,
 * unknown fields, extensions, end marker, backing name. Sets
 * h->backing_offset/backing_size and h->header_length. Returns 0 or
 * QK_E_TOO_LARGE when it does not fit in one cluster. */
int header_serialize(struct qk_header *h, uint8_t *buf, size_t cs);
void header_free(struct qk_header *h);
/* Name of an unknown feature from the image's table, or NULL. */
const char *header_feature_name(const struct qk_header *h, int type, int bit);

/* ---- error.c ----------------------------------------------------------- */

int qk_set_error(qk_image *img, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int qk_set_errorv(qk_image *img, int code, const char *fmt, va_list ap);
void qk_add_warning(qk_image *img, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
#define QK_CORRUPT(img, ...) qk_set_error((img), QK_E_CORRUPT, __VA_ARGS__)

/* ---- cache.c: L2 table and refcount block cache ------------------------- */

struct qk_cache;
int cache_new(struct qk_cache **out, qk_io *io, size_t table_size, size_t nb_tables);
void cache_free(struct qk_cache *c);
/* Get the table at host OFFSET (read on a miss). The pointer stays valid
 * until the next cache_get* on the same cache. */
int cache_get(struct qk_cache *c, uint64_t offset, const uint8_t **table);
/* The same, for modification: the table is marked dirty. */
int cache_get_mut(struct qk_cache *c, uint64_t offset, uint8_t **table);
/* A new all-zero dirty table at OFFSET (nothing is read). */
int cache_get_empty(struct qk_cache *c, uint64_t offset, uint8_t **table);
/* 1 if the table at OFFSET is in the cache. */
int cache_contains(const struct qk_cache *c, uint64_t offset);
/* Drop the table at OFFSET without writing it (its cluster was freed). */
void cache_forget(struct qk_cache *c, uint64_t offset);
/* Before C writes a table, DEP's dirty tables are written and the file
 * flushed. May write tables now to break a cycle. */
int cache_set_dependency(struct qk_cache *c, struct qk_cache *dep);
/* Before C writes a table, the file is flushed. */
void cache_depends_on_flush(struct qk_cache *c);
/* Write every dirty table (honouring dependencies), without a final flush. */
int cache_write_dirty(struct qk_cache *c);
/* cache_write_dirty() then flush the file. */
int cache_flush(struct qk_cache *c);

/* ---- refcount.c: refcounts and the cluster allocator --------------------- */

int refcount_open(qk_image *img);
/* Load the refcount table if it is not yet (read-only opens load it lazily). */
int refcount_ensure(qk_image *img);
/* 1 if the image looks made with preallocation=metadata (QEMU's heuristic). */
int refcount_detect_metadata_prealloc(qk_image *img);
void refcount_close(qk_image *img);
int refcount_get(qk_image *img, uint64_t cluster, uint64_t *value);
/* Add +1 or -1 to the refcount of every cluster in [off, off+len). */
int refcount_update(qk_image *img, uint64_t off, uint64_t len, int addend);
/* refcount_update by DELTA in one step (DECREASE: down), as QEMU's
 * update_refcount with an addend: check repairs set any refcount at once. */
int refcount_change(qk_image *img, uint64_t off, uint64_t len, uint64_t delta, int decrease);
/* Allocate the cluster at index CLUSTER if it is free: 0 done, 1 in use. */
int refcount_alloc_at(qk_image *img, uint64_t cluster);
/* Allocate N contiguous clusters (refcount 1); *offset gets the first. */
int refcount_alloc(qk_image *img, uint64_t n, uint64_t *offset);
/* Entry I of a refcount block B (img->refcount_bits wide), read / written. */
uint64_t refblock_get(const qk_image *img, const uint8_t *b, uint64_t i);
void refblock_set(const qk_image *img, uint8_t *b, uint64_t i, uint64_t v);

/* ---- cluster.c: guest -> host mapping ----------------------------------- */

enum qk_ctype {
    CT_UNALLOCATED,   /* read from backing */
    CT_ZERO,          /* reads as zeros (ZERO_PLAIN or ZERO_ALLOC) */
    CT_NORMAL,        /* data at host */
    CT_COMPRESSED,    /* compressed at host, length clen */
};

struct qk_map {
    enum qk_ctype type;
    uint64_t host;        /* host offset of the guest offset when has_host; COMPRESSED: data offset */
    int has_host;         /* NORMAL, ZERO with allocation, or an unallocated subcluster of an allocated cluster */
    uint64_t clen;        /* COMPRESSED: bytes of compressed data */
    uint64_t len;         /* bytes from the guest offset with this same status and contiguous host */
};

/* Map guest OFFSET..OFFSET+LEN of a qcow2 image: returns the status of the
 * run starting at OFFSET (at most LEN bytes, stopping at an L2 table end). */
int cluster_map(qk_image *img, uint64_t offset, uint64_t len, struct qk_map *m);

/* Validate a CT_COMPRESSED mapping's host range against the file (QEMU only
 * notices a bad descriptor when it reads it, so block status does not). */
int compressed_check(qk_image *img, struct qk_map *m);
/* Offset and 512-byte sector count of a compressed descriptor (unchecked). */
void compressed_extent(const qk_image *img, uint64_t entry, uint64_t *coff, uint64_t *nsec);

/* Where one guest cluster's L2 entry lives, and its current value. */
struct l2_slot {
    uint64_t l1_index;
    uint32_t l2_index;
    uint64_t l2_offset;   /* 0 if the L1 entry is empty */
    int l2_copied;        /* the L2 table is ours alone (COPIED in L1) */
    uint64_t entry, bitmap;
};
int l2_entry_get(qk_image *img, uint64_t guest_off, struct l2_slot *slot);
/* Point L1 entry L1_INDEX at VALUE, on disk (synchronously) and in memory. */
int l1_entry_set(qk_image *img, uint64_t l1_index, uint64_t value);
/* Make the slot's L2 table exist and be ours alone (allocate or copy it,
 * then point the L1 entry at it, in QEMU's order). */
int l2_prepare_write(qk_image *img, struct l2_slot *slot);
/* Store an entry; DATA_WRITTEN: data was written that the entry points to
 * (flush it first); REFS_ADDED: refcounts were raised (write them first). */
int l2_entry_set(qk_image *img, const struct l2_slot *slot, uint64_t entry, uint64_t bitmap,
                 int data_written, int refs_added);

/* write.c: clear the slot's entry (unallocated) and free what it held. */
int write_drop_entry(qk_image *img, const struct l2_slot *slot);

/* ---- compress.c -------------------------------------------------------- */

/* Inflate SRC (exactly SLEN bytes) into DST (exactly DLEN bytes) with the
 * image's compression type. Fails with QK_E_CORRUPT unless exactly DLEN bytes
 * come out. *DEC holds reusable decoder state (made on first use, NULL
 * before; released with compress_decoder_free). */
struct qk_decoder;
int compress_decode(struct qk_decoder **dec, int type, const uint8_t *src, size_t slen,
                    uint8_t *dst, size_t dlen);
void compress_decoder_free(struct qk_decoder *dec);

/* ---- snapshot.c -------------------------------------------------------- */

struct qk_snapshot {
    uint64_t l1_offset;
    uint32_t l1_size;
    char *id;
    char *name;
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t vm_state_size;
    uint64_t disk_size;
    int has_disk_size;
    uint64_t icount;
    int has_icount;
    uint32_t extra_size;
    uint8_t *extra;       /* kept byte for byte */
};

int snapshot_load(qk_image *img);
void snapshot_free_all(qk_image *img);

/* ---- snapshot-rw.c ------------------------------------------------------ */

/* Serialize SN as a table entry into P (padded to 8 bytes); P NULL: only
 * return the padded length. */
size_t snapshot_entry_put(const struct qk_snapshot *sn, uint8_t *p);

/* ---- resize.c ----------------------------------------------------------- */

/* Grow the active L1 table to NEW_SIZE entries (new table written and
 * flushed, header switched, old table freed). */
int resize_grow_l1(qk_image *img, uint32_t new_size);

/* ---- bitmap.c ---------------------------------------------------------- */

struct qk_bitmap {
    char *name;
    uint64_t table_offset;
    uint32_t table_size;
    uint32_t flags;
    uint8_t type;
    uint8_t gran_bits;
    uint16_t name_size;
    uint32_t extra_size;
    uint8_t *extra;
    const char *reason;   /* NULL when consistent; a static string otherwise */
    /* bitmap-rw.c */
    struct qk_dirty *dirty;  /* the bits, once loaded (consistent bitmaps only) */
    uint64_t *old_table;     /* host-endian table read at load, freed after store */
    uint32_t old_table_size;
    int on_disk;             /* has a table on disk (not added this session) */
    uint64_t dir_pos;        /* offset of its entry in the on-disk directory */
};

/* Parse the bitmap directory. Never fails the open: a directory that cannot
 * be parsed leaves every bitmap inconsistent and sets img->bitmap_dir_error. */
int bitmap_load_directory(qk_image *img);
void bitmap_free_all(qk_image *img);
/* img->bitmaps with room for N entries (grown geometrically), or NULL. */
struct qk_bitmap *bitmap_slots(qk_image *img, uint32_t n);
/* The rule a bitmap table entry breaks, or NULL. */
const char *bitmap_table_entry_problem(const qk_image *img, uint64_t e);
/* The exact number of table entries a bitmap of granularity 2^GB needs. */
uint64_t bitmap_table_size(const qk_image *img, unsigned gb);

/* ---- dirty.c: in-memory sparse dirty bitmap ----------------------------- */

struct qk_dirty;
int dirty_new(struct qk_dirty **out, uint64_t size, unsigned gran_bits, uint32_t cluster_size);
void dirty_free(struct qk_dirty *d);
uint64_t dirty_size(const struct qk_dirty *d);
unsigned dirty_gran_bits(const struct qk_dirty *d);
/* Mark every granule that [off, off+len) touches. */
int dirty_set(struct qk_dirty *d, uint64_t off, uint64_t len);
int dirty_clear_all(struct qk_dirty *d);
int dirty_get_bit(const struct qk_dirty *d, uint64_t bit);
/* The run of equal state from OFF (< size): *len bytes, *dirty 0 or 1. */
int dirty_extent(const struct qk_dirty *d, uint64_t off, uint64_t *len, int *dirty);
uint64_t dirty_count_bytes(const struct qk_dirty *d);
/* DST |= SRC, across granularities (a coarse bit is set if any finer one is). */
int dirty_merge(struct qk_dirty *dst, const struct qk_dirty *src);
/* One bitmap-data cluster CI to/from on-disk bytes. Store: *UNIFORM 0 for an
 * all-zero cluster (BUF untouched), else 1 (all ones) or -1, BUF filled.
 * Load: UNIFORM 0/1 for an all-zero/all-one cluster (BUF unused), -1 for BUF. */
void dirty_store_cluster(const struct qk_dirty *d, uint64_t ci, uint32_t cs, uint8_t *buf, int *uniform);
int dirty_load_cluster(struct qk_dirty *d, uint64_t ci, uint32_t cs, const uint8_t *buf, int uniform);

/* ---- bitmap-rw.c: bitmap life cycle ------------------------------------- */

/* Before a guest write: bitmaps in_use on disk, then mark [off, off+len)
 * dirty in every enabled bitmap. */
int bitmap_track_write(qk_image *img, uint64_t off, uint64_t len);
/* On a read-write open: drop an extension whose autoclear bit is clear. */
int bitmap_open_writable(qk_image *img);
/* On close of a read-write image: store what changed. */
int bitmap_store_all(qk_image *img);
/* Resize every bitmap (refused while one is inconsistent). */
int bitmap_resize_all(qk_image *img, uint64_t new_size);
void bitmap_release(struct qk_bitmap *b);

/* ---- check.c: consistency check and repair ------------------------------ */

/* qemu-img check on IMG with QK_CHECK_FIX_* flags (qk_check() without the
 * argument checks). */
int check_image(qk_image *img, unsigned fix, struct qk_check_result *res);
/* A read-write open found the dirty bit (lazy refcounts): repair refcounts
 * and leaks as QEMU does (FIX_ERRORS|FIX_LEAKS), so that writes are safe. */
int check_repair_dirty(qk_image *img);

/* ---- backing.c --------------------------------------------------------- */

/* Open the backing file of IMG (if any) read-only. */
int backing_open(qk_image *img);
/* Resolve NAME against the folder of BASE_PATH (malloc'd). */
char *backing_resolve(const char *base_path, const char *name);
/* 0 if NAME has a protocol prefix ("nbd:...", "json:..."), else 1. */
int path_is_plain(const char *name);

/* ---- overlap.c ---------------------------------------------------------- */

/* The metadata structure [off, off+len) would overwrite, or NULL. */
const char *overlap_find(const qk_image *img, uint64_t off, uint64_t len);
/* QK_E_CORRUPT (and the corrupt bit set) if [off, off+len) overlaps metadata. */
int overlap_check(qk_image *img, uint64_t off, uint64_t len);
/* Set the corrupt bit, refuse further writes, return QK_E_CORRUPT. */
int image_signal_corruption(qk_image *img, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- lock.c ------------------------------------------------------------- */

/* Take QEMU's lock bytes for this open mode; QK_E_LOCKED with QEMU's message
 * when another process's locks conflict. */
int lock_image(qk_image *img);

/* ---- image.c: the handle ------------------------------------------------ */

/* Open an image on an I/O backend (which the handle owns from now on, even
 * on failure). NAME resolves backing files. qk_open() = file backend + this. */
/* A table (or snapshot entry) ending at END is past the end of the file
 * when it ends a cluster or more past it: less than that reads its tail as
 * zeros, and the check counts it as inside the file. Opening for a check
 * takes everything (the check reports it). */
int image_past_eof(const qk_image *img, uint64_t end);
int image_open_io(qk_image *img, qk_io *io, const char *name, unsigned flags);
/* qk_create's qcow2 path into IO (empty; not locked, not removed on
 * failure): for tests that create through the memory or fault backends.
 * PATH only names the image (backing files given relative to it). */
int image_create_io(qk_image *img, qk_io *io, const char *path, const qk_create_opts *o);
/* Write BUF at OFF of the image file and flush (for header fields and
 * single table entries, whose order matters); WHAT names it in errors. */
int image_write_sync(qk_image *img, uint64_t off, const void *buf, size_t len, const char *what);
int image_write_be64_sync(qk_image *img, uint64_t off, uint64_t value, const char *what);
/* Rewrite the whole first cluster from img->hdr, then flush. */
int image_rewrite_header(qk_image *img);
/* Before the first allocation of a lazy-refcounts image: set the dirty bit. */
int image_mark_dirty(qk_image *img);
/* Flush everything, then clear the dirty bit that image_mark_dirty() set
 * (QEMU's qcow2_mark_clean; a dirty bit found at open was repaired then). */
int image_mark_clean(qk_image *img);

/* ---- read.c ------------------------------------------------------------- */

/* The status of one layer at [off, off+len) (len > 0, inside the layer), as
 * its driver reports it, without walking the chain: QK_BS_PRESENT when this
 * layer allocates the range. */
int layer_status(qk_image *img, uint64_t off, uint64_t len, qk_extent *e);
/* Check a block-status request: the handle is open, OFFSET inside the disk,
 * *LEN > 0 (then cut at the disk's end). */
int status_range(qk_image *img, uint64_t offset, uint64_t *len);

struct qk_image {
    char errmsg[4096];     /* fits a 1023-byte bitmap name twice plus the text */
    char *warnings;
    size_t warnings_len;

    char *filename;
    unsigned flags;
    int is_open;
    int writable;
    enum qk_format fmt;
    qk_io *io;             /* the image file */
    qk_io *data_io;        /* guest data: == io unless there is an external data file */
    uint64_t file_size;
    uint64_t size;         /* virtual size */

    /* qcow2 */
    struct qk_header hdr;
    uint32_t cluster_size;
    uint32_t cluster_bits;
    int extl2;
    uint32_t l2_entries;   /* entries per L2 table */
    uint32_t l2_entry_size;/* 8 or 16 */
    uint32_t subcluster_size;
    uint64_t *l1;          /* host-endian copy of the L1 table */
    uint32_t l1_size;
    struct qk_cache *l2_cache;
    uint64_t *reftable;    /* host-endian copy of the refcount table (read-write opens) */
    uint32_t reftable_entries;
    struct qk_cache *rb_cache;
    uint32_t refcount_bits;
    uint64_t refblock_entries;
    uint64_t free_cluster_index;
    int prealloc_checked;  /* meta_prealloc has been computed */
    int meta_prealloc;     /* block status asks the file for holes in data clusters */
    uint64_t free_byte_offset; /* where the next compressed cluster may be packed, 0 = none */
    int broken;            /* a corruption event happened: no more writes */
    uint64_t snapshots_size; /* bytes of the snapshot table */
    int lazy_dirty;        /* we set the dirty bit (lazy refcounts) and must clear it on close */
    uint8_t *cbuf;         /* one-cluster buffer for decompression */
    uint8_t *zbuf;         /* compressed input buffer (2 clusters) */
    uint64_t cbuf_host;    /* descriptor of what cbuf holds, or UINT64_MAX */
    struct qk_decoder *decoder;

    /* snapshots */
    struct qk_snapshot *snapshots;
    uint32_t nb_snapshots;

    /* bitmaps */
    struct qk_bitmap *bitmaps;
    uint32_t nb_bitmaps;
    int bitmap_dir_error;
    char bitmap_dir_reason[256];
    int bitmaps_in_use;    /* consistent bitmaps are marked in_use on disk */
    int bitmaps_changed;   /* the directory must be stored on close */
    uint64_t bitmap_dir_bytes; /* size of a directory of the current bitmaps */
    uint32_t bitmaps_cap;  /* slots allocated in img->bitmaps */
    struct qk_bitmap *removed; /* removed this session: freed after the store */
    uint32_t nb_removed;

    /* backing chain */
    qk_image *backing;
    char *backing_full;    /* resolved path of the backing file */
    char *backing_fmt_used;/* "qcow2" or "raw" */
    int backing_probed;
    int depth;             /* position in the chain, 0 = top */
    const qk_image *parent;/* the image this one is the backing file of */
    char *data_file_full;
};

#endif
