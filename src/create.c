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
 *   5. preallocation (data_file_raw implies metadata):
 *      - metadata: QEMU's preallocate_co: per L2 table, the table and then
 *        its data clusters (with a data file: guest offset = host offset in
 *        that file), zeros over the rest of the last subcluster, and the
 *        file made to reach the end of the data;
 *      - falloc/full: refcount structures for the whole data area after the
 *        last used cluster, the data area after them (fallocated or zeroed),
 *        then the L2 tables first-fit (the first lands in the old refcount
 *        table's cluster);
 *   6. the header is written last with every extension (header.c).
 *
 * Invariants:
 *  1. The allocator below replays QEMU's own (alloc_clusters_noref,
 *     update_refcount, alloc_refcount_block, qcow2_refcount_area) on an
 *     in-memory copy of the file, so that images which need more refcount
 *     blocks than the first one, or a bigger refcount table (small clusters,
 *     big disks), come out where QEMU puts them.
 *  2. Only the byte ranges QEMU writes are written (the rest stays a hole),
 *     so the host allocation ("disk size") matches too. The in-memory copy
 *     holds only those ranges, so a preallocated data area costs no memory.
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

/* The file is a sorted list of disjoint written segments, so that the data
 * area of a preallocated image (never written here) takes no memory. */
struct cr_seg {
    uint64_t off, len;
    uint8_t *data;
};

struct cr_file {
    struct cr_seg *seg;
    size_t n, cap;
    uint64_t end;        /* end of the last written byte */
    uint64_t length;     /* final file length (>= end; set by a truncate) */
};

/* Index of the first segment ending after OFF. */
static size_t cr_find(const struct cr_file *f, uint64_t off)
{
    size_t lo = 0, hi = f->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (f->seg[mid].off + f->seg[mid].len <= off)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Memory of written bytes [OFF, OFF+LEN), or NULL if they are not all in
 * one segment. Valid until the next cr_mark/cr_write. */
static uint8_t *cr_at(const struct cr_file *f, uint64_t off, uint64_t len)
{
    size_t i = cr_find(f, off);
    if (i == f->n || f->seg[i].off > off || off + len > f->seg[i].off + f->seg[i].len)
        return NULL;
    return f->seg[i].data + (off - f->seg[i].off);
}

/* Record [OFF, OFF+LEN) as written: segments it touches or adjoins are
 * merged into one; new bytes are zero, existing bytes are kept. */
static int cr_mark(struct cr_file *f, uint64_t off, uint64_t len)
{
    if (!len)
        return 0;
    size_t i = cr_find(f, off ? off - 1 : 0), j = i;
    uint64_t lo = off, hi = off + len;
    while (j < f->n && f->seg[j].off <= hi) {
        lo = min_u64(lo, f->seg[j].off);
        hi = max_u64(hi, f->seg[j].off + f->seg[j].len);
        j++;
    }
    if (j == i + 1 && lo == f->seg[i].off && hi == f->seg[i].off + f->seg[i].len)
        return 0;   /* already written */
    uint8_t *d = calloc(1, (size_t)(hi - lo));
    if (!d)
        return -ENOMEM;
    for (size_t k = i; k < j; k++) {
        memcpy(d + (f->seg[k].off - lo), f->seg[k].data, (size_t)f->seg[k].len);
        free(f->seg[k].data);
    }
    if (i == j) {   /* a new segment at i */
        if (f->n == f->cap) {
            size_t cap = f->cap ? f->cap * 2 : 16;
            struct cr_seg *sg = realloc(f->seg, cap * sizeof *sg);
            if (!sg) {
                free(d);
                return -ENOMEM;
            }
            f->seg = sg;
            f->cap = cap;
        }
        memmove(f->seg + i + 1, f->seg + i, (f->n - i) * sizeof *f->seg);
        f->n++;
        j = i + 1;
    } else {        /* segments i..j-1 become one */
        memmove(f->seg + i + 1, f->seg + j, (f->n - j) * sizeof *f->seg);
        f->n -= j - i - 1;
    }
    f->seg[i] = (struct cr_seg){ lo, hi - lo, d };
    f->end = max_u64(f->end, hi);
    f->length = max_u64(f->length, f->end);
    return 0;
}

/* Write P (zeros if NULL) at OFF. */
static int cr_write(struct cr_file *f, uint64_t off, const void *p, uint64_t len)
{
    int r = cr_mark(f, off, len);
    if (r)
        return r;
    uint8_t *d = cr_at(f, off, len);
    if (p)
        memcpy(d, p, (size_t)len);
    else
        memset(d, 0, (size_t)len);
    return 0;
}

/* Write every segment to IO, then set the file length. */
/* Write the segments that start in [LO, HI); the final length is set when
 * HI is UINT64_MAX (the last call). */
static int cr_flush(struct cr_file *f, qk_io *io, uint64_t lo, uint64_t hi)
{
    for (size_t i = cr_find(f, lo); i < f->n && f->seg[i].off < hi; i++) {
        if (f->seg[i].off < lo)
            continue;
        int r = io_pwrite(io, f->seg[i].data, (size_t)f->seg[i].len, f->seg[i].off);
        if (r)
            return r;
    }
    return hi == UINT64_MAX && f->length > f->end ? io->ops->truncate(io, f->length) : 0;
}

static void cr_file_free(struct cr_file *f)
{
    for (size_t i = 0; i < f->n; i++)
        free(f->seg[i].data);
    free(f->seg);
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
    const uint8_t *blk = cr_at(a->f, a->reftable[idx], a->cs);
    return blk ? rc_get(blk, a->rorder, cluster & ((1ull << a->rb_bits) - 1)) : 0;
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
 * at START, covering ADDITIONAL more clusters (and half as many again unless
 * EXACT), hooked up in one switch; the old table is freed. RB_OFFSET, when
 * not 0, is a new refblock to enter at RB_INDEX. *END gets the first byte
 * after the new structures. */
static int refcount_area(struct cr_alloc *a, uint64_t start, uint64_t additional, int exact,
                         uint64_t rb_index, uint64_t rb_offset, uint64_t *end_out)
{
    uint64_t rb_size = 1ull << a->rb_bits;
    uint64_t total = refblocks_needed(start / a->cs + additional, a->cs, a->rorder, !exact);
    if (total > MAX_REFTABLE_BYTES)
        return -EFBIG;
    uint64_t area_index = (start / a->cs) / rb_size;
    uint64_t per_cluster = a->cs / 8;
    uint64_t want = exact ? total : total + div_round_up(total, 2);
    uint64_t table_size = (want + per_cluster - 1) / per_cluster * per_cluster;
    uint64_t table_clusters = table_size * 8 / a->cs;
    if (table_size > MAX_REFTABLE_BYTES)
        return -EFBIG;

    uint64_t *t = calloc(table_size, sizeof *t);
    if (!t)
        return -ENOMEM;
    uint64_t keep = table_size > a->rt_max_index ? a->rt_max_index + 1 : table_size;
    memcpy(t, a->reftable, min_u64(keep, a->rt_size) * sizeof *t);
    if (rb_offset)
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
            rc_set(cr_at(a->f, t[i], a->cs), a->rorder, j, 1);
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
    *end_out = end;
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
        rc_set(cr_at(a->f, nb, a->cs), a->rorder, (nb >> a->cbits) & ((1ull << a->rb_bits) - 1), 1);
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
    uint64_t used = div_round_up(max_u64(cluster + 1, (nb >> a->cbits) + 1), rb_size), end;
    r = refcount_area(a, used * rb_size * a->cs, 0, 0, idx, nb, &end);
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
        uint8_t *blk = cr_at(a->f, a->reftable[ti], a->cs);
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

/* qcow2_alloc_clusters_at: take as many of the NB clusters at OFF as are
 * free in a row; returns how many (0 if the first is in use). */
static int64_t alloc_clusters_at(struct cr_alloc *a, uint64_t off, uint64_t nb)
{
    uint64_t i = 0;
    int r;
    if (!nb)
        return 0;
    do {
        uint64_t ci = off >> a->cbits;
        for (i = 0; i < nb && refcount_of(a, ci + i) == 0; i++)
            ;
        r = update_refcount(a, off, i << a->cbits, 0);
    } while (r == -EAGAIN);
    return r < 0 ? r : (int64_t)i;
}

/* qcow2_get_last_cluster: the last cluster below SIZE with a refcount. */
static int64_t last_cluster(struct cr_alloc *a, uint64_t size)
{
    for (uint64_t i = div_round_up(size, a->cs); i-- > 0;)
        if (refcount_of(a, i))
            return (int64_t)i;
    return -1;
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
    if (o->preallocation < QK_PREALLOC_OFF || o->preallocation > QK_PREALLOC_FULL)
        return qk_set_error(img, QK_E_INVALID, "Invalid preallocation mode %d", o->preallocation);
    if (o->backing_file && o->preallocation != QK_PREALLOC_OFF && !o->extended_l2)
        return qk_set_error(img, QK_E_INVALID,
                            "Backing file and preallocation can only be used at the same time if extended_l2 is on");
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

/* Reserve (FALLOC: fallocate) or write zeros over (FULL) [OFF, OFF+LEN) of
 * IO; the file grows as needed, never shrinks. */
static int fill_range(qk_io *io, uint64_t off, uint64_t len, int mode)
{
    if (mode == QK_PREALLOC_FALLOC)
        return io->ops->fallocate(io, off, len);
    static const uint8_t zeros[65536];
    while (len) {
        size_t n = (size_t)min_u64(len, sizeof zeros);
        int r = io_pwrite(io, zeros, n, off);
        if (r)
            return r;
        off += n;
        len -= n;
    }
    return 0;
}

/* file-posix's truncate growing a file from CUR to SIZE bytes in MODE
 * (handle_aiocb_truncate): OFF only sets the length, except that a file
 * that was empty gets zeros over its first block (allocate_first_block);
 * FALLOC reserves the new range; FULL writes zeros over it. */
static int grow_file(qk_io *io, uint64_t cur, uint64_t size, int mode)
{
    if (size <= cur)
        return 0;
    if (mode == QK_PREALLOC_FALLOC)
        return fill_range(io, cur, size - cur, mode);
    int r = io->ops->truncate(io, size);
    if (r)
        return r;
    if (mode == QK_PREALLOC_FULL)
        return fill_range(io, cur, size - cur, mode);
    if (cur)
        return 0;
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

static int create_raw(qk_image *img, const char *path, uint64_t size, int mode)
{
    static const char *const names[] = { "off", "metadata", "falloc", "full" };
    qk_io *io;
    uint64_t rounded;
    int r = open_new_file(img, path, &io);
    if (r)
        return r;
    if (mode == QK_PREALLOC_METADATA) {
        io_close(io);
        return qk_set_error(img, QK_E_UNSUPPORTED, "Unsupported preallocation mode: %s", names[mode]);
    }
    if (ck_align_up(size, CR_SECTOR, &rounded) || rounded > INT64_MAX)
        r = -EINVAL;    /* what ftruncate says to a negative off_t */
    else
        r = grow_file(io, 0, rounded, mode);
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

#define CR_MAX_REQUEST 2147483136ull   /* BDRV_REQUEST_MAX_BYTES */
#define CR_INT_MAX 2147483647ull

struct cr_layout {
    struct cr_file file;
    struct cr_alloc alloc;
    struct qk_header hdr;
    uint64_t size;
    unsigned l2_bits;         /* log2(entries per L2 table) */
    uint64_t entry_size;      /* 8, or 16 with extended L2 */
    uint64_t subcluster;      /* bytes per subcluster */
    int mode;                 /* effective QK_PREALLOC_* */
    uint64_t fill_off, fill_len;  /* FALLOC/FULL data area of the image */
};

/* get_cluster_table: the L2 table for guest OFF, allocated (zeroed, entered
 * in L1 with COPIED) if it is not there yet. */
static int64_t get_l2(struct cr_layout *L, uint64_t off)
{
    uint64_t idx = off >> (L->alloc.cbits + L->l2_bits);
    uint64_t l1e = be64_load(cr_at(&L->file, L->hdr.l1_offset + idx * 8, 8));
    if (l1e)
        return (int64_t)(l1e & L1E_OFFSET_MASK);
    int64_t l2 = alloc_clusters(&L->alloc, L->alloc.cs);
    int r;
    if (l2 < 0)
        return l2;
    if ((r = cr_write(&L->file, (uint64_t)l2, NULL, L->alloc.cs)))
        return r;
    be64_store(cr_at(&L->file, L->hdr.l1_offset + idx * 8, 8), (uint64_t)l2 | OFLAG_COPIED);
    return l2;
}

/* Map NB guest clusters from GUEST to host clusters from HOST (COPIED; an
 * extended L2 bitmap stays 0, as QEMU leaves it for preallocation). */
static int link_l2(struct cr_layout *L, uint64_t guest, uint64_t host, uint64_t nb)
{
    int64_t l2 = get_l2(L, guest);
    if (l2 < 0)
        return (int)l2;
    uint64_t idx = (guest >> L->alloc.cbits) & ((1ull << L->l2_bits) - 1);
    for (uint64_t j = 0; j < nb; j++)
        be64_store(cr_at(&L->file, (uint64_t)l2 + (idx + j) * L->entry_size, 8),
                   (host + (j << L->alloc.cbits)) | OFLAG_COPIED);
    return 0;
}

/* qcow2_alloc_host_offset on a new image: map as much of [START,
 * START+*BYTES) as one contiguous host run allows (data in the data file at
 * the guest offset when DATA_FILE). *BYTES gets what was mapped, *HOST
 * where it starts. */
static int alloc_host_offset(struct cr_layout *L, uint64_t start, uint64_t *bytes, uint64_t *host,
                             int data_file)
{
    struct cr_alloc *a = &L->alloc;
    uint64_t remaining = *bytes, cur = 0, coff = UINT64_MAX, per_l2 = 1ull << L->l2_bits;

    *host = UINT64_MAX;
    for (;;) {
        if (*host == UINT64_MAX && coff != UINT64_MAX)
            *host = coff;
        start += cur;
        remaining -= cur;
        if (coff != UINT64_MAX)
            coff += cur;
        if (!remaining)
            break;
        cur = remaining;
        int64_t l2 = get_l2(L, start);   /* handle_copied looks the table up first */
        if (l2 < 0)
            return (int)l2;
        uint64_t idx = (start >> a->cbits) & (per_l2 - 1);
        uint64_t nb = min_u64(min_u64(div_round_up(cur, a->cs), per_l2 - idx), CR_MAX_REQUEST >> a->cbits);
        uint64_t alloc = start;
        if (!data_file && coff == UINT64_MAX) {
            int64_t o = alloc_clusters(a, nb * a->cs);
            if (o < 0)
                return (int)o;
            alloc = (uint64_t)o;
        } else if (!data_file) {
            int64_t n = alloc_clusters_at(a, coff, nb);
            if (n < 0)
                return (int)n;
            if (n == 0)
                break;      /* cannot extend the run: the caller goes on */
            nb = (uint64_t)n;
            alloc = coff;
        }
        int r = link_l2(L, start, alloc, nb);
        if (r)
            return r;
        coff = alloc;
        cur = min_u64(cur, nb * a->cs);
    }
    *bytes -= remaining;
    return 0;
}

/* preallocate_co (metadata): map the whole disk, then zero the rest of the
 * last subcluster (QEMU's copy-on-write of the tail) and make the file reach
 * the end of the mapped data. With DATA_FILE the data side is done later
 * (finish_data_file), as it concerns the other file. */
static int preallocate(struct cr_layout *L, int data_file)
{
    uint64_t off = 0, left = L->size, host = 0, cur = 0;
    uint64_t chunk = CR_INT_MAX & ~(L->alloc.cs - 1);
    int r;

    while (left) {
        cur = min_u64(left, chunk);
        if ((r = alloc_host_offset(L, off, &cur, &host, data_file)))
            return r;
        left -= cur;
        off += cur;
    }
    if (data_file || !L->size)
        return 0;
    uint64_t tail = L->size % L->subcluster;
    if (tail) {
        uint64_t last = (L->size - 1) & ~(L->alloc.cs - 1);
        int64_t l2 = get_l2(L, last);
        if (l2 < 0)
            return (int)l2;
        uint64_t idx = (last >> L->alloc.cbits) & ((1ull << L->l2_bits) - 1);
        uint64_t hc = be64_load(cr_at(&L->file, (uint64_t)l2 + idx * L->entry_size, 8)) & L2E_OFFSET_MASK;
        if ((r = cr_write(&L->file, hc + (L->size - last), NULL, L->subcluster - tail)))
            return r;
    }
    L->file.length = max_u64(L->file.length, host + cur);
    return 0;
}

/* The falloc/full branch of qcow2_co_truncate: refcount structures for the
 * whole data area after the last used cluster, the data area right after
 * them (reserved or zeroed when the file is written), then the L2 tables,
 * allocated first-fit as the mapping needs them. */
static int preallocate_data(struct cr_layout *L)
{
    struct cr_alloc *a = &L->alloc;
    int64_t last = last_cluster(a, L->file.end);
    uint64_t old = last >= 0 ? ((uint64_t)last + 1) * a->cs : L->file.end;
    uint64_t nb_data = div_round_up(L->size, a->cs), per_l2 = 1ull << L->l2_bits;
    uint64_t nb_l2 = div_round_up(nb_data, a->cs / L->entry_size) + 1, start;
    int r;

    if ((r = refcount_area(a, old, nb_data + nb_l2, 1, 0, 0, &start)))
        return r;
    int64_t got = alloc_clusters_at(a, start, nb_data);
    if (got < 0)
        return (int)got;
    if ((uint64_t)got < nb_data)
        return -ENOSPC;
    L->fill_off = L->file.end;
    L->fill_len = start + nb_data * a->cs - L->fill_off;
    L->file.length = max_u64(L->file.length, start + nb_data * a->cs);
    for (uint64_t guest = 0, host = start; nb_data;) {
        uint64_t idx = (guest >> a->cbits) & (per_l2 - 1), nb = min_u64(nb_data, per_l2 - idx);
        if ((r = link_l2(L, guest, host, nb)))
            return r;
        guest += nb * a->cs;
        host += nb * a->cs;
        nb_data -= nb;
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
    be64_store(cr_at(&L->file, cs, 8), 2 * cs);
    int64_t off = alloc_clusters(a, 3 * cs);
    if (off != 0)
        return off < 0 ? (int)off : -EIO;

    L->entry_size = o->extended_l2 ? 16 : 8;
    L->l2_bits = cbits - (o->extended_l2 ? 4 : 3);
    L->subcluster = o->extended_l2 ? cs / EXTL2_SUBCLUSTERS : cs;
    uint64_t l1_size = div_round_up(L->size, 1ull << (cbits + L->l2_bits));
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
    L->mode = o->preallocation;
    if (o->data_file_raw && L->mode == QK_PREALLOC_OFF)
        L->mode = QK_PREALLOC_METADATA;   /* data-file-raw needs the 1:1 mapping */
    if (L->mode == QK_PREALLOC_METADATA || (o->data_file && L->mode != QK_PREALLOC_OFF))
        r = preallocate(L, o->data_file != NULL);
    else if (L->mode != QK_PREALLOC_OFF)
        r = preallocate_data(L);
    if (r)
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

/* Step 6: serialize the header into cluster 0, write everything, then
 * reserve or zero the data area of a falloc/full image. */
static int write_qcow2(qk_image *img, qk_io *io, struct cr_layout *L,
                       const qk_create_opts *o)
{
    uint8_t *hbuf = cr_at(&L->file, 0, L->alloc.cs);
    int r;

    L->hdr.backing_name = (char *)o->backing_file;
    L->hdr.backing_fmt = (char *)o->backing_fmt;
    L->hdr.data_file = (char *)o->data_file;
    r = header_serialize(&L->hdr, hbuf, (size_t)L->alloc.cs);
    L->hdr.backing_name = L->hdr.backing_fmt = L->hdr.data_file = NULL;
    if (r)
        return qk_set_error(img, r, "Could not update qcow2 header: %s",
                            "header extensions do not fit in the first cluster");
    /* QEMU's order: what precedes the data area, the data area, then the
     * refcount structures after it (the file system lays out the blocks,
     * and so the allocated size, the same way). */
    r = cr_flush(&L->file, io, 0, L->fill_len ? L->fill_off : UINT64_MAX);
    if (!r && L->fill_len) {
        r = fill_range(io, L->fill_off, L->fill_len, L->mode);
        if (!r)
            r = cr_flush(&L->file, io, L->fill_off, UINT64_MAX);
    }
    if (!r)
        r = io->ops->flush(io);
    if (r)
        return qk_set_error(img, r, "Could not write qcow2 image: %s", strerror(-r));
    return 0;
}

/* The external data file: QEMU truncates it to the disk size (OFF), or,
 * having mapped it 1:1, writes zeros over the rest of the last subcluster
 * and then grows it to the disk size in the preallocation mode. */
static int finish_data_file(qk_io *dio, const struct cr_layout *L)
{
    uint64_t cur = 0;
    int r;

    if (L->mode != QK_PREALLOC_OFF && L->size % L->subcluster) {
        cur = L->size - L->size % L->subcluster + L->subcluster;
        if ((r = fill_range(dio, L->size, cur - L->size, QK_PREALLOC_FULL)))
            return r;
    }
    r = grow_file(dio, cur, L->size, L->mode == QK_PREALLOC_METADATA ? QK_PREALLOC_OFF : L->mode);
    return r ? r : dio->ops->flush(dio);
}

/* Steps 1-6 into IO (empty, locked), and DIO for an external data file.
 * PATH names the image for backing files given relative to it. */
static int create_qcow2_on(qk_image *img, qk_io *io, qk_io *dio, const char *path, const qk_create_opts *o)
{
    struct cr_layout L;
    unsigned cbits = 0;
    int r;

    memset(&L, 0, sizeof L);
    L.size = o->size;
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
    if (!r && dio && (r = finish_data_file(dio, &L)))
        r = qk_set_error(img, r, "Could not resize data file: %s", strerror(-r));
fail:
    free(L.alloc.reftable);
    cr_file_free(&L.file);
    return r;
}

static int create_qcow2(qk_image *img, const char *path, const qk_create_opts *o)
{
    qk_io *io = NULL, *dio = NULL;
    int r;

    if ((r = open_new_file(img, path, &io)))
        return r;
    if (!o->data_file || !(r = open_new_file(img, o->data_file, &dio)))
        r = create_qcow2_on(img, io, dio, path, o);
    io_close(io);
    io_close(dio);
    if (r) {
        unlink(path);
        if (dio)
            unlink(o->data_file);
    }
    return r;
}

int image_create_io(qk_image *img, qk_io *io, const char *path, const qk_create_opts *o)
{
    img->errmsg[0] = '\0';
    if (o->struct_version < 1 || o->format != QK_FMT_QCOW2 || o->data_file)
        return qk_set_error(img, QK_E_INVALID, "image_create_io: a qcow2 image without a data file only");
    return create_qcow2_on(img, io, NULL, path, o);
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
        if (opts->preallocation < QK_PREALLOC_OFF || opts->preallocation > QK_PREALLOC_FULL)
            return qk_set_error(img, QK_E_INVALID, "Invalid preallocation mode %d", opts->preallocation);
        return create_raw(img, path, opts->size, opts->preallocation);
    }
    if (opts->format != QK_FMT_QCOW2)
        return qk_set_error(img, QK_E_INVALID, "Unknown file format");
    return create_qcow2(img, path, opts);
}
