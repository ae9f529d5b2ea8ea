/*
 * dirty.c - the in-memory sparse dirty bitmap.
 *
 * Bit n covers bytes [n*g, (n+1)*g) of the disk, g = 2^gran_bits (the
 * on-disk meaning, spec "Bitmaps"). Bits live in pages of PAGE_BYTES (or
 * one cluster when clusters are smaller); a page that is all zeros or all
 * ones holds no memory, so memory follows the dirty part of the disk, not
 * its size. Within a page, bit order is the on-disk one: bit n is
 * byte[n/8] >> (n%8).
 *
 * Invariants:
 *  1. pages[i] is non-NULL exactly when state[i] == PAGE_MIXED.
 *  2. Bits at or past nbits are always 0 (tail bits of the last page).
 *  3. Every operation is bounded by the pages it touches plus the page
 *     count for a full scan: a 2 TiB disk at 512-byte granularity has 131072
 *     pages, so a scan is cheap.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "checked.h"
#include "internal.h"

#define PAGE_BYTES 4096u

enum { PAGE_ZERO = 0, PAGE_ONES = 1, PAGE_MIXED = 2 };

struct qk_dirty {
    uint64_t size;        /* bytes of disk covered */
    unsigned gran_bits;
    uint64_t nbits;
    uint64_t page_bits;   /* bits per page */
    uint64_t npages;
    uint8_t *state;
    uint8_t **pages;
};

int dirty_new(struct qk_dirty **out, uint64_t size, unsigned gran_bits, uint32_t cluster_size)
{
    if (gran_bits > 63)
        return -EINVAL;
    struct qk_dirty *d = calloc(1, sizeof *d);
    if (!d)
        return -ENOMEM;
    d->size = size;
    d->gran_bits = gran_bits;
    d->nbits = div_round_up(size, 1ull << gran_bits);
    d->page_bits = (uint64_t)(cluster_size < PAGE_BYTES ? cluster_size : PAGE_BYTES) * 8;
    d->npages = div_round_up(d->nbits, d->page_bits);
    if (d->npages > (1ull << 30)) {
        free(d);
        return -EFBIG;
    }
    d->state = calloc(d->npages ? d->npages : 1, 1);
    d->pages = calloc(d->npages ? d->npages : 1, sizeof *d->pages);
    if (!d->state || !d->pages) {
        dirty_free(d);
        return -ENOMEM;
    }
    *out = d;
    return 0;
}

void dirty_free(struct qk_dirty *d)
{
    if (!d)
        return;
    for (uint64_t i = 0; d->pages && i < d->npages; i++)
        free(d->pages[i]);
    free(d->pages);
    free(d->state);
    free(d);
}

uint64_t dirty_size(const struct qk_dirty *d)
{
    return d->size;
}

unsigned dirty_gran_bits(const struct qk_dirty *d)
{
    return d->gran_bits;
}

/* Bits that exist in page I (the last page may be short). */
static uint64_t page_len(const struct qk_dirty *d, uint64_t i)
{
    uint64_t start = i * d->page_bits;
    return min_u64(d->page_bits, d->nbits - start);
}

static int materialize(struct qk_dirty *d, uint64_t i)
{
    if (d->state[i] == PAGE_MIXED)
        return 0;
    uint8_t *p = malloc(d->page_bits / 8);
    if (!p)
        return -ENOMEM;
    if (d->state[i] == PAGE_ONES) {
        uint64_t n = page_len(d, i);
        memset(p, 0, d->page_bits / 8);
        memset(p, 0xff, n / 8);
        if (n % 8)
            p[n / 8] = (uint8_t)((1u << (n % 8)) - 1);
    } else {
        memset(p, 0, d->page_bits / 8);
    }
    d->pages[i] = p;
    d->state[i] = PAGE_MIXED;
    return 0;
}

/* Drop a page's memory when it became uniform. */
static void settle(struct qk_dirty *d, uint64_t i)
{
    if (d->state[i] != PAGE_MIXED)
        return;
    const uint8_t *p = d->pages[i];
    uint64_t n = page_len(d, i), full = n / 8;
    int zero = 1, ones = 1;
    for (uint64_t k = 0; k < full && (zero || ones); k++) {
        zero &= p[k] == 0;
        ones &= p[k] == 0xff;
    }
    if (n % 8) {
        uint8_t mask = (uint8_t)((1u << (n % 8)) - 1);
        zero &= (p[full] & mask) == 0;
        ones &= (p[full] & mask) == mask;
    }
    if (zero || ones) {
        free(d->pages[i]);
        d->pages[i] = NULL;
        d->state[i] = zero ? PAGE_ZERO : PAGE_ONES;
    }
}

static void set_bits(uint8_t *p, uint64_t b0, uint64_t b1, int value)
{
    for (uint64_t b = b0; b < b1;) {
        if ((b & 7) == 0 && b + 8 <= b1) {
            uint64_t n = (b1 - b) / 8;
            memset(p + b / 8, value ? 0xff : 0, n);
            b += n * 8;
            continue;
        }
        if (value)
            p[b / 8] |= (uint8_t)(1u << (b & 7));
        else
            p[b / 8] &= (uint8_t)~(1u << (b & 7));
        b++;
    }
}

/* Set (VALUE 1) or clear bits [b0, b1). */
static int fill_bits(struct qk_dirty *d, uint64_t b0, uint64_t b1, int value)
{
    if (b1 > d->nbits)
        b1 = d->nbits;
    while (b0 < b1) {
        uint64_t i = b0 / d->page_bits, ps = i * d->page_bits;
        uint64_t e = min_u64(b1, ps + page_len(d, i));
        if (b0 == ps && e == ps + page_len(d, i)) {
            free(d->pages[i]);
            d->pages[i] = NULL;
            d->state[i] = value ? PAGE_ONES : PAGE_ZERO;
        } else if (d->state[i] != (value ? PAGE_ONES : PAGE_ZERO)) {
            int r = materialize(d, i);
            if (r < 0)
                return r;
            set_bits(d->pages[i], b0 - ps, e - ps, value);
            settle(d, i);
        }
        b0 = e;
    }
    return 0;
}

static void byte_range_to_bits(const struct qk_dirty *d, uint64_t off, uint64_t len,
                               uint64_t *b0, uint64_t *b1)
{
    uint64_t end = off + len < off ? UINT64_MAX : off + len;
    *b0 = off >> d->gran_bits;
    *b1 = d->gran_bits ? (end >> d->gran_bits) + ((end & ((1ull << d->gran_bits) - 1)) != 0) : end;
}

int dirty_set(struct qk_dirty *d, uint64_t off, uint64_t len)
{
    uint64_t b0, b1;
    if (len == 0)
        return 0;
    byte_range_to_bits(d, off, len, &b0, &b1);
    return fill_bits(d, b0, b1, 1);
}

int dirty_clear_all(struct qk_dirty *d)
{
    return fill_bits(d, 0, d->nbits, 0);
}

int dirty_get_bit(const struct qk_dirty *d, uint64_t bit)
{
    uint64_t i = bit / d->page_bits;
    if (bit >= d->nbits)
        return 0;
    if (d->state[i] != PAGE_MIXED)
        return d->state[i] == PAGE_ONES;
    uint64_t b = bit - i * d->page_bits;
    return (d->pages[i][b / 8] >> (b & 7)) & 1;
}

/* First bit at or after BIT whose value differs from VALUE (nbits if none). */
static uint64_t next_change(const struct qk_dirty *d, uint64_t bit, int value)
{
    while (bit < d->nbits) {
        uint64_t i = bit / d->page_bits, ps = i * d->page_bits, pe = ps + page_len(d, i);
        if (d->state[i] != PAGE_MIXED) {
            if ((d->state[i] == PAGE_ONES) != value)
                return bit;
            bit = pe;
            continue;
        }
        const uint8_t *p = d->pages[i];
        for (uint64_t b = bit - ps; ps + b < pe;) {
            if ((b & 7) == 0 && ps + b + 8 <= pe && p[b / 8] == (value ? 0xff : 0)) {
                b += 8;
                continue;
            }
            if (((p[b / 8] >> (b & 7)) & 1) != value)
                return ps + b;
            b++;
        }
        bit = pe;
    }
    return d->nbits;
}

int dirty_extent(const struct qk_dirty *d, uint64_t off, uint64_t *len, int *dirty)
{
    if (off >= d->size)
        return -EINVAL;
    uint64_t bit = off >> d->gran_bits;
    int v = dirty_get_bit(d, bit);
    uint64_t end_bit = next_change(d, bit + 1, v);
    uint64_t end = end_bit >= d->nbits ? d->size
                 : (end_bit > (UINT64_MAX >> d->gran_bits) ? d->size : end_bit << d->gran_bits);
    if (end > d->size)
        end = d->size;
    *len = end - off;
    *dirty = v;
    return 0;
}

uint64_t dirty_count_bytes(const struct qk_dirty *d)
{
    uint64_t total = 0, off = 0, len;
    int v;
    while (off < d->size && dirty_extent(d, off, &len, &v) == 0) {
        if (v)
            total += len;
        off += len;
    }
    return total;
}

int dirty_merge(struct qk_dirty *dst, const struct qk_dirty *src)
{
    uint64_t off = 0, len;
    int v;
    uint64_t end = min_u64(dst->size, src->size);
    while (off < end && dirty_extent(src, off, &len, &v) == 0) {
        if (v) {
            int r = dirty_set(dst, off, min_u64(len, end - off));
            if (r < 0)
                return r;
        }
        off += len;
    }
    return 0;
}

/* Serialization: the bytes of one bitmap-data cluster (CS bytes, cluster
 * index CI of the table). *uniform gets 0 when every bit is clear (BUF is
 * then not filled), 1 when every bit is set, -1 otherwise; for 1 and -1 BUF
 * holds the cluster's bytes, with the tail bits past the disk zero. */
void dirty_store_cluster(const struct qk_dirty *d, uint64_t ci, uint32_t cs, uint8_t *buf,
                         int *uniform)
{
    uint64_t per = (uint64_t)cs * 8 / d->page_bits;   /* pages per cluster */
    uint64_t first = ci * per;
    int u = -2;
    for (uint64_t k = 0; k < per && first + k < d->npages; k++) {
        uint8_t s = d->state[first + k];
        int pu = s == PAGE_MIXED ? -1 : s;
        u = u == -2 ? pu : (u == pu ? u : -1);
    }
    *uniform = u == -2 ? 0 : u;
    if (*uniform == 0)
        return;
    memset(buf, 0, cs);
    for (uint64_t k = 0; k < per && first + k < d->npages; k++) {
        uint64_t i = first + k;
        uint8_t *dst = buf + k * (d->page_bits / 8);
        if (d->state[i] == PAGE_MIXED) {
            memcpy(dst, d->pages[i], d->page_bits / 8);
        } else if (d->state[i] == PAGE_ONES) {
            uint64_t n = page_len(d, i);
            memset(dst, 0xff, n / 8);
            if (n % 8)
                dst[n / 8] = (uint8_t)((1u << (n % 8)) - 1);
        }
    }
}

int dirty_load_cluster(struct qk_dirty *d, uint64_t ci, uint32_t cs, const uint8_t *buf, int uniform)
{
    uint64_t per = (uint64_t)cs * 8 / d->page_bits;
    uint64_t first = ci * per;
    for (uint64_t k = 0; k < per && first + k < d->npages; k++) {
        uint64_t i = first + k;
        free(d->pages[i]);
        d->pages[i] = NULL;
        if (uniform >= 0) {
            d->state[i] = (uint8_t)uniform;
            continue;
        }
        d->state[i] = PAGE_ZERO;
        int r = materialize(d, i);
        if (r < 0)
            return r;
        memcpy(d->pages[i], buf + k * (d->page_bits / 8), d->page_bits / 8);
        /* Tail bits past nbits are ignored on load, as QEMU does. */
        uint64_t n = page_len(d, i);
        if (n < d->page_bits)
            set_bits(d->pages[i], n, d->page_bits, 0);
        settle(d, i);
    }
    return 0;
}
