/* Key/value tiles from strided tensors: read in place (float) or widened (16-bit). */
#include "engine/kv_source.h"
#include "engine/scratch.h"
#include "engine/tiles.h"

static attn_kv_tile strided_tile(const attn_kv_source *src, int which, int64_t b, int64_t g,
                                 int64_t j0, int64_t n, float *convert, int raw)
{
    int64_t offset = attn_tensor_offset(&src->strides[which], b, g, j0);
    const char *rows = src->base[which] + offset * (int64_t)attn_dtype_size(src->dtype[which]);
    if (raw || src->dtype[which] == ATTN_DTYPE_F32) {
        attn_kv_tile t = {rows, src->ld[which], src->dtype[which]};
        return t;
    }
    /* 16-bit rows, widened into this thread's convert buffer; the products then read floats */
    return attn_kv_widen_rows(src, rows, src->strides[which].seq, src->dtype[which], n,
                              src->width[which], convert + which * src->convert_stride);
}

attn_kv_tile attn_kv_widen_rows(const attn_kv_source *src, const void *rows, int64_t ld,
                                uint32_t dtype, int64_t n, int64_t width, float *dst)
{
    uint32_t kind = dtype == ATTN_DTYPE_F16 ? ATTN_WIDEN_F16 : ATTN_WIDEN_BF16;
    const uint16_t *h = rows;
    if (ld == width) /* consecutive rows: one run */
        src->kernels->widen(dst, h, (size_t)(n * width), kind);
    else
        for (int64_t j = 0; j < n; j++)
            src->kernels->widen(dst + j * width, h + j * ld, (size_t)width, kind);
    attn_kv_tile t = {dst, (int)width, ATTN_DTYPE_F32};
    return t;
}

void attn_kv_source_strided(attn_kv_source *src, const attn_ctx *ctx, const attn_tensor *k,
                            const attn_tensor *v)
{
    const attn_tensor *t[2] = {k, v};
    src->tile = strided_tile;
    src->kernels = ctx->kernels;
    src->convert_stride = attn_convert_tile_floats(ctx);
    src->block = 0;
    src->keys = NULL;
    for (int i = 0; i < 2; i++) {
        src->base[i] = t[i]->data;
        src->strides[i] = t[i]->strides;
        src->ld[i] = t[i]->ld;
        src->dtype[i] = t[i]->dtype;
        src->width[i] = t[i]->shape[3];
    }
}
