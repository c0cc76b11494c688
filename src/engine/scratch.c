/* The engine's per-thread scratch. */
#include "engine/scratch.h"
#include "engine/tiles.h"

int64_t attn_block_rows(const attn_ctx *ctx)
{
    uint32_t widest = ctx->desc.qk_dim > ctx->desc.v_dim ? ctx->desc.qk_dim : ctx->desc.v_dim;
    return widest <= 256 ? ATTN_TILE_Q : ATTN_SUB_ROWS;
}

int64_t attn_convert_tile_floats(const attn_ctx *ctx)
{
    uint32_t widest = ctx->desc.qk_dim > ctx->desc.v_dim ? ctx->desc.qk_dim : ctx->desc.v_dim;
    return (int64_t)ATTN_TILE_K * widest;
}

void attn_scratch_reserve(attn_arena *a, attn_ctx *ctx)
{
    size_t tq = (size_t)attn_block_rows(ctx);
    attn_scratch *all = attn_arena_take(a, sizeof *all * ctx->threads);
    for (unsigned t = 0; t < ctx->threads; t++) {
        attn_scratch s;
        s.scores = attn_arena_take(a, sizeof(float) * tq * ATTN_TILE_K);
        s.acc = attn_arena_take(a, sizeof(float) * tq * ctx->desc.v_dim);
        s.qrows = attn_arena_take(a, sizeof(float) * ATTN_GROUP_ROWS * ctx->desc.qk_dim);
        s.state = attn_arena_take(a, sizeof(attn_row_state) * tq);
        s.lo = attn_arena_take(a, sizeof(int64_t) * tq);
        s.hi = attn_arena_take(a, sizeof(int64_t) * tq);
        s.row_h = attn_arena_take(a, sizeof(int64_t) * tq);
        s.row_i = attn_arena_take(a, sizeof(int64_t) * tq);
        s.convert = ctx->desc.kv_dtype == ATTN_KV_F32
                        ? NULL
                        : attn_arena_take(a, 2 * sizeof(float) * (size_t)attn_convert_tile_floats(ctx));
        if (all)
            all[t] = s;
    }
    ctx->scratch = all;
}
