/*
 * imgcommon.c - qemu-img conventions shared by the image subcommands:
 * usage errors, --output, qemu-img's cvtnum (on util.c's qemu_strtosz), size printing
 * (size_to_str) and opening an image with qemu-img's error text.
 */
#include "imgcommon.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "util.h"

int cli_usage_error(const char *fmt, ...)
{
    va_list ap;
    fputs("qcowkit: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nTry 'qcowkit --help' for more information\n", stderr);
    return 1;
}

int cli_bad_option(char **argv, int optind_after, int missing_arg)
{
    const char *opt = argv[optind_after - 1];
    if (missing_arg)
        return cli_usage_error("missing argument for option '%s'", opt);
    return cli_usage_error("unrecognized option '%s'", opt);
}

int cli_parse_output(const char *arg, enum cli_output *out)
{
    if (!strcmp(arg, "json")) {
        *out = CLI_OUTPUT_JSON;
    } else if (!strcmp(arg, "human")) {
        *out = CLI_OUTPUT_HUMAN;
    } else {
        cli_error("--output must be used with human or json as argument.");
        return -1;
    }
    return 0;
}

/* ---- sizes -------------------------------------------------------------- */

int64_t cli_cvtnum(const char *name, const char *s)
{
    uint64_t v;
    int r = cli_parse_size(s, &v);
    if (r == -EINVAL) {
        cli_error("Invalid %s specified. You may use k, M, G, T, P or E suffixes for", name);
        cli_error("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
        return -1;
    }
    if (r || v > INT64_MAX) {
        cli_error("Invalid %s specified. Must be between 0 and %lld.", name,
                  (long long)INT64_MAX);
        return -1;
    }
    return (int64_t)v;
}

const char *cli_size_to_str(uint64_t val, char *buf, size_t len)
{
    static const char *const suffixes[] = { "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei" };
    int e;
    /* The unit switches once the number reaches 1000 of it. */
    frexp((double)val / (1000.0 / 1024.0), &e);
    int i = (e - 1) / 10;
    if (i < 0)
        i = 0;
    if (i > 6)
        i = 6;
    snprintf(buf, len, "%0.3g %sB", (double)val / (double)(1ull << (i * 10)), suffixes[i]);
    return buf;
}

/* ---- opening ------------------------------------------------------------ */

int cli_format_flags(const char *fmt, unsigned *flags)
{
    if (!fmt)
        return 0;
    if (!strcmp(fmt, "qcow2"))
        *flags |= QK_OPEN_FMT_QCOW2;
    else if (!strcmp(fmt, "raw"))
        *flags |= QK_OPEN_FMT_RAW;
    else
        return -1;
    return 0;
}

static void print_warnings(const qk_image *img)
{
    const char *w = qk_warnings(img);
    while (w && *w) {
        const char *nl = strchr(w, '\n');
        int n = nl ? (int)(nl - w) : (int)strlen(w);
        fprintf(stderr, "qcowkit: %s%.*s\n", strncmp(w, "warning: ", 9) ? "warning: " : "", n, w);
        w += n + (nl != NULL);
    }
}

int cli_open_image(qk_image **out, const char *path, const char *fmt, unsigned flags)
{
    qk_image *img;
    int r;

    *out = NULL;
    if (cli_format_flags(fmt, &flags)) {
        cli_error("Could not open '%s': Unknown driver '%s'", path, fmt);
        return -1;
    }
    r = qk_image_new(&img);
    if (r) {
        cli_error("Could not open '%s': %s", path, qk_strerror(r));
        return -1;
    }
    r = qk_open(img, path, flags);
    if (r) {
        const char *msg = qk_errmsg(img);
        cli_error("Could not open '%s': %s", path, *msg ? msg : qk_strerror(r));
        qk_close(img);
        return -1;
    }
    print_warnings(img);
    *out = img;
    return 0;
}
