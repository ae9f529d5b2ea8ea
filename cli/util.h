/*
 * util.h - small helpers shared by qcowkit subcommands: qemu-style size
 * parsing, the qemu-img progress meter, a byte rate limit, error words for a
 * handle, and zero detection in buffers. Usage errors, option errors and
 * opening an image by format name are in imgcommon.h. Owned by the convert/compare/io helper;
 * other subcommands may use it.
 */
#ifndef QK_CLI_UTIL_H
#define QK_CLI_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "qcowkit.h"

/*
 * Parse a size with qemu's rules (qemu_strtosz in QEMU 7.2, used by qemu-img
 * and qemu-io): decimal digits with an optional fraction, or 0x hex; an
 * optional suffix B, K, M, G, T, P, E (any case, powers of 1024); a fraction
 * needs a suffix other than B and is rounded to the nearest byte (.5 up).
 * A hex number with a suffix is accepted with qemu's deprecation warning on
 * stderr. Results above INT64_MAX are out of range.
 * Returns 0 and sets *out, -EINVAL for a malformed string, -ERANGE if too large.
 */
int cli_parse_size(const char *s, uint64_t *out);

/*
 * The qemu-img progress meter ("    (12.50/100%)\r" on stdout). Printing
 * happens when the value moved by more than min_skip percent since the last
 * print, or is 0 or 100. A disabled meter prints nothing.
 */
typedef struct cli_progress {
    int enabled;
    float current;
    float last_print;
    float min_skip;
} cli_progress;

void cli_progress_init(cli_progress *p, int enabled, float min_skip);
/* Add DELTA percent (of MAX, as qemu_progress_print does; MAX 100 = percent). */
void cli_progress_print(cli_progress *p, float delta, int max);
/* Final newline after the last progress line. */
void cli_progress_end(cli_progress *p);

/*
 * A byte rate limit (convert -r, commit -r): the bytes after the first B may
 * start at START + B / RATE seconds. Not locked: a threaded caller takes the
 * limit under its own lock and sleeps outside it.
 */
typedef struct cli_ratelimit {
    uint64_t rate;            /* bytes per second; 0 = no limit */
    uint64_t bytes;           /* accounted so far */
    struct timespec start;
} cli_ratelimit;

/* Start the clock of a limit of RATE bytes per second (0: no limit). */
void cli_ratelimit_init(cli_ratelimit *rl, uint64_t rate);
/* Account N more bytes; 1 and *DUE = when they may go, or 0 without a limit. */
int cli_ratelimit_take(cli_ratelimit *rl, uint64_t n, struct timespec *due);
/* Sleep until DUE (CLOCK_MONOTONIC); returns at once if it has passed. */
void cli_sleep_until(const struct timespec *due);

/* Words for the last failure on IMG: its message, or qk_strerror(code). */
const char *cli_errstr(const qk_image *img, int code);

/* QEMU's words for a failed read or write: strerror(-code) for -errno, and
 * "Input/output error" for the library's own codes (QEMU reports corrupt or
 * undecodable data as -EIO). */
const char *cli_io_strerror(int code);

/* For a library code, print what the handle says as "qcowkit: MSG" on
 * stderr, after the qemu-style message (QEMU has no such detail line). */
void cli_io_detail(const qk_image *img, int code);

/* 1 if the LEN bytes at BUF are all zero. */
int cli_is_zero(const void *buf, size_t len);

#endif
