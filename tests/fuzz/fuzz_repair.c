/*
 * fuzz_repair.c - libFuzzer target: `qcowkit check -r all` on a writable
 * in-memory copy of an arbitrary image, then the repaired copy is checked
 * again, as qemu-img does.
 *
 * Oracle: when the repair reports nothing left (no corruptions, no leaks, no
 * check errors), the repaired image must open normally and a read-only check
 * must find it clean; anything else aborts (a finding). The copy may grow to
 * REPAIR_MAX (a rebuilt refcount structure needs room).
 */
#include <stdlib.h>

#include "fuzz.h"

#define REPAIR_MAX (64u << 20)

static int clean(const qk_check_result *r)
{
    return r->corruptions == 0 && r->leaks == 0 && r->check_errors == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qk_image *img;
    qk_io *mem, *io;
    struct io_fault *keep = io_fault_new(0);
    if (!keep)
        return 0;
    io_fault_keep_inner(keep);   /* the memory outlives the image */
    if (io_mem_new_limited(&mem, data, size, REPAIR_MAX) < 0) {
        io_fault_free(keep);
        return 0;
    }
    if (io_fault_wrap(&io, mem, keep) < 0 || qk_image_new(&img) < 0) {
        io_close(mem);
        io_fault_free(keep);
        return 0;
    }
    qk_check_result res = QK_CHECK_RESULT_INIT;
    int repaired = 0;
    if (image_open_io(img, io, "fuzz.qcow2", QK_OPEN_RDWR | QK_OPEN_CHECK | QK_OPEN_NO_BACKING |
                      QK_OPEN_FMT_QCOW2) == 0)
        repaired = qk_check(img, QK_CHECK_FIX_LEAKS | QK_CHECK_FIX_ERRORS, &res) == 0 && clean(&res);
    repaired = qk_close(img) == 0 && repaired;
    io_fault_free(keep);

    size_t len;
    const uint8_t *fixed = io_mem_data(mem, &len);
    if (repaired) {
        if (fuzz_open(&img, fixed, len, len, 0) < 0)
            abort();                   /* repaired, yet it does not open */
        qk_close(img);
        if (fuzz_open(&img, fixed, len, len, QK_OPEN_CHECK) < 0)
            abort();
        qk_check_result again = QK_CHECK_RESULT_INIT;
        if (qk_check(img, 0, &again) != 0 || !clean(&again))
            abort();                   /* repaired, yet the check finds more */
        qk_close(img);
    }
    io_close(mem);
    return 0;
}
