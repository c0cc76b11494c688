/* Portable widening of 16-bit key/value elements to float: the reference for the vector ones. */
#include <string.h>

#include "kernels/half.h"
#include "kernels/softmax.h"

static void widen_scalar(float *dst, const uint16_t *src, size_t n, uint32_t dtype)
{
    if (dtype == ATTN_WIDEN_BF16) {
        for (size_t k = 0; k < n; k++) {
            uint32_t bits = (uint32_t)src[k] << 16;
            memcpy(&dst[k], &bits, sizeof bits);
        }
    } else {
        for (size_t k = 0; k < n; k++)
            dst[k] = attn_half_to_float(src[k]);
    }
}

void attn_widen_fill_scalar(attn_kernels *t)
{
    t->widen = widen_scalar;
}
