/*
 * chain.c - helpers shared by commit.c and rebase.c (see chain.h).
 */
#include "chain.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

int cli_parse_cache(const char *mode, unsigned *flags)
{
    static const char *const known[] = { "none", "off", "directsync", "writeback", "writethrough" };
    if (!strcmp(mode, "unsafe")) {
        *flags |= QK_OPEN_UNSAFE;
        return 0;
    }
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (!strcmp(mode, known[i]))
            return 0;
    return -1;
}

/* NAME against the folder of PATH (absolute NAME as it is), as a real path
 * in BUF; NULL when the file does not exist. */
static char *real_against(const char *path, const char *name, char *buf)
{
    const char *slash = strrchr(path, '/');
    if (name[0] == '/' || !slash)
        return realpath(name, buf);
    size_t dlen = (size_t)(slash - path) + 1;
    char *joined = malloc(dlen + strlen(name) + 1);
    if (!joined)
        return NULL;
    memcpy(joined, path, dlen);
    strcpy(joined + dlen, name);
    char *r = realpath(joined, buf);
    free(joined);
    return r;
}

qk_image *cli_find_backing(qk_image *top, const char *name)
{
    char want[PATH_MAX], have[PATH_MAX];
    for (qk_image *cur = top; qk_backing(cur); cur = qk_backing(cur)) {
        qk_image *b = qk_backing(cur);
        if (real_against(qk_filename(cur), name, want) && realpath(qk_filename(b), have) &&
            !strcmp(want, have))
            return b;
    }
    return NULL;
}
