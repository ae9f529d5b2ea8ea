/*
 * commit.c - `qcowkit commit [-q] [-f FMT] [-t CACHE] [-b BASE] [-r RATE] [-d]
 * [-p] IMG`: write the data of IMG and of the layers between it and BASE
 * (default: IMG's backing file) into BASE, as qemu-img 7.2's commit (an
 * active commit block job, then bdrv_make_empty of the top) does.
 *
 * Invariants (each matched against qemu-img on twin chains):
 *  1. The ranges written into BASE are the chunks of the mirror job's
 *     granularity (BASE's cluster size clamped to 4 KiB..64 KiB, 64 KiB for
 *     raw) that a layer above BASE allocates; each chunk is copied, or
 *     written as zeros (may unmap) / discarded when the whole chain reads it
 *     as zeros / unallocated and the run is aligned to BASE's clusters, as
 *     mirror_iteration decides. The writes go through qk_pwrite & co, so
 *     BASE's enabled bitmaps are dirtied over exactly those chunks.
 *  2. Nothing but BASE and (without -d) IMG changes: headers keep their
 *     backing names; -b implies -d (the layers in between would no longer
 *     read correctly otherwise), as in qemu-img.
 *  3. IMG is emptied only after BASE holds the data and was flushed.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chain.h"
#include "cli.h"
#include "imgcommon.h"
#include "util.h"

#define MIRROR_MAX_IO (1u << 20)   /* mirror's max_io_bytes with the default 16 MiB buffer */

struct commit {
    qk_image *top, *base;
    uint64_t size;
    uint64_t gran;       /* mirror chunk */
    uint64_t base_cs;    /* base cluster size; 0 for raw (every range is aligned) */
    uint8_t *buf;
    cli_progress progress;
    uint64_t total;      /* dirty bytes, for the progress meter */
    cli_ratelimit rate;  /* -r: counts the bytes copied (not zeroed or discarded), as mirror does */
};

static void print_help(void)
{
    printf("usage: qcowkit commit [-q] [-f FMT] [-t CACHE] [-b BASE] [-r RATE_LIMIT] [-d] [-p] FILENAME\n\n"
           "Write the changes in FILENAME (and in the images between it and BASE) into\n"
           "BASE, by default FILENAME's backing file, then empty FILENAME.\n\n"
           "  -f FMT    format of FILENAME (qcow2 or raw)\n"
           "  -t CACHE  cache mode (none, writeback, unsafe, directsync, writethrough)\n"
           "  -b BASE   commit into BASE, an image of FILENAME's backing chain (implies -d)\n"
           "  -r RATE   copy at most RATE bytes per second (suffixes K, M, G...)\n"
           "  -d        do not empty FILENAME afterwards\n"
           "  -p        show progress\n"
           "  -q        quiet\n");
}

/* Is [off, off+len) allocated above base, chunk by chunk? Calls FN on every
 * run of dirty chunks. */
static int for_each_dirty_run(struct commit *c, int (*fn)(struct commit *, uint64_t, uint64_t))
{
    uint64_t off = 0, run_start = 0, run_end = 0;
    int have = 0, r;
    while (off < c->size) {
        uint64_t n;
        int a = qk_is_allocated_above(c->top, c->base, off, c->size - off, &n);
        if (a < 0) {
            cli_error("%s", qk_errmsg(c->top));
            return -1;
        }
        if (a) {
            uint64_t s = off / c->gran * c->gran;
            uint64_t e = (off + n + c->gran - 1) / c->gran * c->gran;
            if (e > c->size)
                e = c->size;
            if (have && s <= run_end) {
                if (e > run_end)
                    run_end = e;
            } else {
                if (have && (r = fn(c, run_start, run_end - run_start)) < 0)
                    return r;
                run_start = s;
                run_end = e;
                have = 1;
            }
        }
        off += n;
    }
    return have ? fn(c, run_start, run_end - run_start) : 0;
}

static int count_run(struct commit *c, uint64_t off, uint64_t len)
{
    (void)off;
    c->total += len;
    return 0;
}

static int write_error(struct commit *c, int r)
{
    cli_error("%s", cli_errstr(c->base, r));
    return -1;
}

/* mirror_iteration over one run of dirty chunks. */
static int copy_run(struct commit *c, uint64_t off, uint64_t len)
{
    uint64_t end = off + len;
    while (off < end) {
        qk_extent e;
        int r = qk_block_status(c->top, off, end - off, &e);
        if (r < 0) {
            cli_error("%s", qk_errmsg(c->top));
            return -1;
        }
        uint64_t io = e.length;
        int data = (e.flags & QK_BS_DATA) != 0;
        if (data && io > MIRROR_MAX_IO)
            io = MIRROR_MAX_IO;
        io -= io % c->gran;
        enum { COPY, ZERO, DISCARD } method = COPY;
        if (io < c->gran) {
            io = c->gran;
        } else if (!data && (!c->base_cs || (off % c->base_cs == 0 && io % c->base_cs == 0))) {
            method = (e.flags & QK_BS_ZERO) ? ZERO : DISCARD;
        }
        if (io > end - off)
            io = end - off;
        if (method == ZERO) {
            r = qk_pwrite_zeroes(c->base, io, off, QK_ZERO_MAY_UNMAP);
        } else if (method == DISCARD) {
            r = qk_discard(c->base, io, off);
        } else {
            for (uint64_t done = 0; done < io && r == 0;) {
                uint64_t n = io - done > MIRROR_MAX_IO ? MIRROR_MAX_IO : io - done;
                struct timespec due;
                if (cli_ratelimit_take(&c->rate, n, &due))
                    cli_sleep_until(&due);
                if ((r = qk_pread(c->top, c->buf, n, off + done)) < 0) {
                    cli_error("%s", cli_errstr(c->top, r));
                    return -1;
                }
                r = qk_pwrite(c->base, c->buf, n, off + done);
                done += n;
            }
        }
        if (r < 0)
            return write_error(c, r);
        if (c->total)
            cli_progress_print(&c->progress, (float)io / (float)c->total * 100, 100);
        off += io;
    }
    return 0;
}

static uint64_t mirror_granularity(qk_image *base, uint64_t *base_cs)
{
    qk_info *info;
    int raw = 1;
    if (qk_get_info(base, &info) == 0) {
        raw = info->format == QK_FMT_RAW;
        qk_info_free(info);
    }
    /* bdrv_get_default_bitmap_granularity: raw has no cluster size. */
    if (raw) {
        *base_cs = 0;
        return 65536;
    }
    uint64_t cs = qk_cluster_size(base);
    *base_cs = cs;
    return cs < 4096 ? 4096 : cs > 65536 ? 65536 : cs;
}

static int run_commit(qk_image *top, const char *path, const char *base_name, int drop, int progress,
                      uint64_t rate)
{
    struct commit c = { .top = top, .size = qk_size(top) };
    cli_ratelimit_init(&c.rate, rate);
    if (base_name) {
        if (!(c.base = cli_find_backing(top, base_name))) {
            cli_error("Did not find '%s' in the backing chain of '%s'", base_name, path);
            return 1;
        }
    } else if (!(c.base = qk_backing(top))) {
        cli_error("Image does not have a backing file");
        return 1;
    }
    if (qk_reopen_rw(c.base) < 0) {
        cli_error("%s", qk_errmsg(c.base));
        return 1;
    }
    c.gran = mirror_granularity(c.base, &c.base_cs);
    /* The commit job grows a smaller base to the top's size first. */
    if (c.size > qk_size(c.base) && qk_resize(c.base, c.size, 0) < 0) {
        cli_error("Top image %s is larger than base image %s, and resize of base image failed: %s",
                  path, qk_filename(c.base), qk_errmsg(c.base));
        return 1;
    }
    if (!(c.buf = malloc(MIRROR_MAX_IO))) {
        cli_error("Out of memory");
        return 1;
    }
    cli_progress_init(&c.progress, progress, 1.0f);
    cli_progress_print(&c.progress, 0, 100);
    int rc = 0;
    if (for_each_dirty_run(&c, count_run) < 0 || for_each_dirty_run(&c, copy_run) < 0)
        rc = 1;
    free(c.buf);
    if (rc == 0 && qk_flush(c.base) < 0) {
        cli_error("%s", qk_errmsg(c.base));
        rc = 1;
    }
    if (rc == 0 && !drop && qk_make_empty(top) < 0) {
        cli_error("Failed to empty %s: %s", path, qk_errmsg(top));
        rc = 1;
    }
    cli_progress_print(&c.progress, 100, 0);
    cli_progress_end(&c.progress);
    return rc;
}

int cmd_commit(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL, *base = NULL;
    unsigned flags = QK_OPEN_RDWR;
    int quiet = 0, drop = 0, progress = 0, c;
    int64_t rate = 0;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":hf:t:b:r:dpq", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            print_help();
            return 0;
        case 'f':
            fmt = optarg;
            break;
        case 't':
            if (cli_parse_cache(optarg, &flags, "cache") < 0)
                return 1;
            break;
        case 'b':
            base = optarg;
            drop = 1;   /* -b implies -d, as in qemu-img */
            break;
        case 'r':
            if ((rate = cli_cvtnum("rate limit", optarg)) < 0)
                return 1;
            break;
        case 'd':
            drop = 1;
            break;
        case 'p':
            progress = 1;
            break;
        case 'q':
            quiet = 1;
            break;
        default:
            return cli_bad_option(argv, optind, c == ':');
        }
    }
    if (quiet)
        progress = 0;
    if (optind != argc - 1)
        return cli_usage_error("Expecting one image file name");
    const char *path = argv[optind];
    qk_image *top;
    if (cli_open_image(&top, path, fmt, flags) < 0)
        return 1;
    int rc = run_commit(top, path, base, drop, progress, (uint64_t)rate);
    if (qk_close(top) < 0 && rc == 0) {
        cli_error("Could not close '%s'", path);
        rc = 1;
    }
    if (rc == 0 && !quiet)
        printf("Image committed.\n");
    return rc;
}
