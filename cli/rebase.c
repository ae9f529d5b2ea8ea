/*
 * rebase.c - `qcowkit rebase [-U] [-q] [-f FMT] [-t CACHE] [-T SRC_CACHE] [-p]
 * [-u] -b BACKING [-F BACKING_FMT] IMG`: make IMG's backing file BACKING
 * ("" = none), as qemu-img 7.2's img_rebase does.
 *
 * Invariants:
 *  1. Safe mode (no -u) keeps what IMG reads: every range that IMG does not
 *     allocate and where the old and new backing chains read differently is
 *     written into IMG before the header changes. The walk is qemu-img's: 2 MiB
 *     steps, cut where IMG's allocation (and, when the new backing file is
 *     in the old chain, the allocation above it) changes and at the end of
 *     each backing file; differences found in 512-byte sectors and written
 *     in runs (zeros written as zeros past the old backing file's end).
 *  2. The header is changed last, in one write (qk_set_backing), so a crash
 *     leaves the old backing file with data that reads the same.
 *  3. A new backing file needs a format (-F), as in qemu-img 7.2; -b "" and
 *     -u without -b remove the backing file.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chain.h"
#include "cli.h"
#include "imgcommon.h"
#include "util.h"

#define IO_BUF_SIZE (2u << 20)
#define SECTOR 512

struct rebase {
    qk_image *top, *old, *new, *prefix;
    uint64_t size, old_size, new_size;
    uint8_t *buf_old, *buf_new;
};

static void print_help(void)
{
    printf("usage: qcowkit rebase [-U] [-q] [-f FMT] [-t CACHE] [-T SRC_CACHE] [-p] [-u]\n"
           "                      -b BACKING_FILE [-F BACKING_FMT] FILENAME\n\n"
           "Change the backing file of FILENAME to BACKING_FILE (\"\" for none). Without -u\n"
           "the data that would read differently is copied into FILENAME first.\n\n"
           "  -f FMT          format of FILENAME\n"
           "  -F BACKING_FMT  format of the new backing file (needed with a backing file)\n"
           "  -t CACHE        cache mode of FILENAME; -T SRC_CACHE of the backing files\n"
           "  -u              unsafe: only change the name in the header\n"
           "  -U              open the new backing file without locking it for others\n"
           "  -p              show progress\n"
           "  -q              quiet\n");
}

/* qemu-img's compare_buffers: 1 if the first sector differs, 0 if not;
 * *pnum gets the run of sectors with that same answer. */
static int compare_buffers(const uint8_t *a, const uint8_t *b, uint64_t bytes, uint64_t *pnum)
{
    uint64_t i = bytes < SECTOR ? bytes : SECTOR;
    int res = memcmp(a, b, i) != 0;
    while (i < bytes) {
        uint64_t len = bytes - i < SECTOR ? bytes - i : SECTOR;
        if ((memcmp(a + i, b + i, len) != 0) != res)
            break;
        i += len;
    }
    *pnum = i;
    return res;
}

/* Fill BUF with the N bytes at OFF of backing image B (of SIZE bytes; NULL
 * for none), *N cut at SIZE. 1 when that is zeros without reading (no image,
 * or OFF past its end), 0 when read, -1 on error. */
static int read_side(qk_image *b, uint64_t size, uint8_t *buf, uint64_t off, uint64_t *n,
                     const char *which)
{
    if (!b || off >= size) {
        memset(buf, 0, *n);
        return 1;
    }
    if (off + *n > size)
        *n = size - off;
    if (qk_pread(b, buf, *n, off) < 0) {
        cli_error("error while reading from %s backing file", which);
        return -1;
    }
    return 0;
}

/* One step of the walk at OFF; *N gets how far it went. 0 or -1. */
static int rebase_step(struct rebase *rb, uint64_t off, uint64_t *pn)
{
    uint64_t n = rb->size - off < IO_BUF_SIZE ? rb->size - off : IO_BUF_SIZE;
    /* Nothing to do where IMG allocates, nor, when the new backing file is
     * in the old chain, where no layer above it allocates. */
    int skip = qk_is_allocated_above(rb->top, rb->old, off, n, &n);
    if (skip == 0 && rb->prefix && off < rb->old_size) {
        skip = qk_is_allocated_above(rb->old, rb->prefix, off, n, &n);
        if (skip >= 0)
            skip = !skip;
    }
    *pn = n;
    if (skip < 0) {
        cli_error("error while reading image metadata: %s", cli_io_strerror(skip));
        return -1;
    }
    if (skip)
        return 0;
    int old_is_zero = read_side(rb->old, rb->old_size, rb->buf_old, off, &n, "old");
    if (old_is_zero < 0 || read_side(rb->new, rb->new_size, rb->buf_new, off, &n, "new") < 0)
        return -1;
    *pn = n;
    for (uint64_t written = 0; written < n;) {
        uint64_t pnum;
        if (compare_buffers(rb->buf_old + written, rb->buf_new + written, n - written, &pnum)) {
            int r = old_is_zero ? qk_pwrite_zeroes(rb->top, pnum, off + written, 0)
                                : qk_pwrite(rb->top, rb->buf_old + written, pnum, off + written);
            if (r < 0) {
                cli_error("Error while writing to COW image: %s", cli_io_strerror(r));
                cli_io_detail(rb->top, r);
                return -1;
            }
        }
        written += pnum;
        /* qemu-img 7.2 stops here too (past the old backing file's end only
         * the first run is compared): kept, so that the results are equal. */
        if (off + written >= rb->old_size)
            break;
    }
    return 0;
}

static int open_new_backing(struct rebase *rb, const char *name, const char *fmt, unsigned flags)
{
    char *path = cli_resolve_against(qk_filename(rb->top), name);
    if (!path)
        return -1;
    /* A layer of the old chain is used as it is (bdrv_find_backing_image). */
    if ((rb->prefix = cli_find_backing(rb->top, path))) {
        rb->new = rb->prefix;
        free(path);
        return 0;
    }
    if (cli_format_flags(fmt, &flags) < 0) {
        cli_error("Could not open new backing file '%s': Unknown driver '%s'", name, fmt);
        free(path);
        return -1;
    }
    qk_image *img = NULL;
    int r = qk_image_new(&img);
    if (r == 0)
        r = qk_open(img, path, flags);
    if (r < 0) {
        cli_error("Could not open new backing file '%s': %s", name,
                  img ? qk_errmsg(img) : qk_strerror(r));
        qk_close(img);
        free(path);
        return -1;
    }
    free(path);
    rb->new = img;
    return 0;
}

static int safe_rebase(struct rebase *rb, const char *name, const char *fmt, unsigned bflags,
                       int progress)
{
    rb->old = qk_backing(rb->top);
    rb->size = qk_size(rb->top);
    rb->old_size = rb->old ? qk_size(rb->old) : 0;
    if (name[0] && open_new_backing(rb, name, fmt, bflags) < 0)
        return -1;
    rb->new_size = rb->new ? qk_size(rb->new) : 0;
    rb->buf_old = malloc(IO_BUF_SIZE);
    rb->buf_new = malloc(IO_BUF_SIZE);
    if (!rb->buf_old || !rb->buf_new) {
        cli_error("Out of memory");
        return -1;
    }
    cli_progress prog;
    cli_progress_init(&prog, progress, 2.0f);
    cli_progress_print(&prog, 0, 100);
    uint64_t steps = rb->size ? rb->size / (rb->size < IO_BUF_SIZE ? rb->size : IO_BUF_SIZE) : 1;
    float local = 100.0f / (float)steps;
    for (uint64_t off = 0, n; off < rb->size; off += n) {
        if (rebase_step(rb, off, &n) < 0)
            return -1;
        cli_progress_print(&prog, local, 100);
    }
    cli_progress_print(&prog, 100, 0);
    cli_progress_end(&prog);
    return 0;
}

static int set_backing(qk_image *top, const char *name, const char *fmt)
{
    if (name && !name[0])
        name = NULL;
    if (name && !fmt) {
        cli_error("Could not change the backing file to '%s': backing format must be specified", name);
        return -1;
    }
    int r = qk_set_backing(top, name, name ? fmt : NULL);
    if (r == 0)
        return 0;
    /* qemu-img says strerror() of the code its driver returned. */
    const char *why = r == -ENOSPC             ? "No space left in the file header"
                      : r == QK_E_INVALID     ? "Invalid argument"
                      : r == QK_E_UNSUPPORTED ? "Operation not supported"
                                              : qk_errmsg(top);
    cli_error("Could not change the backing file to '%s': %s", name ? name : "", why);
    return -1;
}

/* The format drivers of QEMU 7.2 that -F may name; -u records any of them,
 * a safe rebase opens only qcow2 and raw. */
static int known_format(const char *fmt)
{
    static const char *const names[] = { "qcow2", "raw", "qcow", "qed", "vmdk", "vdi", "vhdx", "vpc",
                                         "parallels", "luks", "dmg", "cloop", "bochs", "vvfat" };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(fmt, names[i]))
            return 1;
    return 0;
}

int cmd_rebase(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL, *bfmt = NULL, *name = NULL;
    unsigned flags = QK_OPEN_RDWR, bflags = 0;
    int quiet = 0, unsafe = 0, progress = 0, c;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":hf:F:b:upt:T:qU", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            print_help();
            return 0;
        case 'f':
            fmt = optarg;
            break;
        case 'F':
            bfmt = optarg;
            break;
        case 'b':
            name = optarg;
            break;
        case 'u':
            unsafe = 1;
            break;
        case 'p':
            progress = 1;
            break;
        case 't':
            if (cli_parse_cache(optarg, &flags, "cache") < 0)
                return 1;
            break;
        case 'T':
            if (cli_parse_cache(optarg, &bflags, "source cache") < 0)
                return 1;
            bflags &= ~QK_OPEN_UNSAFE;   /* backing files are only read */
            break;
        case 'q':
            quiet = 1;
            break;
        case 'U':
            bflags |= QK_OPEN_FORCE_SHARE;
            break;
        default:
            return cli_bad_option(argv, optind, c == ':');
        }
    }
    if (quiet)
        progress = 0;
    if (!unsafe && !name)
        return cli_usage_error("Must specify backing file (-b) or use unsafe mode (-u)");
    if (optind != argc - 1)
        return cli_usage_error("Expecting one image file name");
    const char *path = argv[optind];
    if (unsafe)
        flags |= QK_OPEN_NO_BACKING;
    qk_image *top;
    if (cli_open_image(&top, path, fmt, flags) < 0)
        return 1;
    int rc = 0;
    if (bfmt && !known_format(bfmt)) {
        cli_error("Invalid format name: '%s'", bfmt);
        rc = 1;
    }
    struct rebase rb = { .top = top };
    if (rc == 0 && !unsafe && safe_rebase(&rb, name, bfmt, bflags, progress) < 0)
        rc = 1;
    if (rc == 0 && set_backing(top, name, bfmt) < 0)
        rc = 1;
    free(rb.buf_old);
    free(rb.buf_new);
    if (rb.new && !rb.prefix)
        qk_close(rb.new);
    if (qk_close(top) < 0 && rc == 0) {
        cli_error("Could not close '%s'", path);
        rc = 1;
    }
    return rc;
}
