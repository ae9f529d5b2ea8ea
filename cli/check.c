/*
 * check.c - `qcowkit check`: qemu-img 7.2's check. Runs qk_check() (with
 * repairs for -r leaks|all, then a second, read-only pass, as qemu-img
 * does) and prints qemu-img's report: the diagnostic lines on stderr as the
 * library produces them, the summary (human or JSON, zero counters omitted)
 * on stdout.
 *
 * Exit codes (qemu-img): 0 clean (or everything repaired), 1 the check could
 * not run or had internal errors, 2 corruptions remain, 3 only leaks remain,
 * 63 the format has no checks (raw).
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "imgcommon.h"
#include "json.h"
#include "qcowkit.h"
#include "util.h"

enum { OPT_OUTPUT = 256, OPT_OBJECT, OPT_IMAGE_OPTS };

static void check_help(void)
{
    printf("usage: qcowkit check [-q] [-f FMT] [--output=human|json] [-r leaks|all]\n"
           "                     [-T SRC_CACHE] [-U|--force-share] FILE\n"
           "\n"
           "Check FILE for inconsistencies, like qemu-img check: every cluster's\n"
           "refcount against the references to it, L1/L2/refcount/snapshot/bitmap\n"
           "structures, COPIED flags. -r leaks frees leaked clusters; -r all also\n"
           "fixes refcounts and COPIED flags, rebuilds the refcount structure when\n"
           "needed, removes inconsistent bitmaps, and clears the dirty and corrupt\n"
           "bits when the image is clean. Exit codes: 0 clean, 1 check failed,\n"
           "2 corruptions, 3 leaks, 63 no checks for this format.\n");
}

static void to_stderr(void *opaque, const char *line)
{
    (void)opaque;
    fprintf(stderr, "%s\n", line);
}

static void dump_human(const qk_check_result *r, int quiet)
{
    if (quiet)
        return;
    if (!(r->corruptions || r->leaks || r->check_errors)) {
        printf("No errors were found on the image.\n");
    } else {
        if (r->corruptions)
            printf("\n%" PRId64 " errors were found on the image.\n"
                   "Data may be corrupted, or further writes to the image may corrupt it.\n",
                   r->corruptions);
        if (r->leaks)
            printf("\n%" PRId64 " leaked clusters were found on the image.\n"
                   "This means waste of disk space, but no harm to data.\n", r->leaks);
        if (r->check_errors)
            printf("\n%" PRId64 " internal errors have occurred during the check.\n", r->check_errors);
    }
    if (r->total_clusters && r->allocated_clusters)
        printf("%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed clusters\n",
               r->allocated_clusters, r->total_clusters,
               r->allocated_clusters * 100.0 / r->total_clusters,
               r->fragmented_clusters * 100.0 / r->allocated_clusters,
               r->compressed_clusters * 100.0 / r->allocated_clusters);
    if (r->image_end_offset)
        printf("Image end offset: %" PRIu64 "\n", r->image_end_offset);
}

static void set_nonzero(json *o, const char *key, uint64_t v)
{
    if (v)
        json_set(o, key, json_uint(v));
}

/* ImageCheck in QAPI schema order (json_object() prints QDict order). */
static void dump_json(const qk_check_result *r, const char *filename, int quiet)
{
    json *o = json_object();
    json_set(o, "filename", json_string(filename));
    json_set(o, "format", json_string("qcow2"));
    json_set(o, "check-errors", json_int(r->check_errors));
    set_nonzero(o, "image-end-offset", r->image_end_offset);
    set_nonzero(o, "corruptions", (uint64_t)r->corruptions);
    set_nonzero(o, "leaks", (uint64_t)r->leaks);
    set_nonzero(o, "corruptions-fixed", (uint64_t)r->corruptions_fixed);
    set_nonzero(o, "leaks-fixed", (uint64_t)r->leaks_fixed);
    set_nonzero(o, "total-clusters", r->total_clusters);
    set_nonzero(o, "allocated-clusters", r->allocated_clusters);
    set_nonzero(o, "fragmented-clusters", r->fragmented_clusters);
    set_nonzero(o, "compressed-clusters", r->compressed_clusters);
    if (!quiet)
        json_print(stdout, o);
    json_free(o);
}

/* qemu-img's img_check() after the open. */
static int run_check(qk_image *img, const char *filename, unsigned fix, enum cli_output out, int quiet)
{
    qk_check_result res = QK_CHECK_RESULT_INIT;
    res.message = to_stderr;
    int r = qk_check(img, fix, &res);
    if (r == QK_E_UNSUPPORTED) {
        cli_error("This image format does not support checks");
        return 63;
    }
    if (r == 0 && (res.corruptions_fixed || res.leaks_fixed)) {
        int64_t cf = res.corruptions_fixed, lf = res.leaks_fixed;
        if (out == CLI_OUTPUT_HUMAN && !quiet)
            printf("The following inconsistencies were found and repaired:\n\n"
                   "    %" PRId64 " leaked clusters\n"
                   "    %" PRId64 " corruptions\n\n"
                   "Double checking the fixed image now...\n", lf, cf);
        r = qk_check(img, 0, &res);
        res.corruptions_fixed = cf;
        res.leaks_fixed = lf;
    }
    if (r == 0) {
        if (out == CLI_OUTPUT_HUMAN)
            dump_human(&res, quiet);
        else
            dump_json(&res, filename, quiet);
    }
    if (r || res.check_errors) {
        if (r)
            cli_error("Check failed: %s", cli_io_strerror(r));
        else
            cli_error("Check failed");
        return 1;
    }
    return res.corruptions ? 2 : res.leaks ? 3 : 0;
}

int cmd_check(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "repair", required_argument, NULL, 'r' },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    enum cli_output out = CLI_OUTPUT_HUMAN;
    const char *fmt = NULL, *output_arg = NULL;
    unsigned flags = QK_OPEN_CHECK, fix = 0;
    int quiet = 0, c;
    qk_image *img;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":hf:r:T:qU", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': check_help(); return 0;
        case 'f': fmt = optarg; break;
        case 'r':
            flags |= QK_OPEN_RDWR;
            if (!strcmp(optarg, "leaks"))
                fix = QK_CHECK_FIX_LEAKS;
            else if (!strcmp(optarg, "all"))
                fix = QK_CHECK_FIX_LEAKS | QK_CHECK_FIX_ERRORS;
            else
                return cli_usage_error("Unknown option value for -r (expecting 'leaks' or 'all'): %s", optarg);
            break;
        case 'T': break;   /* cache mode: every mode is safe for a check */
        case 'q': quiet = 1; break;
        case 'U': flags |= QK_OPEN_FORCE_SHARE; break;
        case OPT_OUTPUT: output_arg = optarg; break;
        case ':': return cli_bad_option(argv, optind, 1);
        default: return cli_bad_option(argv, optind, 0);
        }
    }
    if (optind != argc - 1)
        return cli_usage_error("Expecting one image file name");
    if (output_arg && cli_parse_output(output_arg, &out))
        return 1;
    if (cli_open_image(&img, argv[optind], fmt, flags))
        return 1;
    int rc = run_check(img, argv[optind], fix, out, quiet);
    int r = qk_close(img);
    if (r && rc != 1) {
        cli_error("%s", qk_strerror(r));
        rc = 1;
    }
    return rc;
}
