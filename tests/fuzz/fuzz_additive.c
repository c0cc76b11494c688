/*
 * Fuzz target for additive attention (include/attn/attn_additive.h): the bytes choose the
 * layer (dims, bias, causal, masked-row policy, threads 1..4) and a call (lengths across tile
 * edges, kv_lens including out-of-range values, a mask, the optional outputs, buffers one byte
 * short, overlapping outputs, non-finite inputs). A refused call must write nothing; an
 * accepted call with finite inputs must match the float64 reference (forward and backward)
 * within the tolerance of docs/testing.md; with non-finite inputs it must simply return.
 * Anything else aborts.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <attn/attn_additive.h>

#include "support/additive_run.h"

long fuzz_outcomes[4]; /* [0] refused by create, [1] refused by a call, [2] computed and checked */

typedef struct bytes {
    const uint8_t *p;
    size_t n, at;
    uint64_t tail;
} bytes;

static unsigned byte(bytes *b)
{
    if (b->at < b->n)
        return b->p[b->at++];
    b->tail = b->tail * 6364136223846793005ull + 1442695040888963407ull;
    return (unsigned)(b->tail >> 56);
}

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
    fprintf(stderr, "fuzz_additive: %s: %s\n", what, detail);
    abort();
}

static float *floats(size_t n, double amp)
{
    float *x = malloc((n ? n : 1) * sizeof *x);
    if (!x)
        abort();
    for (size_t i = 0; i < n; i++)
        x[i] = value(amp);
    return x;
}

/* Copies of the output buffers, to prove a refused call wrote nothing. */
typedef struct guard {
    void *p[12];
    unsigned char *copy[12];
    size_t n[12];
    int count;
} guard;

static void guard_add(guard *g, void *p, size_t n)
{
    if (!p || !n)
        return;
    g->p[g->count] = p, g->n[g->count] = n;
    g->copy[g->count] = malloc(n);
    if (!g->copy[g->count])
        abort();
    memcpy(g->copy[g->count], p, n);
    g->count++;
}

static void guard_check(guard *g, const char *call)
{
    for (int i = 0; i < g->count; i++) {
        if (memcmp(g->p[i], g->copy[i], g->n[i]) != 0)
            fail(call, "a refused call wrote into a caller buffer");
        free(g->copy[i]);
    }
    g->count = 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bytes b = {data, size, 0, size};
    state = 0x9E3779B97F4A7C15ull ^ size;
    attn_additive_desc d;
    attn_additive_desc_init(&d);
    d.q_dim = 1 + pick(&b, 12), d.k_dim = 1 + pick(&b, 12), d.v_dim = 1 + pick(&b, 12);
    d.attn_dim = 1 + pick(&b, 40);
    d.bias = pick(&b, 4) != 0;
    d.flags = pick(&b, 2) ? ATTN_CAUSAL : 0;
    d.masked_rows = pick(&b, 4) == 0 ? ATTN_MASKED_ROWS_NAN : ATTN_MASKED_ROWS_ZERO;
    d.threads = 1 + pick(&b, 4);
    if (pick(&b, 32) == 0)
        d.attn_dim = 0; /* refused */
    attn_additive *m;
    if (attn_additive_create(&d, &m) != ATTN_OK) {
        fuzz_outcomes[0]++;
        return 0;
    }
    int B = 1 + (int)pick(&b, 3), Lq = 1 + (int)pick(&b, 40);
    int Lk = pick(&b, 4) == 0 ? 200 + (int)pick(&b, 120) : 1 + (int)pick(&b, 40);
    int Dq = (int)d.q_dim, Dk = (int)d.k_dim, Dv = (int)d.v_dim, A = (int)d.attn_dim;
    size_t nq = (size_t)B * Lq, nk = (size_t)B * Lk;
    float *q = floats(nq * Dq, 1.0), *k = floats(nk * Dk, 1.0), *v = floats(nk * Dv, 1.0);
    float *wq = floats((size_t)A * Dq, 1.0), *wk = floats((size_t)A * Dk, 1.0);
    float *bias = floats((size_t)A, 0.5), *w = floats((size_t)A, 1.0), *dout = floats(nq * Dv, 1.0);
    int finite = 1;
    if (pick(&b, 16) == 0) { /* a non-finite input somewhere */
        float bad[3] = {NAN, INFINITY, -INFINITY};
        float *where[4] = {q, k, v, w};
        size_t len[4] = {nq * Dq, nk * Dk, nk * Dv, (size_t)A};
        unsigned t = pick(&b, 4);
        where[t][pick(&b, 255) % len[t]] = bad[pick(&b, 3)];
        finite = 0;
    }
    int32_t *kv_lens = NULL;
    if (pick(&b, 3) == 0) {
        kv_lens = malloc((size_t)B * sizeof *kv_lens);
        if (!kv_lens)
            abort();
        for (int x = 0; x < B; x++)
            kv_lens[x] = (int32_t)pick(&b, (unsigned)Lk + 1);
        if (pick(&b, 16) == 0)
            kv_lens[B - 1] = pick(&b, 2) ? Lk + 1 : -1; /* refused */
    }
    uint8_t *mask = NULL;
    if (pick(&b, 3) == 0) {
        mask = malloc(nq * Lk);
        if (!mask)
            abort();
        unsigned dens = 1 + pick(&b, 8);
        for (size_t x = 0; x < nq * Lk; x++)
            mask[x] = pick(&b, dens + 1) != 0;
    }
    size_t act = attn_additive_activation_size(m, (uint32_t)B, (uint32_t)Lq, (uint32_t)Lk);
    size_t sav = attn_additive_saved_size(m, (uint32_t)B, (uint32_t)Lq, (uint32_t)Lk);
    if (!act || !sav)
        fail("size query", "0 for a small problem");
    unsigned short_by = pick(&b, 16) == 0 ? 1u : 0u; /* one buffer a byte short */
    unsigned which_short = pick(&b, 2);
    unsigned char *abuf = calloc(act, 1), *sbuf = calloc(sav, 1);
    float *out = calloc(nq * Dv + 8, sizeof(float));
    float *weights = pick(&b, 2) ? calloc(nq * Lk, sizeof(float)) : NULL;
    float *lse = pick(&b, 2) ? calloc(nq, sizeof(float)) : NULL;
    float *ent = pick(&b, 2) ? calloc(nq, sizeof(float)) : NULL;
    if (!abuf || !sbuf || !out)
        abort();
    attn_additive_args a;
    attn_additive_args_init(&a);
    a.batch = (uint32_t)B, a.q_len = (uint32_t)Lq, a.kv_len = (uint32_t)Lk;
    a.query = q, a.key = k, a.value = v, a.out = out;
    a.w_q = wq, a.w_k = wk, a.bias = d.bias ? bias : NULL, a.w = w;
    if (!d.bias && pick(&b, 16) == 0)
        a.bias = bias; /* refused */
    a.kv_lens = kv_lens, a.mask = mask, a.weights = weights, a.lse = lse, a.entropy = ent;
    a.activations = abuf, a.activation_size = act - (which_short == 0 ? short_by : 0);
    a.saved = sbuf, a.saved_size = sav - (which_short == 1 ? short_by : 0);
    if (pick(&b, 32) == 0 && weights)
        a.weights = out + 1; /* overlaps out: refused */
    guard g = {0};
    guard_add(&g, out, (nq * Dv + 8) * sizeof(float));
    guard_add(&g, weights, nq * Lk * sizeof(float));
    guard_add(&g, lse, nq * sizeof(float));
    guard_add(&g, ent, nq * sizeof(float));
    guard_add(&g, sbuf, sav);
    attn_status st = attn_additive_forward(m, &a);
    float *grads[7] = {0};
    if (st != ATTN_OK) {
        guard_check(&g, "forward");
        if (!attn_additive_last_error(m)[0])
            fail("forward", "refused without a message");
        fuzz_outcomes[1]++;
        goto done;
    }
    for (int i = 0; i < g.count; i++)
        free(g.copy[i]);
    g.count = 0;
    size_t gn[7] = {nq * Dq, nk * Dk, nk * Dv, (size_t)A * Dq, (size_t)A * Dk, (size_t)A, (size_t)A};
    for (int i = 0; i < 7; i++) {
        grads[i] = pick(&b, 5) ? floats(gn[i], 3.0) : NULL;
        guard_add(&g, grads[i], gn[i] * sizeof(float));
    }
    attn_additive_grads gr;
    attn_additive_grads_init(&gr);
    gr.dout = dout;
    gr.d_query = grads[0], gr.d_key = grads[1], gr.d_value = grads[2];
    gr.d_w_q = grads[3], gr.d_w_k = grads[4], gr.d_bias = d.bias ? grads[5] : NULL;
    gr.d_w = grads[6];
    gr.mode = pick(&b, 8) == 0 ? ATTN_ADDITIVE_GRAD_ADD : ATTN_ADDITIVE_GRAD_SET;
    if (gr.mode == ATTN_ADDITIVE_GRAD_SET && pick(&b, 32) == 0 && grads[0] && grads[1])
        gr.d_key = grads[0]; /* overlap: refused */
    st = attn_additive_backward(m, &a, &gr);
    if (st != ATTN_OK) {
        guard_check(&g, "backward");
        fuzz_outcomes[1]++;
        goto done;
    }
    for (int i = 0; i < g.count; i++)
        free(g.copy[i]);
    g.count = 0;
    if (finite && gr.mode == ATTN_ADDITIVE_GRAD_SET && d.masked_rows == ATTN_MASKED_ROWS_ZERO) {
        adt_case c = {B, Lq, Lk, Dq, Dk, Dv, A, (int)d.bias, (d.flags & ATTN_CAUSAL) != 0,
                      kv_lens, mask, q, k, v, wq, wk, bias, w, dout, d.threads,
                      weights != NULL, lse != NULL, ent != NULL};
        refa_problem rp;
        adt_ref_problem(&c, &rp);
        refa_result r;
        refa_forward(&rp, &r);
        double *dd = refa_widen(dout, nq * Dv);
        refa_grads rg;
        refa_backward(&rp, &r, dd, &rg);
        /* every gradient buffer given; the others are compared against themselves */
        adt_out o = {out, weights, lse, ent, grads[0], grads[1], grads[2], grads[3], grads[4],
                     d.bias ? grads[5] : NULL, grads[6]};
        float *tmp[7] = {0};
        float **slot[7] = {&o.dq, &o.dk, &o.dv, &o.dwq, &o.dwk, &o.dbias, &o.dw};
        double *want[7] = {rg.dq, rg.dk, rg.dv, rg.dwq, rg.dwk, rg.dbias, rg.dw};
        for (int i = 0; i < 7; i++)
            if (!*slot[i]) {
                tmp[i] = malloc(gn[i] * sizeof(float) + 4);
                if (!tmp[i])
                    abort();
                for (size_t x = 0; x < gn[i]; x++)
                    tmp[i][x] = (float)want[i][x];
                *slot[i] = tmp[i];
            }
        char msg[512];
        double ratio = adt_check(&c, &o, &r, &rg, msg, sizeof msg);
        if (!(ratio <= 1.0))
            fail("result", msg);
        for (int i = 0; i < 7; i++)
            free(tmp[i]);
        refa_grads_free(&rg), refa_free(&r), adt_ref_free(&rp), free(dd);
        fuzz_outcomes[2]++;
    }
done:
    for (int i = 0; i < 7; i++)
        free(grads[i]);
    attn_additive_destroy(m);
    free(q), free(k), free(v), free(wq), free(wk), free(bias), free(w), free(dout);
    free(kv_lens), free(mask), free(abuf), free(sbuf), free(out), free(weights), free(lse), free(ent);
    return 0;
}
