/*
 * Attention dropout in the forward and backward passes:
 *   - the mask the forward applies is the pinned one of attn_dropout_mask (recovered exactly
 *     from a forward with V = identity, where out[i, j] is 0 iff weight (i, j) was dropped);
 *   - 160 random configurations (block and split-key paths, GQA, causal, windows, kv_lens,
 *     masks, biases, every optional output) against the float64 oracle fed with that mask: out
 *     and the weights after dropout, lse and entropy before it; and the backward against the
 *     float64 backward oracle with the same mask;
 *   - p = 0 gives the bits of no dropout; bad probabilities are refused;
 *   - forward and backward with dropout bitwise identical for 1 to 4 threads.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <attn/attn.h>

#include "support/check.h"
#include "support/reference_backward.h"
#include "support/util.h"

#define U 0x1p-24

/* keep [B, Hq, Lq, Lk] from the public function. */
static unsigned char *keep_mask(float p, uint64_t seed, uint32_t offset, int64_t B, int64_t Hq,
                                int64_t Lq, int64_t Lk)
{
    unsigned char *keep = xcalloc((size_t)(B * Hq * Lq * Lk), 1);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < Hq; h++)
            assert_int_equal(attn_dropout_mask(p, seed, offset, (uint32_t)Hq, (uint32_t)b,
                                               (uint32_t)h, 0, Lq, 0, Lk,
                                               keep + ((b * Hq + h) * Lq) * Lk, Lk),
                             ATTN_OK);
    return keep;
}

static void test_forward_applies_the_public_mask(void **state)
{
    (void)state;
    enum { B = 2, H = 3, L = 40, N = 64 };
    rng r = {3};
    float *q = random_floats(&r, B * H * L * N, 0.05), *k = random_floats(&r, B * H * N * N, 0.05);
    float *v = xcalloc(B * H * N * N, sizeof(float)), *o = xcalloc(B * H * L * N, sizeof(float));
    for (int64_t bh = 0; bh < B * H; bh++)
        for (int64_t j = 0; j < N; j++)
            v[(bh * N + j) * N + j] = 1.0f; /* out[i, :] = the dropped weights of row i */
    float ps[] = {0.1f, 0.5f, 0.9f};
    for (int t = 0; t < 3; t++) {
        attn_desc d;
        attn_desc_init(&d);
        d.q_heads = d.kv_heads = H, d.qk_dim = d.v_dim = N, d.dropout = ps[t], d.threads = 2;
        attn_ctx *ctx;
        assert_int_equal(attn_create(&d, &ctx), ATTN_OK);
        attn_args a;
        attn_args_init(&a);
        a.batch = B, a.q_len = L, a.kv_len = N;
        a.q = q, a.q_strides = attn_strides_bhsd(H, L, N);
        a.k = k, a.k_strides = attn_strides_bhsd(H, N, N);
        a.v = v, a.v_strides = attn_strides_bhsd(H, N, N);
        a.out = o, a.out_strides = attn_strides_bhsd(H, L, N);
        a.dropout_seed = 0x123456789abcdefull + (uint64_t)t, a.dropout_offset = 77u * (uint32_t)t;
        assert_int_equal(attn_forward(ctx, &a), ATTN_OK);
        unsigned char *keep = keep_mask(ps[t], a.dropout_seed, a.dropout_offset, B, H, L, N);
        long kept = 0;
        for (size_t i = 0; i < (size_t)B * H * L * N; i++) {
            if ((o[i] != 0.0f) != (keep[i] != 0))
                fail_msg("p=%g: element %zu: out %g but keep %d", (double)ps[t], i, (double)o[i], keep[i]);
            kept += keep[i];
        }
        print_message("p = %.1f: %ld of %d weights kept, every one where attn_dropout_mask says\n",
                      (double)ps[t], kept, B * H * L * N);
        free(keep);
        attn_destroy(ctx);
    }
    free(q), free(k), free(v), free(o);
}

typedef struct totals {
    long configs, split, compared;
    double worst;
} totals;

static void run_config(uint64_t seed, totals *tot)
{
    rng r = {seed};
    int64_t B = 1 + rng_below(&r, 2), Hkv = 1 + rng_below(&r, 2), Hq = Hkv * (1 + rng_below(&r, 3));
    int64_t Lq = 1 + rng_below(&r, 100), Lk = 1 + rng_below(&r, 200);
    int decode = rng_below(&r, 4) == 0;
    if (decode)
        Lq = 1 + rng_below(&r, 8), Lk = 512 + rng_below(&r, 600);
    int64_t D = 1 + rng_below(&r, 40), Dv = 1 + rng_below(&r, 40);
    static const float ps[] = {0.05f, 0.1f, 0.3f, 0.5f, 0.9f};
    attn_desc d;
    attn_desc_init(&d);
    d.q_heads = (uint32_t)Hq, d.kv_heads = (uint32_t)Hkv, d.qk_dim = (uint32_t)D, d.v_dim = (uint32_t)Dv;
    d.dropout = ps[rng_below(&r, 5)];
    d.flags = rng_below(&r, 3) == 0 ? ATTN_CAUSAL : 0;
    d.window_left = rng_below(&r, 5) == 0 ? rng_below(&r, Lk) : -1;
    d.threads = (uint32_t)(1 + rng_below(&r, 3));
    d.ops = ATTN_OP_FORWARD | ATTN_OP_BACKWARD;
    float *q = random_floats(&r, (size_t)(B * Hq * Lq * D), 1.0);
    float *k = random_floats(&r, (size_t)(B * Hkv * Lk * D), 1.0);
    float *v = random_floats(&r, (size_t)(B * Hkv * Lk * Dv), 1.0);
    float *dout = random_floats(&r, (size_t)(B * Hq * Lq * Dv), 1.0);
    size_t rows = (size_t)(B * Hq * Lq);
    float *o = xcalloc(rows * Dv, sizeof(float)), *lse = xcalloc(rows, sizeof(float));
    float *ent = xcalloc(rows, sizeof(float)), *w = NULL;
    attn_args a;
    attn_args_init(&a);
    a.batch = (uint32_t)B, a.q_len = (uint32_t)Lq, a.kv_len = (uint32_t)Lk;
    a.q = q, a.q_strides = attn_strides_bhsd(d.q_heads, a.q_len, d.qk_dim);
    a.k = k, a.k_strides = attn_strides_bhsd(d.kv_heads, a.kv_len, d.qk_dim);
    a.v = v, a.v_strides = attn_strides_bhsd(d.kv_heads, a.kv_len, d.v_dim);
    a.out = o, a.out_strides = attn_strides_bhsd(d.q_heads, a.q_len, d.v_dim);
    a.lse = lse, a.entropy = ent;
    a.dropout_seed = rng_next(&r), a.dropout_offset = (uint32_t)rng_next(&r);
    int32_t *lens = NULL;
    if (rng_below(&r, 4) == 0) {
        lens = xcalloc((size_t)B, sizeof *lens);
        for (int64_t b = 0; b < B; b++)
            lens[b] = (int32_t)rng_below(&r, Lk + 1);
        a.kv_lens = lens;
    }
    float *bias = NULL;
    if (rng_below(&r, 4) == 0) {
        bias = xcalloc(rows * Lk, sizeof *bias);
        for (size_t i = 0; i < rows * Lk; i++)
            bias[i] = rng_below(&r, 20) == 0 ? -INFINITY : (float)rng_normal(&r);
        a.bias = bias, a.bias_strides = attn_strides_bhsd(d.q_heads, a.q_len, a.kv_len);
    }
    int wm = decode ? 0 : (int)rng_below(&r, 3);
    if (wm) {
        a.weights_mode = wm;
        a.weights = w = xcalloc(wm == 1 ? rows * Lk : (size_t)(B * Lq * Lk), sizeof *w);
    }
    attn_ctx *ctx;
    assert_int_equal(attn_create(&d, &ctx), ATTN_OK);
    assert_int_equal(attn_forward(ctx, &a), ATTN_OK);

    char label[200];
    snprintf(label, sizeof label, "seed %llu: B=%lld Hq=%lld Hkv=%lld Lq=%lld Lk=%lld p=%g wm=%d",
             (unsigned long long)seed, (long long)B, (long long)Hq, (long long)Hkv, (long long)Lq,
             (long long)Lk, (double)d.dropout, wm);
    unsigned char *keep = keep_mask(d.dropout, a.dropout_seed, a.dropout_offset, B, Hq, Lq, Lk);
    double scale = (double)(float)(1.0 / (1.0 - (double)d.dropout));
    ref_problem p = ref_problem_from(&d, &a);
    ref_result res;
    ref_attention(&p, &res);
    /* the oracle with the mask: out and weights after dropout, lse and entropy unchanged (P is
     * kept aside for the backward oracle, which takes the weights before dropout) */
    double *P = xcalloc(rows * Lk, sizeof(double));
    memcpy(P, res.weights, rows * Lk * sizeof(double));
    for (size_t row = 0; row < rows; row++) {
        int64_t g = (int64_t)(row / (size_t)Lq) % Hq / (Hq / Hkv), b = (int64_t)(row / (size_t)(Hq * Lq));
        for (int64_t dd = 0; dd < Dv; dd++) {
            double acc = 0.0, mag = 0.0;
            for (int64_t j = 0; j < Lk; j++) {
                double pj = res.weights[row * Lk + j] * (keep[row * Lk + j] ? scale : 0.0);
                double vj = v[((b * Hkv + g) * Lk + j) * Dv + dd];
                acc += pj * vj;
                mag += pj * fabs(vj);
            }
            res.out[row * Dv + dd] = acc;
            /* the forward's bound grown by the scale, plus the rounding of the scaling */
            res.out_tol[row * Dv + dd] = res.out_tol[row * Dv + dd] * scale + 4.0 * U * mag + 1e-30;
        }
        for (int64_t j = 0; j < Lk; j++) {
            double kj = keep[row * Lk + j] ? scale : 0.0;
            res.weights[row * Lk + j] *= kj;
            res.weights_tol[row * Lk + j] = res.weights_tol[row * Lk + j] * kj + 4.0 * U * res.weights[row * Lk + j] + 1e-37;
        }
    }
    check_stats cs = {0};
    check_outputs(&p, &res, &d, &a, label, &cs);
    if (cs.failures)
        fail_msg("forward: %ld of %ld out of tolerance; first: %s", cs.failures, cs.compared, cs.first_failure);

    /* the backward with the same mask */
    float *dq = xcalloc(rows * D, sizeof(float)), *dk = xcalloc((size_t)(B * Hkv * Lk * D), sizeof(float));
    float *dv = xcalloc((size_t)(B * Hkv * Lk * Dv), sizeof(float));
    attn_backward_args g;
    attn_backward_args_init(&g);
    g.batch = a.batch, g.q_len = a.q_len, g.kv_len = a.kv_len;
    g.q = q, g.q_strides = a.q_strides, g.k = k, g.k_strides = a.k_strides, g.v = v, g.v_strides = a.v_strides;
    g.out = o, g.out_strides = a.out_strides, g.dout = dout, g.dout_strides = a.out_strides, g.lse = lse;
    g.kv_lens = a.kv_lens, g.bias = a.bias, g.bias_strides = a.bias_strides;
    g.dq = dq, g.dq_strides = a.q_strides, g.dk = dk, g.dk_strides = a.k_strides, g.dv = dv, g.dv_strides = a.v_strides;
    g.dropout_seed = a.dropout_seed, g.dropout_offset = a.dropout_offset;
    assert_int_equal(attn_backward(ctx, &g), ATTN_OK);
    double *gd = xcalloc(rows * Dv, sizeof(double));
    for (size_t i = 0; i < rows * Dv; i++)
        gd[i] = dout[i];
    memcpy(res.weights, P, rows * Lk * sizeof(double));
    ref_grads rg;
    ref_backward_dropout(&p, &res, gd, keep, scale, &rg);
    grad_stats gs = {0, 0, 0.0, ""};
    check_grad("dq", dq, a.q_strides, B, Hq, Lq, D, rg.dq, rg.dq_tol, label, &gs);
    check_grad("dk", dk, a.k_strides, B, Hkv, Lk, D, rg.dk, rg.dk_tol, label, &gs);
    check_grad("dv", dv, a.v_strides, B, Hkv, Lk, Dv, rg.dv, rg.dv_tol, label, &gs);
    if (gs.failures)
        fail_msg("backward: %ld of %ld out of tolerance; first: %s", gs.failures, gs.compared, gs.first_failure);

    tot->configs++;
    tot->split += decode;
    tot->compared += cs.compared + gs.compared;
    tot->worst = cs.worst_ratio > tot->worst ? cs.worst_ratio : tot->worst;
    tot->worst = gs.worst_ratio > tot->worst ? gs.worst_ratio : tot->worst;
    ref_grads_free(&rg), ref_free(&res), free(gd), free(keep), free(P);
    attn_destroy(ctx);
    free(q), free(k), free(v), free(dout), free(o), free(lse), free(ent), free(w), free(lens), free(bias);
    free(dq), free(dk), free(dv);
}

static void test_random_configurations(void **state)
{
    (void)state;
    totals tot = {0, 0, 0, 0.0};
    for (uint64_t seed = 1; seed <= 160; seed++)
        run_config(seed * 2654435761u, &tot);
    print_message("%ld configurations (%ld on the split-key path), %ld values compared, worst "
                  "error/tolerance %.3f (%s)\n",
                  tot.configs, tot.split, tot.compared, tot.worst, attn_kernel_isa());
    assert_true(tot.split >= 20);
}

/* Runs forward and backward with dropout on `threads` threads into fresh buffers. */
static void run_threads(uint32_t threads, float p, float *out[4], size_t n[4])
{
    enum { B = 2, Hq = 4, Hkv = 2, L = 300, D = 32 };
    rng r = {99};
    float *q = random_floats(&r, B * Hq * L * D, 1.0), *k = random_floats(&r, B * Hkv * L * D, 1.0);
    float *v = random_floats(&r, B * Hkv * L * D, 1.0), *dout = random_floats(&r, B * Hq * L * D, 1.0);
    n[0] = B * Hq * L * D, n[1] = B * Hq * L * D, n[2] = n[3] = B * Hkv * L * D;
    for (int i = 0; i < 4; i++)
        out[i] = xcalloc(n[i], sizeof(float));
    float *lse = xcalloc(B * Hq * L, sizeof(float));
    attn_desc d;
    attn_desc_init(&d);
    d.q_heads = Hq, d.kv_heads = Hkv, d.qk_dim = d.v_dim = D, d.dropout = p, d.threads = threads;
    d.flags = ATTN_CAUSAL, d.ops = ATTN_OP_FORWARD | ATTN_OP_BACKWARD;
    attn_ctx *ctx;
    assert_int_equal(attn_create(&d, &ctx), ATTN_OK);
    attn_args a;
    attn_args_init(&a);
    a.batch = B, a.q_len = a.kv_len = L;
    a.q = q, a.k = k, a.v = v, a.out = out[0], a.lse = lse;
    a.q_strides = a.out_strides = attn_strides_bhsd(Hq, L, D);
    a.k_strides = a.v_strides = attn_strides_bhsd(Hkv, L, D);
    a.dropout_seed = 42, a.dropout_offset = 7;
    assert_int_equal(attn_forward(ctx, &a), ATTN_OK);
    attn_backward_args g;
    attn_backward_args_init(&g);
    g.batch = B, g.q_len = g.kv_len = L;
    g.q = q, g.k = k, g.v = v, g.out = out[0], g.dout = dout, g.lse = lse;
    g.q_strides = g.out_strides = g.dout_strides = g.dq_strides = a.q_strides;
    g.k_strides = g.v_strides = g.dk_strides = g.dv_strides = a.k_strides;
    g.dq = out[1], g.dk = out[2], g.dv = out[3];
    g.dropout_seed = 42, g.dropout_offset = 7;
    assert_int_equal(attn_backward(ctx, &g), ATTN_OK);
    attn_destroy(ctx);
    free(q), free(k), free(v), free(dout), free(lse);
}

static void test_thread_invariance_and_p_zero(void **state)
{
    (void)state;
    float *first[4], *other[4];
    size_t n[4];
    run_threads(1, 0.2f, first, n);
    for (uint32_t t = 2; t <= 4; t++) {
        run_threads(t, 0.2f, other, n);
        for (int i = 0; i < 4; i++) {
            assert_memory_equal(first[i], other[i], n[i] * sizeof(float));
            free(other[i]);
        }
    }
    /* p = 0 is no dropout at all, whatever the seed */
    float *none[4];
    run_threads(2, 0.0f, other, n);
    attn_desc d; /* the same problem without dropout, seed ignored */
    (void)d;
    run_threads(3, 0.0f, none, n);
    for (int i = 0; i < 4; i++) {
        assert_memory_equal(none[i], other[i], n[i] * sizeof(float));
        assert_true(memcmp(first[i], other[i], n[i] * sizeof(float)) != 0);
        free(first[i]), free(other[i]), free(none[i]);
    }
    float bad[] = {1.0f, -0.1f, NAN, INFINITY};
    for (int i = 0; i < 4; i++) {
        attn_desc e;
        attn_desc_init(&e);
        e.dropout = bad[i];
        attn_ctx *ctx;
        assert_int_equal(attn_create(&e, &ctx), ATTN_ERR_BAD_OPTION);
        assert_non_null(strstr(attn_last_error(NULL), "desc->dropout"));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forward_applies_the_public_mask),
        cmocka_unit_test(test_random_configurations),
        cmocka_unit_test(test_thread_invariance_and_p_zero),
    };
    return cmocka_run_group_tests_name("dropout_attention", tests, NULL, NULL);
}
