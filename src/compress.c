/*
 * compress.c - compressed clusters: raw deflate (zlib, type 0) and zstd
 * (type 1) decoding.
 *
 * Spec: qcow2.txt "Compressed Clusters Descriptor" and header byte 104.
 * QEMU inflates with a 4 KiB window (inflateInit2(-12)); we inflate with the
 * maximum window, which accepts everything QEMU accepts.
 *
 * Decoding uses libdeflate when the build has it (several times faster than
 * zlib's inflate) and falls back to zlib for what libdeflate refuses: a
 * stream that fills the cluster without a final block, which QEMU accepts.
 * Decoder state lives in a struct qk_decoder per image, made on first use.
 *
 * Encoding (qk_compress) is stateless, so worker threads may call it at once.
 * Deflate uses ISA-L's igzip when the build has it (level 1, several times
 * faster than zlib's default level, for output a little larger), else zlib;
 * both keep every match distance within 4 KiB (hist_bits 12, windowBits -12),
 * because QEMU inflates with a 4 KiB window.
 *
 * Invariants:
 *  1. The decoder reads only the SLEN input bytes it is given and writes
 *     only the DLEN output bytes: never past one cluster.
 *  2. Output shorter than DLEN is corruption. Extra input after the stream
 *     is tolerated (the compressed length is only known to 512 bytes), as
 *     QEMU does; for zstd several frames may fill one cluster.
 */
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <stdlib.h>
#include <zlib.h>
#ifdef QK_HAVE_ZSTD
#include <zstd.h>
#include <zstd_errors.h>
#endif
#ifdef QK_HAVE_LIBDEFLATE
#include <libdeflate.h>
#endif
#ifdef QK_HAVE_ISAL
#include <isa-l/igzip_lib.h>
#endif

#include "internal.h"

struct qk_decoder {
    z_stream z;
    int z_ready;
#ifdef QK_HAVE_ZSTD
    ZSTD_DCtx *zstd;
#endif
#ifdef QK_HAVE_LIBDEFLATE
    struct libdeflate_decompressor *ld;
#endif
};

void compress_decoder_free(struct qk_decoder *d)
{
    if (!d)
        return;
    if (d->z_ready)
        inflateEnd(&d->z);
#ifdef QK_HAVE_ZSTD
    ZSTD_freeDCtx(d->zstd);
#endif
#ifdef QK_HAVE_LIBDEFLATE
    if (d->ld)
        libdeflate_free_decompressor(d->ld);
#endif
    free(d);
}

static int zlib_inflate(struct qk_decoder *d, const uint8_t *src, size_t slen, uint8_t *dst,
                        size_t dlen)
{
    if (!d->z_ready) {
        memset(&d->z, 0, sizeof d->z);
        if (inflateInit2(&d->z, -15) != Z_OK)
            return -ENOMEM;
        d->z_ready = 1;
    } else if (inflateReset(&d->z) != Z_OK) {
        return QK_E_CORRUPT;
    }
    d->z.next_in = (Bytef *)src;
    d->z.avail_in = (uInt)slen;
    d->z.next_out = dst;
    d->z.avail_out = (uInt)dlen;
    int r = inflate(&d->z, Z_FINISH);
    size_t produced = dlen - d->z.avail_out;
    if ((r == Z_STREAM_END || r == Z_BUF_ERROR || r == Z_OK) && produced == dlen)
        return 0;
    return QK_E_CORRUPT;
}

static int inflate_raw(struct qk_decoder *d, const uint8_t *src, size_t slen, uint8_t *dst,
                       size_t dlen)
{
#ifdef QK_HAVE_LIBDEFLATE
    if (!d->ld && !(d->ld = libdeflate_alloc_decompressor()))
        return -ENOMEM;
    size_t in_used = 0, out_made = 0;
    enum libdeflate_result r = libdeflate_deflate_decompress_ex(d->ld, src, slen, dst, dlen,
                                                                &in_used, &out_made);
    if (r == LIBDEFLATE_SUCCESS && out_made == dlen)
        return 0;
#endif
    return zlib_inflate(d, src, slen, dst, dlen);
}

#ifdef QK_HAVE_ZSTD
static int zstd_decode(struct qk_decoder *d, const uint8_t *src, size_t slen, uint8_t *dst,
                       size_t dlen)
{
    if (!d->zstd && !(d->zstd = ZSTD_createDCtx()))
        return -ENOMEM;
    ZSTD_DCtx *dctx = d->zstd;
    ZSTD_DCtx_reset(dctx, ZSTD_reset_session_only);
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
    return ret;
}
#endif

/* Deflate IN into OUT with a 4 KiB window (QEMU inflates with one), as
 * QEMU's qcow2_zlib_compress does. -ENOSPC: it does not fit in *OUTLEN. */
static int deflate_raw(const uint8_t *in, size_t inlen, uint8_t *out, size_t *outlen)
{
#ifdef QK_HAVE_ISAL
    struct isal_zstream z;
    isal_deflate_stateless_init(&z);
    z.next_in = (uint8_t *)in;
    z.avail_in = (uint32_t)inlen;
    z.next_out = out;
    z.avail_out = (uint32_t)*outlen;
    z.level = 1;
    z.hist_bits = 12;
    z.end_of_stream = 1;
    z.flush = NO_FLUSH;
    z.gzip_flag = IGZIP_DEFLATE;
    int r = isal_deflate_stateless(&z);
    if (r == STATELESS_OVERFLOW)
        return -ENOSPC;
    if (r != COMP_OK)
        return -EINVAL;
    *outlen = z.total_out;
    return 0;
#else
    z_stream z;
    memset(&z, 0, sizeof z);
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK)
        return -ENOMEM;
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)inlen;
    z.next_out = out;
    z.avail_out = (uInt)*outlen;
    int r = deflate(&z, Z_FINISH);
    size_t made = *outlen - z.avail_out;
    deflateEnd(&z);
    if (r != Z_STREAM_END)
        return -ENOSPC;
    *outlen = made;
    return 0;
#endif
}

#ifdef QK_HAVE_ZSTD
/* One zstd compression context per thread, kept between calls (making one
 * costs about as much as compressing a 64 KiB cluster); freed when the
 * thread exits. */
static pthread_key_t cctx_key;
static pthread_once_t cctx_once = PTHREAD_ONCE_INIT;

static void cctx_free(void *p)
{
    ZSTD_freeCCtx(p);
}

static void cctx_key_init(void)
{
    if (pthread_key_create(&cctx_key, cctx_free) != 0)
        abort();
}

static ZSTD_CCtx *thread_cctx(void)
{
    pthread_once(&cctx_once, cctx_key_init);
    ZSTD_CCtx *c = pthread_getspecific(cctx_key);
    if (!c && (c = ZSTD_createCCtx()) && pthread_setspecific(cctx_key, c) != 0) {
        ZSTD_freeCCtx(c);
        c = NULL;
    }
    return c;
}
#endif

QK_API int qk_compress(int type, const void *in, size_t inlen, void *out, size_t *outlen)
{
    switch (type) {
    case 0:
        return deflate_raw(in, inlen, out, outlen);
#ifdef QK_HAVE_ZSTD
    case 1: {
        ZSTD_CCtx *cctx = thread_cctx();
        if (!cctx)
            return -ENOMEM;
        size_t r = ZSTD_compressCCtx(cctx, out, *outlen, in, inlen, ZSTD_CLEVEL_DEFAULT);
        if (ZSTD_isError(r))
            return ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall ? -ENOSPC : -EINVAL;
        *outlen = r;
        return 0;
    }
#endif
    default:
        return QK_E_UNSUPPORTED;
    }
}

int compress_decode(struct qk_decoder **dp, int type, const uint8_t *src, size_t slen,
                    uint8_t *dst, size_t dlen)
{
    if (!*dp && !(*dp = calloc(1, sizeof **dp)))
        return -ENOMEM;
    switch (type) {
    case 0:
        return inflate_raw(*dp, src, slen, dst, dlen);
    case 1:
#ifdef QK_HAVE_ZSTD
        return zstd_decode(*dp, src, slen, dst, dlen);
#else
        return QK_E_UNSUPPORTED;
#endif
    default:
        return QK_E_UNSUPPORTED;
    }
}
