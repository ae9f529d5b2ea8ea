/*
 * bench.c - `qcowkit bench`: qemu-img 7.2's bench (img_bench): COUNT read or
 * write requests of SIZE bytes, the first at OFFSET and each next one STEP
 * bytes further (wrapping at the image size), timed from the first request
 * to the last completion; the same options, lines and messages.
 *
 * Beyond qemu-img: --random SEED puts each request at a pseudo-random
 * multiple of SIZE in [0, image size - SIZE] (xorshift64* seeded by SEED,
 * so a run can be repeated).
 *
 * The library is synchronous: requests are issued one after the other in
 * qemu-img's order whatever the depth (-d is printed and checked, and sizes
 * the buffer pattern, as in qemu-img). Flushes come where qemu-img's
 * bench_cb issues them: after a completion that leaves a multiple of the
 * flush interval requests not yet started. Cache modes: writeback (default)
 * and writethrough (flush after each write) use the file as it is, unsafe
 * never flushes; none and directsync (O_DIRECT) are refused, and so -n
 * (native AIO needs O_DIRECT) is refused as qemu-img refuses it without
 * them; -i threads|io_uring changes nothing here. -d 0 is refused (qemu-img
 * 7.2 takes it and never completes).
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "cli.h"
#include "imgcommon.h"
#include "util.h"
#include "qcowkit.h"

struct bench {
    qk_image *img;
    uint64_t size;        /* image size */
    uint64_t bufsize, step, offset;
    int count, depth, write, flush_interval, writethrough;
    int random;
    uint64_t rng;
    uint8_t *buf;
};

static void bench_help(void)
{
    printf("usage: qcowkit bench [-c COUNT] [-d DEPTH] [-f FMT] [--flush-interval=N] [-i AIO]\n"
           "                     [-n] [--no-drain] [-o OFFSET] [--pattern=PATTERN] [-q]\n"
           "                     [-s BUFFER_SIZE] [-S STEP_SIZE] [-t CACHE] [-w] [-U]\n"
           "                     [--random SEED] FILENAME\n"
           "\n"
           "Time COUNT (default 75000) read requests, or write requests with -w, of\n"
           "BUFFER_SIZE bytes (default 4096) from OFFSET on, STEP_SIZE (default the\n"
           "buffer size) apart, wrapping at the end of the image; or, with --random SEED,\n"
           "at pseudo-random multiples of the buffer size.\n");
}

/* xorshift64*: the next pseudo-random number of the --random sequence. */
static uint64_t next_random(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static uint64_t next_offset(struct bench *b)
{
    uint64_t off = b->offset;
    if (b->random) {
        uint64_t slots = b->size >= b->bufsize ? (b->size - b->bufsize) / b->bufsize + 1 : 1;
        b->offset = next_random(&b->rng) % slots * b->bufsize;
    } else {
        b->offset += b->step;
        b->offset = b->size ? b->offset % b->size : 0;
    }
    return off;
}

static int do_flush(struct bench *b)
{
    int r = qk_flush(b->img);
    if (r)
        cli_error("Failed flush request: %s", cli_io_strerror(r));
    return r;
}

static int run(struct bench *b)
{
    for (int done = 1; done <= b->count; done++) {
        uint64_t off = next_offset(b);
        if (off > b->size || b->bufsize > b->size - off) {   /* blk_check_byte_request */
            cli_error("Failed request: %s", cli_io_strerror(-EIO));
            return -EIO;
        }
        int r = b->write ? qk_pwrite(b->img, b->buf, b->bufsize, off)
                         : qk_pread(b->img, b->buf, b->bufsize, off);
        if (r) {
            cli_error("Failed request: %s", cli_io_strerror(r));
            return r;
        }
        if (b->write && b->writethrough && (r = do_flush(b)))
            return r;
        if (b->flush_interval && (b->count - done) % b->flush_interval == 0 && (r = do_flush(b)))
            return r;
    }
    return 0;
}

/* qemu_strtoul() with base 0 and no suffix, at most MAX: the value, or -1
 * after qemu-img's "Invalid NAME specified". */
static int64_t count_arg(const char *name, const char *s, unsigned long max)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 0);
    if (errno || end == s || *end || v > max) {
        cli_error("Invalid %s specified", name);
        return -1;
    }
    return (int64_t)v;
}

/* qemu's cvtnum_full(): a size in [MIN, MAX] or -1 after its message. */
static int64_t number(const char *name, const char *s, int64_t min, int64_t max)
{
    int64_t v = cli_cvtnum(name, s);
    if (v < 0)
        return -1;
    if (v < min || v > max) {
        cli_error("Invalid %s specified. Must be between %lld and %lld.", name, (long long)min,
                  (long long)max);
        return -1;
    }
    return v;
}

static int cache_mode(const char *s, unsigned *flags, int *writethrough)
{
    if (!strcmp(s, "writeback")) {
        return 0;
    } else if (!strcmp(s, "writethrough")) {
        *writethrough = 1;
        return 0;
    } else if (!strcmp(s, "unsafe")) {
        *flags |= QK_OPEN_UNSAFE;
        return 0;
    } else if (!strcmp(s, "none") || !strcmp(s, "directsync")) {
        cli_error("Cache mode '%s' (O_DIRECT) is not supported", s);
        return -1;
    }
    cli_error("Invalid cache mode");
    return -1;
}

int cmd_bench(int argc, char **argv)
{
    enum { OPT_FLUSH = 256, OPT_PATTERN, OPT_NO_DRAIN, OPT_RANDOM };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "flush-interval", required_argument, NULL, OPT_FLUSH },
        { "pattern", required_argument, NULL, OPT_PATTERN },
        { "no-drain", no_argument, NULL, OPT_NO_DRAIN },
        { "force-share", no_argument, NULL, 'U' },
        { "random", required_argument, NULL, OPT_RANDOM },
        { NULL, 0, NULL, 0 },
    };
    struct bench b = { .count = 75000, .depth = 64, .bufsize = 4096 };
    const char *fmt = NULL;
    unsigned flags = 0;
    int64_t v, pattern = 0;
    int c, native = 0;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":hc:d:f:ni:o:qs:S:t:wU", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': bench_help(); return 0;
        case 'c':
            if ((v = count_arg("request count", optarg, INT_MAX)) < 0)
                return 1;
            b.count = (int)v;
            break;
        case 'd':
            if ((v = count_arg("queue depth", optarg, INT_MAX)) < 0)
                return 1;
            if (v == 0) {   /* qemu-img 7.2 takes 0 and then waits for ever */
                cli_error("Invalid queue depth specified");
                return 1;
            }
            b.depth = (int)v;
            break;
        case 'f': fmt = optarg; break;
        case 'n': native = 1; break;
        case 'i':
            if (strcmp(optarg, "threads") && strcmp(optarg, "native") && strcmp(optarg, "io_uring")) {
                cli_error("Invalid aio option: %s", optarg);
                return 1;
            }
            native = !strcmp(optarg, "native");
            break;
        case 'o':
            if ((v = cli_cvtnum("offset", optarg)) < 0)
                return 1;
            b.offset = (uint64_t)v;
            break;
        case 'q': break;
        case 's':
            if ((v = number("buffer size", optarg, 0, INT_MAX)) < 0)
                return 1;
            b.bufsize = (uint64_t)v;
            break;
        case 'S':
            if ((v = number("step_size", optarg, 0, INT_MAX)) < 0)
                return 1;
            b.step = (uint64_t)v;
            break;
        case 't':
            if (cache_mode(optarg, &flags, &b.writethrough))
                return 1;
            break;
        case 'w': b.write = 1; break;
        case 'U': flags |= QK_OPEN_FORCE_SHARE; break;
        case OPT_FLUSH:
            if ((v = count_arg("flush interval", optarg, INT_MAX)) < 0)
                return 1;
            b.flush_interval = (int)v;
            break;
        case OPT_PATTERN:
            if ((pattern = count_arg("pattern byte", optarg, 0xff)) < 0)
                return 1;
            break;
        case OPT_NO_DRAIN: break;
        case OPT_RANDOM:
            if ((v = cli_cvtnum("random seed", optarg)) < 0)
                return 1;
            b.random = 1;
            b.rng = (uint64_t)v * 0x9e3779b97f4a7c15ull + 1;   /* never 0 */
            break;
        case ':': return cli_bad_option(argv, optind, 1);
        default: return cli_bad_option(argv, optind, 0);
        }
    }
    if (optind != argc - 1)
        return cli_usage_error("Expecting one image file name");
    if (!b.write && b.flush_interval) {
        cli_error("--flush-interval is only available in write tests");
        return 1;
    }
    if (b.flush_interval && b.flush_interval < b.depth) {
        cli_error("Flush interval can't be smaller than depth");
        return 1;
    }
    if (native) {   /* only with -t none or directsync, which we refuse */
        cli_error("Could not open '%s': aio=native was specified, but it requires cache.direct=on, "
                  "which was not specified.", argv[optind]);
        return 1;
    }
    if (b.write)
        flags |= QK_OPEN_RDWR;
    if (cli_open_image(&b.img, argv[optind], fmt, flags) < 0)
        return 1;
    b.size = qk_size(b.img);
    if (!b.step)
        b.step = b.bufsize;
    if (b.random)
        next_offset(&b);   /* the first request at a random place too */
    printf("Sending %d %s requests, %d bytes each, %d in parallel (starting at offset %llu, step size %d)\n",
           b.count, b.write ? "write" : "read", (int)b.bufsize, b.depth, (unsigned long long)b.offset,
           (int)b.step);
    if (b.flush_interval)
        printf("Sending flush every %d requests\n", b.flush_interval);
    b.buf = malloc(b.bufsize ? b.bufsize : 1);
    if (!b.buf)
        abort();
    memset(b.buf, (int)pattern, b.bufsize);

    struct timeval t1, t2;
    gettimeofday(&t1, NULL);
    int r = run(&b);
    gettimeofday(&t2, NULL);
    if (!r)
        printf("Run completed in %3.3f seconds.\n",
               (double)(t2.tv_sec - t1.tv_sec) + (double)(t2.tv_usec - t1.tv_usec) / 1000000);
    free(b.buf);
    int cr = qk_close(b.img);
    if (!r && cr)
        cli_error("Failed to close the image: %s", cli_io_strerror(cr));
    return r || cr ? 1 : 0;
}
