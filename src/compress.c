/*
 * compress.c - compressed clusters: raw deflate (zlib, type 0) and zstd
 * (type 1) decoding.
 *
 * Spec: qcow2.txt "Compressed Clusters Descriptor" and header byte 104.
 * QEMU inflates with a 4 KiB window (inflateInit2(-12)); we inflate with the
 * maximum window, which accepts everything QEMU accepts.
 *
 * Invariants:
 *  1. The decoder reads only the SLEN input bytes it is given and writes
 *     only the DLEN output bytes: never past one cluster.
 *  2. Output shorter than DLEN is corruption. Extra input after the stream
 *     is tolerated (the compressed length is only known to 512 bytes), as
 *     QEMU does; for zstd several frames may fill one cluster.
 */
#include <errno.h>
#include <string.h>
#include <zlib.h>
#ifdef QK_HAVE_ZSTD
#include <zstd.h>
#endif

#include "internal.h"

static int inflate_raw(const uint8_t *src, size_t slen, uint8_t *dst, size_t dlen)
{
    z_stream s;
    memset(&s, 0, sizeof s);
    if (inflateInit2(&s, -15) != Z_OK)
        return -ENOMEM;
    s.next_in = (Bytef *)src;
    s.avail_in = (uInt)slen;
    s.next_out = dst;
    s.avail_out = (uInt)dlen;
    int r = inflate(&s, Z_FINISH);
    size_t produced = dlen - s.avail_out;
    inflateEnd(&s);
    if ((r == Z_STREAM_END || r == Z_BUF_ERROR || r == Z_OK) && produced == dlen)
        return 0;
    return QK_E_CORRUPT;
}

#ifdef QK_HAVE_ZSTD
static int zstd_decode(const uint8_t *src, size_t slen, uint8_t *dst, size_t dlen)
{
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    if (!dctx)
        return -ENOMEM;
    ZSTD_inBuffer in = { src, slen, 0 };
    ZSTD_outBuffer out = { dst, dlen, 0 };
    int ret = QK_E_CORRUPT;
    while (out.pos < out.size) {
        size_t before_in = in.pos, before_out = out.pos;
        size_t r = ZSTD_decompressStream(dctx, &out, &in);
        if (ZSTD_isError(r))
            goto done;
        if (in.pos == before_in && out.pos == before_out)
            goto done;           /* no progress: truncated input */
        if (out.pos < out.size && in.pos == in.size)
            goto done;           /* input exhausted before the cluster is full */
        if (out.pos == out.size && r != 0) {
            /* The cluster is full but the frame is incomplete: QEMU fails. */
            goto done;
        }
    }
    ret = 0;
done:
    ZSTD_freeDCtx(dctx);
    return ret;
}
#endif

int compress_decode(int type, const uint8_t *src, size_t slen, uint8_t *dst, size_t dlen)
{
    switch (type) {
    case 0:
        return inflate_raw(src, slen, dst, dlen);
    case 1:
#ifdef QK_HAVE_ZSTD
        return zstd_decode(src, slen, dst, dlen);
#else
        return QK_E_UNSUPPORTED;
#endif
    default:
        return QK_E_UNSUPPORTED;
    }
}
