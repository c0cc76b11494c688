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
#include "kernels/tanh_poly.h"
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

/* ---- additive attention: tanh and the fused score / gradient kernels ---- */

/* ulp of a float result near x (subnormal spacing below FLT_MIN). */
static double ulp_f(double x)
{
    int e;
    frexp(x, &e);
    return e - 24 < -149 ? 0x1p-149 : ldexp(1.0, e - 24);
}

static double tanh_ulps(float got, float x)
{
    double want = tanh((double)x);
    if (isnan(x))
        return isnan(got) ? 0.0 : INFINITY;
    return fabs((double)got - want) / ulp_f(want);
}

static void test_tanh_accuracy(void **state)
{
    (void)state;
    enum { N = 1 << 20 };
    float *x = xcalloc(N, sizeof *x), *y = xcalloc(N, sizeof *y), *yn = xcalloc(N, sizeof *yn);
    float *neg = xcalloc(N, sizeof *neg);
    rng r = {2024};
    for (size_t t = 0; t < 3; t++) {
        const attn_kernels *k = attn_dispatch_lookup(variants[t]);
        if (!k)
            continue;
        double worst = 0.0;
        float worst_x = 0.0f;
        for (int pass = 0; pass < 3; pass++) {
            for (int i = 0; i < N; i++) {
                if (pass == 0) /* dense over the interesting range */
                    x[i] = -12.0f + 24.0f * (float)i / (float)N;
                else if (pass == 1) { /* any finite float, by bit pattern */
                    uint32_t u = (uint32_t)rng_next(&r);
                    memcpy(&x[i], &u, 4);
                    if (!isfinite(x[i]))
                        x[i] = 0.5f;
                } else /* both branches' neighbourhood: |x| in [2^-20, 16] log-uniformly */
                    x[i] = (float)(exp2(rng_uniform(&r, -20, 4)) * (rng_below(&r, 2) ? 1 : -1));
                neg[i] = -x[i];
            }
            k->tanh(y, x, N);
            k->tanh(yn, neg, N);
            for (int i = 0; i < N; i++) {
                double e = tanh_ulps(y[i], x[i]);
                if (e > worst)
                    worst = e, worst_x = x[i];
                if (yn[i] != -y[i]) /* odd, exactly */
                    fail_msg("%s: tanh(%a) = %a but tanh(%a) = %a", variants[t], (double)x[i],
                             (double)y[i], (double)neg[i], (double)yn[i]);
            }
        }
        /* edge values: zeros, subnormals, the branch point and the clamp, huge, inf, NaN */
        float edge[] = {0.0f, -0.0f, 0x1p-149f, -0x1p-149f, 0x1p-130f, 0x1p-126f, 1e-20f, 1e-8f,
                        nextafterf(0.625f, 0.0f), 0.625f, nextafterf(0.625f, 1.0f), -0.625f,
                        0.55f, 1.0f, 4.0f, 8.9f, 9.0f, 9.02f, 9.5f, nextafterf(10.0f, 0.0f), 10.0f,
                        10.5f, -10.5f, 20.0f, 88.0f, 1e30f, 3.4e38f, -3.4e38f};
        size_t ne = sizeof edge / sizeof edge[0];
        float ey[sizeof edge / sizeof edge[0]];
        k->tanh(ey, edge, ne);
        for (size_t i = 0; i < ne; i++) {
            double e = tanh_ulps(ey[i], edge[i]);
            if (e > worst)
                worst = e, worst_x = edge[i];
        }
        assert_true(signbit(ey[1]) && ey[1] == 0.0f && ey[0] == 0.0f && !signbit(ey[0]));
        assert_true(ey[2] == 0x1p-149f && ey[3] == -0x1p-149f);
        float special[3] = {INFINITY, -INFINITY, NAN}, out[3];
        k->tanh(out, special, 3);
        assert_true(out[0] == 1.0f && out[1] == -1.0f && isnan(out[2]));
        print_message("%s: tanh within %.3f ulp (worst at x = %.9g) over %d inputs + edges\n",
                      variants[t], worst, (double)worst_x, 3 * N);
        assert_true(worst <= ATTN_TANH_MAX_ULP);
    }
    free(x), free(y), free(yn), free(neg);
}

static void test_additive_kernels(void **state)
{
    (void)state;
    rng r = {99};
    static const int64_t ns[] = {1, 2, 7, 8, 15, 16, 17, 31, 32, 33, 47, 64, 100, 255, 256};
    static const int64_t As[] = {1, 2, 3, 7, 16, 33, 64};
    enum { NMAX = 256, AMAX = 64, LD = 272 };
    float *kt = xcalloc((size_t)AMAX * LD, sizeof(float)), *tt = xcalloc((size_t)AMAX * NMAX, sizeof(float));
    float *s = xcalloc(NMAX, sizeof(float)), *s0 = xcalloc(NMAX, sizeof(float));
    float *t0 = xcalloc((size_t)AMAX * NMAX, sizeof(float));
    float qp[AMAX], w[AMAX], ds[NMAX], dqp[AMAX], dw[AMAX], dqp0[AMAX], dw0[AMAX];
    float *dkt = xcalloc((size_t)AMAX * LD, sizeof(float)), *dkt0 = xcalloc((size_t)AMAX * LD, sizeof(float));
    float *base = xcalloc((size_t)AMAX * LD, sizeof(float));
    double *want_t = xcalloc((size_t)AMAX * NMAX, sizeof(double));
    long checked = 0;
    for (int trial = 0; trial < 300; trial++) {
        int64_t n = ns[trial % 15], A = As[(trial / 15) % 7];
        double amp = trial % 5 == 0 ? 6.0 : 1.0;
        for (int64_t a = 0; a < A; a++) {
            qp[a] = (float)(rng_normal(&r) * amp);
            w[a] = (float)rng_normal(&r);
            for (int64_t j = 0; j < LD; j++) {
                kt[a * LD + j] = (float)(rng_normal(&r) * amp);
                base[a * LD + j] = (float)rng_normal(&r);
            }
        }
        for (int64_t j = 0; j < n; j++)
            ds[j] = (float)rng_normal(&r);
        for (int64_t a = 0; a < A; a++)
            dqp0[a] = (float)rng_normal(&r), dw0[a] = (float)rng_normal(&r);
        /* float64 expectations from the float inputs the kernels see: u = fl(qp + kt) */
        for (size_t v = 0; v < 3; v++) {
            const attn_kernels *k = attn_dispatch_lookup(variants[v]);
            if (!k)
                continue;
            k->additive_row(s, qp, kt, LD, n, A, w, trial & 1 ? tt : NULL, NMAX);
            for (int64_t j = 0; j < n; j++) {
                double e = 0.0, mag = 0.0;
                for (int64_t a = 0; a < A; a++) {
                    double th = tanh((double)(qp[a] + kt[a * LD + j]));
                    want_t[a * NMAX + j] = th;
                    e += w[a] * th;
                    mag += fabs(w[a] * th);
                }
                double tol = ((double)A + 2.0 + ATTN_TANH_MAX_ULP) * 0x1p-24 * mag + 1e-30;
                if (!(fabs(s[j] - e) <= tol))
                    fail_msg("%s row n=%lld A=%lld: s[%lld] = %.9g want %.9g", variants[v],
                             (long long)n, (long long)A, (long long)j, (double)s[j], e);
                if (v == 0)
                    s0[j] = s[j];
                else if (!(fabs(s[j] - s0[j]) <= 2.0 * tol))
                    fail_msg("%s row: s[%lld] = %.9g, scalar %.9g", variants[v], (long long)j,
                             (double)s[j], (double)s0[j]);
                if (trial & 1)
                    for (int64_t a = 0; a < A; a++)
                        if (fabs(tt[a * NMAX + j] - want_t[a * NMAX + j]) >
                            ATTN_TANH_MAX_ULP * ulp_f(want_t[a * NMAX + j]))
                            fail_msg("%s row: t[%lld][%lld] = %.9g want %.9g", variants[v],
                                     (long long)a, (long long)j, (double)tt[a * NMAX + j],
                                     want_t[a * NMAX + j]);
            }
            /* the gradient kernels on the scalar variant's t (the same input for all) */
            if (v == 0)
                k->additive_row(s0, qp, kt, LD, n, A, w, t0, NMAX);
            memcpy(dqp, dqp0, sizeof dqp), memcpy(dw, dw0, sizeof dw);
            k->additive_grad_q(dqp, dw, ds, t0, NMAX, n, A, w);
            memcpy(dkt, base, (size_t)AMAX * LD * sizeof(float));
            k->additive_grad_k(dkt, LD, ds, t0, NMAX, n, A, w);
            for (int64_t a = 0; a < A; a++) {
                double g = 0.0, h = 0.0, gm = 0.0, hm = 0.0;
                for (int64_t j = 0; j < n; j++) {
                    double tv = t0[a * NMAX + j], d1 = 1.0 - tv * tv;
                    g += ds[j] * d1, gm += fabs(ds[j] * d1);
                    h += ds[j] * tv, hm += fabs(ds[j] * tv);
                    double want = base[a * LD + j] + (double)w[a] * ds[j] * d1;
                    double tol = 4.0 * 0x1p-24 * (fabs(base[a * LD + j]) + fabs(w[a] * ds[j]) * (d1 + 2.0 * tv * tv));
                    if (!(fabs(dkt[a * LD + j] - want) <= tol + 1e-30))
                        fail_msg("%s grad_k: [%lld][%lld] = %.9g want %.9g", variants[v],
                                 (long long)a, (long long)j, (double)dkt[a * LD + j], want);
                }
                double wq = dqp0[a] + (double)w[a] * g, ww = dw0[a] + h;
                double tq = ((double)n + 4.0) * 0x1p-24 * (fabs(dqp0[a]) + fabs(w[a]) * (gm + 2.0 * hm));
                double tw = ((double)n + 4.0) * 0x1p-24 * (fabs(dw0[a]) + hm);
                if (!(fabs(dqp[a] - wq) <= tq + 1e-30) || !(fabs(dw[a] - ww) <= tw + 1e-30))
                    fail_msg("%s grad_q n=%lld A=%lld: dqp[%lld] = %.9g want %.9g, dw %.9g want %.9g",
                             variants[v], (long long)n, (long long)A, (long long)a, (double)dqp[a],
                             wq, (double)dw[a], ww);
            }
            checked++;
        }
    }
    print_message("%ld additive kernel calls checked\n", checked);
    free(kt), free(tt), free(s), free(s0), free(t0), free(dkt), free(dkt0), free(base), free(want_t);
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
        cmocka_unit_test(test_tanh_accuracy),
        cmocka_unit_test(test_additive_kernels),
        cmocka_unit_test(test_dispatch),
    };
    return cmocka_run_group_tests_name("kernels", tests, NULL, NULL);
}
