/* Scalar reference kernels of additive attention (kernels/additive.h). */
#include <math.h>

#include "kernels/softmax.h"
#include "kernels/tanh_poly.h"

static inline float tanh_one(float x)
{
    float ax = fabsf(x);
    if (ax < TANH_SMALL) {
        float x2 = x * x;
        float p = TANH_P4;
        p = p * x2 + TANH_P3;
        p = p * x2 + TANH_P2;
        p = p * x2 + TANH_P1;
        p = p * x2 + TANH_P0;
        return copysignf(x + (x * x2) * p, x); /* keeps the sign of -0 */
    }
    float z = ax > TANH_CLAMP ? TANH_CLAMP : ax; /* NaN compares false and stays */
    float e = expf(z + z);
    return copysignf(1.0f - 2.0f / (e + 1.0f), x);
}

static void tanh_scalar(float *y, const float *x, size_t n)
{
    for (size_t k = 0; k < n; k++)
        y[k] = tanh_one(x[k]);
}

static void row_scalar(float *s, const float *qp, const float *kt, int64_t ldk, int64_t n,
                       int64_t A, const float *w, float *t, int64_t ldt)
{
    for (int64_t j = 0; j < n; j++)
        s[j] = 0.0f;
    for (int64_t a = 0; a < A; a++) {
        const float *k = kt + a * ldk;
        float q = qp[a], wa = w[a];
        for (int64_t j = 0; j < n; j++) {
            float th = tanh_one(q + k[j]);
            if (t)
                t[a * ldt + j] = th;
            s[j] += wa * th;
        }
    }
}

static void grad_q_scalar(float *dqp, float *dw, const float *ds, const float *t, int64_t ldt,
                          int64_t n, int64_t A, const float *w)
{
    for (int64_t a = 0; a < A; a++) {
        const float *ta = t + a * ldt;
        float g = 0.0f, h = 0.0f;
        for (int64_t j = 0; j < n; j++) {
            g += ds[j] * ((1.0f - ta[j]) * (1.0f + ta[j]));
            h += ds[j] * ta[j];
        }
        dqp[a] += w[a] * g;
        dw[a] += h;
    }
}

static void grad_k_scalar(float *dkt, int64_t lddk, const float *ds, const float *t, int64_t ldt,
                          int64_t n, int64_t A, const float *w)
{
    for (int64_t a = 0; a < A; a++) {
        const float *ta = t + a * ldt;
        float *d = dkt + a * lddk, wa = w[a];
        for (int64_t j = 0; j < n; j++)
            d[j] += wa * (ds[j] * ((1.0f - ta[j]) * (1.0f + ta[j])));
    }
}

void attn_additive_fill_scalar(attn_kernels *t)
{
    t->tanh = tanh_scalar;
    t->additive_row = row_scalar;
    t->additive_grad_q = grad_q_scalar;
    t->additive_grad_k = grad_k_scalar;
}
