/*
 * A tiny Transformer-style encoder-decoder built from two attn_mha layers, trained with Adam
 * to reverse sequences of tokens:
 *
 *   encoder:  x = token embedding + position embedding;  h = x + SelfAttention(x)
 *   decoder:  q = a learned query per output position;   z = q + CrossAttention(q, h, h)
 *   output:   logits = z Wcᵀ + bc, cross-entropy against the input reversed
 *
 * Output position i must learn to look at input position L-1-i, so the decoder's cross-attention
 * weights, printed at the end as a text heat map, draw the anti-diagonal as training succeeds.
 * Exits with status 1 if the loss did not fall below a fifth of its start (used by ctest).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <attn/attn_mha.h>

enum { V = 8, L = 8, E = 32, H = 2, B = 16, STEPS = 400 };

/* ---- parameters and Adam ---------------------------------------------------------------------- */

typedef struct param {
    float *w, *g, *m, *v;
    size_t n;
} param;

static uint64_t rng_state = 12345;

static double uniform(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) * 0x1p-53;
}

static double normal(void)
{
    double u = uniform() + 1e-300, v = uniform();
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

static param make_param(size_t n, double std)
{
    param p = {xcalloc(n, 4), xcalloc(n, 4), xcalloc(n, 4), xcalloc(n, 4), n};
    for (size_t i = 0; i < n; i++)
        p.w[i] = (float)(std * normal());
    return p;
}

static void adam(param *p, int step, float lr)
{
    const float b1 = 0.9f, b2 = 0.999f;
    float c1 = 1.0f - powf(b1, (float)step), c2 = 1.0f - powf(b2, (float)step);
    for (size_t i = 0; i < p->n; i++) {
        p->m[i] = b1 * p->m[i] + (1 - b1) * p->g[i];
        p->v[i] = b2 * p->v[i] + (1 - b2) * p->g[i] * p->g[i];
        p->w[i] -= lr * (p->m[i] / c1) / (sqrtf(p->v[i] / c2) + 1e-8f);
    }
}

static void free_param(param *p)
{
    free(p->w), free(p->g), free(p->m), free(p->v);
}

/* One attention layer: its object, its parameters and its per-call buffers. */
typedef struct layer {
    attn_mha *mha;
    param in_w, in_b, out_w, out_b;
    void *act, *saved;
    size_t act_size, saved_size;
} layer;

static void check(attn_status st, const attn_mha *m, const char *what)
{
    if (st != ATTN_OK) {
        fprintf(stderr, "%s: %s (%s)\n", what, attn_status_str(st), attn_mha_last_error(m));
        exit(2);
    }
}

static void make_layer(layer *l)
{
    attn_mha_desc d;
    attn_mha_desc_init(&d);
    d.embed_dim = E, d.heads = H, d.threads = 1;
    check(attn_mha_create(&d, &l->mha), NULL, "attn_mha_create");
    l->in_w = make_param(3 * E * E, 1.0 / sqrt(E));
    l->in_b = make_param(3 * E, 0.0);
    l->out_w = make_param(E * E, 1.0 / sqrt(E));
    l->out_b = make_param(E, 0.0);
    l->act_size = attn_mha_activation_size(l->mha, B, L, L);
    l->saved_size = attn_mha_saved_size(l->mha, B, L, L);
    l->act = xcalloc(l->act_size, 1), l->saved = xcalloc(l->saved_size, 1);
}

static void layer_args(layer *l, const float *q, const float *kv, float *out, attn_mha_args *a)
{
    attn_mha_args_init(a);
    a->batch = B, a->q_len = L, a->kv_len = L;
    a->query = q, a->key = kv, a->value = kv, a->out = out;
    a->in_proj_weight = l->in_w.w, a->in_proj_bias = l->in_b.w;
    a->out_proj_weight = l->out_w.w, a->out_proj_bias = l->out_b.w;
    a->activations = l->act, a->activation_size = l->act_size;
    a->saved = l->saved, a->saved_size = l->saved_size;
}

static void layer_grads(layer *l, const float *dout, float *dq, float *dkv, attn_mha_grads *g)
{
    attn_mha_grads_init(g);
    g->dout = dout;
    g->d_query = dq, g->d_key = dkv, g->d_value = dkv;
    g->d_in_proj_weight = l->in_w.g, g->d_in_proj_bias = l->in_b.g;
    g->d_out_proj_weight = l->out_w.g, g->d_out_proj_bias = l->out_b.g;
}

static void free_layer(layer *l)
{
    attn_mha_destroy(l->mha);
    free_param(&l->in_w), free_param(&l->in_b), free_param(&l->out_w), free_param(&l->out_b);
    free(l->act), free(l->saved);
}

/* ---- the model -------------------------------------------------------------------------------- */

static void heat_map(const float *w)
{
    const char *shades = " .:-=+*#%@";
    printf("decoder cross-attention, batch entry 0 (rows: output positions, columns: input "
           "positions; head mean)\n     ");
    for (int j = 0; j < L; j++)
        printf("%d", j);
    printf("\n");
    for (int i = 0; i < L; i++) {
        printf("  %d  ", i);
        for (int j = 0; j < L; j++) {
            int s = (int)(w[i * L + j] * 9.999f);
            putchar(shades[s < 0 ? 0 : s > 9 ? 9 : s]);
        }
        printf("   ");
        for (int j = 0; j < L; j++)
            printf(" %.2f", w[i * L + j]);
        printf("\n");
    }
}

int main(void)
{
    param tok = make_param(V * E, 0.5), pos = make_param(L * E, 0.5), dec = make_param(L * E, 0.5);
    param wc = make_param(V * E, 1.0 / sqrt(E)), bc = make_param(V, 0.0);
    layer enc, crs;
    make_layer(&enc), make_layer(&crs);
    size_t n = (size_t)B * L * E;
    float *x = xcalloc(n, 4), *a = xcalloc(n, 4), *h = xcalloc(n, 4), *q = xcalloc(n, 4);
    float *c = xcalloc(n, 4), *z = xcalloc(n, 4), *dz = xcalloc(n, 4), *dq = xcalloc(n, 4);
    float *dh = xcalloc(n, 4), *dx = xcalloc(n, 4);
    float *weights = xcalloc((size_t)B * L * L, 4);
    float logits[V];
    int tokens[B][L];
    double first = 0.0, last = 0.0;

    for (int step = 1; step <= STEPS; step++) {
        for (int b = 0; b < B; b++)
            for (int i = 0; i < L; i++)
                tokens[b][i] = (int)(uniform() * V);
        /* forward */
        for (int b = 0; b < B; b++)
            for (int i = 0; i < L; i++)
                for (int e = 0; e < E; e++) {
                    size_t at = ((size_t)b * L + i) * E + e;
                    x[at] = tok.w[tokens[b][i] * E + e] + pos.w[i * E + e];
                    q[at] = dec.w[i * E + e];
                }
        attn_mha_args ea, ca;
        layer_args(&enc, x, x, a, &ea);
        check(attn_mha_forward(enc.mha, &ea), enc.mha, "encoder forward");
        for (size_t i = 0; i < n; i++)
            h[i] = x[i] + a[i];
        layer_args(&crs, q, h, c, &ca);
        if (step == 1 || step == STEPS)
            ca.weights_mode = ATTN_WEIGHTS_HEAD_MEAN, ca.weights = weights;
        check(attn_mha_forward(crs.mha, &ca), crs.mha, "decoder forward");
        for (size_t i = 0; i < n; i++)
            z[i] = q[i] + c[i];
        /* loss and its gradient */
        double loss = 0.0;
        memset(wc.g, 0, wc.n * 4), memset(bc.g, 0, bc.n * 4);
        for (int b = 0; b < B; b++)
            for (int i = 0; i < L; i++) {
                const float *zr = z + ((size_t)b * L + i) * E;
                float *dzr = dz + ((size_t)b * L + i) * E;
                int target = tokens[b][L - 1 - i];
                float mx = -INFINITY, sum = 0.0f;
                for (int v = 0; v < V; v++) {
                    float s = bc.w[v];
                    for (int e = 0; e < E; e++)
                        s += zr[e] * wc.w[v * E + e];
                    logits[v] = s;
                    mx = fmaxf(mx, s);
                }
                for (int v = 0; v < V; v++)
                    sum += expf(logits[v] - mx);
                loss -= (logits[target] - mx - logf(sum)) / (B * L);
                memset(dzr, 0, E * 4);
                for (int v = 0; v < V; v++) {
                    float dl = (expf(logits[v] - mx) / sum - (v == target)) / (B * L);
                    bc.g[v] += dl;
                    for (int e = 0; e < E; e++) {
                        wc.g[v * E + e] += dl * zr[e];
                        dzr[e] += dl * wc.w[v * E + e];
                    }
                }
            }
        if (step == 1) {
            first = loss;
            printf("before training:\n");
            heat_map(weights);
        }
        last = loss;
        if (step == 1 || step % 50 == 0)
            printf("step %3d  loss %.4f\n", step, loss);
        /* backward: the decoder's cross-attention (h is key and value: one gradient buffer) */
        attn_mha_grads g;
        layer_grads(&crs, dz, dq, dh, &g);
        check(attn_mha_backward(crs.mha, &ca, &g), crs.mha, "decoder backward");
        memset(dec.g, 0, dec.n * 4);
        for (int b = 0; b < B; b++)
            for (int i = 0; i < L * E; i++)
                dec.g[i] += dz[(size_t)b * L * E + i] + dq[(size_t)b * L * E + i];
        /* the encoder's self-attention: x is query, key and value, dx receives the sum */
        layer_grads(&enc, dh, dx, dx, &g);
        check(attn_mha_backward(enc.mha, &ea, &g), enc.mha, "encoder backward");
        memset(tok.g, 0, tok.n * 4), memset(pos.g, 0, pos.n * 4);
        for (int b = 0; b < B; b++)
            for (int i = 0; i < L; i++)
                for (int e = 0; e < E; e++) {
                    size_t at = ((size_t)b * L + i) * E + e;
                    float gx = dh[at] + dx[at]; /* residual + attention */
                    tok.g[tokens[b][i] * E + e] += gx;
                    pos.g[i * E + e] += gx;
                }
        param *all[] = {&tok, &pos, &dec, &wc, &bc, &enc.in_w, &enc.in_b, &enc.out_w,
                        &enc.out_b, &crs.in_w, &crs.in_b, &crs.out_w, &crs.out_b};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
            adam(all[i], step, 0.01f);
    }
    printf("input  (batch entry 0):");
    for (int i = 0; i < L; i++)
        printf(" %d", tokens[0][i]);
    printf("\n");
    printf("after %d steps:\n", STEPS);
    heat_map(weights);
    printf("loss %.4f -> %.4f\n", first, last);

    free(x), free(a), free(h), free(q), free(c), free(z), free(dz), free(dq), free(dh), free(dx);
    free(weights);
    free_layer(&enc), free_layer(&crs);
    free_param(&tok), free_param(&pos), free_param(&dec), free_param(&wc), free_param(&bc);
    if (!(last < first / 5)) {
        fprintf(stderr, "the loss did not fall enough\n");
        return 1;
    }
    return 0;
}
