/*
 * test_chain.c - crash safety of qk_make_empty() and qk_set_backing()
 * (src/chain.c), and the API's refusals.
 *
 * An image made by qemu-img and filled by qemu-io is opened on a memory disk
 * behind the recording fault backend; the operation runs and the handle is
 * closed. Then for every point of the write log (every write and flush), and
 * for random subsets of the writes after the last flush before a random
 * point, the disk a crash could leave is rebuilt, and:
 *  - it opens read-write in qcowkit (which repairs a dirty image as QEMU
 *    does) and `qemu-img check` then finds no corruption (leaks allowed);
 *  - every guest cluster reads either as before the operation or as zeros
 *    (the image is being emptied) / exactly as before (a backing change).
 * Needs qemu-img and qemu-io; without them the test fails unless
 * QK_ALLOW_MISSING_PEERS is set.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "internal.h"

#define DISK (2u << 20)
#define RANDOM_POINTS 40

struct fixture {
    char dir[32];
    char path[64];
    uint8_t *file;     /* the image before the operation */
    size_t file_len;
    uint8_t *guest;    /* its guest contents */
};

static uint64_t rng = 1;
static uint64_t next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static int all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

static int run(const char *fmt, const char *arg)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, fmt, arg, arg);
    return system(cmd);
}

static void need_qemu(void)
{
    if (system("qemu-img --version >/dev/null 2>&1 && qemu-io --version >/dev/null 2>&1") == 0)
        return;
    if (getenv("QK_ALLOW_MISSING_PEERS"))
        skip();
    fail_msg("qemu-img and qemu-io are needed");
}

static void slurp(const char *path, uint8_t **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    rewind(f);
    *out = malloc(*len ? *len : 1);
    assert_non_null(*out);
    assert_int_equal(fread(*out, 1, *len, f), *len);
    fclose(f);
}

/* OPTS for qemu-img create; EXTRA: qemu-io/qemu-img commands on %s (the image). */
static void fixture_make(struct fixture *fx, const char *opts, const char *extra)
{
    strcpy(fx->dir, "/tmp/qk-chain-XXXXXX");
    assert_non_null(mkdtemp(fx->dir));
    snprintf(fx->path, sizeof fx->path, "%s/img.qcow2", fx->dir);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "qemu-img create -q -f qcow2 -o %s '%s' %u", opts, fx->path, DISK);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(run("qemu-io -c 'write -P 7 0 300k' -c 'write -z 400k 200k' "
                         "-c 'write -P 9 1100k 3k' -c 'discard 64k 64k' '%s' >/dev/null", fx->path), 0);
    if (extra)
        assert_int_equal(run(extra, fx->path), 0);
    slurp(fx->path, &fx->file, &fx->file_len);
    qk_image *img;
    qk_io *io;
    assert_int_equal(qk_image_new(&img), 0);
    assert_int_equal(io_mem_new(&io, fx->file, fx->file_len), 0);
    assert_int_equal(image_open_io(img, io, "img.qcow2", QK_OPEN_NO_BACKING), 0);
    fx->guest = malloc(DISK);
    assert_non_null(fx->guest);
    assert_int_equal(qk_pread(img, fx->guest, DISK, 0), 0);
    qk_close(img);
}

static void fixture_free(struct fixture *fx)
{
    run("rm -rf '%s'", fx->dir);
    free(fx->file);
    free(fx->guest);
}

/* The disk after the log's writes [0, upto) and those in [upto, end) that
 * a coin flip keeps. */
static uint8_t *crash_disk(const struct fixture *fx, const struct io_fault_op *log, size_t upto,
                           size_t end, size_t *len)
{
    size_t n = fx->file_len;
    for (size_t i = 0; i < end; i++)
        if (!log[i].is_flush && log[i].offset + log[i].len > n)
            n = (size_t)(log[i].offset + log[i].len);
    uint8_t *d = calloc(1, n);
    assert_non_null(d);
    memcpy(d, fx->file, fx->file_len);
    for (size_t i = 0; i < end; i++)
        if (!log[i].is_flush && (i < upto || (next_rand() & 1)))
            memcpy(d + log[i].offset, log[i].data, log[i].len);
    *len = n;
    return d;
}

/* Open the crash disk read-write (repairing it), check it with QEMU, and
 * compare the guest: EMPTYING allows zeroed clusters. */
static void verify(const struct fixture *fx, const uint8_t *disk, size_t len, int emptying, size_t at)
{
    qk_image *img;
    qk_io *mem, *io;
    struct io_fault *keep = io_fault_new(0);
    assert_non_null(keep);
    io_fault_keep_inner(keep);
    assert_int_equal(qk_image_new(&img), 0);
    assert_int_equal(io_mem_new(&mem, disk, len), 0);
    assert_int_equal(io_fault_wrap(&io, mem, keep), 0);
    if (image_open_io(img, io, "img.qcow2", QK_OPEN_RDWR | QK_OPEN_NO_BACKING) < 0)
        fail_msg("crash point %zu: the image does not open: %s", at, qk_errmsg(img));
    uint8_t *guest = malloc(DISK);
    assert_non_null(guest);
    assert_int_equal(qk_pread(img, guest, DISK, 0), 0);
    for (uint64_t c = 0; c < DISK; c += 512) {
        if (!memcmp(guest + c, fx->guest + c, 512))
            continue;
        if (!emptying || !all_zero(guest + c, 512))
            fail_msg("crash point %zu: guest sector at %llu changed", at, (unsigned long long)c);
    }
    free(guest);
    assert_int_equal(qk_close(img), 0);
    size_t out_len;
    const uint8_t *out = io_mem_data(mem, &out_len);
    FILE *f = fopen(fx->path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(out, 1, out_len, f), out_len);
    fclose(f);
    io_close(mem);
    io_fault_free(keep);
    int rc = run("qemu-img check -q '%s' >/dev/null 2>&1", fx->path);
    int code = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
    if (code != 0 && code != 3) {
        run("qemu-img check '%s'; cp '%s' /tmp/qk-chain-fail.qcow2", fx->path);
        fail_msg("crash point %zu: qemu-img check rc %d", at, code);
    }
}

enum op { OP_EMPTY, OP_BACKING };

/* Run OP on an image made with OPTS (+ EXTRA), then verify every crash point. */
static void crash_run(const char *opts, const char *extra, enum op op)
{
    need_qemu();
    struct fixture fx;
    fixture_make(&fx, opts, extra);
    /* qemu-img check opens the backing file the operation names. */
    char cmd[256];
    snprintf(cmd, sizeof cmd, "qemu-img create -q -f qcow2 '%s/b.qcow2' %u", fx.dir, DISK);
    assert_int_equal(system(cmd), 0);

    struct io_fault *ctl = io_fault_new(1);
    qk_io *mem, *io;
    qk_image *img;
    assert_non_null(ctl);
    assert_int_equal(io_mem_new(&mem, fx.file, fx.file_len), 0);
    assert_int_equal(io_fault_wrap(&io, mem, ctl), 0);
    assert_int_equal(qk_image_new(&img), 0);
    assert_int_equal(image_open_io(img, io, "img.qcow2", QK_OPEN_RDWR | QK_OPEN_NO_BACKING), 0);
    if (op == OP_EMPTY)
        assert_int_equal(qk_make_empty(img), 0);
    else
        assert_int_equal(qk_set_backing(img, "b.qcow2", "qcow2"), 0);
    assert_int_equal(qk_close(img), 0);

    size_t n;
    const struct io_fault_op *log = io_fault_log(ctl, &n);
    assert_true(n > 0);
    for (size_t i = 0; i <= n; i++) {
        size_t len;
        uint8_t *disk = crash_disk(&fx, log, i, i, &len);
        verify(&fx, disk, len, op == OP_EMPTY, i);
        free(disk);
    }
    rng = n * 2654435761u + 1;
    for (int k = 0; k < RANDOM_POINTS; k++) {
        size_t p = 1 + next_rand() % n, last_flush = 0, len;
        for (size_t i = 0; i < p; i++)
            if (log[i].is_flush)
                last_flush = i + 1;
        uint8_t *disk = crash_disk(&fx, log, last_flush, p, &len);
        verify(&fx, disk, len, op == OP_EMPTY, p);
        free(disk);
    }
    if (op == OP_EMPTY) {
        /* After the whole log the image is empty for qemu-img map too. */
        size_t len;
        uint8_t *disk = crash_disk(&fx, log, n, n, &len);
        FILE *f = fopen(fx.path, "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(disk, 1, len, f), len);
        fclose(f);
        free(disk);
        assert_int_equal(run("qemu-img map --output=json '%s' | grep -q '\"present\": true' && exit 1; exit 0",
                             fx.path), 0);
    }
    io_fault_free(ctl);
    fixture_free(&fx);
}

/* The crash cases: creation options, a command run on the image, operation. */
struct crash_case {
    const char *opts, *extra;
    enum op op;
};
static const struct crash_case rebuilt = { "compat=1.1", NULL, OP_EMPTY };
static const struct crash_case rebuilt_lazy_512 = { "lazy_refcounts=on,cluster_size=512", NULL, OP_EMPTY };
static const struct crash_case discarded_bitmaps = { "compat=1.1", "qemu-img bitmap --add '%s' b0", OP_EMPTY };
static const struct crash_case discarded_v2 = { "compat=0.10", NULL, OP_EMPTY };
static const struct crash_case backing_v3 = { "compat=1.1", NULL, OP_BACKING };
static const struct crash_case backing_v2 = { "compat=0.10", NULL, OP_BACKING };

static void crash_case(void **state)
{
    const struct crash_case *c = *state;
    crash_run(c->opts, c->extra, c->op);
}

/* Refusals: nothing changes on disk. */
static void set_backing_refused(void **state)
{
    (void)state;
    need_qemu();
    struct fixture fx;
    fixture_make(&fx, "cluster_size=512", NULL);
    qk_image *img;
    qk_io *io;
    assert_int_equal(qk_image_new(&img), 0);
    assert_int_equal(io_mem_new(&io, fx.file, fx.file_len), 0);
    assert_int_equal(image_open_io(img, io, "img.qcow2", QK_OPEN_RDWR | QK_OPEN_NO_BACKING), 0);
    char name[1100];
    memset(name, 'a', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    assert_int_equal(qk_set_backing(img, name, "qcow2"), QK_E_INVALID);
    name[400] = '\0';   /* fits the limit, not a 512-byte header cluster */
    assert_int_equal(qk_set_backing(img, name, "qcow2"), -ENOSPC);
    assert_int_equal(qk_set_backing(img, NULL, "qcow2"), QK_E_INVALID);
    assert_int_equal(qk_set_backing(img, "b", "sixteen-letters!"), QK_E_INVALID);
    assert_null(img->hdr.backing_name);
    assert_int_equal(qk_close(img), 0);
    fixture_free(&fx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        { "make_empty: rebuilt (v3)", crash_case, NULL, NULL, (void *)&rebuilt },
        { "make_empty: rebuilt (lazy refcounts, 512-byte clusters)", crash_case, NULL, NULL,
          (void *)&rebuilt_lazy_512 },
        { "make_empty: discarded (bitmaps)", crash_case, NULL, NULL, (void *)&discarded_bitmaps },
        { "make_empty: discarded (v2)", crash_case, NULL, NULL, (void *)&discarded_v2 },
        { "set_backing: v3", crash_case, NULL, NULL, (void *)&backing_v3 },
        { "set_backing: v2", crash_case, NULL, NULL, (void *)&backing_v2 },
        cmocka_unit_test(set_backing_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
