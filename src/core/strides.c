/* The stride helpers for the common layouts. */
#include <attn/attn.h>

#include "core/checked.h"

/* a * b * c, or INT64_MAX when it does not fit: attn_forward then reports ATTN_ERR_OVERFLOW
 * for the view instead of the helper overflowing silently. */
static int64_t product(int64_t a, int64_t b, int64_t c)
{
    int64_t ab, abc;
    if (!attn_mul_i64(a, b, &ab) || !attn_mul_i64(ab, c, &abc))
        return INT64_MAX;
    return abc;
}

attn_strides attn_strides_bhsd(uint32_t heads, uint32_t seq, uint32_t dim)
{
    attn_strides s = {product(heads, seq, dim), product(1, seq, dim), (int64_t)dim};
    return s;
}

attn_strides attn_strides_bshd(uint32_t heads, uint32_t seq, uint32_t dim)
{
    attn_strides s = {product(seq, heads, dim), (int64_t)dim, product(1, heads, dim)};
    return s;
}
