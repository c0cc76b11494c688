/*
 * Extreme logits and fully masked rows. With scores near +-1e4 the float64 oracle still applies
 * (its tolerance grows with the score magnitude, as float32 rounding of the scores does). With
 * scores near +-1e30 rounding of a score is larger than most score gaps, so the tests assert
 * what must hold anyway: no NaN or Inf, weights that sum to 1, outputs inside the convex hull
 * of the visible values, and exact answers where the winner is unambiguous.
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

#include "support/check.h"
#include "support/util.h"

typedef struct problem {
    attn_desc d;
    attn_args a;
    float *q, *k, *v, *out, *lse, *ent, *w;
    attn_ctx *ctx;
} problem;

static void setup_problem(problem *p, int64_t B, int64_t H, int64_t Lq, int64_t Lk, int64_t D,
                          int64_t Dv)
{
    memset(p, 0, sizeof *p);
    attn_desc_init(&p->d);
    p->d.q_heads = p->d.kv_heads = (uint32_t)H;
    p->d.qk_dim = (uint32_t)D;
    p->d.v_dim = (uint32_t)Dv;
    p->q = xcalloc((size_t)(B * H * Lq * D), sizeof(float));
    p->k = xcalloc((size_t)(B * H * Lk * D), sizeof(float));
    p->v = xcalloc((size_t)(B * H * Lk * Dv), sizeof(float));
    p->out = xcalloc((size_t)(B * H * Lq * Dv), sizeof(float));
    p->lse = xcalloc((size_t)(B * H * Lq), sizeof(float));
    p->ent = xcalloc((size_t)(B * H * Lq), sizeof(float));
    p->w = xcalloc((size_t)(B * H * Lq * Lk), sizeof(float));
    attn_args_init(&p->a);
    attn_args *a = &p->a;
    a->batch = (uint32_t)B, a->q_len = (uint32_t)Lq, a->kv_len = (uint32_t)Lk;
    a->q = p->q, a->q_strides = attn_strides_bhsd((uint32_t)H, (uint32_t)Lq, (uint32_t)D);
    a->k = p->k, a->k_strides = attn_strides_bhsd((uint32_t)H, (uint32_t)Lk, (uint32_t)D);
    a->v = p->v, a->v_strides = attn_strides_bhsd((uint32_t)H, (uint32_t)Lk, (uint32_t)Dv);
    a->out = p->out, a->out_strides = attn_strides_bhsd((uint32_t)H, (uint32_t)Lq, (uint32_t)Dv);
    a->lse = p->lse, a->entropy = p->ent;
    a->weights_mode = ATTN_WEIGHTS_PER_HEAD, a->weights = p->w;
}

static void run(problem *p)
{
    assert_int_equal(attn_create(&p->d, &p->ctx), ATTN_OK);
    attn_status st = attn_forward(p->ctx, &p->a);
    if (st != ATTN_OK)
        fail_msg("%s", attn_last_error(p->ctx));
}

static void free_problem(problem *p)
{
    attn_destroy(p->ctx);
    free(p->q), free(p->k), free(p->v), free(p->out), free(p->lse), free(p->ent), free(p->w);
}

/* Logits of about +-1e4 against the oracle, with and without causal masking. */
static void test_logits_1e4(void **state)
{
    (void)state;
    rng r = {11};
    for (int causal = 0; causal < 2; causal++) {
        problem p;
        setup_problem(&p, 2, 2, 65, 257, 16, 17);
        for (size_t i = 0; i < 2 * 2 * 65 * 16; i++) p.q[i] = (float)(rng_normal(&r) * 50.0);
        for (size_t i = 0; i < 2 * 2 * 257 * 16; i++) p.k[i] = (float)(rng_normal(&r) * 50.0);
        for (size_t i = 0; i < 2 * 2 * 257 * 17; i++) p.v[i] = (float)rng_normal(&r);
        p.d.flags = causal ? ATTN_CAUSAL : 0;
        p.d.scale = 1.0f;
        run(&p);
        ref_problem rp = ref_problem_from(&p.d, &p.a);
        ref_result res;
        ref_attention(&rp, &res);
        double amax = 0;
        for (size_t i = 0; i < 2 * 2 * 65; i++) amax = fmax(amax, fabs(res.lse[i]));
        check_stats cs = {0};
        check_outputs(&rp, &res, &p.d, &p.a, causal ? "1e4 causal" : "1e4", &cs);
        if (cs.failures)
            fail_msg("%s", cs.first_failure);
        print_message("logits up to %.3g: %ld values within tolerance (worst %.3f)\n", amax,
                      cs.compared, cs.worst_ratio);
        assert_true(amax > 5e3);
        ref_free(&res);
        free_problem(&p);
    }
}

/* Scores of +-1e30: finite results, normalised weights, outputs in the hull of visible V. */
static void test_logits_1e30(void **state)
{
    (void)state;
    rng r = {12};
    enum { H = 2, LQ = 33, LK = 70, D = 8, DV = 5 };
    for (int trial = 0; trial < 4; trial++) {
        problem p;
        setup_problem(&p, 1, H, LQ, LK, D, DV);
        /* q . k = +-1e30 exactly representable magnitudes: q, k entries +-1e15 */
        for (size_t i = 0; i < H * LQ * D; i++) p.q[i] = rng_below(&r, 2) ? 1e15f : -1e15f;
        for (size_t i = 0; i < H * LK * D; i++)
            p.k[i] = rng_below(&r, 2) ? 1e15f : -1e15f;
        for (size_t i = 0; i < H * LK * DV; i++) p.v[i] = (float)rng_normal(&r);
        p.d.scale = 1.0f / D;
        p.d.flags = trial & 1 ? ATTN_CAUSAL : 0;
        float *bias = NULL;
        if (trial & 2) { /* a +-1e30 bias on top */
            bias = xcalloc(LQ * LK, sizeof *bias);
            for (size_t i = 0; i < LQ * LK; i++) bias[i] = rng_below(&r, 3) == 0 ? -1e30f : 0.0f;
            p.a.bias = bias, p.a.bias_strides = (attn_strides){0, 0, LK};
        }
        run(&p);
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < LQ; i++) {
                size_t row = (size_t)(h * LQ + i);
                assert_true(isfinite(p.lse[row]));
                assert_true(isfinite(p.ent[row]) && p.ent[row] >= 0.0f);
                double sum = 0;
                int64_t last = (p.d.flags & ATTN_CAUSAL) ? i + LK - LQ : LK - 1;
                for (int64_t j = 0; j < LK; j++) {
                    float wj = p.w[row * LK + j];
                    assert_true(isfinite(wj) && wj >= 0.0f && wj <= 1.0f);
                    if (j > last)
                        assert_true(wj == 0.0f);
                    sum += wj;
                }
                assert_true(fabs(sum - 1.0) < 1e-5);
                for (int64_t dd = 0; dd < DV; dd++) {
                    float o = p.out[row * DV + dd], lo = INFINITY, hi = -INFINITY;
                    for (int64_t j = 0; j <= last; j++) {
                        if (p.w[row * LK + j] == 0.0f) continue;
                        lo = fminf(lo, p.v[(h * LK + j) * DV + dd]);
                        hi = fmaxf(hi, p.v[(h * LK + j) * DV + dd]);
                    }
                    assert_true(isfinite(o));
                    assert_true(o >= lo - 1e-5f * fabsf(lo) && o <= hi + 1e-5f * fabsf(hi));
                }
            }
        free(bias);
        free_problem(&p);
    }
}

/* One key wins by 1e30: out is exactly its value row, weights one-hot, entropy 0. Two keys tie
 * at the top: out is their mean and the entropy ln 2. */
static void test_unambiguous_winners(void **state)
{
    (void)state;
    enum { LK = 300, D = 4, DV = 3 };
    problem p;
    setup_problem(&p, 1, 1, 2, LK, D, DV);
    p.d.scale = 1.0f;
    for (int64_t j = 0; j < LK; j++) {
        p.k[j * D] = (j == 123 || j == 250) ? 1e15f : -1e15f;
        for (int64_t dd = 0; dd < DV; dd++) p.v[j * DV + dd] = (float)(j * 10 + dd);
    }
    p.q[0] = 1e15f;                  /* row 0: keys 123 and 250 tie at 1e30 */
    p.q[D] = 1e15f, p.q[D + 1] = 1e15f; /* row 1: key 250 alone scores 2e30 */
    p.k[250 * D + 1] = 1e15f;
    run(&p);
    for (int64_t dd = 0; dd < DV; dd++)
        assert_true(p.out[dd] == (float)((123 * 10 + dd + 250 * 10 + dd) / 2.0));
    assert_true(fabsf(p.ent[0] - logf(2.0f)) < 1e-6f);
    assert_true(p.w[123] == 0.5f && p.w[250] == 0.5f);
    for (int64_t dd = 0; dd < DV; dd++)
        assert_true(p.out[DV + dd] == (float)(250 * 10 + dd));
    assert_true(p.ent[1] == 0.0f);
    for (int64_t j = 0; j < LK; j++)
        assert_true(p.w[LK + j] == (j == 250 ? 1.0f : 0.0f));
    free_problem(&p);
}

/* Every way a row can end up seeing no key, under both policies; other rows unaffected. */
static void test_fully_masked_rows(void **state)
{
    (void)state;
    rng r = {13};
    enum { B = 2, H = 2, LQ = 70, LK = 300, D = 16, DV = 8 };
    for (int policy = 0; policy < 2; policy++)
        for (int how = 0; how < 5; how++) {
            problem p;
            setup_problem(&p, B, H, LQ, LK, D, DV);
            for (size_t i = 0; i < B * H * LQ * D; i++) p.q[i] = (float)rng_normal(&r);
            for (size_t i = 0; i < B * H * LK * D; i++) p.k[i] = (float)rng_normal(&r);
            for (size_t i = 0; i < B * H * LK * DV; i++) p.v[i] = (float)rng_normal(&r);
            p.d.masked_rows = policy ? ATTN_MASKED_ROWS_NAN : ATTN_MASKED_ROWS_ZERO;
            int32_t lens[B] = {0, LK};
            uint8_t *mask = NULL;
            float *bias = NULL;
            switch (how) {
            case 0: p.a.kv_lens = lens; break;                 /* batch 0 has no keys */
            case 1: p.d.flags = ATTN_CAUSAL, p.a.q_offset = -10; break; /* rows 0..9 */
            case 2: p.d.window_left = 0, p.d.window_right = 0, p.a.q_offset = LK - 5; break;
            case 3:                                             /* mask: even rows all zero */
                mask = xcalloc(LQ * LK, 1);
                for (size_t i = 0; i < LQ * LK; i++) mask[i] = (i / LK) % 2 == 1;
                p.a.mask = mask, p.a.mask_strides = (attn_strides){0, 0, LK};
                break;
            case 4:                                             /* bias -inf on row 3 */
                bias = xcalloc(LQ * LK, sizeof *bias);
                for (size_t j = 0; j < LK; j++) bias[3 * LK + j] = -INFINITY;
                p.a.bias = bias, p.a.bias_strides = (attn_strides){0, 0, LK};
                break;
            }
            run(&p);
            ref_problem rp = ref_problem_from(&p.d, &p.a);
            ref_result res;
            ref_attention(&rp, &res);
            long masked = 0;
            for (size_t i = 0; i < B * H * LQ; i++) masked += res.masked[i];
            assert_true(masked > 0 && masked < B * H * LQ);
            check_stats cs = {0};
            check_outputs(&rp, &res, &p.d, &p.a, "masked rows", &cs);
            if (cs.failures)
                fail_msg("policy %d case %d: %s", policy, how, cs.first_failure);
            for (size_t i = 0; i < B * H * LQ; i++)
                if (res.masked[i])
                    assert_true(p.lse[i] == -INFINITY);
            ref_free(&res);
            free(mask), free(bias);
            free_problem(&p);
        }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logits_1e4),
        cmocka_unit_test(test_logits_1e30),
        cmocka_unit_test(test_unambiguous_winners),
        cmocka_unit_test(test_fully_masked_rows),
    };
    return cmocka_run_group_tests_name("extreme", tests, NULL, NULL);
}
