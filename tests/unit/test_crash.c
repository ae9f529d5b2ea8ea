/*
 * test_crash.c - crash safety of the write path.
 *
 * A random workload (writes, zero writes, discards, flushes) runs on a
 * memory image behind the recording fault backend. Then, for every flush
 * the library issued (an even sample of 100 when there are more) and for 50
 * random crash points, the disk a crash could
 * leave is rebuilt (every write before the last flush, plus a random subset
 * of the writes after it) and:
 *  - `qemu-img check` finds no corruption (leaks are allowed), and
 *  - every guest byte that qk_flush() had acknowledged, and that no later
 *    operation touched, reads back.
 * crash_snapshots does the same inside snapshot create, delete and apply.
 * Needs qemu-img (CI installs it); without it the test fails unless
 * QK_ALLOW_MISSING_PEERS is set.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "internal.h"

#define IMG_SIZE (4u << 20)
#define NB_OPS 120
#define RANDOM_CRASHES 50
#define MAX_FLUSH_POINTS 100

struct op_mark {
    size_t log_start;     /* log length when the operation started */
    uint64_t off, len;    /* guest range it touched */
};

struct flush_mark {
    size_t log_end;       /* log length when qk_flush() returned */
    uint8_t *guest;       /* guest contents acknowledged by that flush */
    size_t first_op;      /* operations after it start here */
};

static uint64_t rng_state;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(*len);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, *len, f), *len);
    fclose(f);
    return b;
}

static void write_file(const char *path, const uint8_t *b, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b, 1, len, f), len);
    fclose(f);
}

static int have_qemu_img(void)
{
    return system("qemu-img --version >/dev/null 2>&1") == 0;
}

/* Rebuild a disk: BASE plus the log's writes [0, upto) and the writes in
 * [upto, end) whose bit in KEEP is set. */
static uint8_t *rebuild(const uint8_t *base, size_t base_len, const struct io_fault_op *log,
                        size_t upto, size_t end, uint64_t keep_seed, size_t *out_len)
{
    size_t len = base_len;
    for (size_t i = 0; i < end; i++)
        if (!log[i].is_flush && log[i].offset + log[i].len > len)
            len = (size_t)(log[i].offset + log[i].len);
    uint8_t *d = calloc(1, len);
    assert_non_null(d);
    memcpy(d, base, base_len);
    rng_state = keep_seed | 1;
    for (size_t i = 0; i < end; i++) {
        if (log[i].is_flush)
            continue;
        if (i >= upto && (rnd() & 1))
            continue;
        memcpy(d + log[i].offset, log[i].data, log[i].len);
    }
    *out_len = len;
    return d;
}

/* COPIED_OK: inside a snapshot operation, where QEMU itself has a window in
 * which a crash leaves COPIED flags that disagree with raised refcounts
 * (harmless: the snapshot table does not point at the new references yet).
 * Such "ERROR OFLAG_COPIED" lines are then accepted, provided they are the
 * only errors and `qemu-img check -r all` leaves the image clean. */
static void check_crash_image(const uint8_t *disk, size_t len, const struct flush_mark *fm,
                              const struct op_mark *ops, size_t nb_ops, size_t crash_at,
                              const char *path, int copied_ok)
{
    char cmd[768];
    write_file(path, disk, len);
    snprintf(cmd, sizeof cmd, "qemu-img check -q '%s' >/dev/null 2>&1", path);
    int rc = system(cmd);
    int code = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
    if (code == 2 && copied_ok) {
        snprintf(cmd, sizeof cmd, "! qemu-img check '%s' 2>&1 | grep ERROR | grep -qv '^ERROR OFLAG_COPIED' && "
                 "qemu-img check -q -r all '%s' >/dev/null 2>&1 && qemu-img check -q '%s' >/dev/null 2>&1",
                 path, path, path);
        rc = system(cmd);
        code = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
    }
    if (code != 0 && code != 3) {
        snprintf(cmd, sizeof cmd, "qemu-img check '%s'; cp '%s' /tmp/qk-crash-fail.qcow2", path, path);
        (void)system(cmd);
        fail_msg("qemu-img check found corruption (rc %d) at crash point %zu", code, crash_at);
    }
    if (!fm)
        return;
    /* Bytes touched by operations that started before the crash may differ. */
    uint8_t *mask = calloc(1, IMG_SIZE);
    assert_non_null(mask);
    for (size_t i = fm->first_op; i < nb_ops && ops[i].log_start < crash_at; i++)
        memset(mask + ops[i].off, 1, ops[i].len);
    qk_image *img;
    qk_io *io;
    assert_int_equal(qk_image_new(&img), 0);
    assert_int_equal(io_mem_new(&io, disk, len), 0);
    assert_int_equal(image_open_io(img, io, "crash.qcow2", QK_OPEN_NO_BACKING), 0);
    uint8_t *guest = malloc(IMG_SIZE);
    assert_non_null(guest);
    assert_int_equal(qk_pread(img, guest, IMG_SIZE, 0), 0);
    for (size_t i = 0; i < IMG_SIZE; i++)
        if (!mask[i] && guest[i] != fm->guest[i])
            fail_msg("crash point %zu: flushed byte at %zu reads %u, expected %u", crash_at, i,
                     guest[i], fm->guest[i]);
    qk_close(img);
    free(guest);
    free(mask);
}

/* A base image made by the shell command SETUP (with $BASE its path), opened
 * read-write behind the recording fault backend. */
struct recording {
    char dir[32], base_path[64], crash_path[64];
    uint8_t *base;
    size_t base_len;
    struct io_fault *ctl;
    qk_image *img;
};

static void record_start(struct recording *rec, const char *setup)
{
    if (!have_qemu_img()) {
        if (getenv("QK_ALLOW_MISSING_PEERS"))
            skip();
        fail_msg("qemu-img is needed for the crash test");
    }
    snprintf(rec->dir, sizeof rec->dir, "/tmp/qk-crash-XXXXXX");
    assert_non_null(mkdtemp(rec->dir));
    snprintf(rec->base_path, sizeof rec->base_path, "%s/base.qcow2", rec->dir);
    snprintf(rec->crash_path, sizeof rec->crash_path, "%s/crash.qcow2", rec->dir);
    assert_int_equal(setenv("BASE", rec->base_path, 1), 0);
    assert_int_equal(system(setup), 0);
    rec->base = read_file(rec->base_path, &rec->base_len);
    qk_io *mem, *io;
    assert_non_null(rec->ctl = io_fault_new(1));
    assert_int_equal(io_mem_new(&mem, rec->base, rec->base_len), 0);
    assert_int_equal(io_fault_wrap(&io, mem, rec->ctl), 0);
    assert_int_equal(qk_image_new(&rec->img), 0);
    assert_int_equal(image_open_io(rec->img, io, "work.qcow2", QK_OPEN_RDWR), 0);
}

static void record_end(struct recording *rec)
{
    char cmd[128];
    io_fault_free(rec->ctl);
    free(rec->base);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", rec->dir);
    assert_int_equal(system(cmd), 0);
}

static void run_workload_cmd(const char *create_opts, const char *after_create, uint64_t seed);

static void run_workload(const char *create_opts, uint64_t seed)
{
    run_workload_cmd(create_opts, NULL, seed);
}

/* AFTER_CREATE: a shell command run on the base image ($BASE). */
static void run_workload_cmd(const char *create_opts, const char *after_create, uint64_t seed)
{
    char setup[512];
    struct recording rec;
    snprintf(setup, sizeof setup, "qemu-img create -q -f qcow2 -o %s \"$BASE\" %u%s%s", create_opts, IMG_SIZE,
             after_create ? " && " : "", after_create ? after_create : "");
    record_start(&rec, setup);
    struct io_fault *ctl = rec.ctl;
    qk_image *img = rec.img;
    const uint8_t *base = rec.base;
    size_t base_len = rec.base_len;
    const char *crash_path = rec.crash_path;

    uint8_t *shadow = calloc(1, IMG_SIZE), *buf = malloc(256 << 10);
    struct op_mark ops[NB_OPS];
    struct flush_mark flushes[NB_OPS + 1];
    size_t nb_flushes = 0, nb_ops = 0;
    assert_non_null(shadow);
    assert_non_null(buf);
    rng_state = seed * 0x9E3779B97F4A7C15ull + 1;
    for (int i = 0; i < NB_OPS; i++) {
        size_t lenlog;
        io_fault_log(ctl, &lenlog);
        uint64_t kind = rnd() % 10;
        uint64_t off = rnd() % IMG_SIZE;
        uint64_t len = 1 + rnd() % (200 << 10);
        if (off + len > IMG_SIZE)
            len = IMG_SIZE - off;
        if (kind == 9) {
            assert_int_equal(qk_flush(img), 0);
            io_fault_log(ctl, &lenlog);
            flushes[nb_flushes].log_end = lenlog;
            flushes[nb_flushes].first_op = nb_ops;
            flushes[nb_flushes].guest = malloc(IMG_SIZE);
            assert_non_null(flushes[nb_flushes].guest);
            memcpy(flushes[nb_flushes].guest, shadow, IMG_SIZE);
            nb_flushes++;
            continue;
        }
        ops[nb_ops].log_start = lenlog;
        ops[nb_ops].off = off;
        ops[nb_ops].len = len;
        nb_ops++;
        if (kind < 6) {
            memset(buf, (int)(1 + rnd() % 255), len);
            assert_int_equal(qk_pwrite(img, buf, len, off), 0);
            memcpy(shadow + off, buf, len);
        } else if (kind < 8) {
            assert_int_equal(qk_pwrite_zeroes(img, len, off, (rnd() & 1) ? QK_ZERO_MAY_UNMAP : 0), 0);
            memset(shadow + off, 0, len);
        } else if (after_create && kind == 8 && (rnd() & 1)) {
            /* Bitmap changes are stored at close, with the header switch. */
            char name[16];
            snprintf(name, sizeof name, "n%d", i);
            assert_int_equal(qk_bitmap_add(img, name, 512ull << (rnd() % 8), 0), 0);
            if (rnd() & 1)
                assert_int_equal(qk_bitmap_clear(img, "b0"), 0);
            nb_ops--;
        } else {
            /* A discard leaves unspecified contents: mark the range as touched
             * for ever by keeping it in ops (never compared afterwards). */
            assert_int_equal(qk_discard(img, len, off), 0);
            uint8_t *tmp = malloc(len);
            assert_non_null(tmp);
            assert_int_equal(qk_pread(img, tmp, len, off), 0);
            memcpy(shadow + off, tmp, len);
            free(tmp);
        }
    }
    assert_int_equal(qk_close(img), 0);

    size_t log_len;
    const struct io_fault_op *log = io_fault_log(ctl, &log_len);
    size_t checked = 0, nb_log_flushes = 0, seen = 0;
    for (size_t i = 0; i < log_len; i++)
        nb_log_flushes += log[i].is_flush;
    size_t stride = nb_log_flushes > MAX_FLUSH_POINTS ? nb_log_flushes / MAX_FLUSH_POINTS : 1;
    /* Flushes the library issued are crash points with nothing after them
     * (every one, or an even sample of MAX_FLUSH_POINTS when there are more). */
    for (size_t i = 0; i < log_len; i++) {
        if (!log[i].is_flush || seen++ % stride)
            continue;
        const struct flush_mark *fm = NULL;
        for (size_t k = 0; k < nb_flushes; k++)
            if (flushes[k].log_end <= i + 1)
                fm = &flushes[k];
        size_t dlen;
        uint8_t *disk = rebuild(base, base_len, log, i + 1, i + 1, 0, &dlen);
        check_crash_image(disk, dlen, fm, ops, nb_ops, i + 1, crash_path, 0);
        free(disk);
        checked++;
    }
    /* Random crash points: the last flush before them, plus a random subset. */
    rng_state = seed + 77;
    for (int n = 0; n < RANDOM_CRASHES; n++) {
        size_t p = 1 + rnd() % log_len, last_flush = 0;
        for (size_t i = 0; i < p; i++)
            if (log[i].is_flush)
                last_flush = i + 1;
        const struct flush_mark *fm = NULL;
        for (size_t k = 0; k < nb_flushes; k++)
            if (flushes[k].log_end <= last_flush)
                fm = &flushes[k];
        size_t dlen;
        uint64_t keep = rnd();
        uint8_t *disk = rebuild(base, base_len, log, last_flush, p, keep, &dlen);
        check_crash_image(disk, dlen, fm, ops, nb_ops, p, crash_path, 0);
        free(disk);
        checked++;
    }
    assert_true(checked >= RANDOM_CRASHES);
    for (size_t k = 0; k < nb_flushes; k++)
        free(flushes[k].guest);
    free(shadow);
    free(buf);
    record_end(&rec);
}

static void crash_v3_64k(void **state)
{
    (void)state;
    for (uint64_t seed = 1; seed <= 3; seed++)
        run_workload("compat=1.1", seed);
}

static void crash_v2(void **state)
{
    (void)state;
    run_workload("compat=0.10", 11);
}

static void crash_512b_refcount_growth(void **state)
{
    (void)state;
    run_workload("cluster_size=512,refcount_bits=64", 21);
}

static void crash_extended_l2(void **state)
{
    (void)state;
    run_workload("extended_l2=on", 31);
}

static void crash_with_bitmaps(void **state)
{
    (void)state;
    /* Every crash image must still open in QEMU (which loads and checks the
     * bitmaps) and pass qemu-img check. */
    run_workload_cmd("compat=1.1",
                     "qemu-img bitmap --add \"$BASE\" b0 && qemu-img bitmap --add -g 512 --disable \"$BASE\" b1", 41);
}

/* Snapshot create, delete and apply (with writes between them, each
 * flushed): a crash at any write inside a snapshot operation (with the
 * writes after its last flush kept or lost at random, and all kept) leaves
 * an image that qemu-img check finds without corruption other than QEMU's
 * own COPIED window (see check_crash_image); across create and delete the
 * guest data is the data before the operation. */
enum snap_kind { SNAP_CREATE, SNAP_DELETE, SNAP_APPLY };

struct snap_op {
    enum snap_kind kind;
    const char *name;
    size_t log_start, log_end;
    uint8_t *guest;            /* contents during the operation (create/delete) */
};

#define SNAP_POINTS 10         /* crash points sampled per operation */

static void crash_snapshots(void **state)
{
    (void)state;
    static const struct { enum snap_kind kind; const char *name; } plan[] = {
        { SNAP_CREATE, "n1" }, { SNAP_CREATE, "n2" }, { SNAP_DELETE, "base0" },
        { SNAP_DELETE, "n1" }, { SNAP_APPLY, "n2" }, { SNAP_CREATE, "n3" }, { SNAP_DELETE, "n2" },
    };
    enum { NB = sizeof plan / sizeof plan[0] };
    struct recording rec;
    record_start(&rec, "qemu-img create -q -f qcow2 \"$BASE\" 4M && qemu-io -c 'write -P 1 0 1M' "
                       "-c 'write -c -P 2 2M 128k' \"$BASE\" >/dev/null && qemu-img snapshot -c base0 \"$BASE\"");
    qk_image *img = rec.img;

    struct snap_op ops[NB];
    uint8_t *buf = malloc(256 << 10);
    assert_non_null(buf);
    rng_state = 0x5eed;
    for (int i = 0; i < NB; i++) {
        for (int w = 0; w < 6; w++) {
            uint64_t off = rnd() % IMG_SIZE, len = 1 + rnd() % (200 << 10);
            if (off + len > IMG_SIZE)
                len = IMG_SIZE - off;
            memset(buf, (int)(1 + rnd() % 255), len);
            assert_int_equal(qk_pwrite(img, buf, len, off), 0);
        }
        assert_int_equal(qk_flush(img), 0);
        ops[i].kind = plan[i].kind;
        ops[i].name = plan[i].name;
        ops[i].guest = NULL;
        if (plan[i].kind != SNAP_APPLY) {
            ops[i].guest = malloc(IMG_SIZE);
            assert_non_null(ops[i].guest);
            assert_int_equal(qk_pread(img, ops[i].guest, IMG_SIZE, 0), 0);
        }
        io_fault_log(rec.ctl, &ops[i].log_start);
        int r = plan[i].kind == SNAP_CREATE ? qk_snapshot_create(img, plan[i].name)
              : plan[i].kind == SNAP_DELETE ? qk_snapshot_delete(img, plan[i].name)
              : qk_snapshot_apply(img, plan[i].name);
        if (r)
            fail_msg("snapshot step %d (%s): %s", i, plan[i].name, qk_errmsg(img));
        io_fault_log(rec.ctl, &ops[i].log_end);
    }
    assert_int_equal(qk_close(img), 0);

    size_t log_len;
    const struct io_fault_op *log = io_fault_log(rec.ctl, &log_len);
    size_t checked = 0;
    for (int i = 0; i < NB; i++) {
        size_t span = ops[i].log_end - ops[i].log_start;
        assert_true(span > 0);
        struct flush_mark fm = { 0, ops[i].guest, 0 };
        for (size_t k = 0; k < SNAP_POINTS && k < span; k++) {
            size_t p = ops[i].log_start + 1 + (span > SNAP_POINTS ? k * span / SNAP_POINTS : k);
            size_t last_flush = 0;
            for (size_t j = 0; j < p; j++)
                if (log[j].is_flush)
                    last_flush = j + 1;
            for (int all = 0; all < 2; all++) {
                size_t dlen;
                uint8_t *disk = rebuild(rec.base, rec.base_len, log, all ? p : last_flush, p, rnd(), &dlen);
                check_crash_image(disk, dlen, ops[i].guest ? &fm : NULL, NULL, 0, p, rec.crash_path, 1);
                free(disk);
                checked++;
            }
        }
        free(ops[i].guest);
    }
    assert_true(checked >= 2 * NB);
    free(buf);
    record_end(&rec);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(crash_v3_64k),
        cmocka_unit_test(crash_v2),
        cmocka_unit_test(crash_512b_refcount_growth),
        cmocka_unit_test(crash_extended_l2),
        cmocka_unit_test(crash_with_bitmaps),
        cmocka_unit_test(crash_snapshots),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
