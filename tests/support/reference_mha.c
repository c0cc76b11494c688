/* Float64 multi-head attention layer and its gradients, with magnitudes (reference_mha.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "reference_mha.h"
#include "util.h"

static double *zeros(int64_t n)
{
    return xcalloc((size_t)(n > 0 ? n : 1), sizeof(double));
}

/* y[r, e] = sum_c x[r, c] w[e, c] + b[e], and the same on absolute values. */
static void project(const float *x, const double *xd, const double *xm, int64_t rows, int64_t in,
                    const float *w, const float *b, int64_t n, double *y, double *ym)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t e = 0; e < n; e++) {
            double s = b ? b[e] : 0.0, m = b ? fabs(b[e]) : 0.0;
            for (int64_t c = 0; c < in; c++) {
                double xv = x ? x[r * in + c] : xd[r * in + c];
                double xa = x ? fabs(xv) : xm[r * in + c];
                s += xv * w[e * in + c];
                m += xa * fabs(w[e * in + c]);
            }
            y[r * n + e] = s;
            ym[r * n + e] = m;
        }
}

static int visible(const refm_problem *p, int64_t b, int64_t h, int64_t i, int64_t j)
{
    if (p->causal && j > i + p->Lk - p->Lq)
        return 0;
    if (p->kv_lens && j >= p->kv_lens[b])
        return 0;
    if (p->key_visible && !p->key_visible[b * p->Lk + j])
        return 0;
    if (p->attn_mask) {
        int64_t at = p->mask3d ? ((b * p->H + h) * p->Lq + i) * p->Lk + j : i * p->Lk + j;
        if (!p->attn_mask[at])
            return 0;
    }
    return 1;
}

static double bias_at(const refm_problem *p, int64_t b, int64_t h, int64_t i, int64_t j)
{
    if (!p->attn_bias)
        return 0.0;
    int64_t at = p->mask3d ? ((b * p->H + h) * p->Lq + i) * p->Lk + j : i * p->Lk + j;
    return p->attn_bias[at];
}

static double keep_scale(const refm_problem *p, int64_t b, int64_t h, int64_t i, int64_t j)
{
    if (!p->drop_keep)
        return 1.0;
    int64_t at = ((b * p->H + h) * p->Lq + i) * p->Lk + j;
    return p->drop_keep[at] ? 1.0 / (1.0 - p->dropout) : 0.0;
}

void refm_forward(const refm_problem *p, refm_result *r)
{
    int64_t B = p->B, Lq = p->Lq, Lk = p->Lk, E = p->E, H = p->H, D = E / H;
    int64_t kvE = p->Hkv * D, grp = H / p->Hkv;
    double scale = 1.0 / sqrt((double)D);
    memset(r, 0, sizeof *r);
    r->q = zeros(B * Lq * E), r->q_mag = zeros(B * Lq * E);
    r->k = zeros(B * Lk * kvE), r->k_mag = zeros(B * Lk * kvE);
    r->v = zeros(B * Lk * kvE), r->v_mag = zeros(B * Lk * kvE);
    project(p->query, NULL, NULL, B * Lq, E, p->wq, p->bq, E, r->q, r->q_mag);
    project(p->key, NULL, NULL, B * Lk, p->kdim, p->wk, p->bk, kvE, r->k, r->k_mag);
    project(p->value, NULL, NULL, B * Lk, p->vdim, p->wv, p->bv, kvE, r->v, r->v_mag);
    r->p = zeros(B * H * Lq * Lk), r->sigma = zeros(B * H * Lq);
    r->weights = zeros(B * H * Lq * Lk), r->weights_mag = zeros(B * H * Lq * Lk);
    r->o = zeros(B * Lq * E), r->o_mag = zeros(B * Lq * E);
    double *s = zeros(Lk);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < Lq; i++) {
                int64_t g = h / grp, row = (b * H + h) * Lq + i;
                const double *q = r->q + (b * Lq + i) * E + h * D;
                const double *qm = r->q_mag + (b * Lq + i) * E + h * D;
                double mx = -INFINITY, sigma = 0.0;
                for (int64_t j = 0; j < Lk; j++) {
                    s[j] = -INFINITY;
                    if (!visible(p, b, h, i, j))
                        continue;
                    const double *k = r->k + (b * Lk + j) * kvE + g * D;
                    const double *km = r->k_mag + (b * Lk + j) * kvE + g * D;
                    double dot = 0.0, am = 0.0;
                    for (int64_t d = 0; d < D; d++)
                        dot += q[d] * k[d], am += qm[d] * km[d];
                    double bj = bias_at(p, b, h, i, j);
                    s[j] = scale * dot + bj;
                    am = scale * am + fabs(bj);
                    if (s[j] == -INFINITY)
                        continue;
                    sigma = fmax(sigma, am);
                    mx = fmax(mx, s[j]);
                }
                r->sigma[row] = sigma;
                if (mx == -INFINITY)
                    continue; /* no visible key: zeros */
                double sum = 0.0;
                for (int64_t j = 0; j < Lk; j++)
                    sum += s[j] == -INFINITY ? 0.0 : exp(s[j] - mx);
                double *o = r->o + (b * Lq + i) * E + h * D;
                double *om = r->o_mag + (b * Lq + i) * E + h * D;
                for (int64_t j = 0; j < Lk; j++) {
                    if (s[j] == -INFINITY)
                        continue;
                    double pj = exp(s[j] - mx) / sum, pd = pj * keep_scale(p, b, h, i, j);
                    r->p[row * Lk + j] = pj;
                    r->weights[row * Lk + j] = pd;
                    r->weights_mag[row * Lk + j] = pd * (1.0 + sigma);
                    const double *v = r->v + (b * Lk + j) * kvE + g * D;
                    const double *vm = r->v_mag + (b * Lk + j) * kvE + g * D;
                    for (int64_t d = 0; d < D; d++)
                        o[d] += pd * v[d], om[d] += pd * (1.0 + sigma) * vm[d];
                }
            }
    free(s);
    r->wmean = zeros(B * Lq * Lk), r->wmean_mag = zeros(B * Lq * Lk);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t x = 0; x < Lq * Lk; x++) {
                r->wmean[b * Lq * Lk + x] += r->weights[(b * H + h) * Lq * Lk + x] / (double)H;
                r->wmean_mag[b * Lq * Lk + x] += r->weights_mag[(b * H + h) * Lq * Lk + x] / (double)H;
            }
    r->out = zeros(B * Lq * E), r->out_mag = zeros(B * Lq * E);
    project(NULL, r->o, r->o_mag, B * Lq, E, p->wo, p->bo, E, r->out, r->out_mag);
}

/* Gradients of y = x Wᵀ + b from dy (and magnitudes): dx += dy W, dW = dyᵀ x, db = sum dy. */
static void project_back(const float *x, const double *xd, const double *xm, int64_t rows,
                         int64_t in, const float *w, int64_t n, const double *dy,
                         const double *dym, double *dx, double *dxm, double *dw, double *dwm,
                         double *db, double *dbm)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t e = 0; e < n; e++) {
            double g = dy[r * n + e], gm = dym[r * n + e];
            if (db)
                db[e] += g, dbm[e] += gm;
            for (int64_t c = 0; c < in; c++) {
                double xv = x ? x[r * in + c] : xd[r * in + c];
                double xa = x ? fabs(xv) : xm[r * in + c];
                if (dx)
                    dx[r * in + c] += g * w[e * in + c], dxm[r * in + c] += gm * fabs(w[e * in + c]);
                dw[e * in + c] += g * xv;
                dwm[e * in + c] += gm * xa;
            }
        }
}

void refm_backward(const refm_problem *p, const refm_result *r, const float *dout, refm_grads *gr)
{
    int64_t B = p->B, Lq = p->Lq, Lk = p->Lk, E = p->E, H = p->H, D = E / H;
    int64_t kvE = p->Hkv * D, grp = H / p->Hkv;
    double scale = 1.0 / sqrt((double)D);
    memset(gr, 0, sizeof *gr);
    double *dy = zeros(B * Lq * E), *dym = zeros(B * Lq * E);
    for (int64_t x = 0; x < B * Lq * E; x++)
        dy[x] = dout[x], dym[x] = fabs(dout[x]);
    double *dO = zeros(B * Lq * E), *dOm = zeros(B * Lq * E);
    gr->d_wo = zeros(E * E), gr->m_wo = zeros(E * E);
    gr->d_bo = zeros(E), gr->m_bo = zeros(E);
    project_back(NULL, r->o, r->o_mag, B * Lq, E, p->wo, E, dy, dym, dO, dOm, gr->d_wo, gr->m_wo,
                 gr->d_bo, gr->m_bo);
    double *dQ = zeros(B * Lq * E), *dQm = zeros(B * Lq * E);
    double *dK = zeros(B * Lk * kvE), *dKm = zeros(B * Lk * kvE);
    double *dV = zeros(B * Lk * kvE), *dVm = zeros(B * Lk * kvE);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < Lq; i++) {
                int64_t g = h / grp, row = (b * H + h) * Lq + i;
                int64_t qo = (b * Lq + i) * E + h * D;
                double delta = 0.0, deltam = 0.0, sig = 1.0 + r->sigma[row];
                for (int64_t d = 0; d < D; d++)
                    delta += dO[qo + d] * r->o[qo + d], deltam += dOm[qo + d] * r->o_mag[qo + d];
                for (int64_t j = 0; j < Lk; j++) {
                    double pj = r->p[row * Lk + j];
                    if (pj == 0.0)
                        continue;
                    double ks = keep_scale(p, b, h, i, j), pd = pj * ks;
                    int64_t ko = (b * Lk + j) * kvE + g * D;
                    double dp = 0.0, dpm = 0.0;
                    for (int64_t d = 0; d < D; d++) {
                        dp += dO[qo + d] * r->v[ko + d];
                        dpm += dOm[qo + d] * r->v_mag[ko + d];
                        dV[ko + d] += pd * dO[qo + d];
                        dVm[ko + d] += pd * sig * dOm[qo + d];
                    }
                    double ds = pj * (dp * ks - delta), dsm = pj * sig * (dpm * ks + deltam);
                    for (int64_t d = 0; d < D; d++) {
                        dQ[qo + d] += scale * ds * r->k[ko + d];
                        dQm[qo + d] += scale * dsm * r->k_mag[ko + d];
                        dK[ko + d] += scale * ds * r->q[qo + d];
                        dKm[ko + d] += scale * dsm * r->q_mag[qo + d];
                    }
                }
            }
    gr->d_query = zeros(B * Lq * E), gr->m_query = zeros(B * Lq * E);
    gr->d_key = zeros(B * Lk * p->kdim), gr->m_key = zeros(B * Lk * p->kdim);
    gr->d_value = zeros(B * Lk * p->vdim), gr->m_value = zeros(B * Lk * p->vdim);
    gr->d_wq = zeros(E * E), gr->m_wq = zeros(E * E);
    gr->d_wk = zeros(kvE * p->kdim), gr->m_wk = zeros(kvE * p->kdim);
    gr->d_wv = zeros(kvE * p->vdim), gr->m_wv = zeros(kvE * p->vdim);
    gr->d_bq = zeros(E), gr->m_bq = zeros(E);
    gr->d_bk = zeros(kvE), gr->m_bk = zeros(kvE);
    gr->d_bv = zeros(kvE), gr->m_bv = zeros(kvE);
    project_back(p->query, NULL, NULL, B * Lq, E, p->wq, E, dQ, dQm, gr->d_query, gr->m_query,
                 gr->d_wq, gr->m_wq, gr->d_bq, gr->m_bq);
    project_back(p->key, NULL, NULL, B * Lk, p->kdim, p->wk, kvE, dK, dKm, gr->d_key, gr->m_key,
                 gr->d_wk, gr->m_wk, gr->d_bk, gr->m_bk);
    project_back(p->value, NULL, NULL, B * Lk, p->vdim, p->wv, kvE, dV, dVm, gr->d_value,
                 gr->m_value, gr->d_wv, gr->m_wv, gr->d_bv, gr->m_bv);
    free(dy), free(dym), free(dO), free(dOm), free(dQ), free(dQm), free(dK), free(dKm);
    free(dV), free(dVm);
}

void refm_free(refm_result *r)
{
    double *all[] = {r->out, r->out_mag, r->weights, r->weights_mag, r->wmean, r->wmean_mag,
                     r->q, r->k, r->v, r->q_mag, r->k_mag, r->v_mag, r->o, r->o_mag, r->p,
                     r->sigma};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        free(all[i]);
    memset(r, 0, sizeof *r);
}

void refm_grads_free(refm_grads *g)
{
    double *all[] = {g->d_query, g->d_key, g->d_value, g->d_wq, g->d_wk, g->d_wv, g->d_bq,
                     g->d_bk, g->d_bv, g->d_wo, g->d_bo, g->m_query, g->m_key, g->m_value,
                     g->m_wq, g->m_wk, g->m_wv, g->m_bq, g->m_bk, g->m_bv, g->m_wo, g->m_bo};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        free(all[i]);
    memset(g, 0, sizeof *g);
}
