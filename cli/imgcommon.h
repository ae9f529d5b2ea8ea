/*
 * imgcommon.h - helpers shared by the image subcommands (info, map, create
 * and any other that wants qemu-img's conventions).
 *
 * Everything here prints qemu-img's messages with the "qcowkit: " prefix and
 * returns a value the caller can pass on as the exit code or test for < 0.
 */
#ifndef QK_CLI_IMGCOMMON_H
#define QK_CLI_IMGCOMMON_H

#include <stddef.h>
#include <stdint.h>

#include "qcowkit.h"

enum cli_output { CLI_OUTPUT_HUMAN, CLI_OUTPUT_JSON };

/* Print "qcowkit: MSG" and the "Try 'qcowkit --help'" hint; returns 1. */
int cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* getopt_long helpers for an optstring starting with ':': report an unknown
 * option or a missing argument the way qemu-img does; return 1. */
int cli_bad_option(char **argv, int optind_after, int missing_arg);

/* Parse an --output argument ("human" or "json"); on anything else print
 * qemu-img's message and return -1. */
int cli_parse_output(const char *arg, enum cli_output *out);

/* qemu-img's cvtnum(): parse S as a size in [0, INT64_MAX] and print
 * "Invalid NAME specified..." on failure. Returns the value or -1. */
int64_t cli_cvtnum(const char *name, const char *s);

/* Map "-f FMT" to qk_open flags: NULL probes, "qcow2" and "raw" force the
 * format. Returns 0, or -1 when we do not know FMT. */
int cli_format_flags(const char *fmt, unsigned *flags);

/* Open PATH read-only with FLAGS (QK_OPEN_*), printing
 * "qcowkit: Could not open 'PATH': <message>" on failure. FMT may be NULL.
 * Open-time warnings are printed to stderr. Returns 0 or -1. */
int cli_open_image(qk_image **out, const char *path, const char *fmt, unsigned flags);

/* qemu's size_to_str(): "196 KiB", "1.29 MiB", "0 B" (3 significant digits,
 * the unit switches when the number reaches 1000). BUF of at least 32 bytes. */
const char *cli_size_to_str(uint64_t val, char *buf, size_t len);

/* info.c: qemu's snapshot list ("Snapshot list:", the ID/TAG/VM SIZE/DATE/
 * VM CLOCK/ICOUNT header and one row each); nothing without snapshots. */
void cli_print_snapshots(const qk_info *in);

#endif
