/*
 * convert.c - `qcowkit convert [-f FMT] [-O raw|qcow2] [-c] [-p] [-q] [-U] [-m N]
 * [--bitmaps [--skip-broken-bitmaps]] SRC DST`: copy the guest contents of SRC into a new sparse raw file or a
 * new qcow2 image DST (default options, optionally compressed), with the
 * output, messages and exit codes of `qemu-img convert` (7.2).
 *
 * How it goes fast:
 *  - Block status splits the disk into data and zero ranges; zero ranges
 *    (unallocated, zero clusters, holes) are never read or written.
 *  - Data ranges are read in chunks of up to 2 MiB; each chunk is checked
 *    for zeros 4 KiB at a time and only non-zero runs are written, so the
 *    output has holes wherever the source reads as zeros.
 *  - Several worker threads copy chunks out of order, each with its own
 *    qk_image handle on SRC (a handle is single-threaded); this spreads
 *    decompression over the cores. One more handle, used under the lock,
 *    hands out the chunks from block status.
 *  - A raw DST is truncated to the virtual size first, so skipped ranges are
 *    holes; a new qcow2 DST reads as zeros where nothing is written.
 *  - A qcow2 DST is one handle, opened without flushes (qemu-img's default
 *    cache=unsafe for the target), written under its own lock; with -c the
 *    workers compress clusters (qk_compress) before taking that lock.
 *
 * Invariants:
 *  1. Chunks start on extent boundaries and end on extent boundaries or
 *     2 MiB after their start, so they cover whole clusters: no compressed
 *     cluster is inflated twice.
 *  2. After the first error no new chunk is handed out; the first error's
 *     message is the one printed, and the exit status is 1.
 *  3. Like qemu-img (cache=unsafe for the target), DST is not fsync'ed.
 *  4. With a qcow2 DST, chunks are also aligned to DST's clusters and never
 *     share one, so a cluster is compressed and written once.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "imgcommon.h"
#include "util.h"

#define CONV_CHUNK (2u << 20)     /* bytes read per request */
#define CONV_SPARSE 4096u         /* zero-detection granularity (qemu-img's default -S 4k) */
#define CONV_MAX_THREADS 16

typedef struct conv {
    const char *src, *dst, *fmt;
    unsigned open_flags;
    int fd;                   /* raw DST */
    qk_image *out;            /* qcow2 DST, used under out_lock only */
    qk_image *hold;           /* raw DST: holds QEMU's locks on it */
    pthread_mutex_t out_lock;
    int compress;             /* -c: compressed clusters */
    uint64_t align;           /* chunk alignment: 1, or DST's cluster size */
    int ctype;                /* DST's compression type */
    uint64_t size;
    qk_image *scan;           /* block status, used under lock only */
    pthread_mutex_t lock;
    uint64_t cursor;          /* next guest offset to hand out */
    int failed;               /* an error has been reported */
    cli_progress progress;
    uint64_t data_total, data_done;
} conv;

typedef struct worker {
    conv *c;
    qk_image *img;
    unsigned char *buf;
    unsigned char *zbuf;      /* -c: one cluster of compressed output */
    pthread_t tid;
} worker;

static int reads_zero(const qk_extent *e)
{
    return (e->flags & QK_BS_ZERO) || !(e->flags & QK_BS_PRESENT);
}

/* Report the first error only. Call with the lock held. */
static void fail_locked(conv *c, const char *what, uint64_t off, const char *why)
{
    if (!c->failed)
        cli_error("error while %s at byte %llu: %s", what, (unsigned long long)off, why);
    c->failed = 1;
}

/* Block status failed at OFF (qemu-img's words count 512-byte sectors). */
static void fail_status_locked(conv *c, uint64_t off, int rc)
{
    if (rc >= 0)
        rc = -EIO; /* an empty extent */
    if (!c->failed) {
        cli_error("error while reading block status of sector %llu: %s", (unsigned long long)(off / 512),
                  cli_io_strerror(rc));
        cli_io_detail(c->scan, rc);
    }
    c->failed = 1;
}

static void fail(conv *c, const char *what, uint64_t off, const char *why)
{
    pthread_mutex_lock(&c->lock);
    fail_locked(c, what, off, why);
    pthread_mutex_unlock(&c->lock);
}

/*
 * Hand out the next range to copy: skip ranges that read as zeros, then take
 * data extents up to CONV_CHUNK bytes. Returns 1 with [*start, *start+*len),
 * 0 when the disk is done or an error happened.
 */
static int take_chunk(conv *c, uint64_t *start, uint64_t *len)
{
    qk_extent e;
    uint64_t pos, limit;
    int got = 0, rc = 0;

    pthread_mutex_lock(&c->lock);
    pos = c->cursor;
    while (!c->failed && pos < c->size) {
        if ((rc = qk_block_status(c->scan, pos, c->size - pos, &e)) < 0 || e.length == 0) {
            fail_status_locked(c, pos, rc);
            break;
        }
        if (!reads_zero(&e))
            break;
        pos += e.length;
    }
    if (!c->failed && pos < c->size) {
        *start = pos;
        limit = c->size - pos > CONV_CHUNK ? pos + CONV_CHUNK : c->size;
        pos = e.length < limit - pos ? pos + e.length : limit;
        while (pos < limit) {
            if ((rc = qk_block_status(c->scan, pos, limit - pos, &e)) < 0 || e.length == 0) {
                fail_status_locked(c, pos, rc);
                break;
            }
            if (reads_zero(&e))
                break;
            pos += e.length < limit - pos ? e.length : limit - pos;
        }
        if (c->align > 1) {
            /* Whole DST clusters; the cursor is aligned, so chunks never share one. */
            *start -= *start % c->align;
            if (*start < c->cursor)
                *start = c->cursor;
            if (pos % c->align)
                pos = c->size - pos > c->align - pos % c->align ? pos + c->align - pos % c->align : c->size;
        }
        *len = pos - *start;
        got = !c->failed;
    }
    c->cursor = pos;
    pthread_mutex_unlock(&c->lock);
    return got;
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
static int emit(conv *c, worker *w, const unsigned char *p, uint64_t n, uint64_t off)
{
    int rc;

    (void)w;
    if (!c->out) {
        rc = write_all(c->fd, p, (size_t)n, off);
        if (rc < 0)
            fail(c, "writing", off, strerror(-rc));
        return rc;
    }
    pthread_mutex_lock(&c->out_lock);
    rc = qk_pwrite(c->out, p, n, off);
    if (rc < 0) {
        pthread_mutex_lock(&c->lock);
        if (!c->failed) {
            fail_locked(c, "writing", off, cli_io_strerror(rc));
            cli_io_detail(c->out, rc);
        }
        pthread_mutex_unlock(&c->lock);
    }
    pthread_mutex_unlock(&c->out_lock);
    return rc;
}

/* -c: store each non-zero DST cluster of BUF compressed (plain if it does
 * not shrink below a cluster, as QEMU does). */
static int emit_compressed(conv *c, worker *w, unsigned char *buf, uint64_t off, uint64_t len)
{
    uint64_t cs = c->align;

    for (uint64_t i = 0; i < len; i += cs) {
        uint64_t n = len - i < cs ? len - i : cs;
        size_t zlen = (size_t)cs - 1;
        int rc;

        if (cli_is_zero(buf + i, n))
            continue;
        if (n < cs) /* the last cluster of the disk: compress it padded with zeros */
            memset(buf + i + n, 0, (size_t)(cs - n));
        rc = qk_compress(c->ctype, buf + i, (size_t)cs, w->zbuf, &zlen);
        pthread_mutex_lock(&c->out_lock);
        if (rc == -ENOSPC)
            rc = qk_pwrite(c->out, buf + i, n, off + i);
        else if (rc == 0)
            rc = qk_pwrite_compressed_data(c->out, w->zbuf, zlen, off + i);
        if (rc < 0) {
            pthread_mutex_lock(&c->lock);
            if (!c->failed) {
                fail_locked(c, "writing", off + i, cli_io_strerror(rc));
                cli_io_detail(c->out, rc);
            }
            pthread_mutex_unlock(&c->lock);
        }
        pthread_mutex_unlock(&c->out_lock);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Write the non-zero CONV_SPARSE blocks of BUF (guest range [off, off+len)). */
static int write_nonzero(conv *c, worker *w, const unsigned char *buf, uint64_t off, uint64_t len)
{
    uint64_t i = 0;

    while (i < len) {
        /* Blocks are aligned on guest offsets, so holes line up with the file's pages. */
        uint64_t blk = CONV_SPARSE - (off + i) % CONV_SPARSE;
        if (blk > len - i)
            blk = len - i;
        if (cli_is_zero(buf + i, blk)) {
            i += blk;
            continue;
        }
        uint64_t run = i + blk;
        while (run < len) {
            uint64_t b = len - run < CONV_SPARSE ? len - run : CONV_SPARSE;
            if (cli_is_zero(buf + run, b))
                break;
            run += b;
        }
        int rc = emit(c, w, buf + i, run - i, off + i);
        if (rc < 0)
            return rc;
        i = run;
    }
    return 0;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    conv *c = w->c;
    uint64_t start, len;

    while (take_chunk(c, &start, &len)) {
        int rc = qk_pread(w->img, w->buf, len, start);
        if (rc < 0) {
            pthread_mutex_lock(&c->lock);
            if (!c->failed) {
                fail_locked(c, "reading", start, cli_io_strerror(rc));
                cli_io_detail(w->img, rc);
            }
            pthread_mutex_unlock(&c->lock);
            break;
        }
        if (c->compress ? emit_compressed(c, w, w->buf, start, len) < 0
                        : write_nonzero(c, w, w->buf, start, len) < 0)
            break;
        if (c->progress.enabled) {
            pthread_mutex_lock(&c->lock);
            c->data_done += len;
            cli_progress_print(&c->progress, (float)(100.0 * (double)c->data_done / (double)c->data_total), 0);
            pthread_mutex_unlock(&c->lock);
        }
    }
    return NULL;
}

/* Sum of the bytes that must be copied (for the progress meter only). */
static int count_data(conv *c)
{
    qk_extent e;
    int rc;

    for (uint64_t pos = 0; pos < c->size; pos += e.length) {
        if ((rc = qk_block_status(c->scan, pos, c->size - pos, &e)) < 0 || e.length == 0) {
            pthread_mutex_lock(&c->lock);
            fail_status_locked(c, pos, rc);
            pthread_mutex_unlock(&c->lock);
            return -1;
        }
        if (!reads_zero(&e))
            c->data_total += e.length;
    }
    if (c->data_total == 0)
        c->data_total = 1;
    return 0;
}

/* One more handle on SRC for a worker; the first open already printed any
 * open-time warnings, so this one stays quiet unless it fails. */
static int open_quiet(qk_image **out, conv *c)
{
    unsigned flags = c->open_flags;
    int rc;

    *out = NULL;
    cli_format_flags(c->fmt, &flags);
    if ((rc = qk_image_new(out)) == 0 && (rc = qk_open(*out, c->src, flags)) == 0)
        return 0;
    cli_error("Could not open '%s': %s", c->src, cli_errstr(*out, rc));
    qk_close(*out);
    *out = NULL;
    return -1;
}

static int default_threads(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 4 ? 4 : (int)n;
}

/* A chunk grows by less than a DST cluster at each end when aligned, and -c
 * pads the disk's last cluster: room for CONV_CHUNK + 3 clusters. */
static size_t chunk_buf_size(const conv *c)
{
    uint64_t n = CONV_CHUNK + 3 * c->align;
    return (size_t)((n + 4095) / 4096 * 4096);
}

static int run_copy(conv *c, int nthreads)
{
    worker w[CONV_MAX_THREADS];
    int started = 0, rc = 0;

    memset(w, 0, sizeof w);
    if (nthreads > CONV_MAX_THREADS)
        nthreads = CONV_MAX_THREADS;
    /* No more workers than 2 MiB chunks. */
    if ((uint64_t)nthreads > c->size / CONV_CHUNK + 1)
        nthreads = (int)(c->size / CONV_CHUNK + 1);
    for (int i = 0; i < nthreads; i++) {
        w[i].c = c;
        int ok = open_quiet(&w[i].img, c) == 0;
        if (ok && (!(w[i].buf = aligned_alloc(4096, chunk_buf_size(c))) ||
                   (c->compress && !(w[i].zbuf = malloc(c->align))))) {
            cli_error("%s", strerror(ENOMEM));
            ok = 0;
        }
        if (!ok) {
            rc = -1;
            nthreads = i + 1;
            goto out;
        }
    }
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
    for (int i = 0; i < nthreads; i++) {
        free(w[i].buf);
        free(w[i].zbuf);
        qk_close(w[i].img);
    }
    return rc;
}

/* Create DST in FORMAT (QEMU's defaults, the source's size) through the
 * library, so that it takes QEMU's locks first (converting a file onto
 * itself, or onto an image a VM uses, fails like qemu-img's "Failed to get
 * "write" lock"), then open it for writing without flushes (qemu-img
 * convert's default cache mode is unsafe) into *OUT. */
static int create_target(conv *c, enum qk_format format, qk_image **out)
{
    qk_create_opts o = QK_CREATE_OPTS_INIT;
    qk_image *tmp = NULL;
    int rc;
    unsigned fmt_flag = format == QK_FMT_RAW ? QK_OPEN_FMT_RAW : QK_OPEN_FMT_QCOW2;

    o.format = format;
    o.size = c->size;
    if ((rc = qk_image_new(&tmp)) == 0)
        rc = qk_create(tmp, c->dst, &o);
    if (rc < 0) {
        cli_error("%s: error while converting %s: %s", c->dst, format == QK_FMT_RAW ? "raw" : "qcow2",
                  cli_errstr(tmp, rc));
        qk_close(tmp);
        return -1;
    }
    qk_close(tmp);
    if ((rc = qk_image_new(out)) == 0)
        rc = qk_open(*out, c->dst, QK_OPEN_RDWR | QK_OPEN_UNSAFE | fmt_flag);
    if (rc < 0) {
        cli_error("Could not open '%s': %s", c->dst, cli_errstr(*out, rc));
        qk_close(*out);
        *out = NULL;
        return -1;
    }
    return 0;
}

/* A raw DST, sparse, of the virtual size: a handle keeps the locks while
 * the workers write through a plain descriptor. */
static int create_raw(conv *c)
{
    if (create_target(c, QK_FMT_RAW, &c->hold) < 0)
        return -1;
    c->fd = open(c->dst, O_WRONLY | O_CLOEXEC);
    if (c->fd < 0) {
        cli_error("Could not open '%s': %s", c->dst, strerror(errno));
        return -1;
    }
    return 0;
}

static int create_qcow2(conv *c)
{
    if (create_target(c, QK_FMT_QCOW2, &c->out) < 0)
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
    qk_bitmap_info *l;
    size_t n;
    int rc = 0;
    if (qk_bitmap_list(c->scan, &l, &n) < 0) {
        cli_error("%s", qk_errmsg(c->scan));
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
            qk_bitmap_merge(c->out, l[i].name, c->scan, l[i].name) < 0) {
            cli_error("Failed to populate bitmap %s: %s", l[i].name, qk_errmsg(c->out));
            rc = -1;
        }
    }
    qk_bitmap_list_free(l, n);
    return rc;
}

static void convert_usage(FILE *f)
{
    fprintf(f, "usage: qcowkit convert [-f FMT] [-O raw|qcow2] [-c] [-p] [-q] [-U] [-m N] SRC DST\n"
               "Copy the guest contents of SRC into a new sparse raw file or qcow2 image DST.\n\n"
               "  -f FMT   format of SRC: qcow2 or raw (default: probe)\n"
               "  -O FMT   output format: raw (the default) or qcow2 (default create options)\n"
               "  -c       (qcow2) compress the clusters, with the image's compression type\n"
               "  -p       show progress\n"
               "  -q       quiet\n"
               "  -U       force share: read an image that others are writing\n"
               "  -m N     copy with at most N threads (default: CPUs, at most 4)\n"
               "  -W       accepted for qemu-img compatibility (writes are always out of order)\n"
               "  --bitmaps              (qcow2) copy the persistent bitmaps, state and contents\n"
               "  --skip-broken-bitmaps  with --bitmaps: skip inconsistent bitmaps instead of failing\n");
}

int cmd_convert(int argc, char **argv)
{
    enum { OPT_BITMAPS = 256, OPT_SKIP_BROKEN };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "force-share", no_argument, NULL, 'U' },
        { "bitmaps", no_argument, NULL, OPT_BITMAPS },
        { "skip-broken-bitmaps", no_argument, NULL, OPT_SKIP_BROKEN },
        { NULL, 0, NULL, 0 },
    };
    conv c;
    const char *out_fmt = "raw";
    int progress = 0, quiet = 0, nthreads = default_threads(), opt, rc = 1;
    int bitmaps = 0, skip_broken = 0;

    memset(&c, 0, sizeof c);
    c.fd = -1;
    c.align = 1;
    while ((opt = getopt_long(argc, argv, ":hf:O:pqUm:Wt:T:B:Cco:l:S:nr:", longopts, NULL)) != -1) {
        switch (opt) {
        case 'h': convert_usage(stdout); return 0;
        case 'f': c.fmt = optarg; break;
        case 'O': out_fmt = optarg; break;
        case 'p': progress = 1; break;
        case 'q': quiet = 1; break;
        case 'U': c.open_flags |= QK_OPEN_FORCE_SHARE; break;
        case 'W': break;
        case 'c': c.compress = 1; break;
        case 't': case 'T': break; /* cache modes: no effect here */
        case OPT_BITMAPS: bitmaps = 1; break;
        case OPT_SKIP_BROKEN: skip_broken = 1; break;
        case 'm': {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (*end || n < 1 || n > CONV_MAX_THREADS) {
                cli_error("Invalid number of coroutines. Allowed number of coroutines is between 1 and %d",
                          CONV_MAX_THREADS);
                return 1;
            }
            nthreads = (int)n;
            break;
        }
        case ':': case '?': return cli_bad_option(argv, optind, opt == ':');
        default:
            cli_error("convert: option -%c is not supported yet", opt);
            return 1;
        }
    }
    if (quiet)
        progress = 0;
    if (skip_broken && !bitmaps) {
        cli_error("Use of --skip-broken-bitmaps requires --bitmaps");
        return 1;
    }
    if (argc - optind < 2) {
        cli_error("Must specify image file name");
        return 1;
    }
    if (argc - optind > 2) {
        cli_error("convert: more than one source image is not supported yet");
        return 1;
    }
    c.src = argv[optind];
    c.dst = argv[optind + 1];
    if (strcmp(out_fmt, "raw") != 0 && strcmp(out_fmt, "qcow2") != 0) {
        cli_error("Unknown file format '%s'", out_fmt);
        return 1;
    }
    if (bitmaps && strcmp(out_fmt, "qcow2") != 0) {
        cli_error("Format driver '%s' does not support bitmaps", out_fmt);
        return 1;
    }
    if (cli_open_image(&c.scan, c.src, c.fmt, c.open_flags) < 0)
        return 1;
    c.size = qk_size(c.scan);
    if (bitmaps && bitmaps_pass(&c, skip_broken, 0) < 0) {
        qk_close(c.scan);
        return 1;
    }
    pthread_mutex_init(&c.lock, NULL);
    pthread_mutex_init(&c.out_lock, NULL);

    if (!strcmp(out_fmt, "qcow2")) {
        if (create_qcow2(&c) < 0)
            goto out;
    } else if (c.compress) {
        cli_error("Compression not supported for this file format");
        goto out;
    } else if (create_raw(&c) < 0) {
        goto out;
    }

    cli_progress_init(&c.progress, progress, 1.0f);
    cli_progress_print(&c.progress, 0, 100);
    if (progress && count_data(&c) < 0)
        goto out;
    if (run_copy(&c, nthreads) == 0 && (!bitmaps || bitmaps_pass(&c, 1, 1) == 0)) {
        rc = 0;
        cli_progress_print(&c.progress, 100, 0);
    }
    cli_progress_end(&c.progress);
out:
    if (c.fd >= 0 && close(c.fd) < 0 && rc == 0) {
        cli_error("error while closing '%s': %s", c.dst, strerror(errno));
        rc = 1;
    }
    qk_close(c.hold);
    if (c.out) {
        int r = qk_close(c.out);
        if (r < 0 && rc == 0) {
            cli_error("error while closing '%s': %s", c.dst, qk_strerror(r));
            rc = 1;
        }
    }
    qk_close(c.scan);
    pthread_mutex_destroy(&c.lock);
    pthread_mutex_destroy(&c.out_lock);
    return rc;
}
