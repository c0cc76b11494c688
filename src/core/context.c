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
    desc->threads = 0;
}

static size_t align_up(size_t n)
{
    return (n + ATTN_WORKSPACE_ALIGN - 1) & ~(size_t)(ATTN_WORKSPACE_ALIGN - 1);
}

/* Threads a descriptor asks for: its own count, or every processor this process may use. */
static unsigned resolve_threads(const attn_desc *d)
{
    unsigned n = d->threads ? d->threads : attn_available_cpus();
    return n > ATTN_MAX_THREADS ? ATTN_MAX_THREADS : n;
}

/* Split-key partials: enough per thread that a wave of chunks keeps every thread busy for a
 * while between two synchronisations, within a memory budget. The count does not affect
 * results (see forward.c), only how often the threads meet. */
#define SLOTS_PER_THREAD 64
#define SLOTS_BUDGET ((size_t)4 << 20)

/* Byte sizes of the pieces of one block: the context struct, per-thread scratch, the pool's
 * worker records, the split-key partials. Bounded by ATTN_MAX_HEAD_DIM and ATTN_MAX_THREADS,
 * so nothing here can overflow size_t. */
typedef struct ws_layout {
    unsigned threads, nslots;
    size_t scratch_array, workers, slot_array, per_thread, per_slot, total;
    /* offsets inside one thread's scratch */
    size_t scores, acc, qrows, state, lo, hi, row_h, row_i;
} ws_layout;

static ws_layout layout_of(const attn_desc *d)
{
    ws_layout w;
    size_t tq = ATTN_TILE_Q;
    w.threads = resolve_threads(d);
    w.scores = 0;
    w.acc = w.scores + align_up(sizeof(float) * tq * ATTN_TILE_K);
    w.qrows = w.acc + align_up(sizeof(float) * tq * d->v_dim);
    w.state = w.qrows + align_up(sizeof(float) * tq * d->qk_dim);
    w.lo = w.state + align_up(sizeof(attn_row_state) * tq);
    w.hi = w.lo + align_up(sizeof(int64_t) * tq);
    w.row_h = w.hi + align_up(sizeof(int64_t) * tq);
    w.row_i = w.row_h + align_up(sizeof(int64_t) * tq);
    w.per_thread = w.row_i + align_up(sizeof(int64_t) * tq);
    w.per_slot = align_up(sizeof(float) * tq * d->v_dim) + align_up(sizeof(attn_row_state) * tq);
    w.nslots = SLOTS_PER_THREAD * w.threads;
    if ((size_t)w.nslots * w.per_slot > SLOTS_BUDGET)
        w.nslots = (unsigned)(SLOTS_BUDGET / w.per_slot);
    if (w.nslots == 0)
        w.nslots = 1;
    w.scratch_array = align_up(sizeof(attn_scratch) * w.threads);
    w.workers = align_up(sizeof(attn_pool_worker) * w.threads);
    w.slot_array = align_up(sizeof(attn_partial) * w.nslots);
    w.total = align_up(sizeof(struct attn_ctx)) + w.scratch_array + w.workers + w.slot_array +
              w.per_thread * w.threads + w.per_slot * (w.nslots + 1);
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
    const uint32_t known = ATTN_CAUSAL | ATTN_BLAS_THREADS_UNTOUCHED;
    if (d->flags & ~known)
        return attn_fail(NULL, ATTN_ERR_BAD_OPTION, "desc->flags = 0x%x has unknown bits 0x%x",
                         d->flags, d->flags & ~known);
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
    if (d->threads > ATTN_MAX_THREADS)
        return attn_fail(NULL, ATTN_ERR_LIMIT, "desc->threads = %u exceeds ATTN_MAX_THREADS = %u",
                         d->threads, ATTN_MAX_THREADS);
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

/* Builds the context inside `block` (already sized and aligned by the caller) and starts its
 * workers. Returns NULL if a worker could not be started. */
static attn_ctx *init_in_block(const attn_desc *desc, void *block, int owns_memory)
{
    ws_layout w = layout_of(desc);
    char *p = block;
    memset(block, 0, align_up(sizeof(struct attn_ctx)));
    attn_ctx *ctx = block;
    p += align_up(sizeof(struct attn_ctx));
    ctx->desc = *desc;
    ctx->desc.allocator = NULL;
    if (desc->allocator)
        ctx->allocator = *desc->allocator;
    ctx->owns_memory = owns_memory;
    ctx->block = block;
    ctx->scale = desc->scale != 0.0f ? desc->scale : 1.0f / sqrtf((float)desc->qk_dim);
    ctx->group = desc->q_heads / desc->kv_heads;
    ctx->threads = w.threads;
    ctx->kernels = attn_dispatch_kernels();
    ctx->scratch = (attn_scratch *)(void *)p;
    p += w.scratch_array;
    attn_pool_worker *workers = (attn_pool_worker *)(void *)p;
    p += w.workers;
    ctx->slots = (attn_partial *)(void *)p;
    ctx->nslots = w.nslots;
    p += w.slot_array;
    for (unsigned t = 0; t < w.threads; t++, p += w.per_thread) {
        attn_scratch *s = &ctx->scratch[t];
        s->scores = (float *)(void *)(p + w.scores);
        s->acc = (float *)(void *)(p + w.acc);
        s->qrows = (float *)(void *)(p + w.qrows);
        s->state = (attn_row_state *)(void *)(p + w.state);
        s->lo = (int64_t *)(void *)(p + w.lo);
        s->hi = (int64_t *)(void *)(p + w.hi);
        s->row_h = (int64_t *)(void *)(p + w.row_h);
        s->row_i = (int64_t *)(void *)(p + w.row_i);
    }
    size_t acc_bytes = align_up(sizeof(float) * ATTN_TILE_Q * desc->v_dim);
    for (unsigned i = 0; i <= w.nslots; i++, p += w.per_slot) {
        attn_partial *slot = i < w.nslots ? &ctx->slots[i] : &ctx->carry;
        slot->acc = (float *)(void *)p;
        slot->state = (attn_row_state *)(void *)(p + acc_bytes);
    }
    if (attn_pool_start(&ctx->pool, w.threads, workers) != 0)
        return NULL;
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
    attn_ctx *ctx = init_in_block(desc, block, 1);
    if (!ctx) {
        if (desc->allocator)
            desc->allocator->free(desc->allocator->user, block);
        else
            free(block);
        return attn_fail(NULL, ATTN_ERR_THREADS, "starting %u worker threads failed",
                         resolve_threads(desc) - 1);
    }
    *out_ctx = ctx;
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
    attn_ctx *ctx = init_in_block(desc, workspace, 0);
    if (!ctx)
        return attn_fail(NULL, ATTN_ERR_THREADS, "starting %u worker threads failed",
                         resolve_threads(desc) - 1);
    *out_ctx = ctx;
    return ATTN_OK;
}

void attn_destroy(attn_ctx *ctx)
{
    if (!ctx)
        return;
    attn_pool_stop(&ctx->pool);
    if (!ctx->owns_memory)
        return;
    void *block = ctx->block;
    if (ctx->allocator.free)
        ctx->allocator.free(ctx->allocator.user, block);
    else
        free(block);
}
