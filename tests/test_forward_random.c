/*
 * attn_forward against the double-precision oracle over random configurations (fixed seeds):
 * sizes including 1, 3, 17, 63, 65, 257; Lq != Lk; qk_dim != v_dim; GQA and MQA; causal with
 * default and arbitrary offsets; windows; kv_lens; broadcast boolean masks and biases (alone and
 * combined); [B,H,S,D], [B,S,H,D], padded and packed-QKV layouts; broadcast K/V; every optional
 * output; both masked-row policies; decoding-like shapes (the split-key path); 1 to 4 threads.
 * Padding between rows holds NaN, so a read outside a view
 * poisons the result, and padding of the output must come back untouched.
 * Tolerance: the per-element error bound of support/reference.c, times 2.
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

#define NCONFIGS 320

static const int64_t special_sizes[] = {1, 3, 17, 63, 65, 257};

static int64_t pick_len(rng *r)
{
    return rng_below(r, 3) ? special_sizes[rng_below(r, 6)] : 1 + rng_below(r, 300);
}

static int64_t pick_dim(rng *r)
{
    static const int64_t dims[] = {1, 3, 8, 16, 17, 32, 63, 64, 65, 128};
    return rng_below(r, 4) ? dims[rng_below(r, 10)] : 1 + rng_below(r, 130);
}

enum layout { BHSD, BSHD, PADDED, LAYOUTS };

/* A strided tensor [B, H, L, W] inside a buffer of n floats; elements outside the view are
 * `fill` (NaN for inputs, a sentinel for outputs). */
typedef struct tensor {
    float *buf;
    size_t n;
    attn_strides s;
} tensor;

static tensor make_tensor(rng *r, enum layout lay, int64_t B, int64_t H, int64_t L, int64_t W,
                          int broadcast_batch)
{
    tensor t;
    int64_t pad = lay == PADDED ? 1 + rng_below(r, 5) : 0;
    if (lay == BSHD) {
        t.s.head = W;
        t.s.seq = H * W;
        t.s.batch = L * H * W;
    } else {
        t.s.seq = W + pad;
        t.s.head = L * t.s.seq + pad;
        t.s.batch = H * t.s.head + pad;
    }
    if (broadcast_batch)
        t.s.batch = 0;
    t.n = (size_t)((B - 1) * t.s.batch + (H - 1) * t.s.head + (L - 1) * t.s.seq + W);
    t.buf = xcalloc(t.n, sizeof(float));
    return t;
}

/* Fills the view's elements with normal * amp and everything else with `other`. */
static void fill_tensor(rng *r, tensor *t, int64_t B, int64_t H, int64_t L, int64_t W, double amp,
                        float other)
{
    for (size_t i = 0; i < t->n; i++)
        t->buf[i] = other;
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t l = 0; l < L; l++)
                for (int64_t w = 0; w < W; w++)
                    t->buf[b * t->s.batch + h * t->s.head + l * t->s.seq + w] =
                        (float)(rng_normal(r) * amp);
}

/* Broadcastable [B|1, H|1, Lq|bcast, Lk] strides for a mask or bias; sets *n to its size. */
static attn_strides broadcast_shape(rng *r, int64_t B, int64_t H, int64_t Lq, int64_t Lk, size_t *n)
{
    int64_t bb = rng_below(r, 2) ? B : 1, hh = rng_below(r, 2) ? H : 1;
    int64_t rows = rng_below(r, 5) ? Lq : 1;
    int64_t row_stride = rows == 1 ? 0 : Lk + rng_below(r, 3);
    attn_strides s;
    s.seq = row_stride;
    s.head = hh == 1 ? 0 : (rows - 1) * row_stride + Lk;
    s.batch = bb == 1 ? 0 : hh * ((rows - 1) * row_stride + Lk);
    *n = (size_t)(bb * hh * ((rows - 1) * row_stride + Lk));
    return s;
}

typedef struct totals {
    long configs, compared, split;
    double worst_ratio;
} totals;

static void run_config(uint64_t seed, totals *tot)
{
    rng r = {seed};
    attn_desc d;
    attn_desc_init(&d);
    int64_t B = 1 + rng_below(&r, 3);
    int64_t Hkv = 1 + rng_below(&r, 3);
    static const int64_t groups[] = {1, 1, 2, 4};
    int64_t Hq = Hkv * groups[rng_below(&r, 4)];
    int64_t Lq = pick_len(&r), Lk = rng_below(&r, 4) ? pick_len(&r) : Lq;
    int decode = rng_below(&r, 5) == 0;
    if (decode) { /* decoding-like: the split-key path, unless weights are asked for */
        Lq = 1 + rng_below(&r, 16);
        Lk = 512 + rng_below(&r, 1600);
    }
    int64_t D = pick_dim(&r), Dv = rng_below(&r, 3) ? pick_dim(&r) : D;
    int packed = rng_below(&r, 6) == 0;
    if (packed) { /* [B, L, Hq + 2 Hkv, D]: self-attention with D == Dv */
        Lq = Lk = Lq > 300 ? 300 : Lq;
        Dv = D;
    }
    /* keep one configuration's work moderate so the suite stays fast under valgrind */
    while (B * Hq * Lq * Lk * (D + Dv) > 6000000) {
        if (Lq > 1) Lq = (Lq + 1) / 2;
        if (Lk > 1) Lk = (Lk + 1) / 2;
        if (packed) Lk = Lq;
    }
    d.q_heads = (uint32_t)Hq;
    d.kv_heads = (uint32_t)Hkv;
    d.qk_dim = (uint32_t)D;
    d.v_dim = (uint32_t)Dv;
    d.scale = rng_below(&r, 2) ? 0.0f : (float)rng_uniform(&r, -1.5, 2.0);
    d.flags = rng_below(&r, 5) < 2 ? ATTN_CAUSAL : 0;
    d.window_left = rng_below(&r, 4) == 0 ? rng_below(&r, Lk + 2) : -1;
    d.window_right = rng_below(&r, 4) == 0 ? rng_below(&r, Lk + 2) : -1;
    d.masked_rows = rng_below(&r, 4) == 0 ? ATTN_MASKED_ROWS_NAN : ATTN_MASKED_ROWS_ZERO;
    d.threads = (uint32_t)(1 + rng_below(&r, 4));
    double amp = rng_below(&r, 6) == 0 ? 30.0 : 1.0;

    attn_args a;
    attn_args_init(&a);
    a.batch = (uint32_t)B, a.q_len = (uint32_t)Lq, a.kv_len = (uint32_t)Lk;
    tensor q = {0}, k = {0}, v = {0}, o, qkv = {0};
    enum layout lay = (enum layout)rng_below(&r, LAYOUTS);
    int bcast_kv = !packed && B > 1 && rng_below(&r, 8) == 0;
    if (packed) {
        int64_t Hall = Hq + 2 * Hkv;
        qkv = make_tensor(&r, BSHD, B, Hall, Lq, D, 0);
        fill_tensor(&r, &qkv, B, Hall, Lq, D, amp, NAN);
        attn_strides s = attn_strides_bshd((uint32_t)Hall, (uint32_t)Lq, (uint32_t)D);
        a.q = qkv.buf, a.k = qkv.buf + Hq * D, a.v = qkv.buf + (Hq + Hkv) * D;
        a.q_strides = a.k_strides = a.v_strides = s;
    } else {
        q = make_tensor(&r, lay, B, Hq, Lq, D, 0);
        k = make_tensor(&r, lay, B, Hkv, Lk, D, bcast_kv);
        v = make_tensor(&r, lay, B, Hkv, Lk, Dv, bcast_kv);
        fill_tensor(&r, &q, B, Hq, Lq, D, amp, NAN);
        fill_tensor(&r, &k, bcast_kv ? 1 : B, Hkv, Lk, D, 1.0, NAN);
        fill_tensor(&r, &v, bcast_kv ? 1 : B, Hkv, Lk, Dv, 1.0, NAN);
        a.q = q.buf, a.k = k.buf, a.v = v.buf;
        a.q_strides = q.s, a.k_strides = k.s, a.v_strides = v.s;
    }
    o = make_tensor(&r, (enum layout)rng_below(&r, LAYOUTS), B, Hq, Lq, Dv, 0);
    const float sentinel = 12345.0f;
    for (size_t i = 0; i < o.n; i++)
        o.buf[i] = sentinel;
    a.out = o.buf, a.out_strides = o.s;

    if ((d.flags & ATTN_CAUSAL) || d.window_left >= 0 || d.window_right >= 0)
        a.q_offset = rng_below(&r, 2) ? ATTN_Q_OFFSET_DEFAULT
                                      : rng_below(&r, Lq + Lk + 10) - Lq - 5;
    int32_t *kv_lens = NULL;
    if (rng_below(&r, 4) == 0) {
        kv_lens = xcalloc((size_t)B, sizeof *kv_lens);
        for (int64_t b = 0; b < B; b++)
            kv_lens[b] = (int32_t)(rng_below(&r, 6) == 0 ? rng_below(&r, 2) * Lk : rng_below(&r, Lk + 1));
        a.kv_lens = kv_lens;
    }
    uint8_t *mask = NULL;
    float *bias = NULL;
    if (rng_below(&r, 10) < 3) {
        size_t n;
        a.mask_strides = broadcast_shape(&r, B, Hq, Lq, Lk, &n);
        mask = xcalloc(n, 1);
        double density = rng_uniform(&r, 0.05, 1.0);
        for (size_t i = 0; i < n; i++)
            mask[i] = rng_uniform(&r, 0, 1) < density ? (uint8_t)(1 + rng_below(&r, 255)) : 0;
        a.mask = mask;
    }
    if (rng_below(&r, 10) < 3) {
        size_t n;
        a.bias_strides = broadcast_shape(&r, B, Hq, Lq, Lk, &n);
        bias = xcalloc(n, sizeof *bias);
        for (size_t i = 0; i < n; i++)
            bias[i] = rng_below(&r, 20) == 0 ? -INFINITY : (float)(rng_normal(&r) * 3.0);
        a.bias = bias;
    }
    size_t rows = (size_t)(B * Hq * Lq);
    float *lse = NULL, *ent = NULL, *w = NULL;
    if (rng_below(&r, 2))
        a.lse = lse = xcalloc(rows, sizeof *lse);
    if (rng_below(&r, 2))
        a.entropy = ent = xcalloc(rows, sizeof *ent);
    int wm = (int)rng_below(&r, 3);
    if (decode && rng_below(&r, 4))
        wm = 0;
    if (wm) {
        a.weights_mode = wm == 1 ? ATTN_WEIGHTS_PER_HEAD : ATTN_WEIGHTS_HEAD_MEAN;
        a.weights = w = xcalloc(wm == 1 ? rows * Lk : (size_t)(B * Lq * Lk), sizeof *w);
    }

    char label[256];
    snprintf(label, sizeof label,
             "seed %llu: B=%lld Hq=%lld Hkv=%lld Lq=%lld Lk=%lld D=%lld Dv=%lld causal=%d "
             "win=(%lld,%lld) off=%lld lens=%d mask=%d bias=%d layout=%d packed=%d threads=%u",
             (unsigned long long)seed, (long long)B, (long long)Hq, (long long)Hkv, (long long)Lq,
             (long long)Lk, (long long)D, (long long)Dv, (int)(d.flags & ATTN_CAUSAL),
             (long long)d.window_left, (long long)d.window_right, (long long)a.q_offset,
             kv_lens != NULL, mask != NULL, bias != NULL, (int)lay, packed, d.threads);

    attn_ctx *ctx;
    assert_int_equal(attn_create(&d, &ctx), ATTN_OK);
    attn_status st = attn_forward(ctx, &a);
    if (st != ATTN_OK)
        fail_msg("%s: attn_forward returned %s (%s)", label, attn_status_str(st), attn_last_error(ctx));

    ref_problem p = ref_problem_from(&d, &a);
    ref_result res;
    ref_attention(&p, &res);
    check_stats cs = {0};
    check_outputs(&p, &res, &d, &a, label, &cs);
    if (cs.failures)
        fail_msg("%ld of %ld values out of tolerance; first: %s", cs.failures, cs.compared,
                 cs.first_failure);
    /* the output's padding must be untouched */
    unsigned char *in_view = xcalloc(o.n, 1);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < Hq; h++)
            for (int64_t i = 0; i < Lq; i++)
                memset(in_view + b * o.s.batch + h * o.s.head + i * o.s.seq, 1, (size_t)Dv);
    for (size_t i = 0; i < o.n; i++)
        if (!in_view[i] && o.buf[i] != sentinel)
            fail_msg("%s: out padding element %zu was written", label, i);
    free(in_view);
    tot->configs++;
    tot->split += Lq <= 16 && Lk >= 512 && a.weights_mode == ATTN_WEIGHTS_NONE;
    tot->compared += cs.compared;
    if (cs.worst_ratio > tot->worst_ratio)
        tot->worst_ratio = cs.worst_ratio;

    ref_free(&res);
    attn_destroy(ctx);
    free(q.buf), free(k.buf), free(v.buf), free(qkv.buf), free(o.buf);
    free(kv_lens), free(mask), free(bias), free(lse), free(ent), free(w);
}

static void test_random_configurations(void **state)
{
    (void)state;
    totals tot = {0, 0, 0, 0.0};
    for (uint64_t seed = 1; seed <= NCONFIGS; seed++) {
        run_config(seed * 7919u, &tot);
    }
    print_message("%ld configurations (%ld on the split-key path), %ld values compared, "
                  "worst error/tolerance %.3f (%s)\n",
                  tot.configs, tot.split, tot.compared, tot.worst_ratio, attn_kernel_isa());
    assert_true(tot.split >= 30);
    assert_int_equal(tot.configs, NCONFIGS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_random_configurations)};
    return cmocka_run_group_tests_name("forward_random", tests, NULL, NULL);
}
