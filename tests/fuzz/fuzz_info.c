/*
 * fuzz_info.c - libFuzzer target: open an arbitrary image from memory and
 * gather its info (header, extensions, snapshots, bitmaps), as `qcowkit info`
 * does. Nothing else: this is the path every command takes first.
 */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qk_image *img;
    if (fuzz_open(&img, data, size, size, 0) < 0)
        return 0;
    qk_info *info;
    if (qk_get_info(img, &info) == 0)
        qk_info_free(info);
    qk_close(img);
    return 0;
}
