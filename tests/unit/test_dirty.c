/*
 * test_dirty.c - the sparse dirty bitmap (src/dirty.c) against a plain
 * byte-per-bit model: random sets, clears, merges across granularities,
 * extents, counts and the cluster (de)serialization round trip.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "internal.h"

static uint64_t rng = 88172645463325252ull;
static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Compare D with MODEL (one byte per granule) through extents and bits. */
static void expect_model(const struct qk_dirty *d, const uint8_t *model, uint64_t size, unsigned gb)
{
    uint64_t nbits = (size + (1ull << gb) - 1) >> gb, off = 0, len, count = 0;
    int v;
    for (uint64_t b = 0; b < nbits; b++)
        assert_int_equal(dirty_get_bit(d, b), model[b]);
    while (off < size) {
        assert_int_equal(dirty_extent(d, off, &len, &v), 0);
        assert_true(len > 0);
        for (uint64_t o = off; o < off + len; o += (1ull << gb) - (o & ((1ull << gb) - 1)))
            assert_int_equal(model[o >> gb], v);
        uint64_t end = off + len;
        if (end < size)
            assert_int_not_equal(model[end >> gb], v);   /* extents are maximal */
        if (v)
            count += len;
        off = end;
    }
    assert_int_equal(dirty_count_bytes(d), count);
}

static void random_ops(unsigned gb, uint32_t cs, uint64_t size)
{
    struct qk_dirty *d;
    uint64_t nbits = (size + (1ull << gb) - 1) >> gb;
    uint8_t *model = calloc(nbits, 1);
    assert_non_null(model);
    assert_int_equal(dirty_new(&d, size, gb, cs), 0);
    for (int i = 0; i < 300; i++) {
        uint64_t off = rnd() % size, len = 1 + rnd() % (size / 8);
        if (off + len > size)
            len = size - off;
        if (rnd() % 10 == 0) {
            assert_int_equal(dirty_clear_all(d), 0);
            memset(model, 0, nbits);
        } else {
            assert_int_equal(dirty_set(d, off, len), 0);
            for (uint64_t b = off >> gb; b <= (off + len - 1) >> gb; b++)
                model[b] = 1;
        }
        if (i % 50 == 0)
            expect_model(d, model, size, gb);
    }
    expect_model(d, model, size, gb);

    /* Round trip through on-disk clusters. */
    struct qk_dirty *e;
    uint64_t bytes = (nbits + 7) / 8, clusters = (bytes + cs - 1) / cs;
    uint8_t *buf = malloc(cs);
    assert_non_null(buf);
    assert_int_equal(dirty_new(&e, size, gb, cs), 0);
    for (uint64_t c = 0; c < clusters; c++) {
        int u;
        dirty_store_cluster(d, c, cs, buf, &u);
        if (u < 0) {   /* tail bits past the disk must be zero on disk */
            for (uint64_t b = nbits; b < (c + 1) * cs * 8; b++)
                if (b >= c * cs * 8)
                    assert_int_equal((buf[(b - c * cs * 8) / 8] >> (b & 7)) & 1, 0);
        }
        assert_int_equal(dirty_load_cluster(e, c, cs, buf, u), 0);
    }
    expect_model(e, model, size, gb);

    /* Merge into a bitmap of another granularity. */
    unsigned gb2 = gb + 2;
    struct qk_dirty *m;
    uint64_t nbits2 = (size + (1ull << gb2) - 1) >> gb2;
    uint8_t *model2 = calloc(nbits2, 1);
    assert_non_null(model2);
    assert_int_equal(dirty_new(&m, size, gb2, cs), 0);
    assert_int_equal(dirty_merge(m, d), 0);
    for (uint64_t b = 0; b < nbits; b++)
        if (model[b])
            model2[(b << gb) >> gb2] = 1;
    expect_model(m, model2, size, gb2);
    /* ... and back to a finer one: every fine bit of a set coarse bit is set. */
    struct qk_dirty *f;
    uint8_t *model3 = calloc(nbits, 1);
    assert_non_null(model3);
    assert_int_equal(dirty_new(&f, size, gb, cs), 0);
    assert_int_equal(dirty_merge(f, m), 0);
    for (uint64_t b = 0; b < nbits; b++)
        model3[b] = model2[(b << gb) >> gb2];
    expect_model(f, model3, size, gb);

    dirty_free(d);
    dirty_free(e);
    dirty_free(m);
    dirty_free(f);
    free(model);
    free(model2);
    free(model3);
    free(buf);
}

static void dirty_small_clusters(void **state)
{
    (void)state;
    random_ops(9, 512, 3 * 1024 * 1024 + 1536);
}

static void dirty_64k_clusters(void **state)
{
    (void)state;
    random_ops(12, 65536, 300 * 1024 * 1024 + 4096 * 3);
}

static void dirty_odd_size(void **state)
{
    (void)state;
    random_ops(16, 4096, 1000448);
}

static void dirty_huge_sparse(void **state)
{
    (void)state;
    /* 2 TiB at 512-byte granularity: 512 MiB of bits, held sparsely. */
    struct qk_dirty *d;
    uint64_t size = 2ull << 40, len;
    int v;
    assert_int_equal(dirty_new(&d, size, 9, 65536), 0);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(dirty_set(d, (rnd() % size) & ~511ull, 4096), 0);
    assert_true(dirty_count_bytes(d) <= 1000ull * 4096 * 2);
    assert_int_equal(dirty_extent(d, 0, &len, &v), 0);
    dirty_free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(dirty_small_clusters),
        cmocka_unit_test(dirty_64k_clusters),
        cmocka_unit_test(dirty_odd_size),
        cmocka_unit_test(dirty_huge_sparse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
