/* Portable narrowing of floats to 16-bit key/value elements: the reference for the vector ones. */
#include "kernels/half.h"
#include "kernels/softmax.h"

static void narrow_scalar(uint16_t *dst, const float *src, size_t n, uint32_t dtype)
{
    if (dtype == ATTN_WIDEN_BF16) {
        for (size_t k = 0; k < n; k++)
            dst[k] = attn_float_to_bf16(src[k]);
    } else {
        for (size_t k = 0; k < n; k++)
            dst[k] = attn_float_to_half(src[k]);
    }
}

void attn_narrow_fill_scalar(attn_kernels *t)
{
    t->narrow = narrow_scalar;
}
