/*
 * test_endian.c - unit tests for src/endian.h (big-endian loads and stores)
 * and src/checked.h (overflow-checked add/mul/align, division helpers).
 *
 * The byte patterns are written out literally, so a helper that used host
 * byte order (or a sign-extending shift) fails on any machine. Every width is
 * exercised at every misalignment inside a larger buffer, and the stores are
 * checked not to touch neighbouring bytes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "checked.h"
#include "endian.h"

static const uint8_t pattern[8] = { 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef };

/* ---- endian.h --------------------------------------------------------- */

static void test_endian__load_known_bytes(void **state)
{
    (void)state;
    assert_int_equal(be16_load(pattern), 0x0123);
    assert_int_equal(be32_load(pattern), 0x01234567u);
    assert_true(be64_load(pattern) == 0x0123456789abcdefull);
    /* high bit set in the first byte: no sign extension anywhere */
    assert_int_equal(be16_load(pattern + 4), 0x89ab);
    assert_int_equal(be32_load(pattern + 4), 0x89abcdefu);
    static const uint8_t hi[8] = { 0xff, 0x00, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00 };
    assert_true(be64_load(hi) == 0xff00000080000000ull);
    assert_true(be32_load(hi + 4) == 0x80000000u);
}

static void test_endian__store_known_bytes(void **state)
{
    (void)state;
    uint8_t b[8];
    memset(b, 0, sizeof b);
    be16_store(b, 0x0123);
    assert_memory_equal(b, pattern, 2);
    be32_store(b, 0x01234567u);
    assert_memory_equal(b, pattern, 4);
    be64_store(b, 0x0123456789abcdefull);
    assert_memory_equal(b, pattern, 8);
}

static void test_endian__extremes(void **state)
{
    (void)state;
    uint8_t b[8];
    static const uint8_t ones[8] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
    static const uint8_t zeros[8] = { 0 };

    be16_store(b, UINT16_MAX);
    assert_memory_equal(b, ones, 2);
    assert_int_equal(be16_load(b), UINT16_MAX);
    be32_store(b, UINT32_MAX);
    assert_memory_equal(b, ones, 4);
    assert_true(be32_load(b) == UINT32_MAX);
    be64_store(b, UINT64_MAX);
    assert_memory_equal(b, ones, 8);
    assert_true(be64_load(b) == UINT64_MAX);

    be16_store(b, 0);
    assert_memory_equal(b, zeros, 2);
    be32_store(b, 0);
    assert_memory_equal(b, zeros, 4);
    be64_store(b, 0);
    assert_memory_equal(b, zeros, 8);
    assert_true(be64_load(b) == 0);

    /* single high bits: the top byte and the lowest byte */
    be64_store(b, 1ull << 63);
    assert_int_equal(b[0], 0x80);
    assert_int_equal(b[7], 0x00);
    assert_true(be64_load(b) == 1ull << 63);
    be64_store(b, 1);
    assert_int_equal(b[0], 0x00);
    assert_int_equal(b[7], 0x01);
    be32_store(b, 1u << 31);
    assert_int_equal(b[0], 0x80);
    assert_true(be32_load(b) == 1u << 31);
    be16_store(b, 0x8000);
    assert_int_equal(b[0], 0x80);
    assert_int_equal(b[1], 0x00);
    assert_int_equal(be16_load(b), 0x8000);
}

/* Store at every offset 0..15 of a guarded buffer: exactly WIDTH bytes change,
 * in big-endian order, and the load at the same (unaligned) address agrees. */
static void check_unaligned(unsigned width)
{
    uint8_t buf[32];
    const uint64_t v64 = 0x8899aabbccddeeffull;
    for (unsigned off = 0; off < 16; off++) {
        memset(buf, 0x5a, sizeof buf);
        uint8_t *p = buf + off;
        uint64_t expect;
        switch (width) {
        case 2:
            be16_store(p, (uint16_t)v64);
            expect = be16_load(p);
            assert_int_equal(expect, 0xeeff);
            break;
        case 4:
            be32_store(p, (uint32_t)v64);
            expect = be32_load(p);
            assert_true(expect == 0xccddeeffu);
            break;
        default:
            be64_store(p, v64);
            expect = be64_load(p);
            assert_true(expect == v64);
            break;
        }
        for (unsigned i = 0; i < width; i++)
            assert_int_equal(p[i], (uint8_t)(expect >> (8 * (width - 1 - i))));
        for (unsigned i = 0; i < off; i++)
            assert_int_equal(buf[i], 0x5a);
        for (unsigned i = off + width; i < sizeof buf; i++)
            assert_int_equal(buf[i], 0x5a);
    }
}

static void test_endian__unaligned_16(void **state)
{
    (void)state;
    check_unaligned(2);
}

static void test_endian__unaligned_32(void **state)
{
    (void)state;
    check_unaligned(4);
}

static void test_endian__unaligned_64(void **state)
{
    (void)state;
    check_unaligned(8);
}

/* Loads at odd addresses read the right bytes (no rounding of the pointer). */
static void test_endian__unaligned_loads(void **state)
{
    (void)state;
    uint8_t buf[24];
    for (unsigned i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t)i;
    assert_int_equal(be16_load(buf + 1), 0x0102);
    assert_int_equal(be16_load(buf + 7), 0x0708);
    assert_true(be32_load(buf + 3) == 0x03040506u);
    assert_true(be32_load(buf + 13) == 0x0d0e0f10u);
    assert_true(be64_load(buf + 1) == 0x0102030405060708ull);
    assert_true(be64_load(buf + 9) == 0x090a0b0c0d0e0f10ull);
    assert_true(be64_load(buf + 15) == 0x0f10111213141516ull);
}

/* A pseudo-random sweep: store/load round trips and the bytes match a
 * shift-based reference for every width. */
static void test_endian__round_trip_sweep(void **state)
{
    (void)state;
    uint64_t x = 0x9e3779b97f4a7c15ull;
    uint8_t b[9];
    for (int n = 0; n < 10000; n++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        be64_store(b + 1, x);
        for (int i = 0; i < 8; i++)
            assert_int_equal(b[1 + i], (uint8_t)(x >> (56 - 8 * i)));
        assert_true(be64_load(b + 1) == x);
        be32_store(b + 1, (uint32_t)x);
        assert_true(be32_load(b + 1) == (uint32_t)x);
        be16_store(b + 1, (uint16_t)x);
        assert_true(be16_load(b + 1) == (uint16_t)x);
    }
}

/* ---- checked.h -------------------------------------------------------- */

static void test_checked__add(void **state)
{
    (void)state;
    uint64_t r = 12345;
    assert_int_equal(ck_add(0, 0, &r), 0);
    assert_true(r == 0);
    assert_int_equal(ck_add(1, 2, &r), 0);
    assert_true(r == 3);
    assert_int_equal(ck_add(UINT64_MAX, 0, &r), 0);
    assert_true(r == UINT64_MAX);
    assert_int_equal(ck_add(0, UINT64_MAX, &r), 0);
    assert_true(r == UINT64_MAX);
    assert_int_equal(ck_add(UINT64_MAX - 1, 1, &r), 0);
    assert_true(r == UINT64_MAX);
    assert_int_equal(ck_add(1ull << 63, (1ull << 63) - 1, &r), 0);
    assert_true(r == UINT64_MAX);
    /* one past the edge */
    assert_int_equal(ck_add(UINT64_MAX, 1, &r), -1);
    assert_int_equal(ck_add(1, UINT64_MAX, &r), -1);
    assert_int_equal(ck_add(1ull << 63, 1ull << 63, &r), -1);
    assert_int_equal(ck_add(UINT64_MAX, UINT64_MAX, &r), -1);
    /* a typical offset + length from an image */
    assert_int_equal(ck_add(0xfffffffffffffe00ull, 0x200, &r), -1);
    assert_int_equal(ck_add(0xfffffffffffffe00ull, 0x1ff, &r), 0);
    assert_true(r == UINT64_MAX);
}

static void test_checked__mul(void **state)
{
    (void)state;
    uint64_t r = 1;
    assert_int_equal(ck_mul(0, UINT64_MAX, &r), 0);
    assert_true(r == 0);
    assert_int_equal(ck_mul(UINT64_MAX, 1, &r), 0);
    assert_true(r == UINT64_MAX);
    assert_int_equal(ck_mul(1ull << 32, (1ull << 32) - 1, &r), 0);
    assert_true(r == 0xffffffff00000000ull);
    assert_int_equal(ck_mul(1ull << 32, 1ull << 32, &r), -1);
    assert_int_equal(ck_mul(1ull << 63, 2, &r), -1);
    assert_int_equal(ck_mul(2, 1ull << 63, &r), -1);
    assert_int_equal(ck_mul((1ull << 62), 3, &r), 0);
    assert_true(r == 0xc000000000000000ull);
    assert_int_equal(ck_mul((1ull << 62), 4, &r), -1);
    /* UINT64_MAX = 3 * 5 * 17 * 257 * 641 * 65537 * 6700417 */
    assert_int_equal(ck_mul(0x5555555555555555ull, 3, &r), 0);
    assert_true(r == UINT64_MAX);
    assert_int_equal(ck_mul(0x5555555555555556ull, 3, &r), -1);
    /* L1 entries * 8 with a hostile 32-bit l1_size stays exact in 64 bits */
    assert_int_equal(ck_mul(UINT32_MAX, 8, &r), 0);
    assert_true(r == 0x7fffffff8ull);
}

static void test_checked__align_up(void **state)
{
    (void)state;
    uint64_t r = 7;
    assert_int_equal(ck_align_up(0, 512, &r), 0);
    assert_true(r == 0);
    assert_int_equal(ck_align_up(1, 512, &r), 0);
    assert_true(r == 512);
    assert_int_equal(ck_align_up(512, 512, &r), 0);
    assert_true(r == 512);
    assert_int_equal(ck_align_up(513, 512, &r), 0);
    assert_true(r == 1024);
    assert_int_equal(ck_align_up(65535, 65536, &r), 0);
    assert_true(r == 65536);
    assert_int_equal(ck_align_up(12345, 1, &r), 0);
    assert_true(r == 12345);
    assert_int_equal(ck_align_up(UINT64_MAX, 1, &r), 0);
    assert_true(r == UINT64_MAX);
    /* the largest value that still rounds up within 64 bits */
    assert_int_equal(ck_align_up(UINT64_MAX - 511, 512, &r), 0);
    assert_true(r == UINT64_MAX - 511);
    assert_int_equal(ck_align_up(UINT64_MAX - 512, 512, &r), 0);
    assert_true(r == UINT64_MAX - 511);
    /* ... and the ones that would wrap to 0 */
    assert_int_equal(ck_align_up(UINT64_MAX - 510, 512, &r), -1);
    assert_int_equal(ck_align_up(UINT64_MAX, 512, &r), -1);
    assert_int_equal(ck_align_up((1ull << 63) + 1, 1ull << 63, &r), -1);
    assert_int_equal(ck_align_up(1, 1ull << 63, &r), 0);
    assert_true(r == 1ull << 63);
    assert_int_equal(ck_align_up(UINT64_MAX - (2u << 20) + 2, 2u << 20, &r), -1);
}

static void test_checked__is_aligned(void **state)
{
    (void)state;
    assert_true(is_aligned(0, 512));
    assert_true(is_aligned(1024, 512));
    assert_false(is_aligned(1023, 512));
    assert_false(is_aligned(1, 512));
    assert_true(is_aligned(UINT64_MAX, 1));
    assert_false(is_aligned(UINT64_MAX, 2));
    assert_true(is_aligned(1ull << 63, 1ull << 63));
    assert_false(is_aligned(1ull << 62, 1ull << 63));
    assert_true(is_aligned(0xfffffffffffffe00ull, 512));
}

static void test_checked__div_round_up(void **state)
{
    (void)state;
    assert_true(div_round_up(0, 1) == 0);
    assert_true(div_round_up(0, 512) == 0);
    assert_true(div_round_up(1, 512) == 1);
    assert_true(div_round_up(511, 512) == 1);
    assert_true(div_round_up(512, 512) == 1);
    assert_true(div_round_up(513, 512) == 2);
    assert_true(div_round_up(10, 3) == 4);
    assert_true(div_round_up(9, 3) == 3);
    /* no "a + b - 1" overflow at the top of the range */
    assert_true(div_round_up(UINT64_MAX, 1) == UINT64_MAX);
    assert_true(div_round_up(UINT64_MAX, 2) == 1ull << 63);
    assert_true(div_round_up(UINT64_MAX, UINT64_MAX) == 1);
    assert_true(div_round_up(UINT64_MAX - 1, UINT64_MAX) == 1);
    assert_true(div_round_up(UINT64_MAX, 1ull << 63) == 2);
    assert_true(div_round_up(UINT64_MAX, 512) == (1ull << 55));
}

static void test_checked__min_max(void **state)
{
    (void)state;
    assert_true(min_u64(0, UINT64_MAX) == 0);
    assert_true(min_u64(UINT64_MAX, 0) == 0);
    assert_true(max_u64(0, UINT64_MAX) == UINT64_MAX);
    assert_true(max_u64(UINT64_MAX, 0) == UINT64_MAX);
    assert_true(min_u64(1ull << 63, (1ull << 63) - 1) == (1ull << 63) - 1);
    assert_true(max_u64(1ull << 63, (1ull << 63) - 1) == 1ull << 63);
    assert_true(min_u64(5, 5) == 5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_endian__load_known_bytes),
        cmocka_unit_test(test_endian__store_known_bytes),
        cmocka_unit_test(test_endian__extremes),
        cmocka_unit_test(test_endian__unaligned_16),
        cmocka_unit_test(test_endian__unaligned_32),
        cmocka_unit_test(test_endian__unaligned_64),
        cmocka_unit_test(test_endian__unaligned_loads),
        cmocka_unit_test(test_endian__round_trip_sweep),
        cmocka_unit_test(test_checked__add),
        cmocka_unit_test(test_checked__mul),
        cmocka_unit_test(test_checked__align_up),
        cmocka_unit_test(test_checked__is_aligned),
        cmocka_unit_test(test_checked__div_round_up),
        cmocka_unit_test(test_checked__min_max),
    };
    return cmocka_run_group_tests_name("endian", tests, NULL, NULL);
}
