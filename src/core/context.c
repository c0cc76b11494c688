/* Descriptor defaults and validation, workspace sizing, context creation and destruction. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attention/tiles.h"
#include "core/context.h"
#include "dispatch/dispatch.h"

void attn_desc_init(attn_desc *desc)
{
    if (!desc)
        return;
    memset(desc, 0, sizeof *desc);
    desc->struct_size = sizeof *desc;
    desc->q_heads = 1;
    desc->kv_heads = 1;
    desc->qk_dim = 64;
    desc->v_dim = 64;
    desc->scale = 0.0f;
    desc->flags = 0;
    desc->window_left = -1;
    desc->window_right = -1;
    desc->masked_rows = ATTN_MASKED_ROWS_ZERO;
    desc->allocator = NULL;
}

static size_t align_up(size_t n)
{
    return (n + ATTN_WORKSPACE_ALIGN - 1) & ~(size_t)(ATTN_WORKSPACE_ALIGN - 1);
}

/* Byte offsets of the context struct and its scratch arrays inside one block. */
typedef struct ws_layout {
    size_t scores, acc, state, lo, hi, total;
} ws_layout;

/* Sizes are bounded by ATTN_MAX_HEAD_DIM, so nothing here can overflow size_t. */
static ws_layout layout_of(const attn_desc *d)
{
    ws_layout w;
    w.scores = align_up(sizeof(struct attn_ctx));
    w.acc = w.scores + align_up(sizeof(float) * ATTN_TILE_Q * ATTN_TILE_K);
    w.state = w.acc + align_up(sizeof(float) * ATTN_TILE_Q * (size_t)d->v_dim);
    w.lo = w.state + align_up(sizeof(attn_row_state) * ATTN_TILE_Q);
    w.hi = w.lo + align_up(sizeof(int64_t) * ATTN_TILE_Q);
    w.total = w.hi + align_up(sizeof(int64_t) * ATTN_TILE_Q);
    return w;
}

static attn_status validate_desc(const attn_desc *d)
{
    if (!d)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "desc is NULL");
    if (d->struct_size != sizeof(attn_desc))
        return attn_fail(NULL, ATTN_ERR_STRUCT_SIZE,
                         "desc->struct_size = %zu, expected %zu: initialise with attn_desc_init",
                         d->struct_size, sizeof(attn_desc));
    if (d->q_heads == 0)
        return attn_fail(NULL, ATTN_ERR_ZERO_SIZE, "desc->q_heads is 0");
    if (d->kv_heads == 0)
        return attn_fail(NULL, ATTN_ERR_ZERO_SIZE, "desc->kv_heads is 0");
    if (d->qk_dim == 0)
        return attn_fail(NULL, ATTN_ERR_ZERO_SIZE, "desc->qk_dim is 0");
    if (d->v_dim == 0)
        return attn_fail(NULL, ATTN_ERR_ZERO_SIZE, "desc->v_dim is 0");
    if (d->q_heads % d->kv_heads != 0)
        return attn_fail(NULL, ATTN_ERR_HEADS, "desc->kv_heads = %u does not divide q_heads = %u",
                         d->kv_heads, d->q_heads);
    if (d->qk_dim > ATTN_MAX_HEAD_DIM)
        return attn_fail(NULL, ATTN_ERR_LIMIT, "desc->qk_dim = %u exceeds ATTN_MAX_HEAD_DIM = %u",
                         d->qk_dim, ATTN_MAX_HEAD_DIM);
    if (d->v_dim > ATTN_MAX_HEAD_DIM)
        return attn_fail(NULL, ATTN_ERR_LIMIT, "desc->v_dim = %u exceeds ATTN_MAX_HEAD_DIM = %u",
                         d->v_dim, ATTN_MAX_HEAD_DIM);
    if (!isfinite(d->scale))
        return attn_fail(NULL, ATTN_ERR_SCALE, "desc->scale = %g is not finite", (double)d->scale);
    if (d->flags & ~ATTN_CAUSAL)
        return attn_fail(NULL, ATTN_ERR_BAD_OPTION, "desc->flags = 0x%x has unknown bits 0x%x",
                         d->flags, d->flags & ~ATTN_CAUSAL);
    if (d->window_left < -1 || d->window_left > ATTN_MAX_DISTANCE)
        return attn_fail(NULL, ATTN_ERR_WINDOW,
                         "desc->window_left = %lld is outside [-1, %lld]",
                         (long long)d->window_left, (long long)ATTN_MAX_DISTANCE);
    if (d->window_right < -1 || d->window_right > ATTN_MAX_DISTANCE)
        return attn_fail(NULL, ATTN_ERR_WINDOW,
                         "desc->window_right = %lld is outside [-1, %lld]",
                         (long long)d->window_right, (long long)ATTN_MAX_DISTANCE);
    if (d->masked_rows != ATTN_MASKED_ROWS_ZERO && d->masked_rows != ATTN_MASKED_ROWS_NAN)
        return attn_fail(NULL, ATTN_ERR_BAD_OPTION, "desc->masked_rows = %d is not an attn_masked_rows",
                         (int)d->masked_rows);
    if (d->allocator && (!d->allocator->alloc || !d->allocator->free))
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "desc->allocator has a NULL %s function",
                         d->allocator->alloc ? "free" : "alloc");
    return ATTN_OK;
}

size_t attn_workspace_size(const attn_desc *desc)
{
    if (validate_desc(desc) != ATTN_OK)
        return 0;
    return layout_of(desc).total;
}

/* Builds the context inside `block` (already sized and aligned by the caller). */
static attn_ctx *init_in_block(const attn_desc *desc, void *block, int owns_memory)
{
    ws_layout w = layout_of(desc);
    char *base = block;
    memset(block, 0, w.scores);
    attn_ctx *ctx = block;
    ctx->desc = *desc;
    ctx->desc.allocator = NULL;
    if (desc->allocator)
        ctx->allocator = *desc->allocator;
    ctx->owns_memory = owns_memory;
    ctx->block = block;
    ctx->scale = desc->scale != 0.0f ? desc->scale : 1.0f / sqrtf((float)desc->qk_dim);
    ctx->group = desc->q_heads / desc->kv_heads;
    ctx->kernels = attn_dispatch_kernels();
    ctx->scratch.scores = (float *)(void *)(base + w.scores);
    ctx->scratch.acc = (float *)(void *)(base + w.acc);
    ctx->scratch.state = (attn_row_state *)(void *)(base + w.state);
    ctx->scratch.lo = (int64_t *)(void *)(base + w.lo);
    ctx->scratch.hi = (int64_t *)(void *)(base + w.hi);
    return ctx;
}

static void *default_alloc(size_t size, size_t alignment)
{
    /* aligned_alloc wants a size that is a multiple of the alignment */
    return aligned_alloc(alignment, (size + alignment - 1) & ~(alignment - 1));
}

attn_status attn_create(const attn_desc *desc, attn_ctx **out_ctx)
{
    if (!out_ctx)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "out_ctx is NULL");
    *out_ctx = NULL;
    attn_status st = validate_desc(desc);
    if (st != ATTN_OK)
        return st;
    size_t total = layout_of(desc).total;
    void *block = desc->allocator
                      ? desc->allocator->alloc(desc->allocator->user, total, ATTN_WORKSPACE_ALIGN)
                      : default_alloc(total, ATTN_WORKSPACE_ALIGN);
    if (!block)
        return attn_fail(NULL, ATTN_ERR_NO_MEMORY, "allocating the %zu-byte workspace failed",
                         total);
    *out_ctx = init_in_block(desc, block, 1);
    return ATTN_OK;
}

attn_status attn_create_static(const attn_desc *desc, void *workspace, size_t workspace_size,
                               attn_ctx **out_ctx)
{
    if (!out_ctx)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "out_ctx is NULL");
    *out_ctx = NULL;
    attn_status st = validate_desc(desc);
    if (st != ATTN_OK)
        return st;
    if (!workspace)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "workspace is NULL");
    if ((uintptr_t)workspace % ATTN_WORKSPACE_ALIGN != 0)
        return attn_fail(NULL, ATTN_ERR_WORKSPACE_ALIGN,
                         "workspace %p is not aligned to ATTN_WORKSPACE_ALIGN = %u bytes",
                         workspace, ATTN_WORKSPACE_ALIGN);
    size_t total = layout_of(desc).total;
    if (workspace_size < total)
        return attn_fail(NULL, ATTN_ERR_WORKSPACE_SIZE,
                         "workspace_size = %zu is below attn_workspace_size(desc) = %zu",
                         workspace_size, total);
    *out_ctx = init_in_block(desc, workspace, 0);
    return ATTN_OK;
}

void attn_destroy(attn_ctx *ctx)
{
    if (!ctx || !ctx->owns_memory)
        return;
    void *block = ctx->block;
    if (ctx->allocator.free)
        ctx->allocator.free(ctx->allocator.user, block);
    else
        free(block);
}
