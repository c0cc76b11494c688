/*
 * attn_backward beyond the given problems:
 *   - 320 random configurations (fixed seeds) against the float64 backward oracle: sizes 1, 3,
 *     17, 63, 65, 129, 257 and random; Lq != Lk; qk_dim != v_dim; GQA/MQA; causal with default
 *     and arbitrary offsets; windows; kv_lens; boolean masks and biases (with -inf entries)
 *     broadcast over batch, heads and rows, with dbias summed over the same axes; [B,H,S,D],
 *     [B,S,H,D] and padded layouts for every input and gradient (padding NaN in inputs,
 *     untouched in outputs); both masked-row policies; 1 to 4 threads;
 *   - the oracle itself against central finite differences of its own forward;
 *   - bitwise identical gradients for 1, 2, 3 and 4 threads, including summed dbias;
 *   - every error path, nothing written; a context without ATTN_OP_BACKWARD; allocation failure.
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

#include "support/reference_backward.h"
#include "support/util.h"

#define NCONFIGS 320
static const float sentinel = 9876.5f;

enum layout { BHSD, BSHD, PADDED, LAYOUTS };

typedef struct tensor {
    float *buf;
    size_t n;
    attn_strides s;
} tensor;

static tensor make_tensor(rng *r, int64_t B, int64_t H, int64_t L, int64_t W, float fill)
{
    tensor t;
    enum layout lay = (enum layout)rng_below(r, LAYOUTS);
    int64_t pad = lay == PADDED ? 1 + rng_below(r, 3) : 0;
    if (lay == BSHD)
        t.s = (attn_strides){L * H * W, W, H * W};
    else
        t.s.seq = W + pad, t.s.head = L * t.s.seq + pad, t.s.batch = H * t.s.head + pad;
    t.n = (size_t)((B - 1) * t.s.batch + (H - 1) * t.s.head + (L - 1) * t.s.seq + W);
    t.buf = xcalloc(t.n, sizeof(float));
    for (size_t i = 0; i < t.n; i++)
        t.buf[i] = fill;
    return t;
}

static void fill_normal(rng *r, tensor *t, int64_t B, int64_t H, int64_t L, int64_t W, double amp)
{
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t l = 0; l < L; l++)
                for (int64_t w = 0; w < W; w++)
                    t->buf[b * t->s.batch + h * t->s.head + l * t->s.seq + w] = (float)(rng_normal(r) * amp);
}

/* Dense copy of a strided view, in double. */
static double *dense(const tensor *t, int64_t B, int64_t H, int64_t L, int64_t W)
{
    double *d = xcalloc((size_t)(B * H * L * W), sizeof(double));
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t l = 0; l < L; l++)
                for (int64_t w = 0; w < W; w++)
                    d[((b * H + h) * L + l) * W + w] = t->buf[b * t->s.batch + h * t->s.head + l * t->s.seq + w];
    return d;
}

static void check_padding(const tensor *t, int64_t B, int64_t H, int64_t L, int64_t W,
                          const char *what, const char *label)
{
    unsigned char *in = xcalloc(t->n, 1);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t l = 0; l < L; l++)
                memset(in + b * t->s.batch + h * t->s.head + l * t->s.seq, 1, (size_t)W);
    for (size_t i = 0; i < t->n; i++)
        if (!in[i] && t->buf[i] != sentinel)
            fail_msg("%s: %s padding element %zu was written", label, what, i);
    free(in);
}

/* A whole problem: descriptor, forward arguments, backward arguments and their buffers. */
typedef struct problem {
    attn_desc d;
    attn_args a;
    attn_backward_args g;
    tensor q, k, v, o, dout, dq, dk, dv;
    float *lse, *bias, *dbias;
    uint8_t *mask;
    int32_t *lens;
    int64_t B, Hq, Hkv, Lq, Lk, D, Dv, Bb, Hb, Lqb;
    char label[320];
} problem;

static int64_t pick_len(rng *r)
{
    static const int64_t special[] = {1, 3, 17, 63, 65, 129, 257};
    return rng_below(r, 3) ? special[rng_below(r, 7)] : 1 + rng_below(r, 200);
}

static void make_problem(uint64_t seed, problem *p)
{
    rng r = {seed};
    memset(p, 0, sizeof *p);
    attn_desc_init(&p->d);
    p->B = 1 + rng_below(&r, 2), p->Hkv = 1 + rng_below(&r, 2);
    static const int64_t groups[] = {1, 1, 2, 4};
    p->Hq = p->Hkv * groups[rng_below(&r, 4)];
    p->Lq = pick_len(&r), p->Lk = rng_below(&r, 4) ? pick_len(&r) : p->Lq;
    p->D = 1 + rng_below(&r, 70), p->Dv = rng_below(&r, 3) ? 1 + rng_below(&r, 70) : p->D;
    while (p->B * p->Hq * p->Lq * p->Lk * (p->D + p->Dv) > 3000000) {
        if (p->Lq > 1) p->Lq = (p->Lq + 1) / 2;
        if (p->Lk > 1) p->Lk = (p->Lk + 1) / 2;
    }
    int64_t B = p->B, Hq = p->Hq, Hkv = p->Hkv, Lq = p->Lq, Lk = p->Lk, D = p->D, Dv = p->Dv;
    attn_desc *d = &p->d;
    d->q_heads = (uint32_t)Hq, d->kv_heads = (uint32_t)Hkv, d->qk_dim = (uint32_t)D, d->v_dim = (uint32_t)Dv;
    d->scale = rng_below(&r, 2) ? 0.0f : (float)rng_uniform(&r, -1.5, 2.0);
    d->flags = rng_below(&r, 5) < 2 ? ATTN_CAUSAL : 0;
    d->window_left = rng_below(&r, 4) == 0 ? rng_below(&r, Lk + 2) : -1;
    d->window_right = rng_below(&r, 5) == 0 ? rng_below(&r, Lk + 2) : -1;
    d->masked_rows = rng_below(&r, 4) == 0 ? ATTN_MASKED_ROWS_NAN : ATTN_MASKED_ROWS_ZERO;
    d->threads = (uint32_t)(1 + rng_below(&r, 4));
    d->ops = ATTN_OP_FORWARD | ATTN_OP_BACKWARD;
    double amp = rng_below(&r, 8) == 0 ? 8.0 : 1.0;

    p->q = make_tensor(&r, B, Hq, Lq, D, NAN), p->k = make_tensor(&r, B, Hkv, Lk, D, NAN);
    p->v = make_tensor(&r, B, Hkv, Lk, Dv, NAN), p->dout = make_tensor(&r, B, Hq, Lq, Dv, NAN);
    fill_normal(&r, &p->q, B, Hq, Lq, D, amp), fill_normal(&r, &p->k, B, Hkv, Lk, D, 1.0);
    fill_normal(&r, &p->v, B, Hkv, Lk, Dv, 1.0), fill_normal(&r, &p->dout, B, Hq, Lq, Dv, 1.0);
    p->o = make_tensor(&r, B, Hq, Lq, Dv, sentinel);
    p->dq = make_tensor(&r, B, Hq, Lq, D, sentinel), p->dk = make_tensor(&r, B, Hkv, Lk, D, sentinel);
    p->dv = make_tensor(&r, B, Hkv, Lk, Dv, sentinel);
    p->lse = xcalloc((size_t)(B * Hq * Lq), sizeof(float));

    attn_args *a = &p->a;
    attn_args_init(a);
    a->batch = (uint32_t)B, a->q_len = (uint32_t)Lq, a->kv_len = (uint32_t)Lk;
    a->q = p->q.buf, a->q_strides = p->q.s, a->k = p->k.buf, a->k_strides = p->k.s;
    a->v = p->v.buf, a->v_strides = p->v.s, a->out = p->o.buf, a->out_strides = p->o.s;
    a->lse = p->lse;
    if ((d->flags & ATTN_CAUSAL) || d->window_left >= 0 || d->window_right >= 0)
        a->q_offset = rng_below(&r, 2) ? ATTN_Q_OFFSET_DEFAULT : rng_below(&r, Lq + Lk + 6) - Lq - 3;
    if (rng_below(&r, 4) == 0) {
        p->lens = xcalloc((size_t)B, sizeof *p->lens);
        for (int64_t b = 0; b < B; b++)
            p->lens[b] = (int32_t)(rng_below(&r, 5) == 0 ? 0 : rng_below(&r, Lk + 1));
        a->kv_lens = p->lens;
    }
    if (rng_below(&r, 10) < 3) {
        int64_t bb = rng_below(&r, 2) ? B : 1, hh = rng_below(&r, 2) ? Hq : 1;
        int64_t rows = rng_below(&r, 5) ? Lq : 1;
        a->mask_strides = (attn_strides){bb == 1 ? 0 : hh * rows * Lk, hh == 1 ? 0 : rows * Lk, rows == 1 ? 0 : Lk};
        p->mask = xcalloc((size_t)(bb * hh * rows * Lk), 1);
        double density = rng_uniform(&r, 0.1, 1.0);
        for (int64_t i = 0; i < bb * hh * rows * Lk; i++)
            p->mask[i] = rng_uniform(&r, 0, 1) < density;
        a->mask = p->mask;
    }
    p->Bb = B, p->Hb = Hq, p->Lqb = Lq;
    if (rng_below(&r, 10) < 4) {
        p->Bb = rng_below(&r, 2) ? B : 1, p->Hb = rng_below(&r, 2) ? Hq : 1;
        p->Lqb = rng_below(&r, 5) ? Lq : 1;
        int64_t n = p->Bb * p->Hb * p->Lqb * Lk;
        a->bias_strides = (attn_strides){p->Bb == 1 ? 0 : p->Hb * p->Lqb * Lk,
                                         p->Hb == 1 ? 0 : p->Lqb * Lk, p->Lqb == 1 ? 0 : Lk};
        p->bias = xcalloc((size_t)n, sizeof(float));
        for (int64_t i = 0; i < n; i++)
            p->bias[i] = rng_below(&r, 25) == 0 ? -INFINITY : (float)(rng_normal(&r) * 2.0);
        a->bias = p->bias;
        if (rng_below(&r, 4)) {
            p->dbias = xcalloc((size_t)n, sizeof(float));
            for (int64_t i = 0; i < n; i++)
                p->dbias[i] = sentinel;
        }
    }
    attn_backward_args *g = &p->g;
    attn_backward_args_init(g);
    g->batch = a->batch, g->q_len = a->q_len, g->kv_len = a->kv_len;
    g->q = a->q, g->q_strides = a->q_strides, g->k = a->k, g->k_strides = a->k_strides;
    g->v = a->v, g->v_strides = a->v_strides, g->out = a->out, g->out_strides = a->out_strides;
    g->dout = p->dout.buf, g->dout_strides = p->dout.s, g->lse = p->lse;
    g->q_offset = a->q_offset, g->kv_lens = a->kv_lens;
    g->mask = a->mask, g->mask_strides = a->mask_strides;
    g->bias = a->bias, g->bias_strides = a->bias_strides;
    g->dq = p->dq.buf, g->dq_strides = p->dq.s, g->dk = p->dk.buf, g->dk_strides = p->dk.s;
    g->dv = p->dv.buf, g->dv_strides = p->dv.s, g->dbias = p->dbias;
    snprintf(p->label, sizeof p->label,
             "seed %llu: B=%lld Hq=%lld Hkv=%lld Lq=%lld Lk=%lld D=%lld Dv=%lld causal=%d "
             "win=(%lld,%lld) off=%lld lens=%d mask=%d bias=%d[%lld,%lld,%lld] dbias=%d threads=%u",
             (unsigned long long)seed, (long long)B, (long long)Hq, (long long)Hkv, (long long)Lq,
             (long long)Lk, (long long)D, (long long)Dv, (int)(d->flags & ATTN_CAUSAL),
             (long long)d->window_left, (long long)d->window_right, (long long)a->q_offset,
             p->lens != NULL, p->mask != NULL, p->bias != NULL, (long long)p->Bb, (long long)p->Hb,
             (long long)p->Lqb, p->dbias != NULL, d->threads);
}

static void free_problem(problem *p)
{
    free(p->q.buf), free(p->k.buf), free(p->v.buf), free(p->o.buf), free(p->dout.buf);
    free(p->dq.buf), free(p->dk.buf), free(p->dv.buf);
    free(p->lse), free(p->bias), free(p->dbias), free(p->mask), free(p->lens);
}

static void run_forward_backward(problem *p, attn_ctx *ctx)
{
    attn_status st = attn_forward(ctx, &p->a);
    if (st != ATTN_OK)
        fail_msg("%s: forward %s (%s)", p->label, attn_status_str(st), attn_last_error(ctx));
    st = attn_backward(ctx, &p->g);
    if (st != ATTN_OK)
        fail_msg("%s: backward %s (%s)", p->label, attn_status_str(st), attn_last_error(ctx));
}

static void test_random_configurations(void **state)
{
    (void)state;
    grad_stats tot = {0, 0, 0.0, ""};
    long with_dbias = 0, summed = 0;
    for (uint64_t seed = 1; seed <= NCONFIGS; seed++) {
        problem p;
        make_problem(seed * 6151u, &p);
        attn_ctx *ctx;
        assert_int_equal(attn_create(&p.d, &ctx), ATTN_OK);
        run_forward_backward(&p, ctx);

        ref_problem rp = ref_problem_from(&p.d, &p.a);
        ref_result rr;
        ref_attention(&rp, &rr);
        double *gd = dense(&p.dout, p.B, p.Hq, p.Lq, p.Dv);
        ref_grads rg;
        ref_backward(&rp, &rr, gd, &rg);
        grad_stats st = {0, 0, 0.0, ""};
        check_grad("dq", p.dq.buf, p.dq.s, p.B, p.Hq, p.Lq, p.D, rg.dq, rg.dq_tol, p.label, &st);
        check_grad("dk", p.dk.buf, p.dk.s, p.B, p.Hkv, p.Lk, p.D, rg.dk, rg.dk_tol, p.label, &st);
        check_grad("dv", p.dv.buf, p.dv.s, p.B, p.Hkv, p.Lk, p.Dv, rg.dv, rg.dv_tol, p.label, &st);
        if (p.dbias) {
            attn_strides s = {p.Hb * p.Lqb * p.Lk, p.Lqb * p.Lk, p.Lk};
            check_grad("dbias", p.dbias, s, p.Bb, p.Hb, p.Lqb, p.Lk, rg.dbias, rg.dbias_tol, p.label, &st);
            with_dbias++;
            summed += p.Bb * p.Hb * p.Lqb < p.B * p.Hq * p.Lq;
        }
        if (st.failures)
            fail_msg("%ld of %ld gradients out of tolerance; first: %s", st.failures, st.compared,
                     st.first_failure);
        check_padding(&p.dq, p.B, p.Hq, p.Lq, p.D, "dq", p.label);
        check_padding(&p.dk, p.B, p.Hkv, p.Lk, p.D, "dk", p.label);
        check_padding(&p.dv, p.B, p.Hkv, p.Lk, p.Dv, "dv", p.label);
        tot.compared += st.compared;
        tot.worst_ratio = st.worst_ratio > tot.worst_ratio ? st.worst_ratio : tot.worst_ratio;
        ref_grads_free(&rg), ref_free(&rr), free(gd);
        attn_destroy(ctx);
        free_problem(&p);
    }
    print_message("%d configurations (%ld with dbias, %ld of them summed over broadcast axes), "
                  "%ld gradients compared, worst error/tolerance %.3f (%s)\n",
                  NCONFIGS, with_dbias, summed, tot.compared, tot.worst_ratio, attn_kernel_isa());
    assert_true(with_dbias >= 40 && summed >= 20);
}

/* The oracle's gradients against central differences of the oracle's own loss. */
static void test_oracle_finite_differences(void **state)
{
    (void)state;
    int checked = 0;
    for (uint64_t seed = 1; checked < 6 && seed < 400; seed++) {
        rng r = {seed};
        problem p;
        make_problem(seed * 977u, &p);
        if (p.B * p.Hq * p.Lq * p.Lk > 4000) { /* keep it small: many forward evaluations */
            free_problem(&p);
            continue;
        }
        checked++;
        ref_problem rp = ref_problem_from(&p.d, &p.a);
        ref_result rr;
        ref_attention(&rp, &rr);
        double *gd = dense(&p.dout, p.B, p.Hq, p.Lq, p.Dv);
        ref_grads rg;
        ref_backward(&rp, &rr, gd, &rg);
        struct {
            float *base;
            attn_strides s;
            int64_t n1, n2, w;
            const double *grad;
            const char *name;
        } wrt[] = {{p.q.buf, p.q.s, p.Hq, p.Lq, p.D, rg.dq, "q"},
                   {p.k.buf, p.k.s, p.Hkv, p.Lk, p.D, rg.dk, "k"},
                   {p.v.buf, p.v.s, p.Hkv, p.Lk, p.Dv, rg.dv, "v"}};
        for (int t = 0; t < 3; t++)
            for (int trial = 0; trial < 6; trial++) {
                int64_t b = rng_below(&r, p.B), x = rng_below(&r, wrt[t].n1),
                        y = rng_below(&r, wrt[t].n2), z = rng_below(&r, wrt[t].w);
                float *e = wrt[t].base + b * wrt[t].s.batch + x * wrt[t].s.head + y * wrt[t].s.seq + z;
                float keep = *e, h = 0x1p-10f;
                *e = keep + h;
                double up = ref_loss(&rp, gd);
                *e = keep - h;
                double down = ref_loss(&rp, gd);
                *e = keep;
                double fd = (up - down) / (2.0 * (double)h);
                double an = wrt[t].grad[((b * wrt[t].n1 + x) * wrt[t].n2 + y) * wrt[t].w + z];
                if (!(fabs(fd - an) <= 1e-4 * (1.0 + fabs(an))))
                    fail_msg("%s: d%s finite difference %.9g, oracle %.9g", p.label, wrt[t].name, fd, an);
            }
        ref_grads_free(&rg), ref_free(&rr), free(gd);
        free_problem(&p);
    }
    assert_int_equal(checked, 6);
}

/* Bitwise the same gradients for 1..4 threads, on shapes with many tasks per pass. */
static void test_thread_count_invariance(void **state)
{
    (void)state;
    for (uint64_t seed = 1; seed <= 12; seed++) {
        float *first[4] = {NULL};
        size_t sizes[4];
        for (uint32_t threads = 1; threads <= 4; threads++) {
            problem p;
            make_problem(seed * 31337u, &p);
            p.d.threads = threads;
            attn_ctx *ctx;
            assert_int_equal(attn_create(&p.d, &ctx), ATTN_OK);
            run_forward_backward(&p, ctx);
            float *bufs[4] = {p.dq.buf, p.dk.buf, p.dv.buf, p.dbias};
            size_t n[4] = {p.dq.n, p.dk.n, p.dv.n, p.dbias ? (size_t)(p.Bb * p.Hb * p.Lqb * p.Lk) : 0};
            for (int i = 0; i < 4; i++) {
                if (threads == 1) {
                    first[i] = xcalloc(n[i] + 1, sizeof(float));
                    if (n[i])
                        memcpy(first[i], bufs[i], n[i] * sizeof(float));
                    sizes[i] = n[i];
                } else if (n[i] && memcmp(first[i], bufs[i], n[i] * sizeof(float)) != 0) {
                    fail_msg("%s: gradient %d differs between 1 and %u threads", p.label, i, threads);
                }
            }
            attn_destroy(ctx);
            free_problem(&p);
        }
        (void)sizes;
        for (int i = 0; i < 4; i++)
            free(first[i]);
    }
}

typedef struct err_case {
    attn_backward_args g;
    attn_status want;
    const char *word;
} err_case;

static void test_errors(void **state)
{
    (void)state;
    problem p;
    make_problem(424242, &p);
    attn_ctx *ctx, *fwd_only;
    assert_int_equal(attn_create(&p.d, &ctx), ATTN_OK);
    run_forward_backward(&p, ctx);
    attn_desc d = p.d;
    d.ops = ATTN_OP_FORWARD;
    assert_int_equal(attn_create(&d, &fwd_only), ATTN_OK);
    assert_int_equal(attn_backward(fwd_only, &p.g), ATTN_ERR_BAD_OPTION);
    assert_non_null(strstr(attn_last_error(fwd_only), "ATTN_OP_BACKWARD"));
    attn_destroy(fwd_only);
    assert_int_equal(attn_backward(NULL, &p.g), ATTN_ERR_NULL_POINTER);
    assert_int_equal(attn_backward(ctx, NULL), ATTN_ERR_NULL_POINTER);
    /* a context made for the backward alone still needs nothing else */
    d.ops = ATTN_OP_BACKWARD;
    attn_ctx *bwd_only;
    assert_int_equal(attn_create(&d, &bwd_only), ATTN_OK);
    assert_int_equal(attn_forward(bwd_only, &p.a), ATTN_ERR_BAD_OPTION);
    assert_int_equal(attn_backward(bwd_only, &p.g), ATTN_OK);
    attn_destroy(bwd_only);

    err_case c[24];
    int n = 0;
    attn_backward_args g;
#define CASE(field_change, status, text) g = p.g; field_change; c[n++] = (err_case){g, status, text}
    CASE(g.struct_size = 12, ATTN_ERR_STRUCT_SIZE, "struct_size");
    CASE(g.q = NULL, ATTN_ERR_NULL_POINTER, "args->q is NULL");
    CASE(g.out = NULL, ATTN_ERR_NULL_POINTER, "args->out is NULL");
    CASE(g.dout = NULL, ATTN_ERR_NULL_POINTER, "args->dout is NULL");
    CASE(g.lse = NULL, ATTN_ERR_NULL_POINTER, "args->lse is NULL");
    CASE(g.dq = NULL, ATTN_ERR_NULL_POINTER, "args->dq is NULL");
    CASE(g.dk = NULL, ATTN_ERR_NULL_POINTER, "args->dk is NULL");
    CASE(g.dv = NULL, ATTN_ERR_NULL_POINTER, "args->dv is NULL");
    CASE(g.batch = 0, ATTN_ERR_ZERO_SIZE, "batch");
    CASE((g.bias = NULL, g.dbias = p.dq.buf + 1), ATTN_ERR_BAD_OPTION, "dbias");
    CASE(g.dout_strides.seq = -2, ATTN_ERR_STRIDE, "args->dout_strides.seq = -2 is negative");
    CASE(g.dk_strides.batch = 0, ATTN_ERR_STRIDE, "args->dk_strides");
    CASE(g.dv_strides.seq = 1, ATTN_ERR_STRIDE, "args->dv_strides");
    CASE(g.dq_strides.head = INT64_MAX / 2, ATTN_ERR_OVERFLOW, "args->dq");
    CASE(g.q_offset = ATTN_MAX_DISTANCE + 1, ATTN_ERR_OFFSET, "q_offset");
    CASE(g.dq = (float *)(uintptr_t)p.g.q, ATTN_ERR_ALIAS, "args->dq overlaps args->q");
    CASE(g.dk = p.dq.buf, ATTN_ERR_ALIAS, "overlaps");
    CASE(g.dv = (float *)(uintptr_t)p.g.lse, ATTN_ERR_ALIAS, "args->dv overlaps args->"); /* lse, or an input the heap placed beside it */
    int32_t bad_lens[2] = {-1, 0};
    CASE(g.kv_lens = bad_lens, ATTN_ERR_KV_LENS, "kv_lens[0] = -1");
#undef CASE
    size_t nq = p.dq.n, nk = p.dk.n, nv = p.dv.n;
    float *snap[3] = {xcalloc(nq, 4), xcalloc(nk, 4), xcalloc(nv, 4)};
    memcpy(snap[0], p.dq.buf, nq * 4), memcpy(snap[1], p.dk.buf, nk * 4), memcpy(snap[2], p.dv.buf, nv * 4);
    for (int i = 0; i < n; i++) {
        attn_status st = attn_backward(ctx, &c[i].g);
        if (st != c[i].want || !strstr(attn_last_error(ctx), c[i].word))
            fail_msg("case %d: got %s (%s), want %s with \"%s\"", i, attn_status_str(st),
                     attn_last_error(ctx), attn_status_str(c[i].want), c[i].word);
        assert_memory_equal(snap[0], p.dq.buf, nq * 4);
        assert_memory_equal(snap[1], p.dk.buf, nk * 4);
        assert_memory_equal(snap[2], p.dv.buf, nv * 4);
    }
    free(snap[0]), free(snap[1]), free(snap[2]);
    attn_destroy(ctx);
    free_problem(&p);
}

static void *failing_alloc(void *user, size_t size, size_t alignment)
{
    (void)user, (void)size, (void)alignment;
    return NULL;
}

static void never_free(void *user, void *ptr)
{
    (void)user, (void)ptr;
}

/* A backward context costs more workspace than a forward one, and its one allocation fails
 * cleanly. */
static void test_workspace_and_allocation(void **state)
{
    (void)state;
    attn_desc d;
    attn_desc_init(&d);
    d.qk_dim = d.v_dim = 128, d.threads = 2;
    size_t fwd = attn_workspace_size(&d);
    d.ops = ATTN_OP_FORWARD | ATTN_OP_BACKWARD;
    size_t both = attn_workspace_size(&d);
    print_message("workspace at d = 128 on 2 threads: forward %zu bytes, forward + backward %zu\n",
                  fwd, both);
    assert_true(both > fwd && both <= 8u << 20);
    attn_allocator al = {failing_alloc, never_free, NULL};
    d.allocator = &al;
    attn_ctx *ctx = (attn_ctx *)&d;
    assert_int_equal(attn_create(&d, &ctx), ATTN_ERR_NO_MEMORY);
    assert_null(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_configurations),
        cmocka_unit_test(test_oracle_finite_differences),
        cmocka_unit_test(test_thread_count_invariance),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_workspace_and_allocation),
    };
    return cmocka_run_group_tests_name("backward", tests, NULL, NULL);
}
