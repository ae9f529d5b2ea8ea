/*
 * fuzz_bitmap.c - libFuzzer target: list the persistent bitmaps of an
 * arbitrary image in memory and dump every one of them (qk_bitmap_extents
 * over the whole disk), as `qcowkit bitmap --list` / `--dump` do.
 *
 * Bounded work per input: the walk of each bitmap stops after RUN_BUDGET
 * runs, and at most BITMAP_BUDGET bitmaps are dumped.
 */
#include "fuzz.h"

#define RUN_BUDGET 100000
#define BITMAP_BUDGET 64

static int count_run(void *opaque, uint64_t offset, uint64_t length, int dirty)
{
    (void)offset, (void)length, (void)dirty;
    unsigned *runs = opaque;
    return ++*runs >= RUN_BUDGET;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qk_image *img;
    if (fuzz_open(&img, data, size, size, 0) < 0)
        return 0;
    qk_bitmap_info *list;
    size_t n;
    if (qk_bitmap_list(img, &list, &n) == 0) {
        for (size_t i = 0; i < n && i < BITMAP_BUDGET; i++) {
            unsigned runs = 0;
            (void)qk_bitmap_extents(img, list[i].name, 0, qk_size(img), count_run, &runs);
        }
        qk_bitmap_list_free(list, n);
    }
    qk_close(img);
    return 0;
}
