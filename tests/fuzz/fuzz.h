/*
 * fuzz.h - what every libFuzzer target in tests/fuzz shares: the entry point
 * prototype and opening an input as an image in memory.
 *
 * Invariant: fuzz_open() either returns 0 with *IMG open on a private copy
 * of the input (the image owns the memory backend), or a negative code with
 * everything freed. MAX bounds how far writes may grow the copy.
 */
#ifndef QK_FUZZ_H
#define QK_FUZZ_H

#include <stddef.h>
#include <stdint.h>

#include "internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static inline int fuzz_open(qk_image **img, const uint8_t *data, size_t size, uint64_t max, unsigned flags)
{
    qk_io *io;
    int r;
    if ((r = qk_image_new(img)) < 0)
        return r;
    if ((r = io_mem_new_limited(&io, data, size, max)) < 0) {
        qk_close(*img);
        return r;
    }
    if ((r = image_open_io(*img, io, "fuzz.qcow2", flags | QK_OPEN_NO_BACKING | QK_OPEN_FMT_QCOW2)) < 0) {
        qk_close(*img);
        return r;
    }
    return 0;
}

#endif
