/*
 * io-mem.c - the memory backend: a growable buffer, for unit tests and fuzzing.
 *
 * Invariants (io.h). The buffer never grows past MEM_MAX so that a hostile
 * write offset cannot make it allocate without bound.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "io.h"

#define MEM_MAX (1ull << 30)

struct io_mem {
    qk_io base;
    uint8_t *data;
    size_t len;
    uint64_t max;    /* the buffer never grows past this */
};

static int mem_pread(qk_io *io, void *buf, size_t len, uint64_t off)
{
    struct io_mem *m = (struct io_mem *)io;
    size_t avail = off < m->len ? m->len - (size_t)off : 0;
    size_t n = len < avail ? len : avail;
    if (n)
        memcpy(buf, m->data + off, n);
    memset((uint8_t *)buf + n, 0, len - n);
    return 0;
}

static int mem_grow(struct io_mem *m, uint64_t size)
{
    if (size > m->max)
        return -EFBIG;
    if (size <= m->len)
        return 0;
    uint8_t *d = realloc(m->data, (size_t)size);
    if (!d)
        return -ENOMEM;
    memset(d + m->len, 0, (size_t)size - m->len);
    m->data = d;
    m->len = (size_t)size;
    return 0;
}

static int mem_pwrite(qk_io *io, const void *buf, size_t len, uint64_t off)
{
    struct io_mem *m = (struct io_mem *)io;
    if (off > m->max || len > m->max - off)
        return -EFBIG;
    int r = mem_grow(m, off + len);
    if (r < 0)
        return r;
    memcpy(m->data + off, buf, len);
    return 0;
}

static int mem_flush(qk_io *io)
{
    (void)io;
    return 0;
}

static int mem_get_size(qk_io *io, uint64_t *size)
{
    *size = ((struct io_mem *)io)->len;
    return 0;
}

static int mem_truncate(qk_io *io, uint64_t size)
{
    struct io_mem *m = (struct io_mem *)io;
    if (size <= m->len) {
        m->len = (size_t)size;
        return 0;
    }
    return mem_grow(m, size);
}

static int mem_fallocate(qk_io *io, uint64_t off, uint64_t len)
{
    struct io_mem *m = (struct io_mem *)io;
    if (off > m->max || len > m->max - off)
        return -EFBIG;
    return mem_grow(m, off + len);
}

static int mem_punch_hole(qk_io *io, uint64_t off, uint64_t len)
{
    struct io_mem *m = (struct io_mem *)io;
    if (off >= m->len)
        return 0;
    if (len > m->len - off)
        len = m->len - off;
    memset(m->data + off, 0, (size_t)len);
    return 0;
}

static int mem_data_status(qk_io *io, uint64_t off, uint64_t len, int *is_data, uint64_t *run)
{
    struct io_mem *m = (struct io_mem *)io;
    *is_data = off < m->len;
    *run = *is_data ? (m->len - off < len ? m->len - off : len) : len;
    return 0;
}

static int mem_allocated_size(qk_io *io, uint64_t *size)
{
    *size = ((struct io_mem *)io)->len;
    return 0;
}

static void mem_close(qk_io *io)
{
    struct io_mem *m = (struct io_mem *)io;
    free(m->data);
    free(m);
}

static const struct qk_io_ops mem_ops = {
    .pread = mem_pread,
    .pwrite = mem_pwrite,
    .flush = mem_flush,
    .get_size = mem_get_size,
    .truncate = mem_truncate,
    .fallocate = mem_fallocate,
    .punch_hole = mem_punch_hole,
    .data_status = mem_data_status,
    .allocated_size = mem_allocated_size,
    .close = mem_close,
};

int io_mem_new(qk_io **out, const void *data, size_t len)
{
    return io_mem_new_limited(out, data, len, MEM_MAX);
}

int io_mem_new_limited(qk_io **out, const void *data, size_t len, uint64_t max)
{
    struct io_mem *m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    m->base.ops = &mem_ops;
    m->max = max > MEM_MAX ? MEM_MAX : max;
    if (len) {
        if (len > m->max || !(m->data = malloc(len))) {
            free(m);
            return -ENOMEM;
        }
        memcpy(m->data, data, len);
        m->len = len;
    }
    *out = &m->base;
    return 0;
}

const uint8_t *io_mem_data(qk_io *io, size_t *len)
{
    struct io_mem *m = (struct io_mem *)io;
    *len = m->len;
    return m->data;
}
