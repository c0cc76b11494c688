/* Naive double-precision attention backward and its float32 error bounds. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "reference_backward.h"
#include "util.h"

#define U 0x1p-24 /* unit roundoff of float32 */
#define FLOOR 1e-30

/* Key j visible to row (b, h, i): the forward's rules, written out again. */
static int visible(const ref_problem *p, int64_t b, int64_t h, int64_t i, int64_t j)
{
    int64_t pos = i + p->q_offset;
    if (p->causal && j > pos)
        return 0;
    if (p->window_left >= 0 && j < pos - p->window_left)
        return 0;
    if (p->window_right >= 0 && j > pos + p->window_right)
        return 0;
    if (p->kv_lens && j >= p->kv_lens[b])
        return 0;
    if (p->mask && !p->mask[b * p->mask_s.batch + h * p->mask_s.head + i * p->mask_s.seq + j])
        return 0;
    if (p->bias && p->bias[b * p->bias_s.batch + h * p->bias_s.head + i * p->bias_s.seq + j] == -INFINITY)
        return 0;
    return 1;
}

void ref_backward(const ref_problem *p, const ref_result *fwd, const double *dout, ref_grads *g)
{
    ref_backward_dropout(p, fwd, dout, NULL, 1.0, g);
}

void ref_backward_dropout(const ref_problem *p, const ref_result *fwd, const double *dout,
                          const unsigned char *keep, double scale, ref_grads *g)
{
    int64_t B = p->B, Hq = p->Hq, Hkv = p->Hkv, Lq = p->Lq, Lk = p->Lk, D = p->D, Dv = p->Dv;
    int64_t group = Hq / Hkv;
    g->Bb = p->bias && p->bias_s.batch == 0 ? 1 : B;
    g->Hb = p->bias && p->bias_s.head == 0 ? 1 : Hq;
    g->Lqb = p->bias && p->bias_s.seq == 0 ? 1 : Lq;
    size_t nq = (size_t)(B * Hq * Lq), nk = (size_t)(B * Hkv * Lk);
    size_t nb = (size_t)(g->Bb * g->Hb * g->Lqb * Lk);
    g->dq = xcalloc(nq * D, sizeof(double)), g->dq_tol = xcalloc(nq * D, sizeof(double));
    g->dk = xcalloc(nk * D, sizeof(double)), g->dk_tol = xcalloc(nk * D, sizeof(double));
    g->dv = xcalloc(nk * Dv, sizeof(double)), g->dv_tol = xcalloc(nk * Dv, sizeof(double));
    g->dbias = xcalloc(nb, sizeof(double)), g->dbias_tol = xcalloc(nb, sizeof(double));
    /* sums the bounds are made of: A = Σ |terms|, E = Σ propagated input errors */
    double *dk_a = xcalloc(nk * D, sizeof(double)), *dk_e = xcalloc(nk * D, sizeof(double));
    double *dv_a = xcalloc(nk * Dv, sizeof(double)), *dv_e = xcalloc(nk * Dv, sizeof(double));
    double *db_a = xcalloc(nb, sizeof(double)), *db_e = xcalloc(nb, sizeof(double));
    double *db_n = xcalloc(nb, sizeof(double));
    double *ds = xcalloc((size_t)Lk, sizeof(double)), *e_ds = xcalloc((size_t)Lk, sizeof(double));
    double as = fabs(p->scale);

    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < Hq; h++)
            for (int64_t i = 0; i < Lq; i++) {
                size_t row = (size_t)((b * Hq + h) * Lq + i);
                if (fwd->masked[row])
                    continue; /* contributes nothing */
                int64_t gh = h / group;
                const double *P = fwd->weights + row * Lk, *O = fwd->out + row * Dv;
                const double *O_tol = fwd->out_tol + row * Dv, *G = dout + row * Dv;
                double lse = fwd->lse[row];
                /* exponent error: score (delta) + lse as a float32 input (its forward bound and
                 * its rounding); the ref tolerances are already twice the first-order bound */
                double rel_p = fwd->lse_tol[row] + U * fabs(lse) + 3.0 * U;
                double delta = 0.0, delta_abs = 0.0, e_delta = 0.0;
                for (int64_t d = 0; d < Dv; d++) {
                    delta += G[d] * O[d];
                    delta_abs += fabs(G[d] * O[d]);
                    e_delta += fabs(G[d]) * (O_tol[d] + U * fabs(O[d]));
                }
                e_delta += (double)(Dv + 2) * U * delta_abs;
                const float *q = p->q + b * p->qs.batch + h * p->qs.head + i * p->qs.seq;
                int64_t n_vis = 0;
                for (int64_t j = 0; j < Lk; j++) {
                    ds[j] = e_ds[j] = 0.0;
                    if (!visible(p, b, h, i, j))
                        continue;
                    n_vis++;
                    const float *v = p->v + b * p->vs.batch + gh * p->vs.head + j * p->vs.seq;
                    double dp = 0.0, dp_abs = 0.0;
                    for (int64_t d = 0; d < Dv; d++) {
                        dp += G[d] * v[d];
                        dp_abs += fabs(G[d] * v[d]);
                    }
                    double e_dp = (double)(Dv + 2) * U * dp_abs;
                    /* dropout: the forward used P ∘ keep · scale, so do dV and dP */
                    double kj = keep ? (keep[row * Lk + j] ? scale : 0.0) : 1.0;
                    dp *= kj;
                    e_dp = e_dp * kj + (kj != 1.0 ? U * fabs(dp) : 0.0);
                    ds[j] = P[j] * (dp - delta);
                    e_ds[j] = rel_p * P[j] * fabs(dp - delta) + P[j] * (e_dp + e_delta) +
                              U * fabs(ds[j]) + 0x1p-126 * (fabs(dp) + fabs(delta));
                    for (int64_t d = 0; d < Dv; d++) {
                        size_t at = (size_t)(((b * Hkv + gh) * Lk + j) * Dv + d);
                        g->dv[at] += kj * P[j] * G[d];
                        dv_a[at] += kj * P[j] * fabs(G[d]);
                        dv_e[at] += (kj * (rel_p + U) * P[j] + 0x1p-126) * fabs(G[d]);
                    }
                    for (int64_t d = 0; d < D; d++) {
                        size_t at = (size_t)(((b * Hkv + gh) * Lk + j) * D + d);
                        g->dk[at] += p->scale * ds[j] * q[d];
                        dk_a[at] += as * fabs(ds[j] * q[d]);
                        dk_e[at] += as * e_ds[j] * fabs(q[d]);
                    }
                    size_t bat = (size_t)((((g->Bb == 1 ? 0 : b) * g->Hb + (g->Hb == 1 ? 0 : h)) *
                                               g->Lqb + (g->Lqb == 1 ? 0 : i)) * Lk + j);
                    if (p->bias) {
                        g->dbias[bat] += ds[j];
                        db_a[bat] += fabs(ds[j]);
                        db_e[bat] += e_ds[j];
                        db_n[bat] += 1.0;
                    }
                }
                for (int64_t d = 0; d < D; d++) {
                    double acc = 0.0, a = 0.0, e = 0.0;
                    for (int64_t j = 0; j < Lk; j++) {
                        if (ds[j] == 0.0 && e_ds[j] == 0.0)
                            continue;
                        double kv = p->k[b * p->ks.batch + gh * p->ks.head + j * p->ks.seq + d];
                        acc += ds[j] * kv;
                        a += fabs(ds[j] * kv);
                        e += e_ds[j] * fabs(kv);
                    }
                    size_t at = row * (size_t)D + (size_t)d;
                    g->dq[at] = p->scale * acc;
                    g->dq_tol[at] = 2.0 * (as * e + (double)(n_vis + 2) * U * as * a) + FLOOR;
                }
            }
    double n_rows = (double)(group * Lq + 2);
    for (size_t at = 0; at < nk * D; at++)
        g->dk_tol[at] = 2.0 * (dk_e[at] + n_rows * U * dk_a[at]) + FLOOR;
    for (size_t at = 0; at < nk * Dv; at++)
        g->dv_tol[at] = 2.0 * (dv_e[at] + n_rows * U * dv_a[at]) + FLOOR;
    for (size_t at = 0; at < nb; at++)
        g->dbias_tol[at] = 2.0 * (db_e[at] + (db_n[at] + 1.0) * U * db_a[at]) + (db_n[at] ? FLOOR : 0.0);
    free(dk_a), free(dk_e), free(dv_a), free(dv_e), free(db_a), free(db_e), free(db_n);
    free(ds), free(e_ds);
}

void ref_grads_free(ref_grads *g)
{
    free(g->dq), free(g->dk), free(g->dv), free(g->dbias);
    free(g->dq_tol), free(g->dk_tol), free(g->dv_tol), free(g->dbias_tol);
}

double ref_loss(const ref_problem *p, const double *dout)
{
    ref_result r;
    ref_attention(p, &r);
    double loss = 0.0;
    size_t n = (size_t)(p->B * p->Hq * p->Lq * p->Dv);
    for (size_t i = 0; i < n; i++)
        loss += r.out[i] * dout[i];
    ref_free(&r);
    return loss;
}

void check_grad(const char *what, const float *got, attn_strides s, int64_t n0, int64_t n1,
                int64_t n2, int64_t width, const double *ref, const double *tol,
                const char *label, grad_stats *st)
{
    for (int64_t a = 0; a < n0; a++)
        for (int64_t b = 0; b < n1; b++)
            for (int64_t c = 0; c < n2; c++)
                for (int64_t w = 0; w < width; w++) {
                    size_t at = (size_t)(((a * n1 + b) * n2 + c) * width + w);
                    double x = got[a * s.batch + b * s.head + c * s.seq + w];
                    double err = fabs(x - ref[at]);
                    st->compared++;
                    if (!(err <= tol[at])) { /* NaN fails too */
                        if (!st->failures++)
                            snprintf(st->first_failure, sizeof st->first_failure,
                                     "%s: %s[%lld,%lld,%lld,%lld] got %.9g expected %.9g "
                                     "(|diff| %.3g > tol %.3g)",
                                     label, what, (long long)a, (long long)b, (long long)c,
                                     (long long)w, x, ref[at], err, tol[at]);
                    } else if (tol[at] > 0.0 && err / tol[at] > st->worst_ratio) {
                        st->worst_ratio = err / tol[at];
                    }
                }
}
