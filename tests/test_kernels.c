/*
 * Every compiled kernel variant, element by element, against float64 arithmetic on the same
 * float inputs, and against the scalar variant. Variants the CPU cannot run are skipped.
 * Tolerances: probabilities exp(d) / l within 2 ulp, where d = fl(x - m) is the float difference
 * the kernels are given (the vector exp is measured below 1 ulp on [-87, 0], the division adds
 * half an ulp); running sums within (n + 4) ulp of the
 * float64 sum (n float additions); the entropy accumulator likewise, relative to sum |p d|.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dispatch/dispatch.h"
#include "support/util.h"

/* The softmax kernels ignore the row coordinates; any will do. */
static const attn_row_coord at0 = {0, 0, 0, 0};

static const char *const variants[] = {"scalar", "avx2", "avx512"};

static double ulp_of(double x)
{
    int e;
    frexp(x, &e);
    return ldexp(1.0, e - 24);
}

/* |got - want| in ulps of want; values below FLT_MIN (flushed by the vector exp) count as 0. */
static double ulps(float got, double want)
{
    if (want < 0x1p-126 && fabs(got) < 0x1p-126)
        return 0.0;
    return fabs((double)got - want) / ulp_of(want);
}

static void test_exp_accuracy(void **state)
{
    (void)state;
    enum { N = 1 << 18 };
    float *s = xcalloc(N, sizeof *s), *dst = xcalloc(N, sizeof *dst);
    for (size_t t = 0; t < 3; t++) {
        const attn_kernels *k = attn_dispatch_lookup(variants[t]);
        if (!k)
            continue;
        for (int i = 0; i < N; i++)
            s[i] = -88.0f * (float)i / (float)N;
        k->probs_row(s, N, NULL, NULL, 0.0f, 1.0f, dst, 0, &at0);
        double worst = 0.0;
        for (int i = 0; i < N; i++) {
            double e = ulps(dst[i], exp((double)s[i]));
            worst = e > worst ? e : worst;
        }
        print_message("%s: exp on [-88, 0] within %.3f ulp\n", variants[t], worst);
        assert_true(worst <= 2.0);
        /* exp(-inf) is exactly 0; NaN stays NaN */
        float special[3] = {-INFINITY, NAN, 0.0f}, out[3];
        k->probs_row(special, 3, NULL, NULL, 0.0f, 1.0f, out, 0, &at0);
        assert_true(out[0] == 0.0f);
        assert_true(isnan(out[1]));
        assert_true(out[2] == 1.0f);
    }
    free(s);
    free(dst);
}

/* One online step of every variant on random rows, checked against float64. */
static void test_online_row(void **state)
{
    (void)state;
    rng r = {42};
    static const size_t lengths[] = {1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100, 255, 256};
    float s0[256], s[256], bias[256];
    uint8_t mask[256];
    long checked = 0;
    for (int trial = 0; trial < 600; trial++) {
        size_t n = lengths[trial % 15];
        int use_bias = trial & 1, use_mask = (trial >> 1) & 1, entropy = (trial >> 2) & 1;
        int fresh = (trial >> 3) & 1;
        double amp = (trial % 7 == 0) ? 50.0 : 2.0;
        for (size_t j = 0; j < n; j++) {
            s0[j] = (float)(rng_normal(&r) * amp);
            bias[j] = (float)rng_normal(&r);
            mask[j] = rng_below(&r, 4) != 0;
        }
        if (use_mask && trial % 11 == 0)
            memset(mask, 0, n); /* nothing visible in this block */
        attn_row_state start = {-INFINITY, 0.0f, 0.0f};
        if (!fresh)
            start = (attn_row_state){(float)rng_normal(&r) * 2.0f, 1.0f + (float)rng_uniform(&r, 0, 5), -1.5f};
        /* float64 expectation from the float inputs and the same (float) running max */
        float x[256];
        float block_max = -INFINITY;
        for (size_t j = 0; j < n; j++) {
            float v = s0[j];
            if (use_bias)
                v += bias[j];
            if (use_mask && !mask[j])
                v = -INFINITY;
            x[j] = v;
            block_max = v > block_max ? v : block_max;
        }
        float m_new = start.m > block_max ? start.m : block_max;
        double shift = m_new == -INFINITY ? 0.0 : m_new;
        /* the kernels exponentiate the float difference fl(x - m): so does the expectation */
        double alpha = exp((double)(float)(start.m - (float)shift)), sum = 0.0, usum = 0.0, abs_u = 0.0;
        for (size_t j = 0; j < n; j++) {
            double p = exp((double)(float)(x[j] - (float)shift));
            sum += p;
            if (p > 0) {
                usum += p * ((double)x[j] - shift);
                abs_u += fabs(p * ((double)x[j] - shift));
            }
        }
        double l = alpha * start.l + sum;
        double u = (start.l != 0 ? alpha * (start.u + ((double)start.m - m_new) * start.l) : 0) + usum;
        for (size_t t = 0; t < 3; t++) {
            const attn_kernels *k = attn_dispatch_lookup(variants[t]);
            if (!k)
                continue;
            memcpy(s, s0, n * sizeof *s);
            attn_row_state st = start;
            float a = k->online_row(s, n, use_bias ? bias : NULL, use_mask ? mask : NULL, &st, entropy, &at0);
            assert_true(st.m == m_new);
            assert_true(ulps(a, alpha) <= 2.0);
            for (size_t j = 0; j < n; j++) {
                double want = exp((double)(float)(x[j] - (float)shift));
                if (ulps(s[j], want) > 2.0)
                    fail_msg("%s n=%zu trial %d: p[%zu] = %.9g, want %.9g", variants[t], n, trial, j,
                             (double)s[j], want);
            }
            double sum_tol = (double)(n + 4) * 0x1p-24 * (l + 1e-30) * 2.0;
            if (fabs(st.l - l) > sum_tol)
                fail_msg("%s n=%zu trial %d: l = %.9g, want %.9g", variants[t], n, trial, (double)st.l, l);
            if (entropy) {
                double u_scale = fabs(start.u) + fabs(((double)start.m - m_new) * start.l) + abs_u;
                double u_tol = (double)(n + 8) * 0x1p-24 * 4.0 * (u_scale + 1e-30);
                if (fabs(st.u - u) > u_tol)
                    fail_msg("%s n=%zu trial %d: u = %.9g, want %.9g", variants[t], n, trial,
                             (double)st.u, u);
            }
            checked++;
        }
    }
    print_message("%ld kernel rows checked\n", checked);
}

/* NaN in a visible score poisons the row's sum; a row with only NaN is not "masked". */
static void test_nan_and_hidden(void **state)
{
    (void)state;
    for (size_t t = 0; t < 3; t++) {
        const attn_kernels *k = attn_dispatch_lookup(variants[t]);
        if (!k)
            continue;
        float s[19];
        for (int j = 0; j < 19; j++)
            s[j] = (float)j;
        s[5] = NAN;
        attn_row_state st = {-INFINITY, 0.0f, 0.0f};
        k->online_row(s, 19, NULL, NULL, &st, 1, &at0);
        assert_true(isnan(st.l));

        float only_nan[3] = {NAN, NAN, NAN};
        st = (attn_row_state){-INFINITY, 0.0f, 0.0f};
        k->online_row(only_nan, 3, NULL, NULL, &st, 0, &at0);
        assert_true(isnan(st.l));

        /* a NaN under a zero mask byte is hidden and changes nothing */
        float hidden[9] = {1, 2, NAN, 3, 4, 5, 6, 7, 8};
        uint8_t mask[9] = {1, 1, 0, 1, 1, 1, 1, 1, 1};
        st = (attn_row_state){-INFINITY, 0.0f, 0.0f};
        k->online_row(hidden, 9, NULL, mask, &st, 1, &at0);
        assert_true(isfinite(st.l) && st.m == 8.0f && hidden[2] == 0.0f);

        /* a block with nothing visible leaves the state alone and writes zeros */
        float none[10];
        for (int j = 0; j < 10; j++)
            none[j] = -INFINITY;
        st = (attn_row_state){3.0f, 2.0f, -0.5f};
        float a = k->online_row(none, 10, NULL, NULL, &st, 1, &at0);
        assert_true(a == 1.0f && st.m == 3.0f && st.l == 2.0f && st.u == -0.5f);
        for (int j = 0; j < 10; j++)
            assert_true(none[j] == 0.0f);
    }
}

/* probs_row: store and accumulate modes, bias and mask, against float64. */
static void test_probs_row(void **state)
{
    (void)state;
    rng r = {7};
    float s[300], bias[300], dst[300], base[300];
    uint8_t mask[300];
    for (int trial = 0; trial < 200; trial++) {
        size_t n = 1 + (size_t)rng_below(&r, 300);
        int use_bias = trial & 1, use_mask = (trial >> 1) & 1, acc = (trial >> 2) & 1;
        float m = 0.0f;
        for (size_t j = 0; j < n; j++) {
            s[j] = (float)(rng_normal(&r) * 3.0);
            bias[j] = (float)rng_normal(&r);
            mask[j] = rng_below(&r, 3) != 0;
            base[j] = (float)rng_uniform(&r, 0, 1);
            float x = s[j] + (use_bias ? bias[j] : 0.0f);
            m = x > m ? x : m;
        }
        float l = (float)rng_uniform(&r, 1, 40);
        for (size_t t = 0; t < 3; t++) {
            const attn_kernels *k = attn_dispatch_lookup(variants[t]);
            if (!k)
                continue;
            memcpy(dst, base, n * sizeof *dst);
            k->probs_row(s, n, use_bias ? bias : NULL, use_mask ? mask : NULL, m, l, dst, acc, &at0);
            for (size_t j = 0; j < n; j++) {
                float x = s[j] + (use_bias ? bias[j] : 0.0f);
                double p = (use_mask && !mask[j]) ? 0.0 : exp((double)(float)(x - m)) / l;
                if (acc) {
                    double want = (double)base[j] + p;
                    /* p within 2 ulp, then one rounded addition */
                    double tol = 2.0 * ulp_of(p) + ulp_of(want);
                    if (fabs(dst[j] - want) > tol)
                        fail_msg("%s acc: dst[%zu] = %.9g want %.9g", variants[t], j, (double)dst[j], want);
                } else if (p == 0.0) {
                    assert_true(dst[j] == 0.0f);
                } else if (ulps(dst[j], p) > 2.0) {
                    fail_msg("%s: dst[%zu] = %.9g want %.9g", variants[t], j, (double)dst[j], p);
                }
            }
        }
    }
}

static void test_dispatch(void **state)
{
    (void)state;
    assert_non_null(attn_dispatch_lookup("scalar"));
    assert_null(attn_dispatch_lookup("sse9"));
    const attn_kernels *chosen = attn_dispatch_kernels();
    assert_non_null(chosen);
    const char *forced = getenv("ATTN_ISA");
    if (forced && attn_dispatch_lookup(forced))
        assert_string_equal(chosen->name, forced);
    print_message("compiled and runnable here:%s%s%s\n", " scalar",
                  attn_dispatch_lookup("avx2") ? " avx2" : "",
                  attn_dispatch_lookup("avx512") ? " avx512" : "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exp_accuracy),
        cmocka_unit_test(test_online_row),
        cmocka_unit_test(test_nan_and_hidden),
        cmocka_unit_test(test_probs_row),
        cmocka_unit_test(test_dispatch),
    };
    return cmocka_run_group_tests_name("kernels", tests, NULL, NULL);
}
