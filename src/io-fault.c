/*
 * io-fault.c - the fault and crash backend: wraps another backend, fails the
 * Nth read, write, flush or file-sizing call (truncate, fallocate) on request, and records every write and flush so
 * that a test can rebuild what the disk could hold after a crash.
 *
 * Invariants:
 *  1. Operations pass through unchanged until the chosen one, which fails
 *     with -EIO without reaching the inner backend.
 *  2. The log lists writes (offset, bytes) and flushes in issue order; it
 *     belongs to the control struct, which outlives the wrapped backend.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "io.h"

struct io_fault {
    long counts[IO_FAULT_KINDS]; /* reads, writes, flushes, truncates+fallocates so far */
    long fail_at[IO_FAULT_KINDS]; /* 1-based op number to fail, 0 = never */
    int record;
    int keep_inner;              /* closing the wrapper leaves the inner backend open */
    struct io_fault_op *log;
    size_t log_len, log_cap;
};

struct io_fault_io {
    qk_io base;
    qk_io *inner;
    struct io_fault *ctl;
};

static int should_fail(struct io_fault *f, int kind)
{
    f->counts[kind]++;
    return f->fail_at[kind] && f->counts[kind] == f->fail_at[kind];
}

static int log_op(struct io_fault *f, const void *buf, size_t len, uint64_t off, int is_flush)
{
    if (!f->record)
        return 0;
    if (f->log_len == f->log_cap) {
        size_t cap = f->log_cap ? f->log_cap * 2 : 256;
        struct io_fault_op *v = realloc(f->log, cap * sizeof *v);
        if (!v)
            return -ENOMEM;
        f->log = v;
        f->log_cap = cap;
    }
    struct io_fault_op *op = &f->log[f->log_len];
    op->is_flush = is_flush;
    op->offset = off;
    op->len = len;
    op->data = NULL;
    if (len) {
        if (!(op->data = malloc(len)))
            return -ENOMEM;
        memcpy(op->data, buf, len);
    }
    f->log_len++;
    return 0;
}

static int fault_pread(qk_io *io, void *buf, size_t len, uint64_t off)
{
    struct io_fault_io *w = (struct io_fault_io *)io;
    if (should_fail(w->ctl, IO_FAULT_READ))
        return -EIO;
    return io_pread(w->inner, buf, len, off);
}

static int fault_pwrite(qk_io *io, const void *buf, size_t len, uint64_t off)
{
    struct io_fault_io *w = (struct io_fault_io *)io;
    if (should_fail(w->ctl, IO_FAULT_WRITE))
        return -EIO;
    int r = log_op(w->ctl, buf, len, off, 0);
    return r < 0 ? r : io_pwrite(w->inner, buf, len, off);
}

static int fault_flush(qk_io *io)
{
    struct io_fault_io *w = (struct io_fault_io *)io;
    if (should_fail(w->ctl, IO_FAULT_FLUSH))
        return -EIO;
    int r = log_op(w->ctl, NULL, 0, 0, 1);
    return r < 0 ? r : w->inner->ops->flush(w->inner);
}

static int fault_get_size(qk_io *io, uint64_t *size)
{
    struct io_fault_io *w = (struct io_fault_io *)io;
    return w->inner->ops->get_size(w->inner, size);
}

static int fault_truncate(qk_io *io, uint64_t size)
{
    struct io_fault_io *w = (struct io_fault_io *)io;
    if (should_fail(w->ctl, IO_FAULT_GROW))
        return -EIO;
    return w->inner->ops->truncate(w->inner, size);
}

static int fault_fallocate(qk_io *io, uint64_t off, uint64_t len)
{
    struct io_fault_io *w = (struct io_fault_io *)io;
    if (should_fail(w->ctl, IO_FAULT_GROW))
        return -EIO;
    return w->inner->ops->fallocate(w->inner, off, len);
}

static int fault_punch_hole(qk_io *io, uint64_t off, uint64_t len)
{
    struct io_fault_io *w = (struct io_fault_io *)io;
    if (should_fail(w->ctl, IO_FAULT_WRITE))
        return -EIO;
    return w->inner->ops->punch_hole(w->inner, off, len);
}

static int fault_data_status(qk_io *io, uint64_t off, uint64_t len, int *is_data, uint64_t *run)
{
    struct io_fault_io *w = (struct io_fault_io *)io;
    return w->inner->ops->data_status(w->inner, off, len, is_data, run);
}

static int fault_allocated_size(qk_io *io, uint64_t *size)
{
    struct io_fault_io *w = (struct io_fault_io *)io;
    return w->inner->ops->allocated_size(w->inner, size);
}

static void fault_close(qk_io *io)
{
    struct io_fault_io *w = (struct io_fault_io *)io;
    if (!w->ctl->keep_inner)
        io_close(w->inner);
    free(w);
}

static const struct qk_io_ops fault_ops = {
    .pread = fault_pread,
    .pwrite = fault_pwrite,
    .flush = fault_flush,
    .get_size = fault_get_size,
    .truncate = fault_truncate,
    .fallocate = fault_fallocate,
    .punch_hole = fault_punch_hole,
    .data_status = fault_data_status,
    .allocated_size = fault_allocated_size,
    .close = fault_close,
};

struct io_fault *io_fault_new(int record)
{
    struct io_fault *f = calloc(1, sizeof *f);
    if (f)
        f->record = record;
    return f;
}

void io_fault_keep_inner(struct io_fault *f)
{
    f->keep_inner = 1;
}

void io_fault_set(struct io_fault *f, int kind, long nth)
{
    f->fail_at[kind] = nth;
    f->counts[kind] = 0;
}

long io_fault_count(const struct io_fault *f, int kind)
{
    return f->counts[kind];
}

const struct io_fault_op *io_fault_log(const struct io_fault *f, size_t *len)
{
    *len = f->log_len;
    return f->log;
}

void io_fault_free(struct io_fault *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->log_len; i++)
        free(f->log[i].data);
    free(f->log);
    free(f);
}

int io_fault_wrap(qk_io **out, qk_io *inner, struct io_fault *ctl)
{
    struct io_fault_io *w = calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    w->base.ops = &fault_ops;
    w->inner = inner;
    w->ctl = ctl;
    *out = &w->base;
    return 0;
}
