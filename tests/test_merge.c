/*
 * attn_merge:
 *   - 240 random configurations (fixed seeds): the keys cut into 2, 3, 8 or a random number of
 *     disjoint slices, attn_forward run on each slice with its lse (causal and windows with the
 *     slice's own q_offset, kv_lens clipped to the slice, boolean masks and biases with -inf
 *     entries offset to the slice, GQA/MQA, both masked-row policies, so that slices where a
 *     row sees no key give lse -inf and an out of 0 or NaN), the results merged, and the merge
 *     compared with the float64 oracle over all the keys within the forward's tolerance plus
 *     the merge's (docs/testing.md); strided and padded parts and outputs (padding untouched),
 *     in-place folding into parts[0], the parts permuted, and the same call twice bitwise;
 *   - parts with lse -inf and garbage (NaN, Inf) outs ignored; every part -inf under both
 *     policies; NaN and +inf lse; one part is the identity; a hand-computed case;
 *   - every error path with its message and nothing written; hostile sizes; struct sizes.
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

#include <attn/attn.h>

#include "support/reference.h"
#include "support/util.h"

#define NCONFIGS 240
#define U 0x1p-24
static const float sentinel = 9876.5f;

/* A [B, H, L, W] float view, in one of a few layouts, its padding filled with `fill`. */
typedef struct view {
    float *buf;
    size_t n;
    attn_strides s;    /* what the call is given ({0,0,0} for contiguous) */
    attn_strides real; /* the strides in use */
} view;

static view make_view(rng *r, int64_t B, int64_t H, int64_t L, int64_t W, float fill)
{
    view v;
    int lay = (int)rng_below(r, 4);
    int64_t pad = 1 + rng_below(r, 3);
    if (lay == 0) { /* contiguous, given as {0,0,0} */
        v.real = (attn_strides){H * L * W, L * W, W};
        v.s = (attn_strides){0, 0, 0};
    } else if (lay == 1) { /* [B, L, H, W] */
        v.real = (attn_strides){L * H * W, W, H * W};
        v.s = v.real;
    } else if (lay == 2) { /* padded */
        v.real.seq = W + pad, v.real.head = L * v.real.seq + pad, v.real.batch = H * v.real.head + pad;
        v.s = v.real;
    } else { /* [L, B, H, W] */
        v.real = (attn_strides){H * W, W, B * H * W};
        v.s = v.real;
    }
    v.n = (size_t)((B - 1) * v.real.batch + (H - 1) * v.real.head + (L - 1) * v.real.seq + W);
    v.buf = xcalloc(v.n, sizeof(float));
    for (size_t i = 0; i < v.n; i++)
        v.buf[i] = fill;
    return v;
}

static float *at(const view *v, int64_t b, int64_t h, int64_t i)
{
    return v->buf + b * v->real.batch + h * v->real.head + i * v->real.seq;
}

/* Every element of the buffer outside the view still holds `fill`. */
static int padding_intact(const view *v, int64_t B, int64_t H, int64_t L, int64_t W, float fill)
{
    unsigned char *in = xcalloc(v->n, 1);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < L; i++)
                memset(in + (at(v, b, h, i) - v->buf), 1, (size_t)W);
    int ok = 1;
    for (size_t e = 0; e < v->n; e++)
        if (!in[e] && memcmp(&v->buf[e], &fill, sizeof fill) != 0)
            ok = 0;
    free(in);
    return ok;
}

typedef struct cfg_stats {
    long compared, failures;
    double worst;
    char first[512];
} cfg_stats;

static void expect_close(double got, double ref, double tol, const char *what, cfg_stats *st)
{
    st->compared++;
    double err = fabs(got - ref);
    int ok = isnan(ref) ? isnan(got) : isfinite(ref) ? err <= tol : got == ref;
    if (ok && tol > 0.0 && err / tol > st->worst)
        st->worst = err / tol;
    if (!ok && st->failures++ == 0)
        snprintf(st->first, sizeof st->first, "%s: got %.9g expected %.9g (|diff| %.3g > tol %.3g)",
                 what, got, ref, err, tol);
}

/*
 * One random configuration: the union problem, its key slices run through attn_forward, the
 * merge checked against the float64 oracle of the union.
 */
static void run_config(uint64_t seed, uint32_t n_parts, cfg_stats *st, int *in_place_runs)
{
    rng r = {seed};
    static const int64_t dims[] = {1, 3, 16, 17, 64};
    int64_t B = 1 + rng_below(&r, 3), Hkv = 1 + rng_below(&r, 2);
    int64_t Hq = Hkv * (1 + rng_below(&r, 3));
    int64_t Lq = 1 + rng_below(&r, 20), Lk = n_parts + rng_below(&r, 60);
    int64_t D = dims[rng_below(&r, 5)], Dv = dims[rng_below(&r, 5)];
    if (rng_below(&r, 6) == 0)
        Dv = 513 + rng_below(&r, 200); /* more than one column chunk */

    attn_desc d;
    attn_desc_init(&d);
    d.q_heads = (uint32_t)Hq, d.kv_heads = (uint32_t)Hkv, d.qk_dim = (uint32_t)D, d.v_dim = (uint32_t)Dv;
    d.threads = 1 + (uint32_t)rng_below(&r, 2);
    d.flags = rng_below(&r, 2) ? ATTN_CAUSAL : 0;
    if (rng_below(&r, 4) == 0)
        d.window_left = rng_below(&r, 8), d.window_right = rng_below(&r, 3) - 1;
    d.masked_rows = (uint32_t)rng_below(&r, 2);
    attn_ctx *ctx = NULL;
    assert_int_equal(attn_create(&d, &ctx), ATTN_OK);

    /* the union's inputs, contiguous */
    float *q = random_floats(&r, (size_t)(B * Hq * Lq * D), 1.0 + 2.0 * rng_uniform(&r, 0, 1));
    float *k = random_floats(&r, (size_t)(B * Hkv * Lk * D), 1.0);
    float *v = random_floats(&r, (size_t)(B * Hkv * Lk * Dv), 1.0);
    attn_args a;
    attn_args_init(&a);
    a.batch = (uint32_t)B, a.q_len = (uint32_t)Lq, a.kv_len = (uint32_t)Lk;
    a.q = q, a.q_strides = attn_strides_bhsd((uint32_t)Hq, (uint32_t)Lq, (uint32_t)D);
    a.k = k, a.k_strides = attn_strides_bhsd((uint32_t)Hkv, (uint32_t)Lk, (uint32_t)D);
    a.v = v, a.v_strides = attn_strides_bhsd((uint32_t)Hkv, (uint32_t)Lk, (uint32_t)Dv);
    if (rng_below(&r, 3) == 0)
        a.q_offset = rng_below(&r, Lk + 8) - 4;
    int32_t *kv_lens = NULL;
    if (rng_below(&r, 3) == 0) {
        kv_lens = xcalloc((size_t)B, sizeof(int32_t));
        for (int64_t b = 0; b < B; b++)
            kv_lens[b] = (int32_t)rng_below(&r, Lk + 1);
        a.kv_lens = kv_lens;
    }
    uint8_t *mask = NULL;
    if (rng_below(&r, 3) == 0) { /* per row, broadcast over heads */
        mask = xcalloc((size_t)(B * Lq * Lk), 1);
        for (size_t e = 0; e < (size_t)(B * Lq * Lk); e++)
            mask[e] = rng_below(&r, 4) != 0;
        a.mask = mask, a.mask_strides = (attn_strides){Lq * Lk, 0, Lk};
    }
    float *bias = NULL;
    if (rng_below(&r, 3) == 0) { /* per head and row, with -inf */
        bias = random_floats(&r, (size_t)(B * Hq * Lq * Lk), 2.0);
        for (size_t e = 0; e < (size_t)(B * Hq * Lq * Lk); e++)
            if (rng_below(&r, 5) == 0)
                bias[e] = -INFINITY;
        a.bias = bias, a.bias_strides = attn_strides_bhsd((uint32_t)Hq, (uint32_t)Lq, (uint32_t)Lk);
    }
    int64_t q_offset = a.q_offset == ATTN_Q_OFFSET_DEFAULT ? Lk - Lq : a.q_offset;

    ref_problem up = ref_problem_from(&d, &a);
    ref_result ur;
    ref_attention(&up, &ur);

    /* cut points: n_parts nonempty slices */
    int64_t *cut = xcalloc(n_parts + 1, sizeof(int64_t));
    cut[0] = 0, cut[n_parts] = Lk;
    for (uint32_t p = 1; p < n_parts; p++) /* increasing, each slice >= 1 key */
        cut[p] = cut[p - 1] + 1 + rng_below(&r, Lk - cut[p - 1] - (n_parts - p));

    attn_merge_part *parts = xcalloc(n_parts, sizeof *parts);
    view *pout = xcalloc(n_parts, sizeof *pout), *plse = xcalloc(n_parts, sizeof *plse);
    ref_result *pr = xcalloc(n_parts, sizeof *pr);
    int32_t *kl = xcalloc((size_t)B, sizeof(int32_t));
    for (uint32_t p = 0; p < n_parts; p++) {
        int64_t s = cut[p], len = cut[p + 1] - cut[p];
        attn_args pa = a;
        pa.kv_len = (uint32_t)len;
        pa.k = k + s * D, pa.v = v + s * Dv;
        pa.q_offset = q_offset - s;
        if (kv_lens) {
            for (int64_t b = 0; b < B; b++)
                kl[b] = (int32_t)(kv_lens[b] - s < 0 ? 0 : kv_lens[b] - s > len ? len : kv_lens[b] - s);
            pa.kv_lens = kl;
        }
        if (mask)
            pa.mask = mask + s;
        if (bias)
            pa.bias = bias + s;
        pout[p] = make_view(&r, B, Hq, Lq, Dv, NAN);
        plse[p] = make_view(&r, B, Hq, Lq, 1, NAN);
        pa.out = pout[p].buf, pa.out_strides = pout[p].real;
        pa.lse = plse[p].buf, pa.lse_strides = plse[p].real;
        assert_int_equal(attn_forward(ctx, &pa), ATTN_OK);
        ref_problem pp = ref_problem_from(&d, &pa);
        ref_attention(&pp, &pr[p]);
        parts[p] = (attn_merge_part){pout[p].buf, pout[p].s, plse[p].buf, plse[p].s};
    }

    /* the merge, into padded outputs (or in place into part 0) */
    int in_place = rng_below(&r, 5) == 0;
    view out = make_view(&r, B, Hq, Lq, Dv, sentinel), lse = make_view(&r, B, Hq, Lq, 1, sentinel);
    attn_merge_args m;
    attn_merge_args_init(&m);
    m.n_parts = n_parts, m.batch = (uint32_t)B, m.heads = (uint32_t)Hq, m.q_len = (uint32_t)Lq;
    m.v_dim = (uint32_t)Dv;
    m.masked_rows = (uint32_t)rng_below(&r, 2);
    m.parts = parts;
    view *ov = &out, *lv = &lse;
    /* keep a copy of part 0 for the permuted and repeated calls */
    float *p0out = xcalloc(pout[0].n, sizeof(float)), *p0lse = xcalloc(plse[0].n, sizeof(float));
    memcpy(p0out, pout[0].buf, pout[0].n * sizeof(float));
    memcpy(p0lse, plse[0].buf, plse[0].n * sizeof(float));
    if (in_place) {
        ov = &pout[0], lv = &plse[0];
        (*in_place_runs)++;
    }
    m.out = ov->buf, m.out_strides = ov->s, m.lse = lv->buf, m.lse_strides = lv->s;
    assert_int_equal(attn_merge(&m), ATTN_OK);

    /* against the oracle of the union */
    char what[160];
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < Hq; h++)
            for (int64_t i = 0; i < Lq; i++) {
                size_t row = (size_t)((b * Hq + h) * Lq + i);
                const float *o = at(ov, b, h, i);
                float l = *at(lv, b, h, i);
                snprintf(what, sizeof what, "seed %llu, %u parts: lse[%lld,%lld,%lld]",
                         (unsigned long long)seed, n_parts, (long long)b, (long long)h, (long long)i);
                if (ur.masked[row]) {
                    double mv = m.masked_rows == ATTN_MASKED_ROWS_NAN ? NAN : 0.0;
                    expect_close(l, -INFINITY, 0.0, what, st);
                    for (int64_t e = 0; e < Dv; e++)
                        expect_close(o[e], mv, 0.0, what, st);
                    continue;
                }
                /* C_p = exp(lse_p - lse) in float64; L = the largest lse tolerance of a part */
                double Lmax = 0.0, C[64];
                for (uint32_t p = 0; p < n_parts; p++) {
                    C[p] = pr[p].masked[row] ? 0.0 : exp(pr[p].lse[row] - ur.lse[row]);
                    if (!pr[p].masked[row] && pr[p].lse_tol[row] > Lmax)
                        Lmax = pr[p].lse_tol[row];
                }
                expect_close(l, ur.lse[row], Lmax + 4.0 * U * (1.0 + fabs(ur.lse[row])), what, st);
                for (int64_t e = 0; e < Dv; e++) {
                    double tol = 1e-30, mag = 0.0;
                    for (uint32_t p = 0; p < n_parts; p++) {
                        tol += C[p] * pr[p].out_tol[row * Dv + e];
                        mag += C[p] * fabs(pr[p].out[row * Dv + e]);
                    }
                    tol += (2.0 * Lmax + 4.0 * U) * mag;
                    snprintf(what, sizeof what, "seed %llu, %u parts: out[%lld,%lld,%lld,%lld]",
                             (unsigned long long)seed, n_parts, (long long)b, (long long)h,
                             (long long)i, (long long)e);
                    expect_close(o[e], ur.out[row * Dv + e], tol, what, st);
                }
            }
    if (!in_place) {
        assert_true(padding_intact(&out, B, Hq, Lq, Dv, sentinel));
        assert_true(padding_intact(&lse, B, Hq, Lq, 1, sentinel));
    } else {
        assert_true(padding_intact(&pout[0], B, Hq, Lq, Dv, NAN));
        assert_true(padding_intact(&plse[0], B, Hq, Lq, 1, NAN));
    }

    /* restore part 0, then: the same call twice gives the same bits; a permutation of the parts
     * stays within the tolerance of the first result (checked against it elementwise by the
     * same bound, relative to the first result, which passed the oracle) */
    float *first_out = xcalloc((size_t)(B * Hq * Lq * Dv), sizeof(float));
    float *first_lse = xcalloc((size_t)(B * Hq * Lq), sizeof(float));
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < Hq; h++)
            for (int64_t i = 0; i < Lq; i++) {
                size_t row = (size_t)((b * Hq + h) * Lq + i);
                memcpy(first_out + row * Dv, at(ov, b, h, i), (size_t)Dv * sizeof(float));
                first_lse[row] = *at(lv, b, h, i);
            }
    memcpy(pout[0].buf, p0out, pout[0].n * sizeof(float));
    memcpy(plse[0].buf, p0lse, plse[0].n * sizeof(float));
    view out2 = make_view(&r, B, Hq, Lq, Dv, sentinel), lse2 = make_view(&r, B, Hq, Lq, 1, sentinel);
    m.out = out2.buf, m.out_strides = out2.s, m.lse = lse2.buf, m.lse_strides = lse2.s;
    { /* same tensors, same order, out of place: the same bits as the first call */
        assert_int_equal(attn_merge(&m), ATTN_OK);
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < Hq; h++)
                for (int64_t i = 0; i < Lq; i++) {
                    size_t row = (size_t)((b * Hq + h) * Lq + i);
                    assert_memory_equal(at(&out2, b, h, i), first_out + row * Dv, (size_t)Dv * sizeof(float));
                    assert_memory_equal(at(&lse2, b, h, i), &first_lse[row], sizeof(float));
                }
    }
    for (uint32_t p = n_parts - 1; p > 0; p--) { /* Fisher-Yates */
        uint32_t j = (uint32_t)rng_below(&r, p + 1);
        attn_merge_part t = parts[p];
        parts[p] = parts[j], parts[j] = t;
        ref_result tr = pr[p];
        pr[p] = pr[j], pr[j] = tr;
    }
    assert_int_equal(attn_merge(&m), ATTN_OK);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < Hq; h++)
            for (int64_t i = 0; i < Lq; i++) {
                size_t row = (size_t)((b * Hq + h) * Lq + i);
                const float *o = at(&out2, b, h, i);
                snprintf(what, sizeof what, "seed %llu permuted: row %zu", (unsigned long long)seed, row);
                if (ur.masked[row]) {
                    expect_close(*at(&lse2, b, h, i), -INFINITY, 0.0, what, st);
                    continue;
                }
                double Lmax = 0.0, C[64];
                for (uint32_t p = 0; p < n_parts; p++) {
                    C[p] = pr[p].masked[row] ? 0.0 : exp(pr[p].lse[row] - ur.lse[row]);
                    if (!pr[p].masked[row] && pr[p].lse_tol[row] > Lmax)
                        Lmax = pr[p].lse_tol[row];
                }
                expect_close(*at(&lse2, b, h, i), ur.lse[row], Lmax + 4.0 * U * (1.0 + fabs(ur.lse[row])),
                             what, st);
                for (int64_t e = 0; e < Dv; e++) {
                    double tol = 1e-30, mag = 0.0;
                    for (uint32_t p = 0; p < n_parts; p++) {
                        tol += C[p] * pr[p].out_tol[row * Dv + e];
                        mag += C[p] * fabs(pr[p].out[row * Dv + e]);
                    }
                    tol += (2.0 * Lmax + 4.0 * U) * mag;
                    expect_close(o[e], ur.out[row * Dv + e], tol, what, st);
                }
            }

    free(first_out), free(first_lse), free(out2.buf), free(lse2.buf);
    free(p0out), free(p0lse), free(out.buf), free(lse.buf);
    for (uint32_t p = 0; p < n_parts; p++) {
        free(pout[p].buf), free(plse[p].buf);
        ref_free(&pr[p]);
    }
    free(pout), free(plse), free(pr), free(parts), free(kl), free(cut);
    ref_free(&ur);
    free(q), free(k), free(v), free(kv_lens), free(mask), free(bias);
    attn_destroy(ctx);
}

static void test_random_configurations(void **state)
{
    (void)state;
    cfg_stats st = {0, 0, 0.0, ""};
    int in_place = 0;
    static const uint32_t counts[] = {2, 3, 8};
    for (int c = 0; c < NCONFIGS; c++) {
        uint32_t n = c < 180 ? counts[c % 3] : 1 + (uint32_t)(c % 11);
        run_config(0x6d657267ull * 1000 + (uint64_t)c, n, &st, &in_place);
    }
    printf("merge: %d configurations (%d in place), %ld values compared, worst error/tolerance %.3g\n",
           NCONFIGS, in_place, st.compared, st.worst);
    if (st.failures)
        fail_msg("%ld failures; first: %s", st.failures, st.first);
    assert_true(in_place > 10);
}

/* Builds contiguous parts [1, 1, 1, Dv] from lse values and out rows. */
static attn_status merge_rows_of(uint32_t n, const float *lse, const float *outs, uint32_t Dv,
                                 uint32_t masked_rows, float *out, float *lse_out)
{
    attn_merge_part parts[16];
    for (uint32_t p = 0; p < n; p++)
        parts[p] = (attn_merge_part){outs + p * Dv, {0, 0, 0}, lse + p, {0, 0, 0}};
    attn_merge_args m;
    attn_merge_args_init(&m);
    m.n_parts = n, m.batch = 1, m.heads = 1, m.q_len = 1, m.v_dim = Dv, m.masked_rows = masked_rows;
    m.parts = parts, m.out = out, m.lse = lse_out;
    return attn_merge(&m);
}

static void test_masked_and_nonfinite_parts(void **state)
{
    (void)state;
    /* a hand-computed case: lse 0 and ln 3 give weights 1/4 and 3/4 */
    float lse[4] = {0.0f, (float)log(3.0), -INFINITY, -INFINITY};
    float outs[4 * 2] = {4.0f, -8.0f, 0.0f, 8.0f, NAN, INFINITY, -INFINITY, NAN};
    float out[2], l;
    assert_int_equal(merge_rows_of(2, lse, outs, 2, ATTN_MASKED_ROWS_ZERO, out, &l), ATTN_OK);
    double l3 = log(1.0 + exp((double)(float)log(3.0)));
    double w0 = exp(0.0 - l3), w1 = exp((double)(float)log(3.0) - l3); /* ~1/4, ~3/4 */
    assert_true(fabs(out[0] - w0 * 4.0) <= 2.0 * U * 4.0);
    assert_true(fabs(out[1] - (w0 * -8.0 + w1 * 8.0)) <= 2.0 * U * 8.0);
    assert_true(fabs(l - l3) <= 2.0 * U * l3);
    assert_true(fabs(out[0] - 1.0f) < 1e-6 && fabs(out[1] - 4.0f) < 1e-5);
    /* the two -inf parts, whose outs are NaN and Inf, change nothing, wherever they are */
    float out4[2], l4;
    assert_int_equal(merge_rows_of(4, lse, outs, 2, ATTN_MASKED_ROWS_ZERO, out4, &l4), ATTN_OK);
    assert_memory_equal(out4, out, sizeof out);
    assert_memory_equal(&l4, &l, sizeof l);
    float lse_b[4] = {-INFINITY, 0.0f, -INFINITY, (float)log(3.0)};
    float outs_b[8] = {NAN, NAN, 4.0f, -8.0f, INFINITY, 1e38f, 0.0f, 8.0f};
    assert_int_equal(merge_rows_of(4, lse_b, outs_b, 2, ATTN_MASKED_ROWS_ZERO, out4, &l4), ATTN_OK);
    assert_memory_equal(out4, out, sizeof out);
    assert_memory_equal(&l4, &l, sizeof l);

    /* every part -inf: the masked-row policy, lse -inf */
    float all_inf[3] = {-INFINITY, -INFINITY, -INFINITY};
    float garbage[6] = {NAN, 1.0f, INFINITY, 2.0f, NAN, -INFINITY};
    out[0] = out[1] = sentinel;
    assert_int_equal(merge_rows_of(3, all_inf, garbage, 2, ATTN_MASKED_ROWS_ZERO, out, &l), ATTN_OK);
    assert_true(out[0] == 0.0f && out[1] == 0.0f && !signbit(out[0]));
    assert_true(l == -INFINITY);
    assert_int_equal(merge_rows_of(3, all_inf, garbage, 2, ATTN_MASKED_ROWS_NAN, out, &l), ATTN_OK);
    assert_true(isnan(out[0]) && isnan(out[1]) && l == -INFINITY);

    /* NaN lse: NaN row; +inf lse: out NaN, lse +inf; a NaN in a counted out reaches the row */
    float with_nan[2] = {0.0f, NAN}, with_inf[2] = {0.0f, INFINITY}, finite_outs[4] = {1, 2, 3, 4};
    assert_int_equal(merge_rows_of(2, with_nan, finite_outs, 2, ATTN_MASKED_ROWS_ZERO, out, &l), ATTN_OK);
    assert_true(isnan(out[0]) && isnan(out[1]) && isnan(l));
    assert_int_equal(merge_rows_of(2, with_inf, finite_outs, 2, ATTN_MASKED_ROWS_ZERO, out, &l), ATTN_OK);
    assert_true(isnan(out[0]) && isnan(out[1]) && l == INFINITY);
    float two_zero[2] = {0.0f, 0.0f}, nan_outs[4] = {1, NAN, 3, 4};
    assert_int_equal(merge_rows_of(2, two_zero, nan_outs, 2, ATTN_MASKED_ROWS_ZERO, out, &l), ATTN_OK);
    assert_float_equal(out[0], 2.0f, 0.0f);
    assert_true(isnan(out[1]));
    assert_float_equal(l, (float)log(2.0), 1e-7f);

    /* one part: the identity, bit for bit (weight exp(0) = 1), huge lse included */
    float one_lse[1] = {-3.0e38f}, one_out[3] = {1.5f, -0.0f, 3e-39f}, o3[3], l1;
    attn_merge_part part = {one_out, {0, 0, 0}, one_lse, {0, 0, 0}};
    attn_merge_args m;
    attn_merge_args_init(&m);
    m.n_parts = 1, m.batch = m.heads = m.q_len = 1, m.v_dim = 3, m.parts = &part, m.out = o3, m.lse = &l1;
    assert_int_equal(attn_merge(&m), ATTN_OK);
    assert_memory_equal(o3, one_out, sizeof o3);
    assert_memory_equal(&l1, one_lse, sizeof l1);
    /* lse optional */
    m.lse = NULL;
    assert_int_equal(attn_merge(&m), ATTN_OK);
    assert_memory_equal(o3, one_out, sizeof o3);
}

/* Extreme but valid lse values: far apart (one part dominates exactly), equal and huge. */
static void test_extreme_lse(void **state)
{
    (void)state;
    float lse[2] = {1.0e30f, -1.0e30f}, outs[4] = {1.0f, 2.0f, NAN, 5.0f}, out[2], l;
    /* part 1's weight underflows to exactly 0, but its out is still read: a NaN there reaches
     * the row (0 * NaN), as documented: only -inf lse excludes a part */
    assert_int_equal(merge_rows_of(2, lse, outs, 2, ATTN_MASKED_ROWS_ZERO, out, &l), ATTN_OK);
    assert_true(isnan(out[0]));
    assert_float_equal(out[1], 2.0f, 0.0f);
    assert_float_equal(l, 1.0e30f, 0.0f);
    float same[2] = {3.0e38f, 3.0e38f}, o2[4] = {1.0f, 3.0f, 3.0f, 5.0f};
    assert_int_equal(merge_rows_of(2, same, o2, 2, ATTN_MASKED_ROWS_ZERO, out, &l), ATTN_OK);
    assert_float_equal(out[0], 2.0f, 0.0f);
    assert_float_equal(out[1], 4.0f, 0.0f);
    assert_true(isfinite(l) && l == 3.0e38f);
}

typedef struct err_case {
    attn_merge_part parts[3];
    attn_merge_args m;
    float pout[3][2 * 2 * 3 * 4], plse[3][2 * 2 * 3];
    float out[2 * 2 * 3 * 4 + 64], lse[2 * 2 * 3 + 16];
} err_case;

/* A valid call: B = 2, H = 2, Lq = 3, Dv = 4, three contiguous parts. */
static void err_reset(err_case *c)
{
    for (int p = 0; p < 3; p++) {
        for (int e = 0; e < 48; e++)
            c->pout[p][e] = (float)(e + p);
        for (int e = 0; e < 12; e++)
            c->plse[p][e] = (float)(e % 3) - (float)p;
        c->parts[p] = (attn_merge_part){c->pout[p], {0, 0, 0}, c->plse[p], {0, 0, 0}};
    }
    for (size_t e = 0; e < sizeof c->out / sizeof c->out[0]; e++)
        c->out[e] = sentinel;
    for (size_t e = 0; e < sizeof c->lse / sizeof c->lse[0]; e++)
        c->lse[e] = sentinel;
    attn_merge_args_init(&c->m);
    c->m.n_parts = 3, c->m.batch = 2, c->m.heads = 2, c->m.q_len = 3, c->m.v_dim = 4;
    c->m.parts = c->parts, c->m.out = c->out, c->m.lse = c->lse;
}

static void expect_error(err_case *c, attn_status want, const char *message)
{
    float pout[3][48], plse[3][12];
    memcpy(pout, c->pout, sizeof pout);
    memcpy(plse, c->plse, sizeof plse);
    attn_status got = attn_merge(&c->m);
    if (got != want || strstr(attn_last_error(NULL), message) == NULL)
        fail_msg("expected %s with \"%s\", got %s: \"%s\"", attn_status_str(want), message,
                 attn_status_str(got), attn_last_error(NULL));
    for (size_t e = 0; e < sizeof c->out / sizeof c->out[0]; e++)
        assert_memory_equal(&c->out[e], &sentinel, sizeof sentinel);
    for (size_t e = 0; e < sizeof c->lse / sizeof c->lse[0]; e++)
        assert_memory_equal(&c->lse[e], &sentinel, sizeof sentinel);
    assert_memory_equal(pout, c->pout, sizeof pout);
    assert_memory_equal(plse, c->plse, sizeof plse);
}

static void test_errors(void **state)
{
    (void)state;
    err_case *c = xcalloc(1, sizeof *c);
    err_reset(c);
    assert_int_equal(attn_merge(&c->m), ATTN_OK); /* the base call is valid */
    err_reset(c);

    assert_int_equal(attn_merge(NULL), ATTN_ERR_NULL_POINTER);
    assert_string_equal(attn_last_error(NULL), "args is NULL");
    c->m.struct_size = 0;
    expect_error(c, ATTN_ERR_STRUCT_SIZE, "args->struct_size = 0 is not the size");
    err_reset(c), c->m.struct_size = sizeof c->m + 8;
    expect_error(c, ATTN_ERR_STRUCT_SIZE, "is not the size of an attn_merge_args");
    err_reset(c), c->m.parts = NULL;
    expect_error(c, ATTN_ERR_NULL_POINTER, "args->parts is NULL");
    err_reset(c), c->m.out = NULL;
    expect_error(c, ATTN_ERR_NULL_POINTER, "args->out is NULL");
    err_reset(c), c->parts[2].out = NULL;
    expect_error(c, ATTN_ERR_NULL_POINTER, "args->parts[2].out is NULL");
    err_reset(c), c->parts[1].lse = NULL;
    expect_error(c, ATTN_ERR_NULL_POINTER, "args->parts[1].lse is NULL");
    /* pointers come before sizes */
    err_reset(c), c->parts[1].lse = NULL, c->m.batch = 0;
    expect_error(c, ATTN_ERR_NULL_POINTER, "args->parts[1].lse is NULL");

    static const char *const zero_names[] = {"n_parts", "batch", "heads", "q_len", "v_dim"};
    for (int z = 0; z < 5; z++) {
        err_reset(c);
        uint32_t *f[] = {&c->m.n_parts, &c->m.batch, &c->m.heads, &c->m.q_len, &c->m.v_dim};
        *f[z] = 0;
        char msg[64];
        snprintf(msg, sizeof msg, "args->%s is 0", zero_names[z]);
        expect_error(c, ATTN_ERR_ZERO_SIZE, msg);
    }
    err_reset(c), c->m.v_dim = ATTN_MAX_HEAD_DIM + 1;
    expect_error(c, ATTN_ERR_LIMIT, "args->v_dim = 16385 exceeds ATTN_MAX_HEAD_DIM = 16384");
    err_reset(c), c->m.masked_rows = 2;
    expect_error(c, ATTN_ERR_BAD_OPTION, "args->masked_rows = 2 is not an attn_masked_rows");

    /* strides */
    err_reset(c), c->parts[2].lse_strides = (attn_strides){6, 3, -1};
    expect_error(c, ATTN_ERR_STRIDE, "args->parts[2].lse_strides.seq = -1 is negative");
    err_reset(c), c->parts[0].out_strides = (attn_strides){-24, 12, 4};
    expect_error(c, ATTN_ERR_STRIDE, "args->parts[0].out_strides.batch = -24 is negative");
    err_reset(c), c->m.out_strides = (attn_strides){24, 12, 3}; /* rows of 4 overlap */
    expect_error(c, ATTN_ERR_STRIDE, "args->out_strides.seq = 3 is below the 4 elements");
    err_reset(c), c->m.lse_strides = (attn_strides){0, 3, 1}; /* batches share memory */
    expect_error(c, ATTN_ERR_STRIDE, "args->lse_strides.batch = 0 is below");
    /* overlapping part inputs are fine (inputs may share memory) */
    err_reset(c), c->parts[1].out_strides = (attn_strides){0, 0, 4}, c->parts[1].out = c->pout[0];
    c->parts[1].lse = c->plse[0];
    assert_int_equal(attn_merge(&c->m), ATTN_OK);
    err_reset(c), c->parts[1].out_strides = (attn_strides){INT64_MAX, 12, 4};
    expect_error(c, ATTN_ERR_OVERFLOW, "args->parts[1].out: shape [2, 2, 3, 4] with strides");
    /* outputs are checked before the parts */
    err_reset(c), c->parts[0].out_strides = (attn_strides){INT64_MAX, 12, 4};
    c->m.out_strides = (attn_strides){24, 12, -4};
    expect_error(c, ATTN_ERR_STRIDE, "args->out_strides.seq = -4 is negative");

    /* aliasing */
    err_reset(c), c->m.out = c->pout[1];
    expect_error(c, ATTN_ERR_ALIAS, "args->out overlaps args->parts[1].out");
    err_reset(c), c->m.lse = c->plse[1] + 1;
    expect_error(c, ATTN_ERR_ALIAS, "args->lse overlaps args->parts[1].lse");
    err_reset(c), c->m.lse = c->pout[0] + 47; /* the last element of part 0's out */
    expect_error(c, ATTN_ERR_ALIAS, "args->lse overlaps args->parts[0].out");
    err_reset(c), c->m.lse = c->out + 47;
    expect_error(c, ATTN_ERR_ALIAS, "args->out overlaps args->lse");
    /* in place: exactly parts[0] only */
    err_reset(c), c->m.out = c->pout[0] + 1;
    expect_error(c, ATTN_ERR_ALIAS, "args->out overlaps args->parts[0].out");
    err_reset(c), c->m.out = c->pout[0], c->m.out_strides = (attn_strides){24, 12, 4};
    c->parts[0].out_strides = (attn_strides){12, 24, 4}; /* same buffer, other layout */
    expect_error(c, ATTN_ERR_ALIAS, "args->out overlaps args->parts[0].out");
    err_reset(c), c->m.out = c->pout[0], c->m.lse = c->pout[0];
    expect_error(c, ATTN_ERR_ALIAS, "args->lse overlaps args->parts[0].out");
    /* in place accepted: {0,0,0} and its explicit equivalent are the same view */
    err_reset(c), c->m.out = c->pout[0], c->m.out_strides = (attn_strides){24, 12, 4};
    c->m.lse = c->plse[0];
    assert_int_equal(attn_merge(&c->m), ATTN_OK);
    free(c);
}

/* In-place folding, one part at a time as ring attention does, equals the n-way merge up to
 * the merge's rounding, and the in-place call itself equals the out-of-place call bitwise. */
static void test_in_place_fold(void **state)
{
    (void)state;
    rng r = {42};
    enum { P = 5, B = 2, H = 3, L = 4, DV = 700 };
    size_t ne = (size_t)B * H * L * DV, nr = (size_t)B * H * L;
    float *outs = random_floats(&r, P * ne, 1.0), *lses = random_floats(&r, P * nr, 3.0);
    for (size_t e = 0; e < nr; e += 5)
        lses[2 * nr + e] = -INFINITY, outs[2 * ne + e * DV] = NAN; /* row e of part 2 is empty */
    attn_merge_part parts[P];
    for (int p = 0; p < P; p++)
        parts[p] = (attn_merge_part){outs + p * ne, {0, 0, 0}, lses + p * nr, {0, 0, 0}};
    float *ref_out = xcalloc(ne, sizeof(float)), *ref_lse = xcalloc(nr, sizeof(float));
    attn_merge_args m;
    attn_merge_args_init(&m);
    m.batch = B, m.heads = H, m.q_len = L, m.v_dim = DV;
    m.n_parts = P, m.parts = parts, m.out = ref_out, m.lse = ref_lse;
    assert_int_equal(attn_merge(&m), ATTN_OK);

    /* pairwise out of place, then the same pairs in place */
    float *acc = xcalloc(ne, sizeof(float)), *acc_lse = xcalloc(nr, sizeof(float));
    float *tmp = xcalloc(ne, sizeof(float)), *tmp_lse = xcalloc(nr, sizeof(float));
    memcpy(acc, outs, ne * sizeof(float));
    memcpy(acc_lse, lses, nr * sizeof(float));
    for (int p = 1; p < P; p++) {
        attn_merge_part two[2] = {{acc, {0, 0, 0}, acc_lse, {0, 0, 0}}, parts[p]};
        m.n_parts = 2, m.parts = two, m.out = tmp, m.lse = tmp_lse;
        assert_int_equal(attn_merge(&m), ATTN_OK);
        m.out = acc, m.lse = acc_lse;
        assert_int_equal(attn_merge(&m), ATTN_OK);
        assert_memory_equal(acc, tmp, ne * sizeof(float));
        assert_memory_equal(acc_lse, tmp_lse, nr * sizeof(float));
    }
    /* the fold rounds to float after each step: a few ulps from the n-way merge */
    for (size_t e = 0; e < ne; e++)
        assert_true(fabsf(acc[e] - ref_out[e]) <= 8.0f * 0x1p-24f * (fabsf(ref_out[e]) + 4.0f));
    for (size_t e = 0; e < nr; e++)
        assert_true(fabsf(acc_lse[e] - ref_lse[e]) <= 8.0f * 0x1p-24f * (fabsf(ref_lse[e]) + 1.0f));
    free(outs), free(lses), free(ref_out), free(ref_lse), free(acc), free(acc_lse), free(tmp), free(tmp_lse);
}

/* Sizes at UINT32_MAX and strides at the ends of int64_t: refused before any read or write. */
static void test_hostile(void **state)
{
    (void)state;
    float pout[4] = {1, 2, 3, 4}, plse[1] = {0}, out[4] = {sentinel, sentinel, sentinel, sentinel};
    attn_merge_part part = {pout, {0, 0, 0}, plse, {0, 0, 0}};
    attn_merge_args m;
    attn_merge_args_init(&m);
    m.n_parts = 1, m.batch = 1, m.heads = 1, m.q_len = 1, m.v_dim = 4, m.parts = &part, m.out = out;
    /* default strides of UINT32_MAX x UINT32_MAX x 16384 overflow int64 */
    m.heads = UINT32_MAX, m.q_len = UINT32_MAX, m.v_dim = ATTN_MAX_HEAD_DIM;
    assert_int_equal(attn_merge(&m), ATTN_ERR_OVERFLOW);
    assert_non_null(strstr(attn_last_error(NULL), "args->out: 1 x 4294967295 x 4294967295 x 16384"));
    /* explicit strides: the extent overflows */
    m.heads = 1, m.q_len = UINT32_MAX, m.v_dim = 4, m.batch = UINT32_MAX;
    m.out_strides = (attn_strides){INT64_MAX / 2, 0, 4};
    assert_int_equal(attn_merge(&m), ATTN_ERR_OVERFLOW);
    /* valid output strides, a part whose byte offset does not fit */
    m.batch = 1, m.q_len = 2, m.out_strides = (attn_strides){0, 0, 4};
    part.out_strides = (attn_strides){0, 0, INT64_MAX / 4};
    assert_int_equal(attn_merge(&m), ATTN_ERR_OVERFLOW);
    assert_non_null(strstr(attn_last_error(NULL), "args->parts[0].out"));
    /* stride components of INT64_MAX on axes of size 1 are never used: fine */
    m.q_len = 1, part.out_strides = (attn_strides){INT64_MAX, INT64_MAX, INT64_MAX};
    part.lse_strides = (attn_strides){INT64_MAX, INT64_MAX, INT64_MAX};
    assert_int_equal(attn_merge(&m), ATTN_OK);
    assert_memory_equal(out, pout, sizeof pout);
    for (int e = 0; e < 4; e++)
        out[e] = sentinel;
    m.v_dim = UINT32_MAX;
    assert_int_equal(attn_merge(&m), ATTN_ERR_LIMIT);
    for (int e = 0; e < 4; e++)
        assert_memory_equal(&out[e], &sentinel, sizeof sentinel);

    /* the largest v_dim is accepted (32 column chunks) */
    rng r = {7};
    float *po = random_floats(&r, 2 * ATTN_MAX_HEAD_DIM, 1.0), lse2[2] = {0.25f, -1.0f};
    float *o = xcalloc(ATTN_MAX_HEAD_DIM, sizeof(float));
    attn_merge_part two[2] = {{po, {0, 0, 0}, lse2, {0, 0, 0}},
                              {po + ATTN_MAX_HEAD_DIM, {0, 0, 0}, lse2 + 1, {0, 0, 0}}};
    attn_merge_args_init(&m);
    m.n_parts = 2, m.batch = m.heads = m.q_len = 1, m.v_dim = ATTN_MAX_HEAD_DIM, m.parts = two, m.out = o;
    assert_int_equal(attn_merge(&m), ATTN_OK);
    double lse = log(exp(0.25) + exp(-1.0));
    for (uint32_t e = 0; e < ATTN_MAX_HEAD_DIM; e++) {
        double want = exp(0.25 - lse) * po[e] + exp(-1.0 - lse) * po[ATTN_MAX_HEAD_DIM + e];
        assert_true(fabs(o[e] - want) <= 2.0 * U * (fabs(po[e]) + fabs(po[ATTN_MAX_HEAD_DIM + e])) + 1e-30);
    }
    free(po), free(o);
}

/* attn_merge_args_init writes exactly the size given; a 0.2 struct is the only size known. */
static void test_struct_size(void **state)
{
    (void)state;
    unsigned char buf[sizeof(attn_merge_args) + 16];
    memset(buf, 0xA5, sizeof buf);
    attn_merge_args_init_size((attn_merge_args *)(void *)buf, 24);
    size_t size;
    memcpy(&size, buf, sizeof size);
    assert_int_equal(size, 24);
    for (size_t e = 24; e < sizeof buf; e++)
        assert_int_equal(buf[e], 0xA5);
    attn_merge_args m;
    memset(&m, 0xFF, sizeof m);
    attn_merge_args_init(&m);
    assert_int_equal(m.struct_size, sizeof m);
    assert_int_equal(m.n_parts, 0);
    assert_int_equal(m.masked_rows, ATTN_MASKED_ROWS_ZERO);
    assert_null(m.parts);
    assert_null(m.out);
    assert_null(m.lse);
    attn_merge_args_init_size(NULL, sizeof m); /* ignored */
    /* the layout docs/guide.md gives bindings (LP64) */
    if (sizeof(void *) == 8 && sizeof(size_t) == 8) {
        assert_int_equal(sizeof(attn_merge_args), 104);
        assert_int_equal(offsetof(attn_merge_args, masked_rows), 28);
        assert_int_equal(offsetof(attn_merge_args, parts), 32);
        assert_int_equal(offsetof(attn_merge_args, out), 40);
        assert_int_equal(offsetof(attn_merge_args, lse), 72);
        assert_int_equal(sizeof(attn_merge_part), 64);
        assert_int_equal(offsetof(attn_merge_part, out_strides), 8);
        assert_int_equal(offsetof(attn_merge_part, lse), 32);
        assert_int_equal(offsetof(attn_merge_part, lse_strides), 40);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_configurations),
        cmocka_unit_test(test_masked_and_nonfinite_parts),
        cmocka_unit_test(test_extreme_lse),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_in_place_fold),
        cmocka_unit_test(test_hostile),
        cmocka_unit_test(test_struct_size),
    };
    return cmocka_run_group_tests_name("merge", tests, NULL, NULL);
}
