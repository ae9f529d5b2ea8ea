/*
 * util.c - helpers shared by qcowkit subcommands (see util.h): qemu's size
 * syntax (qemu_strtosz, QEMU 7.2 util/cutils.c), qemu-img's progress meter
 * (util/qemu-progress.c), error words for a handle, and zero detection.
 *
 * Invariants:
 *  1. cli_parse_size accepts exactly what qemu-img/qemu-io 7.2 accept and
 *     returns the same value (checked by tests/cli/io.bats against qemu-io).
 *  2. Nothing here keeps global state.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "util.h"

/* Multiplier of a size suffix, or 0 if C is not one. */
static uint64_t suffix_mul(char c)
{
    switch (toupper((unsigned char)c)) {
    case 'B': return 1;
    case 'K': return UINT64_C(1) << 10;
    case 'M': return UINT64_C(1) << 20;
    case 'G': return UINT64_C(1) << 30;
    case 'T': return UINT64_C(1) << 40;
    case 'P': return UINT64_C(1) << 50;
    case 'E': return UINT64_C(1) << 60;
    }
    return 0;
}

/* strtoull with qemu_strtou64's error rules: no digits is -EINVAL. */
static int parse_u64(const char *s, char **end, int base, uint64_t *val)
{
    errno = 0;
    *val = strtoull(s, end, base);
    if (errno == ERANGE)
        return -ERANGE;
    if (*end == s)
        return -EINVAL;
    return 0;
}

int cli_parse_size(const char *s, uint64_t *out)
{
    char *end;
    uint64_t val, valf = 0, mul;
    int hex = 0;
    int rc = parse_u64(s, &end, 10, &val);

    if (rc)
        return rc;
    if (memchr(s, '-', (size_t)(end - s)))
        return -EINVAL;
    if (val == 0 && (*end == 'x' || *end == 'X')) {
        /* Hex: reparse, and insist on no fraction. */
        rc = parse_u64(s, &end, 16, &val);
        if (rc)
            return rc;
        if (*end == '.')
            return -EINVAL;
        hex = 1;
    } else if (*end == '.') {
        /* A fraction; "1.k" works without digits, an exponent is refused. */
        char *f = end, *fend;
        double fraction;

        errno = 0;
        fraction = strtod(f, &fend);
        if (fend == f || errno) {
            end = f + 1;
        } else if (memchr(f, 'e', (size_t)(fend - f)) || memchr(f, 'E', (size_t)(fend - f))) {
            return -EINVAL;
        } else {
            end = fend;
            /* 64-bit fixed point; 1.0 (after rounding) wraps to 0 as in QEMU on x86-64. */
            valf = fraction < 1.0 ? (uint64_t)(fraction * 0x1p64) : 0;
        }
    }
    mul = suffix_mul(*end);
    if (mul) {
        if (hex)
            fprintf(stderr, "qcowkit: warning: Using a multiplier suffix on hex numbers is deprecated: %s\n", s);
        end++;
    } else {
        mul = 1;
    }
    if (mul == 1) {
        if (valf != 0)
            return -EINVAL; /* a fraction needs a scale */
    } else {
        /* 64.64 fixed point times mul, rounding .5 up. */
        unsigned __int128 whole = (unsigned __int128)val * mul;
        unsigned __int128 frac = (unsigned __int128)valf * mul;
        unsigned __int128 r = whole + (frac >> 64) + ((uint64_t)frac >> 63);
        if (r >> 64)
            return -ERANGE;
        val = (uint64_t)r;
    }
    if (*end)
        return -EINVAL;
    if (val > INT64_MAX)
        return -ERANGE;
    *out = val;
    return 0;
}

void cli_progress_init(cli_progress *p, int enabled, float min_skip)
{
    p->enabled = enabled;
    p->current = 0;
    p->last_print = 0;
    p->min_skip = min_skip;
}

void cli_progress_print(cli_progress *p, float delta, int max)
{
    float current = max == 0 ? delta : p->current + delta / 100 * max;

    if (!p->enabled)
        return;
    p->current = current;
    if (current > p->last_print + p->min_skip || current < p->last_print - p->min_skip ||
        current == 0 || current == 100) {
        p->last_print = current;
        printf("    (%3.2f/100%%)\r", current);
        fflush(stdout);
    }
}

void cli_progress_end(cli_progress *p)
{
    if (p->enabled)
        printf("\n");
}


const char *cli_errstr(const qk_image *img, int code)
{
    const char *m = img ? qk_errmsg(img) : NULL;
    return m && *m ? m : qk_strerror(code);
}


const char *cli_io_strerror(int code)
{
    return strerror(code > -1000 ? -code : EIO);
}

void cli_io_detail(const qk_image *img, int code)
{
    const char *m = img ? qk_errmsg(img) : NULL;

    if (code <= -1000 && m && *m)
        cli_error("%s", m);
}

int cli_is_zero(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    size_t head = len < 16 ? len : 16;

    for (size_t i = 0; i < head; i++)
        if (p[i])
            return 0;
    /* The first 16 bytes are zero, so the buffer is zero iff it equals itself shifted by 16. */
    return len <= 16 || !memcmp(p, p + 16, len - 16);
}

void cli_ratelimit_init(cli_ratelimit *rl, uint64_t rate)
{
    rl->rate = rate;
    rl->bytes = 0;
    clock_gettime(CLOCK_MONOTONIC, &rl->start);
}

int cli_ratelimit_take(cli_ratelimit *rl, uint64_t n, struct timespec *due)
{
    if (!rl->rate)
        return 0;
    double t = (double)rl->bytes / (double)rl->rate;
    rl->bytes += n;
    *due = rl->start;
    due->tv_sec += (time_t)t;
    due->tv_nsec += (long)((t - (double)(time_t)t) * 1e9);
    if (due->tv_nsec >= 1000000000L) {
        due->tv_sec++;
        due->tv_nsec -= 1000000000L;
    }
    return 1;
}

void cli_sleep_until(const struct timespec *due)
{
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, due, NULL) == EINTR)
        ;
}
