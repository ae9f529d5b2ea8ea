/*
 * fuzz_read.c - libFuzzer target: open an arbitrary image from memory, gather
 * its info, walk block status over the whole disk and read every cluster.
 *
 * Bounded work per input: reads stop after READ_BUDGET bytes so that a huge
 * virtual size cannot turn one input into a long run.
 */
#include <stdint.h>
#include <stdlib.h>

#include "internal.h"

#define READ_BUDGET (64u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qk_image *img;
    qk_io *io;
    if (qk_image_new(&img) < 0)
        return 0;
    if (io_mem_new(&io, data, size) < 0) {
        qk_close(img);
        return 0;
    }
    if (image_open_io(img, io, "fuzz.qcow2", QK_OPEN_NO_BACKING | QK_OPEN_FMT_QCOW2) < 0) {
        qk_close(img);
        return 0;
    }
    qk_info *info;
    if (qk_get_info(img, &info) == 0)
        qk_info_free(info);

    uint64_t disk = qk_size(img), off = 0;
    unsigned steps = 0;
    while (off < disk && steps++ < 100000) {
        qk_extent e;
        if (qk_block_status(img, off, disk - off, &e) < 0)
            break;
        off += e.length;
    }
    static uint8_t buf[1 << 16];
    uint64_t budget = READ_BUDGET;
    for (off = 0; off < disk && budget >= sizeof buf; off += sizeof buf, budget -= sizeof buf) {
        uint64_t n = disk - off < sizeof buf ? disk - off : sizeof buf;
        if (qk_pread(img, buf, n, off) < 0)
            continue;
    }
    qk_close(img);
    return 0;
}
