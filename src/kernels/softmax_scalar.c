/* Portable kernels: the fallback on every CPU and the baseline the vector variants match. */
#include <math.h>

#include "kernels/softmax.h"

static float online_row_scalar(float *s, size_t n, const float *bias, const uint8_t *mask,
                               attn_row_state *st, int entropy, const attn_row_coord *at)
{
    (void)at;
    float block_max = -INFINITY;
    for (size_t j = 0; j < n; j++) {
        float x = s[j];
        if (bias)
            x += bias[j];
        if (mask && !mask[j])
            x = -INFINITY;
        s[j] = x;
        block_max = x > block_max ? x : block_max;
    }
    float m_new, alpha;
    float shift = attn_state_begin(st, block_max, &m_new, &alpha);
    float sum = 0.0f, usum = 0.0f;
    for (size_t j = 0; j < n; j++) {
        float d = s[j] - shift;
        float p = expf(d);
        s[j] = p;
        sum += p;
        if (entropy && p != 0.0f)
            usum += p * d;
    }
    attn_state_end(st, m_new, alpha, sum, usum, entropy);
    return alpha;
}

static void probs_row_scalar(const float *s, size_t n, const float *bias, const uint8_t *mask,
                             float m, float l, float *dst, int accumulate,
                             const attn_row_coord *at)
{
    (void)at;
    for (size_t j = 0; j < n; j++) {
        float x = s[j];
        if (bias)
            x += bias[j];
        float p = (mask && !mask[j]) ? 0.0f : expf(x - m) / l;
        dst[j] = accumulate ? dst[j] + p : p;
    }
}

void attn_kernels_fill_scalar(attn_kernels *t)
{
    t->name = "scalar";
    t->online_row = online_row_scalar;
    t->probs_row = probs_row_scalar;
}
