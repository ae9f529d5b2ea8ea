/*
 * backing.c - the backing chain: name resolution, format choice, depth limit
 * and loop detection.
 *
 * Invariants (design.md §5):
 *  1. A backing name is a plain local path, resolved against the folder of
 *     the image that names it; names with a protocol prefix ("json:", "nbd:",
 *     any "word:" before the first '/') are refused.
 *  2. Backing files are opened read-only and share the top's lock mode.
 *  3. Without a recorded format the file is probed (qcow2 by its magic, else
 *     raw) and img->backing_probed says so.
 *  4. The chain is at most MAX_BACKING_DEPTH deep; a file that is already in
 *     the chain (same device and inode) is a loop and is refused.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "internal.h"

char *backing_resolve(const char *base_path, const char *name)
{
    const char *slash = strrchr(base_path, '/');
    if (name[0] == '/' || !slash)
        return strdup(name);
    size_t dlen = (size_t)(slash - base_path) + 1;
    char *s = malloc(dlen + strlen(name) + 1);
    if (!s)
        return NULL;
    memcpy(s, base_path, dlen);
    strcpy(s + dlen, name);
    return s;
}

/* QEMU's path_has_protocol: a ':' before any '/'. */
static int has_protocol(const char *name)
{
    size_t n = strcspn(name, ":/");
    return name[n] == ':';
}

int path_is_plain(const char *name)
{
    return !has_protocol(name);
}

static int same_file(const qk_image *a, const char *path)
{
    struct stat sa, sb;
    if (stat(a->filename, &sa) < 0 || stat(path, &sb) < 0)
        return 0;
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

int backing_open(qk_image *img)
{
    const char *name = img->hdr.backing_name;
    const char *fmt = img->hdr.backing_fmt;
    int r;
    if (!name)
        return 0;
    if (has_protocol(name))
        return qk_set_error(img, QK_E_UNSUPPORTED,
                            "Backing file '%s' uses a protocol prefix; only local files are opened",
                            name);
    if (!(img->backing_full = backing_resolve(img->filename, name)))
        return qk_set_error(img, -ENOMEM, "Out of memory");

    unsigned flags = img->flags & (QK_OPEN_FORCE_SHARE | QK_OPEN_NO_LOCK);
    if (fmt) {
        if (!strcmp(fmt, "qcow2"))
            flags |= QK_OPEN_FMT_QCOW2;
        else if (!strcmp(fmt, "raw"))
            flags |= QK_OPEN_FMT_RAW;
        else
            return qk_set_error(img, QK_E_UNSUPPORTED,
                                "Could not open backing file: Unknown driver '%s'", fmt);
    } else {
        img->backing_probed = 1;
    }
    if (img->depth + 1 >= MAX_BACKING_DEPTH)
        return qk_set_error(img, QK_E_UNSUPPORTED,
                            "Backing chain is deeper than %d images", MAX_BACKING_DEPTH);
    for (const qk_image *a = img; a; a = a->parent)
        if (same_file(a, img->backing_full))
            return QK_CORRUPT(img, "Backing chain loop: '%s' is already in the chain",
                              img->backing_full);

    qk_image *b;
    if ((r = qk_image_new(&b)) < 0)
        return qk_set_error(img, r, "Out of memory");
    b->depth = img->depth + 1;
    b->parent = img;
    r = qk_open(b, img->backing_full, flags);
    if (r < 0) {
        /* Say it once, however deep in the chain the failure was. */
        static const char prefix[] = "Could not open backing file: ";
        const char *m = qk_errmsg(b);
        qk_set_error(img, r, "%s%s", strncmp(m, prefix, sizeof prefix - 1) ? prefix : "", m);
        qk_close(b);
        return r;
    }
    img->backing = b;
    free(img->backing_fmt_used);
    img->backing_fmt_used = strdup(b->fmt == QK_FMT_QCOW2 ? "qcow2" : "raw");
    return img->backing_fmt_used ? 0 : qk_set_error(img, -ENOMEM, "Out of memory");
}
