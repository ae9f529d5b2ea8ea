/*
 * measure.c - `qcowkit measure`: qemu-img 7.2's measure (img_measure): the
 * sizes a new image of format -O (default raw) with the -o options would
 * need, for the data of FILENAME or for an empty disk of --size bytes.
 * Arguments are checked in qemu-img's order, with its messages and exit
 * codes; the computation is qk_measure(). Printed as "required size: N",
 * "fully allocated size: N" and, when both sides can hold persistent
 * bitmaps, "bitmaps size: N", or as qemu's JSON with the same values.
 * Unlike qemu-img, -l (measure an internal snapshot) is refused.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "imgcommon.h"
#include "json.h"
#include "qcowkit.h"

static void measure_help(void)
{
    printf("usage: qcowkit measure [--output=human|json] [-O OUTPUT_FMT] [-o OPTIONS]\n"
           "                       [--size N | [-f FMT] [-U] FILENAME]\n"
           "\n"
           "Print the file size an image of OUTPUT_FMT (default raw) created with OPTIONS\n"
           "needs for the data of FILENAME, or for an empty disk of N bytes:\n"
           "'required size', 'fully allocated size' and, for a qcow2 v3 target and\n"
           "source, 'bitmaps size' (what convert --bitmaps copies).\n");
}

/* The qcow2 -o options into O, with qemu's messages for the values
 * qcow2_measure parses as strings. */
static int qcow2_target(struct create_args *a, qk_create_opts *o)
{
    const char *compat = cli_option_str(a, "compat"), *prealloc = cli_option_str(a, "preallocation");
    static const char *const modes[] = { "off", "metadata", "falloc", "full" };

    /* qcow2_opt_get_version_del(): unlike create, no "v2"/"v3" spellings */
    if (compat && !strcmp(compat, "0.10"))
        o->compat = 2;
    else if (compat && strcmp(compat, "1.1")) {
        cli_error("Invalid compatibility level: '%s'", compat);
        return -1;
    }
    if (prealloc) {
        o->preallocation = -1;
        for (int i = 0; i < 4; i++)
            if (!strcmp(prealloc, modes[i]))
                o->preallocation = i;
        if (o->preallocation < 0) {
            cli_error("invalid parameter value: %s", prealloc);
            return -1;
        }
    }
    uint64_t cs = cli_option_num(a, "cluster_size", 65536), rb = cli_option_num(a, "refcount_bits", 16);
    o->cluster_size = cs > UINT32_MAX ? 3 : (uint32_t)cs;   /* 3: reported as invalid */
    o->refcount_bits = rb > 64 ? 3 : (int)rb;
    o->extended_l2 = (int)cli_option_num(a, "extended_l2", 0);
    o->backing_file = cli_option_str(a, "backing_file");
    return 0;
}

static void print_result(const qk_measure_result *m, enum cli_output output)
{
    if (output == CLI_OUTPUT_HUMAN) {
        printf("required size: %llu\n", (unsigned long long)m->required);
        printf("fully allocated size: %llu\n", (unsigned long long)m->fully_allocated);
        if (m->has_bitmaps)
            printf("bitmaps size: %llu\n", (unsigned long long)m->bitmaps);
        return;
    }
    json *o = json_object();
    json_set(o, "required", json_uint(m->required));
    json_set(o, "fully-allocated", json_uint(m->fully_allocated));
    if (m->has_bitmaps)
        json_set(o, "bitmaps", json_uint(m->bitmaps));
    json_print(stdout, o);
    json_free(o);
}

/* Everything after the command line: open, parse -o, measure, print. */
static int measure(const char *filename, const char *fmt, unsigned flags, const char *out_fmt,
                   const char *options, int64_t size, enum cli_output output)
{
    qk_create_opts o = QK_CREATE_OPTS_INIT;
    qk_measure_result m;
    qk_image *src = NULL, *img = NULL;
    struct create_args *a = NULL;
    int rc = 1, r;

    if (filename && cli_open_image(&src, filename, fmt, flags) < 0)
        return 1;
    if (strcmp(out_fmt, "qcow2") && strcmp(out_fmt, "raw")) {
        cli_error("Unknown file format '%s'", out_fmt);
        goto out;
    }
    if (!(a = cli_options_parse(out_fmt, options))) {
        cli_error("Invalid options for file format '%s'", out_fmt);
        goto out;
    }
    o.format = strcmp(out_fmt, "raw") ? QK_FMT_QCOW2 : QK_FMT_RAW;
    o.size = size >= 0 ? (uint64_t)size : 0;
    if (o.format == QK_FMT_QCOW2 && qcow2_target(a, &o))
        goto out;
    if ((r = qk_image_new(&img))) {
        cli_error("%s", qk_strerror(r));
        goto out;
    }
    r = qk_measure(img, src, &o, &m);
    if (r) {
        cli_error("%s", *qk_errmsg(img) ? qk_errmsg(img) : qk_strerror(r));
        goto out;
    }
    print_result(&m, output);
    rc = 0;
out:
    cli_options_free(a);
    qk_close(img);
    qk_close(src);
    return rc;
}

int cmd_measure(int argc, char **argv)
{
    enum { OPT_OUTPUT = 256, OPT_SIZE };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "size", required_argument, NULL, OPT_SIZE },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL, *out_fmt = "raw", *snapshot = NULL, *filename = NULL;
    enum cli_output output = CLI_OUTPUT_HUMAN;
    unsigned flags = 0;
    int64_t size = -1;
    char *options = NULL;
    int c, rc = 1;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":hf:O:o:l:U", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': measure_help(); free(options); return 0;
        case 'f': fmt = optarg; break;
        case 'O': out_fmt = optarg; break;
        case 'o':
            if (cli_add_options(&options, optarg))
                goto out;
            break;
        case 'l': snapshot = optarg; break;
        case 'U': flags |= QK_OPEN_FORCE_SHARE; break;
        case OPT_OUTPUT:
            if (cli_parse_output(optarg, &output) < 0)
                goto out;
            break;
        case OPT_SIZE:
            if ((size = cli_cvtnum("image size", optarg)) < 0)
                goto out;
            break;
        case ':': rc = cli_bad_option(argv, optind, 1); goto out;
        default: rc = cli_bad_option(argv, optind, 0); goto out;
        }
    }
    if (argc - optind > 1) {
        cli_error("At most one filename argument is allowed.");
        goto out;
    }
    if (argc - optind == 1)
        filename = argv[optind];
    if (!filename && (fmt || snapshot)) {
        cli_error("--image-opts, -f, and -l require a filename argument.");
        goto out;
    }
    if (filename && size >= 0) {
        cli_error("--size N cannot be used together with a filename.");
        goto out;
    }
    if (!filename && size < 0) {
        cli_error("Either --size N or one filename must be specified.");
        goto out;
    }
    if (snapshot) {
        cli_error("Measuring an internal snapshot (-l) is not supported");
        goto out;
    }
    rc = measure(filename, fmt, flags, out_fmt, options, size, output);
out:
    free(options);
    return rc;
}
