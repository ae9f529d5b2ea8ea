/*
 * convert.c - `qcowkit convert [-f FMT] [-O raw|qcow2] [-o OPTIONS] [-B BACKING [-F FMT]] [-n]
 * [--target-is-zero] [-c] [-S N] [-C] [-t CACHE] [-T CACHE] [-r RATE] [-m N] [-W] [-p] [-q] [-U]
 * [--salvage] [--bitmaps [--skip-broken-bitmaps]] SRC... DST`: copy the guest contents of one or
 * more SRC images (concatenated) into DST, a new (or with -n an existing) raw file or qcow2 image,
 * with the options, output, messages and exit codes of `qemu-img convert` (7.2).
 *
 * The sources form one guest address space, SRC 1 first. It is cut into ranges of three kinds:
 *  - DATA: read, then checked for zeros in blocks of the -S size (4 KiB by default) aligned on
 *    guest offsets; non-zero runs are written, zero runs are treated as ZERO (-S 0: all written);
 *  - ZERO: ranges that read as zeros (unallocated, zero clusters, holes of a raw file found by
 *    SEEK_DATA/SEEK_HOLE in the library); never read; skipped when DST is known to read as
 *    zeros (new and without a backing file, or --target-is-zero), otherwise written as zeros
 *    (qcow2: zero clusters; raw: punched holes, or allocated zeros with -S 0);
 *  - BACKING (DST has a backing file, -B or -o backing_file): qemu-img's rule is that DST's
 *    backing file is SRC's backing file, so only SRC's own top layer is copied: ranges that SRC
 *    takes from its backing chain are left unallocated in DST. A range unallocated in SRC past
 *    the end of SRC's backing file (or of a SRC without one) is ZERO instead.
 *
 * Threads: several workers copy chunks (up to 2 MiB of DATA, or one ZERO range), each with its
 * own handles on the sources (a handle is single-threaded), so reading, decompression and -c
 * compression run on every core. A scan handle per source, used under the lock, hands out the
 * chunks in guest order with a sequence number.
 *
 * Invariants:
 *  1. Chunks start and end on extent boundaries, or 2 MiB after their start, so they cover
 *     whole source clusters: no compressed cluster is inflated twice.
 *  2. With a qcow2 DST every chunk starts on a DST cluster boundary and ends on one (or at the
 *     end of the disk): a cluster is compressed and written once, by one worker. A ZERO range
 *     that does not cover a whole DST cluster is copied as DATA.
 *  3. Without -W a qcow2 DST is written in guest order: a worker waits for the previous chunk's
 *     writes before it writes (it reads and compresses before that), so DST's clusters are laid
 *     out as qemu-img lays them out. A raw DST is always written out of order: a raw file has
 *     no layout beyond the guest offsets, so the order is not observable.
 *  4. After the first error no new chunk is handed out; the first error's message is the one
 *     printed, and the exit status is 1.
 *  5. Cache modes (-t): unsafe (the default) never flushes DST; writeback and writethrough
 *     flush it once at the end (qcow2: the library also orders its metadata writes); none and
 *     directsync also write a raw DST with O_DIRECT where the request is 4 KiB aligned.
 *     -T (source cache) is checked and has no effect: sources are read through the page cache.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "imgcommon.h"
#include "util.h"

#define CONV_CHUNK (2u << 20)       /* bytes read per request */
#define CONV_SPARSE 4096u           /* qemu-img's default -S */
#define CONV_MAX_SPARSE (16u << 20) /* qemu-img's largest -S */
#define CONV_MAX_THREADS 16
#define CONV_DIRECT_ALIGN 4096u     /* O_DIRECT requests must be aligned on this */

enum range_kind { R_DATA, R_ZERO, R_BACKING };

typedef struct conv_src {
    const char *path;
    qk_image *scan;           /* block status, used under the lock only */
    uint64_t start, size;     /* place in the concatenated guest space */
    uint64_t backing_size;    /* DST has a backing file: size of SRC's own backing file (0: none) */
    int raw;                  /* SRC is a raw file (-C copies it with copy_file_range) */
} conv_src;

typedef struct conv {
    conv_src *srcs;
    int nsrc;
    const char *dst, *fmt;
    unsigned open_flags;
    int fd, dfd;              /* raw DST: buffered and (cache none/directsync) O_DIRECT descriptors */
    qk_image *out;            /* qcow2 DST, used under out_lock only */
    qk_image *hold;           /* raw DST: holds QEMU's locks on it */
    pthread_mutex_t out_lock;
    int compress;             /* -c: compressed clusters */
    int ctype;                /* DST's compression type */
    uint64_t align;           /* chunk alignment: 1, or DST's cluster size */
    uint64_t sparse;          /* -S in bytes; 0 = write everything */
    int zero_init;            /* DST reads as zeros where nothing is written */
    int target_has_backing;
    int in_order;             /* no -W, qcow2 DST: write chunks in sequence */
    int copy_offload;         /* -C */
    int salvage;
    int flush_at_end;         /* cache mode other than unsafe */
    uint64_t rate_limit;      /* -r, bytes per second; 0 = no limit */
    uint64_t size;            /* of all sources */
    pthread_mutex_t lock;     /* the fields below, and the scan handles */
    pthread_cond_t turn_cv;
    uint64_t cursor;          /* next guest offset to hand out */
    uint64_t next_seq, turn;  /* sequence of the next chunk; chunk allowed to write */
    int failed;               /* an error has been reported */
    cli_ratelimit rate;       /* -r */
    cli_progress progress;
    uint64_t data_total, data_done;
} conv;

typedef struct chunk {
    uint64_t start, len, seq;
    enum range_kind kind;
} chunk;

typedef struct worker {
    conv *c;
    qk_image **img;           /* one handle per source */
    int *srcfd;               /* -C: descriptors of raw sources, opened on first use (-1) */
    unsigned char *buf;
    unsigned char *zbuf;      /* -c: the chunk's clusters, compressed */
    size_t *zlen;             /* -c: compressed size of each cluster; 0 = zero, -1 = stored plain */
    pthread_t tid;
} worker;

static int reads_zero(const qk_extent *e)
{
    return (e->flags & QK_BS_ZERO) || !(e->flags & QK_BS_PRESENT);
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/* Report the first error only. Call with the lock held. */
static void fail_locked(conv *c, const char *what, uint64_t off, const char *why)
{
    if (!c->failed)
        cli_error("error while %s at byte %llu: %s", what, (unsigned long long)off, why);
    c->failed = 1;
    pthread_cond_broadcast(&c->turn_cv);
}

static void fail(conv *c, const char *what, uint64_t off, const char *why)
{
    pthread_mutex_lock(&c->lock);
    fail_locked(c, what, off, why);
    pthread_mutex_unlock(&c->lock);
}

/* A library call on IMG failed with RC while WHAT at OFF (QEMU's block layer says ENOTSUP where
 * the library says QK_E_UNSUPPORTED, e.g. compressed writes with an external data file). */
static void fail_img(conv *c, qk_image *img, const char *what, uint64_t off, int rc)
{
    pthread_mutex_lock(&c->lock);
    if (!c->failed) {
        fail_locked(c, what, off, rc == QK_E_UNSUPPORTED ? strerror(ENOTSUP) : cli_io_strerror(rc));
        cli_io_detail(img, rc);
    }
    pthread_mutex_unlock(&c->lock);
}

static conv_src *source_of(conv *c, uint64_t pos)
{
    int i = 0;
    while (i + 1 < c->nsrc && pos >= c->srcs[i + 1].start)
        i++;
    return &c->srcs[i];
}

/*
 * The kind of the range at guest offset POS and its length (within one source). Returns 0, or
 * -1 after reporting a block status error. Call with the lock held.
 */
static int range_at(conv *c, uint64_t pos, enum range_kind *kind, uint64_t *len)
{
    conv_src *s = source_of(c, pos);
    uint64_t local = pos - s->start;
    qk_extent e;
    int rc = qk_block_status(s->scan, local, s->size - local, &e);

    if (rc < 0 || e.length == 0) {
        if (rc >= 0)
            rc = -EIO; /* an empty extent */
        if (c->salvage) {
            fprintf(stderr, "qcowkit: warning: error while reading block status at offset %llu: %s\n",
                    (unsigned long long)local, cli_io_strerror(rc));
            *kind = R_DATA;
            *len = min_u64(512, s->size - local);
            return 0;
        }
        if (!c->failed) {
            cli_error("error while reading block status of sector %llu: %s", (unsigned long long)(local / 512),
                      cli_io_strerror(rc));
            cli_io_detail(s->scan, rc);
        }
        c->failed = 1;
        pthread_cond_broadcast(&c->turn_cv);
        return -1;
    }
    *len = min_u64(e.length, s->size - local);
    if (c->target_has_backing && (!(e.flags & QK_BS_PRESENT) || e.depth > 0)) {
        if (local < s->backing_size) {
            *kind = R_BACKING;
            *len = min_u64(*len, s->backing_size - local);
        } else {
            *kind = R_ZERO;
        }
    } else {
        *kind = reads_zero(&e) ? R_ZERO : R_DATA;
    }
    return 0;
}

/* Round POS up to the DST alignment, at most to the end of the disk. */
static uint64_t align_up(const conv *c, uint64_t pos)
{
    if (c->align <= 1 || pos % c->align == 0)
        return pos;
    return min_u64(c->size, pos + c->align - pos % c->align);
}

/*
 * Hand out the next chunk (invariants 1, 2): skip ranges that need no write, then take one
 * ZERO range or DATA extents up to CONV_CHUNK bytes. Returns 1 with *CH, 0 when the disk is
 * done or an error happened.
 */
static int take_chunk(conv *c, chunk *ch)
{
    enum range_kind kind = R_DATA;
    uint64_t pos, n = 0, limit;
    int got = 0;

    pthread_mutex_lock(&c->lock);
    pos = c->cursor;
    while (!c->failed && pos < c->size) {
        if (range_at(c, pos, &kind, &n) < 0)
            break;
        if (kind == R_DATA || (kind == R_ZERO && !c->zero_init))
            break;
        pos += n;
    }
    if (c->failed || pos >= c->size) {
        c->cursor = pos;
        pthread_mutex_unlock(&c->lock);
        return 0;
    }
    /* The cursor is aligned (invariant 2), so this never goes below it. */
    ch->start = pos - (c->align > 1 ? pos % c->align : 0);
    if (kind == R_ZERO) {
        uint64_t end = pos + n;
        if (c->align > 1 && end < c->size)
            end -= end % c->align;
        if (ch->start == pos && end > pos) {
            ch->kind = R_ZERO;
            pos = end;
            goto done;
        }
        kind = R_DATA; /* part of a DST cluster: copy it */
    }
    ch->kind = R_DATA;
    limit = min_u64(c->size, ch->start + CONV_CHUNK);
    pos = min_u64(pos + n, limit);
    while (pos < limit) {
        if (range_at(c, pos, &kind, &n) < 0)
            break;
        if (kind != R_DATA)
            break;
        pos = min_u64(pos + n, limit);
    }
    pos = align_up(c, pos);
done:
    ch->len = pos - ch->start;
    ch->seq = c->next_seq++;
    got = !c->failed;
    c->cursor = pos;
    pthread_mutex_unlock(&c->lock);
    return got;
}

/* Invariant 3: wait until chunk SEQ may write. Returns -1 if the copy failed meanwhile. */
static int wait_turn(conv *c, uint64_t seq)
{
    int rc;
    if (!c->in_order)
        return 0;
    pthread_mutex_lock(&c->lock);
    while (c->turn != seq && !c->failed)
        pthread_cond_wait(&c->turn_cv, &c->lock);
    rc = c->failed ? -1 : 0;
    pthread_mutex_unlock(&c->lock);
    return rc;
}

static void end_turn(conv *c)
{
    if (!c->in_order)
        return;
    pthread_mutex_lock(&c->lock);
    c->turn++;
    pthread_cond_broadcast(&c->turn_cv);
    pthread_mutex_unlock(&c->lock);
}

/* -r: sleep until N more bytes may be written. */
static void throttle(conv *c, uint64_t n)
{
    struct timespec due;
    pthread_mutex_lock(&c->lock);
    int limited = cli_ratelimit_take(&c->rate, n, &due);
    pthread_mutex_unlock(&c->lock);
    if (limited)
        cli_sleep_until(&due);
}

static int write_all(int fd, const unsigned char *p, size_t n, uint64_t off)
{
    while (n > 0) {
        ssize_t w = pwrite(fd, p, n, (off_t)off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        n -= (size_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

/* Write one run of data to DST. */
static int emit(conv *c, const unsigned char *p, uint64_t n, uint64_t off)
{
    int rc;

    throttle(c, n);
    if (!c->out) {
        int fd = c->dfd >= 0 && ((uintptr_t)p | off | n) % CONV_DIRECT_ALIGN == 0 ? c->dfd : c->fd;
        rc = write_all(fd, p, (size_t)n, off);
        if (rc < 0)
            fail(c, "writing", off, strerror(-rc));
        return rc;
    }
    pthread_mutex_lock(&c->out_lock);
    rc = qk_pwrite(c->out, p, n, off);
    pthread_mutex_unlock(&c->out_lock);
    if (rc < 0)
        fail_img(c, c->out, "writing", off, rc);
    return rc;
}

/* Make [off, off+n) of a raw DST read as zeros: a hole (or allocated zeros with -S 0). */
static int raw_zero(conv *c, uint64_t off, uint64_t n)
{
    static const unsigned char z[65536];
    int mode = c->sparse ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE : FALLOC_FL_ZERO_RANGE;

    if (fallocate(c->fd, mode, (off_t)off, (off_t)n) == 0)
        return 0;
    if (errno != EOPNOTSUPP && errno != ENOSYS && errno != EINVAL)
        return -errno;
    for (uint64_t i = 0; i < n; i += sizeof z) {
        int rc = write_all(c->fd, z, (size_t)min_u64(sizeof z, n - i), off + i);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Make [off, off+n) of DST read as zeros (ZERO ranges when DST may hold data there). */
static int emit_zero(conv *c, uint64_t off, uint64_t n)
{
    int rc;

    if (c->zero_init)
        return 0;
    if (!c->out) {
        rc = raw_zero(c, off, n);
        if (rc < 0)
            fail(c, "writing", off, strerror(-rc));
        return rc;
    }
    pthread_mutex_lock(&c->out_lock);
    rc = qk_pwrite_zeroes(c->out, n, off, c->sparse ? QK_ZERO_MAY_UNMAP : 0);
    pthread_mutex_unlock(&c->out_lock);
    if (rc < 0)
        fail_img(c, c->out, "writing", off, rc);
    return rc;
}

/* -c, before the chunk's turn: compress each DST cluster of BUF into w->zbuf (invariant 2). */
static int compress_chunk(conv *c, worker *w, unsigned char *buf, uint64_t off, uint64_t len)
{
    uint64_t cs = c->align;

    for (uint64_t i = 0, k = 0; i < len; i += cs, k++) {
        uint64_t n = min_u64(len - i, cs);
        size_t zlen = (size_t)cs - 1;
        int rc;

        w->zlen[k] = 0;
        if (c->sparse && cli_is_zero(buf + i, n))
            continue;
        if (n < cs) /* the last cluster of the disk: compress it padded with zeros */
            memset(buf + i + n, 0, (size_t)(cs - n));
        rc = qk_compress(c->ctype, buf + i, (size_t)cs, w->zbuf + i, &zlen);
        if (rc == -ENOSPC) {
            w->zlen[k] = (size_t)-1;
        } else if (rc < 0) {
            fail(c, "compressing", off + i, cli_io_strerror(rc));
            return rc;
        } else {
            w->zlen[k] = zlen;
        }
    }
    return 0;
}

/* -c, in the chunk's turn: write what compress_chunk made (plain when it did not shrink, as
 * QEMU does; zero clusters as zeros). */
static int write_compressed(conv *c, worker *w, const unsigned char *buf, uint64_t off, uint64_t len)
{
    uint64_t cs = c->align;

    for (uint64_t i = 0, k = 0; i < len; i += cs, k++) {
        uint64_t n = min_u64(len - i, cs);
        int rc;

        if (w->zlen[k] == 0) {
            if ((rc = emit_zero(c, off + i, n)) < 0)
                return rc;
            continue;
        }
        if (w->zlen[k] == (size_t)-1) {
            if ((rc = emit(c, buf + i, n, off + i)) < 0)
                return rc;
            continue;
        }
        throttle(c, w->zlen[k]);
        pthread_mutex_lock(&c->out_lock);
        rc = qk_pwrite_compressed_data(c->out, w->zbuf + i, w->zlen[k], off + i);
        pthread_mutex_unlock(&c->out_lock);
        if (rc < 0) {
            fail_img(c, c->out, "writing", off + i, rc);
            return rc;
        }
    }
    return 0;
}

/* Write BUF (guest range [off, off+len)): runs of non-zero -S blocks as data, zero blocks as
 * ZERO; everything as data with -S 0. */
static int write_sparse(conv *c, const unsigned char *buf, uint64_t off, uint64_t len)
{
    uint64_t i = 0, g = c->sparse;

    if (!g)
        return emit(c, buf, len, off);
    while (i < len) {
        /* Blocks are aligned on guest offsets, so holes line up with the file's pages. */
        int zero = -1;
        uint64_t run = i;
        while (run < len) {
            uint64_t b = min_u64(g - (off + run) % g, len - run);
            int z = cli_is_zero(buf + run, b);
            if (zero >= 0 && z != zero)
                break;
            zero = z;
            run += b;
        }
        int rc = zero ? emit_zero(c, off + i, run - i) : emit(c, buf + i, run - i, off + i);
        if (rc < 0)
            return rc;
        i = run;
    }
    return 0;
}

/* --salvage: read [off, off+len) of source S 512 bytes at a time; what cannot be read becomes
 * zeros, with a warning. */
static void salvage_read(qk_image *img, unsigned char *buf, uint64_t len, uint64_t off)
{
    for (uint64_t i = 0; i < len; i += 512) {
        uint64_t n = min_u64(512, len - i);
        int rc = qk_pread(img, buf + i, n, off + i);
        if (rc < 0) {
            fprintf(stderr, "qcowkit: warning: error while reading offset %llu: %s\n",
                    (unsigned long long)(off + i), cli_io_strerror(rc));
            memset(buf + i, 0, (size_t)n);
        }
    }
}

/* Read the guest range [pos, pos+len) of the concatenated sources into BUF. */
static int read_range(conv *c, worker *w, unsigned char *buf, uint64_t len, uint64_t pos)
{
    while (len > 0) {
        conv_src *s = source_of(c, pos);
        int si = (int)(s - c->srcs);
        uint64_t n = min_u64(len, s->start + s->size - pos);
        int rc = qk_pread(w->img[si], buf, n, pos - s->start);
        if (rc < 0 && c->salvage) {
            salvage_read(w->img[si], buf, n, pos - s->start);
        } else if (rc < 0) {
            fail_img(c, w->img[si], "reading", pos, rc);
            return rc;
        }
        buf += n;
        pos += n;
        len -= n;
    }
    return 0;
}

/* -C: copy a DATA chunk that lies in one raw source into a raw DST with copy_file_range().
 * Returns 1 when done, 0 when the chunk must be copied the ordinary way, or < 0 on error. */
static int copy_offloaded(conv *c, worker *w, const chunk *ch)
{
    conv_src *s = source_of(c, ch->start);
    int si = (int)(s - c->srcs);
    loff_t in = (loff_t)(ch->start - s->start), out = (loff_t)ch->start;
    uint64_t left = ch->len;

    if (!c->copy_offload || c->out || !s->raw || ch->start + ch->len > s->start + s->size)
        return 0;
    if (w->srcfd[si] < 0 && (w->srcfd[si] = open(s->path, O_RDONLY | O_CLOEXEC)) < 0)
        return 0;
    throttle(c, ch->len);
    while (left > 0) {
        ssize_t n = copy_file_range(w->srcfd[si], &in, c->fd, &out, (size_t)left, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            /* Not supported here (or the file shrank): the rest goes the ordinary way. */
            if (n == 0 || errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)
                return 0;
            fail(c, "writing", (uint64_t)out, strerror(errno));
            return -errno;
        }
        left -= (uint64_t)n;
    }
    return 1;
}

static int copy_chunk(conv *c, worker *w, const chunk *ch)
{
    int rc;

    if (ch->kind == R_ZERO) {
        if (wait_turn(c, ch->seq) < 0)
            return -1;
        rc = emit_zero(c, ch->start, ch->len);
        end_turn(c);
        return rc;
    }
    if ((rc = copy_offloaded(c, w, ch)) != 0)
        return rc < 0 ? rc : 0;
    if ((rc = read_range(c, w, w->buf, ch->len, ch->start)) < 0)
        return rc;
    if (c->compress && (rc = compress_chunk(c, w, w->buf, ch->start, ch->len)) < 0)
        return rc;
    if (wait_turn(c, ch->seq) < 0)
        return -1;
    rc = c->compress ? write_compressed(c, w, w->buf, ch->start, ch->len)
                     : write_sparse(c, w->buf, ch->start, ch->len);
    end_turn(c);
    return rc;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    conv *c = w->c;
    chunk ch;

    while (take_chunk(c, &ch)) {
        if (copy_chunk(c, w, &ch) < 0)
            break;
        if (c->progress.enabled && ch.kind == R_DATA) {
            pthread_mutex_lock(&c->lock);
            c->data_done = min_u64(c->data_total, c->data_done + ch.len);
            cli_progress_print(&c->progress, (float)(100.0 * (double)c->data_done / (double)c->data_total), 0);
            pthread_mutex_unlock(&c->lock);
        }
    }
    return NULL;
}

/* Sum of the bytes that must be copied (for the progress meter only). */
static int count_data(conv *c)
{
    enum range_kind kind;
    uint64_t n;
    int rc = 0;

    pthread_mutex_lock(&c->lock);
    for (uint64_t pos = 0; pos < c->size; pos += n) {
        if ((rc = range_at(c, pos, &kind, &n)) < 0)
            break;
        if (kind == R_DATA)
            c->data_total += n;
    }
    pthread_mutex_unlock(&c->lock);
    if (c->data_total == 0)
        c->data_total = 1;
    return rc;
}

/* One more handle on source S for a worker; the first open already printed any open-time
 * warnings, so this one stays quiet unless it fails. */
static int open_quiet(qk_image **out, conv *c, const conv_src *s)
{
    unsigned flags = c->open_flags;
    int rc;

    *out = NULL;
    cli_format_flags(c->fmt, &flags);
    if ((rc = qk_image_new(out)) == 0 && (rc = qk_open(*out, s->path, flags)) == 0)
        return 0;
    cli_error("Could not open '%s': %s", s->path, cli_errstr(*out, rc));
    qk_close(*out);
    *out = NULL;
    return -1;
}

/* 4 workers, or one per CPU up to 8: besides the CPUs, the workers keep reads going while one
 * of them writes in its turn (2 workers on 2 CPUs convoy behind each other's writes). */
static int default_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n <= 4 ? 4 : n > 8 ? 8 : (int)n;
}

/* A chunk grows by less than a DST cluster at each end when aligned, and -c pads the disk's
 * last cluster: room for CONV_CHUNK + 3 clusters. */
static size_t chunk_buf_size(const conv *c)
{
    uint64_t n = CONV_CHUNK + 3 * c->align;
    return (size_t)((n + 4095) / 4096 * 4096);
}

static int worker_init(worker *w, conv *c)
{
    size_t bs = chunk_buf_size(c);

    w->c = c;
    if (!(w->img = calloc((size_t)c->nsrc, sizeof *w->img)) || !(w->srcfd = malloc((size_t)c->nsrc * sizeof(int))))
        goto nomem;
    for (int i = 0; i < c->nsrc; i++)
        w->srcfd[i] = -1;
    for (int i = 0; i < c->nsrc; i++)
        if (open_quiet(&w->img[i], c, &c->srcs[i]) < 0)
            return -1;
    if (!(w->buf = aligned_alloc(4096, bs)))
        goto nomem;
    if (c->compress && (!(w->zbuf = malloc(bs)) || !(w->zlen = calloc(bs / 512, sizeof *w->zlen))))
        goto nomem;
    return 0;
nomem:
    cli_error("%s", strerror(ENOMEM));
    return -1;
}

static void worker_free(worker *w, int nsrc)
{
    free(w->buf);
    free(w->zbuf);
    free(w->zlen);
    for (int i = 0; w->img && i < nsrc; i++)
        qk_close(w->img[i]);
    for (int i = 0; w->srcfd && i < nsrc; i++)
        if (w->srcfd[i] >= 0)
            close(w->srcfd[i]);
    free(w->img);
    free(w->srcfd);
}

static int run_copy(conv *c, int nthreads)
{
    worker w[CONV_MAX_THREADS];
    int started = 0, rc = 0;

    memset(w, 0, sizeof w);
    /* No more workers than 2 MiB chunks. */
    if ((uint64_t)nthreads > c->size / CONV_CHUNK + 1)
        nthreads = (int)(c->size / CONV_CHUNK + 1);
    for (int i = 0; i < nthreads; i++) {
        if (worker_init(&w[i], c) < 0) {
            rc = -1;
            nthreads = i + 1;
            goto out;
        }
    }
    cli_ratelimit_init(&c->rate, c->rate_limit);
    for (int i = 1; i < nthreads; i++) {
        if (pthread_create(&w[i].tid, NULL, worker_main, &w[i]) != 0)
            break;
        started = i;
    }
    worker_main(&w[0]);
    for (int i = 1; i <= started; i++)
        pthread_join(w[i].tid, NULL);
    rc = c->failed ? -1 : 0;
out:
    for (int i = 0; i < nthreads; i++)
        worker_free(&w[i], c->nsrc);
    return rc;
}

/* Open DST (created, or existing with -n) for writing into *OUT; without flushes in the
 * default cache mode (unsafe). Opening takes QEMU's locks, so converting a file onto itself,
 * or onto an image a VM uses, fails like qemu-img's "Failed to get "write" lock"; a qcow2 DST
 * opens its backing chain, which must exist. */
static int open_target(conv *c, enum qk_format format, qk_image **out)
{
    unsigned flags = QK_OPEN_RDWR | (format == QK_FMT_RAW ? QK_OPEN_FMT_RAW : QK_OPEN_FMT_QCOW2);
    int rc;

    if (!c->flush_at_end)
        flags |= QK_OPEN_UNSAFE;
    if ((rc = qk_image_new(out)) == 0)
        rc = qk_open(*out, c->dst, flags);
    if (rc < 0) {
        cli_error("Could not open '%s': %s", c->dst, cli_errstr(*out, rc));
        qk_close(*out);
        *out = NULL;
        return -1;
    }
    return 0;
}

/* A raw DST: a handle keeps the locks while the workers write through plain descriptors. */
static int open_raw(conv *c, int direct)
{
    if (open_target(c, QK_FMT_RAW, &c->hold) < 0)
        return -1;
    c->fd = open(c->dst, O_WRONLY | O_CLOEXEC);
    if (c->fd >= 0 && direct)
        c->dfd = open(c->dst, O_WRONLY | O_CLOEXEC | O_DIRECT);
    if (c->fd < 0 || (direct && c->dfd < 0)) {
        cli_error("Could not open '%s': %s", c->dst, strerror(errno));
        return -1;
    }
    return 0;
}

static int open_qcow2(conv *c)
{
    if (open_target(c, QK_FMT_QCOW2, &c->out) < 0)
        return -1;
    c->align = qk_cluster_size(c->out);
    c->ctype = qk_compression_type(c->out);
    return 0;
}

/* --bitmaps, in two passes over SRC's bitmaps as QEMU makes them: before the
 * copy (COPY 0) an inconsistent bitmap refuses the conversion unless
 * SKIP_BROKEN; after it (COPY 1) every consistent bitmap is recreated in DST
 * with its granularity, state and contents, and inconsistent ones are
 * skipped with a warning. */
static int bitmaps_pass(conv *c, int skip_broken, int copy)
{
    qk_image *src = c->srcs[0].scan;
    qk_bitmap_info *l;
    size_t n;
    int rc = 0;
    if (qk_bitmap_list(src, &l, &n) < 0) {
        cli_error("%s", qk_errmsg(src));
        return -1;
    }
    for (size_t i = 0; i < n && !rc; i++) {
        if (!l[i].consistent) {
            if (copy) {
                fprintf(stderr, "qcowkit: warning: Skipping inconsistent bitmap '%s'\n", l[i].name);
            } else if (!skip_broken) {
                cli_error("Cannot copy inconsistent bitmap '%s'", l[i].name);
                fprintf(stderr, "Try --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it\n");
                rc = -1;
            }
            continue;
        }
        if (!copy)
            continue;
        unsigned flags = (l[i].flags & QK_BITMAP_AUTO) ? 0 : QK_BITMAP_ADD_DISABLED;
        if (qk_bitmap_add(c->out, l[i].name, l[i].granularity, flags) < 0 ||
            qk_bitmap_merge(c->out, l[i].name, src, l[i].name) < 0) {
            cli_error("Failed to populate bitmap %s: %s", l[i].name, qk_errmsg(c->out));
            rc = -1;
        }
    }
    qk_bitmap_list_free(l, n);
    return rc;
}

static void convert_usage(FILE *f)
{
    fprintf(f, "usage: qcowkit convert [-f FMT] [-O raw|qcow2] [-o OPTIONS] [-B BACKING [-F FMT]] [-n]\n"
               "         [--target-is-zero] [-c] [-S N] [-C] [-t CACHE] [-T CACHE] [-r RATE] [-m N] [-W]\n"
               "         [-p] [-q] [-U] [--salvage] [--bitmaps [--skip-broken-bitmaps]] SRC... DST\n"
               "Copy the guest contents of SRC (several are concatenated) into DST.\n\n"
               "  -f FMT   format of the sources: qcow2 or raw (default: probe)\n"
               "  -O FMT   output format: raw (the default) or qcow2\n"
               "  -o OPTS  create options of DST, as for create (-o help lists them)\n"
               "  -B FILE  DST gets backing file FILE (SRC's backing file, seen from DST): only the\n"
               "           ranges SRC's top layer holds are copied\n"
               "  -F FMT   format of the backing file (required with -B)\n"
               "  -n       DST exists: do not create it (zero ranges are written as zeros)\n"
               "  --target-is-zero  with -n: DST reads as zeros, zero ranges need no write\n"
               "  -c       (qcow2) compress the clusters, with the image's compression type\n"
               "  -S N     sparse granularity: zero runs of N bytes (multiple of 512, default 4k)\n"
               "           stay holes; 0 writes everything\n"
               "  -C       copy offloading (copy_file_range from raw sources into a raw DST)\n"
               "  -t CACHE cache mode of DST: none, writeback, writethrough, directsync, unsafe\n"
               "           (default unsafe: no flush)\n"
               "  -T CACHE cache mode of the sources (checked; reads use the page cache)\n"
               "  -r RATE  write at most RATE bytes per second (suffixes k, M, G, ...)\n"
               "  -m N     copy with at most N threads (1-16; default: 4, or the CPUs up to 8)\n"
               "  -W       write a qcow2 DST out of order (raw DSTs always are)\n"
               "  -p       show progress\n"
               "  -q       quiet\n"
               "  -U       force share: read an image that others are writing\n"
               "  --salvage  read errors become zeros (with a warning) instead of failing\n"
               "  --bitmaps              (qcow2) copy the persistent bitmaps, state and contents\n"
               "  --skip-broken-bitmaps  with --bitmaps: skip inconsistent bitmaps instead of failing\n");
}

/* bdrv_parse_cache_mode(): *FLUSH is 0 for unsafe, *DIRECT 1 for none/directsync. */
static int parse_cache(const char *mode, int *flush, int *direct)
{
    *flush = 1;
    *direct = !strcmp(mode, "none") || !strcmp(mode, "off") || !strcmp(mode, "directsync");
    if (!strcmp(mode, "unsafe"))
        *flush = 0;
    else if (!*direct && strcmp(mode, "writeback") && strcmp(mode, "writethrough"))
        return -1;
    return 0;
}

/* The command line, as qemu-img parses it. */
typedef struct conv_args {
    const char *out_fmt, *options_help_fmt;
    char *options;            /* joined -o lists */
    const char *base, *base_fmt, *cache, *src_cache, *snapshot;
    int progress, quiet, nthreads, bitmaps, skip_broken, skip_create, target_is_zero;
    int sparse_given;
} conv_args;

static int parse_args(conv *c, conv_args *a, int argc, char **argv)
{
    enum { OPT_BITMAPS = 256, OPT_SKIP_BROKEN, OPT_SALVAGE, OPT_TARGET_IS_ZERO };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "force-share", no_argument, NULL, 'U' },
        { "bitmaps", no_argument, NULL, OPT_BITMAPS },
        { "skip-broken-bitmaps", no_argument, NULL, OPT_SKIP_BROKEN },
        { "salvage", no_argument, NULL, OPT_SALVAGE },
        { "target-is-zero", no_argument, NULL, OPT_TARGET_IS_ZERO },
        { NULL, 0, NULL, 0 },
    };
    int opt;
    int64_t v;

    while ((opt = getopt_long(argc, argv, ":hf:O:B:Cco:l:S:pt:T:qnm:WUr:F:", longopts, NULL)) != -1) {
        switch (opt) {
        case 'h': convert_usage(stdout); return 0;
        case 'f': c->fmt = optarg; break;
        case 'O': a->out_fmt = optarg; break;
        case 'B': a->base = optarg; break;
        case 'F': a->base_fmt = optarg; break;
        case 'C': c->copy_offload = 1; break;
        case 'c': c->compress = 1; break;
        case 'o':
            if (cli_add_options(&a->options, optarg) < 0)
                return 1;
            break;
        case 'l': a->snapshot = optarg; break;
        case 'S':
            if ((v = cli_cvtnum("buffer size for sparse output", optarg)) < 0)
                return 1;
            if (v % 512 || v > CONV_MAX_SPARSE) {
                cli_error("Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 "
                          "up to %u. Select 0 to disable sparse detection (fully allocates output).",
                          CONV_MAX_SPARSE);
                return 1;
            }
            c->sparse = (uint64_t)v;
            a->sparse_given = 1;
            break;
        case 'p': a->progress = 1; break;
        case 't': a->cache = optarg; break;
        case 'T': a->src_cache = optarg; break;
        case 'q': a->quiet = 1; break;
        case 'n': a->skip_create = 1; break;
        case 'm': {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (*end || n < 1 || n > CONV_MAX_THREADS) {
                cli_error("Invalid number of coroutines. Allowed number of coroutines is between 1 and %d",
                          CONV_MAX_THREADS);
                return 1;
            }
            a->nthreads = (int)n;
            break;
        }
        case 'W': c->in_order = 0; break;
        case 'U': c->open_flags |= QK_OPEN_FORCE_SHARE; break;
        case 'r':
            if ((v = cli_cvtnum("rate limit", optarg)) < 0)
                return 1;
            c->rate_limit = (uint64_t)v;
            break;
        case OPT_BITMAPS: a->bitmaps = 1; break;
        case OPT_SKIP_BROKEN: a->skip_broken = 1; break;
        case OPT_SALVAGE: c->salvage = 1; break;
        case OPT_TARGET_IS_ZERO: a->target_is_zero = 1; break;
        case ':': case '?': return cli_bad_option(argv, optind, opt == ':');
        }
    }
    return -1; /* go on */
}

/* qemu-img's checks of option combinations, in its order. */
static int check_args(const conv *c, const conv_args *a)
{
    const char *msg = NULL;

    if (a->skip_broken && !a->bitmaps)
        msg = "Use of --skip-broken-bitmaps requires --bitmaps";
    else if (c->compress && c->copy_offload)
        msg = "Cannot enable copy offloading when -c is used";
    else if (a->sparse_given && c->copy_offload)
        msg = "Cannot enable copy offloading when -S is used";
    else if (c->copy_offload && c->salvage)
        msg = "Cannot use copy offloading in salvaging mode";
    else if (a->skip_create && a->options)
        msg = "-o has no effect when skipping image creation";
    else if (a->target_is_zero && !a->skip_create)
        msg = "--target-is-zero requires use of -n flag";
    if (msg)
        cli_error("%s", msg);
    return msg ? -1 : 0;
}

/* Open the sources (their scan handles) and lay them out one after the other. */
static int open_sources(conv *c, char **paths)
{
    if (!(c->srcs = calloc((size_t)c->nsrc, sizeof *c->srcs))) {
        cli_error("%s", strerror(ENOMEM));
        return -1;
    }
    for (int i = 0; i < c->nsrc; i++) {
        conv_src *s = &c->srcs[i];
        qk_info *info = NULL;
        s->path = paths[i];
        if (cli_open_image(&s->scan, s->path, c->fmt, c->open_flags) < 0)
            return -1;
        s->start = c->size;
        s->size = qk_size(s->scan);
        c->size += s->size;
        if (qk_get_info(s->scan, &info) == 0)
            s->raw = info->format == QK_FMT_RAW;
        qk_info_free(info);
    }
    return 0;
}

/* DST has a backing file: learn the size of each source's own backing file (qemu-img copies
 * what the source's top layer holds, and zeros past its backing file's end). */
static int backing_sizes(conv *c)
{
    for (int i = 0; i < c->nsrc; i++) {
        conv_src *s = &c->srcs[i];
        qk_info *info = NULL;
        qk_image *b = NULL;
        int rc = qk_get_info(s->scan, &info);
        if (rc == 0 && info->full_backing_file) {
            unsigned flags = QK_OPEN_FORCE_SHARE | QK_OPEN_NO_BACKING;
            if (cli_format_flags(info->backing_format, &flags) == 0 && qk_image_new(&b) == 0 &&
                qk_open(b, info->full_backing_file, flags) == 0)
                s->backing_size = qk_size(b);
            else
                rc = -1;
            qk_close(b);
        }
        if (rc < 0)
            cli_error("Could not open the backing file of '%s'", s->path);
        qk_info_free(info);
        if (rc < 0)
            return -1;
    }
    return 0;
}

/* Create DST (unless -n) and open it. */
static int setup_target(conv *c, conv_args *a, int direct)
{
    enum qk_format f = strcmp(a->out_fmt, "qcow2") ? QK_FMT_RAW : QK_FMT_QCOW2;
    char *backing = NULL;

    if (!a->skip_create) {
        if (cli_convert_create(c->dst, a->out_fmt, a->options, a->base, a->base_fmt, c->size, c->nsrc,
                               c->compress, &backing) < 0)
            return -1;
        c->target_has_backing = backing != NULL;
        free(backing);
    } else {
        c->target_has_backing = a->base != NULL;
    }
    if (a->skip_create && c->target_has_backing && c->nsrc > 1) {
        cli_error("Having a backing file for the target makes no sense when concatenating multiple input images");
        return -1;
    }
    if (a->bitmaps && c->nsrc > 1) {
        cli_error("Copying bitmaps only possible with single source");
        return -1;
    }
    if (f == QK_FMT_RAW ? open_raw(c, direct) < 0 : open_qcow2(c) < 0)
        return -1;
    if (a->bitmaps && f == QK_FMT_RAW) {
        cli_error("Format driver '%s' does not support bitmaps", a->out_fmt);
        return -1;
    }
    if (c->compress && f == QK_FMT_RAW) {
        cli_error("Compression not supported for this file format");
        return -1;
    }
    if (a->skip_create && qk_size(c->out ? c->out : c->hold) < c->size) {
        cli_error("output file is smaller than input file");
        return -1;
    }
    if (a->target_is_zero && c->target_has_backing) {
        /* qemu-img 7.2 prints this and exits 0 without copying anything. */
        cli_error("Cannot use --target-is-zero when the destination image has a backing file");
        return -1;
    }
    c->zero_init = a->target_is_zero || (!a->skip_create && c->sparse && !c->target_has_backing);
    if (f == QK_FMT_RAW)
        c->in_order = 0;
    return 0;
}

/* Flush DST (cache modes other than unsafe) and close everything; RC is the status so far. */
static int finish(conv *c, int rc)
{
    if (c->fd >= 0 && rc == 0 && c->flush_at_end && fdatasync(c->fd) < 0) {
        cli_error("error while flushing '%s': %s", c->dst, strerror(errno));
        rc = 1;
    }
    if (c->fd >= 0 && close(c->fd) < 0 && rc == 0) {
        cli_error("error while closing '%s': %s", c->dst, strerror(errno));
        rc = 1;
    }
    if (c->dfd >= 0)
        close(c->dfd);
    qk_close(c->hold);
    if (c->out) {
        int r = qk_close(c->out);
        if (r < 0 && rc == 0) {
            cli_error("error while closing '%s': %s", c->dst, qk_strerror(r));
            rc = 1;
        }
    }
    for (int i = 0; c->srcs && i < c->nsrc; i++)
        qk_close(c->srcs[i].scan);
    free(c->srcs);
    return rc;
}

int cmd_convert(int argc, char **argv)
{
    conv c;
    conv_args a;
    int rc = 1, direct = 0, dummy;

    memset(&c, 0, sizeof c);
    memset(&a, 0, sizeof a);
    c.fd = c.dfd = -1;
    c.align = 1;
    c.in_order = 1;
    c.sparse = CONV_SPARSE;
    a.out_fmt = "raw";
    a.nthreads = default_threads();
    pthread_mutex_init(&c.lock, NULL);
    pthread_mutex_init(&c.out_lock, NULL);
    pthread_cond_init(&c.turn_cv, NULL);

    if ((rc = parse_args(&c, &a, argc, argv)) >= 0 || (rc = 1, check_args(&c, &a) < 0))
        goto out;
    c.nsrc = argc - optind - 1;
    if (a.options && cli_has_help_option(a.options)) {
        if (strcmp(a.out_fmt, "qcow2") && strcmp(a.out_fmt, "raw")) {
            cli_error("Unknown file format '%s'", a.out_fmt);
        } else {
            cli_print_option_help(a.out_fmt, c.nsrc >= 1 ? argv[argc - 1] : NULL);
            rc = 0;
        }
        goto out;
    }
    if (c.nsrc < 1) {
        cli_error("Must specify image file name");
        goto out;
    }
    c.dst = argv[argc - 1];
    if (a.src_cache && parse_cache(a.src_cache, &dummy, &dummy) < 0) {
        cli_error("Invalid source cache option: %s", a.src_cache);
        goto out;
    }
    if (a.quiet)
        a.progress = 0;
    if (open_sources(&c, argv + optind) < 0)
        goto out;
    if (a.snapshot) {
        cli_error("convert: option -l is not supported yet");
        goto out;
    }
    if (strcmp(a.out_fmt, "raw") != 0 && strcmp(a.out_fmt, "qcow2") != 0) {
        cli_error("Unknown file format '%s'", a.out_fmt);
        goto out;
    }
    if (a.bitmaps && c.nsrc == 1 && bitmaps_pass(&c, a.skip_broken, 0) < 0)
        goto out;
    if (a.cache && parse_cache(a.cache, &c.flush_at_end, &direct) < 0) {
        /* qemu-img creates DST before it looks at -t. */
        char *backing = NULL;
        if (a.skip_create || cli_convert_create(c.dst, a.out_fmt, a.options, a.base, a.base_fmt, c.size, c.nsrc,
                                                c.compress, &backing) == 0)
            cli_error("Invalid cache option: %s", a.cache);
        free(backing);
        goto out;
    }
    if (setup_target(&c, &a, direct) < 0 || (c.target_has_backing && backing_sizes(&c) < 0))
        goto out;

    cli_progress_init(&c.progress, a.progress, 1.0f);
    cli_progress_print(&c.progress, 0, 100);
    if (a.progress && count_data(&c) < 0)
        goto out;
    if (run_copy(&c, a.nthreads) == 0 && (!a.bitmaps || bitmaps_pass(&c, 1, 1) == 0)) {
        rc = 0;
        cli_progress_print(&c.progress, 100, 0);
    }
    cli_progress_end(&c.progress);
out:
    rc = finish(&c, rc);
    free(a.options);
    pthread_mutex_destroy(&c.lock);
    pthread_mutex_destroy(&c.out_lock);
    pthread_cond_destroy(&c.turn_cv);
    return rc;
}
