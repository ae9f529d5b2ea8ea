/*
 * test_fault.c - fault injection: the Nth read, write, flush, file-sizing
 * call (truncate/fallocate) or memory allocation of the library fails, for
 * N = 1, 2, ... until the workload no longer reaches the Nth operation.
 * Two workloads:
 *  - on an image qemu-img made: writes, zero writes, discards, a compressed
 *    write, bitmap add/merge/clear, close;
 *  - from nothing: qk_create into the backend (falloc preallocation), then
 *    writes, bitmap add/merge, close.
 * After every failure the library must have reported an error (not
 * crashed), and the image left behind must pass `qemu-img check` (leaks
 * allowed) and open again; a failed create leaves no image to check (qk_create
 * removes the file). Under ASan, nothing leaks.
 *
 * Allocation failures: this binary is linked with -Wl,--wrap for malloc,
 * calloc, realloc and strdup (Makefile), so every call the library's objects
 * make goes through the __wrap_ functions below, which fail the Nth one while
 * a loop has armed them. The library itself has no hook.
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
#define IO_FAULT_ALLOC IO_FAULT_KINDS   /* not an I/O kind: the wrappers below */

/* ---- allocation failures ---- */
void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *p, size_t n);
char *__wrap_strdup(const char *s);

static long alloc_count, alloc_fail_at;   /* 0 = disarmed */

static int alloc_fails(void)
{
    return alloc_fail_at && ++alloc_count == alloc_fail_at;
}

void *__wrap_malloc(size_t n)
{
    return alloc_fails() ? NULL : __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t size)
{
    return alloc_fails() ? NULL : __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t n)
{
    return alloc_fails() ? NULL : __real_realloc(p, n);
}

char *__wrap_strdup(const char *s)
{
    return alloc_fails() ? NULL : __real_strdup(s);
}

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

/* The workload on IO; returns 0 when every call succeeded, else the first
 * error. CREATE: qk_create into IO first (*created says whether that
 * succeeded), else IO holds the image qemu-img made. */
static int workload(qk_io *io, int create, int *created)
{
    qk_image *img;
    static uint8_t buf[300 << 10];
    int r;
    *created = !create;
    if ((r = qk_image_new(&img)) < 0) {
        io_close(io);   /* image_open_io would have owned it */
        return r;
    }
    if (create) {
        qk_create_opts o = QK_CREATE_OPTS_INIT;
        o.size = IMG_SIZE;
        o.preallocation = QK_PREALLOC_FALLOC;
        if ((r = image_create_io(img, io, "fault.qcow2", &o)) < 0) {
            assert_true(strlen(qk_errmsg(img)) > 0);
            qk_close(img);
            io_close(io);
            return r;
        }
        *created = 1;
    }
    if ((r = image_open_io(img, io, "fault.qcow2", QK_OPEN_RDWR)) < 0) {
        qk_close(img);
        return r;
    }
    memset(buf, 0x5a, sizeof buf);
    if (create) {
        if ((r = qk_pwrite(img, buf, sizeof buf, 70000)) == 0 &&
            (r = qk_bitmap_add(img, "b0", 65536, 0)) == 0 &&
            (r = qk_bitmap_add(img, "b1", 512, 0)) == 0 &&
            (r = qk_pwrite(img, buf, 4096, 3 << 20)) == 0 &&
            (r = qk_bitmap_merge(img, "b1", img, "b0")) == 0)
            return qk_close(img);
    } else if ((r = qk_pwrite(img, buf, sizeof buf, 70000)) == 0 &&
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

/* The image left in DISK must pass qemu-img check (leaks allowed) and open;
 * FIRST_BYTE >= 0: what the first sector holds. */
static void check_leftover(const uint8_t *disk, size_t len, int kind, long n, int first_byte)
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
    if (first_byte >= 0)
        assert_int_equal(sector[0], first_byte);   /* data written before the workload survives */
    qk_close(img);
}

static long fault_count(const struct io_fault *ctl, int kind)
{
    return kind == IO_FAULT_ALLOC ? alloc_count : io_fault_count(ctl, kind);
}

static void fault_loop(int kind, int create)
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
        assert_int_equal(create ? io_mem_new(&mem, NULL, 0) : io_mem_new(&mem, base, base_len), 0);
        assert_int_equal(io_fault_wrap(&io, mem, ctl), 0);
        if (kind == IO_FAULT_ALLOC) {
            alloc_count = 0;
            alloc_fail_at = n;
        } else {
            io_fault_set(ctl, kind, n);
        }
        int created;
        int r = workload(io, create, &created);
        long reached = fault_count(ctl, kind);
        alloc_fail_at = 0;
        io_fault_free(ctl);
        if (reached < n) {
            assert_int_equal(r, 0);          /* no fault happened: it must succeed */
            completed = 1;
        } else {
            assert_true(r < 0);              /* the fault was reported */
        }
        size_t len;
        const uint8_t *disk = io_mem_data(mem, &len);
        if (created)
            check_leftover(disk, len, kind, n, create ? 0 : 7);
        io_close(mem);
    }
    assert_true(completed);
    print_message("fault kind %d%s: %ld fault points, then a clean run\n", kind,
                  create ? " (create)" : "", n - 2);
}

#define FAULT_TEST(name, kind, create) \
    static void name(void **state) \
    { \
        (void)state; \
        fault_loop(kind, create); \
    }
FAULT_TEST(fail_reads, IO_FAULT_READ, 0)
FAULT_TEST(fail_writes, IO_FAULT_WRITE, 0)
FAULT_TEST(fail_flushes, IO_FAULT_FLUSH, 0)
FAULT_TEST(fail_grows, IO_FAULT_GROW, 0)
FAULT_TEST(fail_allocs, IO_FAULT_ALLOC, 0)
FAULT_TEST(create_fail_reads, IO_FAULT_READ, 1)
FAULT_TEST(create_fail_writes, IO_FAULT_WRITE, 1)
FAULT_TEST(create_fail_flushes, IO_FAULT_FLUSH, 1)
FAULT_TEST(create_fail_grows, IO_FAULT_GROW, 1)
FAULT_TEST(create_fail_allocs, IO_FAULT_ALLOC, 1)

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fail_reads),
        cmocka_unit_test(fail_writes),
        cmocka_unit_test(fail_flushes),
        cmocka_unit_test(fail_grows),
        cmocka_unit_test(fail_allocs),
        cmocka_unit_test(create_fail_reads),
        cmocka_unit_test(create_fail_writes),
        cmocka_unit_test(create_fail_flushes),
        cmocka_unit_test(create_fail_grows),
        cmocka_unit_test(create_fail_allocs),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
