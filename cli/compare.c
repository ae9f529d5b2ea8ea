/*
 * compare.c - `qcowkit compare [-f FMT] [-F FMT] [-s] [-p] [-q] [-U] A B`:
 * compare the guest contents of two images the way qemu-img 7.2 does
 * (img_compare in qemu-img.c), with its messages and exit codes.
 *
 * Exit codes: 0 identical, 1 different (or usage error), 2 an image could
 * not be opened, 3 block status failed, 4 a read failed.
 *
 * Invariants:
 *  1. Ranges both images report as zero are never read; a range allocated
 *     in one image only is read from that image and must be zero; a range
 *     allocated in both is read from both (at most 2 MiB at a time).
 *  2. A mismatch is reported at the first differing 512-byte sector of the
 *     chunk being compared (qemu's compare_buffers/find_nonzero), which is
 *     the first differing sector of the images.
 *  3. Without -s, images of different sizes are compared over the common
 *     part, then "Warning: Image size mismatch!" and the extra part of the
 *     larger one must read as zeros. With -s, different sizes or a
 *     different allocation status at any offset is a mismatch.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "imgcommon.h"
#include "util.h"

#define CMP_BUF_SIZE (2u << 20) /* qemu-img's IO_BUF_SIZE */
#define SECTOR 512u

/* Our flag for an extent that reaches the end of the image (QEMU's
 * BDRV_BLOCK_EOF), outside the QK_BS_* bits. */
#define CMP_EOF 0x10000u

/* The status bits that qemu-img compare -s compares. */
#define STRICT_MASK (QK_BS_PRESENT | QK_BS_ZERO | QK_BS_DATA | QK_BS_OFFSET_VALID | CMP_EOF)

typedef struct cmp_side {
    qk_image *img;
    const char *name;
    uint64_t size;
} cmp_side;

typedef struct cmp_state {
    cmp_side s[2];
    int quiet;
    unsigned char *buf[2];
    cli_progress progress;
    uint64_t progress_base;
} cmp_state;

#define qprintf(st, ...) do { if (!(st)->quiet) printf(__VA_ARGS__); } while (0)

/* Offset of the first 512-byte sector of BUF (relative to its start) holding a
 * non-zero byte, or -1 (qemu's find_nonzero). */
static int64_t find_nonzero(const unsigned char *buf, uint64_t n)
{
    for (uint64_t i = 0; i < n; i += SECTOR)
        if (!cli_is_zero(buf + i, n - i < SECTOR ? n - i : SECTOR))
            return (int64_t)i;
    return -1;
}

/* Offset of the first differing sector of A and B, or -1 if they are equal. */
static int64_t find_diff(const unsigned char *a, const unsigned char *b, uint64_t n)
{
    if (!memcmp(a, b, n))
        return -1;
    for (uint64_t i = 0; i < n; i += SECTOR)
        if (memcmp(a + i, b + i, n - i < SECTOR ? n - i : SECTOR))
            return (int64_t)i;
    return -1;
}

/* Block status with qemu's meaning: returns 0 and sets *flags, *len. */
static int status_of(cmp_side *sd, uint64_t off, uint64_t len, unsigned *flags, uint64_t *plen)
{
    qk_extent e;
    int rc = qk_block_status(sd->img, off, len, &e);

    if (rc < 0 || e.length == 0) {
        cli_error("Sector allocation test failed for %s", sd->name);
        return 3;
    }
    *flags = e.flags;
    if (!(e.flags & QK_BS_PRESENT))
        *flags |= QK_BS_ZERO; /* unallocated in the whole chain reads as zeros */
    *plen = e.length < len ? e.length : len;
    if (off + *plen == sd->size)
        *flags |= CMP_EOF;
    return 0;
}

static int read_side(cmp_side *sd, void *buf, uint64_t off, uint64_t len)
{
    int rc = qk_pread(sd->img, buf, len, off);
    if (rc < 0) {
        cli_error("Error while reading offset %llu of %s: %s", (unsigned long long)off, sd->name,
                  cli_io_strerror(rc));
        cli_io_detail(sd->img, rc);
        return 4;
    }
    return 0;
}

/* The LEN bytes of SD at OFF must be zero (qemu's check_empty_sectors). */
static int check_empty(cmp_state *st, cmp_side *sd, uint64_t off, uint64_t len)
{
    int64_t idx;
    int rc = read_side(sd, st->buf[0], off, len);

    if (rc)
        return rc;
    idx = find_nonzero(st->buf[0], len);
    if (idx >= 0) {
        qprintf(st, "Content mismatch at offset %llu!\n", (unsigned long long)(off + (uint64_t)idx));
        return 1;
    }
    return 0;
}

static void advance(cmp_state *st, uint64_t chunk)
{
    cli_progress_print(&st->progress, (float)chunk / (float)st->progress_base * 100, 100);
}

/* Compare [0, min size). Returns 0 or an exit code. */
static int compare_common(cmp_state *st, int strict, uint64_t *offp)
{
    uint64_t total = st->s[0].size < st->s[1].size ? st->s[0].size : st->s[1].size;
    uint64_t off = 0;
    int rc;

    while (off < total) {
        unsigned f[2];
        uint64_t n[2], chunk;

        for (int i = 0; i < 2; i++)
            if ((rc = status_of(&st->s[i], off, st->s[i].size - off, &f[i], &n[i])))
                return rc;
        chunk = n[0] < n[1] ? n[0] : n[1];
        if (chunk > total - off)
            chunk = total - off;
        if (strict && (f[0] & STRICT_MASK) != (f[1] & STRICT_MASK)) {
            qprintf(st, "Strict mode: Offset %llu block status mismatch!\n", (unsigned long long)off);
            return 1;
        }
        int alloc0 = !!(f[0] & QK_BS_PRESENT), alloc1 = !!(f[1] & QK_BS_PRESENT);
        if ((f[0] & QK_BS_ZERO) && (f[1] & QK_BS_ZERO)) {
            /* both read as zeros */
        } else if (alloc0 == alloc1) {
            if (alloc0) {
                if (chunk > CMP_BUF_SIZE)
                    chunk = CMP_BUF_SIZE;
                for (int i = 0; i < 2; i++)
                    if ((rc = read_side(&st->s[i], st->buf[i], off, chunk)))
                        return rc;
                int64_t idx = find_diff(st->buf[0], st->buf[1], chunk);
                if (idx >= 0) {
                    qprintf(st, "Content mismatch at offset %llu!\n", (unsigned long long)(off + (uint64_t)idx));
                    return 1;
                }
            }
        } else {
            if (chunk > CMP_BUF_SIZE)
                chunk = CMP_BUF_SIZE;
            if ((rc = check_empty(st, &st->s[alloc0 ? 0 : 1], off, chunk)))
                return rc;
        }
        off += chunk;
        advance(st, chunk);
    }
    *offp = off;
    return 0;
}

/* The part of the larger image past the smaller one must read as zeros. */
static int compare_tail(cmp_state *st, uint64_t off)
{
    cmp_side *over = &st->s[st->s[0].size > st->s[1].size ? 0 : 1];
    int rc;

    qprintf(st, "Warning: Image size mismatch!\n");
    while (off < over->size) {
        unsigned f;
        uint64_t chunk;

        if ((rc = status_of(over, off, over->size - off, &f, &chunk)))
            return rc;
        if ((f & QK_BS_PRESENT) && !(f & QK_BS_ZERO)) {
            if (chunk > CMP_BUF_SIZE)
                chunk = CMP_BUF_SIZE;
            if ((rc = check_empty(st, over, off, chunk)))
                return rc;
        }
        off += chunk;
        advance(st, chunk);
    }
    return 0;
}

static void compare_usage(FILE *f)
{
    fprintf(f, "usage: qcowkit compare [-f FMT] [-F FMT] [-s] [-p] [-q] [-U] A B\n"
               "Compare the guest contents of images A and B.\n\n"
               "  -f FMT   format of A: qcow2 or raw (default: probe)\n"
               "  -F FMT   format of B: qcow2 or raw (default: probe)\n"
               "  -s       strict: images of different sizes or allocation differ\n"
               "  -p       show progress\n"
               "  -q       quiet: print nothing, only set the exit status\n"
               "  -U       force share: open images that others are writing\n\n"
               "Exit status: 0 identical, 1 different, 2 open error, 3 allocation query error,\n"
               "4 read error.\n");
}

int cmd_compare(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt[2] = { NULL, NULL };
    int strict = 0, progress = 0, c, rc;
    unsigned flags = 0;
    cmp_state st;
    uint64_t off = 0;

    memset(&st, 0, sizeof st);
    while ((c = getopt_long(argc, argv, ":hf:F:T:pqsU", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': compare_usage(stdout); return 0;
        case 'f': fmt[0] = optarg; break;
        case 'F': fmt[1] = optarg; break;
        case 'T': break; /* cache mode: accepted for qemu-img compatibility, no effect */
        case 'p': progress = 1; break;
        case 'q': st.quiet = 1; break;
        case 's': strict = 1; break;
        case 'U': flags |= QK_OPEN_FORCE_SHARE; break;
        default: return cli_bad_option(argv, optind, c == ':');
        }
    }
    if (st.quiet)
        progress = 0;
    if (optind != argc - 2)
        return cli_usage_error("Expecting two image file names");

    for (int i = 0; i < 2; i++) {
        st.s[i].name = argv[optind + i];
        if (cli_open_image(&st.s[i].img, st.s[i].name, fmt[i], flags) < 0) {
            rc = 2;
            goto out;
        }
        st.s[i].size = qk_size(st.s[i].img);
    }
    for (int i = 0; i < 2; i++) {
        st.buf[i] = malloc(CMP_BUF_SIZE);
        if (!st.buf[i]) {
            cli_error("%s", strerror(ENOMEM));
            rc = 2;
            goto out;
        }
    }
    st.progress_base = st.s[0].size > st.s[1].size ? st.s[0].size : st.s[1].size;
    if (st.progress_base == 0)
        st.progress_base = 1;
    cli_progress_init(&st.progress, progress, 2.0f);
    cli_progress_print(&st.progress, 0, 100);

    if (strict && st.s[0].size != st.s[1].size) {
        qprintf(&st, "Strict mode: Image size mismatch!\n");
        rc = 1;
    } else if ((rc = compare_common(&st, strict, &off)) == 0 && st.s[0].size != st.s[1].size) {
        rc = compare_tail(&st, off);
    }
    if (rc == 0)
        qprintf(&st, "Images are identical.\n");
    cli_progress_end(&st.progress);
out:
    free(st.buf[0]);
    free(st.buf[1]);
    qk_close(st.s[0].img);
    qk_close(st.s[1].img);
    return rc;
}
