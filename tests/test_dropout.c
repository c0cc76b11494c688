/*
 * The dropout building blocks below the public API:
 *   - Philox4x32-10 (src/random/philox.h) on Random123's known-answer vectors;
 *   - every kernel variant's dropout_row and keep_row bit for bit equal to the scalar ones for
 *     random seeds, offsets, coordinates (up to where counter words wrap), segment starts at
 *     every residue mod 4 and lengths 1..70 and beyond, with guard elements around the segment
 *     left untouched and NaN, infinities and signed zeros among the values;
 *   - the scalar kernels against the pinned formula evaluated word by word with philox.h;
 *   - dropout_row and keep_row describe the same mask, kept values exactly x * scale;
 *   - the kept fraction of a 4-million-element mask within 5 binomial standard deviations of
 *     1 - floor(p 2^32) / 2^32 for p = 0.1, 0.5, 0.9; p = 0 keeps everything.
 * The public attn_dropout_mask is checked against a separate Philox in test_dropout_mask.c.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dispatch/dispatch.h"
#include "kernels/dropout.h"
#include "random/philox.h"
#include "support/util.h"

static const char *const variants[] = {"scalar", "avx2", "avx512"};

static void test_known_answers(void **state)
{
    (void)state;
    /* Random123's kat_vectors for philox4x32_10 */
    static const struct {
        uint32_t ctr[4], key[2], out[4];
    } kat[] = {
        {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
        {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
         {0xffffffff, 0xffffffff},
         {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
        {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
         {0xa4093822, 0x299f31d0},
         {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    };
    for (size_t t = 0; t < sizeof kat / sizeof kat[0]; t++) {
        uint32_t out[4];
        attn_philox4x32_10(kat[t].ctr, kat[t].key, out);
        for (int w = 0; w < 4; w++)
            assert_int_equal(out[w], kat[t].out[w]);
    }
}

/* Word w of the pinned formula for column j of (b, h, i), straight from philox.h. */
static uint32_t formula_word(const attn_dropout *d, int64_t b, int64_t h, int64_t i, uint64_t j)
{
    uint32_t ctr[4] = {(uint32_t)(j >> 2), (uint32_t)i,
                       (uint32_t)((uint64_t)b * d->q_heads + (uint64_t)h), d->offset};
    uint32_t key[2] = {(uint32_t)d->seed, (uint32_t)(d->seed >> 32)};
    uint32_t out[4];
    attn_philox4x32_10(ctr, key, out);
    return out[j & 3];
}

static attn_dropout random_params(rng *r)
{
    static const float ps[] = {0.0f, 0.1f, 0.25f, 0.5f, 0.9f, 0.999f, 1e-9f};
    float p = ps[rng_below(r, 7)];
    if (rng_below(r, 2))
        p = (float)rng_uniform(r, 0.0, 1.0);
    return attn_dropout_make(p, rng_next(r), (uint32_t)rng_next(r),
                             (uint32_t)(1 + rng_below(r, rng_below(r, 2) ? 64 : 1 << 30)));
}

static attn_row_coord random_coord(rng *r, const attn_dropout *d)
{
    attn_row_coord at;
    at.batch = rng_below(r, rng_below(r, 2) ? 8 : INT64_C(1) << 32);
    at.head = rng_below(r, d->q_heads);
    at.row = rng_below(r, rng_below(r, 2) ? 4096 : INT64_C(1) << 32);
    switch (rng_below(r, 4)) {
    case 0: at.col = rng_below(r, 1024); break;
    case 1: at.col = (INT64_C(1) << 32) - 1 - rng_below(r, 300); break;
    /* counter word 0 wraps: columns near 2^34 */
    case 2: at.col = (INT64_C(1) << 34) - 1 - rng_below(r, 300); break;
    default: at.col = rng_below(r, INT64_C(1) << 32); break;
    }
    return at;
}

/* Values for x: mostly ordinary, some special. */
static float random_value(rng *r)
{
    switch (rng_below(r, 40)) {
    case 0: return NAN;
    case 1: return INFINITY;
    case 2: return -INFINITY;
    case 3: return -0.0f;
    case 4: return 0x1p-140f; /* subnormal */
    default: return (float)rng_uniform(r, -2.0, 2.0);
    }
}

enum { GUARD = 19 };

static void test_variants_match_scalar(void **state)
{
    (void)state;
    const attn_kernels *ref = attn_dispatch_lookup("scalar");
    rng r = {17};
    enum { MAXN = 300 };
    float x0[MAXN + 2 * GUARD], xs[MAXN + 2 * GUARD], xv[MAXN + 2 * GUARD];
    uint8_t ks[MAXN + 2 * GUARD], kv[MAXN + 2 * GUARD];
    int compared = 0;
    for (int trial = 0; trial < 3000; trial++) {
        attn_dropout d = random_params(&r);
        attn_row_coord at = random_coord(&r, &d);
        /* lengths 1..70 with every start residue, plus some long ones */
        size_t n = trial < 2800 ? (size_t)(1 + trial % 70) : (size_t)(1 + rng_below(&r, MAXN));
        if (trial < 2800)
            at.col = (at.col & ~INT64_C(3)) + (trial / 70) % 4;
        for (size_t k = 0; k < n + 2 * GUARD; k++)
            x0[k] = random_value(&r);
        memcpy(xs, x0, sizeof x0);
        ref->dropout_row(xs + GUARD, n, &at, &d);
        memset(ks, 0xAB, sizeof ks);
        ref->keep_row(ks + GUARD, n, &at, &d);
        for (size_t t = 1; t < 3; t++) {
            const attn_kernels *k = attn_dispatch_lookup(variants[t]);
            if (!k)
                continue;
            memcpy(xv, x0, sizeof x0);
            k->dropout_row(xv + GUARD, n, &at, &d);
            if (memcmp(xs, xv, (n + 2 * GUARD) * sizeof *xs) != 0)
                fail_msg("%s dropout_row differs from scalar: seed %llx offset %u b %lld h %lld "
                         "i %lld col %lld n %zu", variants[t], (unsigned long long)d.seed,
                         (unsigned)d.offset, (long long)at.batch, (long long)at.head,
                         (long long)at.row, (long long)at.col, n);
            memset(kv, 0xAB, sizeof kv);
            k->keep_row(kv + GUARD, n, &at, &d);
            if (memcmp(ks, kv, n + 2 * GUARD) != 0)
                fail_msg("%s keep_row differs from scalar: col %lld n %zu", variants[t],
                         (long long)at.col, n);
            compared++;
        }
        /* guards untouched by the scalar kernels themselves */
        for (size_t g = 0; g < GUARD; g++) {
            assert_memory_equal(&xs[g], &x0[g], sizeof(float));
            assert_memory_equal(&xs[GUARD + n + g], &x0[GUARD + n + g], sizeof(float));
            assert_int_equal(ks[g], 0xAB);
            assert_int_equal(ks[GUARD + n + g], 0xAB);
        }
    }
    print_message("%d segments compared with the scalar kernels\n", compared);
}

static void test_scalar_is_the_formula(void **state)
{
    (void)state;
    const attn_kernels *k = attn_dispatch_lookup("scalar");
    rng r = {99};
    for (int trial = 0; trial < 400; trial++) {
        attn_dropout d = random_params(&r);
        attn_row_coord at = random_coord(&r, &d);
        size_t n = (size_t)(1 + rng_below(&r, 70));
        float x[70], y[70];
        uint8_t keep[70];
        for (size_t j = 0; j < n; j++)
            x[j] = y[j] = (float)rng_uniform(&r, -2.0, 2.0);
        k->dropout_row(y, n, &at, &d);
        k->keep_row(keep, n, &at, &d);
        for (size_t j = 0; j < n; j++) {
            uint32_t w = formula_word(&d, at.batch, at.head, at.row, (uint64_t)at.col + j);
            int kept = w >= d.threshold;
            assert_int_equal(keep[j], kept);
            float want = kept ? x[j] * d.scale : 0.0f;
            assert_memory_equal(&y[j], &want, sizeof want);
        }
    }
}

/* Threshold and scale as pinned: floor(p * 2^32), 1 / (1 - p). */
static void test_params(void **state)
{
    (void)state;
    assert_int_equal(attn_dropout_threshold(0.0f), 0);
    assert_int_equal(attn_dropout_threshold(0.5f), UINT32_C(0x80000000));
    assert_int_equal(attn_dropout_threshold(0.25f), UINT32_C(0x40000000));
    /* the largest float below 1: 2^32 - 2^8 */
    assert_int_equal(attn_dropout_threshold(nextafterf(1.0f, 0.0f)), UINT32_C(0xFFFFFF00));
    /* 0.1f is 0.100000001490116..., times 2^32 = 429496736.4 */
    assert_int_equal(attn_dropout_threshold(0.1f), UINT32_C(429496736));
    attn_dropout d = attn_dropout_make(0.5f, 1, 2, 3);
    assert_true(d.scale == 2.0f);
    d = attn_dropout_make(0.1f, 1, 2, 3);
    assert_true(d.scale == (float)(1.0 / (1.0 - (double)0.1f)));
}

static void test_kept_fraction(void **state)
{
    (void)state;
    const attn_kernels *k = attn_dispatch_kernels();
    enum { ROWS = 64, COLS = 65536 };
    uint8_t *keep = xcalloc(COLS, 1);
    const float ps[] = {0.1f, 0.5f, 0.9f};
    for (size_t t = 0; t < 3; t++) {
        attn_dropout d = attn_dropout_make(ps[t], UINT64_C(0x0123456789abcdef) + t, 7, 12);
        double q = (double)d.threshold / 4294967296.0; /* the exact drop probability */
        double kept = 0.0, n = (double)ROWS * COLS;
        for (int i = 0; i < ROWS; i++) {
            attn_row_coord at = {i % 3, i % 12, 1000 + i, 5};
            k->keep_row(keep, COLS, &at, &d);
            for (int j = 0; j < COLS; j++)
                kept += keep[j];
        }
        double mean = n * (1.0 - q), sigma = sqrt(n * q * (1.0 - q));
        print_message("%s p = %.1f: kept %.0f of %.0f, expected %.0f +- %.0f (%.2f sigma)\n",
                      k->name, (double)ps[t], kept, n, mean, sigma, (kept - mean) / sigma);
        assert_true(fabs(kept - mean) <= 5.0 * sigma);
    }
    free(keep);
}

static void test_p_zero_keeps_all(void **state)
{
    (void)state;
    rng r = {3};
    for (size_t t = 0; t < 3; t++) {
        const attn_kernels *k = attn_dispatch_lookup(variants[t]);
        if (!k)
            continue;
        for (int trial = 0; trial < 50; trial++) {
            attn_dropout d = attn_dropout_make(0.0f, rng_next(&r), (uint32_t)rng_next(&r), 4);
            attn_row_coord at = random_coord(&r, &d);
            size_t n = (size_t)(1 + rng_below(&r, 300));
            uint8_t keep[300];
            float x[300], y[300];
            memset(keep, 7, sizeof keep);
            k->keep_row(keep, n, &at, &d);
            for (size_t j = 0; j < n; j++) {
                assert_int_equal(keep[j], 1);
                x[j] = y[j] = random_value(&r);
            }
            k->dropout_row(y, n, &at, &d);
            assert_memory_equal(x, y, n * sizeof *x);
            assert_int_equal(keep[n < 300 ? n : 299], n < 300 ? 7 : 1);
        }
    }
}

/* n = 0 touches nothing. */
static void test_empty_segment(void **state)
{
    (void)state;
    for (size_t t = 0; t < 3; t++) {
        const attn_kernels *k = attn_dispatch_lookup(variants[t]);
        if (!k)
            continue;
        attn_dropout d = attn_dropout_make(0.5f, 1, 2, 3);
        attn_row_coord at = {0, 0, 0, 3};
        float x = 1.0f;
        uint8_t keep = 9;
        k->dropout_row(&x, 0, &at, &d);
        k->keep_row(&keep, 0, &at, &d);
        assert_true(x == 1.0f);
        assert_int_equal(keep, 9);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_answers),
        cmocka_unit_test(test_params),
        cmocka_unit_test(test_scalar_is_the_formula),
        cmocka_unit_test(test_variants_match_scalar),
        cmocka_unit_test(test_kept_fraction),
        cmocka_unit_test(test_p_zero_keeps_all),
        cmocka_unit_test(test_empty_segment),
    };
    return cmocka_run_group_tests_name("dropout", tests, NULL, NULL);
}
