/*
 * The K/V cache (attn_kv_cache.h) and attention over it (attn_forward_cache).
 *
 * A model kept by the test holds every sequence's tokens as plain arrays (rounded to the
 * cache's dtype by the test's own conversion: the compiler's _Float16, round-to-nearest-even on
 * the bits for bfloat16). Random runs of appends, truncations, forks, reorders and resets are
 * applied to the cache and the model alike; after each step the lengths must agree, and
 * attention over every sequence must agree with
 *   - the float64 oracle on the model's tokens, within the float32 tolerance, and
 *   - attn_forward on the model's tokens laid out as tensors (same dtype, same key extent),
 *     bit for bit when block_tokens is a multiple of the key tile (the same tiles are read).
 * Then: random configurations of attention over a cache (decode, chunked prefill and
 * speculative verification shapes; GQA; causal, windows, masks, biases; every output; explicit
 * and per-sequence offsets), bitwise thread invariance, the block accounting of fork / copy on
 * write / truncate / reorder (no block copied by a fork, one by the first append into a shared
 * partial block), capacity errors that change nothing, the static form, allocation failure,
 * and every error path of every function with nothing written.
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

__extension__ typedef _Float16 test_half;

#include <attn/attn.h>
#include <attn/attn_kv_cache.h>

#include "support/check.h"
#include "support/util.h"

/* ---- the test's own rounding ---------------------------------------------------------------- */

static uint16_t round16(float x, uint32_t dtype)
{
    if (dtype == ATTN_KV_F16) {
        test_half h = (test_half)x;
        uint16_t b;
        memcpy(&b, &h, 2);
        return b;
    }
    uint32_t u;
    memcpy(&u, &x, 4);
    u += 0x7FFFu + ((u >> 16) & 1u); /* no NaN in the data */
    return (uint16_t)(u >> 16);
}

static float widen16(uint16_t b, uint32_t dtype)
{
    if (dtype == ATTN_KV_F16) {
        test_half h;
        memcpy(&h, &b, 2);
        return (float)h;
    }
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- the model -------------------------------------------------------------------------------- */

typedef struct model {
    uint32_t S, Hkv, Dk, Dv, dtype;
    int64_t max_len;
    int64_t *len;
    float **k, **v; /* [S] of [Hkv][max_len][D]: the stored (rounded) values */
} model;

static void model_init(model *m, const attn_kv_cache_desc *d, int64_t max_len)
{
    m->S = d->max_seqs, m->Hkv = d->kv_heads, m->Dk = d->qk_dim, m->Dv = d->v_dim;
    m->dtype = d->dtype;
    m->max_len = max_len;
    m->len = xcalloc(m->S, sizeof *m->len);
    m->k = xcalloc(m->S, sizeof *m->k);
    m->v = xcalloc(m->S, sizeof *m->v);
    for (uint32_t s = 0; s < m->S; s++) {
        m->k[s] = xcalloc((size_t)(m->Hkv * max_len * m->Dk), sizeof(float));
        m->v[s] = xcalloc((size_t)(m->Hkv * max_len * m->Dv), sizeof(float));
    }
}

static void model_free(model *m)
{
    for (uint32_t s = 0; s < m->S; s++)
        free(m->k[s]), free(m->v[s]);
    free(m->k), free(m->v), free(m->len);
}

static float stored(const model *m, float x)
{
    return m->dtype == ATTN_KV_F32 ? x : widen16(round16(x, m->dtype), m->dtype);
}

/* Tokens [n, Hkv, D] (token-major, as attn_strides_bshd describes) appended to the model. */
static void model_append(model *m, uint32_t s, int64_t n, const float *k, const float *v)
{
    for (int64_t t = 0; t < n; t++)
        for (uint32_t g = 0; g < m->Hkv; g++) {
            for (uint32_t d = 0; d < m->Dk; d++)
                m->k[s][(g * m->max_len + m->len[s] + t) * m->Dk + d] =
                    stored(m, k[(t * m->Hkv + g) * m->Dk + d]);
            for (uint32_t d = 0; d < m->Dv; d++)
                m->v[s][(g * m->max_len + m->len[s] + t) * m->Dv + d] =
                    stored(m, v[(t * m->Hkv + g) * m->Dv + d]);
        }
    m->len[s] += n;
}

static void model_copy(model *m, uint32_t dst, uint32_t src)
{
    if (dst == src)
        return;
    memcpy(m->k[dst], m->k[src], (size_t)(m->Hkv * m->max_len * m->Dk) * sizeof(float));
    memcpy(m->v[dst], m->v[src], (size_t)(m->Hkv * m->max_len * m->Dv) * sizeof(float));
    m->len[dst] = m->len[src];
}

/* ---- checking attention over the cache against the model ---------------------------------- */

typedef struct totals {
    long calls, compared, bitwise;
    double worst;
} totals;

typedef struct call_options {
    uint32_t q_len;
    int causal;
    int64_t window_left, window_right;
    int64_t q_offset;       /* ATTN_Q_OFFSET_DEFAULT: per sequence */
    int with_mask, with_bias, with_weights, with_lse, with_entropy;
    uint32_t q_heads;
    uint32_t threads;
    uint32_t kv_len;        /* 0: the longest */
} call_options;

static attn_desc make_desc(const model *m, const call_options *o, uint32_t dtype)
{
    attn_desc d;
    attn_desc_init(&d);
    d.q_heads = o->q_heads;
    d.kv_heads = m->Hkv;
    d.qk_dim = m->Dk;
    d.v_dim = m->Dv;
    d.flags = o->causal ? ATTN_CAUSAL : 0;
    d.window_left = o->window_left;
    d.window_right = o->window_right;
    d.threads = o->threads;
    d.kv_dtype = dtype;
    return d;
}

/* Attention of random queries over the sequences `ids` (batch n): the cache's result against the
 * oracle per batch entry, and against attn_forward on the model's tensors. */
static void check_attention(rng *r, const model *m, const attn_kv_cache *cache,
                            const uint32_t *ids, uint32_t n, const call_options *o,
                            int expect_bitwise, totals *tot)
{
    int64_t longest = 0;
    for (uint32_t b = 0; b < n; b++)
        longest = m->len[ids[b]] > longest ? m->len[ids[b]] : longest;
    int64_t Lk = o->kv_len ? o->kv_len : longest;
    if (Lk == 0)
        return;
    int64_t Hq = o->q_heads, Lq = o->q_len, Dk = m->Dk, Dv = m->Dv, Hkv = m->Hkv;
    attn_desc d = make_desc(m, o, m->dtype);
    attn_ctx *ctx;
    assert_int_equal(attn_create(&d, &ctx), ATTN_OK);

    float *q = random_floats(r, (size_t)(n * Hq * Lq * Dk), 1.0);
    float *out = xcalloc((size_t)(n * Hq * Lq * Dv), sizeof(float));
    float *weights = o->with_weights ? xcalloc((size_t)(n * Hq * Lq * Lk), sizeof(float)) : NULL;
    float *lse = o->with_lse ? xcalloc((size_t)(n * Hq * Lq), sizeof(float)) : NULL;
    float *ent = o->with_entropy ? xcalloc((size_t)(n * Hq * Lq), sizeof(float)) : NULL;
    uint8_t *mask = NULL;
    float *bias = NULL;
    if (o->with_mask) {
        mask = xcalloc((size_t)(n * Hq * Lq * Lk), 1);
        for (int64_t i = 0; i < n * Hq * Lq * Lk; i++)
            mask[i] = rng_below(r, 5) != 0;
    }
    if (o->with_bias)
        bias = random_floats(r, (size_t)(n * Hq * Lq * Lk), 1.0);

    attn_args a;
    attn_args_init(&a);
    a.batch = n;
    a.q_len = (uint32_t)Lq;
    a.kv_len = o->kv_len;
    a.q = q;
    a.q_strides = attn_strides_bhsd((uint32_t)Hq, (uint32_t)Lq, (uint32_t)Dk);
    a.out = out;
    a.out_strides = attn_strides_bhsd((uint32_t)Hq, (uint32_t)Lq, (uint32_t)Dv);
    a.q_offset = o->q_offset;
    a.mask = mask;
    a.mask_strides = attn_strides_bhsd((uint32_t)Hq, (uint32_t)Lq, (uint32_t)Lk);
    a.bias = bias;
    a.bias_strides = a.mask_strides;
    a.weights_mode = weights ? ATTN_WEIGHTS_PER_HEAD : ATTN_WEIGHTS_NONE;
    a.weights = weights;
    a.lse = lse;
    a.entropy = ent;
    attn_status st = attn_forward_cache(ctx, &a, cache, ids);
    if (st != ATTN_OK)
        fail_msg("attn_forward_cache: %s", attn_last_error(ctx));
    tot->calls++;

    /* per batch entry: the oracle, and attn_forward on tensors padded to the same extent */
    float *kt = xcalloc((size_t)(Hkv * Lk * Dk), sizeof(float));
    float *vt = xcalloc((size_t)(Hkv * Lk * Dv), sizeof(float));
    uint16_t *kh = xcalloc((size_t)(Hkv * Lk * Dk), 2), *vh = xcalloc((size_t)(Hkv * Lk * Dv), 2);
    float *out2 = xcalloc((size_t)(Hq * Lq * Dv), sizeof(float));
    float *scratch_w = xcalloc((size_t)(Hq * Lq * Lk), sizeof(float));
    float *scratch_l = xcalloc((size_t)(Hq * Lq), sizeof(float));
    float *scratch_e = xcalloc((size_t)(Hq * Lq), sizeof(float));
    for (uint32_t b = 0; b < n; b++) {
        uint32_t s = ids[b];
        int32_t len = (int32_t)m->len[s];
        for (int64_t g = 0; g < Hkv; g++) {
            memcpy(kt + g * Lk * Dk, m->k[s] + g * m->max_len * Dk, (size_t)(len * Dk) * sizeof(float));
            memcpy(vt + g * Lk * Dv, m->v[s] + g * m->max_len * Dv, (size_t)(len * Dv) * sizeof(float));
        }
        for (int64_t i = 0; i < Hkv * Lk * Dk; i++)
            kh[i] = round16(kt[i], m->dtype);
        for (int64_t i = 0; i < Hkv * Lk * Dv; i++)
            vh[i] = round16(vt[i], m->dtype);
        attn_args ab = a;
        ab.batch = 1;
        ab.kv_len = (uint32_t)Lk;
        ab.kv_lens = &len;
        ab.q_offset = o->q_offset == ATTN_Q_OFFSET_DEFAULT ? len - Lq : o->q_offset;
        ab.q = q + b * a.q_strides.batch;
        ab.out = out + b * a.out_strides.batch;
        ab.mask = mask ? mask + b * a.mask_strides.batch : NULL;
        ab.bias = bias ? bias + b * a.bias_strides.batch : NULL;
        ab.weights = weights ? weights + b * Hq * Lq * Lk : NULL;
        ab.lse = lse ? lse + b * Hq * Lq : NULL;
        ab.entropy = ent ? ent + b * Hq * Lq : NULL;
        ab.k = kt;
        ab.v = vt;
        ab.k_strides = attn_strides_bhsd((uint32_t)Hkv, (uint32_t)Lk, (uint32_t)Dk);
        ab.v_strides = attn_strides_bhsd((uint32_t)Hkv, (uint32_t)Lk, (uint32_t)Dv);
        attn_desc d32 = make_desc(m, o, ATTN_KV_F32);
        ref_problem p = ref_problem_from(&d32, &ab);
        ref_result res;
        ref_attention(&p, &res);
        check_stats cs = {0};
        check_outputs(&p, &res, &d32, &ab, "cache", &cs);
        ref_free(&res);
        if (cs.failures)
            fail_msg("batch %u (seq %u, %d tokens): %s", b, s, len, cs.first_failure);
        tot->compared += cs.compared;
        tot->worst = cs.worst_ratio > tot->worst ? cs.worst_ratio : tot->worst;

        if (expect_bitwise) { /* the same call on tensors: the same bits */
            attn_args at = ab;
            if (m->dtype != ATTN_KV_F32) {
                at.k = (const float *)(const void *)kh;
                at.v = (const float *)(const void *)vh;
            }
            at.out = out2; /* the same outputs requested (they choose the path), elsewhere */
            at.weights = weights ? scratch_w : NULL;
            at.lse = lse ? scratch_l : NULL;
            at.entropy = ent ? scratch_e : NULL;
            at.out_strides = attn_strides_bhsd((uint32_t)Hq, (uint32_t)Lq, (uint32_t)Dv);
            assert_int_equal(attn_forward(ctx, &at), ATTN_OK);
            if (memcmp(out2, ab.out, (size_t)(Hq * Lq * Dv) * sizeof(float)) != 0)
                fail_msg("batch %u: the cache's result differs from attn_forward's on the same "
                         "tokens", b);
            tot->bitwise++;
        }
    }
    free(kt), free(vt), free(kh), free(vh), free(out2), free(scratch_w), free(scratch_l),
        free(scratch_e);
    free(q), free(out), free(weights), free(lse), free(ent), free(mask), free(bias);
    attn_destroy(ctx);
}

/* ---- random operations against the model ---------------------------------------------------- */

static attn_kv_cache *make_cache(const attn_kv_cache_desc *d)
{
    attn_kv_cache *c = NULL;
    if (attn_kv_cache_create(d, &c) != ATTN_OK)
        fail_msg("attn_kv_cache_create: %s", attn_last_error(NULL));
    return c;
}

static void append_random(rng *r, attn_kv_cache *c, model *m, uint32_t s, int64_t n)
{
    float *k = random_floats(r, (size_t)(n * m->Hkv * m->Dk), 1.0);
    float *v = random_floats(r, (size_t)(n * m->Hkv * m->Dv), 1.0);
    attn_status st = attn_kv_cache_append(c, s, (uint32_t)n, k,
                                          attn_strides_bshd(m->Hkv, (uint32_t)n, m->Dk), v,
                                          attn_strides_bshd(m->Hkv, (uint32_t)n, m->Dv));
    if (st != ATTN_OK)
        fail_msg("append %lld to %u: %s", (long long)n, s, attn_kv_cache_last_error(c));
    model_append(m, s, n, k, v);
    free(k), free(v);
}

static void run_operations(uint64_t seed, totals *tot)
{
    rng r = {seed};
    static const uint32_t blocks[] = {1, 5, 16, 64, 256, 512};
    static const uint32_t dtypes[] = {ATTN_KV_F32, ATTN_KV_F16, ATTN_KV_BF16};
    attn_kv_cache_desc d;
    attn_kv_cache_desc_init(&d);
    d.kv_heads = (uint32_t)(1 + rng_below(&r, 3));
    d.qk_dim = (uint32_t)(1 + rng_below(&r, 40));
    d.v_dim = (uint32_t)(1 + rng_below(&r, 40));
    d.dtype = dtypes[rng_below(&r, 3)];
    d.max_seqs = (uint32_t)(1 + rng_below(&r, 6));
    d.block_tokens = blocks[rng_below(&r, 6)];
    int64_t max_len = 64 + rng_below(&r, 1200);
    d.max_len = (uint64_t)max_len;
    /* room for every sequence at max_len (partial last blocks included) */
    d.capacity = (uint64_t)((max_len + d.block_tokens - 1) / d.block_tokens * d.block_tokens * d.max_seqs);
    attn_kv_cache *c = make_cache(&d);
    model m;
    model_init(&m, &d, max_len);
    call_options o = {1, 0, -1, -1, ATTN_Q_OFFSET_DEFAULT, 0, 0, 0, 0, 0, d.kv_heads * 2, 2, 0};
    uint32_t ids[8];
    for (int step = 0; step < 24; step++) {
        uint32_t s = (uint32_t)rng_below(&r, d.max_seqs);
        switch (rng_below(&r, 8)) {
        case 0: case 1: case 2: { /* append, within max_len */
            int64_t room = max_len - m.len[s];
            if (room > 0)
                append_random(&r, c, &m, s, 1 + rng_below(&r, room < 300 ? room : 300));
            break;
        }
        case 3: { /* truncate */
            uint64_t len = (uint64_t)rng_below(&r, m.len[s] + 1);
            assert_int_equal(attn_kv_cache_truncate(c, s, len), ATTN_OK);
            m.len[s] = (int64_t)len;
            break;
        }
        case 4: case 5: { /* fork */
            uint32_t dst = (uint32_t)rng_below(&r, d.max_seqs);
            assert_int_equal(attn_kv_cache_fork(c, s, dst), ATTN_OK);
            model_copy(&m, dst, s);
            break;
        }
        case 6: { /* reorder the first n sequences from random ones */
            uint32_t n = (uint32_t)(1 + rng_below(&r, d.max_seqs)), from[8];
            for (uint32_t i = 0; i < n; i++)
                from[i] = (uint32_t)rng_below(&r, d.max_seqs);
            assert_int_equal(attn_kv_cache_reorder(c, from, n), ATTN_OK);
            model before;
            model_init(&before, &d, max_len);
            for (uint32_t i = 0; i < d.max_seqs; i++)
                model_copy(&before, i, i), before.len[i] = m.len[i],
                    memcpy(before.k[i], m.k[i], (size_t)(m.Hkv * max_len * m.Dk) * 4),
                    memcpy(before.v[i], m.v[i], (size_t)(m.Hkv * max_len * m.Dv) * 4);
            for (uint32_t i = 0; i < n; i++) {
                memcpy(m.k[i], before.k[from[i]], (size_t)(m.Hkv * max_len * m.Dk) * 4);
                memcpy(m.v[i], before.v[from[i]], (size_t)(m.Hkv * max_len * m.Dv) * 4);
                m.len[i] = before.len[from[i]];
            }
            model_free(&before);
            break;
        }
        default:
            if (rng_below(&r, 4) == 0) {
                attn_kv_cache_reset(c);
                for (uint32_t i = 0; i < d.max_seqs; i++)
                    m.len[i] = 0;
            }
            break;
        }
        for (uint32_t i = 0; i < d.max_seqs; i++)
            if (attn_kv_cache_len(c, i) != m.len[i])
                fail_msg("seed %llu step %d: sequence %u has %lld tokens, the model %lld",
                         (unsigned long long)seed, step, i, (long long)attn_kv_cache_len(c, i),
                         (long long)m.len[i]);
        if (step % 3 == 2) {
            for (uint32_t i = 0; i < d.max_seqs; i++)
                ids[i] = i;
            o.q_len = (uint32_t)(1 + rng_below(&r, 3));
            o.causal = (int)rng_below(&r, 2);
            check_attention(&r, &m, c, ids, d.max_seqs, &o, d.block_tokens % 256 == 0, tot);
        }
    }
    /* every block comes back when every sequence is emptied */
    for (uint32_t i = 0; i < d.max_seqs; i++)
        assert_int_equal(attn_kv_cache_truncate(c, i, 0), ATTN_OK);
    assert_int_equal(attn_kv_cache_free_blocks(c),
                     (d.capacity + d.block_tokens - 1) / d.block_tokens);
    model_free(&m);
    attn_kv_cache_destroy(c);
}

static void test_operations_against_model(void **state)
{
    (void)state;
    totals tot = {0};
    for (uint64_t seed = 1; seed <= 60; seed++)
        run_operations(seed, &tot);
    print_message("60 operation runs: %ld attention calls, %ld elements within tolerance "
                  "(worst %.3f of it), %ld batch entries bitwise equal to attn_forward\n",
                  tot.calls, tot.compared, tot.worst, tot.bitwise);
    assert_true(tot.bitwise > 50);
}

/* ---- random attention configurations over a filled cache ---------------------------------- */

static void run_config(uint64_t seed, totals *tot)
{
    rng r = {seed};
    static const uint32_t blocks[] = {3, 16, 100, 256, 512, 1024};
    static const uint32_t dtypes[] = {ATTN_KV_F32, ATTN_KV_F16, ATTN_KV_BF16};
    attn_kv_cache_desc d;
    attn_kv_cache_desc_init(&d);
    d.kv_heads = (uint32_t)(1 + rng_below(&r, 2));
    d.qk_dim = (uint32_t)(1 + rng_below(&r, 70));
    d.v_dim = (uint32_t)(1 + rng_below(&r, 70));
    d.dtype = dtypes[rng_below(&r, 3)];
    d.max_seqs = (uint32_t)(1 + rng_below(&r, 4));
    d.block_tokens = blocks[rng_below(&r, 6)];
    int64_t max_len = 1 + rng_below(&r, rng_below(&r, 3) ? 700 : 2500);
    d.max_len = (uint64_t)max_len;
    d.capacity = (uint64_t)((max_len + d.block_tokens - 1) / d.block_tokens * d.block_tokens * d.max_seqs);
    attn_kv_cache *c = make_cache(&d);
    model m;
    model_init(&m, &d, max_len);
    for (uint32_t s = 0; s < d.max_seqs; s++) { /* filled in a few chunks */
        int64_t target = rng_below(&r, 5) ? 1 + rng_below(&r, max_len) : 0;
        while (m.len[s] < target)
            append_random(&r, c, &m, s, 1 + rng_below(&r, target - m.len[s]));
    }
    call_options o;
    memset(&o, 0, sizeof o);
    o.q_heads = d.kv_heads * (uint32_t)(1 + rng_below(&r, 3));
    int shape = (int)rng_below(&r, 3); /* decode, speculative verification, chunked prefill */
    o.q_len = shape == 0 ? 1 : shape == 1 ? (uint32_t)(2 + rng_below(&r, 8))
                                           : (uint32_t)(1 + rng_below(&r, 300));
    o.causal = rng_below(&r, 3) != 0;
    o.window_left = rng_below(&r, 4) == 0 ? rng_below(&r, 200) : -1;
    o.window_right = rng_below(&r, 6) == 0 ? rng_below(&r, 20) : -1;
    o.q_offset = rng_below(&r, 5) == 0 ? rng_below(&r, max_len) : ATTN_Q_OFFSET_DEFAULT;
    o.with_mask = rng_below(&r, 5) == 0;
    o.with_bias = rng_below(&r, 5) == 0;
    o.with_weights = rng_below(&r, 4) == 0;
    o.with_lse = rng_below(&r, 2) == 0;
    o.with_entropy = rng_below(&r, 3) == 0;
    o.threads = (uint32_t)(1 + rng_below(&r, 3));
    o.kv_len = rng_below(&r, 4) == 0 ? (uint32_t)(max_len + rng_below(&r, 10)) : 0;
    uint32_t n = (uint32_t)(1 + rng_below(&r, 5)), ids[5];
    for (uint32_t b = 0; b < n; b++)
        ids[b] = (uint32_t)rng_below(&r, d.max_seqs);
    check_attention(&r, &m, c, ids, n, &o, 0, tot);
    model_free(&m);
    attn_kv_cache_destroy(c);
}

static void test_random_configurations(void **state)
{
    (void)state;
    totals tot = {0};
    for (uint64_t seed = 1000; seed < 1260; seed++)
        run_config(seed, &tot);
    print_message("260 configurations: %ld calls, %ld elements within tolerance (worst %.3f)\n",
                  tot.calls, tot.compared, tot.worst);
    assert_true(tot.calls > 200);
}

/* ---- thread invariance ------------------------------------------------------------------------ */

static void test_thread_invariance(void **state)
{
    (void)state;
    static const uint32_t dtypes[] = {ATTN_KV_F32, ATTN_KV_F16, ATTN_KV_BF16};
    for (int t = 0; t < 3; t++)
        for (uint32_t q_len = 1; q_len <= 300; q_len += 299) {
            rng r = {77 + (uint64_t)t};
            attn_kv_cache_desc d;
            attn_kv_cache_desc_init(&d);
            d.kv_heads = 2, d.qk_dim = 64, d.v_dim = 48, d.dtype = dtypes[t], d.max_seqs = 3;
            d.block_tokens = 128, d.capacity = 3 * 3000;
            attn_kv_cache *c = make_cache(&d);
            model m;
            model_init(&m, &d, 3000);
            append_random(&r, c, &m, 0, 2500);
            append_random(&r, c, &m, 1, 700);
            append_random(&r, c, &m, 2, 1900);
            float *q = random_floats(&r, (size_t)3 * 8 * q_len * 64, 1.0);
            float *first = NULL;
            uint32_t ids[3] = {2, 0, 1};
            size_t bytes = (size_t)3 * 8 * q_len * 48 * sizeof(float);
            for (uint32_t threads = 1; threads <= 4; threads++) {
                attn_desc ad;
                attn_desc_init(&ad);
                ad.q_heads = 8, ad.kv_heads = 2, ad.qk_dim = 64, ad.v_dim = 48;
                ad.kv_dtype = d.dtype, ad.threads = threads, ad.flags = ATTN_CAUSAL;
                attn_ctx *ctx;
                assert_int_equal(attn_create(&ad, &ctx), ATTN_OK);
                attn_args a;
                attn_args_init(&a);
                a.batch = 3, a.q_len = q_len, a.q = q;
                a.q_strides = attn_strides_bhsd(8, q_len, 64);
                float *out = xcalloc(bytes, 1);
                a.out = out;
                a.out_strides = attn_strides_bhsd(8, q_len, 48);
                assert_int_equal(attn_forward_cache(ctx, &a, c, ids), ATTN_OK);
                if (!first)
                    first = out;
                else {
                    assert_memory_equal(first, out, bytes);
                    free(out);
                }
                attn_destroy(ctx);
            }
            free(first), free(q);
            model_free(&m);
            attn_kv_cache_destroy(c);
        }
}

/* ---- block accounting -------------------------------------------------------------------------- */

static void test_sharing_and_copy_on_write(void **state)
{
    (void)state;
    rng r = {5};
    attn_kv_cache_desc d;
    attn_kv_cache_desc_init(&d);
    d.kv_heads = 2, d.qk_dim = 16, d.v_dim = 16, d.max_seqs = 4, d.block_tokens = 256;
    d.capacity = 64 * 256;
    attn_kv_cache *c = make_cache(&d);
    model m;
    model_init(&m, &d, d.capacity);
    append_random(&r, c, &m, 0, 4000); /* 15 full blocks and a partial one */
    assert_int_equal(attn_kv_cache_free_blocks(c), 64 - 16);
    /* a fork copies no block */
    assert_int_equal(attn_kv_cache_fork(c, 0, 1), ATTN_OK);
    model_copy(&m, 1, 0);
    assert_int_equal(attn_kv_cache_free_blocks(c), 64 - 16);
    /* the first append into the shared partial block copies that block only */
    append_random(&r, c, &m, 1, 1);
    assert_int_equal(attn_kv_cache_free_blocks(c), 64 - 17);
    append_random(&r, c, &m, 1, 95); /* fills the copy: no new block */
    assert_int_equal(attn_kv_cache_free_blocks(c), 64 - 17);
    append_random(&r, c, &m, 1, 1); /* a new block */
    assert_int_equal(attn_kv_cache_free_blocks(c), 64 - 18);
    /* the original is untouched by its fork's appends */
    append_random(&r, c, &m, 0, 10);
    assert_int_equal(attn_kv_cache_free_blocks(c), 64 - 18);
    /* truncating a sequence frees only the blocks nobody else uses */
    assert_int_equal(attn_kv_cache_truncate(c, 1, 100), ATTN_OK);
    m.len[1] = 100;
    assert_int_equal(attn_kv_cache_free_blocks(c), 64 - 16);
    /* beam search: four beams from one prompt, reordered twice */
    for (uint32_t b = 1; b < 4; b++) {
        assert_int_equal(attn_kv_cache_fork(c, 0, b), ATTN_OK);
        model_copy(&m, b, 0);
    }
    assert_int_equal(attn_kv_cache_free_blocks(c), 64 - 16);
    for (uint32_t b = 0; b < 4; b++)
        append_random(&r, c, &m, b, 1); /* three copies of the shared partial block */
    assert_int_equal(attn_kv_cache_free_blocks(c), 64 - 19);
    uint32_t from[4] = {2, 2, 0, 3};
    assert_int_equal(attn_kv_cache_reorder(c, from, 4), ATTN_OK);
    model before;
    model_init(&before, &d, d.capacity);
    for (uint32_t b = 0; b < 4; b++)
        model_copy(&before, b, b), memcpy(before.k[b], m.k[b], (size_t)(2 * d.capacity * 16) * 4),
            memcpy(before.v[b], m.v[b], (size_t)(2 * d.capacity * 16) * 4), before.len[b] = m.len[b];
    for (uint32_t b = 0; b < 4; b++) {
        memcpy(m.k[b], before.k[from[b]], (size_t)(2 * d.capacity * 16) * 4);
        memcpy(m.v[b], before.v[from[b]], (size_t)(2 * d.capacity * 16) * 4);
        m.len[b] = before.len[from[b]];
    }
    model_free(&before);
    assert_int_equal(attn_kv_cache_free_blocks(c), 64 - 18); /* beam 1's last block released */
    totals tot = {0};
    uint32_t ids[4] = {0, 1, 2, 3};
    call_options o = {1, 1, -1, -1, ATTN_Q_OFFSET_DEFAULT, 0, 0, 1, 1, 1, 4, 2, 0};
    check_attention(&r, &m, c, ids, 4, &o, 1, &tot);
    assert_int_equal(tot.bitwise, 4);
    model_free(&m);
    attn_kv_cache_destroy(c);
}

/* ---- errors ----------------------------------------------------------------------------------- */

static int failing_allocs;
static void *failing_alloc(void *user, size_t size, size_t alignment)
{
    (void)user, (void)size, (void)alignment;
    failing_allocs++;
    return NULL;
}
static void plain_free(void *user, void *p)
{
    (void)user;
    free(p);
}

static void test_creation_errors(void **state)
{
    (void)state;
    attn_kv_cache_desc d;
    attn_kv_cache *c = (attn_kv_cache *)&d;
    assert_int_equal(attn_kv_cache_create(NULL, &c), ATTN_ERR_NULL_POINTER);
    assert_null(c);
    attn_kv_cache_desc_init(&d);
    assert_int_equal(attn_kv_cache_create(&d, NULL), ATTN_ERR_NULL_POINTER);
    struct { uint32_t *field; uint32_t value; attn_status want; const char *word; } cases[] = {
        {&d.kv_heads, 0, ATTN_ERR_ZERO_SIZE, "kv_heads"},
        {&d.qk_dim, 0, ATTN_ERR_ZERO_SIZE, "qk_dim"},
        {&d.v_dim, ATTN_MAX_HEAD_DIM + 1, ATTN_ERR_LIMIT, "v_dim"},
        {&d.max_seqs, 0, ATTN_ERR_ZERO_SIZE, "max_seqs"},
        {&d.dtype, 7, ATTN_ERR_BAD_OPTION, "dtype"},
        {&d.block_tokens, ATTN_KV_CACHE_MAX_BLOCK + 1, ATTN_ERR_LIMIT, "block_tokens"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        attn_kv_cache_desc_init(&d);
        *cases[i].field = cases[i].value;
        assert_int_equal(attn_kv_cache_create(&d, &c), cases[i].want);
        assert_null(c);
        assert_non_null(strstr(attn_last_error(NULL), cases[i].word));
        assert_int_equal(attn_kv_cache_size(&d), 0);
    }
    attn_kv_cache_desc_init(&d);
    d.capacity = 0;
    assert_int_equal(attn_kv_cache_create(&d, &c), ATTN_ERR_ZERO_SIZE);
    attn_kv_cache_desc_init(&d);
    d.max_len = d.capacity + 1;
    assert_int_equal(attn_kv_cache_create(&d, &c), ATTN_ERR_LIMIT);
    attn_kv_cache_desc_init(&d);
    d.struct_size = 8;
    assert_int_equal(attn_kv_cache_create(&d, &c), ATTN_ERR_STRUCT_SIZE);
    /* hostile sizes: too many blocks, and sizes past the address space */
    attn_kv_cache_desc_init(&d);
    d.block_tokens = 1, d.capacity = UINT64_MAX;
    assert_int_equal(attn_kv_cache_create(&d, &c), ATTN_ERR_LIMIT);
    attn_kv_cache_desc_init(&d);
    d.block_tokens = ATTN_KV_CACHE_MAX_BLOCK, d.kv_heads = UINT32_MAX, d.qk_dim = ATTN_MAX_HEAD_DIM;
    d.capacity = (uint64_t)ATTN_KV_CACHE_MAX_BLOCK * ATTN_KV_CACHE_MAX_BLOCKS;
    assert_int_equal(attn_kv_cache_create(&d, &c), ATTN_ERR_OVERFLOW);
    attn_kv_cache_desc_init(&d);
    d.max_seqs = UINT32_MAX, d.block_tokens = 1, d.capacity = ATTN_KV_CACHE_MAX_BLOCKS;
    assert_int_equal(attn_kv_cache_size(&d), 0); /* 2^33 tables of 2^30 entries */
    /* allocation failure */
    attn_allocator failing = {failing_alloc, plain_free, NULL};
    attn_kv_cache_desc_init(&d);
    d.allocator = &failing;
    assert_int_equal(attn_kv_cache_create(&d, &c), ATTN_ERR_NO_MEMORY);
    assert_int_equal(failing_allocs, 1);
    assert_null(c);
    attn_allocator half = {NULL, plain_free, NULL};
    d.allocator = &half;
    assert_int_equal(attn_kv_cache_create(&d, &c), ATTN_ERR_NULL_POINTER);
}

static void test_static_form(void **state)
{
    (void)state;
    attn_kv_cache_desc d;
    attn_kv_cache_desc_init(&d);
    d.kv_heads = 2, d.qk_dim = 8, d.v_dim = 8, d.max_seqs = 2, d.capacity = 1000;
    d.dtype = ATTN_KV_BF16;
    size_t size = attn_kv_cache_size(&d);
    assert_true(size > 1000 * 2 * 16 * 2);
    unsigned char *mem = aligned_alloc(64, size + 64);
    memset(mem, 0xA5, size + 64);
    attn_kv_cache *c;
    assert_int_equal(attn_kv_cache_create_static(&d, NULL, size, &c), ATTN_ERR_NULL_POINTER);
    assert_int_equal(attn_kv_cache_create_static(&d, mem + 1, size, &c), ATTN_ERR_WORKSPACE_ALIGN);
    assert_int_equal(attn_kv_cache_create_static(&d, mem, size - 1, &c), ATTN_ERR_WORKSPACE_SIZE);
    for (size_t i = 0; i < size + 64; i++) /* the failures wrote nothing */
        assert_int_equal(mem[i], 0xA5);
    assert_int_equal(attn_kv_cache_create_static(&d, mem, size, &c), ATTN_OK);
    for (size_t i = size; i < size + 64; i++) /* nothing past the size */
        assert_int_equal(mem[i], 0xA5);
    rng r = {9};
    model m;
    model_init(&m, &d, 1000);
    append_random(&r, c, &m, 1, 600);
    totals tot = {0};
    uint32_t ids[1] = {1};
    call_options o = {4, 1, -1, -1, ATTN_Q_OFFSET_DEFAULT, 0, 0, 0, 1, 0, 4, 1, 0};
    check_attention(&r, &m, c, ids, 1, &o, 1, &tot);
    attn_kv_cache_destroy(c);
    model_free(&m);
    free(mem);
}

/* Everything observable about a cache: lengths, free blocks, and attention over it. */
static void snapshot(attn_kv_cache *c, uint32_t S, int64_t *lens, uint64_t *free_blocks)
{
    for (uint32_t s = 0; s < S; s++)
        lens[s] = attn_kv_cache_len(c, s);
    *free_blocks = attn_kv_cache_free_blocks(c);
}

static void test_operation_errors(void **state)
{
    (void)state;
    rng r = {11};
    attn_kv_cache_desc d;
    attn_kv_cache_desc_init(&d);
    d.kv_heads = 2, d.qk_dim = 8, d.v_dim = 4, d.max_seqs = 3, d.block_tokens = 16;
    d.capacity = 64, d.max_len = 40;
    attn_kv_cache *c = make_cache(&d);
    model m;
    model_init(&m, &d, 40);
    append_random(&r, c, &m, 0, 30);
    float k[8 * 2 * 40] = {0}, v[4 * 2 * 40] = {0};
    attn_strides ks = attn_strides_bshd(2, 1, 8), vs = attn_strides_bshd(2, 1, 4);
    int64_t lens[3], lens2[3];
    uint64_t free0, free1;
    snapshot(c, 3, lens, &free0);
#define CHECK(call, status, word)                                                                 \
    do {                                                                                          \
        attn_status st_ = (call);                                                                 \
        const char *w_ = (word);                                                                  \
        if (st_ != (status))                                                                      \
            fail_msg("%s: status %d, want %d", #call, st_, status);                               \
        if (w_ && !strstr(attn_kv_cache_last_error(c), w_))                                       \
            fail_msg("%s: message \"%s\" lacks \"%s\"", #call, attn_kv_cache_last_error(c), w_);  \
    } while (0)
    CHECK(attn_kv_cache_append(NULL, 0, 1, k, ks, v, vs), ATTN_ERR_NULL_POINTER, NULL);
    CHECK(attn_kv_cache_append(c, 0, 1, NULL, ks, v, vs), ATTN_ERR_NULL_POINTER, "k is NULL");
    CHECK(attn_kv_cache_append(c, 0, 1, k, ks, NULL, vs), ATTN_ERR_NULL_POINTER, "v is NULL");
    CHECK(attn_kv_cache_append(c, 3, 1, k, ks, v, vs), ATTN_ERR_LIMIT, "seq = 3");
    CHECK(attn_kv_cache_append(c, 0, 11, k, ks, v, vs), ATTN_ERR_LIMIT, "max_len = 40");
    CHECK(attn_kv_cache_append(c, 1, 1, k, ((attn_strides){0, -8, 16}), v, vs), ATTN_ERR_STRIDE,
          "k_strides.head = -8");
    CHECK(attn_kv_cache_append(c, 1, 1, k, ks, v, ((attn_strides){0, 4, -1})), ATTN_ERR_STRIDE,
          "v_strides.seq = -1");
    CHECK(attn_kv_cache_append(c, 1, 2, k, ((attn_strides){0, 8, INT64_MAX / 2}), v, vs),
          ATTN_ERR_OVERFLOW, "k_strides");
    CHECK(attn_kv_cache_append(c, 1, 40, k, ks, v, vs), ATTN_ERR_CAPACITY, "free blocks");
    CHECK(attn_kv_cache_truncate(NULL, 0, 0), ATTN_ERR_NULL_POINTER, NULL);
    CHECK(attn_kv_cache_truncate(c, 5, 0), ATTN_ERR_LIMIT, "seq = 5");
    CHECK(attn_kv_cache_truncate(c, 0, 31), ATTN_ERR_LIMIT, "len = 31");
    CHECK(attn_kv_cache_fork(NULL, 0, 1), ATTN_ERR_NULL_POINTER, NULL);
    CHECK(attn_kv_cache_fork(c, 3, 1), ATTN_ERR_LIMIT, "src = 3");
    CHECK(attn_kv_cache_fork(c, 0, 9), ATTN_ERR_LIMIT, "dst = 9");
    CHECK(attn_kv_cache_reorder(NULL, NULL, 0), ATTN_ERR_NULL_POINTER, NULL);
    CHECK(attn_kv_cache_reorder(c, NULL, 1), ATTN_ERR_NULL_POINTER, "from is NULL");
    CHECK(attn_kv_cache_reorder(c, ((const uint32_t[]){0, 0, 0, 0}), 4), ATTN_ERR_LIMIT, "n = 4");
    CHECK(attn_kv_cache_reorder(c, ((const uint32_t[]){1, 3}), 2), ATTN_ERR_LIMIT, "from[1] = 3");
#undef CHECK
    snapshot(c, 3, lens2, &free1);
    assert_memory_equal(lens, lens2, sizeof lens);
    assert_int_equal(free0, free1);
    assert_int_equal(attn_kv_cache_len(c, 3), -1);
    assert_int_equal(attn_kv_cache_len(NULL, 0), -1);
    assert_int_equal(attn_kv_cache_free_blocks(NULL), 0);
    assert_string_equal(attn_kv_cache_last_error(NULL), "");
    attn_kv_cache_reset(NULL);
    attn_kv_cache_destroy(NULL);
    /* the contents too: attention over sequence 0 is still the model's */
    totals tot = {0};
    uint32_t ids[1] = {0};
    call_options o = {2, 1, -1, -1, ATTN_Q_OFFSET_DEFAULT, 0, 0, 0, 0, 0, 2, 1, 0};
    check_attention(&r, &m, c, ids, 1, &o, 0, &tot);
    /* a success clears the message */
    assert_int_equal(attn_kv_cache_append(c, 2, 0, NULL, ks, NULL, vs), ATTN_OK);
    assert_string_equal(attn_kv_cache_last_error(c), "");
    model_free(&m);
    attn_kv_cache_destroy(c);
}

static void test_attention_errors(void **state)
{
    (void)state;
    rng r = {13};
    attn_kv_cache_desc d;
    attn_kv_cache_desc_init(&d);
    d.kv_heads = 2, d.qk_dim = 8, d.v_dim = 4, d.max_seqs = 3, d.capacity = 300;
    attn_kv_cache *c = make_cache(&d);
    model m;
    model_init(&m, &d, 300);
    append_random(&r, c, &m, 0, 20);
    append_random(&r, c, &m, 1, 7);
    attn_desc ad;
    attn_desc_init(&ad);
    ad.q_heads = 4, ad.kv_heads = 2, ad.qk_dim = 8, ad.v_dim = 4, ad.threads = 2;
    attn_ctx *ctx;
    assert_int_equal(attn_create(&ad, &ctx), ATTN_OK);
    float q[2 * 4 * 3 * 8] = {0}, out[2 * 4 * 3 * 4], w[2 * 4 * 3 * 20], kx[8];
    int32_t lens[2] = {1, 1};
    uint32_t ids[2] = {0, 1}, bad_ids[2] = {0, 3};
    attn_args a;
    attn_args_init(&a);
    a.batch = 2, a.q_len = 3, a.q = q, a.q_strides = attn_strides_bhsd(4, 3, 8);
    a.out = out, a.out_strides = attn_strides_bhsd(4, 3, 4);
    for (size_t i = 0; i < sizeof out / sizeof out[0]; i++)
        out[i] = 42.0f;
    attn_args t;
#define EXPECT(call, status, word)                                                                \
    do {                                                                                          \
        attn_status st_ = (call);                                                                 \
        if (st_ != (status))                                                                      \
            fail_msg("%s: status %d, want %d (%s)", #call, st_, status, attn_last_error(ctx));   \
        const char *w_ = (word);                                                                  \
        if (w_ && !strstr(attn_last_error(ctx), w_))                                              \
            fail_msg("%s: message \"%s\" lacks \"%s\"", #call, attn_last_error(ctx), w_);         \
    } while (0)
    EXPECT(attn_forward_cache(NULL, &a, c, ids), ATTN_ERR_NULL_POINTER, NULL);
    EXPECT(attn_forward_cache(ctx, NULL, c, ids), ATTN_ERR_NULL_POINTER, "args is NULL");
    EXPECT(attn_forward_cache(ctx, &a, NULL, ids), ATTN_ERR_NULL_POINTER, "cache is NULL");
    EXPECT(attn_forward_cache(ctx, &a, c, NULL), ATTN_ERR_NULL_POINTER, "seq_ids is NULL");
    EXPECT(attn_forward_cache(ctx, &a, c, bad_ids), ATTN_ERR_LIMIT, "seq_ids[1] = 3");
    t = a, t.kv_len = 19;
    EXPECT(attn_forward_cache(ctx, &t, c, ids), ATTN_ERR_KV_LENS, "kv_len = 19");
    t = a, t.k = kx;
    EXPECT(attn_forward_cache(ctx, &t, c, ids), ATTN_ERR_BAD_OPTION, "args->k must be NULL");
    t = a, t.v = kx;
    EXPECT(attn_forward_cache(ctx, &t, c, ids), ATTN_ERR_BAD_OPTION, "args->v must be NULL");
    t = a, t.kv_lens = lens;
    EXPECT(attn_forward_cache(ctx, &t, c, ids), ATTN_ERR_BAD_OPTION, "kv_lens must be NULL");
    t = a, t.batch = 0;
    EXPECT(attn_forward_cache(ctx, &t, c, ids), ATTN_ERR_ZERO_SIZE, "batch");
    t = a, t.q = NULL;
    EXPECT(attn_forward_cache(ctx, &t, c, ids), ATTN_ERR_NULL_POINTER, "args->q is NULL");
    t = a, t.weights_mode = ATTN_WEIGHTS_PER_HEAD, t.weights = w;
    t.weights_strides = attn_strides_bhsd(4, 3, 19); /* rows shorter than the 20 keys */
    EXPECT(attn_forward_cache(ctx, &t, c, ids), ATTN_ERR_STRIDE, "weights_strides");
    t = a, t.out = q; /* an output on an input */
    EXPECT(attn_forward_cache(ctx, &t, c, ids), ATTN_ERR_ALIAS, NULL);
    /* a cache of another shape or dtype */
    attn_kv_cache_desc d2 = d;
    d2.dtype = ATTN_KV_F16;
    attn_kv_cache *c16 = make_cache(&d2);
    EXPECT(attn_forward_cache(ctx, &a, c16, ids), ATTN_ERR_BAD_OPTION, "does not match");
    attn_kv_cache_destroy(c16);
    d2 = d, d2.v_dim = 5;
    attn_kv_cache *c5 = make_cache(&d2);
    EXPECT(attn_forward_cache(ctx, &a, c5, ids), ATTN_ERR_BAD_OPTION, "v_dim 5");
    attn_kv_cache_destroy(c5);
    for (size_t i = 0; i < sizeof out / sizeof out[0]; i++)
        assert_true(out[i] == 42.0f); /* nothing written by any failure */
    /* empty sequences: rows that see no key; all empty with weights: no key extent */
    uint32_t empty[2] = {2, 2};
    EXPECT(attn_forward_cache(ctx, &a, c, empty), ATTN_OK, NULL);
    for (size_t i = 0; i < sizeof out / sizeof out[0]; i++)
        assert_true(out[i] == 0.0f);
    t = a, t.weights_mode = ATTN_WEIGHTS_PER_HEAD, t.weights = w;
    EXPECT(attn_forward_cache(ctx, &t, c, empty), ATTN_ERR_ZERO_SIZE, "every chosen sequence");
    /* a context without the forward operation */
    attn_ctx *bwd;
    ad.ops = ATTN_OP_BACKWARD;
    assert_int_equal(attn_create(&ad, &bwd), ATTN_OK);
    assert_int_equal(attn_forward_cache(bwd, &a, c, ids), ATTN_ERR_BAD_OPTION);
    attn_destroy(bwd);
#undef EXPECT
    attn_destroy(ctx);
    model_free(&m);
    attn_kv_cache_destroy(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_creation_errors),
        cmocka_unit_test(test_static_form),
        cmocka_unit_test(test_operation_errors),
        cmocka_unit_test(test_attention_errors),
        cmocka_unit_test(test_sharing_and_copy_on_write),
        cmocka_unit_test(test_thread_invariance),
        cmocka_unit_test(test_operations_against_model),
        cmocka_unit_test(test_random_configurations),
    };
    return cmocka_run_group_tests_name("kv_cache", tests, NULL, NULL);
}
