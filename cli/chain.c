/*
 * chain.c - helpers shared by commit.c and rebase.c (see chain.h).
 */
#include "chain.h"
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

int cli_parse_cache(const char *mode, unsigned *flags, const char *what)
{
    static const char *const known[] = { "none", "off", "directsync", "writeback", "writethrough" };
    if (!strcmp(mode, "unsafe")) {
        *flags |= QK_OPEN_UNSAFE;
        return 0;
    }
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (!strcmp(mode, known[i]))
            return 0;
    cli_error("Invalid %s option: %s", what, mode);
    return -1;
}

char *cli_resolve_against(const char *path, const char *name)
{
    const char *slash = strrchr(path, '/');
    size_t dlen = name[0] == '/' || !slash ? 0 : (size_t)(slash - path) + 1;
    char *s = malloc(dlen + strlen(name) + 1);
    if (!s) {
        cli_error("Out of memory");
        return NULL;
    }
    memcpy(s, path, dlen);
    strcpy(s + dlen, name);
    return s;
}

/* NAME against the folder of PATH as a real path in BUF; NULL when the file
 * does not exist. */
static char *real_against(const char *path, const char *name, char *buf)
{
    char *joined = cli_resolve_against(path, name);
    char *r = joined ? realpath(joined, buf) : NULL;
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
