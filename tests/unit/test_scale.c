/*
 * test_scale.c - persistent bitmaps at QEMU's limits, through the library:
 * 65535 bitmaps in one image (one more is refused; our check finds the
 * image clean and every bitmap consistent), 2000 bitmaps that QEMU lists
 * and checks clean (QEMU's own bitmap loading is quadratic: 65535 take it
 * minutes), and bitmaps with 1023-byte names.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "qcowkit.h"

static char dir[] = "/tmp/qk-scale-XXXXXX";

static int setup(void **state)
{
    (void)state;
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void need_qemu(void)
{
    if (system("qemu-img --version >/dev/null 2>&1") != 0) {
        if (getenv("QK_ALLOW_MISSING_PEERS"))
            skip();
        fail_msg("qemu-img is needed");
    }
}

/* Number of bitmaps qemu-img info lists, or -1. */
static long qemu_bitmap_count(const char *path)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "qemu-img info --output=json '%s' | grep -c '\"granularity\"'", path);
    FILE *p = popen(cmd, "r");
    long n = -1;
    if (p) {
        if (fscanf(p, "%ld", &n) != 1)
            n = -1;
        pclose(p);
    }
    return n;
}

static int qemu_check_clean(const char *path)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "qemu-img check -q '%s' >/dev/null 2>&1", path);
    return system(cmd) == 0;
}

/* Add N bitmaps b0..b(N-1) to a new 1 MiB image with 512-byte clusters,
 * write once (so enabled ones are stored dirty), close. */
static void make_many(const char *path, int n)
{
    char cmd[256], name[16];
    snprintf(cmd, sizeof cmd, "qemu-img create -q -f qcow2 -o cluster_size=512 '%s' 1M", path);
    assert_int_equal(system(cmd), 0);
    qk_image *img;
    assert_int_equal(qk_image_new(&img), 0);
    assert_int_equal(qk_open(img, path, QK_OPEN_RDWR), 0);
    for (int i = 0; i < n; i++) {
        snprintf(name, sizeof name, "b%d", i);
        assert_int_equal(qk_bitmap_add(img, name, 0, i % 2 ? QK_BITMAP_ADD_DISABLED : 0), 0);
    }
    if (n == 65535) {
        assert_int_equal(qk_bitmap_add(img, "one-more", 0, 0), QK_E_NOSPC_META);
        assert_non_null(strstr(qk_errmsg(img), "Maximum number of persistent bitmaps is already reached"));
    }
    uint8_t buf[4096];
    memset(buf, 7, sizeof buf);
    assert_int_equal(qk_pwrite(img, buf, sizeof buf, 8192), 0);
    assert_int_equal(qk_close(img), 0);
}

static void max_bitmaps(void **state)
{
    (void)state;
    need_qemu();
    char path[128];
    snprintf(path, sizeof path, "%s/many.qcow2", dir);
    make_many(path, 65535);
    qk_image *img;
    qk_bitmap_info *l;
    size_t n;
    assert_int_equal(qk_image_new(&img), 0);
    assert_int_equal(qk_open(img, path, 0), 0);
    assert_int_equal(qk_bitmap_list(img, &l, &n), 0);
    assert_int_equal(n, 65535);
    for (size_t i = 0; i < n; i++) {
        assert_true(l[i].consistent);
        assert_int_equal(l[i].dirty_bytes, i % 2 ? 0 : 4096);
    }
    qk_bitmap_list_free(l, n);
    qk_check_result res = QK_CHECK_RESULT_INIT;
    assert_int_equal(qk_check(img, 0, &res), 0);
    assert_int_equal(res.corruptions, 0);
    assert_int_equal(res.leaks, 0);
    assert_int_equal(res.check_errors, 0);
    qk_close(img);
}

static void many_bitmaps_in_qemu(void **state)
{
    (void)state;
    need_qemu();
    char path[128];
    snprintf(path, sizeof path, "%s/some.qcow2", dir);
    make_many(path, 2000);
    assert_int_equal(qemu_bitmap_count(path), 2000);
    assert_true(qemu_check_clean(path));
}

static void long_names(void **state)
{
    (void)state;
    need_qemu();
    char path[128], cmd[256], name[1024], toolong[1025];
    snprintf(path, sizeof path, "%s/names.qcow2", dir);
    snprintf(cmd, sizeof cmd, "qemu-img create -q -f qcow2 '%s' 64M", path);
    assert_int_equal(system(cmd), 0);
    qk_image *img;
    assert_int_equal(qk_image_new(&img), 0);
    assert_int_equal(qk_open(img, path, QK_OPEN_RDWR), 0);
    for (int i = 0; i < 50; i++) {
        memset(name, 'a' + i % 26, 1023);
        name[1023] = '\0';
        char prefix[16];
        snprintf(prefix, sizeof prefix, "%06d-", i);
        memcpy(name, prefix, 7);          /* unique, and still 1023 bytes long */
        assert_int_equal(qk_bitmap_add(img, name, 65536, 0), 0);
    }
    memset(toolong, 'z', 1024);
    toolong[1024] = '\0';
    assert_int_equal(qk_bitmap_add(img, toolong, 65536, 0), QK_E_INVALID);
    assert_int_equal(qk_close(img), 0);
    assert_int_equal(qemu_bitmap_count(path), 50);
    assert_true(qemu_check_clean(path));
    /* Read back: every name is whole. */
    qk_bitmap_info *l;
    size_t n;
    assert_int_equal(qk_image_new(&img), 0);
    assert_int_equal(qk_open(img, path, 0), 0);
    assert_int_equal(qk_bitmap_list(img, &l, &n), 0);
    assert_int_equal(n, 50);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(strlen(l[i].name), 1023);
        assert_true(l[i].consistent);
    }
    qk_bitmap_list_free(l, n);
    qk_close(img);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(max_bitmaps),
        cmocka_unit_test(many_bitmaps_in_qemu),
        cmocka_unit_test(long_names),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
