/* The stride helpers for the common layouts. */
#include <attn/attn.h>

attn_strides attn_strides_bhsd(uint32_t heads, uint32_t seq, uint32_t dim)
{
    attn_strides s = {(int64_t)heads * seq * dim, (int64_t)seq * dim, (int64_t)dim};
    return s;
}

attn_strides attn_strides_bshd(uint32_t heads, uint32_t seq, uint32_t dim)
{
    attn_strides s = {(int64_t)seq * heads * dim, (int64_t)dim, (int64_t)heads * dim};
    return s;
}
