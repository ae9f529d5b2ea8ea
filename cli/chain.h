/*
 * chain.h - what `qcowkit commit` and `qcowkit rebase` share: qemu-img's
 * cache-mode option and finding an image in a backing chain by name.
 */
#ifndef QK_CLI_CHAIN_H
#define QK_CLI_CHAIN_H

#include "qcowkit.h"

/* qemu's bdrv_parse_cache_mode(): 0 for a known mode (*flags gets
 * QK_OPEN_UNSAFE for "unsafe"), -1 for anything else, after printing
 * "Invalid WHAT option: MODE". */
int cli_parse_cache(const char *mode, unsigned *flags, const char *what);

/* NAME resolved against the folder of PATH (an absolute NAME as it is),
 * malloc'd; NULL (with a message) when out of memory. */
char *cli_resolve_against(const char *path, const char *name);

/* QEMU's bdrv_find_backing_image(): the layer below TOP whose file is NAME,
 * NAME resolved against the folder of the image that names that layer as
 * its backing file, both compared as real paths. NULL if none. */
qk_image *cli_find_backing(qk_image *top, const char *name);

#endif
