/*
 * fuzz_check.c - libFuzzer target: `qcowkit check` (read-only) on an
 * arbitrary image in memory: open as qk_check wants it (QK_OPEN_CHECK), then
 * count refcounts, walk L1/L2, snapshots and bitmaps.
 */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qk_image *img;
    if (fuzz_open(&img, data, size, size, QK_OPEN_CHECK) < 0)
        return 0;
    qk_check_result res = QK_CHECK_RESULT_INIT;
    (void)qk_check(img, 0, &res);
    qk_close(img);
    return 0;
}
