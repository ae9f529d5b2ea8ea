/*
 * bitmap-rw.c - the life cycle of persistent dirty bitmaps: loading their
 * data, tracking writes, the API operations, and storing them on close.
 *
 * Spec: shared/spec/000_527c7e902fdcab1e.txt; QEMU's behaviour in
 * qemu-reference.md §4. Write ordering:
 *  1. Before the first guest write, every enabled consistent bitmap is
 *     marked in_use on disk, in place, as QEMU does: autoclear bit 0 cleared
 *     (synchronously), the directory rewritten, bit 0 set again. A crash
 *     later leaves those bitmaps in_use: inconsistent, never trusted.
 *     Disabled bitmaps do not change with guest writes and stay consistent.
 *  2. On close, changed bitmaps get new data clusters and a new table, all
 *     bitmaps a new directory; the caches are flushed; then one header write
 *     switches to the new directory (autoclear bit 0 set exactly when the
 *     extension exists); only then are the old directory, tables and data
 *     freed.
 *
 * Invariants:
 *  1. Only what QEMU 7.2 loads is ever written: v3 images, granularity
 *     9..31 bits, names of 1..1023 bytes, at most 65535 bitmaps, the exact
 *     table size, no extra data on new bitmaps.
 *  2. An inconsistent bitmap's entry is kept byte for byte; it can only be
 *     removed.
 *  3. Clusters of a bitmap are freed only after the header no longer
 *     reaches them.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "endian.h"
#include "internal.h"

void bitmap_release(struct qk_bitmap *b)
{
    free(b->name);
    free(b->extra);
    dirty_free(b->dirty);
    free(b->old_table);
    memset(b, 0, sizeof *b);
}

static struct qk_bitmap *find(qk_image *img, const char *name)
{
    for (uint32_t i = 0; i < img->nb_bitmaps; i++)
        if (!strcmp(img->bitmaps[i].name, name))
            return &img->bitmaps[i];
    return NULL;
}

static int not_found(qk_image *img, const char *name)
{
    return qk_set_error(img, QK_E_NOT_FOUND, "Dirty bitmap '%s' not found", name);
}

static int inconsistent(qk_image *img, const struct qk_bitmap *b)
{
    return qk_set_error(img, QK_E_BITMAP_INCONSISTENT,
                        "Bitmap '%s' is inconsistent and cannot be used (%s)", b->name, b->reason);
}

/* Read the table of B (validated entry by entry) into host order. A broken
 * entry makes the bitmap inconsistent. */
static int read_table(qk_image *img, struct qk_bitmap *b, uint64_t **out)
{
    uint64_t n = b->table_size;
    uint64_t *t = malloc(n * 8);
    if (!t)
        return qk_set_error(img, -ENOMEM, "Out of memory for bitmap '%s'", b->name);
    int r = io_pread(img->io, t, n * 8, b->table_offset);
    if (r < 0) {
        free(t);
        return qk_set_error(img, r, "Could not read bitmap table of '%s': %s", b->name, qk_strerror(r));
    }
    for (uint64_t i = 0; i < n; i++) {
        t[i] = be64_load(&t[i]);
        const char *why = bitmap_table_entry_problem(img, t[i]);
        if (why) {
            free(t);
            b->reason = why;
            return inconsistent(img, b);
        }
    }
    *out = t;
    return 0;
}

static int load_data(qk_image *img, struct qk_bitmap *b)
{
    if (b->dirty)
        return 0;
    if (b->reason)
        return inconsistent(img, b);
    uint64_t *t;
    int r = read_table(img, b, &t);
    if (r < 0)
        return r;
    struct qk_dirty *d;
    uint8_t *buf = malloc(img->cluster_size);
    if (!buf || (r = dirty_new(&d, img->size, b->gran_bits, img->cluster_size)) < 0) {
        free(buf);
        free(t);
        return qk_set_error(img, r < 0 ? r : -ENOMEM, "Out of memory for bitmap '%s'", b->name);
    }
    for (uint64_t i = 0; i < b->table_size && r == 0; i++) {
        uint64_t off = t[i] & BME_TABLE_OFFSET_MASK;
        if (!off) {
            r = dirty_load_cluster(d, i, img->cluster_size, NULL, (int)(t[i] & BME_TABLE_ALL_ONES));
            continue;
        }
        if ((r = io_pread(img->io, buf, img->cluster_size, off)) == 0)
            r = dirty_load_cluster(d, i, img->cluster_size, buf, -1);
    }
    free(buf);
    if (r < 0) {
        dirty_free(d);
        free(t);
        return qk_set_error(img, r, "Could not load bitmap '%s': %s", b->name, qk_strerror(r));
    }
    b->dirty = d;
    b->old_table = t;
    b->old_table_size = b->table_size;
    return 0;
}

static int tracks(const struct qk_bitmap *b)
{
    return !b->reason && (b->flags & BME_FLAG_AUTO);
}

/* Step 1 of the header comment. */
static int mark_in_use(qk_image *img)
{
    int r, any = 0;
    if (img->bitmaps_in_use)
        return 0;
    for (uint32_t i = 0; i < img->nb_bitmaps; i++) {
        struct qk_bitmap *b = &img->bitmaps[i];
        if (!tracks(b))
            continue;
        if ((r = load_data(img, b)) < 0 && r != QK_E_BITMAP_INCONSISTENT)
            return r;
        any |= tracks(b) && b->on_disk;
    }
    img->bitmaps_in_use = 1;
    img->bitmaps_changed = 1;
    if (!any)
        return 0;
    const struct qk_bitmaps_ext *e = &img->hdr.bitmaps;
    uint8_t *dir = malloc(e->dir_size);
    if (!dir)
        return qk_set_error(img, -ENOMEM, "Out of memory");
    if ((r = io_pread(img->io, dir, e->dir_size, e->dir_offset)) < 0) {
        free(dir);
        return qk_set_error(img, r, "Could not read the bitmap directory: %s", qk_strerror(r));
    }
    for (uint32_t i = 0; i < img->nb_bitmaps; i++) {
        const struct qk_bitmap *b = &img->bitmaps[i];
        if (tracks(b) && b->on_disk)
            be32_store(dir + b->dir_pos + 12, b->flags | BME_FLAG_IN_USE);
    }
    uint64_t ac = img->hdr.autoclear;
    if ((r = image_write_be64_sync(img, HDR_AUTOCLEAR, ac & ~AUTOCLEAR_BITMAPS, "the header")) == 0 &&
        (r = image_write_sync(img, e->dir_offset, dir, e->dir_size, "the bitmap directory")) == 0)
        r = image_write_be64_sync(img, HDR_AUTOCLEAR, ac, "the header");
    free(dir);
    return r;
}

int bitmap_track_write(qk_image *img, uint64_t off, uint64_t len)
{
    int r, any = 0;
    for (uint32_t i = 0; i < img->nb_bitmaps; i++)
        any |= tracks(&img->bitmaps[i]);
    if (!any || len == 0)
        return 0;
    if ((r = mark_in_use(img)) < 0)
        return r;
    for (uint32_t i = 0; i < img->nb_bitmaps; i++) {
        struct qk_bitmap *b = &img->bitmaps[i];
        if (tracks(b) && b->dirty && (r = dirty_set(b->dirty, off, len)) < 0)
            return qk_set_error(img, r, "Out of memory tracking bitmap '%s'", b->name);
    }
    return 0;
}

int bitmap_open_writable(qk_image *img)
{
    struct qk_header *h = &img->hdr;
    if (!h->has_bitmaps_ext && (h->autoclear & AUTOCLEAR_BITMAPS)) {
        /* Bit 0 without the extension (the spec forbids it): QEMU would
         * take the missing directory for one at offset 0 and refuse every
         * later write as overlapping it. We do not maintain the bit here. */
        h->autoclear &= ~AUTOCLEAR_BITMAPS;
        return image_rewrite_header(img);
    }
    if (!h->has_bitmaps_ext || (h->autoclear & AUTOCLEAR_BITMAPS && h->version >= 3))
        return 0;
    /* A program without bitmap support wrote the image: the extension
     * cannot be trusted. Drop it, as QEMU does. Its clusters are left
     * leaked: that program may have reused them, so freeing them by the
     * stale pointers could free live data ('check -r leaks' reclaims them). */
    h->has_bitmaps_ext = 0;
    h->bitmaps_ext_error = 0;
    memset(&h->bitmaps, 0, sizeof h->bitmaps);
    h->autoclear &= ~AUTOCLEAR_BITMAPS;
    bitmap_free_all(img);
    img->bitmap_dir_error = 0;
    return image_rewrite_header(img);
}

/* Free a bitmap's table and data clusters, if its table is sound. */
static int free_bitmap_clusters(qk_image *img, struct qk_bitmap *b)
{
    uint64_t *t = b->old_table;
    int r = 0;
    if (!b->on_disk)
        return 0;
    if (!t) {
        if (!b->table_size || !is_aligned(b->table_offset, img->cluster_size) ||
            b->table_size > BME_MAX_TABLE_SIZE ||
            b->table_offset + (uint64_t)b->table_size * 8 > img->file_size)
            return 0;                 /* nothing we can trust: leave it leaked */
        const char *keep = b->reason;
        b->reason = NULL;
        r = read_table(img, b, &t);
        b->reason = keep;
        if (r < 0)
            return r == QK_E_BITMAP_INCONSISTENT ? 0 : r;
    }
    uint64_t n = b->old_table ? b->old_table_size : b->table_size;
    for (uint64_t i = 0; i < n && r == 0; i++) {
        uint64_t off = t[i] & BME_TABLE_OFFSET_MASK;
        if (off)
            r = refcount_update(img, off, img->cluster_size, -1);
    }
    if (r == 0)
        r = refcount_update(img, b->table_offset, n * 8, -1);
    if (t != b->old_table)
        free(t);
    return r;
}

/* Write B's data and table to new clusters; fill *table_off. */
static int store_bitmap(qk_image *img, struct qk_bitmap *b, uint64_t *table_off)
{
    uint32_t cs = img->cluster_size;
    uint64_t n = bitmap_table_size(img, b->gran_bits), off;
    uint8_t *buf = malloc(cs), *table = calloc(n, 8);
    int r = 0;
    if (!buf || !table) {
        free(buf);
        free(table);
        return qk_set_error(img, -ENOMEM, "Out of memory storing bitmap '%s'", b->name);
    }
    for (uint64_t i = 0; i < n && r == 0; i++) {
        int uniform;
        dirty_store_cluster(b->dirty, i, cs, buf, &uniform);
        if (uniform == 0)
            continue;
        if ((r = refcount_alloc(img, 1, &off)) == 0 &&
            (r = io_pwrite(img->io, buf, cs, off)) == 0)
            be64_store(table + i * 8, off);
        else if (r < 0 && !img->errmsg[0])
            qk_set_error(img, r, "Could not write bitmap '%s': %s", b->name, qk_strerror(r));
    }
    uint64_t tclusters = div_round_up(n * 8, cs);
    if (r == 0 && (r = refcount_alloc(img, tclusters, &off)) == 0 &&
        (r = io_pwrite(img->io, table, n * 8, off)) < 0)
        qk_set_error(img, r, "Could not write bitmap table of '%s': %s", b->name, qk_strerror(r));
    free(buf);
    free(table);
    if (r == 0)
        *table_off = off;
    b->table_size = (uint32_t)n;
    return r;
}

static uint64_t entry_size(const struct qk_bitmap *b)
{
    return (BME_FIXED_SIZE + (uint64_t)b->extra_size + b->name_size + 7) & ~7ull;
}

int bitmap_store_all(qk_image *img)
{
    struct qk_header *h = &img->hdr;
    uint64_t cs = img->cluster_size;
    int r;
    if (!img->bitmaps_changed)
        return 0;
    uint64_t *new_tables = calloc(img->nb_bitmaps ? img->nb_bitmaps : 1, 8);
    if (!new_tables)
        return qk_set_error(img, -ENOMEM, "Out of memory");
    uint64_t dir_size = 0;
    for (uint32_t i = 0; i < img->nb_bitmaps; i++) {
        struct qk_bitmap *b = &img->bitmaps[i];
        if (b->dirty && (r = store_bitmap(img, b, &new_tables[i])) < 0)
            goto out;
        dir_size += entry_size(b);
    }
    uint64_t dir_off = 0;
    if (img->nb_bitmaps) {
        uint8_t *dir = calloc(1, dir_size);
        if (!dir) {
            r = qk_set_error(img, -ENOMEM, "Out of memory");
            goto out;
        }
        uint64_t pos = 0;
        for (uint32_t i = 0; i < img->nb_bitmaps; i++) {
            const struct qk_bitmap *b = &img->bitmaps[i];
            uint8_t *p = dir + pos;
            uint32_t flags = b->flags;
            if (b->dirty)
                flags &= ~BME_FLAG_IN_USE;
            be64_store(p, b->dirty ? new_tables[i] : b->table_offset);
            be32_store(p + 8, b->table_size);
            be32_store(p + 12, flags);
            p[16] = b->type;
            p[17] = b->gran_bits;
            be16_store(p + 18, b->name_size);
            be32_store(p + 20, b->extra_size);
            if (b->extra_size)
                memcpy(p + BME_FIXED_SIZE, b->extra, b->extra_size);
            memcpy(p + BME_FIXED_SIZE + b->extra_size, b->name, b->name_size);
            pos += entry_size(b);
        }
        r = refcount_alloc(img, div_round_up(dir_size, cs), &dir_off);
        if (r == 0)
            r = io_pwrite(img->io, dir, dir_size, dir_off);
        free(dir);
        if (r < 0) {
            if (!img->errmsg[0])
                qk_set_error(img, r, "Could not write the bitmap directory: %s", qk_strerror(r));
            goto out;
        }
    }
    /* New structures on disk before the header points at them. */
    if ((r = qk_flush(img)) < 0)
        goto out;
    struct qk_bitmaps_ext old = h->bitmaps;
    int had_ext = h->has_bitmaps_ext && !h->bitmaps_ext_error;
    h->has_bitmaps_ext = img->nb_bitmaps > 0;
    h->bitmaps_ext_error = 0;
    h->bitmaps.nb_bitmaps = img->nb_bitmaps;
    h->bitmaps.reserved = 0;
    h->bitmaps.dir_size = dir_size;
    h->bitmaps.dir_offset = dir_off;
    if (img->nb_bitmaps)
        h->autoclear |= AUTOCLEAR_BITMAPS;
    else
        h->autoclear &= ~AUTOCLEAR_BITMAPS;
    if ((r = image_rewrite_header(img)) < 0)
        goto out;
    /* The old structures are unreachable now: free them. */
    if (had_ext && old.dir_size && is_aligned(old.dir_offset, cs) &&
        old.dir_offset + old.dir_size <= img->file_size &&
        (r = refcount_update(img, old.dir_offset, old.dir_size, -1)) < 0)
        goto out;
    for (uint32_t i = 0; i < img->nb_bitmaps; i++) {
        struct qk_bitmap *b = &img->bitmaps[i];
        if (!b->dirty)
            continue;
        if ((r = free_bitmap_clusters(img, b)) < 0)
            goto out;
        free(b->old_table);
        b->old_table = NULL;
        b->table_offset = new_tables[i];
        b->flags &= ~BME_FLAG_IN_USE;
        b->on_disk = 1;
    }
    for (uint32_t i = 0; i < img->nb_removed; i++) {
        if ((r = free_bitmap_clusters(img, &img->removed[i])) < 0)
            goto out;
        bitmap_release(&img->removed[i]);
    }
    free(img->removed);
    img->removed = NULL;
    img->nb_removed = 0;
    img->bitmaps_changed = 0;
    img->bitmaps_in_use = 0;
    r = 0;
out:
    free(new_tables);
    return r;
}

/* ---- API ------------------------------------------------------------- */

static int check_modifiable(qk_image *img)
{
    if (!img->is_open)
        return qk_set_error(img, QK_E_INVALID, "The image is not open");
    if (img->fmt != QK_FMT_QCOW2)
        return qk_set_error(img, QK_E_UNSUPPORTED, "Can't store persistent bitmaps to %s: Operation not supported",
                            img->filename);
    if (!img->writable)
        return qk_set_error(img, QK_E_READONLY, "The image is opened read-only");
    if (img->broken)
        return qk_set_error(img, QK_E_CORRUPT, "The image was marked corrupt; it takes no more writes");
    return 0;
}

/* Find NAME as a usable bitmap with its data loaded. */
static int find_loaded(qk_image *img, const char *name, struct qk_bitmap **out)
{
    struct qk_bitmap *b = find(img, name);
    if (!b)
        return not_found(img, name);
    int r = load_data(img, b);
    if (r < 0)
        return r;
    *out = b;
    return 0;
}

QK_API int qk_bitmap_list(qk_image *img, qk_bitmap_info **out, size_t *count)
{
    if (!img->is_open)
        return qk_set_error(img, QK_E_INVALID, "The image is not open");
    qk_bitmap_info *v = calloc(img->nb_bitmaps ? img->nb_bitmaps : 1, sizeof *v);
    if (!v)
        return qk_set_error(img, -ENOMEM, "Out of memory");
    for (uint32_t i = 0; i < img->nb_bitmaps; i++) {
        struct qk_bitmap *b = &img->bitmaps[i];
        int r = b->reason ? 0 : load_data(img, b);
        if (r < 0 && r != QK_E_BITMAP_INCONSISTENT) {
            qk_bitmap_list_free(v, i);
            return r;
        }
        v[i].name = strdup(b->name);
        v[i].reason = b->reason ? strdup(b->reason) : NULL;
        if (!v[i].name || (b->reason && !v[i].reason)) {
            qk_bitmap_list_free(v, i + 1);
            return qk_set_error(img, -ENOMEM, "Out of memory");
        }
        v[i].granularity = b->gran_bits < 64 ? 1ull << b->gran_bits : 0;
        v[i].flags = b->flags;
        v[i].consistent = b->reason == NULL;
        v[i].dirty_bytes = b->dirty ? dirty_count_bytes(b->dirty) : 0;
    }
    *out = v;
    *count = img->nb_bitmaps;
    return 0;
}

QK_API void qk_bitmap_list_free(qk_bitmap_info *list, size_t count)
{
    for (size_t i = 0; list && i < count; i++) {
        free(list[i].name);
        free(list[i].reason);
    }
    free(list);
}

QK_API int qk_bitmap_add(qk_image *img, const char *name, uint64_t granularity, unsigned flags)
{
    int r = check_modifiable(img);
    if (r < 0)
        return r;
    size_t len = strlen(name);
    if (img->hdr.version < 3)
        return qk_set_error(img, QK_E_UNSUPPORTED, "Cannot store dirty bitmaps in qcow2 v2 files");
    if (len == 0)
        return qk_set_error(img, QK_E_INVALID, "Bitmap name cannot be empty");
    if (find(img, name))
        return qk_set_error(img, QK_E_EXISTS, "Bitmap already exists: %s", name);
    if (granularity == 0) {
        granularity = img->cluster_size;
        granularity = granularity < 4096 ? 4096 : granularity > 65536 ? 65536 : granularity;
    }
    if (granularity < 512 || (granularity & (granularity - 1)) || granularity > (1ull << BME_MAX_GRAN_BITS))
        return qk_set_error(img, QK_E_INVALID, "Granularity must be power of 2 and at least 512");
    unsigned gb = (unsigned)__builtin_ctzll(granularity);
    if (div_round_up(div_round_up(img->size, granularity), 8) > BME_MAX_PHYS_SIZE)
        return qk_set_error(img, QK_E_TOO_LARGE,
                            "Too much space will be occupied by the bitmap. Use larger granularity");
    /* After the size check, as QEMU's check_constraints_on_bitmap. */
    if (len > BME_MAX_NAME_SIZE)
        return qk_set_error(img, QK_E_INVALID, "Name length exceeds maximum (1023 characters)");
    if (img->nb_bitmaps >= MAX_BITMAPS)
        return qk_set_error(img, QK_E_NOSPC_META, "Maximum number of persistent bitmaps is already reached");
    if (img->bitmap_dir_bytes + ((BME_FIXED_SIZE + len + 7) & ~7ull) > MAX_BITMAP_DIR_SIZE)
        return qk_set_error(img, QK_E_NOSPC_META, "Not enough space in the bitmap directory");

    struct qk_bitmap *v = bitmap_slots(img, img->nb_bitmaps + 1);
    if (!v)
        return qk_set_error(img, -ENOMEM, "Out of memory");
    struct qk_bitmap *b = &v[img->nb_bitmaps];
    memset(b, 0, sizeof *b);
    if (!(b->name = strdup(name)) || (r = dirty_new(&b->dirty, img->size, gb, img->cluster_size)) < 0) {
        bitmap_release(b);
        return qk_set_error(img, -ENOMEM, "Out of memory");
    }
    b->type = BME_TYPE_DIRTY;
    b->gran_bits = (uint8_t)gb;
    b->name_size = (uint16_t)len;
    b->flags = (flags & QK_BITMAP_ADD_DISABLED) ? 0 : BME_FLAG_AUTO;
    img->bitmap_dir_bytes += entry_size(b);
    img->nb_bitmaps++;
    img->bitmaps_changed = 1;
    return 0;
}

QK_API int qk_bitmap_remove(qk_image *img, const char *name)
{
    int r = check_modifiable(img);
    if (r < 0)
        return r;
    struct qk_bitmap *b = find(img, name);
    if (!b)
        return not_found(img, name);
    struct qk_bitmap *v = realloc(img->removed, (img->nb_removed + 1) * sizeof *v);
    if (!v)
        return qk_set_error(img, -ENOMEM, "Out of memory");
    img->removed = v;
    img->bitmap_dir_bytes -= entry_size(b);
    v[img->nb_removed++] = *b;
    uint32_t i = (uint32_t)(b - img->bitmaps);
    memmove(b, b + 1, (img->nb_bitmaps - i - 1) * sizeof *b);
    img->nb_bitmaps--;
    img->bitmaps_changed = 1;
    return 0;
}

static int modify(qk_image *img, const char *name, struct qk_bitmap **out)
{
    int r = check_modifiable(img);
    if (r == 0)
        r = find_loaded(img, name, out);
    if (r == 0)
        img->bitmaps_changed = 1;
    return r;
}

QK_API int qk_bitmap_clear(qk_image *img, const char *name)
{
    struct qk_bitmap *b;
    int r = modify(img, name, &b);
    return r < 0 ? r : dirty_clear_all(b->dirty);
}

QK_API int qk_bitmap_enable(qk_image *img, const char *name)
{
    struct qk_bitmap *b;
    int r = modify(img, name, &b);
    if (r == 0 && !(b->flags & BME_FLAG_AUTO)) {
        b->flags |= BME_FLAG_AUTO;
        /* Tracking from now on: in_use on disk before the next write. */
        img->bitmaps_in_use = 0;
    }
    return r;
}

QK_API int qk_bitmap_disable(qk_image *img, const char *name)
{
    struct qk_bitmap *b;
    int r = modify(img, name, &b);
    if (r == 0)
        b->flags &= ~BME_FLAG_AUTO;
    return r;
}

QK_API int qk_bitmap_merge(qk_image *img, const char *dst, qk_image *src_img, const char *src)
{
    struct qk_bitmap *d, *s;
    int r = modify(img, dst, &d);
    if (r < 0)
        return r;
    if ((r = find_loaded(src_img, src, &s)) < 0)
        return src_img == img ? r : qk_set_error(img, r, "%s", qk_errmsg(src_img));
    if ((r = dirty_merge(d->dirty, s->dirty)) < 0)
        return qk_set_error(img, r, "Out of memory merging bitmaps");
    return 0;
}

QK_API int qk_bitmap_extents(qk_image *img, const char *name, uint64_t offset, uint64_t length,
                             qk_extent_fn fn, void *opaque)
{
    struct qk_bitmap *b;
    if (!img->is_open)
        return qk_set_error(img, QK_E_INVALID, "The image is not open");
    int r = find_loaded(img, name, &b);
    if (r < 0)
        return r;
    uint64_t end = offset + length < offset ? img->size : min_u64(offset + length, img->size);
    while (offset < end) {
        uint64_t len;
        int dirty;
        if ((r = dirty_extent(b->dirty, offset, &len, &dirty)) < 0)
            return qk_set_error(img, r, "Bitmap walk failed");
        len = min_u64(len, end - offset);
        if ((r = fn(opaque, offset, len, dirty)) != 0)
            return r;
        offset += len;
    }
    return 0;
}

int bitmap_resize_all(qk_image *img, uint64_t new_size)
{
    int r;
    for (uint32_t i = 0; i < img->nb_bitmaps; i++) {
        struct qk_bitmap *b = &img->bitmaps[i];
        if (b->reason)
            return inconsistent(img, b);
        if ((r = load_data(img, b)) < 0)
            return r;
    }
    for (uint32_t i = 0; i < img->nb_bitmaps; i++) {
        struct qk_bitmap *b = &img->bitmaps[i];
        struct qk_dirty *d;
        if ((r = dirty_new(&d, new_size, b->gran_bits, img->cluster_size)) < 0)
            return qk_set_error(img, r, "Out of memory resizing bitmap '%s'", b->name);
        if ((r = dirty_merge(d, b->dirty)) < 0) {
            dirty_free(d);
            return qk_set_error(img, r, "Out of memory resizing bitmap '%s'", b->name);
        }
        dirty_free(b->dirty);
        b->dirty = d;
    }
    if (img->nb_bitmaps)
        img->bitmaps_changed = 1;
    return 0;
}
