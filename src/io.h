/*
 * io.h - the I/O backend vtable under every image file.
 *
 * Backends: io-posix.c (a file: pread/pwrite/fdatasync/fallocate, byte-range
 * locks), io-mem.c (a growable buffer, for unit tests and fuzzing) and
 * io-fault.c (fault injection around another backend).
 *
 * Invariants:
 *  1. pread fills the whole buffer; bytes past the end of the file read as
 *     zeros (as QEMU's protocol layer does). Only real I/O errors fail.
 *  2. pwrite writes the whole buffer or fails; the file grows as needed.
 *  3. Data written before a successful flush survives a crash.
 */
#ifndef QK_IO_H
#define QK_IO_H

#include <stddef.h>
#include <stdint.h>

typedef struct qk_io qk_io;

struct qk_io_ops {
    int (*pread)(qk_io *io, void *buf, size_t len, uint64_t off);
    int (*pwrite)(qk_io *io, const void *buf, size_t len, uint64_t off);
    int (*flush)(qk_io *io);
    int (*get_size)(qk_io *io, uint64_t *size);
    int (*truncate)(qk_io *io, uint64_t size);
    /* Reserve [off, off+len) on the host (fallocate mode 0): the file grows
     * to off+len at least; the contents are unchanged. */
    int (*fallocate)(qk_io *io, uint64_t off, uint64_t len);
    /* Deallocate [off, off+len) so it reads as zeros. */
    int (*punch_hole)(qk_io *io, uint64_t off, uint64_t len);
    /* Is OFF in data (1) or a hole (0)? *run gets the length of that state
     * from OFF, at most LEN. */
    int (*data_status)(qk_io *io, uint64_t off, uint64_t len, int *is_data, uint64_t *run);
    /* Bytes allocated on the host (st_blocks * 512). */
    int (*allocated_size)(qk_io *io, uint64_t *size);
    /* Take a shared (read) lock on byte OFF; NULL where locks do not apply. */
    int (*lock_byte)(qk_io *io, uint64_t off);
    /* 1 if another open file holds a lock on byte OFF, 0 if not. */
    int (*lock_test)(qk_io *io, uint64_t off);
    void (*close)(qk_io *io);
};

struct qk_io {
    const struct qk_io_ops *ops;
};

/* io-posix.c */
#define QK_IO_WRITE 1
#define QK_IO_NOSYNC 2   /* flush does nothing */
int io_posix_open(qk_io **out, const char *path, int mode, int create);

/* io-mem.c: a private copy of DATA (may be NULL/0), growing up to 1 GiB,
 * or up to MAX bytes. */
int io_mem_new(qk_io **out, const void *data, size_t len);
int io_mem_new_limited(qk_io **out, const void *data, size_t len, uint64_t max);
const uint8_t *io_mem_data(qk_io *io, size_t *len);

/* io-fault.c: fail the Nth operation of a kind; record writes and flushes.
 * GROW counts truncate and fallocate (the calls that size the file). */
enum { IO_FAULT_READ = 0, IO_FAULT_WRITE = 1, IO_FAULT_FLUSH = 2, IO_FAULT_GROW = 3, IO_FAULT_KINDS };
struct io_fault_op {
    int is_flush;
    uint64_t offset;
    size_t len;
    uint8_t *data;
};
struct io_fault;
struct io_fault *io_fault_new(int record);
void io_fault_free(struct io_fault *f);
/* Fail the NTH (1-based, counted from now) operation of KIND; 0 = never. */
void io_fault_set(struct io_fault *f, int kind, long nth);
long io_fault_count(const struct io_fault *f, int kind);
/* Closing the wrapper will not close the inner backend (the caller does). */
void io_fault_keep_inner(struct io_fault *f);
const struct io_fault_op *io_fault_log(const struct io_fault *f, size_t *len);
/* Wrap INNER (owned by the wrapper from now on); CTL stays the caller's. */
int io_fault_wrap(qk_io **out, qk_io *inner, struct io_fault *ctl);

static inline int io_pread(qk_io *io, void *buf, size_t len, uint64_t off)
{
    return io->ops->pread(io, buf, len, off);
}

static inline int io_pwrite(qk_io *io, const void *buf, size_t len, uint64_t off)
{
    return io->ops->pwrite(io, buf, len, off);
}

static inline void io_close(qk_io *io)
{
    if (io)
        io->ops->close(io);
}

#endif
