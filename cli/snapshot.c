/*
 * snapshot.c - `qcowkit snapshot [-l | -a SNAP | -c SNAP | -d SNAP] [-f FMT]
 * [-q] [-U] IMG`: internal snapshots as `qemu-img snapshot` (7.2) handles
 * them: the same list layout, messages and exit codes (0, or 1 on any
 * failure). Without an action the image is only opened (as qemu-img). -a looks SNAP up by id, then by name; -d by
 * name only (qemu-img's bdrv_snapshot_find); -c truncates the name to 255
 * bytes (QEMU's QEMUSnapshotInfo.name).
 *
 * Beyond qemu-img: -f (qemu-img 7.2's snapshot has none), and -a on an
 * image with persistent bitmaps (qemu-img refuses "Device has active dirty
 * bitmaps"): enabled bitmaps get the ranges that the apply changes.
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "imgcommon.h"

enum { ACT_LIST = 1, ACT_APPLY, ACT_CREATE, ACT_DELETE };

static void snapshot_help(void)
{
    printf("usage: qcowkit snapshot [-l | -a SNAPSHOT | -c SNAPSHOT | -d SNAPSHOT] [-f FMT] [-q]\n"
           "                        [-U|--force-share] FILE\n"
           "\n"
           "List (-l), create (-c), apply (-a) or delete (-d) internal\n"
           "snapshots of a qcow2 image. -a finds the snapshot by id, then by name; -d by\n"
           "name. Enabled persistent bitmaps are marked where -a changes the image.\n");
}

/* qemu-img's message tail for code R: errno text, else our message. */
static const char *reason(qk_image *img, int r)
{
    return r > -1000 ? strerror(-r) : qk_errmsg(img);
}

static int run(qk_image *img, int action, const char *snap)
{
    qk_info *info;
    int r;
    switch (action) {
    case ACT_LIST:
        if ((r = qk_get_info(img, &info)) < 0) {
            cli_error("%s", qk_errmsg(img));
            return 1;
        }
        cli_print_snapshots(info);   /* even with -q, as qemu-img */
        qk_info_free(info);
        return 0;
    case ACT_CREATE: {
        char name[256];
        snprintf(name, sizeof name, "%s", snap);
        if ((r = qk_snapshot_create(img, name)) < 0) {
            if (r > -1000)
                cli_error("Could not create snapshot '%s': %d (%s)", snap, r, strerror(-r));
            else
                cli_error("Could not create snapshot '%s': %s", snap, qk_errmsg(img));
            return 1;
        }
        return 0;
    }
    case 0:
        return 0;                    /* qemu-img only opens the image */
    case ACT_APPLY:
        if ((r = qk_snapshot_apply(img, snap)) < 0) {
            cli_error("Could not apply snapshot '%s': %s%s", snap, r > -1000 ? "Failed to load snapshot: " : "",
                      reason(img, r));
            return 1;
        }
        return 0;
    default:
        break;
    }
    /* -d: the first snapshot with this name, deleted by its id. */
    if ((r = qk_get_info(img, &info)) < 0) {
        cli_error("%s", qk_errmsg(img));
        return 1;
    }
    const char *id = NULL;
    for (size_t i = 0; i < info->nb_snapshots && !id; i++)
        if (!strcmp(info->snapshots[i].name, snap))
            id = info->snapshots[i].id;
    if (!id) {
        cli_error("Could not delete snapshot '%s': snapshot not found", snap);
        r = -1;
    } else if ((r = qk_snapshot_delete(img, id)) < 0) {
        cli_error("Could not delete snapshot '%s': %s", snap, qk_errmsg(img));
    }
    qk_info_free(info);
    return r < 0;
}

int cmd_snapshot(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    const char *fmt = NULL, *snap = NULL;
    unsigned flags = 0;
    int action = 0, c;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":la:c:d:f:hqU", longopts, NULL)) != -1) {
        int act = 0;
        switch (c) {
        case 'h':
            snapshot_help();
            return 0;
        case 'l': act = ACT_LIST; break;
        case 'a': act = ACT_APPLY; break;
        case 'c': act = ACT_CREATE; break;
        case 'd': act = ACT_DELETE; break;
        case 'f': fmt = optarg; break;
        case 'q': break;             /* nothing to quieten */
        case 'U': flags |= QK_OPEN_FORCE_SHARE; break;
        default:
            return cli_bad_option(argv, optind, c == ':');
        }
        if (act) {
            if (action)
                return cli_usage_error("Cannot mix '-l', '-a', '-c', '-d'");
            action = act;
            snap = act == ACT_LIST ? NULL : optarg;
        }
    }
    if (optind != argc - 1)
        return cli_usage_error("Expecting one image file name");
    if (action != ACT_LIST) {
        if (flags & QK_OPEN_FORCE_SHARE) {
            cli_error("Could not open '%s': force-share=on can only be used with read-only images", argv[optind]);
            return 1;
        }
        flags |= QK_OPEN_RDWR;
    }

    qk_image *img;
    qk_info *info;
    if (cli_open_image(&img, argv[optind], fmt, flags) < 0)
        return 1;
    /* qemu-img warns at each read-write open of a probed raw image (-a opens
     * it twice). */
    if (!fmt && action != ACT_LIST && qk_get_info(img, &info) == 0) {
        for (int i = 0; info->format == QK_FMT_RAW && i < (action == ACT_APPLY ? 2 : 1); i++)
            fprintf(stderr, "WARNING: Image format was not specified for '%s' and probing guessed raw.\n"
                    "         Automatically detecting the format is dangerous for raw images, write "
                    "operations on block 0 will be restricted.\n"
                    "         Specify the 'raw' format explicitly to remove the restrictions.\n", argv[optind]);
        qk_info_free(info);
    }
    int rc = run(img, action, snap);
    if (qk_close(img) < 0 && rc == 0) {
        cli_error("Could not close the image");
        rc = 1;
    }
    return rc;
}
