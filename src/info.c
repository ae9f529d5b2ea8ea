/*
 * info.c - qk_get_info(): what `qemu-img info` shows about one image.
 *
 * Invariants: the qk_info returned owns deep copies of every string, so it
 * outlives the handle's later calls; qk_info_free() releases all of it.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static int dup_opt(char **dst, const char *src)
{
    if (!src) {
        *dst = NULL;
        return 0;
    }
    *dst = strdup(src);
    return *dst ? 0 : -ENOMEM;
}

QK_API void qk_info_free(qk_info *info)
{
    if (!info)
        return;
    free(info->backing_file);
    free(info->full_backing_file);
    free(info->backing_format);
    free(info->data_file);
    for (size_t i = 0; i < info->nb_snapshots; i++) {
        free(info->snapshots[i].id);
        free(info->snapshots[i].name);
    }
    free(info->snapshots);
    for (size_t i = 0; i < info->nb_bitmaps; i++) {
        free(info->bitmaps[i].name);
        free(info->bitmaps[i].reason);
    }
    free(info->bitmaps);
    free(info);
}

static int fill_qcow2(qk_image *img, qk_info *in)
{
    const struct qk_header *h = &img->hdr;
    in->version = (int)h->version;
    in->cluster_size = img->cluster_size;
    in->refcount_bits = 1 << h->refcount_order;
    in->lazy_refcounts = (h->compat & COMPAT_LAZY_REFCOUNTS) != 0;
    in->corrupt = (h->incompat & INCOMPAT_CORRUPT) != 0;
    in->dirty = (h->incompat & INCOMPAT_DIRTY) != 0;
    in->extended_l2 = img->extl2;
    in->compression_type = h->compression_type;
    in->incompatible_features = h->incompat;
    in->compatible_features = h->compat;
    in->autoclear_features = h->autoclear;
    in->data_file_raw = (h->autoclear & AUTOCLEAR_DATA_RAW) != 0;
    in->backing_format_probed = h->backing_name && !h->backing_fmt;
    in->bitmaps_ext_error = img->bitmap_dir_error;
    if (dup_opt(&in->backing_file, h->backing_name) ||
        dup_opt(&in->backing_format, h->backing_fmt) ||
        dup_opt(&in->data_file, h->data_file))
        return -ENOMEM;
    if (h->backing_name) {
        in->full_backing_file = img->backing_full ? strdup(img->backing_full)
                                                  : backing_resolve(img->filename, h->backing_name);
        if (!in->full_backing_file)
            return -ENOMEM;
    }
    if (img->nb_snapshots) {
        in->snapshots = calloc(img->nb_snapshots, sizeof *in->snapshots);
        if (!in->snapshots)
            return -ENOMEM;
        in->nb_snapshots = img->nb_snapshots;
        for (uint32_t i = 0; i < img->nb_snapshots; i++) {
            const struct qk_snapshot *s = &img->snapshots[i];
            qk_snapshot_info *o = &in->snapshots[i];
            if (dup_opt(&o->id, s->id) || dup_opt(&o->name, s->name))
                return -ENOMEM;
            o->vm_state_size = s->vm_state_size;
            o->date_sec = s->date_sec;
            o->date_nsec = s->date_nsec;
            o->vm_clock_nsec = s->vm_clock_nsec;
            o->icount = s->icount;
            o->has_icount = s->has_icount;
        }
    }
    if (img->nb_bitmaps) {
        in->bitmaps = calloc(img->nb_bitmaps, sizeof *in->bitmaps);
        if (!in->bitmaps)
            return -ENOMEM;
        in->nb_bitmaps = img->nb_bitmaps;
        for (uint32_t i = 0; i < img->nb_bitmaps; i++) {
            const struct qk_bitmap *b = &img->bitmaps[i];
            qk_bitmap_info *o = &in->bitmaps[i];
            if (dup_opt(&o->name, b->name) || dup_opt(&o->reason, b->reason))
                return -ENOMEM;
            o->granularity = b->gran_bits < 64 ? 1ull << b->gran_bits : 0;
            o->flags = b->flags;
            o->consistent = b->reason == NULL;
        }
    }
    return 0;
}

QK_API int qk_get_info(qk_image *img, qk_info **out)
{
    if (!img->is_open)
        return qk_set_error(img, QK_E_INVALID, "The image is not open");
    qk_info *in = calloc(1, sizeof *in);
    if (!in)
        return qk_set_error(img, -ENOMEM, "Out of memory");
    in->format = img->fmt;
    in->filename = img->filename;
    in->virtual_size = img->size;
    int r = img->io->ops->allocated_size(img->io, &in->actual_size);
    if (r == 0 && img->fmt == QK_FMT_QCOW2)
        r = fill_qcow2(img, in);
    if (r < 0) {
        qk_info_free(in);
        return qk_set_error(img, r, "Could not gather image information: %s", qk_strerror(r));
    }
    *out = in;
    return 0;
}
