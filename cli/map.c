/*
 * map.c - `qcowkit map`: qemu-img 7.2's map. Walks the image (with its
 * backing chain) through qk_block_status() and merges adjacent extents the
 * way qemu-img does: same depth, present, zero and data flags, same file, and
 * host offsets that continue each other.
 *
 * Output: JSON is qemu-img's hand-made array, one `{ "start": ... }` object
 * per line; human is the "Offset Length Mapped to File" table of the data
 * ranges, which refuses ranges whose host location is unknown (compressed).
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "imgcommon.h"
#include "qcowkit.h"

struct map_entry {
    uint64_t start, length, offset;
    int depth;
    int data, zero, present, has_offset;
    const char *filename;   /* only with has_offset */
};

static void map_help(void)
{
    printf("usage: qcowkit map [--output=human|json] [-f FMT] [--start-offset=OFFSET]\n"
           "                   [--max-length=LEN] [-U|--force-share] FILE\n"
           "\n"
           "Show how the guest range of FILE maps to host files, like qemu-img map.\n"
           "JSON lists every range with its depth in the backing chain and its\n"
           "present/zero/data flags (and host offset when known); human output lists\n"
           "the ranges that hold data. OFFSET and LEN take size suffixes (k, M, G, ...).\n");
}

static int mergeable(const struct map_entry *cur, const struct map_entry *next)
{
    if (cur->length == 0)
        return 0;
    if (cur->zero != next->zero || cur->data != next->data || cur->depth != next->depth ||
        cur->present != next->present || !cur->filename != !next->filename ||
        cur->has_offset != next->has_offset)
        return 0;
    if (cur->filename && strcmp(cur->filename, next->filename))
        return 0;
    if (cur->has_offset && cur->offset + cur->length != next->offset)
        return 0;
    return 1;
}

/* Print E (NEXT is the entry that follows, NULL for the last). Human output
 * folds zero and non-data ranges together by rewriting NEXT, as qemu-img. */
static int dump_entry(enum cli_output out, const struct map_entry *e, struct map_entry *next)
{
    if (out == CLI_OUTPUT_JSON) {
        printf("{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ", \"depth\": %d,"
               " \"present\": %s, \"zero\": %s, \"data\": %s",
               e->start, e->length, e->depth, e->present ? "true" : "false",
               e->zero ? "true" : "false", e->data ? "true" : "false");
        if (e->has_offset)
            printf(", \"offset\": %" PRIu64, e->offset);
        putchar('}');
        if (next)
            puts(",");
        return 0;
    }
    if (e->data && !e->has_offset) {
        cli_error("File contains external, encrypted or compressed clusters.");
        return -1;
    }
    if (e->data && !e->zero)
        printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", e->start, e->length,
               e->has_offset ? e->offset : 0, e->filename ? e->filename : "");
    if (next && (!next->data || next->zero)) {
        next->data = 0;
        next->zero = 1;
    }
    return 0;
}

static int block_status(qk_image *img, uint64_t offset, uint64_t len, struct map_entry *e)
{
    qk_extent x;
    int r = qk_block_status(img, offset, len, &x);
    if (r) {
        const char *msg = qk_errmsg(img);
        cli_error("Could not read file metadata: %s", *msg ? msg : qk_strerror(r));
        return -1;
    }
    memset(e, 0, sizeof *e);
    e->start = offset;
    e->length = x.length;
    e->data = !!(x.flags & QK_BS_DATA);
    e->zero = !!(x.flags & QK_BS_ZERO);
    e->present = !!(x.flags & QK_BS_PRESENT);
    e->has_offset = !!(x.flags & QK_BS_OFFSET_VALID);
    e->offset = e->has_offset ? x.host_offset : 0;
    e->depth = x.depth;
    e->filename = e->has_offset ? x.file : NULL;
    return 0;
}

static int run_map(qk_image *img, enum cli_output out, uint64_t start, int64_t max_length)
{
    uint64_t length = qk_size(img);
    struct map_entry cur = { 0 }, next;
    int r = 0;

    if (max_length >= 0 && start + (uint64_t)max_length < length)
        length = start + (uint64_t)max_length;
    if (out == CLI_OUTPUT_HUMAN)
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    else
        putchar('[');
    cur.start = start;
    while (cur.start + cur.length < length) {
        uint64_t off = cur.start + cur.length;
        if ((r = block_status(img, off, length - off, &next)))
            break;
        if (mergeable(&cur, &next)) {
            cur.length += next.length;
            continue;
        }
        if (cur.length > 0 && (r = dump_entry(out, &cur, &next)))
            break;
        cur = next;
    }
    if (!r)
        r = dump_entry(out, &cur, NULL);
    if (out == CLI_OUTPUT_JSON)
        puts("]");
    return r ? 1 : 0;
}

int cmd_map(int argc, char **argv)
{
    enum { OPT_OUTPUT = 256, OPT_START, OPT_MAXLEN };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "start-offset", required_argument, NULL, OPT_START },
        { "max-length", required_argument, NULL, OPT_MAXLEN },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    enum cli_output out = CLI_OUTPUT_HUMAN;
    const char *fmt = NULL, *output_arg = NULL;
    int64_t start = 0, max_length = -1;
    unsigned flags = 0;
    qk_image *img;
    int c;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":f:hU", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': map_help(); return 0;
        case 'f': fmt = optarg; break;
        case 'U': flags |= QK_OPEN_FORCE_SHARE; break;
        case OPT_OUTPUT: output_arg = optarg; break;
        case OPT_START:
            if ((start = cli_cvtnum("start offset", optarg)) < 0)
                return 1;
            break;
        case OPT_MAXLEN:
            if ((max_length = cli_cvtnum("max length", optarg)) < 0)
                return 1;
            break;
        case ':': return cli_bad_option(argv, optind, 1);
        default: return cli_bad_option(argv, optind, 0);
        }
    }
    if (optind >= argc)
        return cli_usage_error("Expecting one image file name");
    if (output_arg && cli_parse_output(output_arg, &out))
        return 1;
    if (cli_open_image(&img, argv[optind], fmt, flags))
        return 1;
    int rc = run_map(img, out, (uint64_t)start, max_length);
    qk_close(img);
    return rc;
}
