/* Naive double-precision attention and its float32 error bounds. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "reference.h"
#include "util.h"

ref_problem ref_problem_from(const attn_desc *d, const attn_args *a)
{
    ref_problem p;
    p.B = a->batch;
    p.Hq = d->q_heads;
    p.Hkv = d->kv_heads;
    p.Lq = a->q_len;
    p.Lk = a->kv_len;
    p.D = d->qk_dim;
    p.Dv = d->v_dim;
    p.scale = d->scale != 0.0f ? (double)d->scale : 1.0 / sqrt((double)d->qk_dim);
    p.causal = (d->flags & ATTN_CAUSAL) != 0;
    p.q_offset = a->q_offset == ATTN_Q_OFFSET_DEFAULT ? (int64_t)a->kv_len - a->q_len : a->q_offset;
    p.window_left = d->window_left;
    p.window_right = d->window_right;
    p.kv_lens = a->kv_lens;
    p.q = a->q, p.k = a->k, p.v = a->v, p.bias = a->bias, p.mask = a->mask;
    p.qs = a->q_strides, p.ks = a->k_strides, p.vs = a->v_strides;
    p.bias_s = a->bias_strides, p.mask_s = a->mask_strides;
    return p;
}

#define U 0x1p-24 /* unit roundoff of float32 */

/* Exponent of the lowest set bit of a finite, non-zero double: x = N 2^e with N odd. */
static int low_bit(double x)
{
    int ex;
    double m = frexp(fabs(x), &ex); /* |x| = m 2^ex, m in [0.5, 1): m 2^53 is an integer */
    uint64_t n = (uint64_t)ldexp(m, 53);
    int tz = 0;
    while (!(n & 1u))
        n >>= 1, tz++;
    return ex - 53 + tz;
}

/*
 * Whether float32 computes scale * (q . k) exactly, whatever the summation order, blocking or
 * use of FMA, and whether the scale is applied to the sum or to either operand first. Verified
 * from the values themselves (see docs/testing.md, "Exact scores"):
 *   - the scale is a power of two, 2^c;
 *   - every non-zero product q_d k_d is a multiple of 2^e (e = the lowest set bit among them)
 *     and sum_d |q_d k_d| <= 2^24 2^e: then every partial sum of any subset, in any order, is a
 *     multiple of 2^e of magnitude at most 2^24 2^e, which float32 represents exactly;
 *   - nothing leaves float32's range: e and e + c at least -149 (the subnormal spacing), each
 *     q_d 2^c and k_d 2^c exact, and 2^24 2^e max(1, 2^c) below FLT_MAX.
 * Products of two floats are exact in double (48 significant bits), and so is the scaled
 * integer sum below, so the check itself does not round.
 */
static int dot_is_exact(const float *q, const float *k, int64_t D, double scale)
{
    if (!(scale != 0.0) || !isfinite(scale))
        return 0;
    int c;
    if (frexp(fabs(scale), &c) != 0.5)
        return 0;
    c -= 1; /* |scale| = 2^c */
    int e = INT32_MAX;
    for (int64_t d = 0; d < D; d++) {
        if (!isfinite(q[d]) || !isfinite(k[d]))
            return 0;
        if (q[d] == 0.0f || k[d] == 0.0f)
            continue;
        if (low_bit(q[d]) + c < -149 || low_bit(k[d]) + c < -149 ||
            fabs(ldexp((double)q[d], c)) > FLT_MAX || fabs(ldexp((double)k[d], c)) > FLT_MAX)
            return 0;
        int lb = low_bit((double)q[d] * k[d]);
        e = lb < e ? lb : e;
    }
    if (e == INT32_MAX)
        return 1; /* every product is zero */
    if (e < -149 || e + c < -149 || ldexp(1.0, 24 + e + (c > 0 ? c : 0)) > FLT_MAX)
        return 0;
    uint64_t sum = 0;
    for (int64_t d = 0; d < D; d++) {
        double t = fabs((double)q[d] * k[d]);
        if (t == 0.0)
            continue;
        double n = ldexp(t, -e); /* an integer: t is a multiple of 2^e */
        if (n > 0x1p24)
            return 0;
        sum += (uint64_t)n;
        if (sum > (1u << 24))
            return 0;
    }
    return 1;
}

void ref_attention(const ref_problem *p, ref_result *r)
{
    size_t rows = (size_t)(p->B * p->Hq * p->Lq);
    r->out = xcalloc(rows * p->Dv, sizeof(double));
    r->out_tol = xcalloc(rows * p->Dv, sizeof(double));
    r->lse = xcalloc(rows, sizeof(double));
    r->lse_tol = xcalloc(rows, sizeof(double));
    r->entropy = xcalloc(rows, sizeof(double));
    r->entropy_tol = xcalloc(rows, sizeof(double));
    r->weights = xcalloc(rows * p->Lk, sizeof(double));
    r->weights_tol = xcalloc(rows * p->Lk, sizeof(double));
    r->masked = xcalloc(rows, 1);
    double *s = xcalloc((size_t)p->Lk, sizeof(double));
    double *mag = xcalloc((size_t)p->Lk, sizeof(double));
    unsigned char *vis = xcalloc((size_t)p->Lk, 1);
    unsigned char *exact = xcalloc((size_t)p->Lk, 1);
    r->exact_keys = r->visible_keys = 0;
    r->max_abs_lse = 0.0;
    int64_t group = p->Hq / p->Hkv;

    for (int64_t b = 0; b < p->B; b++)
        for (int64_t h = 0; h < p->Hq; h++)
            for (int64_t i = 0; i < p->Lq; i++) {
                int64_t g = h / group;
                size_t row = (size_t)((b * p->Hq + h) * p->Lq + i);
                const float *q = p->q + b * p->qs.batch + h * p->qs.head + i * p->qs.seq;
                int64_t pos = i + p->q_offset;
                double m = -INFINITY;
                int64_t n_vis = 0;
                for (int64_t j = 0; j < p->Lk; j++) {
                    int ok = 1;
                    if (p->causal && j > pos) ok = 0;
                    if (p->window_left >= 0 && j < pos - p->window_left) ok = 0;
                    if (p->window_right >= 0 && j > pos + p->window_right) ok = 0;
                    if (p->kv_lens && j >= p->kv_lens[b]) ok = 0;
                    if (p->mask && !p->mask[b * p->mask_s.batch + h * p->mask_s.head +
                                            i * p->mask_s.seq + j])
                        ok = 0;
                    const float *k = p->k + b * p->ks.batch + g * p->ks.head + j * p->ks.seq;
                    double dot = 0.0, absdot = 0.0;
                    for (int64_t d = 0; d < p->D; d++) {
                        dot += (double)q[d] * k[d];
                        absdot += fabs((double)q[d] * k[d]);
                    }
                    double x = dot * p->scale, bias = 0.0;
                    if (p->bias)
                        bias = p->bias[b * p->bias_s.batch + h * p->bias_s.head +
                                       i * p->bias_s.seq + j];
                    x += bias;
                    if (x == -INFINITY) ok = 0;
                    vis[j] = (unsigned char)ok;
                    exact[j] = (unsigned char)(ok && dot_is_exact(q, k, p->D, p->scale));
                    r->visible_keys += ok;
                    r->exact_keys += exact[j];
                    s[j] = x;
                    /* magnitude that float rounding of this score is relative to */
                    mag[j] = absdot * fabs(p->scale) + fabs(bias) + fabs(x);
                    if (ok) {
                        n_vis++;
                        m = x > m ? x : m;
                    }
                }
                double *out = r->out + row * p->Dv, *out_tol = r->out_tol + row * p->Dv;
                double *w = r->weights + row * p->Lk, *w_tol = r->weights_tol + row * p->Lk;
                if (n_vis == 0) {
                    r->masked[row] = 1;
                    r->lse[row] = -INFINITY;
                    continue;
                }
                double l = 0.0;
                for (int64_t j = 0; j < p->Lk; j++)
                    if (vis[j])
                        l += exp(s[j] - m);
                double ent = 0.0, lse = m + log(l);
                for (int64_t j = 0; j < p->Lk; j++)
                    if (vis[j]) {
                        w[j] = exp(s[j] - m) / l;
                        if (w[j] > 0.0)
                            ent -= w[j] * log(w[j]);
                    }
                /*
                 * Error model of a float32 implementation (first order, asserted with a safety
                 * factor of 2). Score j carries an absolute error of at most
                 *   delta_j = (D + 3) u mag_j + 2 u (|x_j| + |m|)
                 * (a D-term dot product in any summation order, the scaling, the bias addition,
                 * and the subtraction of the running maximum). Under score errors e_i, |e_i| <=
                 * delta_i, probability j moves by dp_j = p_j sum_{i != j} p_i (e_j - e_i), so its
                 * relative error is at most
                 *   rel_j = (1 - p_j) delta_j + sum_{i != j} p_i delta_i + (n + 8) u,
                 * the last term for exp, the division and the sums over n visible keys. A key
                 * that dominates its row (large logits) is therefore barely perturbed by the
                 * errors of its own score: the common shift cancels in the normalisation.
                 * Derived quantities follow: out_d = sum_j p_j v_jd, lse = m + ln l (error
                 * sum_j p_j delta_j plus the rounding of ln and of the final sum), entropy
                 * -sum_j p_j ln p_j (error sum_j |dp_j| |ln p_j| plus rounding).
                 */
                /*
                 * Where the dot product is exact in float32 (dot_is_exact), the D-term dot
                 * product contributes nothing: the score's error is the rounding of the
                 * scaling and of the bias addition (u mag_j covers both), and the subtraction
                 * of the running maximum, done once within the block and once more in every
                 * rescaling of the block's sum by exp(m_old - m_new), moves its argument by at
                 * most 2 u |x_j - m| in total (the shifts only grow towards m):
                 *   delta_j = u mag_j + 2 u |x_j - m|.
                 */
                double dbar = 0.0, *rel = mag;
                for (int64_t j = 0; j < p->Lk; j++)
                    if (vis[j]) {
                        if (exact[j])
                            mag[j] = U * mag[j] + 2.0 * U * fabs(s[j] - m);
                        else
                            mag[j] = (double)(p->D + 3) * U * mag[j] +
                                     2.0 * U * (fabs(s[j]) + fabs(m));
                        dbar += w[j] * mag[j];
                    }
                double ent_err = 0.0;
                for (int64_t j = 0; j < p->Lk; j++) {
                    if (!vis[j]) {
                        w_tol[j] = 1e-37;
                        continue;
                    }
                    double dj = mag[j];
                    rel[j] = (1.0 - w[j]) * dj + (dbar - w[j] * dj) + (double)(n_vis + 8) * U;
                    w_tol[j] = 2.0 * rel[j] * w[j] + 1e-37;
                    if (w[j] > 0.0)
                        ent_err += rel[j] * w[j] * fabs(log(w[j]));
                }
                for (int64_t d = 0; d < p->Dv; d++) {
                    double acc = 0.0, err = 0.0;
                    for (int64_t j = 0; j < p->Lk; j++)
                        if (vis[j]) {
                            double v = p->v[b * p->vs.batch + g * p->vs.head + j * p->vs.seq + d];
                            acc += w[j] * v;
                            err += rel[j] * w[j] * fabs(v);
                        }
                    out[d] = acc;
                    out_tol[d] = 2.0 * err + 1e-30;
                }
                r->lse[row] = lse;
                if (fabs(lse) > r->max_abs_lse)
                    r->max_abs_lse = fabs(lse);
                r->lse_tol[row] = 2.0 * (dbar + (double)(n_vis + 8) * U + 2.0 * U * fabs(lse));
                r->entropy[row] = ent;
                r->entropy_tol[row] =
                    2.0 * (ent_err + (double)(n_vis + 8) * U * (ent + log((double)n_vis) + 1.0)) +
                    1e-30;
            }
    free(s);
    free(mag);
    free(vis);
    free(exact);
}

void ref_free(ref_result *r)
{
    free(r->out);
    free(r->out_tol);
    free(r->lse);
    free(r->lse_tol);
    free(r->entropy);
    free(r->entropy_tol);
    free(r->weights);
    free(r->weights_tol);
    free(r->masked);
}
