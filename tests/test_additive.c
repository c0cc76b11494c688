/*
 * Additive attention beyond the PyTorch problems:
 *   - seeded random configurations (sizes across tile edges, bias, causal, kv_lens, masks, the
 *     optional outputs) forward and backward against the float64 reference, within the
 *     tolerance of docs/testing.md ("Additive attention's tolerance");
 *   - the reference itself against central finite differences;
 *   - bitwise identical results on 1 to 4 threads; ADD mode;
 *   - every error path, with nothing written on failure; allocation failure; hostile sizes.
 */
#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <attn/attn_additive.h>

#include "support/additive_run.h"
#include "support/util.h"

/* ---- a random problem ------------------------------------------------------------------------ */

typedef struct problem {
    adt_case c;
    float *q, *k, *v, *wq, *wk, *b, *w, *dout;
    int32_t *kv_lens;
    uint8_t *mask;
} problem;

static void make_problem(problem *p, rng *r, int B, int Lq, int Lk, int Dq, int Dk, int Dv, int A)
{
    memset(p, 0, sizeof *p);
    adt_case *c = &p->c;
    c->B = B, c->Lq = Lq, c->Lk = Lk, c->Dq = Dq, c->Dk = Dk, c->Dv = Dv, c->A = A;
    size_t nb = (size_t)B;
    p->q = random_floats(r, nb * Lq * Dq, 1.0);
    p->k = random_floats(r, nb * Lk * Dk, 1.0);
    p->v = random_floats(r, nb * Lk * Dv, 1.0);
    p->wq = random_floats(r, (size_t)A * Dq, 1.5 / sqrt(Dq));
    p->wk = random_floats(r, (size_t)A * Dk, 1.5 / sqrt(Dk));
    p->b = random_floats(r, (size_t)A, 0.5);
    p->w = random_floats(r, (size_t)A, 2.0 / sqrt(A));
    p->dout = random_floats(r, nb * Lq * Dv, 1.0);
    p->kv_lens = xcalloc(nb, sizeof *p->kv_lens);
    p->mask = xcalloc(nb * Lq * Lk, 1);
    for (size_t x = 0; x < nb * Lq * Lk; x++)
        p->mask[x] = rng_below(r, 5) != 0;
    for (int b = 0; b < B; b++)
        p->kv_lens[b] = (int32_t)rng_below(r, Lk + 1);
    c->q = p->q, c->k = p->k, c->v = p->v, c->wq = p->wq, c->wk = p->wk, c->b = p->b, c->w = p->w;
    c->dout = p->dout, c->bias = 1;
}

static void free_problem(problem *p)
{
    free(p->q), free(p->k), free(p->v), free(p->wq), free(p->wk), free(p->b), free(p->w);
    free(p->dout), free(p->kv_lens), free(p->mask);
}

/* Runs the case and checks it against the reference; returns the worst error / tolerance. */
static double run_and_check(const adt_case *c, const char *label)
{
    adt_out o;
    char err[512], msg[512];
    attn_status st = adt_run(c, &o, err, sizeof err);
    if (st != ATTN_OK)
        fail_msg("%s: %s", label, err);
    refa_problem rp;
    adt_ref_problem(c, &rp);
    refa_result r;
    refa_forward(&rp, &r);
    double *dd = refa_widen(c->dout, (size_t)c->B * c->Lq * c->Dv);
    refa_grads g;
    refa_backward(&rp, &r, dd, &g);
    double ratio = adt_check(c, &o, &r, &g, msg, sizeof msg);
    if (!(ratio <= 1.0))
        fail_msg("%s: B %d Lq %d Lk %d Dq %d Dk %d Dv %d A %d bias %d causal %d kv_lens %d "
                 "mask %d: %s", label, c->B, c->Lq, c->Lk, c->Dq, c->Dk, c->Dv, c->A, c->bias,
                 c->causal, c->kv_lens != NULL, c->mask != NULL, msg);
    refa_grads_free(&g), refa_free(&r), adt_ref_free(&rp), free(dd);
    adt_out_free(&o);
    return ratio;
}

static void test_random_configs(void **state)
{
    (void)state;
    rng r = {20261124};
    /* ATTN_TEST_QUICK=1 (valgrind's run, serialised and 50 times slower): a tenth of them */
    const char *quick = getenv("ATTN_TEST_QUICK");
    int CONFIGS = quick && quick[0] == '1' ? 22 : 220;
    double worst = 0.0;
    int with_mask = 0, with_lens = 0, causal = 0, big = 0;
    for (int t = 0; t < CONFIGS; t++) {
        int B = 1 + (int)rng_below(&r, 3);
        int Lq = 1 + (int)rng_below(&r, t % 4 == 0 ? 80 : 20);
        int Lk = t % 5 == 0 ? 200 + (int)rng_below(&r, 400) : 1 + (int)rng_below(&r, 40);
        int A = 1 + (int)rng_below(&r, t % 7 == 0 ? 70 : 24);
        problem p;
        make_problem(&p, &r, B, Lq, Lk, 1 + (int)rng_below(&r, 20), 1 + (int)rng_below(&r, 20),
                     1 + (int)rng_below(&r, 20), A);
        adt_case *c = &p.c;
        c->bias = rng_below(&r, 3) != 0;
        c->causal = rng_below(&r, 3) == 0;
        c->kv_lens = rng_below(&r, 3) == 0 ? p.kv_lens : NULL;
        c->mask = rng_below(&r, 4) == 0 ? p.mask : NULL;
        c->want_weights = rng_below(&r, 2) != 0;
        c->want_lse = rng_below(&r, 2) != 0;
        c->want_entropy = rng_below(&r, 2) != 0;
        c->threads = 1 + (uint32_t)rng_below(&r, 2);
        with_mask += c->mask != NULL, with_lens += c->kv_lens != NULL, causal += c->causal;
        big += Lk > 256;
        char label[32];
        snprintf(label, sizeof label, "config %d", t);
        double ratio = run_and_check(c, label);
        worst = ratio > worst ? ratio : worst;
        free_problem(&p);
    }
    print_message("%d random configurations (%d causal, %d kv_lens, %d masks, %d over one key "
                  "tile), forward and backward: worst error / tolerance %.3g\n", CONFIGS, causal,
                  with_lens, with_mask, big, worst);
}

/* Hand-picked edges: one key, one query, a row that sees nothing, A = 1, Lk across tiles. */
static void test_edges(void **state)
{
    (void)state;
    rng r = {5};
    const int shapes[][7] = {{1, 1, 1, 1, 1, 1, 1},     {1, 1, 257, 2, 3, 4, 1},
                             {2, 65, 3, 4, 4, 4, 17},  {1, 3, 513, 5, 2, 3, 33},
                             {3, 130, 129, 3, 3, 3, 8}, {1, 1, 16, 1, 1, 1, 300}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int variant = 0; variant < 4; variant++) {
            const int *x = shapes[s];
            problem p;
            make_problem(&p, &r, x[0], x[1], x[2], x[3], x[4], x[5], x[6]);
            adt_case *c = &p.c;
            c->causal = variant & 1;
            c->bias = variant != 2;
            if (variant >= 2) {
                p.kv_lens[0] = 0; /* batch 0 sees no key at all */
                c->kv_lens = p.kv_lens;
            }
            c->want_weights = c->want_lse = c->want_entropy = 1;
            run_and_check(c, "edge");
            free_problem(&p);
        }
}

/* ---- the reference against finite differences ------------------------------------------------ */

static void test_reference_gradients(void **state)
{
    (void)state;
    rng r = {77};
    int checked = 0;
    for (int variant = 0; variant < 4; variant++) {
        problem p;
        make_problem(&p, &r, 2, 3, 5, 3, 4, 2, 4);
        adt_case *c = &p.c;
        c->causal = variant & 1;
        c->kv_lens = variant == 2 ? p.kv_lens : NULL;
        c->mask = variant == 3 ? p.mask : NULL;
        p.kv_lens[0] = 3, p.kv_lens[1] = 5;
        refa_problem rp;
        adt_ref_problem(c, &rp);
        double *dd = refa_widen(c->dout, (size_t)c->B * c->Lq * c->Dv);
        refa_result res;
        refa_forward(&rp, &res);
        refa_grads g;
        refa_backward(&rp, &res, dd, &g);
        struct {
            const char *name;
            double *x, *grad;
            size_t n;
        } t[] = {
            {"q", (double *)rp.q, g.dq, (size_t)c->B * c->Lq * c->Dq},
            {"k", (double *)rp.k, g.dk, (size_t)c->B * c->Lk * c->Dk},
            {"v", (double *)rp.v, g.dv, (size_t)c->B * c->Lk * c->Dv},
            {"W_q", (double *)rp.wq, g.dwq, (size_t)c->A * c->Dq},
            {"W_k", (double *)rp.wk, g.dwk, (size_t)c->A * c->Dk},
            {"bias", (double *)rp.bias, g.dbias, (size_t)c->A},
            {"w", (double *)rp.w, g.dw, (size_t)c->A},
        };
        for (size_t x = 0; x < sizeof t / sizeof t[0]; x++)
            for (size_t i = 0; i < t[x].n; i++) {
                double keep = t[x].x[i], h = 1e-5;
                t[x].x[i] = keep + h;
                double lp = refa_loss(&rp, dd);
                t[x].x[i] = keep - h;
                double lm = refa_loss(&rp, dd);
                t[x].x[i] = keep;
                double fd = (lp - lm) / (2 * h);
                if (!(fabs(fd - t[x].grad[i]) <= 1e-7 * (1.0 + fabs(fd))))
                    fail_msg("variant %d: d loss / d %s[%zu] = %.12g, finite difference %.12g",
                             variant, t[x].name, i, t[x].grad[i], fd);
                checked++;
            }
        refa_grads_free(&g), refa_free(&res), adt_ref_free(&rp), free(dd);
        free_problem(&p);
    }
    print_message("%d gradient elements of the float64 reference match central differences\n",
                  checked);
}

/* ---- thread counts, ADD mode ------------------------------------------------------------------ */

static int same_bits(const float *a, const float *b, size_t n)
{
    return (a == NULL && b == NULL) || memcmp(a, b, n * sizeof(float)) == 0;
}

static void test_threads_bitwise(void **state)
{
    (void)state;
    rng r = {31};
    /* under valgrind (ATTN_TEST_QUICK=1) a shorter shape, still over two key tiles */
    const char *quick = getenv("ATTN_TEST_QUICK");
    int Lq = quick && quick[0] == '1' ? 40 : 150, Lk = quick && quick[0] == '1' ? 300 : 600;
    problem p;
    make_problem(&p, &r, 2, Lq, Lk, 7, 9, 5, 40);
    adt_case *c = &p.c;
    c->causal = 1, c->kv_lens = p.kv_lens, c->mask = p.mask;
    p.kv_lens[0] = Lk - 10, p.kv_lens[1] = Lk / 2 + 33;
    c->want_weights = c->want_lse = c->want_entropy = 1;
    adt_out first;
    char err[512];
    size_t nq = 2 * (size_t)Lq, nk = 2 * (size_t)Lk;
    for (uint32_t t = 1; t <= 4; t++) {
        c->threads = t;
        adt_out o;
        if (adt_run(c, &o, err, sizeof err) != ATTN_OK)
            fail_msg("%s", err);
        if (t == 1) {
            first = o;
            continue;
        }
        assert_true(same_bits(o.out, first.out, nq * 5));
        assert_true(same_bits(o.weights, first.weights, nq * (size_t)Lk));
        assert_true(same_bits(o.lse, first.lse, nq) && same_bits(o.entropy, first.entropy, nq));
        assert_true(same_bits(o.dq, first.dq, nq * 7) && same_bits(o.dk, first.dk, nk * 9));
        assert_true(same_bits(o.dv, first.dv, nk * 5));
        assert_true(same_bits(o.dwq, first.dwq, 40 * 7) && same_bits(o.dwk, first.dwk, 40 * 9));
        assert_true(same_bits(o.dbias, first.dbias, 40) && same_bits(o.dw, first.dw, 40));
        adt_out_free(&o);
    }
    adt_out_free(&first);
    free_problem(&p);
}

/* A layer, its buffers and a valid training call, for the API tests. */
typedef struct fixture {
    problem p;
    attn_additive *m;
    attn_additive_args a;
    attn_additive_grads g;
    void *act, *sav;
    size_t act_size, sav_size;
    float *out, *weights, *lse, *entropy;
    float *grads[7];
    size_t grad_n[7];
} fixture;

static void fixture_make(fixture *f, int bias)
{
    rng r = {8};
    memset(f, 0, sizeof *f);
    make_problem(&f->p, &r, 2, 5, 7, 3, 4, 6, 8);
    attn_additive_desc d;
    attn_additive_desc_init(&d);
    d.q_dim = 3, d.k_dim = 4, d.v_dim = 6, d.attn_dim = 8, d.bias = (uint32_t)bias;
    d.threads = 2;
    assert_int_equal(attn_additive_create(&d, &f->m), ATTN_OK);
    f->act_size = attn_additive_activation_size(f->m, 2, 5, 7);
    f->sav_size = attn_additive_saved_size(f->m, 2, 5, 7);
    f->act = xcalloc(f->act_size, 1), f->sav = xcalloc(f->sav_size, 1);
    f->out = xcalloc(60, 4), f->weights = xcalloc(70, 4), f->lse = xcalloc(10, 4);
    f->entropy = xcalloc(10, 4);
    attn_additive_args_init(&f->a);
    attn_additive_args *a = &f->a;
    a->batch = 2, a->q_len = 5, a->kv_len = 7;
    a->query = f->p.q, a->key = f->p.k, a->value = f->p.v, a->out = f->out;
    a->w_q = f->p.wq, a->w_k = f->p.wk, a->bias = bias ? f->p.b : NULL, a->w = f->p.w;
    a->weights = f->weights, a->lse = f->lse, a->entropy = f->entropy;
    a->activations = f->act, a->activation_size = f->act_size;
    a->saved = f->sav, a->saved_size = f->sav_size;
    size_t n[7] = {30, 56, 84, 24, 32, 8, 8};
    for (int i = 0; i < 7; i++)
        f->grads[i] = xcalloc(n[i], 4), f->grad_n[i] = n[i];
    attn_additive_grads_init(&f->g);
    f->g.dout = f->p.dout;
    f->g.d_query = f->grads[0], f->g.d_key = f->grads[1], f->g.d_value = f->grads[2];
    f->g.d_w_q = f->grads[3], f->g.d_w_k = f->grads[4], f->g.d_bias = bias ? f->grads[5] : NULL;
    f->g.d_w = f->grads[6];
}

static void fixture_free(fixture *f)
{
    attn_additive_destroy(f->m);
    free(f->act), free(f->sav), free(f->out), free(f->weights), free(f->lse), free(f->entropy);
    for (int i = 0; i < 7; i++)
        free(f->grads[i]);
    free_problem(&f->p);
}

static void test_add_mode(void **state)
{
    (void)state;
    fixture f;
    fixture_make(&f, 1);
    assert_int_equal(attn_additive_forward(f.m, &f.a), ATTN_OK);
    assert_int_equal(attn_additive_backward(f.m, &f.a, &f.g), ATTN_OK);
    float *once[7];
    for (int i = 0; i < 7; i++) {
        once[i] = xcalloc(f.grad_n[i], 4);
        memcpy(once[i], f.grads[i], f.grad_n[i] * 4);
    }
    f.g.mode = ATTN_ADDITIVE_GRAD_ADD;
    assert_int_equal(attn_additive_backward(f.m, &f.a, &f.g), ATTN_OK);
    for (int i = 0; i < 7; i++) {
        float mx = 0.0f;
        for (size_t x = 0; x < f.grad_n[i]; x++)
            mx = fmaxf(mx, fabsf(once[i][x]));
        for (size_t x = 0; x < f.grad_n[i]; x++)
            if (!(fabsf(f.grads[i][x] - 2.0f * once[i][x]) <= 1e-6f * mx))
                fail_msg("ADD gradient %d[%zu] = %g, once %g", i, x, (double)f.grads[i][x],
                         (double)once[i][x]);
        free(once[i]);
    }
    fixture_free(&f);
}

/* ---- error paths: the status, and nothing written ---------------------------------------------- */

typedef struct snapshot {
    unsigned char *bytes[13];
    size_t n[13];
    void *where[13];
    int count;
} snapshot;

static void snap_add(snapshot *s, void *p, size_t n)
{
    s->where[s->count] = p, s->n[s->count] = n;
    s->bytes[s->count] = xcalloc(n, 1);
    memcpy(s->bytes[s->count], p, n);
    s->count++;
}

/* Fills every output of the fixture with a pattern and records it. */
static void snap_take(fixture *f, snapshot *s)
{
    memset(s, 0, sizeof *s);
    void *outs[6] = {f->out, f->weights, f->lse, f->entropy, f->act, f->sav};
    size_t n[6] = {240, 280, 40, 40, f->act_size, f->sav_size};
    for (int i = 0; i < 6; i++) {
        memset(outs[i], 0x5A, n[i]);
        snap_add(s, outs[i], n[i]);
    }
    for (int i = 0; i < 7; i++) {
        memset(f->grads[i], 0xA5, f->grad_n[i] * 4);
        snap_add(s, f->grads[i], f->grad_n[i] * 4);
    }
}

static void snap_check(snapshot *s, const char *what)
{
    for (int i = 0; i < s->count; i++) {
        if (memcmp(s->where[i], s->bytes[i], s->n[i]) != 0)
            fail_msg("%s: buffer %d was written by a failing call", what, i);
        free(s->bytes[i]);
    }
}

typedef void (*mutate_fn)(fixture *f);

#define MUT(name, body)                                                                          \
    static void name(fixture *f) { body; }

MUT(m_args_null, (void)f)
MUT(m_args_size, f->a.struct_size = 3)
MUT(m_query, f->a.query = NULL)
MUT(m_key, f->a.key = NULL)
MUT(m_value, f->a.value = NULL)
MUT(m_out, f->a.out = NULL)
MUT(m_wq, f->a.w_q = NULL)
MUT(m_wk, f->a.w_k = NULL)
MUT(m_bias, f->a.bias = NULL)
MUT(m_w, f->a.w = NULL)
MUT(m_act, f->a.activations = NULL)
MUT(m_batch0, f->a.batch = 0)
MUT(m_q0, f->a.q_len = 0)
MUT(m_k0, f->a.kv_len = 0)
MUT(m_lens_hi, { f->p.kv_lens[0] = 1; f->p.kv_lens[1] = 8; f->a.kv_lens = f->p.kv_lens; })
MUT(m_lens_neg, { f->p.kv_lens[0] = -1; f->a.kv_lens = f->p.kv_lens; })
MUT(m_act_small, f->a.activation_size = f->act_size - 1)
MUT(m_sav_small, f->a.saved_size = f->sav_size - 1)
MUT(m_alias_out_q, f->a.out = (float *)f->p.q)
MUT(m_alias_w_out, f->a.weights = f->out + 4)
MUT(m_alias_act_sav, f->a.activations = (char *)f->sav + 64)
MUT(m_alias_lse_act, f->a.lse = (float *)f->act)
MUT(m_huge, { f->a.batch = 0xFFFFFFFFu; f->a.q_len = 0xFFFFFFFFu; })
MUT(m_huge_k, { f->a.kv_len = 0xFFFFFFFFu; })
MUT(m_grads_null, (void)f)
MUT(m_grads_size, f->g.struct_size = 1)
MUT(m_dout, f->g.dout = NULL)
MUT(m_saved_null, f->a.saved = NULL)
MUT(m_mode, f->g.mode = 2)
MUT(m_alias_dq_dk, f->g.d_key = f->g.d_query + 3)
MUT(m_alias_dv_sav, f->g.d_value = (float *)f->sav)
MUT(m_alias_dw_in, f->g.d_w = (float *)f->p.w)
MUT(m_alias_dwq_act, f->g.d_w_q = (float *)f->act + 8)

typedef struct err_case {
    const char *name;
    mutate_fn fn;
    int backward; /* 0: forward, 1: backward, 2: both */
    attn_status want;
} err_case;

static void run_errors(int bias, const err_case *cases, size_t n)
{
    for (size_t i = 0; i < n; i++)
        for (int pass = 0; pass < 2; pass++) {
            int backward = pass == 1;
            if (cases[i].backward != 2 && cases[i].backward != backward)
                continue;
            fixture f;
            fixture_make(&f, bias);
            if (backward) { /* a valid training forward first */
                assert_int_equal(attn_additive_forward(f.m, &f.a), ATTN_OK);
            }
            cases[i].fn(&f);
            snapshot s;
            snap_take(&f, &s);
            const attn_additive_args *a = cases[i].fn == m_args_null ? NULL : &f.a;
            const attn_additive_grads *g = cases[i].fn == m_grads_null ? NULL : &f.g;
            attn_status st = backward ? attn_additive_backward(f.m, a, g)
                                      : attn_additive_forward(f.m, a);
            if (st != cases[i].want)
                fail_msg("%s (%s): %s, expected %s (%s)", cases[i].name,
                         backward ? "backward" : "forward", attn_status_str(st),
                         attn_status_str(cases[i].want), attn_additive_last_error(f.m));
            assert_true(strlen(attn_additive_last_error(f.m)) > 0);
            snap_check(&s, cases[i].name);
            fixture_free(&f);
        }
}

static void test_error_paths(void **state)
{
    (void)state;
    static const err_case cases[] = {
        {"args NULL", m_args_null, 2, ATTN_ERR_NULL_POINTER},
        {"args struct_size", m_args_size, 2, ATTN_ERR_STRUCT_SIZE},
        {"query", m_query, 2, ATTN_ERR_NULL_POINTER},
        {"key", m_key, 2, ATTN_ERR_NULL_POINTER},
        {"value", m_value, 2, ATTN_ERR_NULL_POINTER},
        {"out", m_out, 0, ATTN_ERR_NULL_POINTER},
        {"w_q", m_wq, 2, ATTN_ERR_NULL_POINTER},
        {"w_k", m_wk, 2, ATTN_ERR_NULL_POINTER},
        {"bias missing", m_bias, 2, ATTN_ERR_NULL_POINTER},
        {"w", m_w, 2, ATTN_ERR_NULL_POINTER},
        {"activations", m_act, 2, ATTN_ERR_NULL_POINTER},
        {"batch 0", m_batch0, 2, ATTN_ERR_ZERO_SIZE},
        {"q_len 0", m_q0, 2, ATTN_ERR_ZERO_SIZE},
        {"kv_len 0", m_k0, 2, ATTN_ERR_ZERO_SIZE},
        {"kv_lens above kv_len", m_lens_hi, 2, ATTN_ERR_KV_LENS},
        {"kv_lens negative", m_lens_neg, 2, ATTN_ERR_KV_LENS},
        {"activations too small", m_act_small, 2, ATTN_ERR_WORKSPACE_SIZE},
        {"saved too small", m_sav_small, 2, ATTN_ERR_WORKSPACE_SIZE},
        {"out aliases query", m_alias_out_q, 0, ATTN_ERR_ALIAS},
        {"weights overlap out", m_alias_w_out, 0, ATTN_ERR_ALIAS},
        {"activations overlap saved", m_alias_act_sav, 2, ATTN_ERR_ALIAS},
        {"lse in the activations", m_alias_lse_act, 0, ATTN_ERR_ALIAS},
        {"huge sizes", m_huge, 2, ATTN_ERR_OVERFLOW},
        {"huge kv_len", m_huge_k, 2, ATTN_ERR_OVERFLOW},
        {"grads NULL", m_grads_null, 1, ATTN_ERR_NULL_POINTER},
        {"grads struct_size", m_grads_size, 1, ATTN_ERR_STRUCT_SIZE},
        {"dout", m_dout, 1, ATTN_ERR_NULL_POINTER},
        {"saved missing", m_saved_null, 1, ATTN_ERR_NULL_POINTER},
        {"grad mode", m_mode, 1, ATTN_ERR_BAD_OPTION},
        {"d_query overlaps d_key", m_alias_dq_dk, 1, ATTN_ERR_ALIAS},
        {"d_value in saved", m_alias_dv_sav, 1, ATTN_ERR_ALIAS},
        {"d_w is w", m_alias_dw_in, 1, ATTN_ERR_ALIAS},
        {"d_w_q in the activations", m_alias_dwq_act, 1, ATTN_ERR_ALIAS},
    };
    run_errors(1, cases, sizeof cases / sizeof cases[0]);
}

MUT(m_bias_given, f->a.bias = f->p.b)
MUT(m_dbias_given, f->g.d_bias = f->grads[5])

static void test_error_paths_no_bias(void **state)
{
    (void)state;
    static const err_case cases[] = {
        {"bias without one", m_bias_given, 2, ATTN_ERR_BAD_OPTION},
        {"d_bias without one", m_dbias_given, 1, ATTN_ERR_BAD_OPTION},
    };
    run_errors(0, cases, sizeof cases / sizeof cases[0]);
    /* NULL layer */
    attn_additive_args a;
    attn_additive_args_init(&a);
    assert_int_equal(attn_additive_forward(NULL, &a), ATTN_ERR_NULL_POINTER);
    assert_int_equal(attn_additive_backward(NULL, &a, NULL), ATTN_ERR_NULL_POINTER);
    assert_true(strlen(attn_additive_last_error(NULL)) > 0);
}

static void test_create_errors(void **state)
{
    (void)state;
    attn_additive *m = (attn_additive *)(uintptr_t)1;
    attn_additive_desc d;
    assert_int_equal(attn_additive_create(NULL, &m), ATTN_ERR_NULL_POINTER);
    assert_null(m);
    attn_additive_desc_init(&d);
    assert_int_equal(attn_additive_create(&d, NULL), ATTN_ERR_NULL_POINTER);
    struct {
        uint32_t *field;
        uint32_t value;
        attn_status want;
    } t[] = {
        {&d.q_dim, 0, ATTN_ERR_ZERO_SIZE},
        {&d.k_dim, 0, ATTN_ERR_ZERO_SIZE},
        {&d.v_dim, 0, ATTN_ERR_ZERO_SIZE},
        {&d.attn_dim, 0, ATTN_ERR_ZERO_SIZE},
        {&d.q_dim, ATTN_ADDITIVE_MAX_DIM + 1, ATTN_ERR_LIMIT},
        {&d.k_dim, 0xFFFFFFFFu, ATTN_ERR_LIMIT},
        {&d.v_dim, ATTN_MAX_HEAD_DIM + 1, ATTN_ERR_LIMIT},
        {&d.attn_dim, ATTN_MAX_HEAD_DIM + 1, ATTN_ERR_LIMIT},
        {&d.threads, ATTN_MAX_THREADS + 1, ATTN_ERR_LIMIT},
        {&d.bias, 2, ATTN_ERR_BAD_OPTION},
        {&d.flags, 0x80, ATTN_ERR_BAD_OPTION},
        {&d.masked_rows, 7, ATTN_ERR_BAD_OPTION},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        attn_additive_desc_init(&d);
        *t[i].field = t[i].value;
        m = (attn_additive *)(uintptr_t)1;
        assert_int_equal(attn_additive_create(&d, &m), t[i].want);
        assert_null(m);
        assert_true(strlen(attn_additive_last_error(NULL)) > 0);
    }
    attn_additive_desc_init(&d);
    d.struct_size = 5;
    assert_int_equal(attn_additive_create(&d, &m), ATTN_ERR_STRUCT_SIZE);
    attn_allocator bad = {NULL, NULL, NULL};
    attn_additive_desc_init(&d);
    d.allocator = &bad;
    assert_int_equal(attn_additive_create(&d, &m), ATTN_ERR_NULL_POINTER);
    attn_additive_destroy(NULL);
}

/* Size queries: 0 for a NULL layer, a zero size and sizes beyond size_t or the index types. */
static void test_hostile_sizes(void **state)
{
    (void)state;
    attn_additive_desc d;
    attn_additive_desc_init(&d);
    d.attn_dim = ATTN_MAX_HEAD_DIM, d.threads = 1;
    attn_additive *m;
    assert_int_equal(attn_additive_create(&d, &m), ATTN_OK);
    assert_int_equal(attn_additive_activation_size(NULL, 1, 1, 1), 0);
    assert_int_equal(attn_additive_saved_size(NULL, 1, 1, 1), 0);
    assert_int_equal(attn_additive_activation_size(m, 0, 1, 1), 0);
    assert_int_equal(attn_additive_saved_size(m, 1, 0, 1), 0);
    assert_int_equal(attn_additive_activation_size(m, 1, 1, 0), 0);
    assert_int_equal(attn_additive_activation_size(m, 0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu), 0);
    assert_int_equal(attn_additive_saved_size(m, 0xFFFFFFFFu, 2, 2), 0);
    assert_int_equal(attn_additive_activation_size(m, 1, 1, 0xFFFFFFFFu), 0);
    size_t s1 = attn_additive_activation_size(m, 1, 1, 1);
    size_t s2 = attn_additive_activation_size(m, 2, 1, 1);
    assert_true(s1 > 0 && s2 > s1);
    /* linear in the lengths: doubling Lq and Lk at most doubles the sizes, plus padding */
    size_t a = attn_additive_saved_size(m, 1, 1000, 1000), b = attn_additive_saved_size(m, 1, 2000, 2000);
    assert_true(b <= 2 * a + 4096);
    attn_additive_destroy(m);
}

/* ---- allocation failure ------------------------------------------------------------------------ */

typedef struct counting {
    int calls, fail_at, live;
} counting;

static void *count_alloc(void *user, size_t size, size_t alignment)
{
    counting *c = user;
    if (++c->calls == c->fail_at)
        return NULL;
    void *p = aligned_alloc(alignment, (size + alignment - 1) / alignment * alignment);
    if (p)
        c->live++;
    return p;
}

static void count_free(void *user, void *p)
{
    counting *c = user;
    if (p)
        c->live--;
    free(p);
}

static void test_alloc_failure(void **state)
{
    (void)state;
    counting cnt = {0, 0, 0};
    attn_allocator al = {count_alloc, count_free, &cnt};
    attn_additive_desc d;
    attn_additive_desc_init(&d);
    d.q_dim = 3, d.k_dim = 4, d.v_dim = 6, d.attn_dim = 8, d.threads = 2;
    d.allocator = &al;
    attn_additive *m;
    assert_int_equal(attn_additive_create(&d, &m), ATTN_OK);
    int total = cnt.calls;
    assert_true(total >= 3); /* object, context, tiles */
    /* calls allocate nothing */
    fixture f;
    fixture_make(&f, 1);
    int before = cnt.calls;
    assert_int_equal(attn_additive_forward(m, &f.a), ATTN_OK);
    assert_int_equal(attn_additive_backward(m, &f.a, &f.g), ATTN_OK);
    assert_int_equal(cnt.calls, before);
    fixture_free(&f);
    attn_additive_destroy(m);
    assert_int_equal(cnt.live, 0);
    for (int k = 1; k <= total; k++) {
        cnt = (counting){0, k, 0};
        m = (attn_additive *)(uintptr_t)1;
        attn_status st = attn_additive_create(&d, &m);
        assert_int_equal(st, ATTN_ERR_NO_MEMORY);
        assert_null(m);
        assert_int_equal(cnt.live, 0);
    }
}

/* Pinned values, and the init functions write exactly the size they are given. */
static void test_pinned_and_init(void **state)
{
    (void)state;
    assert_int_equal(ATTN_ADDITIVE_GRAD_SET, 0);
    assert_int_equal(ATTN_ADDITIVE_GRAD_ADD, 1);
    unsigned char buf[sizeof(attn_additive_args) + 16];
    memset(buf, 0xEE, sizeof buf);
    attn_additive_args_init_size((attn_additive_args *)(void *)buf, 24);
    for (size_t i = 24; i < sizeof buf; i++)
        assert_int_equal(buf[i], 0xEE);
    memset(buf, 0xEE, sizeof buf);
    attn_additive_grads_init_size((attn_additive_grads *)(void *)buf, sizeof(attn_additive_grads));
    for (size_t i = sizeof(attn_additive_grads); i < sizeof buf; i++)
        assert_int_equal(buf[i], 0xEE);
    attn_additive_desc d;
    memset(&d, 0xEE, sizeof d);
    attn_additive_desc_init(&d);
    assert_int_equal(d.struct_size, sizeof d);
    assert_int_equal(d.q_dim, 64);
    assert_int_equal(d.attn_dim, 64);
    assert_int_equal(d.bias, 1);
    assert_int_equal(d.flags, 0);
    assert_int_equal(d.masked_rows, ATTN_MASKED_ROWS_ZERO);
    assert_null(d.allocator);
    attn_additive_grads g;
    attn_additive_grads_init(&g);
    assert_int_equal(g.mode, ATTN_ADDITIVE_GRAD_SET);
    assert_null(g.dout);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_configs),
        cmocka_unit_test(test_edges),
        cmocka_unit_test(test_reference_gradients),
        cmocka_unit_test(test_threads_bitwise),
        cmocka_unit_test(test_add_mode),
        cmocka_unit_test(test_error_paths),
        cmocka_unit_test(test_error_paths_no_bias),
        cmocka_unit_test(test_create_errors),
        cmocka_unit_test(test_hostile_sizes),
        cmocka_unit_test(test_alloc_failure),
        cmocka_unit_test(test_pinned_and_init),
    };
    return cmocka_run_group_tests_name("additive", tests, NULL, NULL);
}
