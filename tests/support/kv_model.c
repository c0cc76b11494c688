/* The K/V cache model of the tests and the fuzz target (see kv_model.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "support/check.h"
#include "support/kv_model.h"

/* ---- rounding, independent of the library's -------------------------------------------------- */

/* binary16 by arithmetic in double (exact for every float input): the significand scaled to an
 * integer and rounded by nearbyint (the default mode, to nearest even). Written without the
 * compiler's _Float16, which not every compiler of the fuzz build has. */
static uint16_t half_of(float x)
{
    double a = fabs((double)x);
    uint16_t sign = signbit(x) ? 0x8000u : 0u;
    if (a < 0x1p-14) /* subnormal or zero: units of 2^-24 (1024 rounds up to the smallest normal) */
        return (uint16_t)(sign | (uint16_t)nearbyint(a * 0x1p24));
    int e;
    frexp(a, &e); /* a = f * 2^e, f in [0.5, 1): the leading bit is 2^(e - 1) */
    double m = nearbyint(ldexp(a, 11 - e)); /* 11 significant bits: 1024 .. 2048 */
    if (m == 2048.0)
        m = 1024.0, e++;
    if (e - 1 > 15) /* 65520 and up */
        return (uint16_t)(sign | 0x7C00u);
    return (uint16_t)(sign | (uint16_t)((e - 1 + 15) << 10) | (uint16_t)(m - 1024.0));
}

static float half_value(uint16_t b)
{
    int e = (b >> 10) & 0x1F, m = b & 0x3FF;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? INFINITY : ldexp(1024 + m, e - 25);
    return (float)((b & 0x8000u) ? -v : v);
}

uint16_t kv_round16(float x, uint32_t dtype)
{
    if (dtype == ATTN_KV_F16)
        return half_of(x);
    uint32_t u;
    memcpy(&u, &x, 4);
    u += 0x7FFFu + ((u >> 16) & 1u); /* no NaN in the data */
    return (uint16_t)(u >> 16);
}

float kv_widen16(uint16_t b, uint32_t dtype)
{
    if (dtype == ATTN_KV_F16)
        return half_value(b);
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- the model -------------------------------------------------------------------------------- */


void kv_model_init(kv_model *m, const attn_kv_cache_desc *d, int64_t max_len)
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

void kv_model_free(kv_model *m)
{
    for (uint32_t s = 0; s < m->S; s++)
        free(m->k[s]), free(m->v[s]);
    free(m->k), free(m->v), free(m->len);
}

float kv_model_stored(const kv_model *m, float x)
{
    return m->dtype == ATTN_KV_F32 ? x : kv_widen16(kv_round16(x, m->dtype), m->dtype);
}

/* Tokens [n, Hkv, D] (token-major, as attn_strides_bshd describes) appended to the model. */
void kv_model_append(kv_model *m, uint32_t s, int64_t n, const float *k, const float *v)
{
    for (int64_t t = 0; t < n; t++)
        for (uint32_t g = 0; g < m->Hkv; g++) {
            for (uint32_t d = 0; d < m->Dk; d++)
                m->k[s][(g * m->max_len + m->len[s] + t) * m->Dk + d] =
                    kv_model_stored(m, k[(t * m->Hkv + g) * m->Dk + d]);
            for (uint32_t d = 0; d < m->Dv; d++)
                m->v[s][(g * m->max_len + m->len[s] + t) * m->Dv + d] =
                    kv_model_stored(m, v[(t * m->Hkv + g) * m->Dv + d]);
        }
    m->len[s] += n;
}

void kv_model_copy(kv_model *m, uint32_t dst, uint32_t src)
{
    if (dst == src)
        return;
    memcpy(m->k[dst], m->k[src], (size_t)(m->Hkv * m->max_len * m->Dk) * sizeof(float));
    memcpy(m->v[dst], m->v[src], (size_t)(m->Hkv * m->max_len * m->Dv) * sizeof(float));
    m->len[dst] = m->len[src];
}

/* ---- checking attention over the cache against the model ---------------------------------- */



void kv_model_reorder(kv_model *m, const uint32_t *from, uint32_t n)
{
    size_t kb = (size_t)(m->Hkv * m->max_len * m->Dk) * sizeof(float);
    size_t vb = (size_t)(m->Hkv * m->max_len * m->Dv) * sizeof(float);
    float **k = xcalloc(n, sizeof *k), **v = xcalloc(n, sizeof *v);
    int64_t *len = xcalloc(n, sizeof *len);
    for (uint32_t i = 0; i < n; i++) {
        k[i] = xcalloc(kb, 1), v[i] = xcalloc(vb, 1);
        memcpy(k[i], m->k[from[i]], kb), memcpy(v[i], m->v[from[i]], vb);
        len[i] = m->len[from[i]];
    }
    for (uint32_t i = 0; i < n; i++) {
        memcpy(m->k[i], k[i], kb), memcpy(m->v[i], v[i], vb);
        m->len[i] = len[i];
        free(k[i]), free(v[i]);
    }
    free(k), free(v), free(len);
}

static attn_desc make_desc(const kv_model *m, const kv_call *o, uint32_t dtype)
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
int kv_model_check(rng *r, const kv_model *m, const attn_kv_cache *cache, const uint32_t *ids,
                   uint32_t n, const kv_call *o, int expect_bitwise, kv_totals *tot, char *msg,
                   size_t msg_size)
{
    int64_t longest = 0;
    for (uint32_t b = 0; b < n; b++)
        longest = m->len[ids[b]] > longest ? m->len[ids[b]] : longest;
    int64_t Lk = o->kv_len ? o->kv_len : longest;
    if (Lk == 0)
        return 0;
    int64_t Hq = o->q_heads, Lq = o->q_len, Dk = m->Dk, Dv = m->Dv, Hkv = m->Hkv;
    attn_desc d = make_desc(m, o, m->dtype);
    attn_ctx *ctx;
    if (attn_create(&d, &ctx) != ATTN_OK) {
        snprintf(msg, msg_size, "attn_create: %s", attn_last_error(NULL));
        return 1;
    }
    int failed = 0;

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
    if (st != ATTN_OK) {
        snprintf(msg, msg_size, "attn_forward_cache: %s", attn_last_error(ctx));
        n = 0, failed = 1; /* nothing to compare; free below */
    }
    tot->calls += !failed;

    /* per batch entry: the oracle, and attn_forward on tensors padded to the same extent */
    float *kt = xcalloc((size_t)(Hkv * Lk * Dk), sizeof(float));
    float *vt = xcalloc((size_t)(Hkv * Lk * Dv), sizeof(float));
    uint16_t *kh = xcalloc((size_t)(Hkv * Lk * Dk), 2), *vh = xcalloc((size_t)(Hkv * Lk * Dv), 2);
    float *out2 = xcalloc((size_t)(Hq * Lq * Dv), sizeof(float));
    float *scratch_w = xcalloc((size_t)(Hq * Lq * Lk), sizeof(float));
    float *scratch_l = xcalloc((size_t)(Hq * Lq), sizeof(float));
    float *scratch_e = xcalloc((size_t)(Hq * Lq), sizeof(float));
    for (uint32_t b = 0; b < n && !failed; b++) {
        uint32_t s = ids[b];
        int32_t len = (int32_t)m->len[s];
        for (int64_t g = 0; g < Hkv; g++) {
            memcpy(kt + g * Lk * Dk, m->k[s] + g * m->max_len * Dk, (size_t)(len * Dk) * sizeof(float));
            memcpy(vt + g * Lk * Dv, m->v[s] + g * m->max_len * Dv, (size_t)(len * Dv) * sizeof(float));
        }
        for (int64_t i = 0; i < Hkv * Lk * Dk; i++)
            kh[i] = kv_round16(kt[i], m->dtype);
        for (int64_t i = 0; i < Hkv * Lk * Dv; i++)
            vh[i] = kv_round16(vt[i], m->dtype);
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
        if (cs.failures) {
            snprintf(msg, msg_size, "batch %u (seq %u, %d tokens): %s", b, s, len,
                     cs.first_failure);
            failed = 1;
            break;
        }
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
            if (attn_forward(ctx, &at) != ATTN_OK) {
                snprintf(msg, msg_size, "attn_forward on the tensors: %s", attn_last_error(ctx));
                failed = 1;
            } else if (memcmp(out2, ab.out, (size_t)(Hq * Lq * Dv) * sizeof(float)) != 0) {
                snprintf(msg, msg_size, "batch %u: the cache's result differs from "
                         "attn_forward's on the same tokens", b);
                failed = 1;
            }
            tot->bitwise += !failed;
        }
    }
    free(kt), free(vt), free(kh), free(vh), free(out2), free(scratch_w), free(scratch_l),
        free(scratch_e);
    free(q), free(out), free(weights), free(lse), free(ent), free(mask), free(bias);
    attn_destroy(ctx);
    return failed;
}

