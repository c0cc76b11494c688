/*
 * The optional outputs (weights, lse, entropy) written through caller strides: random
 * configurations (fixed seeds) with each output in a permuted or padded layout, checked element
 * by element against the float64 oracle after gathering, padding checked untouched; both the
 * block and the split-key paths; and the stride errors of those outputs.
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
#include "support/util.h"

#define NCONFIGS 200
static const float sentinel = 4321.0f;

/* A [B, H, L, W] output view in one of four layouts: contiguous given as explicit strides,
 * [B, L, H, W] (heads inside rows), padded rows and heads, or [L, B, H, W] (batch inside). */
typedef struct view {
    float *buf;
    size_t n;
    attn_strides s;
} view;

static view make_view(rng *r, int64_t B, int64_t H, int64_t L, int64_t W)
{
    view v;
    int64_t pad = 1 + rng_below(r, 4);
    switch (rng_below(r, 4)) {
    case 0: v.s = (attn_strides){H * L * W, L * W, W}; break;
    case 1: v.s = (attn_strides){L * H * W, W, H * W}; break;
    case 2: v.s = (attn_strides){H * (L * (W + pad) + pad) + pad, L * (W + pad) + pad, W + pad}; break;
    default: v.s = (attn_strides){H * W, W, B * H * W}; break;
    }
    v.n = (size_t)((B - 1) * v.s.batch + (H - 1) * v.s.head + (L - 1) * v.s.seq + W);
    v.buf = xcalloc(v.n, sizeof(float));
    for (size_t i = 0; i < v.n; i++)
        v.buf[i] = sentinel;
    return v;
}

/* Copies the view's elements into a dense [B, H, L, W] array and checks the padding. */
static float *gather(const view *v, int64_t B, int64_t H, int64_t L, int64_t W, const char *what,
                     const char *label)
{
    float *dense = xcalloc((size_t)(B * H * L * W), sizeof(float));
    unsigned char *seen = xcalloc(v->n, 1);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < L; i++)
                for (int64_t w = 0; w < W; w++) {
                    size_t at = (size_t)(b * v->s.batch + h * v->s.head + i * v->s.seq + w);
                    dense[((b * H + h) * L + i) * W + w] = v->buf[at];
                    seen[at] = 1;
                }
    for (size_t i = 0; i < v->n; i++)
        if (!seen[i] && v->buf[i] != sentinel)
            fail_msg("%s: %s padding element %zu was written", label, what, i);
    free(seen);
    return dense;
}

static void run_config(uint64_t seed, long *compared, double *worst, long *split)
{
    rng r = {seed};
    attn_desc d;
    attn_desc_init(&d);
    int64_t B = 1 + rng_below(&r, 3), Hkv = 1 + rng_below(&r, 2);
    int64_t Hq = Hkv * (1 + rng_below(&r, 3));
    int64_t Lq = 1 + rng_below(&r, 150), Lk = 1 + rng_below(&r, 300);
    int decode = rng_below(&r, 4) == 0;
    if (decode)
        Lq = 1 + rng_below(&r, 16), Lk = 512 + rng_below(&r, 700);
    int64_t D = 1 + rng_below(&r, 70), Dv = 1 + rng_below(&r, 70);
    d.q_heads = (uint32_t)Hq, d.kv_heads = (uint32_t)Hkv;
    d.qk_dim = (uint32_t)D, d.v_dim = (uint32_t)Dv;
    d.flags = rng_below(&r, 2) ? ATTN_CAUSAL : 0;
    d.window_left = rng_below(&r, 3) == 0 ? rng_below(&r, Lk + 1) : -1;
    d.threads = (uint32_t)(1 + rng_below(&r, 3));

    attn_args a;
    attn_args_init(&a);
    a.batch = (uint32_t)B, a.q_len = (uint32_t)Lq, a.kv_len = (uint32_t)Lk;
    float *q = random_floats(&r, (size_t)(B * Hq * Lq * D), 1.0);
    float *k = random_floats(&r, (size_t)(B * Hkv * Lk * D), 1.0);
    float *v = random_floats(&r, (size_t)(B * Hkv * Lk * Dv), 1.0);
    float *o = xcalloc((size_t)(B * Hq * Lq * Dv), sizeof(float));
    a.q = q, a.q_strides = attn_strides_bhsd((uint32_t)Hq, (uint32_t)Lq, (uint32_t)D);
    a.k = k, a.k_strides = attn_strides_bhsd((uint32_t)Hkv, (uint32_t)Lk, (uint32_t)D);
    a.v = v, a.v_strides = attn_strides_bhsd((uint32_t)Hkv, (uint32_t)Lk, (uint32_t)Dv);
    a.out = o, a.out_strides = attn_strides_bhsd((uint32_t)Hq, (uint32_t)Lq, (uint32_t)Dv);
    int32_t *lens = NULL;
    if (rng_below(&r, 3) == 0) {
        lens = xcalloc((size_t)B, sizeof *lens);
        for (int64_t b = 0; b < B; b++)
            lens[b] = (int32_t)rng_below(&r, Lk + 1);
        a.kv_lens = lens;
    }
    view lse = make_view(&r, B, Hq, Lq, 1), ent = make_view(&r, B, Hq, Lq, 1);
    a.lse = lse.buf, a.lse_strides = lse.s;
    a.entropy = ent.buf, a.entropy_strides = ent.s;
    int wm = decode && rng_below(&r, 3) ? 0 : (int)rng_below(&r, 3);
    int64_t Hw = wm == 2 ? 1 : Hq;
    view w = {0};
    if (wm) {
        w = make_view(&r, B, Hw, Lq, Lk);
        a.weights_mode = wm == 1 ? ATTN_WEIGHTS_PER_HEAD : ATTN_WEIGHTS_HEAD_MEAN;
        a.weights = w.buf, a.weights_strides = w.s;
    }
    char label[200];
    snprintf(label, sizeof label, "seed %llu: B=%lld Hq=%lld Hkv=%lld Lq=%lld Lk=%lld wm=%d",
             (unsigned long long)seed, (long long)B, (long long)Hq, (long long)Hkv,
             (long long)Lq, (long long)Lk, wm);

    attn_ctx *ctx;
    assert_int_equal(attn_create(&d, &ctx), ATTN_OK);
    attn_status st = attn_forward(ctx, &a);
    if (st != ATTN_OK)
        fail_msg("%s: %s (%s)", label, attn_status_str(st), attn_last_error(ctx));

    /* the same call as the oracle sees it: dense outputs */
    attn_args dense = a;
    dense.lse = gather(&lse, B, Hq, Lq, 1, "lse", label);
    dense.entropy = gather(&ent, B, Hq, Lq, 1, "entropy", label);
    dense.weights = wm ? gather(&w, B, Hw, Lq, Lk, "weights", label) : NULL;
    ref_problem p = ref_problem_from(&d, &dense);
    ref_result res;
    ref_attention(&p, &res);
    check_stats cs = {0};
    check_outputs(&p, &res, &d, &dense, label, &cs);
    if (cs.failures)
        fail_msg("%ld of %ld values out of tolerance; first: %s", cs.failures, cs.compared,
                 cs.first_failure);
    *compared += cs.compared;
    *worst = cs.worst_ratio > *worst ? cs.worst_ratio : *worst;
    *split += decode && !wm;
    ref_free(&res);
    attn_destroy(ctx);
    free(dense.lse), free(dense.entropy), free(dense.weights);
    free(q), free(k), free(v), free(o), free(lens), free(lse.buf), free(ent.buf), free(w.buf);
}

static void test_strided_outputs(void **state)
{
    (void)state;
    long compared = 0, split = 0;
    double worst = 0.0;
    for (uint64_t seed = 1; seed <= NCONFIGS; seed++)
        run_config(seed * 104729u, &compared, &worst, &split);
    print_message("%d configurations (%ld on the split-key path), %ld values compared, worst "
                  "error/tolerance %.3f (%s)\n",
                  NCONFIGS, split, compared, worst, attn_kernel_isa());
    assert_true(split >= 20);
}

typedef struct err_case {
    attn_args a;
    attn_status want;
    const char *word;
} err_case;

/* Stride errors of the optional outputs: negative, overlapping elements, overflow; each with
 * its own message and nothing written. */
static void test_output_stride_errors(void **state)
{
    (void)state;
    enum { B = 2, H = 2, L = 8, D = 4 };
    static float q[B * H * L * D], o[B * H * L * D], w[B * H * L * L], lse[B * H * L];
    attn_desc d;
    attn_desc_init(&d);
    d.q_heads = d.kv_heads = H, d.qk_dim = d.v_dim = D, d.threads = 1;
    attn_ctx *ctx;
    assert_int_equal(attn_create(&d, &ctx), ATTN_OK);
    attn_args base;
    attn_args_init(&base);
    base.batch = B, base.q_len = base.kv_len = L;
    base.q = base.k = base.v = q;
    base.q_strides = base.k_strides = base.v_strides = base.out_strides = attn_strides_bhsd(H, L, D);
    base.out = o;
    for (size_t i = 0; i < sizeof o / sizeof o[0]; i++)
        o[i] = sentinel;
    err_case cases[8];
    int n = 0;
    attn_args a = base;
    a.lse = lse, a.lse_strides = (attn_strides){H * L, L, -1};
    cases[n++] = (err_case){a, ATTN_ERR_STRIDE, "args->lse_strides.seq = -1 is negative"};
    a = base, a.lse = lse, a.lse_strides = (attn_strides){H * L, 0, 1}; /* heads share rows */
    cases[n++] = (err_case){a, ATTN_ERR_STRIDE, "args->lse_strides.head = 0"};
    a = base, a.entropy = lse, a.entropy_strides = (attn_strides){INT64_MAX / 2, L, 1};
    cases[n++] = (err_case){a, ATTN_ERR_OVERFLOW, "args->entropy"};
    a = base, a.weights_mode = ATTN_WEIGHTS_PER_HEAD, a.weights = w;
    a.weights_strides = (attn_strides){H * L * L, L * L, L - 1}; /* rows overlap */
    cases[n++] = (err_case){a, ATTN_ERR_STRIDE, "args->weights_strides.seq = 7"};
    a = base, a.weights_mode = ATTN_WEIGHTS_PER_HEAD, a.weights = w;
    a.weights_strides = (attn_strides){0, 0, L}; /* an incomplete triple is taken as given */
    cases[n++] = (err_case){a, ATTN_ERR_STRIDE, "weights_strides"};
    a = base, a.lse = w, a.weights_mode = ATTN_WEIGHTS_HEAD_MEAN, a.weights = w + 3;
    cases[n++] = (err_case){a, ATTN_ERR_ALIAS, "overlaps"};
    for (int i = 0; i < n; i++) {
        for (size_t j = 0; j < sizeof lse / sizeof lse[0]; j++)
            lse[j] = sentinel;
        attn_status st = attn_forward(ctx, &cases[i].a);
        if (st != cases[i].want || !strstr(attn_last_error(ctx), cases[i].word))
            fail_msg("case %d: got %s (%s), want %s with \"%s\"", i, attn_status_str(st),
                     attn_last_error(ctx), attn_status_str(cases[i].want), cases[i].word);
        for (size_t j = 0; j < sizeof lse / sizeof lse[0]; j++)
            assert_true(lse[j] == sentinel);
        for (size_t j = 0; j < sizeof o / sizeof o[0]; j++)
            assert_true(o[j] == sentinel);
    }
    attn_destroy(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_strided_outputs),
                                       cmocka_unit_test(test_output_stride_errors)};
    return cmocka_run_group_tests_name("output_strides", tests, NULL, NULL);
}
