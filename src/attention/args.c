/* Call arguments: defaults and the stride helpers for the common layouts. */
#include <string.h>

#include <attn/attn.h>

void attn_args_init(attn_args *args)
{
    if (!args)
        return;
    memset(args, 0, sizeof *args);
    args->struct_size = sizeof *args;
    args->q_offset = ATTN_Q_OFFSET_DEFAULT;
    args->weights_mode = ATTN_WEIGHTS_NONE;
}

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
