/*
 * create.c - qk_create(): new empty raw and qcow2 images, laid out exactly as
 * qemu-img 7.2 lays them out, so that the first clusters are byte-identical.
 *
 * Spec: docs/interop/qcow2.txt (header, refcounts, L1/L2); QEMU's
 * qcow2_co_create() sequence as summarised in qemu-reference.md §2.
 *
 * How a qcow2 image is made (the order QEMU uses, which fixes the layout):
 *   1. the file is created empty, then the (external data) file;
 *   2. options are validated, in QEMU's order and with its messages; on
 *      failure the files are removed again, as QEMU does;
 *   3. cluster 0 = header, cluster 1 = refcount table with one entry,
 *      cluster 2 = first refcount block; clusters 0..2 get refcount 1;
 *   4. the L1 table (size_to_l1(size) entries, exactly) is allocated first-fit
 *      after them and written as zeros;
 *   5. with data_file_raw, every L2 table is allocated in L1 order and maps
 *      guest offset = host offset (QEMU's metadata preallocation);
 *   6. the header is written last with every extension (header.c).
 *
 * Invariants:
 *  1. The allocator below replays QEMU's own (alloc_clusters_noref,
 *     update_refcount, alloc_refcount_block, qcow2_refcount_area) on an
 *     in-memory copy of the file, so that images which need more refcount
 *     blocks than the first one, or a bigger refcount table (small clusters,
 *     big disks), come out where QEMU puts them.
 *  2. Only the byte ranges QEMU writes are written (the rest stays a hole),
 *     so the host allocation ("disk size") matches too.
 *  3. No global state: everything lives in struct cr_file / struct cr_alloc.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checked.h"
#include "endian.h"
#include "internal.h"

#define CR_MAX_FIRST_BLOCK 4096   /* QEMU's MAX_BLOCKSIZE for allocate_first_block */
#define CR_SECTOR 512

/* ---- an in-memory file that remembers which ranges were written --------- */

struct cr_range {
    uint64_t off, len;
};

struct cr_file {
    uint8_t *data;
    uint64_t len, cap;
    struct cr_range *w;
    size_t nw, capw;
};

static int cr_reserve(struct cr_file *f, uint64_t end)
{
    if (end <= f->cap) {
        if (end > f->len)
            f->len = end;
        return 0;
    }
    uint64_t cap = f->cap ? f->cap : 1 << 20;
    while (cap < end)
        cap *= 2;
    uint8_t *d = realloc(f->data, cap);
    if (!d)
        return -ENOMEM;
    memset(d + f->cap, 0, cap - f->cap);
    f->data = d;
    f->cap = cap;
    f->len = end;
    return 0;
}

/* Record [OFF, OFF+LEN) as written (contents are whatever f->data holds). */
static int cr_mark(struct cr_file *f, uint64_t off, uint64_t len)
{
    if (!len)
        return 0;
    int r = cr_reserve(f, off + len);
    if (r)
        return r;
    if (f->nw == f->capw) {
        size_t cap = f->capw ? f->capw * 2 : 16;
        struct cr_range *w = realloc(f->w, cap * sizeof *w);
        if (!w)
            return -ENOMEM;
        f->w = w;
        f->capw = cap;
    }
    f->w[f->nw].off = off;
    f->w[f->nw].len = len;
    f->nw++;
    return 0;
}

static int cr_write(struct cr_file *f, uint64_t off, const void *p, uint64_t len)
{
    int r = cr_mark(f, off, len);
    if (!r && p)
        memcpy(f->data + off, p, len);
    else if (!r)
        memset(f->data + off, 0, len);
    return r;
}

static int range_cmp(const void *a, const void *b)
{
    const struct cr_range *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

/* Write every recorded range (merged) to IO. */
static int cr_flush(struct cr_file *f, qk_io *io)
{
    qsort(f->w, f->nw, sizeof *f->w, range_cmp);
    for (size_t i = 0; i < f->nw;) {
        uint64_t start = f->w[i].off, end = start + f->w[i].len;
        for (i++; i < f->nw && f->w[i].off <= end; i++)
            end = max_u64(end, f->w[i].off + f->w[i].len);
        int r = io_pwrite(io, f->data + start, (size_t)(end - start), start);
        if (r)
            return r;
    }
    return 0;
}

static void cr_file_free(struct cr_file *f)
{
    free(f->data);
    free(f->w);
}

/* ---- QEMU's refcount allocator, replayed -------------------------------- */

struct cr_alloc {
    struct cr_file *f;
    uint64_t cs;
    unsigned cbits;
    unsigned rorder;         /* refcount_bits = 1 << rorder */
    unsigned rb_bits;        /* log2(refcounts per block) */
    uint64_t *reftable;      /* host order */
    uint64_t rt_size;        /* entries */
    uint64_t rt_offset;
    uint64_t rt_max_index;
    uint64_t free_index;
};

static uint64_t rc_get(const uint8_t *blk, unsigned order, uint64_t i)
{
    switch (order) {
    case 3: return blk[i];
    case 4: return be16_load(blk + 2 * i);
    case 5: return be32_load(blk + 4 * i);
    case 6: return be64_load(blk + 8 * i);
    default: {
        unsigned bits = 1u << order, per = 8 / bits;
        return (blk[i / per] >> (bits * (i % per))) & ((1u << bits) - 1);
    }
    }
}

static void rc_set(uint8_t *blk, unsigned order, uint64_t i, uint64_t v)
{
    switch (order) {
    case 3: blk[i] = (uint8_t)v; break;
    case 4: be16_store(blk + 2 * i, (uint16_t)v); break;
    case 5: be32_store(blk + 4 * i, (uint32_t)v); break;
    case 6: be64_store(blk + 8 * i, v); break;
    default: {
        unsigned bits = 1u << order, per = 8 / bits, shift = bits * (unsigned)(i % per);
        uint8_t mask = (uint8_t)(((1u << bits) - 1) << shift);
        blk[i / per] = (uint8_t)((blk[i / per] & ~mask) | ((v << shift) & mask));
    }
    }
}

static uint64_t refcount_of(struct cr_alloc *a, uint64_t cluster)
{
    uint64_t idx = cluster >> a->rb_bits;
    if (idx >= a->rt_size || !a->reftable[idx])
        return 0;
    uint64_t blk = a->reftable[idx];
    if (blk + a->cs > a->f->len)
        return 0;
    return rc_get(a->f->data + blk, a->rorder, cluster & ((1ull << a->rb_bits) - 1));
}

static void update_max_index(struct cr_alloc *a)
{
    uint64_t i = a->rt_size - 1;
    while (i > 0 && !a->reftable[i])
        i--;
    a->rt_max_index = i;
}

/* alloc_clusters_noref: first fit from free_index. */
static uint64_t alloc_noref(struct cr_alloc *a, uint64_t size)
{
    uint64_t n = div_round_up(size, a->cs);
retry:
    for (uint64_t i = 0; i < n; i++)
        if (refcount_of(a, a->free_index++) != 0)
            goto retry;
    return (a->free_index - n) << a->cbits;
}

static int update_refcount(struct cr_alloc *a, uint64_t offset, uint64_t length, int decrease);

/* qcow2_refcount_metadata_size (refblock count only). */
static uint64_t refblocks_needed(uint64_t clusters, uint64_t cs, unsigned rorder, int generous)
{
    uint64_t per_table = cs / 8, per_block = cs * 8 >> rorder;
    uint64_t table = 0, blocks = 0, n = 0, last;
    do {
        last = n;
        blocks = div_round_up(clusters + table + blocks, per_block);
        table = div_round_up(blocks, per_table);
        n = clusters + blocks + table;
        if (n == last && generous) {
            clusters += div_round_up(table, 2);
            n = 0;
            generous = 0;
        }
    } while (n != last);
    return blocks;
}

/* qcow2_refcount_area: self-describing refblocks and a new, bigger reftable
 * at START, hooked up in one switch; the old table is freed. */
static int refcount_area(struct cr_alloc *a, uint64_t start, uint64_t rb_index, uint64_t rb_offset)
{
    uint64_t rb_size = 1ull << a->rb_bits;
    uint64_t total = refblocks_needed(start / a->cs, a->cs, a->rorder, 1);
    if (total > MAX_REFTABLE_BYTES)
        return -EFBIG;
    uint64_t area_index = (start / a->cs) / rb_size;
    uint64_t per_cluster = a->cs / 8;
    uint64_t table_size = (total + div_round_up(total, 2) + per_cluster - 1) / per_cluster * per_cluster;
    uint64_t table_clusters = table_size * 8 / a->cs;
    if (table_size > MAX_REFTABLE_BYTES)
        return -EFBIG;

    uint64_t *t = calloc(table_size, sizeof *t);
    if (!t)
        return -ENOMEM;
    uint64_t keep = table_size > a->rt_max_index ? a->rt_max_index + 1 : table_size;
    memcpy(t, a->reftable, min_u64(keep, a->rt_size) * sizeof *t);
    t[rb_index] = rb_offset;

    uint64_t extra = 0;
    for (uint64_t i = area_index; i < total; i++)
        extra += !t[i];
    uint64_t table_offset = start + extra * a->cs;
    uint64_t end = table_offset + table_clusters * a->cs;
    uint64_t block = start;
    int r = 0;

    for (uint64_t i = area_index; i < total && !r; i++) {
        if (!t[i]) {
            r = cr_write(a->f, block, NULL, a->cs);
            t[i] = block;
            block += a->cs;
        }
        uint64_t first = i * rb_size * a->cs;
        if (r || first >= end)
            continue;
        uint64_t j = first < start ? (start - first) / a->cs : 0;
        uint64_t stop = min_u64((end - first) / a->cs, rb_size);
        for (; j < stop; j++)
            rc_set(a->f->data + t[i], a->rorder, j, 1);
        r = cr_mark(a->f, t[i], a->cs);
    }
    uint8_t *raw = r ? NULL : calloc(table_size, 8);
    if (!r && !raw)
        r = -ENOMEM;
    if (!r) {
        for (uint64_t i = 0; i < total; i++)
            be64_store(raw + 8 * i, t[i]);
        r = cr_write(a->f, table_offset, raw, table_size * 8);
    }
    free(raw);
    if (r) {
        free(t);
        return r;
    }
    uint64_t old_offset = a->rt_offset, old_size = a->rt_size;
    free(a->reftable);
    a->reftable = t;
    a->rt_size = table_size;
    a->rt_offset = table_offset;
    update_max_index(a);
    return update_refcount(a, old_offset, old_size * 8, 1);
}

/* alloc_refcount_block: make sure the refblock covering CLUSTER exists.
 * Returns 0 if it already did, -EAGAIN after creating it (QEMU then restarts
 * the allocation), or an error. */
static int alloc_refcount_block(struct cr_alloc *a, uint64_t cluster)
{
    uint64_t idx = cluster >> a->rb_bits;
    int r;

    if (idx < a->rt_size && a->reftable[idx])
        return 0;
    uint64_t nb = alloc_noref(a, a->cs);
    if ((nb >> (a->cbits + a->rb_bits)) == ((cluster << a->cbits) >> (a->cbits + a->rb_bits))) {
        if ((r = cr_write(a->f, nb, NULL, a->cs)))
            return r;
        rc_set(a->f->data + nb, a->rorder, (nb >> a->cbits) & ((1ull << a->rb_bits) - 1), 1);
    } else {
        if ((r = update_refcount(a, nb, a->cs, 0)))
            return r;
        if ((r = cr_write(a->f, nb, NULL, a->cs)))
            return r;
    }
    if (idx < a->rt_size) {
        uint8_t e[8];
        be64_store(e, nb);
        if ((r = cr_write(a->f, a->rt_offset + idx * 8, e, 8)))
            return r;
        a->reftable[idx] = nb;
        if (idx > a->rt_max_index)
            a->rt_max_index = idx;
        return -EAGAIN;
    }
    uint64_t rb_size = 1ull << a->rb_bits;
    uint64_t used = div_round_up(max_u64(cluster + 1, (nb >> a->cbits) + 1), rb_size);
    r = refcount_area(a, used * rb_size * a->cs, idx, nb);
    return r ? r : -EAGAIN;
}

/* update_refcount with addend 1: +1 (or -1 when DECREASE) on every cluster of
 * [OFFSET, OFFSET+LENGTH); undone on failure, as QEMU does. */
static int update_refcount(struct cr_alloc *a, uint64_t offset, uint64_t length, int decrease)
{
    if (!length)
        return 0;
    uint64_t start = offset & ~(a->cs - 1), last = (offset + length - 1) & ~(a->cs - 1);
    uint64_t old_index = UINT64_MAX, maxv = a->rorder == 6 ? UINT64_MAX : (1ull << (1u << a->rorder)) - 1;
    uint64_t c;
    int r = 0;

    for (c = start; c <= last; c += a->cs) {
        uint64_t ci = c >> a->cbits, ti = ci >> a->rb_bits;
        if (ti != old_index) {
            r = alloc_refcount_block(a, ci);
            if (r == -EAGAIN && a->free_index > (start >> a->cbits))
                a->free_index = start >> a->cbits;
            if (r)
                break;
        }
        old_index = ti;
        uint8_t *blk = a->f->data + a->reftable[ti];
        uint64_t bi = ci & ((1ull << a->rb_bits) - 1), v = rc_get(blk, a->rorder, bi);
        if (decrease ? v == 0 : v == maxv) {
            r = -EINVAL;
            break;
        }
        v = decrease ? v - 1 : v + 1;
        if (v == 0 && ci < a->free_index)
            a->free_index = ci;
        rc_set(blk, a->rorder, bi, v);
        if ((r = cr_mark(a->f, a->reftable[ti], a->cs)))
            break;
    }
    if (r && c > offset)
        update_refcount(a, offset, c - offset, !decrease);
    return r;
}

/* qcow2_alloc_clusters */
static int64_t alloc_clusters(struct cr_alloc *a, uint64_t size)
{
    for (;;) {
        uint64_t off = alloc_noref(a, size);
        if (off > MAX_CLUSTER_OFFSET)
            return -EFBIG;
        int r = update_refcount(a, off, size, 0);
        if (r == 0)
            return (int64_t)off;
        if (r != -EAGAIN)
            return r;
    }
}

/* ---- validation (qcow2_co_create's checks, in its order) ---------------- */

#define NEED_V3 "compatibility level 1.1 and above (use version=v3 or greater)"

static int validate_qcow2(qk_image *img, const qk_create_opts *o, unsigned *cbits)
{
    uint32_t cs = o->cluster_size;
    int version = o->compat;

    if (version != 2 && version != 3)
        return qk_set_error(img, QK_E_INVALID, "Unsupported compatibility level %d", version);
    if (o->extended_l2 && version < 3)
        return qk_set_error(img, QK_E_INVALID, "Extended L2 entries are only supported with " NEED_V3);
    if (cs < (1u << MIN_CLUSTER_BITS) || cs > (1u << MAX_CLUSTER_BITS) || (cs & (cs - 1)))
        return qk_set_error(img, QK_E_INVALID,
                            "Cluster size must be a power of two between %d and %dk",
                            1 << MIN_CLUSTER_BITS, 1 << (MAX_CLUSTER_BITS - 10));
    *cbits = (unsigned)__builtin_ctz(cs);
    if (o->extended_l2 && *cbits < 14)
        return qk_set_error(img, QK_E_INVALID,
                            "Extended L2 entries are only supported with cluster sizes of at least %u bytes",
                            1u << 14);
    if (o->preallocation)
        return qk_set_error(img, QK_E_UNSUPPORTED, "Preallocation is not supported yet");
    if (o->backing_fmt && !o->backing_file)
        return qk_set_error(img, QK_E_INVALID, "Backing format cannot be used without backing file");
    if (o->lazy_refcounts && version < 3)
        return qk_set_error(img, QK_E_INVALID, "Lazy refcounts only supported with " NEED_V3);
    int rb = o->refcount_bits;
    if (rb <= 0 || rb > 64 || (rb & (rb - 1)))
        return qk_set_error(img, QK_E_INVALID,
                            "Refcount width must be a power of two and may not exceed 64 bits");
    if (version < 3 && rb != 16)
        return qk_set_error(img, QK_E_INVALID,
                            "Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)");
    if (o->data_file_raw && !o->data_file)
        return qk_set_error(img, QK_E_INVALID, "data-file-raw requires data-file");
    if (o->data_file_raw && o->backing_file)
        return qk_set_error(img, QK_E_INVALID,
                            "Backing file and data-file-raw cannot be used at the same time");
    if (o->data_file && version < 3)
        return qk_set_error(img, QK_E_INVALID, "External data files are only supported with " NEED_V3);
    if (o->compression_type != 0 && version < 3)
        return qk_set_error(img, QK_E_INVALID, "Non-zlib compression type is only supported with " NEED_V3);
    if (o->compression_type != 0 && o->compression_type != 1)
        return qk_set_error(img, QK_E_INVALID, "Unknown compression type");
    if (o->backing_file && strlen(o->backing_file) > MAX_BACKING_NAME)
        return qk_set_error(img, QK_E_INVALID,
                            "Could not assign backing file '%s' with format '%s': Invalid argument",
                            o->backing_file, o->backing_fmt ? o->backing_fmt : "(null)");
    return 0;
}

/* ---- files -------------------------------------------------------------- */

/* file-posix's truncate of a new, empty file: set the length and, as QEMU's
 * allocate_first_block() does, write zeros over the first block. */
static int grow_new_file(qk_io *io, uint64_t size)
{
    int r = io->ops->truncate(io, size);
    if (r || size == 0)
        return r;
    static const uint8_t zeros[CR_MAX_FIRST_BLOCK];
    return io_pwrite(io, zeros, size < CR_MAX_FIRST_BLOCK ? CR_SECTOR : CR_MAX_FIRST_BLOCK, 0);
}

/* QEMU's file-posix create locks before it empties anything: it takes the
 * WRITE and RESIZE permissions and refuses to share RESIZE (bytes 101, 103,
 * 203), then checks that nobody refuses write or resize (201, 203) and that
 * nobody holds resize (103). Same bytes and messages as lock.c. */
static int lock_for_create(qk_image *img, qk_io *io, const char *path)
{
    static const uint64_t take[] = { 101, 103, 203 };
    static const struct { uint64_t byte; const char *what; } test[] = {
        { 201, "\"write\" lock" }, { 203, "\"resize\" lock" }, { 103, "shared \"resize\" lock" },
    };
    int r;

    if (!io->ops->lock_byte || !io->ops->lock_test)
        return 0;
    for (size_t i = 0; i < sizeof take / sizeof take[0]; i++)
        if ((r = io->ops->lock_byte(io, take[i])) < 0)
            return qk_set_error(img, r, "Failed to lock byte %llu: %s",
                                (unsigned long long)take[i], strerror(-r));
    for (size_t i = 0; i < sizeof test / sizeof test[0]; i++) {
        r = io->ops->lock_test(io, test[i].byte);
        if (r < 0)
            return qk_set_error(img, r, "Failed to test lock byte: %s", strerror(-r));
        if (r)
            return qk_set_error(img, QK_E_LOCKED,
                                "Failed to get %s\nIs another process using the image [%s]?",
                                test[i].what, path);
    }
    return 0;
}

/* Create PATH if needed (not truncating yet), lock it like QEMU, then empty
 * it. A file another process uses is left untouched. */
static int open_new_file(qk_image *img, const char *path, qk_io **io)
{
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return qk_set_error(img, -errno, "Could not create '%s': %s", path, strerror(errno));
    close(fd);
    int r = io_posix_open(io, path, QK_IO_WRITE, 0);
    if (r)
        return qk_set_error(img, r, "Could not create '%s': %s", path, strerror(-r));
    if (!(r = lock_for_create(img, *io, path)) && (r = (*io)->ops->truncate(*io, 0)))
        r = qk_set_error(img, r, "Could not resize file: %s", strerror(-r));
    if (r) {
        io_close(*io);
        *io = NULL;
    }
    return r;
}

static int too_large(qk_image *img, const char *fmt, int hint)
{
    return qk_set_error(img, QK_E_TOO_LARGE, "The image size is too large for file format '%s'%s",
                        fmt, hint ? " (try using a larger cluster size)" : "");
}

static int create_raw(qk_image *img, const char *path, uint64_t size)
{
    qk_io *io;
    uint64_t rounded;
    int r = open_new_file(img, path, &io);
    if (r)
        return r;
    if (ck_align_up(size, CR_SECTOR, &rounded) || rounded > INT64_MAX)
        r = -EINVAL;    /* what ftruncate says to a negative off_t */
    else
        r = grow_new_file(io, rounded);
    if (!r)
        r = io->ops->flush(io);
    io_close(io);
    if (r == -EFBIG)
        return too_large(img, "raw", 0);
    if (r)
        return qk_set_error(img, r, "Could not resize file: %s", strerror(-r));
    return 0;
}

/* ---- qcow2 layout -------------------------------------------------------- */

struct cr_layout {
    struct cr_file file;
    struct cr_alloc alloc;
    struct qk_header hdr;
    uint64_t size;
};

/* Step 5 (data_file_raw): QEMU preallocates metadata: one L2 table per L1
 * entry, allocated in order, mapping every guest cluster to the same offset
 * in the data file (COPIED set; an extended L2 bitmap stays 0). */
static int map_data_file(struct cr_layout *L, unsigned l2_bits, uint64_t entry_size)
{
    struct cr_alloc *a = &L->alloc;
    uint64_t per_l2 = 1ull << l2_bits, clusters = div_round_up(L->size, a->cs);
    int r;

    for (uint64_t i = 0; i < L->hdr.l1_size; i++) {
        int64_t l2 = alloc_clusters(a, a->cs);
        if (l2 < 0)
            return (int)l2;
        if ((r = cr_write(&L->file, (uint64_t)l2, NULL, a->cs)))
            return r;
        for (uint64_t j = 0; j < per_l2 && i * per_l2 + j < clusters; j++)
            be64_store(L->file.data + l2 + j * entry_size, ((i * per_l2 + j) << a->cbits) | OFLAG_COPIED);
        be64_store(L->file.data + L->hdr.l1_offset + i * 8, (uint64_t)l2 | OFLAG_COPIED);
    }
    return 0;
}

/* Steps 3-5 of the file comment, on the in-memory copy. */
static int lay_out(struct cr_layout *L, const qk_create_opts *o, unsigned cbits)
{
    struct cr_alloc *a = &L->alloc;
    uint64_t cs = 1ull << cbits;
    int r;

    a->f = &L->file;
    a->cs = cs;
    a->cbits = cbits;
    a->rorder = (unsigned)__builtin_ctz((unsigned)o->refcount_bits);
    a->rb_bits = cbits + 3 - a->rorder;
    a->rt_size = cs / 8;
    a->rt_offset = cs;
    a->reftable = calloc(a->rt_size, sizeof *a->reftable);
    if (!a->reftable)
        return -ENOMEM;
    a->reftable[0] = 2 * cs;
    if ((r = cr_write(&L->file, 0, NULL, cs)) || (r = cr_write(&L->file, cs, NULL, 2 * cs)))
        return r;
    be64_store(L->file.data + cs, 2 * cs);
    int64_t off = alloc_clusters(a, 3 * cs);
    if (off != 0)
        return off < 0 ? (int)off : -EIO;

    unsigned l2_bits = cbits - (o->extended_l2 ? 4 : 3);
    uint64_t l1_size = div_round_up(L->size, 1ull << (cbits + l2_bits));
    if (l1_size > MAX_L1_BYTES / 8)
        return -EFBIG;
    L->hdr.l1_size = (uint32_t)l1_size;
    if (l1_size) {
        int64_t l1 = alloc_clusters(a, l1_size * 8);
        if (l1 < 0)
            return (int)l1;
        if ((r = cr_write(&L->file, (uint64_t)l1, NULL, l1_size * 8)))
            return r;
        L->hdr.l1_offset = (uint64_t)l1;
    }
    if (o->data_file_raw && (r = map_data_file(L, l2_bits, o->extended_l2 ? 16 : 8)))
        return r;
    L->hdr.reftable_offset = a->rt_offset;
    L->hdr.reftable_clusters = (uint32_t)(a->rt_size * 8 / cs);
    return 0;
}

static void fill_header(struct qk_header *h, const qk_create_opts *o, unsigned cbits, uint64_t size)
{
    h->version = (uint32_t)o->compat;
    h->cluster_bits = cbits;
    h->size = size;
    h->refcount_order = (uint32_t)__builtin_ctz((unsigned)o->refcount_bits);
    h->compression_type = (uint8_t)o->compression_type;
    if (o->lazy_refcounts)
        h->compat |= COMPAT_LAZY_REFCOUNTS;
    if (o->data_file)
        h->incompat |= INCOMPAT_DATA_FILE;
    if (o->data_file_raw)
        h->autoclear |= AUTOCLEAR_DATA_RAW;
    if (o->compression_type)
        h->incompat |= INCOMPAT_COMPRESSION;
    if (o->extended_l2)
        h->incompat |= INCOMPAT_EXTL2;
}

/* The size of a backing file, for a create without a size. */
static int backing_size(qk_image *img, const char *path, const qk_create_opts *o, uint64_t *size)
{
    qk_image *b;
    char *full = backing_resolve(path, o->backing_file);
    unsigned flags = QK_OPEN_FORCE_SHARE;
    int r;

    if (!full)
        return qk_set_error(img, -ENOMEM, "Out of memory");
    if (o->backing_fmt && !strcmp(o->backing_fmt, "raw"))
        flags |= QK_OPEN_FMT_RAW;
    else if (o->backing_fmt && !strcmp(o->backing_fmt, "qcow2"))
        flags |= QK_OPEN_FMT_QCOW2;
    r = qk_image_new(&b);
    if (!r) {
        r = qk_open(b, full, flags);
        if (r)
            qk_set_error(img, r, "%s", qk_errmsg(b));
        else
            *size = qk_size(b);
        qk_close(b);
    }
    free(full);
    return r;
}

static int write_qcow2(qk_image *img, qk_io *io, struct cr_layout *L, const qk_create_opts *o)
{
    uint8_t *hbuf = L->file.data;
    int r;

    L->hdr.backing_name = (char *)o->backing_file;
    L->hdr.backing_fmt = (char *)o->backing_fmt;
    L->hdr.data_file = (char *)o->data_file;
    r = header_serialize(&L->hdr, hbuf, (size_t)L->alloc.cs);
    L->hdr.backing_name = L->hdr.backing_fmt = L->hdr.data_file = NULL;
    if (r)
        return qk_set_error(img, r, "Could not update qcow2 header: %s",
                            "header extensions do not fit in the first cluster");
    r = cr_flush(&L->file, io);
    if (!r)
        r = io->ops->flush(io);
    if (r)
        return qk_set_error(img, r, "Could not write qcow2 image: %s", strerror(-r));
    return 0;
}

static int create_qcow2(qk_image *img, const char *path, const qk_create_opts *o)
{
    struct cr_layout L;
    qk_io *io = NULL, *dio = NULL;
    unsigned cbits = 0;
    int r;

    memset(&L, 0, sizeof L);
    L.size = o->size;
    if ((r = open_new_file(img, path, &io)))
        return r;
    if (o->data_file && (r = open_new_file(img, o->data_file, &dio)))
        goto fail;
    if ((r = validate_qcow2(img, o, &cbits)))
        goto fail;
    if (!L.size && o->backing_file && !o->no_backing_check &&
        (r = backing_size(img, path, o, &L.size)))
        goto fail;
    if (ck_align_up(L.size, CR_SECTOR, &L.size) || L.size > INT64_MAX) {
        r = qk_set_error(img, QK_E_INVALID, "Could not resize image: Image size cannot be negative");
        goto fail;
    }
    fill_header(&L.hdr, o, cbits, L.size);
    r = lay_out(&L, o, cbits);
    if (r == -EFBIG)
        r = too_large(img, "qcow2", 1);
    else if (r)
        r = qk_set_error(img, r, "Could not resize image: %s", strerror(-r));
    if (!r)
        r = write_qcow2(img, io, &L, o);
    if (!r && dio && L.size && (r = grow_new_file(dio, L.size)))
        r = qk_set_error(img, r, "Could not resize data file: %s", strerror(-r));
    if (!r && dio && (r = dio->ops->flush(dio)))
        r = qk_set_error(img, r, "Could not write data file: %s", strerror(-r));
fail:
    io_close(io);
    io_close(dio);
    if (r) {
        unlink(path);
        if (dio)
            unlink(o->data_file);
    }
    free(L.alloc.reftable);
    cr_file_free(&L.file);
    return r;
}

QK_API int qk_create(qk_image *img, const char *path, const qk_create_opts *opts)
{
    if (!img || !path || !opts)
        return QK_E_INVALID;
    img->errmsg[0] = '\0';
    if (opts->struct_version < 1)
        return qk_set_error(img, QK_E_INVALID, "qk_create_opts: unknown struct version %u",
                            opts->struct_version);
    if (opts->format == QK_FMT_RAW) {
        if (opts->backing_file)
            return qk_set_error(img, QK_E_INVALID, "Backing file not supported for file format 'raw'");
        return create_raw(img, path, opts->size);
    }
    if (opts->format != QK_FMT_QCOW2)
        return qk_set_error(img, QK_E_INVALID, "Unknown file format");
    return create_qcow2(img, path, opts);
}
