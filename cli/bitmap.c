/*
 * bitmap.c - `qcowkit bitmap`: persistent dirty bitmaps from the command
 * line. Owns the subcommand only; the bitmaps themselves are the library's
 * (qk_bitmap_* in include/qcowkit.h).
 *
 *  - The actions (--add, --remove, --clear, --enable, --disable, --merge)
 *    are qemu-img 7.2's `bitmap`: applied in command-line order, each one
 *    checked in the order QEMU checks it (block_dirty_bitmap_add,
 *    qcow2_co_can_store_new_dirty_bitmap, block_dirty_bitmap_merge, ...),
 *    failures printed as "Operation OP on bitmap NAME failed: MSG" with
 *    exit code 1. What earlier actions did is kept (stored on close), as
 *    with qemu-img. QEMU names the image by its node name ("#block123", a
 *    counter); we print the file name there.
 *  - --dump (design.md §3) walks one bitmap over the whole disk and prints
 *    its runs, adjacent runs of the same state merged: JSON is an array of
 *    {"start", "length", "dirty"} in offset order, one object per line like
 *    `qemu-img map`; human output is one "start length dirty|clean" line per
 *    run. The image is opened read-only.
 *
 * An inconsistent bitmap (in_use after a crash, or breaking a rule of the
 * spec) is refused by every action but --remove, with QEMU's message and
 * hint; --dump refuses it with the library's message, which names the rule.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "imgcommon.h"
#include "qcowkit.h"

enum action { ACT_ADD, ACT_REMOVE, ACT_CLEAR, ACT_ENABLE, ACT_DISABLE, ACT_MERGE };

static const char *const action_names[] = { "add", "remove", "clear", "enable", "disable", "merge" };

struct act {
    enum action act;
    const char *src;    /* --merge SOURCE */
};

/* What an action works on. */
struct target {
    qk_image *img;
    const char *path;
    qk_image *src_img;  /* the -b image, or IMG itself */
    const char *name;
    int64_t granularity;
};

static void bitmap_help(void)
{
    printf("usage: qcowkit bitmap (--merge SOURCE | --add | --remove | --clear |\n"
           "                       --enable | --disable)... [-b SOURCE_FILE [-F SOURCE_FMT]]\n"
           "                       [-g GRANULARITY] [-f FMT] FILE BITMAP\n"
           "       qcowkit bitmap --dump [--output=human|json] [-f FMT] FILE BITMAP\n"
           "\n"
           "Change the persistent dirty bitmap BITMAP of the qcow2 image FILE, like\n"
           "qemu-img bitmap. Actions may repeat and are applied in the order given.\n"
           "\n"
           "  --add             create BITMAP, enabled (it records every write)\n"
           "  --remove          delete BITMAP and free its clusters (also works on an\n"
           "                    inconsistent bitmap)\n"
           "  --clear           clear every bit of BITMAP\n"
           "  --enable          start recording writes in BITMAP\n"
           "  --disable         stop recording writes in BITMAP\n"
           "  --merge SOURCE    set in BITMAP every bit set in bitmap SOURCE (of FILE, or\n"
           "                    of SOURCE_FILE with -b); granularities may differ\n"
           "  -g GRANULARITY    bytes per bit for --add: a power of two from 512 to 2G\n"
           "                    (k, M, G suffixes; default: the cluster size clamped to\n"
           "                    4k..64k)\n"
           "  -b SOURCE_FILE    take --merge sources from SOURCE_FILE (opened read-only)\n"
           "  -F SOURCE_FMT     format of SOURCE_FILE (default: probed)\n"
           "  -f FMT            format of FILE (qcow2 or raw; default: probed)\n"
           "  --dump            print the dirty and clean ranges of BITMAP over the whole\n"
           "                    disk, adjacent ranges of the same state merged\n"
           "  --output=FMT      --dump output: human (default), one 'START LENGTH\n"
           "                    dirty|clean' line per range, or json, an array of\n"
           "                    {\"start\", \"length\", \"dirty\"} objects\n"
           "  -h, --help        show this help\n");
}

/* ---- actions ------------------------------------------------------------ */

/* Look NAME up in INFO; NULL when it has no such bitmap. */
static const qk_bitmap_info *lookup(const qk_info *info, const char *name)
{
    for (size_t i = 0; info && i < info->nb_bitmaps; i++)
        if (!strcmp(info->bitmaps[i].name, name))
            return &info->bitmaps[i];
    return NULL;
}

/* Fill BUF with the words of a failure: *MSG set to BUF. */
static void say(char *buf, size_t len, const char **msg, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void say(char *buf, size_t len, const char **msg, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
    *msg = buf;
}

#define NOT_FOUND(name) say(buf, len, msg, "Dirty bitmap '%s' not found", (name))
/* bdrv_dirty_bitmap_check()'s words and hint for an inconsistent bitmap. */
#define INCONSISTENT(name)                                                               \
    say(buf, len, msg,                                                                   \
        "Bitmap '%s' is inconsistent and cannot be used\n"                               \
        "Try block-dirty-bitmap-remove to delete this bitmap from disk", (name))

/* The image's bitmaps as the library lists them (without loading data). */
static int get_info(qk_image *img, qk_info **out, char *buf, size_t len, const char **msg)
{
    int r = qk_get_info(img, out);
    if (r < 0)
        say(buf, len, msg, "%s", *qk_errmsg(img) ? qk_errmsg(img) : qk_strerror(r));
    return r;
}

/* block_dirty_bitmap_add + qcow2_co_can_store_new_dirty_bitmap, in QEMU's
 * order: empty name, granularity, format, name taken, then what the qcow2
 * driver refuses ("Can't make bitmap ... persistent in ...: ..."). */
static int do_add(const struct target *t, const qk_info *info, char *buf, size_t len,
                  const char **msg)
{
    uint64_t gran = 0;
    if (!t->name[0])
        return say(buf, len, msg, "Bitmap name cannot be empty"), -1;
    if (t->granularity) {
        /* QMP's granularity is a uint32: qemu-img passes -g truncated. */
        gran = (uint32_t)t->granularity;
        if (gran < 512 || (gran & (gran - 1)))
            return say(buf, len, msg, "Granularity must be power of 2 and at least 512"), -1;
    }
    if (info->format != QK_FMT_QCOW2)
        return say(buf, len, msg, "Can't store persistent bitmaps to %s: Operation not supported",
                   t->path), -1;
    if (lookup(info, t->name))
        return say(buf, len, msg, "Bitmap already exists: %s", t->name), -1;
    int r = qk_bitmap_add(t->img, t->name, gran, 0);
    if (r == QK_E_EXISTS)
        return say(buf, len, msg, "%s", qk_errmsg(t->img)), -1;
    if (r < 0)
        return say(buf, len, msg, "Can't make bitmap '%s' persistent in '%s': %s", t->name, t->path,
                   *qk_errmsg(t->img) ? qk_errmsg(t->img) : qk_strerror(r)), -1;
    return 0;
}

/* The words of a library failure R of an action on bitmap NAME of IMG. */
static int lib_failure(qk_image *img, int r, const char *name, char *buf, size_t len,
                       const char **msg)
{
    if (r == QK_E_BITMAP_INCONSISTENT)
        INCONSISTENT(name);
    else
        say(buf, len, msg, "%s", *qk_errmsg(img) ? qk_errmsg(img) : qk_strerror(r));
    return -1;
}

/* block_dirty_bitmap_merge + bdrv_merge_dirty_bitmap, in QEMU's order:
 * target found, source found, target usable, source usable, same size. */
static int do_merge(const struct target *t, const char *src, const qk_info *info, char *buf,
                    size_t len, const char **msg)
{
    const qk_bitmap_info *d = lookup(info, t->name), *s;
    qk_info *sinfo = NULL;
    int r = -1;

    if (!d)
        return NOT_FOUND(t->name), -1;
    if (t->src_img != t->img) {
        if (get_info(t->src_img, &sinfo, buf, len, msg) < 0)
            return -1;
        s = lookup(sinfo, src);
    } else {
        s = lookup(info, src);
    }
    if (!s)
        NOT_FOUND(src);
    else if (!d->consistent)
        INCONSISTENT(t->name);
    else if (!s->consistent)
        INCONSISTENT(src);
    else if (qk_size(t->img) != qk_size(t->src_img))
        say(buf, len, msg,
            "Bitmaps are of different sizes (destination size is %" PRIu64
            ", source size is %" PRIu64 ") and can't be merged",
            qk_size(t->img), qk_size(t->src_img));
    else if ((r = qk_bitmap_merge(t->img, t->name, t->src_img, src)) == QK_E_BITMAP_INCONSISTENT) {
        /* A table that failed to load: which bitmap did? */
        qk_info *now = NULL;
        const qk_bitmap_info *dn;
        if (get_info(t->img, &now, buf, len, msg) == 0) {
            dn = lookup(now, t->name);
            INCONSISTENT(dn && !dn->consistent ? t->name : src);
        }
        qk_info_free(now);
        r = -1;
    } else if (r < 0) {
        r = lib_failure(t->img, r, t->name, buf, len, msg);
    }
    qk_info_free(sinfo);
    return r < 0 ? -1 : 0;
}

/* Run one action; on failure *MSG says why (QEMU's words). */
static int run_action(const struct target *t, const struct act *a, char *buf, size_t len,
                      const char **msg)
{
    qk_info *info;
    const qk_bitmap_info *b;
    int r = -1;

    if (get_info(t->img, &info, buf, len, msg) < 0)
        return -1;
    if (a->act == ACT_ADD) {
        r = do_add(t, info, buf, len, msg);
    } else if (a->act == ACT_MERGE) {
        r = do_merge(t, a->src, info, buf, len, msg);
    } else if (!(b = lookup(info, t->name))) {
        NOT_FOUND(t->name);
    } else if (a->act == ACT_REMOVE) {
        if ((r = qk_bitmap_remove(t->img, t->name)) < 0)
            r = lib_failure(t->img, r, t->name, buf, len, msg);
    } else if (!b->consistent) {
        INCONSISTENT(t->name);
    } else {
        r = a->act == ACT_CLEAR    ? qk_bitmap_clear(t->img, t->name)
          : a->act == ACT_ENABLE   ? qk_bitmap_enable(t->img, t->name)
                                   : qk_bitmap_disable(t->img, t->name);
        if (r < 0)
            r = lib_failure(t->img, r, t->name, buf, len, msg);
    }
    qk_info_free(info);
    return r;
}

/* ---- --dump ------------------------------------------------------------- */

struct dump {
    enum cli_output out;
    uint64_t start, length;   /* the pending run (length 0: none yet) */
    int dirty;
    int count;                /* runs printed */
};

static void dump_flush(struct dump *d)
{
    if (!d->length)
        return;
    if (d->out == CLI_OUTPUT_JSON)
        printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ", \"dirty\": %s}",
               d->count ? ",\n" : "[", d->start, d->length, d->dirty ? "true" : "false");
    else
        printf("%" PRIu64 " %" PRIu64 " %s\n", d->start, d->length, d->dirty ? "dirty" : "clean");
    d->count++;
    d->length = 0;
}

static int dump_extent(void *opaque, uint64_t offset, uint64_t length, int dirty)
{
    struct dump *d = opaque;
    if (d->length && d->dirty == !!dirty && d->start + d->length == offset) {
        d->length += length;
        return 0;
    }
    dump_flush(d);
    d->start = offset;
    d->length = length;
    d->dirty = !!dirty;
    return 0;
}

static int run_dump(const char *path, const char *fmt, const char *name, enum cli_output out)
{
    qk_image *img;
    struct dump d = { .out = out };

    if (cli_open_image(&img, path, fmt, QK_OPEN_NO_BACKING))
        return 1;
    /* Nothing is printed before the bitmap is known to be usable: the
     * walk loads (and validates) it before its first callback. */
    int r = qk_bitmap_extents(img, name, 0, UINT64_MAX, dump_extent, &d);
    if (r < 0) {
        cli_error("%s", *qk_errmsg(img) ? qk_errmsg(img) : qk_strerror(r));
        qk_close(img);
        return 1;
    }
    dump_flush(&d);
    if (out == CLI_OUTPUT_JSON)
        puts(d.count ? "]" : "[]");
    qk_close(img);
    return 0;
}

/* ---- entry point -------------------------------------------------------- */

int cmd_bitmap(int argc, char **argv)
{
    enum { OPT_ADD = 256, OPT_REMOVE, OPT_CLEAR, OPT_ENABLE, OPT_DISABLE, OPT_MERGE, OPT_DUMP,
           OPT_OUTPUT };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "add", no_argument, NULL, OPT_ADD },
        { "remove", no_argument, NULL, OPT_REMOVE },
        { "clear", no_argument, NULL, OPT_CLEAR },
        { "enable", no_argument, NULL, OPT_ENABLE },
        { "disable", no_argument, NULL, OPT_DISABLE },
        { "merge", required_argument, NULL, OPT_MERGE },
        { "granularity", required_argument, NULL, 'g' },
        { "source-file", required_argument, NULL, 'b' },
        { "source-format", required_argument, NULL, 'F' },
        { "format", required_argument, NULL, 'f' },
        { "dump", no_argument, NULL, OPT_DUMP },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL, *src_path = NULL, *src_fmt = NULL, *output_arg = NULL;
    int64_t granularity = 0;
    int add = 0, merge = 0, dump = 0, c, rc = 1;
    size_t nacts = 0;
    struct act *acts = calloc((size_t)argc, sizeof *acts);
    enum cli_output out = CLI_OUTPUT_HUMAN;

    if (!acts) {
        cli_error("Out of memory");
        return 1;
    }
    optind = 1;
    while ((c = getopt_long(argc, argv, ":b:f:F:g:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': bitmap_help(); free(acts); return 0;
        case 'b': src_path = optarg; break;
        case 'f': fmt = optarg; break;
        case 'F': src_fmt = optarg; break;
        case 'g':
            if ((granularity = cli_cvtnum("granularity", optarg)) < 0)
                goto out;
            break;
        case OPT_ADD: acts[nacts++].act = ACT_ADD; add = 1; break;
        case OPT_REMOVE: acts[nacts++].act = ACT_REMOVE; break;
        case OPT_CLEAR: acts[nacts++].act = ACT_CLEAR; break;
        case OPT_ENABLE: acts[nacts++].act = ACT_ENABLE; break;
        case OPT_DISABLE: acts[nacts++].act = ACT_DISABLE; break;
        case OPT_MERGE:
            acts[nacts].act = ACT_MERGE;
            acts[nacts++].src = optarg;
            merge = 1;
            break;
        case OPT_DUMP: dump = 1; break;
        case OPT_OUTPUT: output_arg = optarg; break;
        case ':': rc = cli_bad_option(argv, optind, 1); goto out;
        default: rc = cli_bad_option(argv, optind, 0); goto out;
        }
    }

    /* qemu-img's checks, in its order; --dump's own after them. */
    if (dump && nacts) {
        cli_error("--dump cannot be combined with --add, --remove, --clear, --enable, "
                  "--disable or --merge");
        goto out;
    }
    if (!dump && !nacts) {
        cli_error("Need at least one of --add, --remove, --clear, --enable, --disable, or --merge");
        goto out;
    }
    if (granularity && !add) {
        cli_error("granularity only supported with --add");
        goto out;
    }
    if (src_fmt && !src_path) {
        cli_error("-F only supported with -b");
        goto out;
    }
    if (src_path && !merge) {
        cli_error("Merge bitmap source file only supported with --merge");
        goto out;
    }
    if (output_arg && !dump) {
        cli_error("--output only supported with --dump");
        goto out;
    }
    if (optind != argc - 2) {
        cli_error("Expecting filename and bitmap name");
        goto out;
    }
    if (output_arg && cli_parse_output(output_arg, &out))
        goto out;
    if (dump) {
        rc = run_dump(argv[optind], fmt, argv[optind + 1], out);
        goto out;
    }

    /* As qemu-img: the image read-write without its backing chain, then the
     * merge source read-only. */
    struct target t = { .path = argv[optind], .name = argv[optind + 1], .granularity = granularity };
    if (cli_open_image(&t.img, t.path, fmt, QK_OPEN_RDWR | QK_OPEN_NO_BACKING))
        goto out;
    t.src_img = t.img;
    if (src_path && cli_open_image(&t.src_img, src_path, src_fmt, QK_OPEN_NO_BACKING)) {
        qk_close(t.img);
        goto out;
    }
    rc = 0;
    for (size_t i = 0; i < nacts; i++) {
        char buf[4096];
        const char *msg = "";
        if (run_action(&t, &acts[i], buf, sizeof buf, &msg) < 0) {
            cli_error("Operation %s on bitmap %s failed: %s", action_names[acts[i].act], t.name, msg);
            rc = 1;
            break;
        }
    }
    if (t.src_img != t.img)
        qk_close(t.src_img);
    /* Earlier actions stand even when a later one failed (qemu-img stores
     * the bitmaps when it closes the image either way). */
    int r = qk_close(t.img);
    if (r < 0 && rc == 0) {
        cli_error("Could not close '%s': %s", t.path, qk_strerror(r));
        rc = 1;
    }
out:
    free(acts);
    return rc;
}
