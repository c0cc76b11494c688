/*
 * The oracle's exact-score bound (tests/support/reference.c, docs/testing.md "Exact scores"):
 *   - which (row, key) pairs it accepts as computed exactly by float32, at the boundaries of
 *     the rule: the sum of |q_d k_d| at and just above 2^24 units, a scale that is not a power
 *     of two, an operand that the scale would push below the subnormal spacing;
 *   - on exact inputs with scores of about 8,000, the library's results (thin-kernel and BLAS
 *     paths) stay within the tighter bound, and an lse spoiled by 0.01 or an out spoiled by
 *     1 % fails it in every row;
 *   - ordinary random inputs of the same amplitude are not taken as exact.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <attn/attn.h>

#include "support/check.h"
#include "support/reference.h"
#include "support/util.h"

/* One query row against four keys of dim 2, contiguous: how many pairs the oracle takes as
 * exact. q = (2^24 - 1, 2): */
static int64_t exact_pairs(const float k[4][2], float scale)
{
    const float q[2] = {16777215.0f, 2.0f};
    attn_desc d;
    attn_desc_init(&d);
    d.q_heads = d.kv_heads = 1;
    d.qk_dim = 2, d.v_dim = 1, d.scale = scale;
    const float v[4] = {1, 2, 3, 4};
    float out[1];
    attn_args a;
    attn_args_init(&a);
    a.batch = 1;
    a.q_len = 1, a.kv_len = 4;
    a.q = q, a.k = &k[0][0], a.v = v, a.out = out;
    a.q_strides = attn_strides_bhsd(1, 1, 2);
    a.k_strides = attn_strides_bhsd(1, 4, 2);
    a.v_strides = attn_strides_bhsd(1, 4, 1);
    ref_problem p = ref_problem_from(&d, &a);
    ref_result r;
    ref_attention(&p, &r);
    assert_int_equal(r.visible_keys, 4);
    int64_t n = r.exact_keys;
    ref_free(&r);
    return n;
}

static void test_exactness_rule(void **state)
{
    (void)state;
    const float k[4][2] = {
        {1.0f, 0.5f},         /* 2^24 - 1 + 1 = 2^24 units of 1: exact */
        {1.0f, 1.0f},         /* 2^24 - 1 + 2 = 2^24 + 1: float32 rounds it */
        {1.0f, 0.0f},         /* one product: exact */
        {0.0f, 0x1p-149f},    /* 2 * 2^-149: exact, unless the scale halves the operand */
    };
    assert_int_equal(exact_pairs(k, 1.0f), 3);
    assert_int_equal(exact_pairs(k, 0.5f), 2);  /* 2^-149 * 2^-1 is not a float */
    assert_int_equal(exact_pairs(k, 4.0f), 3);
    assert_int_equal(exact_pairs(k, 3.0f), 0);  /* not a power of two */
    assert_int_equal(exact_pairs(k, -0.25f), 2); /* 2^-149 * 2^-2 underflows too */
}

/* Q = n 2^6, K = m 2^-7 with integers |n|, |m| <= 127, key 0 aligned with each query row so
 * that the scores reach about 8,000; scale 2^-4 for D = 16. */
static void run_exact(int64_t Lq, uint64_t seed)
{
    const int64_t Lk = 300, D = 16, Dv = 8;
    rng g = {seed};
    float *q = xcalloc((size_t)(Lq * D), sizeof *q), *k = xcalloc((size_t)(Lk * D), sizeof *k);
    float *v = random_floats(&g, (size_t)(Lk * Dv), 1.0);
    for (int64_t i = 0; i < Lq * D; i++)
        q[i] = ldexpf((float)(rng_below(&g, 255) - 127), 6);
    for (int64_t i = 0; i < Lk * D; i++)
        k[i] = ldexpf((float)(rng_below(&g, 255) - 127), -7);
    for (int64_t d = 0; d < D; d++) { /* row 0 at full amplitude, key 0 along it: 8,064 */
        q[d] = ldexpf(q[d] < 0.0f ? -127.0f : 127.0f, 6);
        k[d] = ldexpf(q[d] < 0.0f ? -127.0f : 127.0f, -7);
    }
    attn_desc d;
    attn_desc_init(&d);
    d.q_heads = d.kv_heads = 1;
    d.qk_dim = (uint32_t)D, d.v_dim = (uint32_t)Dv, d.scale = 0.0625f, d.threads = 1;
    attn_ctx *ctx;
    assert_int_equal(attn_create(&d, &ctx), ATTN_OK);
    float *out = xcalloc((size_t)(Lq * Dv), sizeof *out), *lse = xcalloc((size_t)Lq, sizeof *lse);
    attn_args a;
    attn_args_init(&a);
    a.batch = 1;
    a.q_len = (uint32_t)Lq, a.kv_len = (uint32_t)Lk;
    a.q = q, a.k = k, a.v = v, a.out = out, a.lse = lse;
    a.q_strides = attn_strides_bhsd(1, (uint32_t)Lq, (uint32_t)D);
    a.k_strides = attn_strides_bhsd(1, (uint32_t)Lk, (uint32_t)D);
    a.v_strides = attn_strides_bhsd(1, (uint32_t)Lk, (uint32_t)Dv);
    a.out_strides = attn_strides_bhsd(1, (uint32_t)Lq, (uint32_t)Dv);
    assert_int_equal(attn_forward(ctx, &a), ATTN_OK);

    ref_problem p = ref_problem_from(&d, &a);
    ref_result r;
    ref_attention(&p, &r);
    assert_int_equal(r.exact_keys, Lq * Lk);
    assert_true(r.max_abs_lse > 8000.0);
    for (int64_t i = 0; i < Lq; i++)
        assert_true(r.lse_tol[i] < 0.005);
    check_stats cs = {0};
    check_outputs(&p, &r, &d, &a, "exact", &cs);
    if (cs.failures)
        fail_msg("%s", cs.first_failure);

    /* spoiled results fail in every row */
    for (int64_t i = 0; i < Lq; i++)
        lse[i] += 0.01f;
    check_stats bad = {0};
    check_outputs(&p, &r, &d, &a, "spoiled lse", &bad);
    assert_int_equal(bad.failures, Lq);
    for (int64_t i = 0; i < Lq; i++)
        lse[i] -= 0.01f;
    a.lse = NULL;
    int64_t rows_failed = 0;
    for (int64_t i = 0; i < Lq; i++) {
        for (int64_t e = 0; e < Dv; e++)
            out[i * Dv + e] *= 1.01f;
        check_stats bo = {0};
        check_outputs(&p, &r, &d, &a, "spoiled out", &bo);
        rows_failed += bo.failures > 0;
        for (int64_t e = 0; e < Dv; e++)
            out[i * Dv + e] /= 1.01f;
    }
    assert_int_equal(rows_failed, Lq);

    ref_free(&r);
    attn_destroy(ctx);
    free(q), free(k), free(v), free(out), free(lse);
}

static void test_exact_thin_rows(void **state)
{
    (void)state;
    run_exact(3, 11); /* few query rows: the streaming kernels or sgemv */
}

static void test_exact_blas_rows(void **state)
{
    (void)state;
    run_exact(70, 12); /* two query blocks through sgemm */
}

/* Random float32 values at the same amplitude are not exact: the general bound applies, and at
 * this amplitude it is wider than 0.01 in lse for some rows (why the exact mode exists). */
static void test_random_values_are_not_exact(void **state)
{
    (void)state;
    const int64_t Lq = 8, Lk = 64, D = 16;
    rng g = {13};
    float *q = random_floats(&g, (size_t)(Lq * D), 1e4);
    float *k = random_floats(&g, (size_t)(Lk * D), 1.0);
    float *v = random_floats(&g, (size_t)Lk, 1.0);
    float out[8];
    attn_desc d;
    attn_desc_init(&d);
    d.q_heads = d.kv_heads = 1;
    d.qk_dim = (uint32_t)D, d.v_dim = 1, d.scale = 0.0625f;
    attn_args a;
    attn_args_init(&a);
    a.batch = 1;
    a.q_len = (uint32_t)Lq, a.kv_len = (uint32_t)Lk;
    a.q = q, a.k = k, a.v = v, a.out = out;
    a.q_strides = attn_strides_bhsd(1, (uint32_t)Lq, (uint32_t)D);
    a.k_strides = attn_strides_bhsd(1, (uint32_t)Lk, (uint32_t)D);
    a.v_strides = attn_strides_bhsd(1, (uint32_t)Lk, 1);
    ref_problem p = ref_problem_from(&d, &a);
    ref_result r;
    ref_attention(&p, &r);
    assert_int_equal(r.exact_keys, 0);
    double widest = 0.0;
    for (int64_t i = 0; i < Lq; i++)
        widest = r.lse_tol[i] > widest ? r.lse_tol[i] : widest;
    assert_true(widest > 0.01);
    ref_free(&r);
    free(q), free(k), free(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exactness_rule),
        cmocka_unit_test(test_exact_thin_rows),
        cmocka_unit_test(test_exact_blas_rows),
        cmocka_unit_test(test_random_values_are_not_exact),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
