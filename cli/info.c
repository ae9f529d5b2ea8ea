/*
 * info.c - `qcowkit info`: what `qemu-img info` (7.2) shows about an image,
 * with the same keys, values and layout, plus one addition: in human output
 * an inconsistent bitmap gets a "reason:" line inside its entry.
 *
 * The image is described as a json tree in QAPI ImageInfo schema order; the
 * json printers then give qemu's member order for both --output=json and the
 * human "Format specific information" block.
 *
 * Like qemu-img, the image is opened without its backing chain; with
 * --backing-chain each backing file is opened in turn by its resolved name
 * (and recorded format, else probed), top first, refusing loops.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "imgcommon.h"
#include "json.h"
#include "qcowkit.h"

#define MAX_CHAIN QK_MAX_BACKING_DEPTH   /* images shown by one --backing-chain */

static void info_help(void)
{
    printf("usage: qcowkit info [--output=human|json] [--backing-chain] [-f FMT] [-U|--force-share] FILE\n"
           "\n"
           "Show what qemu-img info shows about FILE: format, virtual and disk size,\n"
           "cluster size, backing file, internal snapshots, persistent bitmaps and the\n"
           "qcow2 format-specific data.\n"
           "\n"
           "  --output=human|json  output format (default human)\n"
           "  --backing-chain      describe every image of the backing chain, top first\n"
           "                       (json: a list; human: images separated by a blank line)\n"
           "  -f, --format=FMT     open FILE as FMT (qcow2 or raw) instead of probing\n"
           "  -U, --force-share    open without taking refusal locks\n"
           "\n"
           "Beyond qemu-img: in human output every inconsistent bitmap has an extra\n"
           "\"reason:\" line inside its entry saying why it cannot be used (for example a\n"
           "bitmap left in use by a crash). JSON output is exactly qemu-img's.\n");
}

/* ---- the ImageInfo tree -------------------------------------------------- */

static json *snapshots_json(const qk_info *in)
{
    json *list = json_array();
    for (size_t i = 0; i < in->nb_snapshots; i++) {
        const qk_snapshot_info *s = &in->snapshots[i];
        json *o = json_append(list, json_object());
        json_set(o, "id", json_string(s->id));
        json_set(o, "name", json_string(s->name));
        json_set(o, "vm-state-size", json_uint(s->vm_state_size));
        json_set(o, "date-sec", json_uint(s->date_sec));
        json_set(o, "date-nsec", json_uint(s->date_nsec));
        json_set(o, "vm-clock-sec", json_uint(s->vm_clock_nsec / 1000000000u));
        json_set(o, "vm-clock-nsec", json_uint(s->vm_clock_nsec % 1000000000u));
        if (s->has_icount)
            json_set(o, "icount", json_uint(s->icount));
    }
    return list;
}

/* HUMAN adds each inconsistent bitmap's reason (not part of qemu's JSON). */
static json *bitmaps_json(const qk_info *in, int human)
{
    json *list = json_array();
    for (size_t i = 0; i < in->nb_bitmaps; i++) {
        const qk_bitmap_info *b = &in->bitmaps[i];
        json *o = json_append(list, json_object());
        json *flags = json_set(o, "flags", json_array());
        if (b->flags & QK_BITMAP_IN_USE)
            json_append(flags, json_string("in-use"));
        if (b->flags & QK_BITMAP_AUTO)
            json_append(flags, json_string("auto"));
        json_set(o, "name", json_string(b->name));
        json_set(o, "granularity", json_uint(b->granularity));
        if (human && !b->consistent)
            json_set(o, "reason", json_string(b->reason ? b->reason : "inconsistent"));
    }
    return list;
}

/* ImageInfoSpecificQCow2 (the "data" of format-specific), schema order. */
static json *qcow2_data_json(const qk_info *in, int human)
{
    json *d = json_object();

    if (in->version == 2) {
        json_set(d, "compat", json_string("0.10"));
    } else {
        json_set(d, "compat", json_string("1.1"));
        if (in->data_file)
            json_set(d, "data-file", json_string(in->data_file));
        if (in->incompatible_features & 4) /* external data file */
            json_set(d, "data-file-raw", json_bool(in->data_file_raw));
        json_set(d, "extended-l2", json_bool(in->extended_l2));
        json_set(d, "lazy-refcounts", json_bool(in->lazy_refcounts));
        json_set(d, "corrupt", json_bool(in->corrupt));
    }
    json_set(d, "refcount-bits", json_int(in->refcount_bits));
    /* QEMU ignores the bitmaps extension while autoclear bit 0 is clear (and
     * in v2 images); its JSON then has no bitmaps. We still show them, with
     * the reason they cannot be used, in human output. */
    if (in->version != 2 && in->nb_bitmaps && (human || (in->autoclear_features & 1)))
        json_set(d, "bitmaps", bitmaps_json(in, human));
    json_set(d, "compression-type", json_string(in->compression_type ? "zstd" : "zlib"));
    return d;
}

/* ImageInfo, members in schema order. FILENAME is the name we opened. */
static json *image_json(const qk_info *in, const char *filename)
{
    int qcow2 = in->format == QK_FMT_QCOW2;
    json *o = json_object();

    json_set(o, "filename", json_string(filename));
    json_set(o, "format", json_string(qcow2 ? "qcow2" : "raw"));
    json_set(o, "dirty-flag", json_bool(qcow2 && in->dirty));
    json_set(o, "actual-size", json_uint(in->actual_size));
    json_set(o, "virtual-size", json_uint(in->virtual_size));
    if (qcow2)
        json_set(o, "cluster-size", json_uint(in->cluster_size));
    if (in->backing_file) {
        json_set(o, "backing-filename", json_string(in->backing_file));
        if (in->full_backing_file)
            json_set(o, "full-backing-filename", json_string(in->full_backing_file));
        if (in->backing_format)
            json_set(o, "backing-filename-format", json_string(in->backing_format));
    }
    if (in->nb_snapshots)
        json_set(o, "snapshots", snapshots_json(in));
    if (qcow2) {
        json *spec = json_set(o, "format-specific", json_object());
        json_set(spec, "type", json_string("qcow2"));
        json_set(spec, "data", qcow2_data_json(in, 0));
    }
    return o;
}

/* ---- human layout (bdrv_image_info_dump) --------------------------------- */

static void print_snapshot_row(const qk_snapshot_info *s)
{
    char date[64] = "", clock[64], vmsize[32], icount[32] = "";
    time_t t = (time_t)s->date_sec;
    struct tm tm;
    uint64_t secs = s->vm_clock_nsec / 1000000000u;

    if (localtime_r(&t, &tm))
        strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S", &tm);
    snprintf(clock, sizeof clock, "%02d:%02d:%02d.%03d", (int)(secs / 3600),
             (int)((secs / 60) % 60), (int)(secs % 60),
             (int)((s->vm_clock_nsec / 1000000) % 1000));
    if (s->has_icount)
        snprintf(icount, sizeof icount, "%lld", (long long)s->icount);
    printf("%-9s %-16s %8s%20s%13s%11s\n", s->id, s->name,
           cli_size_to_str(s->vm_state_size, vmsize, sizeof vmsize), date, clock, icount);
}

void cli_print_snapshots(const qk_info *in)
{
    if (!in->nb_snapshots)
        return;
    printf("Snapshot list:\n%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE",
           "VM CLOCK", "ICOUNT");
    for (size_t i = 0; i < in->nb_snapshots; i++)
        print_snapshot_row(&in->snapshots[i]);
}

static void print_human(const qk_info *in, const char *filename)
{
    char vsize[32], dsize[32];
    int qcow2 = in->format == QK_FMT_QCOW2;

    printf("image: %s\nfile format: %s\nvirtual size: %s (%llu bytes)\ndisk size: %s\n",
           filename, qcow2 ? "qcow2" : "raw",
           cli_size_to_str(in->virtual_size, vsize, sizeof vsize),
           (unsigned long long)in->virtual_size,
           cli_size_to_str(in->actual_size, dsize, sizeof dsize));
    if (qcow2)
        printf("cluster_size: %u\n", in->cluster_size);
    if (qcow2 && in->dirty)
        printf("cleanly shut down: no\n");
    if (in->backing_file) {
        printf("backing file: %s", in->backing_file);
        if (!in->full_backing_file)
            printf(" (cannot determine actual path)");
        else if (strcmp(in->backing_file, in->full_backing_file))
            printf(" (actual path: %s)", in->full_backing_file);
        printf("\n");
        if (in->backing_format)
            printf("backing file format: %s\n", in->backing_format);
    }
    cli_print_snapshots(in);
    if (qcow2) {
        json *data = qcow2_data_json(in, 1);
        printf("Format specific information:\n");
        json_print_human(stdout, data, 1);
        json_free(data);
    }
}

/* ---- driver -------------------------------------------------------------- */

/* One image of the chain: the name it was opened by and what it is. */
struct chain_entry {
    char *name;
    qk_info *info;
};

static void print_chain(enum cli_output output, const struct chain_entry *e, size_t n, int as_list)
{
    if (output == CLI_OUTPUT_HUMAN) {
        for (size_t i = 0; i < n; i++) {
            if (i)
                printf("\n");
            print_human(e[i].info, e[i].name);
        }
        return;
    }
    json *root = as_list ? json_array() : image_json(e[0].info, e[0].name);
    for (size_t i = 0; as_list && i < n; i++)
        json_append(root, image_json(e[i].info, e[i].name));
    json_print(stdout, root);
    json_free(root);
}

/* Gather NAME's info into *E; the image is closed again. Returns 0 or -1. */
static int collect_one(const char *name, const char *fmt, unsigned flags, struct chain_entry *e)
{
    qk_image *img;
    if (cli_open_image(&img, name, fmt, flags | QK_OPEN_NO_BACKING))
        return -1;
    int r = qk_get_info(img, &e->info);
    if (r) {
        const char *msg = qk_errmsg(img);
        cli_error("Could not open '%s': %s", name, *msg ? msg : qk_strerror(r));
        e->info = NULL;
    }
    qk_close(img);
    return r ? -1 : 0;
}

/* Collect FILENAME (and with --backing-chain its backing files, by their
 * resolved names and recorded formats), then print them all. Nothing is
 * printed when any image of the chain fails. */
static int run_info(enum cli_output output, int chain, unsigned flags, const char *filename,
                    const char *fmt)
{
    struct chain_entry e[MAX_CHAIN];
    size_t n = 0;
    char *name = strdup(filename), *cur_fmt = fmt ? strdup(fmt) : NULL;
    int rc = 0;

    while (name && !rc) {
        for (size_t i = 0; i < n; i++)
            if (!strcmp(e[i].name, name))
                rc = 1;
        if (rc) {
            cli_error("Backing file '%s' creates an infinite loop.", name);
            break;
        }
        if (n == MAX_CHAIN) {
            cli_error("Backing chain of '%s' is deeper than %d images", filename, MAX_CHAIN);
            rc = 1;
            break;
        }
        if (collect_one(name, cur_fmt, flags, &e[n])) {
            rc = 1;
            break;
        }
        const qk_info *in = e[n].info;
        e[n++].name = name;
        name = NULL;
        free(cur_fmt);
        cur_fmt = NULL;
        if (!chain || !in->backing_file)
            break;
        if (!in->full_backing_file) {
            cli_error("Could not determine absolute backing filename, but backing filename '%s' present",
                      in->backing_file);
            rc = 1;
            break;
        }
        name = strdup(in->full_backing_file);
        cur_fmt = in->backing_format ? strdup(in->backing_format) : NULL;
    }
    if (!rc)
        print_chain(output, e, n, chain);
    for (size_t i = 0; i < n; i++) {
        free(e[i].name);
        qk_info_free(e[i].info);
    }
    free(name);
    free(cur_fmt);
    return rc;
}

int cmd_info(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "output", required_argument, NULL, 'o' },
        { "backing-chain", no_argument, NULL, 'c' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    enum cli_output output = CLI_OUTPUT_HUMAN;
    const char *fmt = NULL, *output_arg = NULL;
    unsigned flags = 0;
    int chain = 0, c;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":f:hU", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': info_help(); return 0;
        case 'f': fmt = optarg; break;
        case 'o': output_arg = optarg; break;
        case 'c': chain = 1; break;
        case 'U': flags |= QK_OPEN_FORCE_SHARE; break;
        case ':': return cli_bad_option(argv, optind, 1);
        default: return cli_bad_option(argv, optind, 0);
        }
    }
    if (optind != argc - 1)
        return cli_usage_error("Expecting one image file name");
    if (output_arg && cli_parse_output(output_arg, &output))
        return 1;
    return run_info(output, chain, flags, argv[optind], fmt);
}
