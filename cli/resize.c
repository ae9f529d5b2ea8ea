/*
 * resize.c - `qcowkit resize [--shrink] [-f FMT] [-q] IMG [+|-]SIZE`: change
 * the virtual size, as `qemu-img resize` (7.2) does, with its messages and
 * exit codes. Persistent bitmaps are resized with the image; the library
 * refuses while one of them is inconsistent.
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "imgcommon.h"
#include "util.h"

static void size_error(void)
{
    cli_error("Parameter 'size' expects a non-negative number below 2^64\n"
              "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
              "and exabytes, respectively.");
}

int cmd_resize(int argc, char **argv)
{
    enum { OPT_SHRINK = 256 };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "shrink", no_argument, NULL, OPT_SHRINK },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL;
    int quiet = 0, shrink = 0, c;

    if (argc < 3) {
        cli_usage_error("Not enough arguments");
        return 1;
    }
    /* The size goes first, so that a negative size is not taken for an
     * option (qemu-img does the same). */
    const char *size_arg = argv[--argc];
    optind = 1;
    while ((c = getopt_long(argc, argv, ":hf:q", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            printf("usage: qcowkit resize [--shrink] [-f FMT] [-q] FILENAME [+|-]SIZE\n\n"
                   "Change the virtual size of FILENAME. Shrinking needs --shrink and drops\n"
                   "the data past the new end; persistent bitmaps follow the new size.\n");
            return 0;
        case 'f':
            fmt = optarg;
            break;
        case 'q':
            quiet = 1;
            break;
        case OPT_SHRINK:
            shrink = 1;
            break;
        default:
            return cli_bad_option(argv, optind, c == ':');
        }
    }
    if (optind != argc - 1) {
        cli_usage_error("Expecting image file name and size");
        return 1;
    }
    const char *path = argv[optind];
    int relative = 0;
    if (size_arg[0] == '+' || size_arg[0] == '-')
        relative = size_arg[0] == '+' ? 1 : -1;
    uint64_t n;
    if (cli_parse_size(size_arg + (relative != 0), &n) < 0) {
        size_error();
        return 1;
    }

    qk_image *img;
    if (cli_open_image(&img, path, fmt, QK_OPEN_RDWR) < 0)
        return 1;
    uint64_t cur = qk_size(img);
    int64_t target;
    if (relative > 0)
        target = (int64_t)(cur + n);
    else if (relative < 0)
        target = (int64_t)cur - (int64_t)n;
    else
        target = (int64_t)n;
    int rc = 0;
    if (target <= 0) {
        cli_error("New image size must be positive");
        rc = 1;
    } else if ((uint64_t)target < cur && !shrink) {
        cli_error("Use the --shrink option to perform a shrink operation.");
        fprintf(stderr, "qcowkit: warning: Shrinking an image will delete all data beyond the shrunken "
                        "image's end. Before performing such an operation, make sure there is no "
                        "important data there.\n");
        rc = 1;
    } else if (qk_resize(img, (uint64_t)target, QK_RESIZE_SHRINK) < 0) {
        cli_error("%s", qk_errmsg(img));
        rc = 1;
    }
    if (qk_close(img) < 0 && rc == 0) {
        cli_error("Could not close the image");
        rc = 1;
    }
    if (rc == 0 && !quiet)
        printf("Image resized.\n");
    return rc;
}
