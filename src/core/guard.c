/* See guard.h. */
#include <stdatomic.h>

#include "core/context.h"
#include "core/guard.h"

attn_status attn_call_enter(attn_ctx *ctx)
{
    if (attn_pool_inherited(&ctx->pool))
        return attn_fail(ctx, ATTN_ERR_FORKED,
                         "ctx was created before this process was forked; its worker threads do "
                         "not exist here: create a new context in this process");
    int idle = 0;
    if (!atomic_compare_exchange_strong_explicit(&ctx->pool.in_use, &idle, 1,
                                                 memory_order_acquire, memory_order_relaxed))
        return attn_fail(NULL, ATTN_ERR_BUSY,
                         "ctx %p is already running a call on another thread; a context runs one "
                         "call at a time", (void *)ctx);
    return ATTN_OK;
}

void attn_call_leave(attn_ctx *ctx)
{
    atomic_store_explicit(&ctx->pool.in_use, 0, memory_order_release);
}
