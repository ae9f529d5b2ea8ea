/*
 * fuzz_read.c - libFuzzer target: open an arbitrary image from memory, walk
 * block status over the whole disk and read every cluster.
 *
 * Bounded work per input: the walk stops after WALK_STEPS extents and reads
 * stop after READ_BUDGET bytes, so that a huge virtual size cannot turn one
 * input into a long run.
 */
#include "fuzz.h"

#define READ_BUDGET (64u << 20)
#define WALK_STEPS 100000

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qk_image *img;
    if (fuzz_open(&img, data, size, size, 0) < 0)
        return 0;
    uint64_t disk = qk_size(img), off = 0;
    unsigned steps = 0;
    while (off < disk && steps++ < WALK_STEPS) {
        qk_extent e;
        if (qk_block_status(img, off, disk - off, &e) < 0 || e.length == 0)
            break;
        off += e.length;
    }
    static uint8_t buf[1 << 16];
    uint64_t budget = READ_BUDGET;
    for (off = 0; off < disk && budget >= sizeof buf; off += sizeof buf, budget -= sizeof buf) {
        uint64_t n = disk - off < sizeof buf ? disk - off : sizeof buf;
        (void)qk_pread(img, buf, n, off);
    }
    qk_close(img);
    return 0;
}
