/*
 * The public context functions: a context's workspace is the engine's per-thread scratch plus
 * the part of each operation its descriptor asks for (desc.ops). A new operation adds its
 * reserve function to the table below; the context itself (core/) stays unaware of it.
 */
#include "attention/backward.h"
#include "attention/forward.h"
#include "engine/scratch.h"

typedef struct op_entry {
    uint32_t op;
    attn_ctx_reserve_fn reserve;
} op_entry;

static const op_entry ops[] = {
    {ATTN_OP_FORWARD, attn_forward_reserve},
    {ATTN_OP_BACKWARD, attn_backward_reserve},
};

static void reserve_all(attn_arena *a, attn_ctx *ctx)
{
    attn_scratch_reserve(a, ctx);
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        if (ctx->desc.ops & ops[i].op)
            ops[i].reserve(a, ctx);
}

size_t attn_workspace_size(const attn_desc *desc)
{
    attn_desc d;
    if (attn_desc_resolve(desc, &d) != ATTN_OK)
        return 0;
    return attn_ctx_size(&d, reserve_all);
}

attn_status attn_create(const attn_desc *desc, attn_ctx **out_ctx)
{
    return attn_ctx_create(desc, 0, NULL, 0, out_ctx, reserve_all);
}

attn_status attn_create_static(const attn_desc *desc, void *workspace, size_t workspace_size,
                               attn_ctx **out_ctx)
{
    return attn_ctx_create(desc, 1, workspace, workspace_size, out_ctx, reserve_all);
}
