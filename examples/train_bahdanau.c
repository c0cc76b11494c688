/*
 * A tiny Bahdanau-style encoder-decoder with additive attention (attn_additive), trained with
 * Adam to reverse sequences of tokens:
 *
 *   encoder:  h_j = token embedding + position embedding of input j      (the annotations)
 *   decoder:  s_i = a learned state per output position i                (in the original, an
 *             RNN's state; a table here keeps the example to the attention)
 *   attention: e_ij = wᵀ tanh(W_q s_i + W_k h_j + b),  c_i = Σ_j softmax_j(e_ij) h_j
 *   output:   logits_i = (s_i + c_i) Wcᵀ + bc, cross-entropy against the input reversed
 *
 * Output position i must learn to look at input position L-1-i, so the attention weights,
 * printed before and after training as a text heat map, draw the anti-diagonal as it learns.
 * Exits with status 1 if the loss did not fall below a fifth of its start (used by ctest).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <attn/attn_additive.h>

enum { V = 8, L = 8, E = 32, A = 32, B = 16, STEPS = 300 };

static uint64_t rng_state = 2014;

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

/* A parameter with its gradient and Adam's moments. */
typedef struct param {
    float *w, *g, *m, *v;
    size_t n;
} param;

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

static void check(attn_status st, const attn_additive *m, const char *what)
{
    if (st != ATTN_OK) {
        fprintf(stderr, "%s: %s (%s)\n", what, attn_status_str(st), attn_additive_last_error(m));
        exit(2);
    }
}

static void heat_map(const float *w)
{
    const char *shades = " .:-=+*#%@";
    printf("attention weights, batch entry 0 (rows: output positions, columns: input "
           "positions)\n     ");
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
    param wq = make_param(A * E, 1.0 / sqrt(E)), wk = make_param(A * E, 1.0 / sqrt(E));
    param bias = make_param(A, 0.0), w = make_param(A, 1.0 / sqrt(A));
    param wc = make_param(V * E, 1.0 / sqrt(E)), bc = make_param(V, 0.0);

    attn_additive_desc d;
    attn_additive_desc_init(&d);
    d.q_dim = d.k_dim = d.v_dim = E, d.attn_dim = A, d.threads = 1;
    attn_additive *att;
    check(attn_additive_create(&d, &att), NULL, "attn_additive_create");
    size_t act_size = attn_additive_activation_size(att, B, L, L);
    size_t saved_size = attn_additive_saved_size(att, B, L, L);
    void *act = xcalloc(act_size, 1), *saved = xcalloc(saved_size, 1);

    size_t n = (size_t)B * L * E;
    float *h = xcalloc(n, 4), *s = xcalloc(n, 4), *c = xcalloc(n, 4), *z = xcalloc(n, 4);
    float *dz = xcalloc(n, 4), *ds = xcalloc(n, 4), *dk = xcalloc(n, 4), *dv = xcalloc(n, 4);
    float *weights = xcalloc((size_t)B * L * L, 4);
    float logits[V];
    int tokens[B][L];
    double first = 0.0, last = 0.0;

    for (int step = 1; step <= STEPS; step++) {
        for (int b = 0; b < B; b++)
            for (int i = 0; i < L; i++)
                tokens[b][i] = (int)(uniform() * V);
        /* forward: annotations, decoder states, attention (a training call: saved) */
        for (int b = 0; b < B; b++)
            for (int i = 0; i < L; i++)
                for (int e = 0; e < E; e++) {
                    size_t at = ((size_t)b * L + i) * E + e;
                    h[at] = tok.w[tokens[b][i] * E + e] + pos.w[i * E + e];
                    s[at] = dec.w[i * E + e];
                }
        attn_additive_args a;
        attn_additive_args_init(&a);
        a.batch = B, a.q_len = L, a.kv_len = L;
        a.query = s, a.key = h, a.value = h, a.out = c;
        a.w_q = wq.w, a.w_k = wk.w, a.bias = bias.w, a.w = w.w;
        a.weights = weights;
        a.activations = act, a.activation_size = act_size;
        a.saved = saved, a.saved_size = saved_size;
        check(attn_additive_forward(att, &a), att, "forward");
        for (size_t i = 0; i < n; i++)
            z[i] = s[i] + c[i];
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
                    float x = bc.w[v];
                    for (int e = 0; e < E; e++)
                        x += zr[e] * wc.w[v * E + e];
                    logits[v] = x;
                    mx = fmaxf(mx, x);
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
        /* backward through the attention: every parameter, the states and the annotations
         * (used as key and as value: two gradients, summed below) */
        attn_additive_grads g;
        attn_additive_grads_init(&g);
        g.dout = dz;
        g.d_query = ds, g.d_key = dk, g.d_value = dv;
        g.d_w_q = wq.g, g.d_w_k = wk.g, g.d_bias = bias.g, g.d_w = w.g;
        check(attn_additive_backward(att, &a, &g), att, "backward");
        memset(dec.g, 0, dec.n * 4), memset(tok.g, 0, tok.n * 4), memset(pos.g, 0, pos.n * 4);
        for (int b = 0; b < B; b++)
            for (int i = 0; i < L; i++)
                for (int e = 0; e < E; e++) {
                    size_t at = ((size_t)b * L + i) * E + e;
                    dec.g[i * E + e] += dz[at] + ds[at]; /* residual + attention */
                    float gh = dk[at] + dv[at];
                    tok.g[tokens[b][i] * E + e] += gh;
                    pos.g[i * E + e] += gh;
                }
        param *all[] = {&tok, &pos, &dec, &wq, &wk, &bias, &w, &wc, &bc};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
            adam(all[i], step, 0.02f);
    }
    printf("input  (batch entry 0):");
    for (int i = 0; i < L; i++)
        printf(" %d", tokens[0][i]);
    printf("\nafter %d steps:\n", STEPS);
    heat_map(weights);
    printf("loss %.4f -> %.4f\n", first, last);

    attn_additive_destroy(att);
    free(act), free(saved), free(h), free(s), free(c), free(z), free(dz), free(ds), free(dk);
    free(dv), free(weights);
    param *all[] = {&tok, &pos, &dec, &wq, &wk, &bias, &w, &wc, &bc};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        free_param(all[i]);
    if (!(last < first / 5)) {
        fprintf(stderr, "the loss did not fall enough\n");
        return 1;
    }
    return 0;
}
