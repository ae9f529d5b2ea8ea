/*
 * amend.c - `qcowkit amend [-f FMT] [-p] [-q] [-t CACHE] [--force] -o OPTIONS
 * FILENAME`: qemu-img 7.2's amend (img_amend + qcow2_amend_options' option
 * checks) on top of qk_amend(): the same messages and exit codes.
 *
 * The -o list is checked item by item in qemu's order: a name that is not an
 * amend option is "Invalid parameter", with qemu's hint when it is a
 * creation option; typed values use the creation parser (cli/create.c).
 * compat, backing_file/backing_fmt (must stay as they are), data_file and
 * data_file_raw are checked here; the rest is the library's. Differences:
 * encrypt.* options are refused (qcowkit has no encryption), the progress
 * meter (-p) shows only its start and end.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "imgcommon.h"
#include "util.h"
#include "qcowkit.h"

static const char *const amend_names[] = {
    "backing_file", "backing_fmt", "compat", "data_file", "data_file_raw", "lazy_refcounts",
    "refcount_bits", "size", NULL,
};
/* qcow2 creation options that amend does not take (the hint's condition). */
static const char *const create_only_names[] = {
    "cluster_size", "extended_l2", "preallocation", "compression_type", "nocow",
    "extent_size_hint", NULL,
};

static int in_list(const char *const *list, const char *name, size_t len)
{
    for (size_t i = 0; list[i]; i++)
        if (strlen(list[i]) == len && !strncmp(list[i], name, len))
            return 1;
    return 0;
}

static void amend_help(void)
{
    printf("usage: qcowkit amend [-f FMT] [-p] [-q] [-t CACHE] [--force] -o OPTIONS FILENAME\n"
           "\n"
           "Change options of an existing qcow2 image: compat=0.10|1.1, lazy_refcounts=on|off,\n"
           "refcount_bits=N, size=SIZE. Use -o help for the list.\n");
}

static int print_amend_option_help(const char *fmt)
{
    if (strcmp(fmt, "qcow2")) {
        cli_error("Format driver '%s' does not support option amendment", fmt);
        return 1;
    }
    printf("Amend options for 'qcow2':\n"
           "  backing_file=<str>     - File name of a base image\n"
           "  backing_fmt=<str>      - Image format of the base image\n"
           "  compat=<str>           - Compatibility level (v2 [0.10] or v3 [1.1])\n"
           "  data_file=<str>        - File name of an external data file\n"
           "  data_file_raw=<bool (on/off)> - The external data file must stay valid as a raw image\n"
           "  lazy_refcounts=<bool (on/off)> - Postpone refcount updates\n"
           "  refcount_bits=<num>    - Width of a reference count entry in bits\n"
           "  size=<size>            - Virtual disk size\n");
    return 0;
}

/* The -o list as qemu parses it against the amend options: NULL after the
 * message of the first bad item. */
static struct create_args *parse_amend_options(const char *list)
{
    const char *p = list, *bad = NULL, *bad_item = NULL;
    size_t bad_len = 0;
    int all_create = 1;

    while (*p) {
        const char *name = p;
        size_t n = strcspn(p, "=,");
        if (p[n] != '=' && !strncmp(p, "no", 2) && n > 2) {
            name += 2;   /* "noNAME" is NAME=off */
            n -= 2;
        }
        if (!bad && !in_list(amend_names, name, n)) {
            bad = name;
            bad_item = p;
            bad_len = n;
        }
        if (!in_list(amend_names, name, n) && !in_list(create_only_names, name, n))
            all_create = 0;
        p = name + n;
        if (*p == '=')
            for (p++; *p && (*p != ',' || p[1] == ','); p++)
                if (*p == ',')
                    p++;   /* ",," is an escaped comma */
        if (*p == ',')
            p++;
    }
    if (!bad)
        return cli_options_parse("qcow2", list);
    /* The items before the bad name must parse (their errors come first). */
    char *head = strndup(list, (size_t)(bad_item - list));
    if (!head)
        abort();
    if (head[0] && head[strlen(head) - 1] == ',')
        head[strlen(head) - 1] = '\0';
    int has_head = head[0] != '\0';
    struct create_args *a = has_head ? cli_options_parse("qcow2", head) : NULL;
    free(head);
    if (has_head && !a)
        return NULL;
    cli_options_free(a);
    cli_error("Invalid parameter '%.*s'", (int)bad_len, bad);
    if (all_create)
        fputs("This option is only supported for image creation\n", stderr);
    return NULL;
}

static int str_differs(const char *a, const char *b)
{
    return (a == NULL) != (b == NULL) || (a && strcmp(a, b));
}

/* qcow2_amend_options' own checks of the parsed values into O. */
static int amend_values(struct create_args *a, qk_image *img, qk_amend_opts *o)
{
    const char *compat = cli_option_str(a, "compat"), *bf = cli_option_str(a, "backing_file");
    const char *bfmt = cli_option_str(a, "backing_fmt"), *df = cli_option_str(a, "data_file");
    qk_info *info = NULL;
    int rc = -1;

    if (compat && (!strcmp(compat, "0.10") || !strcmp(compat, "v2"))) {
        o->compat = 2;
    } else if (compat && (!strcmp(compat, "1.1") || !strcmp(compat, "v3"))) {
        o->compat = 3;
    } else if (compat) {
        cli_error("Unknown compatibility level %s", compat);
        return -1;
    }
    if (cli_option_str(a, "lazy_refcounts"))
        o->lazy_refcounts = (int)cli_option_num(a, "lazy_refcounts", 0);
    if (cli_option_str(a, "refcount_bits")) {
        uint64_t rb = cli_option_num(a, "refcount_bits", 16);
        o->refcount_bits = rb == 0 || rb > 64 ? 3 : (int)rb;   /* 3: reported as invalid */
    }
    o->size = cli_option_num(a, "size", 0);
    if (qk_get_info(img, &info) < 0) {
        cli_error("%s", qk_errmsg(img));
        return -1;
    }
    if (df && !info->data_file) {
        cli_error("data-file can only be set for images that use an external data file");
    } else if (df && strcmp(df, info->data_file)) {
        cli_error("Changing the name of the external data file is not supported");
    } else if (cli_option_num(a, "data_file_raw", 0) && !info->data_file_raw) {
        cli_error("data-file-raw cannot be set on existing images");
    } else if ((bf || bfmt) && (str_differs(bf, info->backing_file) || str_differs(bfmt, info->backing_format))) {
        cli_error("Cannot amend the backing file");
        fputs("You can use 'qemu-img rebase' instead.\n", stderr);
    } else {
        rc = 0;
    }
    qk_info_free(info);
    return rc;
}

static int amend(const char *filename, const char *fmt, const char *options, int progress)
{
    qk_amend_opts o = QK_AMEND_OPTS_INIT;
    struct create_args *a = NULL;
    qk_image *img;
    qk_info *info;
    cli_progress pr;
    int rc = 1, r;

    if (cli_open_image(&img, filename, fmt, QK_OPEN_RDWR) < 0)
        return 1;
    if ((r = qk_get_info(img, &info)) < 0) {
        cli_error("%s", cli_errstr(img, r));
        goto out;
    }
    const char *driver = info->format == QK_FMT_RAW ? "raw" : "qcow2";
    qk_info_free(info);
    if (cli_has_help_option(options)) {
        rc = print_amend_option_help(driver);
        goto out;
    }
    if (strcmp(driver, "qcow2")) {
        cli_error("Format driver '%s' does not support option amendment", driver);
        goto out;
    }
    if (!(a = parse_amend_options(options)) || amend_values(a, img, &o) < 0)
        goto out;
    cli_progress_init(&pr, progress, 1.0f);
    cli_progress_print(&pr, 0.f, 100);
    r = qk_amend(img, &o);
    if (r == 0)
        cli_progress_print(&pr, 100.f, 100);
    cli_progress_end(&pr);
    if (r < 0) {
        cli_error("%s", cli_errstr(img, r));
        goto out;
    }
    rc = 0;
out:
    cli_options_free(a);
    r = qk_close(img);
    if (r < 0 && rc == 0) {
        cli_error("Could not close the image: %s", qk_strerror(r));
        rc = 1;
    }
    return rc;
}

int cmd_amend(int argc, char **argv)
{
    enum { OPT_FORCE = 256 };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "force", no_argument, NULL, OPT_FORCE },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL, *cache = "writeback";
    char *options = NULL;
    int c, progress = 0, quiet = 0, rc = 1;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":ho:f:t:pq", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': amend_help(); free(options); return 0;
        case 'o':
            if (cli_add_options(&options, optarg))
                goto out;
            break;
        case 'f': fmt = optarg; break;
        case 't': cache = optarg; break;
        case 'p': progress = 1; break;
        case 'q': quiet = 1; break;
        case OPT_FORCE: break;
        case ':': rc = cli_bad_option(argv, optind, 1); goto out;
        default: rc = cli_bad_option(argv, optind, 0); goto out;
        }
    }
    if (!options) {
        rc = cli_usage_error("Must specify options (-o)");
        goto out;
    }
    if (quiet)
        progress = 0;
    if (fmt && cli_has_help_option(options)) {
        rc = print_amend_option_help(fmt);
        goto out;
    }
    if (optind != argc - 1) {
        cli_error("Expecting one image file name");
        goto out;
    }
    if (strcmp(cache, "writeback") && strcmp(cache, "writethrough") && strcmp(cache, "unsafe") &&
        strcmp(cache, "none") && strcmp(cache, "directsync")) {
        cli_error("Invalid cache option: %s", cache);
        goto out;
    }
    rc = amend(argv[optind], fmt, options, progress);
out:
    free(options);
    return rc;
}
