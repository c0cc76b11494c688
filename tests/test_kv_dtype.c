/*
 * K and V stored as float16 or bfloat16 (desc.kv_dtype): results must be those of attention on
 * the rounded values, within the float32 tolerance. The test rounds random data to 16 bits
 * itself (the compiler's _Float16 for binary16, round-to-nearest-even on the bits for
 * bfloat16), widens the bits back with its own code, and gives those floats to the float64
 * oracle; the library reads the 16-bit arrays. 200 random configurations of the forward (block
 * and split-key paths, masks, biases, GQA, strided 16-bit views), 60 of the backward against the
 * backward oracle, bitwise thread invariance, and the errors.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* The compiler's binary16 type: an independent conversion to check against. */
__extension__ typedef _Float16 test_half;

#include <attn/attn.h>

#include "support/check.h"
#include "support/reference_backward.h"
#include "support/util.h"

static uint16_t round16(float x, uint32_t kv_dtype)
{
    if (kv_dtype == ATTN_KV_F16) {
        test_half h = (test_half)x;
        uint16_t b;
        memcpy(&b, &h, 2);
        return b;
    }
    uint32_t u;
    memcpy(&u, &x, 4);
    u += 0x7FFFu + ((u >> 16) & 1u); /* round to nearest even (no NaN in the data) */
    return (uint16_t)(u >> 16);
}

static float widen16(uint16_t b, uint32_t kv_dtype)
{
    if (kv_dtype == ATTN_KV_F16) {
        test_half h;
        memcpy(&h, &b, 2);
        return (float)h;
    }
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* A [B, H, L, W] 16-bit tensor with padded rows, and the float tensor of its widened values
 * in the same layout. */
typedef struct half_tensor {
    uint16_t *bits;
    float *values;
    size_t n;
    attn_strides s;
} half_tensor;

static half_tensor make_half(rng *r, int64_t B, int64_t H, int64_t L, int64_t W, uint32_t kv_dtype)
{
    half_tensor t;
    int64_t pad = rng_below(r, 3);
    t.s.seq = W + pad, t.s.head = L * t.s.seq, t.s.batch = H * t.s.head;
    t.n = (size_t)(B * t.s.batch);
    t.bits = xcalloc(t.n, sizeof *t.bits), t.values = xcalloc(t.n, sizeof *t.values);
    for (size_t i = 0; i < t.n; i++) {
        t.bits[i] = round16((float)rng_normal(r), kv_dtype);
        t.values[i] = widen16(t.bits[i], kv_dtype);
    }
    return t;
}

typedef struct totals {
    long configs, split, compared;
    double worst;
} totals;

static void run_config(uint64_t seed, int backward, totals *tot)
{
    rng r = {seed};
    uint32_t kv_dtype = rng_below(&r, 2) ? ATTN_KV_F16 : ATTN_KV_BF16;
    int64_t B = 1 + rng_below(&r, 2), Hkv = 1 + rng_below(&r, 2), Hq = Hkv * (1 + rng_below(&r, 3));
    int64_t Lq = 1 + rng_below(&r, 120), Lk = 1 + rng_below(&r, 300);
    int decode = rng_below(&r, 3) == 0;
    if (decode)
        Lq = 1 + rng_below(&r, 12), Lk = 512 + rng_below(&r, 1500);
    if (backward)
        Lk = Lk > 400 ? 400 : Lk;
    int64_t D = 1 + rng_below(&r, 70), Dv = 1 + rng_below(&r, 70);
    attn_desc d;
    attn_desc_init(&d);
    d.q_heads = (uint32_t)Hq, d.kv_heads = (uint32_t)Hkv, d.qk_dim = (uint32_t)D, d.v_dim = (uint32_t)Dv;
    d.kv_dtype = kv_dtype;
    d.flags = rng_below(&r, 3) == 0 ? ATTN_CAUSAL : 0;
    d.threads = (uint32_t)(1 + rng_below(&r, 3));
    d.ops = ATTN_OP_FORWARD | ATTN_OP_BACKWARD;
    float *q = random_floats(&r, (size_t)(B * Hq * Lq * D), 1.0);
    half_tensor k = make_half(&r, B, Hkv, Lk, D, kv_dtype), v = make_half(&r, B, Hkv, Lk, Dv, kv_dtype);
    size_t rows = (size_t)(B * Hq * Lq);
    float *o = xcalloc(rows * Dv, sizeof(float)), *lse = xcalloc(rows, sizeof(float));
    attn_args a;
    attn_args_init(&a);
    a.batch = (uint32_t)B, a.q_len = (uint32_t)Lq, a.kv_len = (uint32_t)Lk;
    a.q = q, a.q_strides = attn_strides_bhsd(d.q_heads, a.q_len, d.qk_dim);
    a.k = (const float *)(const void *)k.bits, a.k_strides = k.s;
    a.v = (const float *)(const void *)v.bits, a.v_strides = v.s;
    a.out = o, a.out_strides = attn_strides_bhsd(d.q_heads, a.q_len, d.v_dim);
    a.lse = lse;
    float *bias = NULL;
    if (rng_below(&r, 4) == 0) {
        bias = random_floats(&r, rows * Lk, 1.0);
        a.bias = bias, a.bias_strides = attn_strides_bhsd(d.q_heads, a.q_len, a.kv_len);
    }
    attn_ctx *ctx;
    assert_int_equal(attn_create(&d, &ctx), ATTN_OK);
    assert_int_equal(attn_forward(ctx, &a), ATTN_OK);
    char label[200];
    snprintf(label, sizeof label, "seed %llu: %s B=%lld Hq=%lld Hkv=%lld Lq=%lld Lk=%lld D=%lld Dv=%lld",
             (unsigned long long)seed, kv_dtype == ATTN_KV_F16 ? "f16" : "bf16", (long long)B,
             (long long)Hq, (long long)Hkv, (long long)Lq, (long long)Lk, (long long)D, (long long)Dv);
    /* the oracle sees the widened floats */
    attn_args fa = a;
    fa.k = k.values, fa.v = v.values;
    ref_problem p = ref_problem_from(&d, &fa);
    ref_result res;
    ref_attention(&p, &res);
    check_stats cs = {0};
    check_outputs(&p, &res, &d, &fa, label, &cs);
    if (cs.failures)
        fail_msg("%ld of %ld out of tolerance; first: %s", cs.failures, cs.compared, cs.first_failure);
    tot->compared += cs.compared;
    tot->worst = cs.worst_ratio > tot->worst ? cs.worst_ratio : tot->worst;
    if (backward) {
        float *dout = random_floats(&r, rows * Dv, 1.0), *dq = xcalloc(rows * D, sizeof(float));
        float *dk = xcalloc((size_t)(B * Hkv * Lk * D), sizeof(float));
        float *dv = xcalloc((size_t)(B * Hkv * Lk * Dv), sizeof(float));
        attn_backward_args g;
        attn_backward_args_init(&g);
        g.batch = a.batch, g.q_len = a.q_len, g.kv_len = a.kv_len;
        g.q = q, g.q_strides = a.q_strides, g.k = a.k, g.k_strides = a.k_strides;
        g.v = a.v, g.v_strides = a.v_strides, g.out = o, g.out_strides = a.out_strides;
        g.dout = dout, g.dout_strides = a.out_strides, g.lse = lse, g.bias = a.bias, g.bias_strides = a.bias_strides;
        g.dq = dq, g.dq_strides = a.q_strides;
        g.dk = dk, g.dk_strides = attn_strides_bhsd(d.kv_heads, a.kv_len, d.qk_dim);
        g.dv = dv, g.dv_strides = attn_strides_bhsd(d.kv_heads, a.kv_len, d.v_dim);
        assert_int_equal(attn_backward(ctx, &g), ATTN_OK);
        double *gd = xcalloc(rows * Dv, sizeof(double));
        for (size_t i = 0; i < rows * Dv; i++)
            gd[i] = dout[i];
        ref_grads rg;
        ref_backward(&p, &res, gd, &rg);
        grad_stats gs = {0, 0, 0.0, ""};
        check_grad("dq", dq, g.dq_strides, B, Hq, Lq, D, rg.dq, rg.dq_tol, label, &gs);
        check_grad("dk", dk, g.dk_strides, B, Hkv, Lk, D, rg.dk, rg.dk_tol, label, &gs);
        check_grad("dv", dv, g.dv_strides, B, Hkv, Lk, Dv, rg.dv, rg.dv_tol, label, &gs);
        if (gs.failures)
            fail_msg("backward: %ld of %ld out of tolerance; first: %s", gs.failures, gs.compared, gs.first_failure);
        tot->compared += gs.compared;
        ref_grads_free(&rg);
        free(gd), free(dout), free(dq), free(dk), free(dv);
    }
    tot->configs++;
    tot->split += decode;
    ref_free(&res);
    attn_destroy(ctx);
    free(q), free(o), free(lse), free(bias), free(k.bits), free(k.values), free(v.bits), free(v.values);
}

static void test_forward(void **state)
{
    (void)state;
    totals tot = {0, 0, 0, 0.0};
    for (uint64_t seed = 1; seed <= 200; seed++)
        run_config(seed * 40503u, 0, &tot);
    print_message("%ld forward configurations (%ld on the split-key path), %ld values compared, "
                  "worst error/tolerance %.3f (%s)\n", tot.configs, tot.split, tot.compared,
                  tot.worst, attn_kernel_isa());
    assert_true(tot.split >= 30);
}

static void test_backward(void **state)
{
    (void)state;
    totals tot = {0, 0, 0, 0.0};
    for (uint64_t seed = 1; seed <= 60; seed++)
        run_config(seed * 7777u + 1, 1, &tot);
    print_message("%ld backward configurations, %ld values compared\n", tot.configs, tot.compared);
}

static void test_threads_and_errors(void **state)
{
    (void)state;
    enum { B = 1, H = 4, L = 700, D = 64 };
    rng r = {5};
    float *q = random_floats(&r, B * H * L * D, 1.0);
    half_tensor k = make_half(&r, B, H, L, D, ATTN_KV_F16), v = make_half(&r, B, H, L, D, ATTN_KV_F16);
    float *o[4];
    for (uint32_t t = 1; t <= 4; t++) {
        attn_desc d;
        attn_desc_init(&d);
        d.q_heads = d.kv_heads = H, d.qk_dim = d.v_dim = D, d.kv_dtype = ATTN_KV_F16, d.threads = t;
        attn_ctx *ctx;
        assert_int_equal(attn_create(&d, &ctx), ATTN_OK);
        for (int lq = 0; lq < 2; lq++) { /* a prefill (block path) and a decode (split path) */
            attn_args a;
            attn_args_init(&a);
            a.batch = B, a.q_len = lq ? 1 : L, a.kv_len = L;
            a.q = q, a.q_strides = attn_strides_bhsd(H, a.q_len, D);
            a.k = (const float *)(const void *)k.bits, a.k_strides = k.s;
            a.v = (const float *)(const void *)v.bits, a.v_strides = v.s;
            float *out = xcalloc(B * H * L * D, sizeof(float));
            a.out = out, a.out_strides = attn_strides_bhsd(H, a.q_len, D);
            assert_int_equal(attn_forward(ctx, &a), ATTN_OK);
            if (t == 1 && lq == 0)
                o[0] = out;
            else if (lq == 0) {
                assert_memory_equal(o[0], out, B * H * L * D * sizeof(float));
                free(out);
            } else {
                static float first_decode[H * D];
                if (t == 1)
                    memcpy(first_decode, out, sizeof first_decode);
                else
                    assert_memory_equal(first_decode, out, sizeof first_decode);
                free(out);
            }
        }
        attn_destroy(ctx);
    }
    free(o[0]);
    attn_desc d;
    attn_desc_init(&d);
    d.kv_dtype = 3;
    attn_ctx *ctx;
    assert_int_equal(attn_create(&d, &ctx), ATTN_ERR_BAD_OPTION);
    assert_non_null(strstr(attn_last_error(NULL), "kv_dtype"));
    /* an f16 context reserves the conversion tiles; a float one does not */
    attn_desc_init(&d);
    d.threads = 1;
    size_t f32 = attn_workspace_size(&d);
    d.kv_dtype = ATTN_KV_BF16;
    assert_true(attn_workspace_size(&d) == f32 + 2 * 4 * 256 * 64);
    free(q), free(k.bits), free(k.values), free(v.bits), free(v.values);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_forward), cmocka_unit_test(test_backward),
                                       cmocka_unit_test(test_threads_and_errors)};
    return cmocka_run_group_tests_name("kv_dtype", tests, NULL, NULL);
}
