/*
 * create.c - `qcowkit create`: qemu-img 7.2's create for empty raw and qcow2
 * images: the same options, defaults, "Formatting ..." line, size suffixes,
 * error texts and exit codes.
 *
 * The checks run in qemu-img's order, which decides which message a user sees:
 *   1. command line (-f, -o syntax, option names and typed values, size);
 *   2. backing file: same name, empty name, opened (unless -u) to check it and
 *      to take its size, backing format required;
 *   3. the "Formatting 'FILE', fmt=FMT opt=value ..." line (options in
 *      qemu's list order; a value the user gave as a number is printed
 *      parsed, the rest as typed, commas doubled in strings);
 *   4. enum values (version, backing-fmt, preallocation, compression-type):
 *      QEMU has created the file by then and removes it again on error;
 *   5. qk_create(), which validates the rest with QEMU's messages.
 * Errors from 2 on are printed as "qcowkit: FILE: message".
 */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "imgcommon.h"
#include "util.h"
#include "qcowkit.h"

enum opt_type { T_STRING, T_BOOL, T_NUMBER, T_SIZE };

struct opt_desc {
    const char *name;
    enum opt_type type;
    const char *def;    /* printed when not given (NULL: not printed) */
    const char *help;
    int proto;          /* an option of the file layer, not of the format */
};

/* qemu's merged create-option lists: the format's options, then those of
 * the file layer (file-posix) that the format does not have. */
static const struct opt_desc qcow2_opts[] = {
    { "cluster_size", T_SIZE, "65536", "qcow2 cluster size", 0 },
    { "extended_l2", T_BOOL, "off", "Extended L2 tables", 0 },
    { "preallocation", T_STRING, NULL,
      "Preallocation mode (allowed values: off, metadata, falloc, full)", 0 },
    { "compression_type", T_STRING, "zlib",
      "Compression method used for image cluster compression", 0 },
    { "size", T_SIZE, NULL, "Virtual disk size", 0 },
    { "compat", T_STRING, NULL, "Compatibility level (v2 [0.10] or v3 [1.1])", 0 },
    { "backing_file", T_STRING, NULL, "File name of a base image", 0 },
    { "backing_fmt", T_STRING, NULL, "Image format of the base image", 0 },
    { "data_file", T_STRING, NULL, "File name of an external data file", 0 },
    { "data_file_raw", T_BOOL, NULL, "The external data file must stay valid as a raw image", 0 },
    { "lazy_refcounts", T_BOOL, "off", "Postpone refcount updates", 0 },
    { "refcount_bits", T_NUMBER, "16", "Width of a reference count entry in bits", 0 },
    { "nocow", T_BOOL, NULL, "Turn off copy-on-write (valid only on btrfs)", 1 },
    { "extent_size_hint", T_SIZE, NULL, "Extent size hint for the image file, 0 to disable", 1 },
    { NULL, T_STRING, NULL, NULL, 0 },
};

static const struct opt_desc raw_opts[] = {
    { "size", T_SIZE, NULL, "Virtual disk size", 0 },
    { "nocow", T_BOOL, NULL, "Turn off copy-on-write (valid only on btrfs)", 1 },
    { "preallocation", T_STRING, NULL, "Preallocation mode (allowed values: off, falloc, full)", 1 },
    { "extent_size_hint", T_SIZE, NULL, "Extent size hint for the image file, 0 to disable", 1 },
    { NULL, T_STRING, NULL, NULL, 0 },
};

/* BlockdevDriver values of QEMU 7.2: what backing_fmt may name. */
static const char *const qemu_drivers[] = {
    "blkdebug", "blklogwrites", "blkreplay", "blkverify", "bochs", "cloop", "compress",
    "copy-before-write", "copy-on-read", "dmg", "file", "snapshot-access", "ftp", "ftps",
    "gluster", "host_cdrom", "host_device", "http", "https", "iscsi", "luks", "nbd", "nfs",
    "null-aio", "null-co", "nvme", "nvme-io_uring", "parallels", "preallocate", "qcow",
    "qcow2", "qed", "quorum", "raw", "rbd", "replication", "ssh", "throttle", "vdi", "vhdx",
    "vmdk", "vpc", "vvfat", NULL,
};

/* One option as given; the last value of a name wins. */
struct opt_val {
    const struct opt_desc *desc;
    char *str;          /* as typed (or set by -b/-F/the size argument) */
    uint64_t num;       /* parsed value of T_BOOL/T_NUMBER/T_SIZE */
    int set;
};

struct create_args {
    const char *filename;
    const char *fmt;
    const struct opt_desc *descs;
    struct opt_val *vals;       /* parallel to descs */
    int no_backing_check;
    int quiet;
    const char *parse_prefix;   /* before -o parse errors (NULL: none; convert) */
    const char *fail_prefix;    /* before errors of the create step itself */
};

/* cli_error() of "PREFIX: message", or of the bare message without PREFIX. */
static void __attribute__((format(printf, 2, 3))) prefixed_error(const char *prefix, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (prefix)
        cli_error("%s: %s", prefix, msg);
    else
        cli_error("%s", msg);
}

static void create_help(void)
{
    printf("usage: qcowkit create [-f FMT] [-o OPTIONS] [-b BACKING_FILE -F BACKING_FMT] [-u] [-q] FILE [SIZE]\n"
           "\n"
           "Create an empty image FILE of SIZE bytes, like qemu-img create.\n"
           "SIZE takes the suffixes k, M, G, T, P, E (powers of 1024; b = bytes).\n"
           "\n"
           "  -f FMT      qcow2 or raw (default raw)\n"
           "  -o OPTIONS  comma-separated NAME=VALUE list; -o help lists them. qcow2:\n"
           "              compat=0.10|1.1, cluster_size, refcount_bits, lazy_refcounts,\n"
           "              compression_type=zlib|zstd, extended_l2, backing_file,\n"
           "              backing_fmt, data_file, data_file_raw, size,\n"
           "              preallocation=off|metadata|falloc|full (raw: off|falloc|full)\n"
           "  -b FILE     backing file (relative names are relative to FILE's folder)\n"
           "  -F FMT      format of the backing file (required with -b)\n"
           "  -u          do not open the backing file (SIZE is then required)\n"
           "  -q          do not print the \"Formatting ...\" line\n");
}

static int desc_cmp(const void *a, const void *b)
{
    return strcmp((*(const struct opt_desc *const *)a)->name, (*(const struct opt_desc *const *)b)->name);
}

/* qemu-img's "-o help": the options sorted by name; the file layer's ones
 * only when a file name was given. */
void cli_print_option_help(const char *fmt, const char *filename)
{
    static const char *const tn[] = { "str", "bool (on/off)", "num", "size" };
    const struct opt_desc *d = !strcmp(fmt, "qcow2") ? qcow2_opts : raw_opts;
    const struct opt_desc *list[32];
    size_t n = 0;

    for (; d->name && n < sizeof list / sizeof list[0]; d++)
        if (filename || !d->proto)
            list[n++] = d;
    qsort(list, n, sizeof list[0], desc_cmp);
    if (filename)
        printf("Supported options:\n");
    else
        printf("Supported %s options:\n", fmt);
    for (size_t i = 0; i < n; i++) {
        char head[64];
        int len = snprintf(head, sizeof head, "  %s=<%s>", list[i]->name, tn[list[i]->type]);
        printf("%s%*s - %s\n", head, len < 24 ? 24 - len : 0, "", list[i]->help);
    }
    if (!filename)
        printf("\nThe protocol level may support further options.\n"
               "Specify the target filename to include those options.\n");
}

/* ---- -o parsing ----------------------------------------------------------- */

/* qemu's is_valid_option_list(): not empty, no leading comma, and trailing
 * commas only in escaped pairs. */
static int valid_option_list(const char *s)
{
    size_t len = strlen(s), i = len;
    if (!s[0] || s[0] == ',')
        return 0;
    while (i > 0 && s[i - 1] == ',')
        i--;
    return (len - i) % 2 == 0;
}

static int parse_bool(const char *s, uint64_t *v)
{
    if (!strcmp(s, "on") || !strcmp(s, "yes") || !strcmp(s, "true") || !strcmp(s, "y"))
        *v = 1;
    else if (!strcmp(s, "off") || !strcmp(s, "no") || !strcmp(s, "false") || !strcmp(s, "n"))
        *v = 0;
    else
        return -1;
    return 0;
}

static int parse_number(const char *s, uint64_t *v)
{
    char *end;
    errno = 0;
    if (!*s)
        return -1;
    *v = strtoull(s, &end, 0);
    return errno || *end ? -1 : 0;
}

/* Parse VALUE for option D into *V; print qemu's message on error. */
static int parse_typed(const char *prefix, const struct opt_desc *d, const char *value, uint64_t *v)
{
    int r;
    switch (d->type) {
    case T_STRING:
        return 0;
    case T_BOOL:
        if (!parse_bool(value, v))
            return 0;
        prefixed_error(prefix, "Parameter '%s' expects 'on' or 'off'", d->name);
        return -1;
    case T_NUMBER:
        if (!parse_number(value, v))
            return 0;
        prefixed_error(prefix, "Parameter '%s' expects a number", d->name);
        return -1;
    case T_SIZE:
        r = cli_parse_size(value, v);   /* note: caps at INT64_MAX, qemu at 2^64-1 */
        if (!r)
            return 0;
        if (r == -ERANGE) {
            prefixed_error(prefix, "Value '%s' is out of range for parameter '%s'", value, d->name);
        } else {
            prefixed_error(prefix, "Parameter '%s' expects a non-negative number below 2^64", d->name);
            fputs("Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
                  "and exabytes, respectively.\n", stderr);
        }
        return -1;
    }
    return -1;
}

static struct opt_val *find_val(struct create_args *a, const char *name)
{
    for (size_t i = 0; a->descs[i].name; i++)
        if (!strcmp(a->descs[i].name, name))
            return &a->vals[i];
    return NULL;
}

static int set_val(struct create_args *a, const char *name, const char *value, int typed)
{
    struct opt_val *v = find_val(a, name);
    if (!v) {
        prefixed_error(a->parse_prefix, "Invalid parameter '%s'", name);
        return -1;
    }
    uint64_t num = 0;
    if (typed && parse_typed(a->parse_prefix, v->desc, value, &num))
        return -1;
    free(v->str);
    v->str = strdup(value);
    v->num = num;
    v->set = 1;
    return 0;
}

/* Split one "name=value" (value with ",," escapes) or "flag" item at *P. */
static char *next_item(const char **p, char **value)
{
    const char *s = *p;
    size_t nlen = strcspn(s, "=,");
    char *name = strndup(s, nlen);
    size_t cap = strlen(s) + 1, n = 0;
    char *v = malloc(cap);

    if (!name || !v)
        abort();
    s += nlen;
    if (*s != '=') {
        if (!strncmp(name, "no", 2)) {
            memmove(name, name + 2, strlen(name + 2) + 1);
            strcpy(v, "off");
        } else {
            strcpy(v, "on");
        }
    } else {
        for (s++; *s; s++) {
            if (*s == ',') {
                if (s[1] != ',')
                    break;
                s++;
            }
            v[n++] = *s;
        }
        v[n] = '\0';
    }
    if (*s == ',')
        s++;
    *p = s;
    *value = v;
    return name;
}

static int parse_option_list(struct create_args *a, const char *list)
{
    const char *p = list;
    while (*p) {
        char *value, *name = next_item(&p, &value);
        int r = set_val(a, name, value, 1);
        free(name);
        free(value);
        if (r)
            return -1;
    }
    return 0;
}

/* ---- the Formatting line ------------------------------------------------ */

static void print_escaped(const char *s)
{
    for (; *s; s++) {
        if (*s == ',')
            putchar(',');
        putchar(*s);
    }
}

static void print_formatting(const struct create_args *a)
{
    printf("Formatting '%s', fmt=%s ", a->filename, a->fmt);
    const char *sep = "";
    for (size_t i = 0; a->descs[i].name; i++) {
        const struct opt_desc *d = &a->descs[i];
        const struct opt_val *v = &a->vals[i];
        const char *value = v->set ? v->str : d->def;
        if (!value)
            continue;
        printf("%s%s=", sep, d->name);
        if (d->type == T_STRING)
            print_escaped(value);
        else if ((d->type == T_SIZE || d->type == T_NUMBER) && v->set)
            printf("%lld", (long long)v->num);  /* qemu prints PRId64 */
        else
            fputs(value, stdout);
        sep = " ";
    }
    putchar('\n');
    fflush(stdout);
}

/* ---- backing file ------------------------------------------------------- */

/* FILENAME's folder + NAME, unless NAME is absolute (qemu's path_combine). */
static char *combine_path(const char *filename, const char *name)
{
    const char *slash = strrchr(filename, '/');
    if (name[0] == '/' || !slash)
        return strdup(name);
    size_t dl = (size_t)(slash - filename) + 1;
    char *p = malloc(dl + strlen(name) + 1);
    if (p) {
        memcpy(p, filename, dl);
        strcpy(p + dl, name);
    }
    return p;
}

/* Open the backing file as qemu-img create does (whole chain, shared), to
 * check it and to learn its size and format. Returns 0 or -1 (printed). */
static int check_backing(struct create_args *a, const char *backing, const char *bfmt,
                         uint64_t *size, int need_size)
{
    char *full = combine_path(a->filename, backing);
    unsigned flags = QK_OPEN_FORCE_SHARE;
    qk_image *img = NULL;
    qk_info *info = NULL;
    int r = -1;

    if (!full)
        abort();
    if (cli_format_flags(bfmt, &flags)) {
        cli_error("%s: Unknown driver '%s'", a->filename, bfmt);
        fputs("Could not open backing image.\n", stderr);
        goto out;
    }
    if (qk_image_new(&img) || qk_open(img, full, flags)) {
        cli_error("%s: %s", a->filename, qk_errmsg(img));
        fputs("Could not open backing image.\n", stderr);
        goto out;
    }
    if (!bfmt) {
        const char *detected = "raw";
        if (!qk_get_info(img, &info) && info->format == QK_FMT_QCOW2)
            detected = "qcow2";
        cli_error("%s: Backing file specified without backing format", a->filename);
        fprintf(stderr, "Detected format of %s.", detected);
        goto out;
    }
    if (need_size)
        *size = qk_size(img);
    r = 0;
out:
    qk_info_free(info);
    qk_close(img);
    free(full);
    return r;
}

/* Step 2 of the file comment. */
static int resolve_backing_and_size(struct create_args *a)
{
    struct opt_val *bf = find_val(a, "backing_file"), *bfmt = find_val(a, "backing_fmt");
    struct opt_val *size = find_val(a, "size");
    const char *backing = bf && bf->set ? bf->str : NULL;
    const char *fmt = bfmt && bfmt->set ? bfmt->str : NULL;

    if (backing && !strcmp(backing, a->filename)) {
        cli_error("%s: Error: Trying to create an image with the same filename as the backing file",
                  a->filename);
        return -1;
    }
    if (backing && !backing[0]) {
        cli_error("%s: Expected backing file name, got empty string", a->filename);
        return -1;
    }
    if (backing && !a->no_backing_check) {
        uint64_t bsize = 0;
        if (check_backing(a, backing, fmt, &bsize, !size->set))
            return -1;
        if (!size->set) {
            char buf[32];
            snprintf(buf, sizeof buf, "%llu", (unsigned long long)bsize);
            set_val(a, "size", buf, 0);
            size->num = bsize;
        }
    } else if (backing && !fmt) {
        cli_error("%s: Backing file specified without backing format", a->filename);
        return -1;
    }
    if (!size->set) {
        cli_error("%s: Image creation needs a size parameter", a->filename);
        return -1;
    }
    return 0;
}

/* ---- enum values and the library call ----------------------------------- */

static const char *val_str(struct create_args *a, const char *name)
{
    struct opt_val *v = find_val(a, name);
    return v && v->set ? v->str : NULL;
}

static uint64_t val_num(struct create_args *a, const char *name, uint64_t def)
{
    struct opt_val *v = find_val(a, name);
    return v && v->set ? v->num : def;
}

static int enum_error(struct create_args *a, const char *param, const char *value)
{
    prefixed_error(a->fail_prefix, "Parameter '%s' does not accept value '%s'", param, value);
    /* QEMU has created the file(s) before this check and deletes them. */
    unlink(a->filename);
    const char *df = val_str(a, "data_file");
    if (df)
        unlink(df);
    return -1;
}

static int is_driver(const char *s)
{
    for (size_t i = 0; qemu_drivers[i]; i++)
        if (!strcmp(qemu_drivers[i], s))
            return 1;
    return 0;
}

/* QK_PREALLOC_* of a preallocation= value (already checked), OFF for NULL. */
static int prealloc_mode(const char *s)
{
    static const char *const names[] = { "off", "metadata", "falloc", "full" };
    for (int i = 0; s && i < 4; i++)
        if (!strcmp(s, names[i]))
            return i;
    return QK_PREALLOC_OFF;
}

/* Step 4: QAPI enum checks, in BlockdevCreateOptionsQcow2 member order. */
static int fill_qcow2_opts(struct create_args *a, qk_create_opts *o)
{
    const char *compat = val_str(a, "compat"), *bfmt = val_str(a, "backing_fmt");
    const char *prealloc = val_str(a, "preallocation"), *ct = val_str(a, "compression_type");

    if (compat && (!strcmp(compat, "0.10") || !strcmp(compat, "v2")))
        o->compat = 2;
    else if (compat && (!strcmp(compat, "1.1") || !strcmp(compat, "v3")))
        o->compat = 3;
    else if (compat)
        return enum_error(a, "version", compat);
    if (bfmt && !is_driver(bfmt))
        return enum_error(a, "backing-fmt", bfmt);
    if (prealloc && strcmp(prealloc, "off") && strcmp(prealloc, "metadata") &&
        strcmp(prealloc, "falloc") && strcmp(prealloc, "full"))
        return enum_error(a, "preallocation", prealloc);
    if (ct && strcmp(ct, "zlib") && strcmp(ct, "zstd"))
        return enum_error(a, "compression-type", ct);

    uint64_t cs = val_num(a, "cluster_size", 65536);
    o->cluster_size = cs > UINT32_MAX ? 3 : (uint32_t)cs;  /* 3: invalid, reported as such */
    uint64_t rb = val_num(a, "refcount_bits", 16);
    o->refcount_bits = rb > 64 ? 3 : (int)rb;
    o->lazy_refcounts = (int)val_num(a, "lazy_refcounts", 0);
    o->extended_l2 = (int)val_num(a, "extended_l2", 0);
    o->compression_type = ct && !strcmp(ct, "zstd");
    o->backing_file = val_str(a, "backing_file");
    o->backing_fmt = bfmt;
    o->data_file = val_str(a, "data_file");
    o->data_file_raw = (int)val_num(a, "data_file_raw", 0);
    o->preallocation = prealloc_mode(prealloc);
    return 0;
}

static int run_create(struct create_args *a)
{
    qk_create_opts o = QK_CREATE_OPTS_INIT;
    qk_image *img = NULL;
    int r;

    o.size = val_num(a, "size", 0);
    o.no_backing_check = 1;  /* checked and sized above */
    if (!strcmp(a->fmt, "raw")) {
        const char *prealloc = val_str(a, "preallocation");
        if (prealloc && strcmp(prealloc, "off") && strcmp(prealloc, "metadata") &&
            strcmp(prealloc, "falloc") && strcmp(prealloc, "full")) {
            prefixed_error(a->fail_prefix, "invalid parameter value: %s", prealloc);
            return 1;
        }
        o.format = QK_FMT_RAW;
        o.preallocation = prealloc_mode(prealloc);
    } else if (fill_qcow2_opts(a, &o)) {
        return 1;
    }
    if ((r = qk_image_new(&img))) {
        prefixed_error(a->fail_prefix, "%s", qk_strerror(r));
        return 1;
    }
    r = qk_create(img, a->filename, &o);
    if (r)
        prefixed_error(a->fail_prefix, "%s", *qk_errmsg(img) ? qk_errmsg(img) : qk_strerror(r));
    qk_close(img);
    return r ? 1 : 0;
}

/* ---- command line ------------------------------------------------------- */

/* Step 1 up to the size: select FMT's option list and parse OPTIONS (the
 * joined -o list or NULL) into A. */
static int args_parse(struct create_args *a, const char *options)
{
    if (!strcmp(a->fmt, "qcow2")) {
        a->descs = qcow2_opts;
    } else if (!strcmp(a->fmt, "raw")) {
        a->descs = raw_opts;
    } else {
        prefixed_error(a->parse_prefix, "Unknown file format '%s'", a->fmt);
        return 1;
    }
    size_t n = 0;
    while (a->descs[n].name)
        n++;
    a->vals = calloc(n, sizeof *a->vals);
    if (!a->vals)
        abort();
    for (size_t i = 0; i < n; i++)
        a->vals[i].desc = &a->descs[i];
    return options && parse_option_list(a, options) ? 1 : 0;
}

/* The old-style backing options (-b/-F of create, -B/-F of convert). */
static int args_set_backing(struct create_args *a, const char *base, const char *base_fmt)
{
    if (base && !find_val(a, "backing_file")) {
        prefixed_error(a->parse_prefix, "Backing file not supported for file format '%s'", a->fmt);
        return 1;
    }
    if (base)
        set_val(a, "backing_file", base, 0);
    if (base_fmt && !find_val(a, "backing_fmt")) {
        prefixed_error(a->parse_prefix, "Backing file format not supported for file format '%s'", a->fmt);
        return 1;
    }
    if (base_fmt)
        set_val(a, "backing_fmt", base_fmt, 0);
    return 0;
}

static void args_free(struct create_args *a)
{
    if (a->vals)
        for (size_t i = 0; a->descs[i].name; i++)
            free(a->vals[i].str);
    free(a->vals);
}

/* Steps 1-3; then run_create. OPTIONS is the joined -o list or NULL;
 * SIZE_ARG the SIZE argument (NULL if none), already parsed to SIZE_VALUE. */
static int create_image(struct create_args *a, const char *options, const char *base,
                        const char *base_fmt, const char *size_arg, uint64_t size_value)
{
    struct opt_val *size;

    if (args_parse(a, options))
        return 1;
    size = find_val(a, "size");
    if (size_arg && size->set) {
        cli_error("%s: The image size must be specified only once", a->filename);
        return 1;
    }
    if (size_arg) {
        set_val(a, "size", size_arg, 0);
        size->num = size_value;
    }
    if (args_set_backing(a, base, base_fmt) || resolve_backing_and_size(a))
        return 1;
    if (!a->quiet)
        print_formatting(a);
    return run_create(a);
}

int cli_convert_create(const char *filename, const char *fmt, const char *options, const char *base,
                       const char *base_fmt, uint64_t size, int nsrc, int compressed, char **backing)
{
    char prefix[4096];
    struct create_args a = { filename, fmt, NULL, NULL, 1, 1, NULL, prefix };
    int rc = 1;

    *backing = NULL;
    snprintf(prefix, sizeof prefix, "%s: error while converting %s", filename, fmt);
    if (args_parse(&a, options))
        goto out;
    char num[32];
    snprintf(num, sizeof num, "%llu", (unsigned long long)size);
    set_val(&a, "size", num, 0);
    find_val(&a, "size")->num = size;
    if (args_set_backing(&a, base, base_fmt))
        goto out;
    const char *bf = val_str(&a, "backing_file"), *prealloc = val_str(&a, "preallocation");
    if (bf && nsrc > 1) {
        cli_error("Having a backing file for the target makes no sense when concatenating multiple input images");
        goto out;
    }
    if (bf && !val_str(&a, "backing_fmt")) {
        cli_error("Use of backing file requires explicit backing format");
        goto out;
    }
    if (compressed && strcmp(fmt, "qcow2")) {
        cli_error("Compression not supported for this file format");
        goto out;
    }
    if (compressed && prealloc && strcmp(prealloc, "off")) {
        cli_error("Compression and preallocation not supported at the same time");
        goto out;
    }
    if (bf && !(*backing = strdup(bf)))
        abort();
    rc = run_create(&a);
out:
    args_free(&a);
    return rc ? -1 : 0;
}

/* Append "-o" argument ARG to *LIST (joined with ','). */
int cli_add_options(char **list, const char *arg)
{
    if (!valid_option_list(arg)) {
        cli_error("Invalid option list: %s", arg);
        return -1;
    }
    size_t old = *list ? strlen(*list) : 0;
    char *p = realloc(*list, old + strlen(arg) + 2);
    if (!p)
        abort();
    if (old)
        p[old++] = ',';
    strcpy(p + old, arg);
    *list = p;
    return 0;
}

int cli_has_help_option(const char *list)
{
    const char *p = list;
    while (p && *p) {
        size_t n = strcspn(p, ",");
        if ((n == 4 && !strncmp(p, "help", 4)) || (n == 1 && *p == '?'))
            return 1;
        p += n + (p[n] == ',');
    }
    return 0;
}

int cmd_create(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    struct create_args a = { NULL, "raw", NULL, NULL, 0, 0, NULL, NULL };
    const char *base = NULL, *base_fmt = NULL, *size_arg = NULL;
    uint64_t size_value = 0;
    char *options = NULL;
    int c, rc = 1;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":F:b:f:ho:qu", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': create_help(); free(options); return 0;
        case 'F': base_fmt = optarg; break;
        case 'b': base = optarg; break;
        case 'f': a.fmt = optarg; break;
        case 'o':
            if (cli_add_options(&options, optarg))
                goto out;
            break;
        case 'q': a.quiet = 1; break;
        case 'u': a.no_backing_check = 1; break;
        case ':': rc = cli_bad_option(argv, optind, 1); goto out;
        default: rc = cli_bad_option(argv, optind, 0); goto out;
        }
    }
    if (options && cli_has_help_option(options)) {
        if (strcmp(a.fmt, "qcow2") && strcmp(a.fmt, "raw")) {
            cli_error("Unknown file format '%s'", a.fmt);
            goto out;
        }
        cli_print_option_help(a.fmt, optind < argc ? argv[optind] : NULL);
        rc = 0;
        goto out;
    }
    if (optind >= argc) {
        rc = cli_usage_error("Expecting image file name");
        goto out;
    }
    a.filename = argv[optind++];
    a.parse_prefix = a.fail_prefix = a.filename;
    if (optind < argc) {
        size_arg = argv[optind++];
        int64_t v = cli_cvtnum("image size", size_arg);
        if (v < 0)
            goto out;
        size_value = (uint64_t)v;
    }
    if (optind != argc) {
        rc = cli_usage_error("Unexpected argument: %s", argv[optind]);
        goto out;
    }
    rc = create_image(&a, options, base, base_fmt, size_arg, size_value);
out:
    args_free(&a);
    free(options);
    return rc;
}

/* ---- -o lists of other subcommands (measure, amend) ---------------------- */

struct create_args *cli_options_parse(const char *fmt, const char *options)
{
    struct create_args *a = calloc(1, sizeof *a);
    if (!a)
        abort();
    a->fmt = fmt;
    if (args_parse(a, options)) {
        cli_options_free(a);
        return NULL;
    }
    return a;
}

const char *cli_option_str(struct create_args *a, const char *name)
{
    return val_str(a, name);
}

uint64_t cli_option_num(struct create_args *a, const char *name, uint64_t def)
{
    return val_num(a, name, def);
}

void cli_options_free(struct create_args *a)
{
    if (a)
        args_free(a);
    free(a);
}
