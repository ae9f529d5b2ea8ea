/*
 * error.c - return codes, qk_strerror, and the per-handle message.
 *
 * Invariants:
 *  1. A failing library call stores one line (no trailing newline) in
 *     img->errmsg and returns the negative code it stored it with.
 *  2. Warnings accumulate in img->warnings, one per line, for the CLI to print.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

QK_API int qk_version_number(void)
{
    return QK_VERSION_MAJOR * 10000 + QK_VERSION_MINOR * 100 + QK_VERSION_PATCH;
}

QK_API const char *qk_strerror(int code)
{
    switch (code) {
    case 0: return "Success";
    case QK_E_CORRUPT: return "Image is corrupt";
    case QK_E_UNSUPPORTED: return "Unsupported feature";
    case QK_E_INVALID: return "Invalid argument";
    case QK_E_NOT_FORMAT: return "Not in the expected format";
    case QK_E_READONLY: return "Image is read-only";
    case QK_E_LOCKED: return "Image is locked by another process";
    case QK_E_NOT_FOUND: return "Not found";
    case QK_E_EXISTS: return "Already exists";
    case QK_E_BITMAP_INCONSISTENT: return "Bitmap is inconsistent";
    case QK_E_TOO_LARGE: return "Too large";
    case QK_E_NOSPC_META: return "No room in metadata";
    default:
        if (code < 0 && code > -1000)
            return strerror(-code);
        return "Unknown error";
    }
}

QK_API const char *qk_errmsg(const qk_image *img)
{
    return img ? img->errmsg : "no handle";
}

QK_API const char *qk_warnings(const qk_image *img)
{
    return img && img->warnings ? img->warnings : "";
}

int qk_set_errorv(qk_image *img, int code, const char *fmt, va_list ap)
{
    if (img)
        vsnprintf(img->errmsg, sizeof img->errmsg, fmt, ap);
    return code;
}

int qk_set_error(qk_image *img, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    qk_set_errorv(img, code, fmt, ap);
    va_end(ap);
    return code;
}

/* Warnings stop at WARNINGS_MAX bytes (then one line says so): appending
 * stays linear and bounded however many lines a repair at open produces. */
#define WARNINGS_MAX (64u << 10)

void qk_add_warning(qk_image *img, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0 || img->warnings_len > WARNINGS_MAX)
        return;
    if (img->warnings_len + strlen(line) > WARNINGS_MAX)   /* a hostile image may warn without end */
        snprintf(line, sizeof line, "(further warnings omitted)");
    size_t add = strlen(line);
    char *w = realloc(img->warnings, img->warnings_len + add + 2);
    if (!w)
        return;
    memcpy(w + img->warnings_len, line, add);
    w[img->warnings_len + add] = '\n';
    w[img->warnings_len + add + 1] = '\0';
    img->warnings = w;
    img->warnings_len += add + 1;
}
