/* Key/value tiles read in place from strided tensors. */
#include "engine/kv_source.h"

static attn_kv_tile strided_tile(const attn_kv_source *src, int which, int64_t b, int64_t g,
                                 int64_t j0, int64_t n, float *convert)
{
    (void)n, (void)convert;
    int64_t offset = attn_tensor_offset(&src->strides[which], b, g, j0);
    attn_kv_tile t = {src->base[which] + offset * (int64_t)attn_dtype_size(src->dtype[which]),
                      src->ld[which], src->dtype[which]};
    return t;
}

void attn_kv_source_strided(attn_kv_source *src, const attn_tensor *k, const attn_tensor *v)
{
    const attn_tensor *t[2] = {k, v};
    src->tile = strided_tile;
    for (int i = 0; i < 2; i++) {
        src->base[i] = t[i]->data;
        src->strides[i] = t[i]->strides;
        src->ld[i] = t[i]->ld;
        src->dtype[i] = t[i]->dtype;
    }
}
