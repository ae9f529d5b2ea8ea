/*
 * io-posix.c - the file backend: pread/pwrite/fdatasync/fallocate.
 *
 * Invariants (io.h): whole-buffer reads with zeros past EOF; whole-buffer
 * writes; flush = fdatasync.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io.h"

struct io_posix {
    qk_io base;
    int fd;
    int nosync;
};

static int posix_pread(qk_io *io, void *buf, size_t len, uint64_t off)
{
    struct io_posix *p = (struct io_posix *)io;
    uint8_t *b = buf;
    while (len > 0) {
        if (off > (uint64_t)INT64_MAX)
            return -EINVAL;
        ssize_t n = pread(p->fd, b, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0) {            /* past EOF: zeros */
            memset(b, 0, len);
            return 0;
        }
        b += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static int posix_pwrite(qk_io *io, const void *buf, size_t len, uint64_t off)
{
    struct io_posix *p = (struct io_posix *)io;
    const uint8_t *b = buf;
    while (len > 0) {
        if (off > (uint64_t)INT64_MAX)
            return -EINVAL;
        ssize_t n = pwrite(p->fd, b, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        b += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static int posix_flush(qk_io *io)
{
    struct io_posix *p = (struct io_posix *)io;
    if (p->nosync)
        return 0;
    return fdatasync(p->fd) < 0 ? -errno : 0;
}

static int posix_get_size(qk_io *io, uint64_t *size)
{
    struct io_posix *p = (struct io_posix *)io;
    struct stat st;
    if (fstat(p->fd, &st) < 0)
        return -errno;
    if (S_ISBLK(st.st_mode)) {
        off_t end = lseek(p->fd, 0, SEEK_END);
        if (end < 0)
            return -errno;
        *size = (uint64_t)end;
        return 0;
    }
    *size = (uint64_t)st.st_size;
    return 0;
}

static int posix_truncate(qk_io *io, uint64_t size)
{
    struct io_posix *p = (struct io_posix *)io;
    if (size > (uint64_t)INT64_MAX)
        return -EINVAL;
    return ftruncate(p->fd, (off_t)size) < 0 ? -errno : 0;
}

static int posix_reserve(qk_io *io, uint64_t off, uint64_t len)
{
    struct io_posix *p = (struct io_posix *)io;
    if (off > INT64_MAX || len > INT64_MAX - off)
        return -EFBIG;
    return fallocate(p->fd, 0, (off_t)off, (off_t)len) < 0 ? -errno : 0;
}

static int posix_punch_hole(qk_io *io, uint64_t off, uint64_t len)
{
    struct io_posix *p = (struct io_posix *)io;
    if (fallocate(p->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) < 0)
        return -errno;
    return 0;
}

static int posix_data_status(qk_io *io, uint64_t off, uint64_t len, int *is_data, uint64_t *run)
{
    struct io_posix *p = (struct io_posix *)io;
    off_t data = lseek(p->fd, (off_t)off, SEEK_DATA);
    if (data < 0) {
        if (errno == ENXIO) {    /* past the last data: a hole up to EOF (and beyond) */
            *is_data = 0;
            *run = len;
            return 0;
        }
        *is_data = 1;            /* no SEEK_DATA support: everything is data */
        *run = len;
        return 0;
    }
    if ((uint64_t)data > off) {
        *is_data = 0;
        *run = (uint64_t)data - off < len ? (uint64_t)data - off : len;
        return 0;
    }
    off_t hole = lseek(p->fd, (off_t)off, SEEK_HOLE);
    if (hole < 0 || (uint64_t)hole <= off) {
        *is_data = 1;
        *run = len;
        return 0;
    }
    *is_data = 1;
    *run = (uint64_t)hole - off < len ? (uint64_t)hole - off : len;
    return 0;
}

static int posix_allocated_size(qk_io *io, uint64_t *size)
{
    struct io_posix *p = (struct io_posix *)io;
    struct stat st;
    if (fstat(p->fd, &st) < 0)
        return -errno;
    *size = (uint64_t)st.st_blocks * 512;
    return 0;
}

static int posix_lock_byte(qk_io *io, uint64_t off)
{
    struct io_posix *p = (struct io_posix *)io;
    struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = (off_t)off, .l_len = 1 };
    if (fcntl(p->fd, F_OFD_SETLK, &fl) < 0)
        return errno == EINVAL ? 0 : -errno;   /* no OFD locks here: QEMU's locking=auto skips too */
    return 0;
}

static int posix_lock_test(qk_io *io, uint64_t off)
{
    struct io_posix *p = (struct io_posix *)io;
    struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = (off_t)off, .l_len = 1 };
    if (fcntl(p->fd, F_OFD_GETLK, &fl) < 0)
        return errno == EINVAL ? 0 : -errno;
    return fl.l_type != F_UNLCK;
}

static void posix_close(qk_io *io)
{
    struct io_posix *p = (struct io_posix *)io;
    close(p->fd);
    free(p);
}

static const struct qk_io_ops posix_ops = {
    .pread = posix_pread,
    .pwrite = posix_pwrite,
    .flush = posix_flush,
    .get_size = posix_get_size,
    .truncate = posix_truncate,
    .fallocate = posix_reserve,
    .punch_hole = posix_punch_hole,
    .data_status = posix_data_status,
    .allocated_size = posix_allocated_size,
    .lock_byte = posix_lock_byte,
    .lock_test = posix_lock_test,
    .close = posix_close,
};

int io_posix_open(qk_io **out, const char *path, int mode, int create)
{
    int oflags = (mode & QK_IO_WRITE) ? O_RDWR : O_RDONLY;
    if (create)
        oflags |= O_CREAT | O_TRUNC;
    int fd = open(path, oflags | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    struct io_posix *p = calloc(1, sizeof *p);
    if (!p) {
        close(fd);
        return -ENOMEM;
    }
    p->base.ops = &posix_ops;
    p->fd = fd;
    p->nosync = (mode & QK_IO_NOSYNC) != 0;
    *out = &p->base;
    return 0;
}
