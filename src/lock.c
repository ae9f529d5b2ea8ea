/*
 * lock.c - QEMU-compatible image locking (design.md §6, qemu-reference.md §7.2).
 *
 * QEMU takes 1-byte shared OFD read locks: byte 100+i while it holds
 * permission i, byte 200+i while it refuses to share permission i
 * (0 consistent read, 1 write, 2 write-unchanged, 3 resize). Before it takes
 * a permission it tests that nobody holds the matching refusal byte, and
 * before it refuses one that nobody holds the matching permission byte.
 *
 * Invariants:
 *  1. A read-write open holds 100, 101, 103, 201, 203; a read-only open 100,
 *     201, 203; a force-share (-U) read-only open 100 alone; exactly as QEMU.
 *  2. Locks live as long as the file descriptor (OFD locks): closing the
 *     image releases them.
 */
#include <errno.h>
#include <stdio.h>

#include "internal.h"

#define PERM_CONSISTENT_READ 0x1u
#define PERM_WRITE 0x2u
#define PERM_RESIZE 0x8u
#define LOCK_PERM_BASE 100
#define LOCK_SHARED_BASE 200

static const char *const perm_names[] = { "consistent read", "write", "write unchanged", "resize" };

int lock_image(qk_image *img)
{
    unsigned perms, unshared;
    if (img->flags & QK_OPEN_NO_LOCK)
        return 0;
    if (!img->io->ops->lock_byte)
        return 0;
    if (img->writable) {
        perms = PERM_CONSISTENT_READ | PERM_WRITE | PERM_RESIZE;
        unshared = PERM_WRITE | PERM_RESIZE;
    } else {
        perms = PERM_CONSISTENT_READ;
        unshared = (img->flags & QK_OPEN_FORCE_SHARE) ? 0 : PERM_WRITE | PERM_RESIZE;
    }
    int r;
    for (int i = 0; i < 4; i++) {
        if ((perms & (1u << i)) && (r = img->io->ops->lock_byte(img->io, LOCK_PERM_BASE + i)) < 0)
            goto fail;
        if ((unshared & (1u << i)) && (r = img->io->ops->lock_byte(img->io, LOCK_SHARED_BASE + i)) < 0)
            goto fail;
    }
    /* QEMU tests every permission it takes first, then every one it refuses. */
    for (int i = 0; i < 4; i++) {
        if ((perms & (1u << i)) &&
            (r = img->io->ops->lock_test(img->io, LOCK_SHARED_BASE + i)) != 0) {
            if (r < 0)
                goto fail;
            return qk_set_error(img, QK_E_LOCKED,
                                "Failed to get \"%s\" lock\nIs another process using the image [%s]?",
                                perm_names[i], img->filename);
        }
    }
    for (int i = 0; i < 4; i++) {
        if ((unshared & (1u << i)) &&
            (r = img->io->ops->lock_test(img->io, LOCK_PERM_BASE + i)) != 0) {
            if (r < 0)
                goto fail;
            return qk_set_error(img, QK_E_LOCKED,
                                "Failed to get shared \"%s\" lock\nIs another process using the image [%s]?",
                                perm_names[i], img->filename);
        }
    }
    return 0;
fail:
    return qk_set_error(img, r, "Failed to lock byte: %s", qk_strerror(r));
}
