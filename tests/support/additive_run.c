/* See additive_run.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "support/additive_run.h"
#include "support/util.h"

#define UNIT 0x1p-24

static float *fz(size_t n)
{
    return xcalloc(n ? n : 1, sizeof(float));
}

attn_status adt_run(const adt_case *c, adt_out *o, char *err, size_t err_size)
{
    memset(o, 0, sizeof *o);
    attn_additive_desc d;
    attn_additive_desc_init(&d);
    d.q_dim = (uint32_t)c->Dq, d.k_dim = (uint32_t)c->Dk, d.v_dim = (uint32_t)c->Dv;
    d.attn_dim = (uint32_t)c->A, d.bias = (uint32_t)c->bias;
    d.flags = c->causal ? ATTN_CAUSAL : 0;
    d.threads = c->threads;
    attn_additive *m;
    attn_status st = attn_additive_create(&d, &m);
    if (st != ATTN_OK) {
        snprintf(err, err_size, "create: %s", attn_additive_last_error(NULL));
        return st;
    }
    size_t B = (size_t)c->B, nq = B * c->Lq, nk = B * c->Lk;
    size_t act = attn_additive_activation_size(m, (uint32_t)c->B, (uint32_t)c->Lq, (uint32_t)c->Lk);
    size_t sav = attn_additive_saved_size(m, (uint32_t)c->B, (uint32_t)c->Lq, (uint32_t)c->Lk);
    void *abuf = xcalloc(act, 1), *sbuf = xcalloc(sav, 1);
    o->out = fz(nq * c->Dv);
    if (c->want_weights)
        o->weights = fz(nq * c->Lk);
    if (c->want_lse)
        o->lse = fz(nq);
    if (c->want_entropy)
        o->entropy = fz(nq);
    attn_additive_args a;
    attn_additive_args_init(&a);
    a.batch = (uint32_t)c->B, a.q_len = (uint32_t)c->Lq, a.kv_len = (uint32_t)c->Lk;
    a.query = c->q, a.key = c->k, a.value = c->v, a.out = o->out;
    a.w_q = c->wq, a.w_k = c->wk, a.bias = c->bias ? c->b : NULL, a.w = c->w;
    a.kv_lens = c->kv_lens, a.mask = c->mask;
    a.weights = o->weights, a.lse = o->lse, a.entropy = o->entropy;
    a.activations = abuf, a.activation_size = act, a.saved = sbuf, a.saved_size = sav;
    st = attn_additive_forward(m, &a);
    if (st == ATTN_OK && c->dout) {
        o->dq = fz(nq * c->Dq), o->dk = fz(nk * c->Dk), o->dv = fz(nk * c->Dv);
        o->dwq = fz((size_t)c->A * c->Dq), o->dwk = fz((size_t)c->A * c->Dk);
        o->dbias = c->bias ? fz((size_t)c->A) : NULL, o->dw = fz((size_t)c->A);
        attn_additive_grads g;
        attn_additive_grads_init(&g);
        g.dout = c->dout;
        g.d_query = o->dq, g.d_key = o->dk, g.d_value = o->dv;
        g.d_w_q = o->dwq, g.d_w_k = o->dwk, g.d_bias = o->dbias, g.d_w = o->dw;
        st = attn_additive_backward(m, &a, &g);
    }
    if (st != ATTN_OK)
        snprintf(err, err_size, "%s: %s", attn_status_str(st), attn_additive_last_error(m));
    attn_additive_destroy(m);
    free(abuf), free(sbuf);
    return st;
}

void adt_out_free(adt_out *o)
{
    free(o->out), free(o->weights), free(o->lse), free(o->entropy);
    free(o->dq), free(o->dk), free(o->dv), free(o->dwq), free(o->dwk), free(o->dbias), free(o->dw);
    memset(o, 0, sizeof *o);
}

void adt_ref_problem(const adt_case *c, refa_problem *p)
{
    size_t B = (size_t)c->B;
    memset(p, 0, sizeof *p);
    p->B = c->B, p->Lq = c->Lq, p->Lk = c->Lk, p->Dq = c->Dq, p->Dk = c->Dk, p->Dv = c->Dv;
    p->A = c->A, p->causal = c->causal, p->kv_lens = c->kv_lens, p->mask = c->mask;
    p->q = refa_widen(c->q, B * c->Lq * c->Dq);
    p->k = refa_widen(c->k, B * c->Lk * c->Dk);
    p->v = refa_widen(c->v, B * c->Lk * c->Dv);
    p->wq = refa_widen(c->wq, (size_t)c->A * c->Dq);
    p->wk = refa_widen(c->wk, (size_t)c->A * c->Dk);
    p->bias = c->bias ? refa_widen(c->b, (size_t)c->A) : NULL;
    p->w = refa_widen(c->w, (size_t)c->A);
}

void adt_ref_free(refa_problem *p)
{
    free((void *)p->q), free((void *)p->k), free((void *)p->v), free((void *)p->wq);
    free((void *)p->wk), free((void *)p->bias), free((void *)p->w);
}

typedef struct checker {
    double worst;
    char *msg;
    size_t msg_size;
    int failed;
} checker;

static void cmp(checker *k, const char *what, size_t i, float got, double want, double tol)
{
    double e = fabs((double)got - want);
    double ratio = e / (tol + 1e-300);
    if (got == want)
        ratio = 0.0;
    if (!(ratio <= k->worst))
        k->worst = isnan(ratio) ? INFINITY : ratio;
    if (!(ratio <= 1.0) && !k->failed) {
        k->failed = 1;
        snprintf(k->msg, k->msg_size, "%s[%zu] = %.9g, reference %.9g: error %.3g above tolerance %.3g",
                 what, i, (double)got, want, e, tol);
    }
}

double adt_check(const adt_case *c, const adt_out *o, const refa_result *r, const refa_grads *g,
                 char *msg, size_t msg_size)
{
    checker k = {0.0, msg, msg_size, 0};
    msg[0] = 0;
    size_t nq = (size_t)c->B * c->Lq, nk = (size_t)c->B * c->Lk;
    for (size_t row = 0; row < nq; row++) {
        double K = 2.0 * r->sigma[row] + c->Lk + 8;
        for (int d = 0; d < c->Dv; d++)
            cmp(&k, "out", row * c->Dv + d, o->out[row * c->Dv + d], r->out[row * c->Dv + d],
                2.0 * K * UNIT * r->out_mag[row * c->Dv + d]);
        if (o->weights)
            for (int j = 0; j < c->Lk; j++)
                cmp(&k, "weights", row * c->Lk + j, o->weights[row * c->Lk + j],
                    r->weights[row * c->Lk + j], 2.0 * K * UNIT * r->weights_mag[row * c->Lk + j]);
        if (o->lse) {
            if (r->lse[row] == -INFINITY) {
                if (o->lse[row] != -INFINITY)
                    cmp(&k, "lse", row, o->lse[row], -INFINITY, 0.0);
            } else {
                cmp(&k, "lse", row, o->lse[row], r->lse[row],
                    2.0 * UNIT * (r->sigma[row] + c->Lk + 8 + fabs(r->lse[row])));
            }
        }
        if (o->entropy)
            cmp(&k, "entropy", row, o->entropy[row], r->entropy[row],
                2.0 * K * UNIT * (1.0 + r->entropy[row] + log(c->Lk + 1.0)));
    }
    if (g && o->dq) {
        double Kb = 2.0 * r->sigma_max + c->Dq + c->Dk + c->Dv + c->Lq + c->Lk + c->A + 16;
        double t = 2.0 * Kb * UNIT;
        struct {
            const char *name;
            const float *got;
            const double *want, *mag;
            size_t n;
        } t_[] = {
            {"dq", o->dq, g->dq, g->m_dq, nq * c->Dq},
            {"dk", o->dk, g->dk, g->m_dk, nk * c->Dk},
            {"dv", o->dv, g->dv, g->m_dv, nk * c->Dv},
            {"dW_q", o->dwq, g->dwq, g->m_dwq, (size_t)c->A * c->Dq},
            {"dW_k", o->dwk, g->dwk, g->m_dwk, (size_t)c->A * c->Dk},
            {"dbias", o->dbias, g->dbias, g->m_dbias, c->bias ? (size_t)c->A : 0},
            {"dw", o->dw, g->dw, g->m_dw, (size_t)c->A},
        };
        for (size_t x = 0; x < sizeof t_ / sizeof t_[0]; x++)
            for (size_t i = 0; i < t_[x].n; i++)
                cmp(&k, t_[x].name, i, t_[x].got[i], t_[x].want[i], t * t_[x].mag[i]);
    }
    return k.worst;
}
