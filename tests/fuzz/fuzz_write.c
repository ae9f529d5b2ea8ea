/*
 * fuzz_write.c - libFuzzer target: an arbitrary image opened read-write in
 * memory, then a sequence of writes, zero writes, discards, compressed
 * writes, bitmap operations, a resize and flushes decoded from the last
 * bytes of the input, then close (which stores bitmaps).
 *
 * The input is IMAGE || OPS, where the final byte says how many 8-byte op
 * records precede it. The memory file may grow to 64 MiB at most.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

static uint64_t pick(const uint8_t *op, uint64_t disk)
{
    uint64_t v = 0;
    for (int i = 1; i < 5; i++)
        v = v << 8 | op[i];
    return disk ? (v * 512) % disk : 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t nops = data[size - 1] % 16;
    if (nops * 8 + 1 > size)
        nops = (size - 1) / 8;
    size_t img_len = size - 1 - nops * 8;
    const uint8_t *ops = data + img_len;

    qk_image *img;
    if (fuzz_open(&img, data, img_len, 64u << 20, QK_OPEN_RDWR) < 0)
        return 0;
    static uint8_t buf[1 << 17];
    for (size_t i = 0; i < nops; i++) {
        const uint8_t *op = ops + i * 8;
        uint64_t disk = qk_size(img);
        uint64_t off = pick(op, disk);
        uint64_t len = ((uint64_t)op[5] << 8 | op[6]) * 8 + 1;
        if (disk == 0)
            break;
        if (len > disk - off)
            len = disk - off;
        if (len > sizeof buf)
            len = sizeof buf;
        memset(buf, op[7], len);
        char name[8];
        snprintf(name, sizeof name, "b%u", op[7] % 3);
        switch (op[0] % 10) {
        case 0: qk_pwrite(img, buf, len, off); break;
        case 1: qk_pwrite_zeroes(img, len, off, op[7] & 1 ? QK_ZERO_MAY_UNMAP : 0); break;
        case 2: qk_discard(img, len, off); break;
        case 3: {
            uint64_t cs = qk_cluster_size(img);
            uint64_t c = off & ~(cs - 1);
            uint64_t n = disk - c < cs ? disk - c : cs;
            if (n <= sizeof buf)
                qk_pwrite_compressed(img, buf, n, c);
            break;
        }
        case 4: qk_bitmap_add(img, name, 512ull << (op[6] % 8), op[5] & 1); break;
        case 5: qk_bitmap_remove(img, name); break;
        case 6: qk_bitmap_clear(img, name); break;
        case 7: qk_bitmap_merge(img, name, img, "b0"); break;
        case 8: qk_resize(img, (disk + (op[5] % 2 ? 1 : -1) * (uint64_t)op[6] * 512) & ~511ull,
                          QK_RESIZE_SHRINK); break;
        default: qk_flush(img); break;
        }
    }
    qk_close(img);
    return 0;
}
