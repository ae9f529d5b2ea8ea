/*
 * test_fault.c - fault injection: the Nth read, write or flush of the image
 * file fails, for N = 1, 2, ... until the workload (writes, zero writes,
 * discards, a compressed write, bitmap add/merge/clear, close) no longer
 * reaches the Nth operation. After every failure the library must have
 * reported an error (not crashed), and the image left behind must pass
 * `qemu-img check` (leaks allowed) and open again. Under ASan, nothing leaks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "internal.h"

#define IMG_SIZE (4u << 20)

static uint8_t *base;
static size_t base_len;
static char dir[] = "/tmp/qk-fault-XXXXXX";

static int setup(void **state)
{
    (void)state;
    char cmd[512], path[128];
    if (system("qemu-img --version >/dev/null 2>&1") != 0) {
        if (getenv("QK_ALLOW_MISSING_PEERS"))
            return 0;
        fprintf(stderr, "qemu-img is needed for the fault test\n");
        return -1;
    }
    if (!mkdtemp(dir))
        return -1;
    snprintf(path, sizeof path, "%s/base.qcow2", dir);
    snprintf(cmd, sizeof cmd,
             "qemu-img create -q -f qcow2 '%s' %u && qemu-io -c 'write -P 7 0 1M' '%s' >/dev/null && "
             "qemu-img bitmap --add '%s' b0",
             path, IMG_SIZE, path, path);
    if (system(cmd) != 0)
        return -1;
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    fseek(f, 0, SEEK_END);
    base_len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    base = malloc(base_len);
    if (!base || fread(base, 1, base_len, f) != base_len) {
        fclose(f);
        return -1;
    }
    fclose(f);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    free(base);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* The workload; returns 0 when every call succeeded, else the first error. */
static int workload(qk_io *io, int *opened)
{
    qk_image *img;
    static uint8_t buf[300 << 10];
    int r;
    *opened = 0;
    if ((r = qk_image_new(&img)) < 0)
        return r;
    if ((r = image_open_io(img, io, "fault.qcow2", QK_OPEN_RDWR)) < 0) {
        qk_close(img);
        return r;
    }
    *opened = 1;
    memset(buf, 0x5a, sizeof buf);
    if ((r = qk_pwrite(img, buf, sizeof buf, 70000)) == 0 &&
        (r = qk_bitmap_add(img, "b1", 512, 0)) == 0 &&
        (r = qk_pwrite_zeroes(img, 128 << 10, 1 << 20, QK_ZERO_MAY_UNMAP)) == 0 &&
        (r = qk_discard(img, 256 << 10, 2 << 20)) == 0 &&
        (r = qk_pwrite_compressed(img, buf, 65536, 3 << 20)) == 0 &&
        (r = qk_flush(img)) == 0 &&
        (r = qk_pwrite(img, buf, 4096, 3 << 20)) == 0 &&
        (r = qk_bitmap_merge(img, "b1", img, "b0")) == 0 &&
        (r = qk_bitmap_clear(img, "b0")) == 0) {
        return qk_close(img);
    }
    assert_true(strlen(qk_errmsg(img)) > 0);   /* the failure was reported */
    qk_close(img);
    return r;
}

static void check_leftover(const uint8_t *disk, size_t len, int kind, long n)
{
    char path[160], cmd[512];
    snprintf(path, sizeof path, "%s/left.qcow2", dir);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(disk, 1, len, f), len);
    fclose(f);
    snprintf(cmd, sizeof cmd, "qemu-img check -q '%s' >/dev/null 2>&1", path);
    int rc = system(cmd);
    int code = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
    if (code != 0 && code != 3) {
        snprintf(cmd, sizeof cmd, "qemu-img check '%s'; cp '%s' /tmp/qk-fault-fail.qcow2", path, path);
        (void)system(cmd);
        fail_msg("fault kind %d at op %ld left a corrupt image (qemu-img check rc %d)", kind, n, code);
    }
    qk_image *img;
    qk_io *io;
    assert_int_equal(qk_image_new(&img), 0);
    assert_int_equal(io_mem_new(&io, disk, len), 0);
    assert_int_equal(image_open_io(img, io, "left.qcow2", 0), 0);
    uint8_t sector[512];
    assert_int_equal(qk_pread(img, sector, sizeof sector, 0), 0);
    assert_int_equal(sector[0], 7);     /* data written before the workload survives */
    qk_close(img);
}

static void fault_loop(int kind)
{
    if (!base)
        skip();
    long n;
    int completed = 0;
    for (n = 1; n < 100000 && !completed; n++) {
        struct io_fault *ctl = io_fault_new(0);
        qk_io *mem, *io;
        assert_non_null(ctl);
        io_fault_keep_inner(ctl);
        assert_int_equal(io_mem_new(&mem, base, base_len), 0);
        assert_int_equal(io_fault_wrap(&io, mem, ctl), 0);
        io_fault_set(ctl, kind, n);
        int opened;
        int r = workload(io, &opened);
        long reached = io_fault_count(ctl, kind);
        io_fault_free(ctl);
        if (reached < n) {
            assert_int_equal(r, 0);          /* no fault happened: it must succeed */
            completed = 1;
        } else {
            assert_true(r < 0);              /* the fault was reported */
        }
        size_t len;
        const uint8_t *disk = io_mem_data(mem, &len);
        check_leftover(disk, len, kind, n);
        io_close(mem);
    }
    assert_true(completed);
    print_message("fault kind %d: %ld fault points, then a clean run\n", kind, n - 2);
}

static void fail_reads(void **state)
{
    (void)state;
    fault_loop(IO_FAULT_READ);
}

static void fail_writes(void **state)
{
    (void)state;
    fault_loop(IO_FAULT_WRITE);
}

static void fail_flushes(void **state)
{
    (void)state;
    fault_loop(IO_FAULT_FLUSH);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fail_reads),
        cmocka_unit_test(fail_writes),
        cmocka_unit_test(fail_flushes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
