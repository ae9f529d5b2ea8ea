/*
 * checked.h - overflow-checked arithmetic for values read from images.
 *
 * Each helper returns 0 and stores the result, or returns -1 (leaving *out
 * unspecified) when the exact result does not fit in 64 bits. Callers turn a
 * -1 into a QK_CORRUPT / QK_E_INVALID with a message that names the field.
 */
#ifndef QK_CHECKED_H
#define QK_CHECKED_H

#include <stdint.h>

static inline int ck_add(uint64_t a, uint64_t b, uint64_t *out)
{
    return __builtin_add_overflow(a, b, out) ? -1 : 0;
}

static inline int ck_mul(uint64_t a, uint64_t b, uint64_t *out)
{
    return __builtin_mul_overflow(a, b, out) ? -1 : 0;
}

/* Round A up to a multiple of ALIGN (a power of two). */
static inline int ck_align_up(uint64_t a, uint64_t align, uint64_t *out)
{
    uint64_t t;
    if (ck_add(a, align - 1, &t))
        return -1;
    *out = t & ~(align - 1);
    return 0;
}

static inline int is_aligned(uint64_t a, uint64_t align)
{
    return (a & (align - 1)) == 0;
}

static inline uint64_t div_round_up(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

static inline uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

static inline uint64_t max_u64(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

#endif
