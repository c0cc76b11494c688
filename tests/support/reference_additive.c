/* Float64 reference of additive attention: see reference_additive.h. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "support/reference_additive.h"
#include "support/util.h"



int refa_visible(const refa_problem *p, int b, int i, int j)
{
    if (p->kv_lens && j >= p->kv_lens[b])
        return 0;
    if (p->causal && j > i + p->Lk - p->Lq)
        return 0;
    if (p->mask && !p->mask[((size_t)b * p->Lq + i) * p->Lk + j])
        return 0;
    return 1;
}

double *refa_widen(const float *x, size_t n)
{
    double *d = xcalloc(n ? n : 1, sizeof *d);
    for (size_t i = 0; i < n; i++)
        d[i] = x[i];
    return d;
}

/* Projections and their absolute magnitudes. */
typedef struct proj {
    double *qp, *qm; /* [B, Lq, A] */
    double *kp, *km; /* [B, Lk, A] */
} proj;

static void project(const refa_problem *p, proj *x)
{
    int A = p->A;
    x->qp = xcalloc((size_t)p->B * p->Lq * A, sizeof(double));
    x->qm = xcalloc((size_t)p->B * p->Lq * A, sizeof(double));
    x->kp = xcalloc((size_t)p->B * p->Lk * A, sizeof(double));
    x->km = xcalloc((size_t)p->B * p->Lk * A, sizeof(double));
    for (int r = 0; r < p->B * p->Lq; r++)
        for (int a = 0; a < A; a++) {
            double s = p->bias ? p->bias[a] : 0.0, m = p->bias ? fabs(p->bias[a]) : 0.0;
            for (int d = 0; d < p->Dq; d++) {
                s += p->q[(size_t)r * p->Dq + d] * p->wq[(size_t)a * p->Dq + d];
                m += fabs(p->q[(size_t)r * p->Dq + d] * p->wq[(size_t)a * p->Dq + d]);
            }
            x->qp[(size_t)r * A + a] = s, x->qm[(size_t)r * A + a] = m;
        }
    for (int r = 0; r < p->B * p->Lk; r++)
        for (int a = 0; a < A; a++) {
            double s = 0.0, m = 0.0;
            for (int d = 0; d < p->Dk; d++) {
                s += p->k[(size_t)r * p->Dk + d] * p->wk[(size_t)a * p->Dk + d];
                m += fabs(p->k[(size_t)r * p->Dk + d] * p->wk[(size_t)a * p->Dk + d]);
            }
            x->kp[(size_t)r * A + a] = s, x->km[(size_t)r * A + a] = m;
        }
}

static void proj_free(proj *x)
{
    free(x->qp), free(x->qm), free(x->kp), free(x->km);
}

/* Score of (b, i, j) and its error bound in units of u: the sum over A terms (A + 6 roundings,
 * the tanh's 3 ulp included) and the projections' errors through tanh'. */
static double score(const refa_problem *p, const proj *x, int b, int i, int j, double *sigma)
{
    int A = p->A, Dmax = p->Dq > p->Dk ? p->Dq : p->Dk;
    const double *qp = x->qp + ((size_t)b * p->Lq + i) * A, *qm = x->qm + ((size_t)b * p->Lq + i) * A;
    const double *kp = x->kp + ((size_t)b * p->Lk + j) * A, *km = x->km + ((size_t)b * p->Lk + j) * A;
    double s = 0.0, sa = 0.0, sd = 0.0;
    for (int a = 0; a < A; a++) {
        double t = tanh(qp[a] + kp[a]);
        s += p->w[a] * t;
        sa += fabs(p->w[a] * t);
        sd += fabs(p->w[a]) * (1.0 - t * t) * (qm[a] + km[a] + fabs(qp[a] + kp[a]));
    }
    if (sigma)
        *sigma = (A + 6) * sa + (Dmax + 3) * sd;
    return s;
}

static void forward_impl(const refa_problem *p, const proj *x, refa_result *r)
{
    int B = p->B, Lq = p->Lq, Lk = p->Lk, Dv = p->Dv;
    size_t nq = (size_t)B * Lq;
    r->out = xcalloc(nq * Dv, sizeof(double));
    r->out_mag = xcalloc(nq * Dv, sizeof(double));
    r->weights = xcalloc(nq * Lk, sizeof(double));
    r->weights_mag = xcalloc(nq * Lk, sizeof(double));
    r->lse = xcalloc(nq, sizeof(double));
    r->entropy = xcalloc(nq, sizeof(double));
    r->sigma = xcalloc(nq, sizeof(double));
    r->sigma_max = 0.0;
    double *s = xcalloc((size_t)Lk, sizeof(double));
    for (int b = 0; b < B; b++)
        for (int i = 0; i < Lq; i++) {
            size_t row = (size_t)b * Lq + i;
            double m = -INFINITY, sig = 0.0;
            for (int j = 0; j < Lk; j++) {
                if (!refa_visible(p, b, i, j)) {
                    s[j] = -INFINITY;
                    continue;
                }
                double sj;
                s[j] = score(p, x, b, i, j, &sj);
                sig = sj > sig ? sj : sig;
                m = s[j] > m ? s[j] : m;
            }
            r->sigma[row] = sig;
            r->sigma_max = sig > r->sigma_max ? sig : r->sigma_max;
            if (m == -INFINITY) {
                r->lse[row] = -INFINITY;
                continue;
            }
            double l = 0.0;
            for (int j = 0; j < Lk; j++)
                l += s[j] == -INFINITY ? 0.0 : exp(s[j] - m);
            r->lse[row] = m + log(l);
            double ent = 0.0;
            for (int j = 0; j < Lk; j++) {
                double pj = s[j] == -INFINITY ? 0.0 : exp(s[j] - m) / l;
                r->weights[row * Lk + j] = pj;
                r->weights_mag[row * Lk + j] = pj;
                if (pj > 0)
                    ent -= pj * log(pj);
                for (int d = 0; d < Dv; d++) {
                    r->out[row * Dv + d] += pj * p->v[((size_t)b * Lk + j) * Dv + d];
                    r->out_mag[row * Dv + d] += pj * fabs(p->v[((size_t)b * Lk + j) * Dv + d]);
                }
            }
            r->entropy[row] = ent;
        }
    free(s);
}

void refa_forward(const refa_problem *p, refa_result *r)
{
    proj x;
    project(p, &x);
    forward_impl(p, &x, r);
    proj_free(&x);
}

double refa_loss(const refa_problem *p, const double *dout)
{
    refa_result r;
    refa_forward(p, &r);
    double loss = 0.0;
    for (size_t e = 0; e < (size_t)p->B * p->Lq * p->Dv; e++)
        loss += r.out[e] * dout[e];
    refa_free(&r);
    return loss;
}

void refa_backward(const refa_problem *p, const refa_result *r, const double *dout, refa_grads *g)
{
    int B = p->B, Lq = p->Lq, Lk = p->Lk, Dq = p->Dq, Dk = p->Dk, Dv = p->Dv, A = p->A;
    proj x;
    project(p, &x);
    size_t nq = (size_t)B * Lq, nk = (size_t)B * Lk;
    memset(g, 0, sizeof *g);
    g->dq = xcalloc(nq * Dq, sizeof(double)), g->m_dq = xcalloc(nq * Dq, sizeof(double));
    g->dk = xcalloc(nk * Dk, sizeof(double)), g->m_dk = xcalloc(nk * Dk, sizeof(double));
    g->dv = xcalloc(nk * Dv, sizeof(double)), g->m_dv = xcalloc(nk * Dv, sizeof(double));
    g->dwq = xcalloc((size_t)A * Dq, sizeof(double)), g->m_dwq = xcalloc((size_t)A * Dq, sizeof(double));
    g->dwk = xcalloc((size_t)A * Dk, sizeof(double)), g->m_dwk = xcalloc((size_t)A * Dk, sizeof(double));
    g->dbias = xcalloc((size_t)A, sizeof(double)), g->m_dbias = xcalloc((size_t)A, sizeof(double));
    g->dw = xcalloc((size_t)A, sizeof(double)), g->m_dw = xcalloc((size_t)A, sizeof(double));
    double *dqp = xcalloc(nq * A, sizeof(double)), *mqp = xcalloc(nq * A, sizeof(double));
    double *dkp = xcalloc(nk * A, sizeof(double)), *mkp = xcalloc(nk * A, sizeof(double));
    for (int b = 0; b < B; b++)
        for (int i = 0; i < Lq; i++) {
            size_t row = (size_t)b * Lq + i;
            if (r->lse[row] == -INFINITY)
                continue;
            const double *dO = dout + row * Dv, *o = r->out + row * Dv;
            double D = 0.0, Dm = 0.0;
            for (int d = 0; d < Dv; d++)
                D += dO[d] * o[d], Dm += fabs(dO[d]) * r->out_mag[row * Dv + d];
            for (int j = 0; j < Lk; j++) {
                double pj = r->weights[row * Lk + j];
                if (pj == 0.0)
                    continue;
                const double *vj = p->v + ((size_t)b * Lk + j) * Dv;
                double dP = 0.0, dPm = 0.0;
                for (int d = 0; d < Dv; d++) {
                    dP += dO[d] * vj[d], dPm += fabs(dO[d] * vj[d]);
                    g->dv[((size_t)b * Lk + j) * Dv + d] += pj * dO[d];
                    g->m_dv[((size_t)b * Lk + j) * Dv + d] += pj * fabs(dO[d]);
                }
                double dS = pj * (dP - D), dSm = pj * (dPm + Dm);
                const double *qp = x.qp + row * A, *qm = x.qm + row * A;
                const double *kp = x.kp + ((size_t)b * Lk + j) * A, *km = x.km + ((size_t)b * Lk + j) * A;
                for (int a = 0; a < A; a++) {
                    double u = qp[a] + kp[a], t = tanh(u), d1 = 1.0 - t * t;
                    double U = qm[a] + km[a] + fabs(u);
                    /* 1 - t^2 from a float t carries 2|t| times t's error */
                    double gm = d1 * (1.0 + 2.0 * fabs(t) * U) + 2.0 * t * t;
                    g->dw[a] += dS * t;
                    g->m_dw[a] += dSm * (fabs(t) + d1 * U);
                    dqp[row * A + a] += p->w[a] * dS * d1;
                    mqp[row * A + a] += fabs(p->w[a]) * dSm * gm;
                    dkp[((size_t)b * Lk + j) * A + a] += p->w[a] * dS * d1;
                    mkp[((size_t)b * Lk + j) * A + a] += fabs(p->w[a]) * dSm * gm;
                }
            }
        }
    for (size_t rr = 0; rr < nq; rr++)
        for (int a = 0; a < A; a++) {
            double d = dqp[rr * A + a], m = mqp[rr * A + a];
            g->dbias[a] += d, g->m_dbias[a] += m;
            for (int e = 0; e < Dq; e++) {
                g->dq[rr * Dq + e] += d * p->wq[(size_t)a * Dq + e];
                g->m_dq[rr * Dq + e] += m * fabs(p->wq[(size_t)a * Dq + e]);
                g->dwq[(size_t)a * Dq + e] += d * p->q[rr * Dq + e];
                g->m_dwq[(size_t)a * Dq + e] += m * fabs(p->q[rr * Dq + e]);
            }
        }
    for (size_t rr = 0; rr < nk; rr++)
        for (int a = 0; a < A; a++) {
            double d = dkp[rr * A + a], m = mkp[rr * A + a];
            for (int e = 0; e < Dk; e++) {
                g->dk[rr * Dk + e] += d * p->wk[(size_t)a * Dk + e];
                g->m_dk[rr * Dk + e] += m * fabs(p->wk[(size_t)a * Dk + e]);
                g->dwk[(size_t)a * Dk + e] += d * p->k[rr * Dk + e];
                g->m_dwk[(size_t)a * Dk + e] += m * fabs(p->k[rr * Dk + e]);
            }
        }
    free(dqp), free(mqp), free(dkp), free(mkp);
    proj_free(&x);
}

void refa_free(refa_result *r)
{
    free(r->out), free(r->out_mag), free(r->weights), free(r->weights_mag);
    free(r->lse), free(r->entropy), free(r->sigma);
}

void refa_grads_free(refa_grads *g)
{
    free(g->dq), free(g->dk), free(g->dv), free(g->dwq), free(g->dwk), free(g->dbias), free(g->dw);
    free(g->m_dq), free(g->m_dk), free(g->m_dv), free(g->m_dwq), free(g->m_dwk), free(g->m_dbias);
    free(g->m_dw);
}
