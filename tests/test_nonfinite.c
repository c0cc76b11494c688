/*
 * NaN and infinities in Q, K, V and the bias: exactly which rows become non-finite and which
 * stay bitwise identical to the run on clean inputs (docs/guide.md, "Non-finite inputs"):
 *   - Q row with NaN or +-Inf: that row, and only it, becomes NaN (out, lse, entropy, weights);
 *   - K row j with NaN: rows that see key j become NaN; rows from which key j is hidden by
 *     causal, window, kv_lens or the boolean mask are unchanged;
 *   - V row j with NaN or Inf: rows that see key j become non-finite; rows of a batch whose
 *     kv_lens excludes j are unchanged (such rows are never read);
 *   - bias NaN on a visible key: that row becomes NaN; on a key hidden by the mask or a
 *     structured bound: unchanged; bias +Inf on a visible key: that row becomes NaN; bias -Inf
 *     hides the key (checked against the oracle in the other suites).
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

#include "support/util.h"

enum { B = 2, H = 2, LQ = 70, LK = 90, D = 16 };
#define ROWS (B * H * LQ)

typedef struct run {
    float out[ROWS * D], lse[ROWS], ent[ROWS], w[ROWS * LK];
} run;

static float q0[B * H * LQ * D], k0[B * H * LK * D], v0[B * H * LK * D], bias0[LQ * LK];
static uint8_t mask0[LQ * LK];
static int32_t lens[B] = {LK, 50};

typedef struct inputs {
    float q[B * H * LQ * D], k[B * H * LK * D], v[B * H * LK * D], bias[LQ * LK];
} inputs;

static void compute(const inputs *in, int use_mask, run *r)
{
    attn_desc d;
    attn_desc_init(&d);
    d.q_heads = d.kv_heads = H, d.qk_dim = d.v_dim = D;
    d.flags = ATTN_CAUSAL;
    d.threads = 2;
    attn_ctx *ctx;
    assert_int_equal(attn_create(&d, &ctx), ATTN_OK);
    attn_args a;
    attn_args_init(&a);
    a.batch = B, a.q_len = LQ, a.kv_len = LK;
    a.q = in->q, a.q_strides = attn_strides_bhsd(H, LQ, D);
    a.k = in->k, a.k_strides = attn_strides_bhsd(H, LK, D);
    a.v = in->v, a.v_strides = attn_strides_bhsd(H, LK, D);
    a.out = r->out, a.out_strides = attn_strides_bhsd(H, LQ, D);
    a.bias = in->bias, a.bias_strides = (attn_strides){0, 0, LK};
    if (use_mask)
        a.mask = mask0, a.mask_strides = (attn_strides){0, 0, LK};
    a.kv_lens = lens;
    a.lse = r->lse, a.entropy = r->ent;
    a.weights_mode = ATTN_WEIGHTS_PER_HEAD, a.weights = r->w;
    assert_int_equal(attn_forward(ctx, &a), ATTN_OK);
    attn_destroy(ctx);
}

/* Does row (b, h, i) see key j? The causal default offset is LK - LQ. */
static int sees(int b, int i, int j, int use_mask)
{
    return j <= i + (LK - LQ) && j < lens[b] && (!use_mask || mask0[i * LK + j]);
}

static int row_equal(const run *x, const run *y, int row)
{
    return memcmp(x->out + row * D, y->out + row * D, D * sizeof(float)) == 0 &&
           memcmp(&x->lse[row], &y->lse[row], sizeof(float)) == 0 &&
           memcmp(&x->ent[row], &y->ent[row], sizeof(float)) == 0 &&
           memcmp(x->w + row * LK, y->w + row * LK, LK * sizeof(float)) == 0;
}

static int row_all_nan(const run *x, int row)
{
    for (int d = 0; d < D; d++)
        if (!isnan(x->out[row * D + d]))
            return 0;
    return isnan(x->lse[row]) && isnan(x->ent[row]);
}

static int row_out_nonfinite(const run *x, int row)
{
    for (int d = 0; d < D; d++)
        if (!isfinite(x->out[row * D + d]))
            return 1;
    return 0;
}

static run *clean[2];
static inputs *base;

static int setup(void **state)
{
    (void)state;
    rng r = {21};
    for (size_t i = 0; i < sizeof q0 / sizeof q0[0]; i++) q0[i] = (float)rng_normal(&r);
    for (size_t i = 0; i < sizeof k0 / sizeof k0[0]; i++) k0[i] = (float)rng_normal(&r);
    for (size_t i = 0; i < sizeof v0 / sizeof v0[0]; i++) v0[i] = (float)rng_normal(&r);
    for (size_t i = 0; i < LQ * LK; i++) bias0[i] = (float)rng_normal(&r), mask0[i] = rng_below(&r, 3) != 0;
    base = xcalloc(1, sizeof *base);
    memcpy(base->q, q0, sizeof q0), memcpy(base->k, k0, sizeof k0);
    memcpy(base->v, v0, sizeof v0), memcpy(base->bias, bias0, sizeof bias0);
    for (int m = 0; m < 2; m++) {
        clean[m] = xcalloc(1, sizeof(run));
        compute(base, m, clean[m]);
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    free(clean[0]), free(clean[1]), free(base);
    return 0;
}

static void test_query(void **state)
{
    (void)state;
    const float bad[] = {NAN, INFINITY, -INFINITY};
    for (int t = 0; t < 3; t++) {
        inputs *in = xcalloc(1, sizeof *in);
        *in = *base;
        int b = 1, h = 0, i = 30;
        in->q[((b * H + h) * LQ + i) * D + 3] = bad[t];
        run *r = xcalloc(1, sizeof *r);
        compute(in, 0, r);
        int bad_row = (b * H + h) * LQ + i;
        for (int row = 0; row < ROWS; row++) {
            if (row == bad_row)
                assert_true(row_all_nan(r, row));
            else if (!row_equal(r, clean[0], row))
                fail_msg("value %g in one query changed row %d", (double)bad[t], row);
        }
        free(in), free(r);
    }
}

static void test_key(void **state)
{
    (void)state;
    for (int m = 0; m < 2; m++) {
        inputs *in = xcalloc(1, sizeof *in);
        *in = *base;
        int b = 0, h = 1, j = 40;
        in->k[((b * H + h) * LK + j) * D + 5] = NAN;
        run *r = xcalloc(1, sizeof *r);
        compute(in, m, r);
        int poisoned = 0, kept = 0;
        for (int bb = 0; bb < B; bb++)
            for (int hh = 0; hh < H; hh++)
                for (int i = 0; i < LQ; i++) {
                    int row = (bb * H + hh) * LQ + i;
                    if (bb == b && hh == h && sees(bb, i, j, m)) {
                        assert_true(row_all_nan(r, row));
                        poisoned++;
                    } else {
                        assert_true(row_equal(r, clean[m], row));
                        kept += bb == b && hh == h;
                    }
                }
        print_message("NaN in key %d (%s): %d rows that see it are NaN, %d of its head's rows "
                      "that do not see it are unchanged\n",
                      j, m ? "with a mask" : "causal only", poisoned, kept);
        assert_true(poisoned > 0 && kept > 0);
        free(in), free(r);
    }
}

static void test_value(void **state)
{
    (void)state;
    const float bad[] = {NAN, INFINITY};
    for (int t = 0; t < 2; t++) {
        inputs *in = xcalloc(1, sizeof *in);
        *in = *base;
        /* batch 1 sees keys < 50: row 60 of V in batch 1 is never read */
        in->v[((1 * H + 0) * LK + 60) * D + 2] = bad[t];
        /* batch 0, head 1, key 30: seen by rows 10 and later (causal, offset 20) */
        in->v[((0 * H + 1) * LK + 30) * D + 7] = bad[t];
        run *r = xcalloc(1, sizeof *r);
        compute(in, 0, r);
        for (int i = 0; i < LQ; i++) {
            int row1 = (1 * H + 0) * LQ + i, row0 = (0 * H + 1) * LQ + i;
            assert_true(row_equal(r, clean[0], row1));          /* excluded by kv_lens */
            if (sees(0, i, 30, 0))
                assert_true(row_out_nonfinite(r, row0));
        }
        for (int row = 0; row < ROWS; row++) /* heads and batches without a bad value */
            if (row / LQ != 1 && row / LQ != 2)
                assert_true(row_equal(r, clean[0], row));
        free(in), free(r);
    }
}

static void test_bias(void **state)
{
    (void)state;
    /* NaN bias on (row 5, key 3): visible (causal 5 + 20 >= 3, mask allows?) and on (row 6,
     * key 80): beyond the causal bound of row 6 */
    for (int m = 0; m < 2; m++) {
        inputs *in = xcalloc(1, sizeof *in);
        *in = *base;
        in->bias[5 * LK + 3] = NAN;
        in->bias[6 * LK + 80] = NAN;
        in->bias[9 * LK + 2] = INFINITY;
        run *r = xcalloc(1, sizeof *r);
        compute(in, m, r);
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
                for (int i = 0; i < LQ; i++) {
                    int row = (b * H + h) * LQ + i;
                    int nan_row = (i == 5 && sees(b, 5, 3, m)) || (i == 9 && sees(b, 9, 2, m));
                    if (nan_row)
                        assert_true(row_all_nan(r, row));
                    else
                        assert_true(row_equal(r, clean[m], row));
                }
        free(in), free(r);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_query),
        cmocka_unit_test(test_key),
        cmocka_unit_test(test_value),
        cmocka_unit_test(test_bias),
    };
    return cmocka_run_group_tests_name("nonfinite", tests, setup, teardown);
}
