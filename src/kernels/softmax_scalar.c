/* Portable kernels: the fallback on every CPU and the baseline the vector variants match. */
#include <math.h>

#include "kernels/softmax.h"

static float online_row_scalar(float *s, size_t n, const float *bias, const uint8_t *mask,
                               attn_row_state *st, int entropy)
{
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
    float m_new = st->m > block_max ? st->m : block_max;
    /* While nothing is visible, subtract 0: hidden keys still give exp(-inf) = 0 and a NaN
     * score still reaches the sum, so a row of NaNs is never mistaken for a masked row. */
    float shift = m_new == -INFINITY ? 0.0f : m_new;
    float alpha = expf(st->m - shift);
    float sum = 0.0f, usum = 0.0f;
    for (size_t j = 0; j < n; j++) {
        float d = s[j] - shift;
        float p = expf(d);
        s[j] = p;
        sum += p;
        if (entropy && p != 0.0f)
            usum += p * d;
    }
    if (entropy)
        st->u = (st->l != 0.0f ? alpha * (st->u + (st->m - m_new) * st->l) : 0.0f) + usum;
    st->l = alpha * st->l + sum;
    st->m = m_new;
    return alpha;
}

static void probs_row_scalar(const float *s, size_t n, const float *bias, const uint8_t *mask,
                             float m, float l, float *dst, int accumulate)
{
    for (size_t j = 0; j < n; j++) {
        float x = s[j];
        if (bias)
            x += bias[j];
        float p = (mask && !mask[j]) ? 0.0f : expf(x - m) / l;
        dst[j] = accumulate ? dst[j] + p : p;
    }
}

static const attn_kernels scalar_table = {"scalar", online_row_scalar, probs_row_scalar};

const attn_kernels *attn_kernels_scalar(void)
{
    return &scalar_table;
}
