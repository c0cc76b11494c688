/*
 * The multi-head attention layer against the float64 layer of tests/support/reference_mha.c:
 * 240 random configurations (heads, GQA, kdim/vdim, packed or separate weights, biases,
 * self-attention with one buffer, causal, kv_lens, key_visible, boolean and additive masks in
 * both shapes, weights per head and head-mean, dropout, both gradient modes, 1 to 4 threads);
 * the reference's gradients against central finite differences of its own forward; bitwise
 * identical results for 1 to 4 threads; the size queries; every error path with its status, a
 * message, and nothing written.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <attn/attn_mha.h>

#include "support/reference_mha.h"
#include "support/util.h"

/* ---- one random problem ---------------------------------------------------------------------- */

typedef struct prob {
    int64_t B, Lq, Lk, E, H, Hkv, D, kvE, kdim, vdim;
    int packed, self, kv_same, bias, causal, mask3d, weights_mode, add;
    float dropout;
    uint32_t threads;
    uint64_t seed;
    float *query, *key, *value, *w_in, *wq, *wk, *wv, *b_in, *wo, *bo, *dout;
    int32_t *kv_lens;
    uint8_t *key_visible, *attn_mask;
    float *attn_bias;
} prob;

static int64_t pick(rng *r, int64_t lo, int64_t hi)
{
    return lo + rng_below(r, hi - lo + 1);
}

static void make_prob(uint64_t seed, prob *p)
{
    rng r = {seed};
    memset(p, 0, sizeof *p);
    p->seed = seed;
    p->H = pick(&r, 1, 4), p->D = pick(&r, 1, 8), p->E = p->H * p->D;
    int64_t divs[4], nd = 0;
    for (int64_t k = 1; k <= p->H; k++)
        if (p->H % k == 0)
            divs[nd++] = k;
    p->Hkv = rng_below(&r, 3) == 0 ? divs[rng_below(&r, nd)] : p->H;
    p->kvE = p->Hkv * p->D;
    p->B = pick(&r, 1, 3), p->Lq = pick(&r, 1, 20);
    p->Lk = rng_below(&r, 3) == 0 ? p->Lq : pick(&r, 1, 20);
    int same_dims = rng_below(&r, 2) == 0;
    p->kdim = same_dims ? p->E : pick(&r, 1, 12);
    p->vdim = same_dims ? p->E : pick(&r, 1, 12);
    p->packed = p->kdim == p->E && p->vdim == p->E && rng_below(&r, 4) != 0;
    p->self = p->kdim == p->E && p->vdim == p->E && p->Lq == p->Lk && rng_below(&r, 2) == 0;
    p->bias = rng_below(&r, 3) != 0;
    p->causal = rng_below(&r, 4) == 0;
    p->weights_mode = (int)rng_below(&r, 3);
    p->add = rng_below(&r, 2) == 0;
    p->dropout = rng_below(&r, 5) == 0 ? (float)rng_uniform(&r, 0.05, 0.6) : 0.0f;
    p->threads = (uint32_t)pick(&r, 1, 4);
    int64_t Etot = p->E + 2 * p->kvE, nq = p->B * p->Lq * p->E;
    double amp = rng_uniform(&r, 0.3, 2.0);
    p->query = random_floats(&r, (size_t)nq, 1.0);
    p->key = p->self ? p->query : random_floats(&r, (size_t)(p->B * p->Lk * p->kdim), 1.0);
    /* cross-attention with key and value one buffer (and one gradient buffer) */
    p->kv_same = !p->self && p->kdim == p->vdim && rng_below(&r, 3) == 0;
    p->value = p->self ? p->query
               : p->kv_same ? p->key
                            : random_floats(&r, (size_t)(p->B * p->Lk * p->vdim), 1.0);
    if (p->packed) {
        p->w_in = random_floats(&r, (size_t)(Etot * p->E), amp / sqrt((double)p->E));
        p->wq = p->w_in, p->wk = p->w_in + p->E * p->E, p->wv = p->wk + p->kvE * p->E;
    } else {
        p->wq = random_floats(&r, (size_t)(p->E * p->E), amp / sqrt((double)p->E));
        p->wk = random_floats(&r, (size_t)(p->kvE * p->kdim), amp / sqrt((double)p->kdim));
        p->wv = random_floats(&r, (size_t)(p->kvE * p->vdim), 1.0 / sqrt((double)p->vdim));
    }
    if (p->bias) {
        p->b_in = random_floats(&r, (size_t)Etot, 0.5);
        p->bo = random_floats(&r, (size_t)p->E, 0.5);
    }
    p->wo = random_floats(&r, (size_t)(p->E * p->E), 1.0 / sqrt((double)p->E));
    p->dout = random_floats(&r, (size_t)nq, 1.0);
    if (rng_below(&r, 4) == 0) {
        p->kv_lens = xcalloc((size_t)p->B, sizeof(int32_t));
        for (int64_t b = 0; b < p->B; b++)
            p->kv_lens[b] = (int32_t)pick(&r, 0, p->Lk);
    }
    if (rng_below(&r, 4) == 0) {
        p->key_visible = xcalloc((size_t)(p->B * p->Lk), 1);
        for (int64_t x = 0; x < p->B * p->Lk; x++)
            p->key_visible[x] = rng_below(&r, 4) != 0;
    }
    int masks = (int)rng_below(&r, 5); /* 0 none, 1 boolean, 2 additive, else none */
    p->mask3d = rng_below(&r, 2) == 0;
    int64_t nm = (p->mask3d ? p->B * p->H : 1) * p->Lq * p->Lk;
    if (masks == 1) {
        p->attn_mask = xcalloc((size_t)nm, 1);
        for (int64_t x = 0; x < nm; x++)
            p->attn_mask[x] = rng_below(&r, 4) != 0;
    } else if (masks == 2) {
        p->attn_bias = random_floats(&r, (size_t)nm, 1.0);
        for (int64_t x = 0; x < nm; x++)
            if (rng_below(&r, 6) == 0)
                p->attn_bias[x] = -INFINITY;
    }
}

static void free_prob(prob *p)
{
    free(p->query);
    if (!p->self)
        free(p->key);
    if (!p->self && !p->kv_same)
        free(p->value);
    if (p->packed)
        free(p->w_in);
    else
        free(p->wq), free(p->wk), free(p->wv);
    free(p->b_in), free(p->bo), free(p->wo), free(p->dout), free(p->kv_lens);
    free(p->key_visible), free(p->attn_mask), free(p->attn_bias);
}

/* ---- running the library --------------------------------------------------------------------- */

typedef struct run {
    float *out, *weights;
    float *dq, *dk, *dv, *dwin, *dwq, *dwk, *dwv, *dbin, *dwo, *dbo;
    float *init[11]; /* ADD mode: the values the gradients started from */
} run;

static attn_mha *make_layer(const prob *p, uint32_t threads)
{
    attn_mha_desc d;
    attn_mha_desc_init(&d);
    d.embed_dim = (uint32_t)p->E, d.heads = (uint32_t)p->H, d.kv_heads = (uint32_t)p->Hkv;
    d.kdim = (uint32_t)p->kdim, d.vdim = (uint32_t)p->vdim, d.bias = (uint32_t)p->bias;
    d.flags = p->causal ? ATTN_CAUSAL : 0;
    d.dropout = p->dropout;
    d.threads = threads;
    attn_mha *m;
    attn_status st = attn_mha_create(&d, &m);
    if (st != ATTN_OK)
        fail_msg("create: %s (%s)", attn_status_str(st), attn_mha_last_error(NULL));
    return m;
}

static void fill_args(const prob *p, attn_mha_args *a)
{
    attn_mha_args_init(a);
    a->batch = (uint32_t)p->B, a->q_len = (uint32_t)p->Lq, a->kv_len = (uint32_t)p->Lk;
    a->query = p->query, a->key = p->key, a->value = p->value;
    if (p->packed)
        a->in_proj_weight = p->w_in;
    else
        a->q_proj_weight = p->wq, a->k_proj_weight = p->wk, a->v_proj_weight = p->wv;
    a->in_proj_bias = p->b_in, a->out_proj_weight = p->wo, a->out_proj_bias = p->bo;
    a->kv_lens = p->kv_lens, a->key_visible = p->key_visible;
    a->attn_mask = p->attn_mask, a->attn_bias = p->attn_bias;
    a->mask_shape = p->mask3d ? ATTN_MHA_MASK_3D : ATTN_MHA_MASK_2D;
    a->weights_mode = (uint32_t)p->weights_mode;
    a->dropout_seed = p->seed * 7 + 1, a->dropout_offset = (uint32_t)p->seed;
}

static size_t weights_count(const prob *p)
{
    return (size_t)(p->B * (p->weights_mode == 1 ? p->H : 1) * p->Lq * p->Lk);
}

static void run_layer(const prob *p, uint32_t threads, run *o)
{
    attn_mha *m = make_layer(p, threads);
    attn_mha_args a;
    fill_args(p, &a);
    size_t act = attn_mha_activation_size(m, a.batch, a.q_len, a.kv_len);
    size_t sav = attn_mha_saved_size(m, a.batch, a.q_len, a.kv_len);
    void *abuf = malloc(act), *sbuf = malloc(sav);
    memset(abuf, 0x7f, act), memset(sbuf, 0x7f, sav); /* garbage: must not matter */
    a.activations = abuf, a.activation_size = act, a.saved = sbuf, a.saved_size = sav;
    memset(o, 0, sizeof *o);
    size_t nq = (size_t)(p->B * p->Lq * p->E);
    o->out = xcalloc(nq, sizeof(float));
    a.out = o->out;
    if (p->weights_mode)
        o->weights = xcalloc(weights_count(p), sizeof(float)), a.weights = o->weights;
    attn_status st = attn_mha_forward(m, &a);
    if (st != ATTN_OK)
        fail_msg("seed %llu forward: %s (%s)", (unsigned long long)p->seed, attn_status_str(st),
                 attn_mha_last_error(m));
    int64_t Etot = p->E + 2 * p->kvE;
    size_t sizes[11] = {nq, (size_t)(p->B * p->Lk * p->kdim), (size_t)(p->B * p->Lk * p->vdim),
                        (size_t)(Etot * p->E), (size_t)(p->E * p->E),
                        (size_t)(p->kvE * p->kdim), (size_t)(p->kvE * p->vdim), (size_t)Etot,
                        (size_t)(p->E * p->E), (size_t)p->E, 0};
    float **bufs[10] = {&o->dq, &o->dk, &o->dv, &o->dwin, &o->dwq, &o->dwk, &o->dwv, &o->dbin,
                        &o->dwo, &o->dbo};
    rng r = {p->seed ^ 0xABCDu};
    for (int i = 0; i < 10; i++) {
        *bufs[i] = random_floats(&r, sizes[i], 1.0);
        if (p->add) {
            o->init[i] = xcalloc(sizes[i], sizeof(float));
            memcpy(o->init[i], *bufs[i], sizes[i] * sizeof(float));
        }
    }
    attn_mha_grads g;
    attn_mha_grads_init(&g);
    g.mode = p->add ? ATTN_MHA_GRAD_ADD : ATTN_MHA_GRAD_SET;
    g.dout = p->dout;
    g.d_query = o->dq;
    g.d_key = p->self ? o->dq : o->dk;
    g.d_value = p->self ? o->dq : p->kv_same ? o->dk : o->dv;
    if (p->packed)
        g.d_in_proj_weight = o->dwin;
    else
        g.d_q_proj_weight = o->dwq, g.d_k_proj_weight = o->dwk, g.d_v_proj_weight = o->dwv;
    if (p->bias)
        g.d_in_proj_bias = o->dbin, g.d_out_proj_bias = o->dbo;
    g.d_out_proj_weight = o->dwo;
    st = attn_mha_backward(m, &a, &g);
    if (st != ATTN_OK)
        fail_msg("seed %llu backward: %s (%s)", (unsigned long long)p->seed, attn_status_str(st),
                 attn_mha_last_error(m));
    attn_mha_destroy(m);
    free(abuf), free(sbuf);
}

static void free_run(run *o)
{
    float *all[] = {o->out, o->weights, o->dq, o->dk, o->dv, o->dwin, o->dwq, o->dwk, o->dwv,
                    o->dbin, o->dwo, o->dbo};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        free(all[i]);
    for (int i = 0; i < 11; i++)
        free(o->init[i]);
}

/* ---- the reference ----------------------------------------------------------------------------- */

static uint8_t *dropout_keep(const prob *p)
{
    if (p->dropout <= 0.0f)
        return NULL;
    uint8_t *keep = xcalloc((size_t)(p->B * p->H * p->Lq * p->Lk), 1);
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t h = 0; h < p->H; h++)
            assert_int_equal(attn_dropout_mask(p->dropout, p->seed * 7 + 1, (uint32_t)p->seed,
                                               (uint32_t)p->H, (uint32_t)b, (uint32_t)h, 0, p->Lq,
                                               0, p->Lk, keep + (b * p->H + h) * p->Lq * p->Lk,
                                               p->Lk),
                             ATTN_OK);
    return keep;
}

static refm_problem ref_of(const prob *p, const uint8_t *keep)
{
    refm_problem r;
    memset(&r, 0, sizeof r);
    r.B = p->B, r.Lq = p->Lq, r.Lk = p->Lk, r.E = p->E, r.H = p->H, r.Hkv = p->Hkv;
    r.kdim = p->kdim, r.vdim = p->vdim, r.causal = p->causal;
    r.query = p->query, r.key = p->key, r.value = p->value;
    r.wq = p->wq, r.wk = p->wk, r.wv = p->wv;
    if (p->bias)
        r.bq = p->b_in, r.bk = p->b_in + p->E, r.bv = p->b_in + p->E + p->kvE, r.bo = p->bo;
    r.wo = p->wo;
    r.kv_lens = p->kv_lens, r.key_visible = p->key_visible;
    r.attn_mask = p->attn_mask, r.attn_bias = p->attn_bias, r.mask3d = p->mask3d;
    r.drop_keep = keep, r.dropout = p->dropout;
    return r;
}

static double worst;

static void expect(const prob *p, const char *what, const float *got, const float *init,
                   const double *ref, const double *mag, size_t n, double tau)
{
    for (size_t i = 0; i < n; i++) {
        double want = ref[i] + (init ? init[i] : 0.0);
        double tol = 2.0 * tau * mag[i] + (init ? 0x1p-23 * (fabs(init[i]) + fabs(want)) : 0.0)
                     + 1e-300;
        double e = fabs((double)got[i] - want);
        if (e / tol > worst)
            worst = e / tol;
        if (!(e <= tol))
            fail_msg("seed %llu: %s[%zu] = %.9g, expected %.9g (error %.3g, tolerance %.3g)",
                     (unsigned long long)p->seed, what, i, (double)got[i], want, e, tol);
    }
}

static double tau_f(const prob *p)
{
    int64_t k = p->E > p->kdim ? p->E : p->kdim;
    k = k > p->vdim ? k : p->vdim;
    return 0x1p-24 * (double)(k + p->D + 2 * p->Lk + p->E + 8);
}

static double tau_b(const prob *p)
{
    int64_t rows = p->B * (p->Lq > p->Lk ? p->Lq : p->Lk);
    return tau_f(p) + 0x1p-24 * (double)(p->E + 2 * p->D + p->Lk + rows + 8);
}

static void check_prob(const prob *p, const run *o)
{
    uint8_t *keep = dropout_keep(p);
    refm_problem rp = ref_of(p, keep);
    refm_result rr;
    refm_forward(&rp, &rr);
    double tf = tau_f(p), tb = tau_b(p);
    size_t nq = (size_t)(p->B * p->Lq * p->E);
    expect(p, "out", o->out, NULL, rr.out, rr.out_mag, nq, tf);
    if (p->weights_mode == 1)
        expect(p, "weights", o->weights, NULL, rr.weights, rr.weights_mag, weights_count(p), tf);
    if (p->weights_mode == 2)
        expect(p, "weights", o->weights, NULL, rr.wmean, rr.wmean_mag, weights_count(p), tf);
    refm_grads g;
    refm_backward(&rp, &rr, p->dout, &g);
    if (p->self)
        for (size_t x = 0; x < nq; x++)
            g.d_query[x] += g.d_key[x] + g.d_value[x], g.m_query[x] += g.m_key[x] + g.m_value[x];
    expect(p, "d_query", o->dq, o->init[0], g.d_query, g.m_query, nq, tb);
    if (p->kv_same)
        for (int64_t x = 0; x < p->B * p->Lk * p->kdim; x++)
            g.d_key[x] += g.d_value[x], g.m_key[x] += g.m_value[x];
    if (p->kv_same) {
        expect(p, "d_key (= d_value)", o->dk, o->init[1], g.d_key, g.m_key,
               (size_t)(p->B * p->Lk * p->kdim), tb);
    } else if (!p->self) {
        expect(p, "d_key", o->dk, o->init[1], g.d_key, g.m_key, (size_t)(p->B * p->Lk * p->kdim), tb);
        expect(p, "d_value", o->dv, o->init[2], g.d_value, g.m_value,
               (size_t)(p->B * p->Lk * p->vdim), tb);
    }
    size_t ee = (size_t)(p->E * p->E), ke = (size_t)(p->kvE * p->kdim), ve = (size_t)(p->kvE * p->vdim);
    if (p->packed) {
        expect(p, "d_in_proj_weight[q]", o->dwin, o->init[3], g.d_wq, g.m_wq, ee, tb);
        expect(p, "d_in_proj_weight[k]", o->dwin + ee, o->init[3] ? o->init[3] + ee : NULL,
               g.d_wk, g.m_wk, ke, tb);
        expect(p, "d_in_proj_weight[v]", o->dwin + ee + ke, o->init[3] ? o->init[3] + ee + ke : NULL,
               g.d_wv, g.m_wv, ve, tb);
    } else {
        expect(p, "d_q_proj_weight", o->dwq, o->init[4], g.d_wq, g.m_wq, ee, tb);
        expect(p, "d_k_proj_weight", o->dwk, o->init[5], g.d_wk, g.m_wk, ke, tb);
        expect(p, "d_v_proj_weight", o->dwv, o->init[6], g.d_wv, g.m_wv, ve, tb);
    }
    if (p->bias) {
        size_t E = (size_t)p->E, kv = (size_t)p->kvE;
        const float *i7 = o->init[7];
        expect(p, "d_in_proj_bias[q]", o->dbin, i7, g.d_bq, g.m_bq, E, tb);
        expect(p, "d_in_proj_bias[k]", o->dbin + E, i7 ? i7 + E : NULL, g.d_bk, g.m_bk, kv, tb);
        expect(p, "d_in_proj_bias[v]", o->dbin + E + kv, i7 ? i7 + E + kv : NULL, g.d_bv, g.m_bv,
               kv, tb);
        expect(p, "d_out_proj_bias", o->dbo, o->init[9], g.d_bo, g.m_bo, E, tb);
    }
    expect(p, "d_out_proj_weight", o->dwo, o->init[8], g.d_wo, g.m_wo, ee, tb);
    refm_grads_free(&g), refm_free(&rr);
    free(keep);
}

static void test_random(void **state)
{
    (void)state;
    worst = 0.0;
    int n = 240;
    for (int i = 0; i < n; i++) {
        prob p;
        make_prob(1000 + (uint64_t)i, &p);
        run o;
        run_layer(&p, p.threads, &o);
        check_prob(&p, &o);
        free_run(&o), free_prob(&p);
    }
    printf("%d random configurations: worst error / tolerance %.3g\n", n, worst);
}

/* ---- the reference against finite differences of itself ------------------------------------- */

static double loss(const prob *p, const uint8_t *keep)
{
    refm_problem rp = ref_of(p, keep);
    refm_result rr;
    refm_forward(&rp, &rr);
    double l = 0.0;
    for (int64_t x = 0; x < p->B * p->Lq * p->E; x++)
        l += rr.out[x] * p->dout[x];
    refm_free(&rr);
    return l;
}

/* d loss / d buf[i] by central differences on the float the reference reads. */
static double fd(const prob *p, const uint8_t *keep, float *buf, size_t i)
{
    float x = buf[i];
    float up = x + 0x1p-9f * (1.0f + fabsf(x)), down = x - 0x1p-9f * (1.0f + fabsf(x));
    buf[i] = up;
    double lu = loss(p, keep);
    buf[i] = down;
    double ld = loss(p, keep);
    buf[i] = x;
    return (lu - ld) / ((double)up - (double)down);
}

static void expect_fd(const prob *p, const uint8_t *keep, const char *what, float *buf,
                      const double *grad, size_t n)
{
    for (size_t i = 0; i < n; i += 1 + n / 7) {
        double num = fd(p, keep, buf, i);
        if (!(fabs(num - grad[i]) <= 2e-4 * (1.0 + fabs(grad[i]))))
            fail_msg("seed %llu: reference %s[%zu] = %.9g, finite differences %.9g",
                     (unsigned long long)p->seed, what, i, grad[i], num);
    }
}

static void test_reference_finite_differences(void **state)
{
    (void)state;
    for (int i = 0; i < 24; i++) {
        prob p;
        make_prob(5000 + (uint64_t)i, &p);
        /* -inf biases and masks are fine; the loss must be smooth: no dropout change */
        uint8_t *keep = dropout_keep(&p);
        refm_problem rp = ref_of(&p, keep);
        refm_result rr;
        refm_forward(&rp, &rr);
        refm_grads g;
        refm_backward(&rp, &rr, p.dout, &g);
        size_t nq = (size_t)(p.B * p.Lq * p.E);
        if (p.self) {
            for (size_t x = 0; x < nq; x++)
                g.d_query[x] += g.d_key[x] + g.d_value[x];
            expect_fd(&p, keep, "d_query (self)", p.query, g.d_query, nq);
        } else if (p.kv_same) {
            for (int64_t x = 0; x < p.B * p.Lk * p.kdim; x++)
                g.d_key[x] += g.d_value[x];
            expect_fd(&p, keep, "d_query", p.query, g.d_query, nq);
            expect_fd(&p, keep, "d_key (= value)", p.key, g.d_key, (size_t)(p.B * p.Lk * p.kdim));
        } else {
            expect_fd(&p, keep, "d_query", p.query, g.d_query, nq);
            expect_fd(&p, keep, "d_key", p.key, g.d_key, (size_t)(p.B * p.Lk * p.kdim));
            expect_fd(&p, keep, "d_value", p.value, g.d_value, (size_t)(p.B * p.Lk * p.vdim));
        }
        expect_fd(&p, keep, "d_wq", p.wq, g.d_wq, (size_t)(p.E * p.E));
        expect_fd(&p, keep, "d_wk", p.wk, g.d_wk, (size_t)(p.kvE * p.kdim));
        expect_fd(&p, keep, "d_wv", p.wv, g.d_wv, (size_t)(p.kvE * p.vdim));
        expect_fd(&p, keep, "d_wo", p.wo, g.d_wo, (size_t)(p.E * p.E));
        if (p.bias) {
            expect_fd(&p, keep, "d_bq", p.b_in, g.d_bq, (size_t)p.E);
            expect_fd(&p, keep, "d_bk", p.b_in + p.E, g.d_bk, (size_t)p.kvE);
            expect_fd(&p, keep, "d_bv", p.b_in + p.E + p.kvE, g.d_bv, (size_t)p.kvE);
            expect_fd(&p, keep, "d_bo", p.bo, g.d_bo, (size_t)p.E);
        }
        refm_grads_free(&g), refm_free(&rr), free(keep), free_prob(&p);
    }
}

/* ---- threads -------------------------------------------------------------------------------- */

static void same_bits(const prob *p, const char *what, const float *a, const float *b, size_t n,
                      uint32_t t)
{
    if (n && memcmp(a, b, n * sizeof(float)) != 0)
        fail_msg("seed %llu: %s differs between 1 and %u threads", (unsigned long long)p->seed,
                 what, t);
}

static void test_threads_bitwise(void **state)
{
    (void)state;
    for (int i = 0; i < 12; i++) {
        prob p;
        make_prob(9000 + (uint64_t)i, &p);
        run base;
        run_layer(&p, 1, &base);
        for (uint32_t t = 2; t <= 4; t++) {
            run o;
            run_layer(&p, t, &o);
            size_t nq = (size_t)(p.B * p.Lq * p.E), Etot = (size_t)(p.E + 2 * p.kvE);
            same_bits(&p, "out", base.out, o.out, nq, t);
            same_bits(&p, "weights", base.weights, o.weights, p.weights_mode ? weights_count(&p) : 0, t);
            same_bits(&p, "d_query", base.dq, o.dq, nq, t);
            same_bits(&p, "d_key", base.dk, o.dk, (size_t)(p.B * p.Lk * p.kdim), t);
            same_bits(&p, "d_value", base.dv, o.dv, (size_t)(p.B * p.Lk * p.vdim), t);
            same_bits(&p, "d_in_proj_weight", base.dwin, o.dwin, Etot * (size_t)p.E, t);
            same_bits(&p, "d_q_proj_weight", base.dwq, o.dwq, (size_t)(p.E * p.E), t);
            same_bits(&p, "d_in_proj_bias", base.dbin, o.dbin, Etot, t);
            same_bits(&p, "d_out_proj_weight", base.dwo, o.dwo, (size_t)(p.E * p.E), t);
            free_run(&o);
        }
        free_run(&base), free_prob(&p);
    }
}

/* A problem big enough for many row blocks (B L = 600 rows) and feature blocks (E = 192). */
static void test_threads_bitwise_large(void **state)
{
    (void)state;
    prob p;
    memset(&p, 0, sizeof p);
    rng r = {77};
    p.seed = 42, p.B = 2, p.Lq = 300, p.Lk = 300, p.H = 3, p.Hkv = 3, p.D = 64, p.E = 192;
    p.kvE = 192, p.kdim = p.vdim = 192, p.packed = 1, p.self = 1, p.bias = 1, p.causal = 1;
    p.weights_mode = 2;
    size_t nq = (size_t)(p.B * p.Lq * p.E), Etot = 3 * 192;
    p.query = p.key = p.value = random_floats(&r, nq, 1.0);
    p.w_in = random_floats(&r, Etot * 192, 0.1);
    p.wq = p.w_in, p.wk = p.w_in + 192 * 192, p.wv = p.wk + 192 * 192;
    p.b_in = random_floats(&r, Etot, 0.5), p.bo = random_floats(&r, 192, 0.5);
    p.wo = random_floats(&r, 192 * 192, 0.1), p.dout = random_floats(&r, nq, 1.0);
    run base;
    run_layer(&p, 1, &base);
    for (uint32_t t = 2; t <= 4; t++) {
        run o;
        run_layer(&p, t, &o);
        same_bits(&p, "out", base.out, o.out, nq, t);
        same_bits(&p, "weights", base.weights, o.weights, weights_count(&p), t);
        same_bits(&p, "d_query", base.dq, o.dq, nq, t);
        same_bits(&p, "d_in_proj_weight", base.dwin, o.dwin, Etot * 192, t);
        same_bits(&p, "d_in_proj_bias", base.dbin, o.dbin, Etot, t);
        same_bits(&p, "d_out_proj_weight", base.dwo, o.dwo, 192 * 192, t);
        same_bits(&p, "d_out_proj_bias", base.dbo, o.dbo, 192, t);
        free_run(&o);
    }
    free_run(&base), free_prob(&p);
}

/* ---- errors ----------------------------------------------------------------------------------- */

typedef struct fixture {
    prob p;
    attn_mha *m;
    attn_mha_args a;
    attn_mha_grads g;
    size_t act, sav, nq;
    void *abuf, *sbuf;
    float *out, *weights, *dq, *dk, *dv, *dwq, *dwk, *dwv, *dbin, *dwo, *dbo;
} fixture;

#define GUARD 0x5a

static void fx_setup(fixture *f)
{
    memset(f, 0, sizeof *f);
    prob *p = &f->p;
    rng r = {3};
    p->seed = 3, p->B = 2, p->Lq = 5, p->Lk = 7, p->H = 2, p->Hkv = 2, p->D = 4, p->E = 8;
    p->kvE = 8, p->kdim = 6, p->vdim = 5, p->bias = 1, p->weights_mode = 1;
    f->nq = (size_t)(p->B * p->Lq * p->E);
    p->query = random_floats(&r, f->nq, 1.0);
    p->key = random_floats(&r, (size_t)(p->B * p->Lk * p->kdim), 1.0);
    p->value = random_floats(&r, (size_t)(p->B * p->Lk * p->vdim), 1.0);
    p->wq = random_floats(&r, 64, 0.3), p->wk = random_floats(&r, 48, 0.3);
    p->wv = random_floats(&r, 40, 0.3), p->b_in = random_floats(&r, 24, 0.3);
    p->wo = random_floats(&r, 64, 0.3), p->bo = random_floats(&r, 8, 0.3);
    p->dout = random_floats(&r, f->nq, 1.0);
    f->m = make_layer(p, 2);
    fill_args(p, &f->a);
    f->act = attn_mha_activation_size(f->m, 2, 5, 7);
    f->sav = attn_mha_saved_size(f->m, 2, 5, 7);
    f->abuf = malloc(f->act), f->sbuf = malloc(f->sav);
    memset(f->abuf, GUARD, f->act), memset(f->sbuf, GUARD, f->sav);
    f->a.activations = f->abuf, f->a.activation_size = f->act;
    f->a.saved = f->sbuf, f->a.saved_size = f->sav;
    size_t nw = weights_count(p);
    f->out = malloc(f->nq * 4), f->weights = malloc(nw * 4);
    memset(f->out, GUARD, f->nq * 4), memset(f->weights, GUARD, nw * 4);
    f->a.out = f->out, f->a.weights = f->weights;
    size_t gs[9] = {f->nq, (size_t)(p->B * p->Lk * p->kdim), (size_t)(p->B * p->Lk * p->vdim),
                    64, 48, 40, 24, 64, 8};
    float **bufs[9] = {&f->dq, &f->dk, &f->dv, &f->dwq, &f->dwk, &f->dwv, &f->dbin, &f->dwo, &f->dbo};
    for (int i = 0; i < 9; i++) {
        *bufs[i] = malloc(gs[i] * 4);
        memset(*bufs[i], GUARD, gs[i] * 4);
    }
    attn_mha_grads_init(&f->g);
    f->g.dout = p->dout;
    f->g.d_query = f->dq, f->g.d_key = f->dk, f->g.d_value = f->dv;
    f->g.d_q_proj_weight = f->dwq, f->g.d_k_proj_weight = f->dwk, f->g.d_v_proj_weight = f->dwv;
    f->g.d_in_proj_bias = f->dbin, f->g.d_out_proj_weight = f->dwo, f->g.d_out_proj_bias = f->dbo;
}

static int untouched(const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        if (c[i] != GUARD)
            return 0;
    return 1;
}

/* Everything the calls may write still holds the guard bytes (the saved buffer only when
 * `saved_too`: a backward reads what a forward wrote there). */
static void expect_nothing_written(const fixture *f, int saved_too, const char *label)
{
    const prob *p = &f->p;
    size_t n[11] = {f->act, f->sav, f->nq * 4, weights_count(p) * 4, f->nq * 4,
                    (size_t)(p->B * p->Lk * p->kdim) * 4, (size_t)(p->B * p->Lk * p->vdim) * 4,
                    64 * 4, 48 * 4, 40 * 4, 24 * 4};
    const void *b[11] = {f->abuf, f->sbuf, f->out, f->weights, f->dq, f->dk, f->dv, f->dwq,
                         f->dwk, f->dwv, f->dbin};
    for (int i = 0; i < 11; i++) {
        if (i == 1 && !saved_too)
            continue;
        if (!untouched(b[i], n[i]))
            fail_msg("%s: buffer %d was written", label, i);
    }
    if (!untouched(f->dwo, 64 * 4) || !untouched(f->dbo, 8 * 4))
        fail_msg("%s: out-projection gradients written", label);
}

static void fx_teardown(fixture *f)
{
    attn_mha_destroy(f->m);
    free(f->abuf), free(f->sbuf), free(f->out), free(f->weights);
    float *all[] = {f->dq, f->dk, f->dv, f->dwq, f->dwk, f->dwv, f->dbin, f->dwo, f->dbo};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        free(all[i]);
    free_prob(&f->p);
}

typedef void (*breaker)(fixture *f);

static void expect_forward_error(breaker brk, attn_status want, const char *needle)
{
    fixture f;
    fx_setup(&f);
    brk(&f);
    attn_status st = attn_mha_forward(f.m, &f.a);
    if (st != want)
        fail_msg("forward '%s': got %s (%s)", needle, attn_status_str(st), attn_mha_last_error(f.m));
    if (!strstr(attn_mha_last_error(f.m), needle))
        fail_msg("forward: message '%s' lacks '%s'", attn_mha_last_error(f.m), needle);
    expect_nothing_written(&f, 1, needle);
    fx_teardown(&f);
}

static void expect_backward_error(breaker brk, attn_status want, const char *needle)
{
    fixture f;
    fx_setup(&f);
    /* a valid training forward first, then reset every output the backward may write */
    assert_int_equal(attn_mha_forward(f.m, &f.a), ATTN_OK);
    memset(f.abuf, GUARD, f.act);
    void *saved_copy = malloc(f.sav);
    memcpy(saved_copy, f.sbuf, f.sav);
    brk(&f);
    attn_status st = attn_mha_backward(f.m, &f.a, &f.g);
    if (st != want)
        fail_msg("backward '%s': got %s (%s)", needle, attn_status_str(st), attn_mha_last_error(f.m));
    if (!strstr(attn_mha_last_error(f.m), needle))
        fail_msg("backward: message '%s' lacks '%s'", attn_mha_last_error(f.m), needle);
    memset(f.out, GUARD, f.nq * 4), memset(f.weights, GUARD, weights_count(&f.p) * 4);
    expect_nothing_written(&f, 0, needle);
    if (memcmp(saved_copy, f.sbuf, f.sav) != 0)
        fail_msg("backward '%s' wrote the saved buffer", needle);
    free(saved_copy);
    fx_teardown(&f);
}

static void b_query(fixture *f) { f->a.query = NULL; }
static void b_key(fixture *f) { f->a.key = NULL; }
static void b_value(fixture *f) { f->a.value = NULL; }
static void b_out(fixture *f) { f->a.out = NULL; }
static void b_wk(fixture *f) { f->a.k_proj_weight = NULL; }
static void b_bias(fixture *f) { f->a.in_proj_bias = NULL; }
static void b_wo(fixture *f) { f->a.out_proj_weight = NULL; }
static void b_act(fixture *f) { f->a.activations = NULL; }
static void b_weights(fixture *f) { f->a.weights = NULL; }
static void b_batch(fixture *f) { f->a.batch = 0; }
static void b_kvlen(fixture *f) { f->a.kv_len = 0; }
static void b_mode(fixture *f) { f->a.weights_mode = 3; }
static void b_wnone(fixture *f) { f->a.weights_mode = ATTN_WEIGHTS_NONE; }
static void b_shape(fixture *f) { f->a.mask_shape = 2; }
static void b_both_masks(fixture *f)
{
    static uint8_t m[35];
    static float bias[35];
    f->a.attn_mask = m, f->a.attn_bias = bias;
}
static void b_packed_and_sep(fixture *f) { f->a.in_proj_weight = f->p.wq; }
static void b_packed_dims(fixture *f)
{
    f->a.in_proj_weight = f->p.wq;
    f->a.q_proj_weight = f->a.k_proj_weight = f->a.v_proj_weight = NULL;
}
static void b_kv_lens(fixture *f)
{
    static int32_t kl[2] = {3, 8};
    f->a.kv_lens = kl;
}
static void b_act_size(fixture *f) { f->a.activation_size = f->act - 1; }
static void b_saved_size(fixture *f) { f->a.saved_size = f->sav - 1; }
static void b_alias_out(fixture *f) { f->a.out = (float *)f->p.query; }
static void b_alias_act(fixture *f) { f->a.out = (float *)f->abuf + 16; }
static void b_alias_weights(fixture *f) { f->a.weights = (float *)f->abuf + 4; }
static void b_struct(fixture *f) { f->a.struct_size = 3; }
static void b_overflow(fixture *f) { f->a.batch = 70000, f->a.q_len = 70000; }
/* a huge batch with a 2-entry kv_lens: refused before kv_lens is read past its end */
static void b_overflow_kv_lens(fixture *f)
{
    static int32_t kl[2] = {1, 2};
    f->a.kv_lens = kl, f->a.batch = UINT32_MAX, f->a.kv_len = UINT32_MAX;
}

static void test_forward_errors(void **state)
{
    (void)state;
    expect_forward_error(b_query, ATTN_ERR_NULL_POINTER, "args->query is NULL");
    expect_forward_error(b_key, ATTN_ERR_NULL_POINTER, "args->key is NULL");
    expect_forward_error(b_value, ATTN_ERR_NULL_POINTER, "args->value is NULL");
    expect_forward_error(b_out, ATTN_ERR_NULL_POINTER, "args->out is NULL");
    expect_forward_error(b_wk, ATTN_ERR_NULL_POINTER, "args->k_proj_weight is NULL");
    expect_forward_error(b_bias, ATTN_ERR_NULL_POINTER, "args->in_proj_bias is NULL");
    expect_forward_error(b_wo, ATTN_ERR_NULL_POINTER, "args->out_proj_weight is NULL");
    expect_forward_error(b_act, ATTN_ERR_NULL_POINTER, "args->activations is NULL");
    expect_forward_error(b_weights, ATTN_ERR_NULL_POINTER, "args->weights is NULL");
    expect_forward_error(b_batch, ATTN_ERR_ZERO_SIZE, "args->batch is 0");
    expect_forward_error(b_kvlen, ATTN_ERR_ZERO_SIZE, "args->kv_len is 0");
    expect_forward_error(b_mode, ATTN_ERR_BAD_OPTION, "weights_mode = 3");
    expect_forward_error(b_wnone, ATTN_ERR_BAD_OPTION, "ATTN_WEIGHTS_NONE");
    expect_forward_error(b_shape, ATTN_ERR_BAD_OPTION, "mask_shape = 2");
    expect_forward_error(b_both_masks, ATTN_ERR_BAD_OPTION, "both set");
    expect_forward_error(b_packed_and_sep, ATTN_ERR_BAD_OPTION, "give one layout");
    expect_forward_error(b_packed_dims, ATTN_ERR_BAD_OPTION, "needs kdim = vdim = embed_dim");
    expect_forward_error(b_kv_lens, ATTN_ERR_KV_LENS, "args->kv_lens[1] = 8");
    expect_forward_error(b_act_size, ATTN_ERR_WORKSPACE_SIZE, "args->activation_size");
    expect_forward_error(b_saved_size, ATTN_ERR_WORKSPACE_SIZE, "args->saved_size");
    expect_forward_error(b_alias_out, ATTN_ERR_ALIAS, "args->out overlaps args->query");
    expect_forward_error(b_alias_act, ATTN_ERR_ALIAS, "args->activations overlaps args->out");
    expect_forward_error(b_alias_weights, ATTN_ERR_ALIAS, "overlaps");
    expect_forward_error(b_struct, ATTN_ERR_STRUCT_SIZE, "args->struct_size = 3");
    expect_forward_error(b_overflow, ATTN_ERR_OVERFLOW, "exceed the index range");
    expect_forward_error(b_overflow_kv_lens, ATTN_ERR_OVERFLOW, "exceed the index range");

    /* NULL layer and args */
    assert_int_equal(attn_mha_forward(NULL, NULL), ATTN_ERR_NULL_POINTER);
    assert_non_null(strstr(attn_mha_last_error(NULL), "mha is NULL"));
    fixture f;
    fx_setup(&f);
    assert_int_equal(attn_mha_forward(f.m, NULL), ATTN_ERR_NULL_POINTER);
    assert_non_null(strstr(attn_mha_last_error(f.m), "args is NULL"));
    /* a success clears the message */
    assert_int_equal(attn_mha_forward(f.m, &f.a), ATTN_OK);
    assert_string_equal(attn_mha_last_error(f.m), "");
    fx_teardown(&f);
}

static void g_saved(fixture *f) { f->a.saved = NULL; }
static void g_dout(fixture *f) { f->g.dout = NULL; }
static void g_struct(fixture *f) { f->g.struct_size = 5; }
static void g_mode(fixture *f) { f->g.mode = 2; }
static void g_din(fixture *f) { f->g.d_in_proj_weight = f->dwo; }
static void g_alias_shared(fixture *f) { f->g.d_key = f->g.d_query; }
static void g_alias_in(fixture *f) { f->g.d_query = (float *)f->p.query; }
static void g_alias_grads(fixture *f) { f->g.d_out_proj_bias = f->dwo + 3; }
static void g_alias_saved(fixture *f) { f->g.d_value = (float *)f->sbuf + 16; }
static void g_saved_size(fixture *f) { f->a.saved_size = 64; }
static void g_kv_lens(fixture *f)
{
    static int32_t kl[2] = {-1, 2};
    f->a.kv_lens = kl;
}

static void test_backward_errors(void **state)
{
    (void)state;
    expect_backward_error(g_saved, ATTN_ERR_NULL_POINTER, "args->saved is NULL");
    expect_backward_error(g_dout, ATTN_ERR_NULL_POINTER, "grads->dout is NULL");
    expect_backward_error(g_struct, ATTN_ERR_STRUCT_SIZE, "grads->struct_size = 5");
    expect_backward_error(g_mode, ATTN_ERR_BAD_OPTION, "grads->mode = 2");
    expect_backward_error(g_din, ATTN_ERR_BAD_OPTION, "d_in_proj_weight is set");
    expect_backward_error(g_alias_shared, ATTN_ERR_ALIAS, "grads->d_key is grads->d_query");
    expect_backward_error(g_alias_in, ATTN_ERR_ALIAS, "grads->d_query overlaps args->query");
    expect_backward_error(g_alias_grads, ATTN_ERR_ALIAS, "overlaps");
    expect_backward_error(g_alias_saved, ATTN_ERR_ALIAS, "grads->d_value overlaps args->saved");
    expect_backward_error(g_saved_size, ATTN_ERR_WORKSPACE_SIZE, "args->saved_size = 64");
    expect_backward_error(g_kv_lens, ATTN_ERR_KV_LENS, "args->kv_lens[0] = -1");
    expect_backward_error(b_query, ATTN_ERR_NULL_POINTER, "args->query is NULL");
    expect_backward_error(b_act_size, ATTN_ERR_WORKSPACE_SIZE, "args->activation_size");
    assert_int_equal(attn_mha_backward(NULL, NULL, NULL), ATTN_ERR_NULL_POINTER);
}

static void test_create_errors(void **state)
{
    (void)state;
    attn_mha *m = (attn_mha *)&m;
    assert_int_equal(attn_mha_create(NULL, &m), ATTN_ERR_NULL_POINTER);
    assert_null(m);
    attn_mha_desc d;
    assert_int_equal(attn_mha_create(&d, NULL), ATTN_ERR_NULL_POINTER);
#define CREATE_FAILS(stmt, status, text)                                                        \
    do {                                                                                        \
        attn_mha_desc_init(&d);                                                                 \
        d.embed_dim = 8, d.heads = 2, d.threads = 1;                                            \
        stmt;                                                                                   \
        m = (attn_mha *)&m;                                                                     \
        attn_status st_ = attn_mha_create(&d, &m);                                              \
        if (st_ != (status) || m != NULL || !strstr(attn_mha_last_error(NULL), text))           \
            fail_msg("create: got %s (%s), want %s with '%s'", attn_status_str(st_),           \
                     attn_mha_last_error(NULL), attn_status_str(status), text);                 \
    } while (0)
    CREATE_FAILS(d.struct_size = 7, ATTN_ERR_STRUCT_SIZE, "desc->struct_size = 7");
    CREATE_FAILS(d.embed_dim = 0, ATTN_ERR_ZERO_SIZE, "desc->embed_dim is 0");
    CREATE_FAILS(d.heads = 0, ATTN_ERR_ZERO_SIZE, "desc->heads is 0");
    CREATE_FAILS(d.heads = 3, ATTN_ERR_HEADS, "desc->heads = 3 does not divide embed_dim = 8");
    CREATE_FAILS(d.kv_heads = 3, ATTN_ERR_HEADS, "desc->kv_heads = 3 does not divide heads = 2");
    CREATE_FAILS(d.kdim = ATTN_MHA_MAX_DIM + 1, ATTN_ERR_LIMIT, "desc->kdim");
    CREATE_FAILS((d.embed_dim = 40000, d.heads = 1), ATTN_ERR_LIMIT, "ATTN_MAX_HEAD_DIM");
    CREATE_FAILS(d.threads = ATTN_MAX_THREADS + 1, ATTN_ERR_LIMIT, "desc->threads");
    CREATE_FAILS(d.bias = 2, ATTN_ERR_BAD_OPTION, "desc->bias = 2");
    CREATE_FAILS(d.flags = 0x8, ATTN_ERR_BAD_OPTION, "desc->flags");
    CREATE_FAILS(d.masked_rows = 2, ATTN_ERR_BAD_OPTION, "desc->masked_rows");
    CREATE_FAILS(d.dropout = 1.0f, ATTN_ERR_BAD_OPTION, "desc->dropout");
    CREATE_FAILS(d.dropout = NAN, ATTN_ERR_BAD_OPTION, "desc->dropout");
    attn_allocator bad = {NULL, NULL, NULL};
    CREATE_FAILS(d.allocator = &bad, ATTN_ERR_NULL_POINTER, "desc->allocator");
    attn_mha_destroy(NULL);
}

/* An allocator that fails from its n-th call on, and counts what is still allocated. */
typedef struct counting {
    int calls, fail_at, live;
} counting;

static void *counting_alloc(void *user, size_t size, size_t alignment)
{
    counting *c = user;
    if (++c->calls >= c->fail_at)
        return NULL;
    void *p = aligned_alloc(alignment, (size + alignment - 1) / alignment * alignment);
    c->live += p != NULL;
    return p;
}

static void counting_free(void *user, void *p)
{
    counting *c = user;
    c->live--;
    free(p);
}

static void test_allocation_failure(void **state)
{
    (void)state;
    for (int fail_at = 1; fail_at <= 3; fail_at++) {
        counting c = {0, fail_at, 0};
        attn_allocator al = {counting_alloc, counting_free, &c};
        attn_mha_desc d;
        attn_mha_desc_init(&d);
        d.embed_dim = 8, d.heads = 2, d.threads = 2, d.allocator = &al;
        attn_mha *m = (attn_mha *)&m;
        attn_status st = attn_mha_create(&d, &m);
        if (c.calls < fail_at) { /* every allocation succeeded */
            assert_int_equal(st, ATTN_OK);
            attn_mha_destroy(m);
        } else {
            assert_int_equal(st, ATTN_ERR_NO_MEMORY);
            assert_null(m);
            assert_true(strlen(attn_mha_last_error(NULL)) > 0);
        }
        assert_int_equal(c.live, 0); /* nothing left behind */
    }
}

static void test_sizes(void **state)
{
    (void)state;
    attn_mha_desc d;
    attn_mha_desc_init(&d);
    d.embed_dim = 8, d.heads = 2, d.kv_heads = 1, d.threads = 1;
    attn_mha *m;
    assert_int_equal(attn_mha_create(&d, &m), ATTN_OK);
    /* floats: Q 2*5*8 + K, V 2*7*4 each + O 2*5*8 + key row 2*7, each rounded to 16, + slack */
    assert_int_equal(attn_mha_activation_size(m, 2, 5, 7), 64 + 4 * (192 + 80 + 16));
    assert_int_equal(attn_mha_saved_size(m, 2, 5, 7), 64 + 4 * (192 + 80 + 32));
    assert_int_equal(attn_mha_activation_size(m, 0, 5, 7), 0);
    assert_int_equal(attn_mha_activation_size(NULL, 1, 5, 7), 0);
    assert_int_equal(attn_mha_saved_size(m, 1, 0, 7), 0);
    assert_true(attn_mha_activation_size(m, UINT32_MAX, UINT32_MAX, UINT32_MAX) == 0 ||
                sizeof(size_t) > 8);
    attn_mha_destroy(m);
}

/* The values and layout a binding mirrors (docs/guide.md, "For bindings"). */
static void test_pinned(void **state)
{
    (void)state;
    assert_int_equal(ATTN_MHA_MASK_2D, 0);
    assert_int_equal(ATTN_MHA_MASK_3D, 1);
    assert_int_equal(ATTN_MHA_GRAD_SET, 0);
    assert_int_equal(ATTN_MHA_GRAD_ADD, 1);
    assert_int_equal(ATTN_MHA_MAX_DIM, 1048576);
    if (sizeof(void *) == 8 && sizeof(size_t) == 8) {
        assert_int_equal(sizeof(attn_mha_desc), 56);
        assert_int_equal(offsetof(attn_mha_desc, dropout), 40);
        assert_int_equal(offsetof(attn_mha_desc, allocator), 48);
        assert_int_equal(sizeof(attn_mha_args), 216);
        assert_int_equal(offsetof(attn_mha_args, activations), 168);
        assert_int_equal(offsetof(attn_mha_args, dropout_seed), 200);
        assert_int_equal(sizeof(attn_mha_grads), 104);
    }
    /* the init functions write exactly the size they are given, defaults included */
    unsigned char buf[sizeof(attn_mha_desc) + 8];
    memset(buf, 0xEE, sizeof buf);
    attn_mha_desc_init_size((attn_mha_desc *)buf, sizeof(attn_mha_desc));
    assert_int_equal(buf[sizeof(attn_mha_desc)], 0xEE);
    attn_mha_desc d;
    memcpy(&d, buf, sizeof d);
    assert_int_equal(d.embed_dim, 64);
    assert_int_equal(d.heads, 1);
    assert_int_equal(d.bias, 1);
    attn_mha_args a;
    attn_mha_args_init(&a);
    assert_int_equal(a.struct_size, sizeof a);
    assert_null(a.query);
    attn_mha_grads g;
    attn_mha_grads_init(&g);
    assert_int_equal(g.mode, ATTN_MHA_GRAD_SET);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random),
        cmocka_unit_test(test_reference_finite_differences),
        cmocka_unit_test(test_threads_bitwise),
        cmocka_unit_test(test_threads_bitwise_large),
        cmocka_unit_test(test_forward_errors),
        cmocka_unit_test(test_backward_errors),
        cmocka_unit_test(test_create_errors),
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_pinned),
        cmocka_unit_test(test_allocation_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
