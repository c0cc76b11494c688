/*
 * A training step end to end: one causal self-attention layer, Q = X Wq, K = X Wk, V = X Wv,
 * learns to reproduce what a "teacher" layer with other weights computes on fixed data. Each
 * step runs attn_forward and attn_backward, turns dQ, dK, dV into the weights' gradients
 * (dW = Xᵀ dQ, ...) and takes a plain SGD step; the loss (mean squared error) is printed as it
 * falls. The projections are naive loops here to keep the example short; the attention is
 * libattn's.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <attn/attn.h>

enum { L = 32, E = 16, H = 2, D = 8, STEPS = 50 };

static float frand(unsigned *s)
{
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) * 0x1p-24 - 0.5) * 2.0f;
}

/* y[L, H*D] = x[L, E] w[E, H*D] */
static void project(const float *x, const float *w, float *y)
{
    for (int i = 0; i < L; i++)
        for (int o = 0; o < H * D; o++) {
            float s = 0.0f;
            for (int e = 0; e < E; e++)
                s += x[i * E + e] * w[e * H * D + o];
            y[i * H * D + o] = s;
        }
}

/* w -= lr * xᵀ dy */
static void sgd(float *w, const float *x, const float *dy, float lr)
{
    for (int e = 0; e < E; e++)
        for (int o = 0; o < H * D; o++) {
            float g = 0.0f;
            for (int i = 0; i < L; i++)
                g += x[i * E + e] * dy[i * H * D + o];
            w[e * H * D + o] -= lr * g;
        }
}

static int check(attn_status st, attn_ctx *ctx, const char *what)
{
    if (st != ATTN_OK)
        fprintf(stderr, "%s: %s (%s)\n", what, attn_status_str(st), attn_last_error(ctx));
    return st != ATTN_OK;
}

int main(void)
{
    unsigned seed = 7;
    static float x[L * E], w[3][E * H * D], teacher[3][E * H * D];
    static float q[L * H * D], k[L * H * D], v[L * H * D], out[L * H * D], target[L * H * D];
    static float lse[H * L], dout[L * H * D], dq[L * H * D], dk[L * H * D], dv[L * H * D];
    for (int i = 0; i < L * E; i++)
        x[i] = frand(&seed);
    for (int m = 0; m < 3; m++)
        for (int i = 0; i < E * H * D; i++) {
            teacher[m][i] = frand(&seed);
            w[m][i] = 0.3f * frand(&seed);
        }

    attn_desc desc;
    attn_desc_init(&desc);
    desc.q_heads = desc.kv_heads = H;
    desc.qk_dim = desc.v_dim = D;
    desc.flags = ATTN_CAUSAL;
    desc.ops = ATTN_OP_FORWARD | ATTN_OP_BACKWARD;
    attn_ctx *ctx;
    if (check(attn_create(&desc, &ctx), NULL, "attn_create"))
        return 1;

    /* [1, L, H, D] tensors: a projection's output row i holds every head of position i */
    attn_strides s = attn_strides_bshd(H, L, D);
    attn_args f;
    attn_args_init(&f);
    f.batch = 1, f.q_len = f.kv_len = L;
    f.q = q, f.k = k, f.v = v, f.out = out, f.lse = lse;
    f.q_strides = f.k_strides = f.v_strides = f.out_strides = s;

    /* the teacher's output is the target */
    project(x, teacher[0], q), project(x, teacher[1], k), project(x, teacher[2], v);
    f.out = target;
    if (check(attn_forward(ctx, &f), ctx, "attn_forward"))
        return 1;
    f.out = out;

    attn_backward_args g;
    attn_backward_args_init(&g);
    g.batch = 1, g.q_len = g.kv_len = L;
    g.q = q, g.k = k, g.v = v, g.out = out, g.dout = dout, g.lse = lse;
    g.dq = dq, g.dk = dk, g.dv = dv;
    g.q_strides = g.k_strides = g.v_strides = g.out_strides = g.dout_strides = s;
    g.dq_strides = g.dk_strides = g.dv_strides = s;

    const float lr = 4.0f;
    double first = 0.0, last = 0.0;
    printf("step   loss\n");
    for (int step = 0; step <= STEPS; step++) {
        project(x, w[0], q), project(x, w[1], k), project(x, w[2], v);
        if (check(attn_forward(ctx, &f), ctx, "attn_forward"))
            return 1;
        double loss = 0.0;
        for (int i = 0; i < L * H * D; i++) {
            float diff = out[i] - target[i];
            loss += (double)diff * diff / (L * H * D);
            dout[i] = 2.0f * diff / (L * H * D);
        }
        if (step == 0)
            first = loss;
        last = loss;
        if (step % 5 == 0) {
            int bar = (int)(60.0 * loss / first + 0.5);
            printf("%4d   %.6f  %.*s\n", step, loss, bar,
                   "############################################################");
        }
        if (step == STEPS)
            break;
        if (check(attn_backward(ctx, &g), ctx, "attn_backward"))
            return 1;
        sgd(w[0], x, dq, lr), sgd(w[1], x, dk, lr), sgd(w[2], x, dv, lr);
    }
    printf("loss %.6f -> %.6f over %d SGD steps (%.1f%% of the start)\n", first, last, STEPS,
           100.0 * last / first);
    attn_destroy(ctx);
    return last < first ? 0 : 1;
}
