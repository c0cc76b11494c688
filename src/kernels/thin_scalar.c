/* Thin products, portable: the reference for the vector ones (see kernels/softmax.h). */
#include "kernels/half.h"
#include "kernels/softmax.h"

static inline float element(const void *base, int64_t i, uint32_t dtype)
{
    if (dtype == ATTN_WIDEN_F16)
        return attn_half_to_float(((const uint16_t *)base)[i]);
    if (dtype == ATTN_WIDEN_BF16)
        return attn_bf16_to_float(((const uint16_t *)base)[i]);
    return ((const float *)base)[i];
}

static void thin_scores_scalar(float *scores, int64_t ld, const float *q, int64_t ldq,
                               int64_t rows, const void *k, int64_t ldk, uint32_t dtype,
                               int64_t n, int64_t dk, float scale)
{
    for (int64_t c = 0; c < n; c++)
        for (int64_t r = 0; r < rows; r++) {
            float sum = 0.0f;
            for (int64_t d = 0; d < dk; d++)
                sum += q[r * ldq + d] * element(k, c * ldk + d, dtype);
            scores[r * ld + c] = scale * sum;
        }
}

static void thin_values_scalar(float *acc, int64_t ldacc, const float *p, int64_t ldp,
                               int64_t rows, const void *v, int64_t ldv, uint32_t dtype,
                               int64_t n, int64_t dv)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < n; c++) {
            float w = p[r * ldp + c];
            if (w == 0.0f) /* hidden or dropped: skip the row (0 * inf would be NaN) */
                continue;
            for (int64_t e = 0; e < dv; e++)
                acc[r * ldacc + e] += w * element(v, c * ldv + e, dtype);
        }
}

void attn_thin_fill_scalar(attn_kernels *t)
{
    t->thin_scores = thin_scores_scalar;
    t->thin_values = thin_values_scalar;
    t->thin_preferred = 0;
}
