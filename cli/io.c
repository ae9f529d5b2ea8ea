/*
 * io.c - `qcowkit io [-f FMT] [-r] [-U] [-c CMD]... IMG`: scriptable I/O with
 * qemu-io 7.2's command syntax and output (qemu-io-cmds.c) for read, write,
 * discard, flush, map, alloc, truncate, length, help and quit. Owns the command table,
 * qemu-io's line splitting, argument-count checks, statistics report and
 * hex dump.
 *
 * Invariants:
 *  1. Commands run in the order given; a failing command does not stop the
 *     next one; the exit status is 1 if any command failed (qemu-io's
 *     command_loop), 0 otherwise. `quit` stops the list.
 *  2. Messages go where qemu-io sends them: results, "read failed: ...",
 *     pattern and parsing errors on stdout; unknown commands, bad argument
 *     counts and getopt complaints on stderr.
 *  3. A command is one table entry: adding one (aio_*, alloc, truncate...)
 *     means adding a function and a row, nothing else (rows with
 *     `needs_write` are refused on a read-only handle, as qemu-io does).
 *  4. A write, zero write or discard outside [0, size] fails with -EIO
 *     before reaching the library, like QEMU's blk_check_byte_request.
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "imgcommon.h"
#include "util.h"

/* BDRV_REQUEST_MAX_BYTES: qemu-io refuses longer requests. */
#define IO_MAX_REQUEST ((int64_t)(INT_MAX & ~511))

typedef struct io_ctx {
    qk_image *img;
    int readonly;
    int quit;
} io_ctx;

typedef struct io_cmd {
    const char *name;
    const char *altname;
    int (*run)(io_ctx *ctx, int argc, char **argv);
    int argmin, argmax;   /* operand counts after the name; argmax -1 = no limit */
    int needs_write;
    const char *args;
    const char *oneline;
    void (*help)(void);
} io_cmd;

static const io_cmd *find_cmd(const char *name);

/* ---- qemu-io's number and pattern parsing ---- */

/* cvtnum + print_cvtnum_err: 0 and *out, or a negative code after the message. */
static int io_cvtnum(const char *arg, int64_t *out)
{
    uint64_t v;
    int rc = cli_parse_size(arg, &v);

    if (rc == -EINVAL)
        printf("Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- %s\n", arg);
    else if (rc == -ERANGE)
        printf("Parsing error: argument too large -- %s\n", arg);
    else if (rc < 0)
        printf("Parsing error: %s\n", arg);
    if (rc < 0)
        return rc;
    *out = (int64_t)v;
    return 0;
}

static int parse_pattern(const char *arg)
{
    char *end = NULL;
    long v = strtol(arg, &end, 0);

    if (v < 0 || v > UCHAR_MAX || *end != '\0') {
        printf("%s is not a valid pattern byte\n", arg);
        return -1;
    }
    return (int)v;
}

/* ---- reports ---- */

static double seconds_of(const struct timespec *t)
{
    return (double)t->tv_sec + (double)t->tv_nsec / 1e9;
}

/* qemu-io's cvtstr: "64 KiB", "95.734 KiB", "16 bytes", "90.918117 bytes". */
static void cvtstr(double value, char *str, size_t size)
{
    static const char *const units[] = { " EiB", " PiB", " TiB", " GiB", " MiB", " KiB" };
    const char *suffix = " bytes";
    char *trim;
    int i;

    for (i = 0; i < 6; i++) {
        double scale = (double)(UINT64_C(1) << (10 * (6 - i)));
        if (value >= scale) {
            suffix = units[i];
            snprintf(str, size - 4, "%.3f", value / scale);
            break;
        }
    }
    if (i == 6)
        snprintf(str, size - 6, "%f", value);
    trim = strstr(str, ".000");
    if (trim)
        strcpy(trim, suffix);
    else
        strcat(str, suffix);
}

/* qemu-io's timestr: "00.00 sec" below a second, else h:mm:ss.ss; -C always h:mm:ss.ss. */
static void timestr(const struct timespec *t, char *ts, size_t size, int fixed)
{
    double frac = (double)t->tv_nsec / 1e9;
    unsigned secs = (unsigned)t->tv_sec;

    if (fixed || t->tv_sec)
        snprintf(ts, size, "%u:%02u:%05.2f", secs / 3600, secs / 60 % 60, secs % 60 + frac);
    else
        snprintf(ts, size, "%05.2f sec", frac);
}

static void print_report(const char *op, const struct timespec *t, int64_t offset, int64_t count,
                         int64_t total, int cnt, int cflag)
{
    char s1[64], s2[64], ts[64];
    double secs = seconds_of(t);

    timestr(t, ts, sizeof ts, cflag);
    if (!cflag) {
        cvtstr((double)total, s1, sizeof s1);
        cvtstr((double)total / secs, s2, sizeof s2);
        printf("%s %lld/%lld bytes at offset %lld\n", op, (long long)total, (long long)count,
               (long long)offset);
        printf("%s, %d ops; %s (%s/sec and %.4f ops/sec)\n", s1, cnt, ts, s2, cnt / secs);
    } else {
        printf("%lld,%d,%s,%.3f,%.3f\n", (long long)total, cnt, ts, (double)total / secs, cnt / secs);
    }
}

static void dump_buffer(const unsigned char *p, int64_t offset, int64_t len)
{
    for (int64_t i = 0; i < len; i += 16) {
        int64_t n = len - i < 16 ? len - i : 16;
        printf("%08llx:  ", (unsigned long long)(offset + i));
        for (int64_t j = 0; j < n; j++)
            printf("%02x ", p[i + j]);
        printf(" ");
        for (int64_t j = 0; j < n; j++)
            putchar(isalnum(p[i + j]) ? p[i + j] : '.');
        printf("\n");
    }
}

static struct timespec tsub(struct timespec a, struct timespec b)
{
    struct timespec d = { a.tv_sec - b.tv_sec, a.tv_nsec - b.tv_nsec };
    if (d.tv_nsec < 0) {
        d.tv_sec--;
        d.tv_nsec += 1000000000L;
    }
    return d;
}

static void usage_of(const io_cmd *c)
{
    printf("%s %s -- %s\n", c->name, c->args, c->oneline);
}

/* Parse OFFSET and LENGTH operands (qemu-io's cvtnum + messages). */
static int parse_off_len(char **ops, int64_t *offset, int64_t *count)
{
    int rc;

    if ((rc = io_cvtnum(ops[0], offset)) < 0)
        return rc;
    return io_cvtnum(ops[1], count);
}

/* The block layer's request check (blk_check_byte_request): -EIO past the end. */
static int check_range(io_ctx *ctx, int64_t offset, int64_t count)
{
    uint64_t size = qk_size(ctx->img);
    if ((uint64_t)offset > size || size - (uint64_t)offset < (uint64_t)count)
        return -EIO;
    return 0;
}

/* "OP failed: why" on stdout, the library's detail on stderr. */
static void report_failure(io_ctx *ctx, const char *op, int rc)
{
    printf("%s failed: %s\n", op, cli_io_strerror(rc));
    fflush(stdout);
    cli_io_detail(ctx->img, rc);
}

/* ---- read ---- */

static void read_help(void)
{
    printf("\n"
           " reads a range of bytes from the given offset\n"
           "\n"
           " Example:\n"
           " 'read -v 512 1k' - dumps 1 kilobyte read from 512 bytes into the file\n"
           "\n"
           " Reads a segment of the currently open file, optionally dumping it to the\n"
           " standard output stream (with -v option) for subsequent inspection.\n"
           " -C, -- report statistics in a machine parsable format\n"
           " -l, -- length for pattern verification (only with -P)\n"
           " -p, -- ignored for backwards compatibility\n"
           " -P, -- use a pattern to verify read data\n"
           " -q, -- quiet mode, do not show I/O statistics\n"
           " -s, -- start offset for pattern verification (only with -P)\n"
           " -v, -- dump buffer to standard output\n"
           "\n");
}

static int read_f(io_ctx *ctx, int argc, char **argv)
{
    const io_cmd *self = find_cmd("read");
    int cflag = 0, qflag = 0, vflag = 0, pflag = 0, sflag = 0, lflag = 0;
    int64_t offset, count, poff = 0, pcount = 0;
    int pattern = 0, c, rc;
    struct timespec t1, t2;
    unsigned char *buf;

    while ((c = getopt(argc, argv, "bCl:pP:qs:v")) != -1) {
        switch (c) {
        case 'b':
            fprintf(stderr, "%s: -b (VM state) is not supported\n", argv[0]);
            return -ENOTSUP;
        case 'C': cflag = 1; break;
        case 'l':
            lflag = 1;
            if ((rc = io_cvtnum(optarg, &pcount)) < 0)
                return rc;
            break;
        case 'p': break;
        case 'P':
            pflag = 1;
            if ((pattern = parse_pattern(optarg)) < 0)
                return -EINVAL;
            break;
        case 'q': qflag = 1; break;
        case 's':
            sflag = 1;
            if ((rc = io_cvtnum(optarg, &poff)) < 0)
                return rc;
            break;
        case 'v': vflag = 1; break;
        default:
            usage_of(self);
            return -EINVAL;
        }
    }
    if (optind != argc - 2) {
        usage_of(self);
        return -EINVAL;
    }
    if ((rc = parse_off_len(argv + optind, &offset, &count)) < 0)
        return rc;
    if (count > IO_MAX_REQUEST) {
        printf("length cannot exceed %lld, given %s\n", (long long)IO_MAX_REQUEST, argv[optind + 1]);
        return -EINVAL;
    }
    if (!pflag && (lflag || sflag)) {
        usage_of(self);
        return -EINVAL;
    }
    if (!lflag)
        pcount = count - poff;
    if (pcount < 0 || pcount + poff > count) {
        printf("pattern verification range exceeds end of read data\n");
        return -EINVAL;
    }

    buf = malloc(count ? (size_t)count : 1);
    if (!buf) {
        printf("read failed: %s\n", strerror(ENOMEM));
        return -ENOMEM;
    }
    memset(buf, 0xab, (size_t)count);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    rc = check_range(ctx, offset, count);
    if (rc == 0 && count)
        rc = qk_pread(ctx->img, buf, (uint64_t)count, (uint64_t)offset);
    clock_gettime(CLOCK_MONOTONIC, &t2);
    if (rc < 0) {
        report_failure(ctx, "read", rc);
        goto out;
    }
    if (pflag && pcount > 0) {
        for (int64_t i = poff; i < poff + pcount; i++) {
            if (buf[i] != pattern) {
                printf("Pattern verification failed at offset %lld, %lld bytes\n",
                       (long long)(offset + poff), (long long)pcount);
                rc = -EINVAL;
                break;
            }
        }
    }
    if (qflag)
        goto out;
    if (vflag)
        dump_buffer(buf, offset, count);
    t2 = tsub(t2, t1);
    print_report("read", &t2, offset, count, count, 1, cflag);
out:
    free(buf);
    return rc;
}

/* ---- write ---- */

static void write_help(void)
{
    printf("\n"
           " writes a range of bytes from the given offset\n"
           "\n"
           " Example:\n"
           " 'write 512 1k' - writes 1 kilobyte at 512 bytes into the open file\n"
           "\n"
           " Writes into a segment of the currently open file, using a buffer\n"
           " filled with a set pattern (0xcdcdcdcd).\n"
           " -c, -- write compressed data (whole clusters)\n"
           " -f, -- use Force Unit Access semantics (flush after the write)\n"
           " -n, -- with -z, don't allow slow fallback (accepted; zero writes never fall back)\n"
           " -p, -- ignored for backwards compatibility\n"
           " -P, -- use different pattern to fill file\n"
           " -s, -- use a pattern file to fill the write buffer\n"
           " -C, -- report statistics in a machine parsable format\n"
           " -q, -- quiet mode, do not show I/O statistics\n"
           " -u, -- with -z, allow unmapping\n"
           " -z, -- write zeroes\n"
           "\n");
}

/* The buffer of `write -s FILE`: FILE's first COUNT bytes, repeated to fill
 * COUNT (qemu_io_alloc_from_file). NULL after a message on stderr. */
static unsigned char *buffer_from_file(const char *name, size_t count)
{
    FILE *f = fopen(name, "r");
    unsigned char *buf;
    size_t got;

    if (!f) {
        perror(name);
        return NULL;
    }
    buf = malloc(count ? count : 1);
    if (!buf) {
        fclose(f);
        fprintf(stderr, "%s: %s\n", name, strerror(ENOMEM));
        return NULL;
    }
    got = fread(buf, 1, count, f);
    if (ferror(f)) {
        perror(name);
        goto fail;
    }
    if (got == 0) {
        fprintf(stderr, "%s: file is empty\n", name);
        goto fail;
    }
    fclose(f);
    for (size_t i = got; i < count; i += got)
        memcpy(buf + i, buf, count - i < got ? count - i : got);
    return buf;
fail:
    fclose(f);
    free(buf);
    return NULL;
}

/* Compressed write of whole clusters (the last one may end the disk). */
static int write_compressed(io_ctx *ctx, const unsigned char *buf, uint64_t offset, uint64_t count)
{
    uint64_t cs = qk_cluster_size(ctx->img), size = qk_size(ctx->img);

    if (cs == 0 || offset % cs || (count % cs && offset + count != size))
        return -EINVAL;
    for (uint64_t done = 0; done < count; done += cs) {
        uint64_t n = count - done < cs ? count - done : cs;
        int rc = qk_pwrite_compressed(ctx->img, buf + done, n, offset + done);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int write_f(io_ctx *ctx, int argc, char **argv)
{
    const io_cmd *self = find_cmd("write");
    int cflag = 0, Cflag = 0, fflag = 0, nflag = 0, pflag = 0, qflag = 0, sflag = 0, uflag = 0, zflag = 0;
    int pattern = 0xcd, c, rc;
    const char *file = NULL;
    int64_t offset, count;
    unsigned char *buf = NULL;
    struct timespec t1, t2;

    while ((c = getopt(argc, argv, "bcCfnpP:qs:uz")) != -1) {
        switch (c) {
        case 'b':
            fprintf(stderr, "%s: -b (VM state) is not supported\n", argv[0]);
            return -ENOTSUP;
        case 'c': cflag = 1; break;
        case 'C': Cflag = 1; break;
        case 'f': fflag = 1; break;
        case 'n': nflag = 1; break;
        case 'p': break;
        case 'P':
            pflag = 1;
            if ((pattern = parse_pattern(optarg)) < 0)
                return -EINVAL;
            break;
        case 'q': qflag = 1; break;
        case 's': sflag = 1; file = optarg; break;
        case 'u': uflag = 1; break;
        case 'z': zflag = 1; break;
        default:
            usage_of(self);
            return -EINVAL;
        }
    }
    if (optind != argc - 2) {
        usage_of(self);
        return -EINVAL;
    }
    if (fflag && cflag) {
        printf("-f and -b or -c cannot be specified at the same time\n");
        return -EINVAL;
    }
    if (nflag && !zflag) {
        printf("-n requires -z to be specified\n");
        return -EINVAL;
    }
    if (uflag && !zflag) {
        printf("-u requires -z to be specified\n");
        return -EINVAL;
    }
    if (zflag + pflag + sflag > 1) {
        printf("Only one of -z, -P, and -s can be specified at the same time\n");
        return -EINVAL;
    }
    if ((rc = parse_off_len(argv + optind, &offset, &count)) < 0)
        return rc;
    if (count > IO_MAX_REQUEST && !nflag) {
        printf("length cannot exceed %lld without -n, given %s\n", (long long)IO_MAX_REQUEST, argv[optind + 1]);
        return -EINVAL;
    }
    if (cflag && offset % 512) {
        printf("%lld is not a sector-aligned value for 'offset'\n", (long long)offset);
        return -EINVAL;
    }
    if (cflag && count % 512) {
        printf("%lld is not a sector-aligned value for 'count'\n", (long long)count);
        return -EINVAL;
    }
    if (!zflag) {
        if (sflag) {
            if (!(buf = buffer_from_file(file, (size_t)count)))
                return -EINVAL;
        } else {
            if (!(buf = malloc(count ? (size_t)count : 1))) {
                report_failure(ctx, "write", -ENOMEM);
                return -ENOMEM;
            }
            memset(buf, pattern, (size_t)count);
        }
    }

    clock_gettime(CLOCK_MONOTONIC, &t1);
    rc = check_range(ctx, offset, count);
    if (rc == 0 && zflag)
        rc = qk_pwrite_zeroes(ctx->img, (uint64_t)count, (uint64_t)offset, uflag ? QK_ZERO_MAY_UNMAP : 0);
    else if (rc == 0 && cflag)
        rc = write_compressed(ctx, buf, (uint64_t)offset, (uint64_t)count);
    else if (rc == 0 && count)
        rc = qk_pwrite(ctx->img, buf, (uint64_t)count, (uint64_t)offset);
    if (rc == 0 && fflag)
        rc = qk_flush(ctx->img);
    clock_gettime(CLOCK_MONOTONIC, &t2);
    if (rc < 0) {
        report_failure(ctx, "write", rc);
        goto out;
    }
    if (!qflag) {
        t2 = tsub(t2, t1);
        print_report("wrote", &t2, offset, count, count, 1, Cflag);
    }
out:
    free(buf);
    return rc;
}

/* ---- discard, flush ---- */

static void discard_help(void)
{
    printf("\n"
           " discards a range of bytes from the given offset\n"
           "\n"
           " Example:\n"
           " 'discard 512 1k' - discards 1 kilobyte from 512 bytes into the file\n"
           "\n"
           " Discards a segment of the currently open file.\n"
           " -C, -- report statistics in a machine parsable format\n"
           " -q, -- quiet mode, do not show I/O statistics\n"
           "\n");
}

static int discard_f(io_ctx *ctx, int argc, char **argv)
{
    const io_cmd *self = find_cmd("discard");
    int Cflag = 0, qflag = 0, c, rc;
    int64_t offset, count;
    struct timespec t1, t2;

    while ((c = getopt(argc, argv, "Cq")) != -1) {
        switch (c) {
        case 'C': Cflag = 1; break;
        case 'q': qflag = 1; break;
        default:
            usage_of(self);
            return -EINVAL;
        }
    }
    if (optind != argc - 2) {
        usage_of(self);
        return -EINVAL;
    }
    if ((rc = parse_off_len(argv + optind, &offset, &count)) < 0)
        return rc;
    if (count > IO_MAX_REQUEST) {
        printf("length cannot exceed %lld, given %s\n", (long long)IO_MAX_REQUEST, argv[optind + 1]);
        return -EINVAL;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    rc = check_range(ctx, offset, count);
    if (rc == 0 && count)
        rc = qk_discard(ctx->img, (uint64_t)count, (uint64_t)offset);
    clock_gettime(CLOCK_MONOTONIC, &t2);
    if (rc < 0) {
        report_failure(ctx, "discard", rc);
        return rc;
    }
    if (!qflag) {
        t2 = tsub(t2, t1);
        print_report("discard", &t2, offset, count, count, 1, Cflag);
    }
    return 0;
}

/* qemu-io's flush prints nothing, even when it fails. */
static int flush_f(io_ctx *ctx, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return qk_flush(ctx->img);
}

/* ---- map, length ---- */

/* Allocation in this layer only (bdrv_is_allocated): 1, 0, or < 0. */
static int allocated_here(io_ctx *ctx, uint64_t off, uint64_t len, uint64_t *pnum)
{
    qk_extent e;
    int rc = qk_block_status(ctx->img, off, len, &e);

    if (rc < 0)
        return rc;
    *pnum = e.length < len ? e.length : len;
    return (e.flags & QK_BS_PRESENT) && e.depth == 0;
}

static int map_f(io_ctx *ctx, int argc, char **argv)
{
    uint64_t size = qk_size(ctx->img), off = 0;
    char s1[64], s2[64];

    (void)argc;
    (void)argv;
    while (off < size) {
        uint64_t num, n;
        int first = allocated_here(ctx, off, size - off, &num), rc = first;

        /* Merge the following runs of the same state (map_is_allocated). */
        while (rc == first && rc >= 0 && off + num < size) {
            rc = allocated_here(ctx, off + num, size - off - num, &n);
            if (rc == first && n)
                num += n;
        }
        if (first < 0 || (rc < 0 && rc != first)) {
            rc = first < 0 ? first : rc;
            cli_error("Failed to get allocation status: %s", cli_io_strerror(rc));
            cli_io_detail(ctx->img, rc);
            return rc;
        }
        cvtstr((double)num, s1, sizeof s1);
        cvtstr((double)off, s2, sizeof s2);
        printf("%s (0x%llx) bytes %s at offset %s (0x%llx)\n", s1, (unsigned long long)num,
               first ? "    allocated" : "not allocated", s2, (unsigned long long)off);
        off += num;
    }
    return 0;
}

static int length_f(io_ctx *ctx, int argc, char **argv)
{
    char s[64];

    (void)argc;
    (void)argv;
    cvtstr((double)qk_size(ctx->img), s, sizeof s);
    printf("%s\n", s);
    return 0;
}

/* ---- alloc, truncate ---- */

static int alloc_f(io_ctx *ctx, int argc, char **argv)
{
    int64_t start, count = 512, sum = 0;
    uint64_t size = qk_size(ctx->img), off, remaining;
    char s1[64];
    int rc;

    if ((rc = io_cvtnum(argv[1], &start)) < 0)
        return rc;
    if (argc == 3 && (rc = io_cvtnum(argv[2], &count)) < 0)
        return rc;
    off = (uint64_t)start;
    remaining = (uint64_t)count;
    while (remaining) {
        uint64_t num = 0;
        rc = off < size ? allocated_here(ctx, off, remaining < size - off ? remaining : size - off, &num) : 0;
        if (rc < 0) {
            printf("is_allocated failed: %s\n", cli_io_strerror(rc));
            fflush(stdout);
            cli_io_detail(ctx->img, rc);
            return rc;
        }
        if (num == 0) { /* past the end: count what exists */
            count -= (int64_t)remaining;
            break;
        }
        if (rc)
            sum += (int64_t)num;
        off += num;
        remaining -= num;
    }
    cvtstr((double)start, s1, sizeof s1);
    printf("%lld/%lld bytes allocated at offset %s\n", (long long)sum, (long long)count, s1);
    return 0;
}

static int truncate_f(io_ctx *ctx, int argc, char **argv)
{
    int64_t size;
    int c, rc;

    while ((c = getopt(argc, argv, "m:")) != -1) {
        switch (c) {
        case 'm':
            if (strcmp(optarg, "off") != 0) {
                cli_error("Preallocation mode '%s' is not supported", optarg);
                return -ENOTSUP;
            }
            break;
        default:
            usage_of(find_cmd("truncate"));
            return -EINVAL;
        }
    }
    if (optind != argc - 1) {
        usage_of(find_cmd("truncate"));
        return -EINVAL;
    }
    if ((rc = io_cvtnum(argv[optind], &size)) < 0)
        return rc;
    if (size % 512) {
        cli_error("The new size must be a multiple of 512");
        return -EINVAL;
    }
    if ((rc = qk_resize(ctx->img, (uint64_t)size, QK_RESIZE_SHRINK)) < 0) {
        cli_error("%s", cli_errstr(ctx->img, rc));
        return rc;
    }
    return 0;
}

/* ---- the command table ---- */

static int help_f(io_ctx *ctx, int argc, char **argv);
static int quit_f(io_ctx *ctx, int argc, char **argv);

/* The command table, sorted by name as qemu-io lists it. */
static const io_cmd commands[] = {
    { "alloc", "a", alloc_f, 1, 2, 0, "offset [count]", "checks if offset is allocated in the file", NULL },
    { "discard", "d", discard_f, 2, -1, 1, "[-Cq] off len", "discards a number of bytes at a specified offset",
      discard_help },
    { "flush", "f", flush_f, 0, 0, 0, NULL, "flush all in-core file state to disk", NULL },
    { "help", "?", help_f, 0, 1, 0, "[command]", "help for one or all commands", NULL },
    { "length", "l", length_f, 0, 0, 0, NULL, "gets the length of the current file", NULL },
    { "map", NULL, map_f, 0, 0, 0, "", "prints the allocated areas of a file", NULL },
    { "quit", "q", quit_f, 0, 0, 0, NULL, "exit the program", NULL },
    { "read", "r", read_f, 2, -1, 0, "[-abCqv] [-P pattern [-s off] [-l len]] off len",
      "reads a number of bytes at a specified offset", read_help },
    { "truncate", "t", truncate_f, 1, 3, 1, "[-m prealloc_mode] off",
      "truncates the current file at the given offset", NULL },
    { "write", "w", write_f, 2, -1, 1, "[-bcCfnquz] [-P pattern | -s source_file] off len",
      "writes a number of bytes at a specified offset", write_help },
};
static const size_t n_commands = sizeof commands / sizeof commands[0];

static const io_cmd *find_cmd(const char *name)
{
    for (size_t i = 0; i < n_commands; i++)
        if (!strcmp(commands[i].name, name) || (commands[i].altname && !strcmp(commands[i].altname, name)))
            return &commands[i];
    return NULL;
}

/* ---- help, quit ---- */

static void help_oneline(const char *name, const io_cmd *c)
{
    printf("%s ", name);
    if (c->args)
        printf("%s ", c->args);
    printf("-- %s\n", c->oneline);
}

static int help_f(io_ctx *ctx, int argc, char **argv)
{
    (void)ctx;
    if (argc == 1) {
        for (size_t i = 0; i < n_commands; i++)
            help_oneline(commands[i].name, &commands[i]);
        printf("\nUse 'help commandname' for extended help.\n");
        return 0;
    }
    const io_cmd *c = find_cmd(argv[1]);
    if (!c) {
        printf("command %s not found\n", argv[1]);
        return 0;
    }
    help_oneline(argv[1], c);
    if (c->help)
        c->help();
    return 0;
}

static int quit_f(io_ctx *ctx, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    ctx->quit = 1;
    return 0;
}

/* ---- dispatch ---- */

/* Split LINE in place on spaces (qemu-io's breakline); returns the count. */
static int breakline(char *line, char ***argvp)
{
    char **v = NULL, *p;
    int n = 0;

    while ((p = strsep(&line, " ")) != NULL) {
        if (!*p)
            continue;
        char **nv = realloc(v, sizeof *v * (size_t)(n + 2));
        if (!nv)
            break;
        v = nv;
        v[n++] = p;
        v[n] = NULL;
    }
    *argvp = v;
    return n;
}

/* Run one command line; returns its result (< 0 on failure). */
static int run_line(io_ctx *ctx, const char *text)
{
    char *line = strdup(text), **argv = NULL;
    int argc, rc = 0;
    const io_cmd *c;

    if (!line)
        return -ENOMEM;
    argc = breakline(line, &argv);
    if (argc == 0)
        goto out;
    c = find_cmd(argv[0]);
    if (!c) {
        fprintf(stderr, "command \"%s\" not found\n", argv[0]);
        rc = -EINVAL;
        goto out;
    }
    if (argc - 1 < c->argmin || (c->argmax != -1 && argc - 1 > c->argmax)) {
        if (c->argmax == -1)
            fprintf(stderr, "bad argument count %d to %s, expected at least %d arguments\n", argc - 1,
                    argv[0], c->argmin);
        else if (c->argmin == c->argmax)
            fprintf(stderr, "bad argument count %d to %s, expected %d arguments\n", argc - 1, argv[0],
                    c->argmin);
        else
            fprintf(stderr, "bad argument count %d to %s, expected between %d and %d arguments\n",
                    argc - 1, argv[0], c->argmin, c->argmax);
        rc = -EINVAL;
        goto out;
    }
    if (c->needs_write && ctx->readonly) {
        cli_error("Block node is read-only");
        rc = -EACCES;
        goto out;
    }
    optind = 0; /* full getopt reset for the command's own options */
    rc = c->run(ctx, argc, argv);
    fflush(stdout);
out:
    free(argv);
    free(line);
    return rc;
}

static void io_usage(FILE *f)
{
    fprintf(f, "usage: qcowkit io [-f FMT] [-r] [-U] [-c CMD]... IMG\n"
               "Run qemu-io style commands on IMG (read-write unless -r).\n\n"
               "  -c, --cmd CMD        run CMD (repeatable, in order); without -c, commands are\n"
               "                       read from standard input, one per line\n"
               "  -f, --format FMT     image format: qcow2 or raw (default: probe)\n"
               "  -r, --read-only      open the image read-only\n"
               "  -U, --force-share    open without refusing other users (needs -r)\n"
               "  -h, --help           show this help\n\n"
               "Run 'qcowkit io -c help IMG' for the commands.\n");
}

/* Open IMG for the session (qemu-io's "can't open device" wording). */
static int open_device(io_ctx *ctx, const char *path, const char *fmt, unsigned flags)
{
    int rc;

    if ((flags & QK_OPEN_FORCE_SHARE) && (flags & QK_OPEN_RDWR)) {
        cli_error("can't open device %s: force-share=on can only be used with read-only images", path);
        return -1;
    }
    if (cli_format_flags(fmt, &flags) < 0) {
        cli_error("can't open device %s: Unknown driver '%s'", path, fmt);
        return -1;
    }
    if ((rc = qk_image_new(&ctx->img)) == 0)
        rc = qk_open(ctx->img, path, flags);
    if (rc < 0) {
        cli_error("can't open device %s: %s", path, cli_errstr(ctx->img, rc));
        qk_close(ctx->img);
        ctx->img = NULL;
        return -1;
    }
    ctx->readonly = !(flags & QK_OPEN_RDWR);
    return 0;
}

/* Commands from standard input, one a line, after a prompt. Returns the
 * last failure (< 0) or 0. */
static int run_stdin(io_ctx *ctx)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int last_error = 0;

    while (!ctx->quit) {
        printf("qcowkit> ");
        fflush(stdout);
        if ((n = getline(&line, &cap, stdin)) < 0)
            break;
        if (n > 0 && line[n - 1] == '\n')
            line[n - 1] = '\0';
        int rc = run_line(ctx, line);
        if (rc < 0)
            last_error = rc;
    }
    free(line);
    return last_error;
}

int cmd_io(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "cmd", required_argument, NULL, 'c' },
        { "format", required_argument, NULL, 'f' },
        { "read-only", no_argument, NULL, 'r' },
        { "force-share", no_argument, NULL, 'U' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char **cmds, *fmt = NULL;
    size_t ncmds = 0;
    unsigned flags = QK_OPEN_RDWR;
    io_ctx ctx = { 0 };
    int c, rc, last_error = 0;

    if (!(cmds = calloc((size_t)argc, sizeof *cmds)))
        return 1;
    while ((c = getopt_long(argc, argv, ":c:f:rUh", longopts, NULL)) != -1) {
        switch (c) {
        case 'c': cmds[ncmds++] = optarg; break;
        case 'f': fmt = optarg; break;
        case 'r': flags &= ~QK_OPEN_RDWR; break;
        case 'U': flags |= QK_OPEN_FORCE_SHARE; break;
        case 'h': io_usage(stdout); free(cmds); return 0;
        default: free(cmds); return cli_bad_option(argv, optind, c == ':');
        }
    }
    if (optind != argc - 1) {
        free(cmds);
        return cli_usage_error("io: expecting one image file name");
    }
    if (open_device(&ctx, argv[optind], fmt, flags) < 0) {
        free(cmds);
        return 1;
    }
    if (ncmds == 0)
        last_error = run_stdin(&ctx);
    for (size_t i = 0; i < ncmds && !ctx.quit; i++)
        if ((rc = run_line(&ctx, cmds[i])) < 0)
            last_error = rc;
    free(cmds);
    /* Closing flushes a writable image; say so if that fails. */
    if ((rc = qk_close(ctx.img)) < 0) {
        cli_error("%s", qk_strerror(rc));
        last_error = rc;
    }
    return last_error < 0 ? 1 : 0;
}
