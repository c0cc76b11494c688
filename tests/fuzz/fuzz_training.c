/*
 * Fuzz target for the training and storage options: attn_forward with dropout, float16/bfloat16
 * K and V, strided optional outputs, then attn_backward with the same dropout key, dbias over
 * broadcast axes, GQA, causal/window/offsets, kv_lens, masks and -inf biases, 1 to 4 threads,
 * and the decode (thin) shapes. Every accepted call is checked against the float64 oracles
 * (fed with the widened K/V and the public dropout mask); inputs must be unchanged after the
 * calls; a refused backward (dbias without bias, a NULL gradient, overlapping gradients, a
 * negative stride) must write nothing. Anything else aborts.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <attn/attn.h>

#include "fuzz_bytes.h"
#include "support/check.h"
#include "support/reference_backward.h"

long fuzz_outcomes[4]; /* [1] refused, [2] computed and checked (the replay driver prints them) */


static unsigned pick(bytes *b, unsigned n)
{
    return byte(b) % n;
}

static uint64_t state;
static float value(double amp)
{
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)(((double)(state >> 40) * 0x1p-24 - 0.5) * 2.0 * amp);
}

static void fail(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz_training: %s: %s\n", what, detail);
    abort();
}

static uint16_t to16(float x, uint32_t kv_dtype, float *widened)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if (kv_dtype == ATTN_KV_BF16) {
        uint16_t h = (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
        uint32_t w = (uint32_t)h << 16;
        memcpy(widened, &w, 4);
        return h;
    }
    /* binary16 by truncation to a value the type holds exactly (any value will do) */
    float a = fabsf(x);
    int e;
    frexpf(a, &e);
    float q = a < 0x1p-14f ? 0.0f : ldexpf(floorf(ldexpf(a, 11 - e)), e - 11);
    *widened = x < 0 ? -q : q;
    if (q == 0.0f)
        return x < 0 ? 0x8000 : 0;
    int ex;
    float m = frexpf(q, &ex); /* q = m 2^ex, m in [0.5, 1) */
    uint16_t bits = (uint16_t)(((ex - 1 + 15) << 10) | ((uint32_t)ldexpf(m * 2.0f - 1.0f, 10) & 0x3FF));
    return (uint16_t)(bits | (x < 0 ? 0x8000 : 0));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bytes in = {data, size, 0, 0x9E3779B97F4A7C15ull ^ size};
    state = 0x12345 + size;
    for (size_t i = 0; i < size; i++)
        state = state * 31 + data[i];
    int decode = pick(&in, 4) == 0;
    int64_t B = 1 + pick(&in, 2), Hkv = 1 + pick(&in, 3), Hq = Hkv * (1 + pick(&in, 3));
    int64_t Lq = decode ? 1 + pick(&in, 8) : 1 + pick(&in, 70);
    int64_t Lk = decode ? 512 + pick(&in, 200) : 1 + pick(&in, 140);
    int64_t D = 1 + pick(&in, 40), Dv = 1 + pick(&in, 40);
    attn_desc d;
    attn_desc_init(&d);
    d.q_heads = (uint32_t)Hq, d.kv_heads = (uint32_t)Hkv, d.qk_dim = (uint32_t)D, d.v_dim = (uint32_t)Dv;
    d.kv_dtype = pick(&in, 3);
    static const float drops[] = {0.0f, 0.0f, 0.1f, 0.5f};
    d.dropout = drops[pick(&in, 4)];
    d.flags = pick(&in, 3) == 0 ? ATTN_CAUSAL : 0;
    d.window_left = pick(&in, 4) == 0 ? (int64_t)pick(&in, 50) : -1;
    d.window_right = pick(&in, 5) == 0 ? (int64_t)pick(&in, 50) : -1;
    d.threads = 1 + pick(&in, 4);
    d.ops = ATTN_OP_FORWARD | ATTN_OP_BACKWARD;
    double amp = pick(&in, 6) == 0 ? 20.0 : 1.0;

    size_t nq = (size_t)(B * Hq * Lq * D), nk = (size_t)(B * Hkv * Lk * D), nv = (size_t)(B * Hkv * Lk * Dv);
    size_t rows = (size_t)(B * Hq * Lq), no = rows * (size_t)Dv;
    float *q = malloc(nq * 4), *kf = malloc(nk * 4), *vf = malloc(nv * 4), *dout = malloc(no * 4);
    uint16_t *k16 = malloc(nk * 2), *v16 = malloc(nv * 2);
    float *o = calloc(no, 4), *lse = calloc(rows * 3, 4), *ent = calloc(rows * 3, 4);
    for (size_t i = 0; i < nq; i++) q[i] = value(amp);
    for (size_t i = 0; i < no; i++) dout[i] = value(1.0);
    for (size_t i = 0; i < nk; i++) { kf[i] = value(1.0); if (d.kv_dtype) k16[i] = to16(kf[i], d.kv_dtype, &kf[i]); }
    for (size_t i = 0; i < nv; i++) { vf[i] = value(1.0); if (d.kv_dtype) v16[i] = to16(vf[i], d.kv_dtype, &vf[i]); }
    float *qc = malloc(nq * 4), *kc = malloc(nk * 4);
    memcpy(qc, q, nq * 4), memcpy(kc, kf, nk * 4);

    attn_args a;
    attn_args_init(&a);
    a.batch = (uint32_t)B, a.q_len = (uint32_t)Lq, a.kv_len = (uint32_t)Lk;
    a.q = q, a.q_strides = attn_strides_bhsd(d.q_heads, a.q_len, d.qk_dim);
    a.k = d.kv_dtype ? (const float *)(const void *)k16 : kf, a.k_strides = attn_strides_bhsd(d.kv_heads, a.kv_len, d.qk_dim);
    a.v = d.kv_dtype ? (const float *)(const void *)v16 : vf, a.v_strides = attn_strides_bhsd(d.kv_heads, a.kv_len, d.v_dim);
    a.out = o, a.out_strides = attn_strides_bhsd(d.q_heads, a.q_len, d.v_dim);
    /* lse and entropy in a permuted layout every other time: [B, Lq, Hq] in a padded buffer */
    int permuted = pick(&in, 2);
    a.lse = lse, a.entropy = ent;
    if (permuted)
        a.lse_strides = a.entropy_strides = (attn_strides){Lq * Hq * 2, 2, Hq * 2};
    if (d.flags || d.window_left >= 0 || d.window_right >= 0)
        a.q_offset = pick(&in, 2) ? ATTN_Q_OFFSET_DEFAULT : (int64_t)pick(&in, 200) - 100;
    int32_t lens[2];
    if (pick(&in, 4) == 0) {
        for (int64_t b = 0; b < B; b++) lens[b] = (int32_t)pick(&in, (unsigned)Lk + 1);
        a.kv_lens = lens;
    }
    uint8_t *mask = NULL;
    float *bias = NULL, *dbias = NULL;
    int64_t Bb = B, Hb = Hq, Lqb = Lq;
    if (pick(&in, 4) == 0) {
        mask = malloc((size_t)(Hq * Lq * Lk));
        for (int64_t i = 0; i < Hq * Lq * Lk; i++) mask[i] = pick(&in, 5) != 0;
        a.mask = mask, a.mask_strides = (attn_strides){0, Lq * Lk, Lk}; /* broadcast over batch */
    }
    if (pick(&in, 3) == 0) {
        Bb = pick(&in, 2) ? B : 1, Hb = pick(&in, 2) ? Hq : 1, Lqb = pick(&in, 3) ? Lq : 1;
        size_t nb = (size_t)(Bb * Hb * Lqb * Lk);
        bias = malloc(nb * 4);
        for (size_t i = 0; i < nb; i++) bias[i] = pick(&in, 16) == 0 ? -INFINITY : value(2.0);
        a.bias = bias;
        a.bias_strides = (attn_strides){Bb == 1 ? 0 : Hb * Lqb * Lk, Hb == 1 ? 0 : Lqb * Lk, Lqb == 1 ? 0 : Lk};
        if (pick(&in, 2))
            dbias = malloc(nb * 4);
    }
    a.dropout_seed = ((uint64_t)byte(&in) << 40) | byte(&in), a.dropout_offset = byte(&in);

    attn_ctx *ctx;
    if (attn_create(&d, &ctx) != ATTN_OK)
        fail("attn_create", attn_last_error(NULL));
    attn_status st = attn_forward(ctx, &a);
    if (st != ATTN_OK)
        fail("attn_forward refused a valid call", attn_last_error(ctx));
    if (memcmp(qc, q, nq * 4) != 0 || (!d.kv_dtype && memcmp(kc, kf, nk * 4) != 0))
        fail("attn_forward", "an input changed");

    /* the oracle: widened K/V, the public mask, dense lse/entropy */
    unsigned char *keep = NULL;
    double scale = 1.0;
    attn_args fa = a;
    fa.k = kf, fa.v = vf;
    float *lse_d = malloc(rows * 4), *ent_d = malloc(rows * 4);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < Hq; h++)
            for (int64_t i = 0; i < Lq; i++) {
                int64_t at = permuted ? b * Lq * Hq * 2 + h * 2 + i * Hq * 2 : (b * Hq + h) * Lq + i;
                lse_d[(b * Hq + h) * Lq + i] = lse[at], ent_d[(b * Hq + h) * Lq + i] = ent[at];
            }
    fa.lse = lse_d, fa.entropy = ent_d, fa.lse_strides = fa.entropy_strides = (attn_strides){0, 0, 0};
    ref_problem p = ref_problem_from(&d, &fa);
    ref_result res;
    ref_attention(&p, &res);
    if (d.dropout > 0.0f) {
        keep = malloc(rows * (size_t)Lk);
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < Hq; h++)
                if (attn_dropout_mask(d.dropout, a.dropout_seed, a.dropout_offset, (uint32_t)Hq, (uint32_t)b,
                                      (uint32_t)h, 0, Lq, 0, Lk, keep + (b * Hq + h) * Lq * Lk, Lk) != ATTN_OK)
                    fail("attn_dropout_mask", attn_last_error(NULL));
        scale = (double)(float)(1.0 / (1.0 - (double)d.dropout));
        for (size_t row = 0; row < rows; row++) {
            int64_t b = (int64_t)(row / (size_t)(Hq * Lq)), g = (int64_t)(row / (size_t)Lq) % Hq / (Hq / Hkv);
            for (int64_t e = 0; e < Dv; e++) {
                double acc = 0.0, mag = 0.0;
                for (int64_t j = 0; j < Lk; j++) {
                    double w = res.weights[row * Lk + j] * (keep[row * Lk + j] ? scale : 0.0);
                    double x = vf[((b * Hkv + g) * Lk + j) * Dv + e];
                    acc += w * x, mag += w * fabs(x);
                }
                res.out[row * Dv + e] = acc;
                res.out_tol[row * Dv + e] = res.out_tol[row * Dv + e] * scale + 4 * 0x1p-24 * mag + 1e-30;
            }
        }
    }
    check_stats cs = {0};
    check_outputs(&p, &res, &d, &fa, "fuzz_training forward", &cs);
    if (cs.failures)
        fail("forward out of tolerance", cs.first_failure);

    /* the backward, sometimes with a fault it must refuse without writing */
    float *dq = malloc(nq * 4 + 64), *dk = malloc(nk * 4 + 64), *dv = malloc(nv * 4 + 64);
    memset(dq, 0x7F, nq * 4), memset(dk, 0x7F, nk * 4), memset(dv, 0x7F, nv * 4);
    attn_backward_args g;
    attn_backward_args_init(&g);
    g.batch = a.batch, g.q_len = a.q_len, g.kv_len = a.kv_len;
    g.q = a.q, g.q_strides = a.q_strides, g.k = a.k, g.k_strides = a.k_strides, g.v = a.v, g.v_strides = a.v_strides;
    g.out = o, g.out_strides = a.out_strides, g.dout = dout, g.dout_strides = a.out_strides;
    g.lse = lse, g.lse_strides = a.lse_strides, g.q_offset = a.q_offset, g.kv_lens = a.kv_lens;
    g.mask = a.mask, g.mask_strides = a.mask_strides, g.bias = a.bias, g.bias_strides = a.bias_strides;
    g.dq = dq, g.dq_strides = a.q_strides, g.dk = dk, g.dk_strides = a.k_strides, g.dv = dv, g.dv_strides = a.v_strides;
    g.dbias = dbias, g.dropout_seed = a.dropout_seed, g.dropout_offset = a.dropout_offset;
    int fault = pick(&in, 8);
    switch (fault) {
    case 0: g.dk = dq; break;                                  /* overlapping outputs */
    case 1: g.dout = NULL; break;
    case 2: g.bias = NULL, g.dbias = dv; break;                /* dbias without bias */
    case 3: g.dv_strides.seq = -1; break;
    default: fault = -1;
    }
    st = attn_backward(ctx, &g);
    if (fault >= 0) {
        if (st == ATTN_OK)
            fail("attn_backward", "accepted a faulty call");
        const unsigned char *bq = (const void *)dq, *bk = (const void *)dk, *bv = (const void *)dv;
        for (size_t i = 0; i < nq * 4; i++) if (bq[i] != 0x7F) fail("attn_backward", "wrote dq on failure");
        for (size_t i = 0; i < nk * 4; i++) if (bk[i] != 0x7F) fail("attn_backward", "wrote dk on failure");
        for (size_t i = 0; i < nv * 4; i++) if (bv[i] != 0x7F) fail("attn_backward", "wrote dv on failure");
        fuzz_outcomes[1]++;
    } else {
        if (st != ATTN_OK)
            fail("attn_backward refused a valid call", attn_last_error(ctx));
        /* the backward oracle takes P before dropout: the forward oracle's weights, intact */
        double *gd = malloc(no * sizeof(double));
        for (size_t i = 0; i < no; i++) gd[i] = dout[i];
        ref_grads rg;
        ref_backward_dropout(&p, &res, gd, keep, scale, &rg);
        grad_stats gs = {0, 0, 0.0, ""};
        check_grad("dq", dq, g.dq_strides, B, Hq, Lq, D, rg.dq, rg.dq_tol, "fuzz_training", &gs);
        check_grad("dk", dk, g.dk_strides, B, Hkv, Lk, D, rg.dk, rg.dk_tol, "fuzz_training", &gs);
        check_grad("dv", dv, g.dv_strides, B, Hkv, Lk, Dv, rg.dv, rg.dv_tol, "fuzz_training", &gs);
        if (dbias) {
            attn_strides s = {Hb * Lqb * Lk, Lqb * Lk, Lk};
            check_grad("dbias", dbias, s, Bb, Hb, Lqb, Lk, rg.dbias, rg.dbias_tol, "fuzz_training", &gs);
        }
        if (gs.failures)
            fail("backward out of tolerance", gs.first_failure);
        ref_grads_free(&rg);
        free(gd);
        fuzz_outcomes[2]++;
    }
    ref_free(&res);
    attn_destroy(ctx);
    free(q), free(kf), free(vf), free(dout), free(k16), free(v16), free(o), free(lse), free(ent);
    free(qc), free(kc), free(mask), free(bias), free(dbias), free(keep), free(lse_d), free(ent_d);
    free(dq), free(dk), free(dv);
    return 0;
}
