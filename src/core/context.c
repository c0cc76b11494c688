/* Context creation and destruction over one block carved by an arena (see context.h). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/context.h"
#include "dispatch/dispatch.h"

/* Threads a descriptor asks for: its own count, or every processor this process may use. */
static unsigned resolve_threads(const attn_desc *d)
{
    unsigned n = d->threads ? d->threads : attn_available_cpus();
    return n > ATTN_MAX_THREADS ? ATTN_MAX_THREADS : n;
}

/* Everything but memory: the values derived from the descriptor. */
static void prepare(attn_ctx *ctx, const attn_desc *d)
{
    ctx->desc = *d;
    ctx->desc.allocator = NULL;
    ctx->scale = d->scale != 0.0f ? d->scale : 1.0f / sqrtf((float)d->qk_dim);
    ctx->group = d->q_heads / d->kv_heads;
    ctx->threads = resolve_threads(d);
    ctx->kernels = attn_dispatch_kernels();
}

/* The common layout: the context struct, the pool's worker records, then the reserve
 * function's parts. Returns the context (NULL while measuring) and the pool records. */
static attn_ctx *lay_out(attn_arena *a, const attn_desc *d, attn_ctx_reserve_fn reserve,
                         attn_pool_worker **workers)
{
    attn_ctx measuring;
    attn_ctx *ctx = attn_arena_take(a, sizeof *ctx);
    attn_ctx *c = ctx ? ctx : &measuring;
    memset(c, 0, sizeof *c);
    prepare(c, d);
    *workers = attn_arena_take(a, sizeof(attn_pool_worker) * c->threads);
    reserve(a, c);
    return ctx;
}

size_t attn_ctx_size(const attn_desc *resolved, attn_ctx_reserve_fn reserve)
{
    attn_arena a = {NULL, 0};
    attn_pool_worker *workers;
    lay_out(&a, resolved, reserve, &workers);
    return a.used;
}

static void *default_alloc(size_t size, size_t alignment)
{
    /* aligned_alloc wants a size that is a multiple of the alignment */
    return aligned_alloc(alignment, (size + alignment - 1) & ~(alignment - 1));
}

attn_status attn_ctx_create(const attn_desc *desc, int is_static, void *workspace,
                            size_t workspace_size, attn_ctx **out_ctx, attn_ctx_reserve_fn reserve)
{
    if (!out_ctx)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "out_ctx is NULL");
    *out_ctx = NULL;
    if (!desc)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "desc is NULL");
    /* Pointers before everything else (docs/errors.md): a static workspace's too. */
    if (is_static && !workspace)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "workspace is NULL");
    attn_desc d;
    attn_status st = attn_desc_resolve(desc, &d);
    if (st != ATTN_OK)
        return st;
    size_t total = attn_ctx_size(&d, reserve);
    void *block = workspace;
    if (is_static) {
        if ((uintptr_t)workspace % ATTN_WORKSPACE_ALIGN != 0)
            return attn_fail(NULL, ATTN_ERR_WORKSPACE_ALIGN,
                             "workspace %p is not aligned to ATTN_WORKSPACE_ALIGN = %u bytes",
                             workspace, ATTN_WORKSPACE_ALIGN);
        if (workspace_size < total)
            return attn_fail(NULL, ATTN_ERR_WORKSPACE_SIZE,
                             "workspace_size = %zu is below attn_workspace_size(desc) = %zu",
                             workspace_size, total);
    } else {
        block = d.allocator ? d.allocator->alloc(d.allocator->user, total, ATTN_WORKSPACE_ALIGN)
                            : default_alloc(total, ATTN_WORKSPACE_ALIGN);
        if (!block)
            return attn_fail(NULL, ATTN_ERR_NO_MEMORY, "allocating the %zu-byte workspace failed",
                             total);
    }
    attn_arena a = {block, 0};
    attn_pool_worker *workers;
    attn_ctx *ctx = lay_out(&a, &d, reserve, &workers);
    ctx->block = block;
    ctx->owns_memory = !is_static;
    if (!is_static && d.allocator)
        ctx->allocator = *d.allocator;
    if (attn_pool_start(&ctx->pool, ctx->threads, workers) != 0) {
        unsigned threads = ctx->threads;
        if (!is_static) {
            if (d.allocator)
                d.allocator->free(d.allocator->user, block);
            else
                free(block);
        }
        return attn_fail(NULL, ATTN_ERR_THREADS, "starting %u worker threads failed", threads - 1);
    }
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
