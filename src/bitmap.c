/*
 * bitmap.c - the bitmaps extension: directory parsing and the consistency
 * state of every bitmap (read side).
 *
 * Spec: shared/spec/000_527c7e902fdcab1e.txt ("Bitmaps extension", "Bitmap
 * directory"); QEMU's checks in qemu-reference.md §3.
 *
 * Invariants:
 *  1. Loading never fails the open. A bitmap that breaks a rule is kept with
 *     a reason (a static string naming the rule); a directory that cannot be
 *     read leaves img->bitmap_dir_error set and no bitmaps listed.
 *  2. Every length read from the directory is checked against the bytes of
 *     the directory before it is used; the directory itself is at most
 *     MAX_BITMAP_DIR_SIZE bytes and inside the file before it is allocated.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "endian.h"
#include "internal.h"

void bitmap_free_all(qk_image *img)
{
    for (uint32_t i = 0; i < img->nb_bitmaps; i++)
        bitmap_release(&img->bitmaps[i]);
    for (uint32_t i = 0; i < img->nb_removed; i++)
        bitmap_release(&img->removed[i]);
    free(img->bitmaps);
    free(img->removed);
    img->bitmaps = img->removed = NULL;
    img->nb_bitmaps = img->nb_removed = img->bitmaps_cap = 0;
    img->bitmap_dir_bytes = 0;
}

struct qk_bitmap *bitmap_slots(qk_image *img, uint32_t n)
{
    if (n <= img->bitmaps_cap)
        return img->bitmaps;
    uint32_t cap = img->bitmaps_cap ? img->bitmaps_cap : 8;
    while (cap < n)
        cap *= 2;
    struct qk_bitmap *v = realloc(img->bitmaps, (size_t)cap * sizeof *v);
    if (!v)
        return NULL;
    img->bitmaps = v;
    img->bitmaps_cap = cap;
    return v;
}

static void dir_error(qk_image *img, const char *msg)
{
    img->bitmap_dir_error = 1;
    if (msg != img->bitmap_dir_reason)
        snprintf(img->bitmap_dir_reason, sizeof img->bitmap_dir_reason, "%s", msg);
}

/* The exact table size QEMU requires for a bitmap of granularity 2^gb. */
uint64_t bitmap_table_size(const qk_image *img, unsigned gb)
{
    uint64_t bits = gb >= 64 ? 1 : div_round_up(img->size, 1ull << gb);
    return div_round_up(div_round_up(bits, 8), img->cluster_size);
}

/* The rule a directory entry breaks, or NULL. */
static const char *entry_problem(const qk_image *img, const struct qk_bitmap *b,
                                 const uint8_t *pad, size_t pad_len)
{
    if (b->flags & BME_FLAG_IN_USE)
        return "in use: it was not saved correctly and may be inconsistent";
    if (b->type != BME_TYPE_DIRTY)
        return "type is not 1 (dirty tracking)";
    if (b->flags & BME_SPEC_RESERVED_FLAGS)
        return "reserved flags are set";
    if (b->name_size == 0)
        return "name is empty";
    if (b->name_size > BME_MAX_NAME_SIZE)
        return "name is longer than 1023 bytes";
    if (b->gran_bits < BME_MIN_GRAN_BITS || b->gran_bits > BME_MAX_GRAN_BITS)
        return "granularity is outside 512 B..2 GiB (granularity_bits 9..31)";
    if (b->extra_size && !(b->flags & BME_FLAG_EXTRA_COMPAT))
        return "unknown extra data without the extra_data_compatible flag";
    if (b->table_offset == 0)
        return "bitmap table offset is 0";
    if (!is_aligned(b->table_offset, img->cluster_size))
        return "bitmap table offset is not cluster aligned";
    if (b->table_size == 0)
        return "bitmap table size is 0";
    if (b->table_size > BME_MAX_TABLE_SIZE ||
        (uint64_t)b->table_size * img->cluster_size > BME_MAX_PHYS_SIZE)
        return "bitmap table is larger than 512 MiB of bitmap data";
    if (b->table_size != bitmap_table_size(img, b->gran_bits))
        return b->table_size < bitmap_table_size(img, b->gran_bits)
                   ? "bitmap table is too small for the virtual size"
                   : "bitmap table is larger than the virtual size needs";
    if (b->table_offset + (uint64_t)b->table_size * 8 > img->file_size)
        return "bitmap table is past the end of the file";
    for (size_t i = 0; i < pad_len; i++)
        if (pad[i])
            return "directory entry padding is not zero";
    return NULL;
}

const char *bitmap_table_entry_problem(const qk_image *img, uint64_t e)
{
    uint64_t off = e & BME_TABLE_OFFSET_MASK;
    if (e & BME_TABLE_RESERVED)
        return "a bitmap table entry has reserved bits set";
    if (off && (e & BME_TABLE_ALL_ONES))
        return "a bitmap table entry has both an offset and the all-ones flag";
    if (off && !is_aligned(off, img->cluster_size))
        return "a bitmap table entry is not cluster aligned";
    if (off && off + img->cluster_size > img->file_size)
        return "a bitmap data cluster is past the end of the file";
    return NULL;
}

/* The rule B's table breaks, read in small pieces (QEMU checks the tables
 * of consistent bitmaps when it opens the image, so `info` should too). */
static const char *table_problem(qk_image *img, const struct qk_bitmap *b)
{
    uint8_t buf[8192];
    uint64_t left = (uint64_t)b->table_size * 8, off = b->table_offset;
    while (left > 0) {
        size_t n = left < sizeof buf ? (size_t)left : sizeof buf;
        if (io_pread(img->io, buf, n, off) < 0)
            return "the bitmap table could not be read";
        for (size_t i = 0; i < n; i += 8) {
            const char *why = bitmap_table_entry_problem(img, be64_load(buf + i));
            if (why)
                return why;
        }
        off += n;
        left -= n;
    }
    return NULL;
}

static int by_name(const void *a, const void *b)
{
    const struct qk_bitmap *x = *(const struct qk_bitmap *const *)a;
    const struct qk_bitmap *y = *(const struct qk_bitmap *const *)b;
    int c = strcmp(x->name, y->name);
    return c ? c : (x < y ? -1 : x > y);
}

/* Every bitmap whose name an earlier entry already has is inconsistent
 * (QEMU: "Bitmap already exists"). Sorting keeps this O(n log n) for 65535. */
static int mark_duplicates(qk_image *img)
{
    if (img->nb_bitmaps < 2)
        return 0;
    struct qk_bitmap **v = malloc(img->nb_bitmaps * sizeof *v);
    if (!v)
        return qk_set_error(img, -ENOMEM, "Out of memory");
    for (uint32_t i = 0; i < img->nb_bitmaps; i++)
        v[i] = &img->bitmaps[i];
    qsort(v, img->nb_bitmaps, sizeof *v, by_name);
    for (uint32_t i = 1; i < img->nb_bitmaps; i++)
        if (!strcmp(v[i]->name, v[i - 1]->name) && !v[i]->reason)
            v[i]->reason = "another bitmap has the same name";
    free(v);
    return 0;
}

int bitmap_load_directory(qk_image *img)
{
    const struct qk_header *h = &img->hdr;
    if (!h->has_bitmaps_ext)
        return 0;
    if (h->bitmaps_ext_error) {
        dir_error(img, "bitmaps_ext: Invalid extension length");
        return 0;
    }
    const struct qk_bitmaps_ext *e = &h->bitmaps;
    if (e->nb_bitmaps == 0) {
        dir_error(img, "found bitmaps extension with zero bitmaps");
        return 0;
    }
    if (!is_aligned(e->dir_offset, img->cluster_size) || e->dir_offset == 0) {
        dir_error(img, "bitmaps_ext: invalid bitmap directory offset");
        return 0;
    }
    if (e->dir_size == 0) {
        dir_error(img, "Requested bitmap directory size is zero");
        return 0;
    }
    if (e->dir_size > MAX_BITMAP_DIR_SIZE) {
        dir_error(img, "bitmaps_ext: bitmap directory size exceeds the maximum supported size (67107840)");
        return 0;
    }
    if (e->dir_offset > img->file_size || e->dir_size > img->file_size - e->dir_offset) {
        dir_error(img, "bitmap directory is past the end of the file");
        return 0;
    }
    /* Extension-level rules QEMU checks first make every bitmap inconsistent;
     * the entries are still read so they can be listed and removed. */
    const char *ext_reason = NULL;
    if (e->reserved)
        ext_reason = "bitmaps_ext: Reserved field is not zero";
    else if (e->nb_bitmaps > MAX_BITMAPS) {
        snprintf(img->bitmap_dir_reason, sizeof img->bitmap_dir_reason,
                 "bitmaps_ext: Image has %u bitmaps, exceeding the QEMU supported maximum of %u",
                 e->nb_bitmaps, MAX_BITMAPS);
        ext_reason = img->bitmap_dir_reason;   /* lives as long as the image */
    }
    uint8_t *dir = malloc(e->dir_size);
    if (!dir)
        return qk_set_error(img, -ENOMEM, "Out of memory reading the bitmap directory");
    int r = io_pread(img->io, dir, e->dir_size, e->dir_offset);
    if (r < 0) {
        free(dir);
        dir_error(img, "Failed to read bitmap directory");
        return 0;
    }

    const char *all_reason = ext_reason;
    uint64_t off = 0;
    uint32_t count = 0;
    while (off < e->dir_size) {
        if (e->dir_size - off < BME_FIXED_SIZE) {
            all_reason = all_reason ? all_reason : "Broken bitmap directory";
            break;
        }
        if (count >= e->nb_bitmaps || count >= MAX_BITMAPS) {
            all_reason = all_reason ? all_reason : "More bitmaps found than specified in header extension";
            break;
        }
        const uint8_t *p = dir + off;
        uint32_t extra = be32_load(p + 20);
        uint16_t name_size = be16_load(p + 18);
        uint64_t len = BME_FIXED_SIZE + (uint64_t)extra + name_size;
        uint64_t padded = (len + 7) & ~7ull;
        if (padded > e->dir_size - off) {
            all_reason = all_reason ? all_reason : "Broken bitmap directory";
            break;
        }
        struct qk_bitmap *v = bitmap_slots(img, count + 1);
        if (!v) {
            free(dir);
            return qk_set_error(img, -ENOMEM, "Out of memory reading the bitmap directory");
        }
        img->bitmaps = v;
        struct qk_bitmap *b = &v[count];
        memset(b, 0, sizeof *b);
        b->on_disk = 1;
        b->dir_pos = off;
        img->nb_bitmaps = ++count;
        b->table_offset = be64_load(p);
        b->table_size = be32_load(p + 8);
        b->flags = be32_load(p + 12);
        b->type = p[16];
        b->gran_bits = p[17];
        b->name_size = name_size;
        b->extra_size = extra;
        b->name = malloc((size_t)name_size + 1);
        b->extra = extra ? malloc(extra) : NULL;
        if (!b->name || (extra && !b->extra)) {
            free(dir);
            return qk_set_error(img, -ENOMEM, "Out of memory reading the bitmap directory");
        }
        if (extra)
            memcpy(b->extra, p + BME_FIXED_SIZE, extra);
        memcpy(b->name, p + BME_FIXED_SIZE + extra, name_size);
        b->name[name_size] = '\0';
        if (memchr(b->name, 0, name_size))
            b->reason = "name contains a NUL byte";
        else
            b->reason = entry_problem(img, b, p + len, padded - len);
        if (!b->reason)
            b->reason = table_problem(img, b);
        img->bitmap_dir_bytes += padded;
        off += padded;
    }
    free(dir);
    if (!all_reason && count < e->nb_bitmaps)
        all_reason = "Less bitmaps found than specified in header extension";
    if (!all_reason && !(h->autoclear & AUTOCLEAR_BITMAPS))
        all_reason = "the bitmaps autoclear bit is clear: a program without bitmap support modified the image";
    if (!all_reason && h->version < 3)
        all_reason = "bitmaps in a v2 image cannot be trusted";
    if (all_reason)
        dir_error(img, all_reason);
    for (uint32_t i = 0; i < count; i++)
        if (all_reason && !img->bitmaps[i].reason)
            img->bitmaps[i].reason = all_reason;
    return mark_duplicates(img);
}
