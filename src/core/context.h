/*
 * The context: a resolved copy of the descriptor, the chosen kernels, the worker pool and one
 * block of memory carved by an arena. The context knows no operation: the engine's per-thread
 * scratch and each operation's own workspace are laid out by a reserve function the caller of
 * attn_ctx_create passes in (src/attention/workspace.c lists them), and each operation finds its
 * part in op_state[] under the bit of its ATTN_OP_* flag.
 */
#ifndef ATTN_CORE_CONTEXT_H
#define ATTN_CORE_CONTEXT_H

#include <attn/attn.h>

#include "core/arena.h"
#include "kernels/softmax.h"
#include "parallel/pool.h"

#define ATTN_ERROR_CAPACITY 256
#define ATTN_OP_SLOTS 8 /* bits of attn_desc.ops that can name an operation */

struct attn_scratch; /* the engine's per-thread scratch, engine/scratch.h */

struct attn_ctx {
    attn_desc desc;          /* resolved copy: every field known, ops never 0, allocator NULL */
    float scale;             /* resolved scale (desc.scale or 1/sqrt(qk_dim)) */
    uint32_t group;          /* q_heads / kv_heads */
    unsigned threads;        /* resolved thread count (desc.threads or the available CPUs) */
    attn_allocator allocator;
    int owns_memory;         /* 1: attn_destroy frees the block through `allocator` */
    void *block;             /* start of the memory holding this struct and the arena */
    const attn_kernels *kernels;
    struct attn_scratch *scratch;    /* one per thread */
    void *op_state[ATTN_OP_SLOTS];   /* op_state[i]: workspace of the operation of ops bit i */
    attn_pool pool;
    char error[ATTN_ERROR_CAPACITY];
};

/* Index into op_state of an ATTN_OP_* flag (one bit). */
static inline unsigned attn_op_slot(uint32_t op)
{
    unsigned i = 0;
    while (op > 1u)
        op >>= 1, i++;
    return i;
}

/* Lays out everything of the context beyond its struct and the pool's worker records: called
 * twice, once on a measuring arena (base NULL: pointers come back NULL and must not be
 * dereferenced) and once on the real block. ctx->desc, scale, group, threads and kernels are set. */
typedef void (*attn_ctx_reserve_fn)(attn_arena *arena, attn_ctx *ctx);

/* Validates a caller's descriptor (prefix-compatible through struct_size) into *resolved, with
 * defaults for the fields the caller's version lacks. On failure records the message for
 * attn_last_error(NULL). */
attn_status attn_desc_resolve(const attn_desc *desc, attn_desc *resolved);

/* Bytes of the block for a resolved descriptor. */
size_t attn_ctx_size(const attn_desc *resolved, attn_ctx_reserve_fn reserve);

/* attn_create (is_static 0: allocate the block) and attn_create_static (is_static 1: the
 * caller's workspace), with a reserve function for the parts beyond the context itself. */
attn_status attn_ctx_create(const attn_desc *desc, int is_static, void *workspace,
                            size_t workspace_size, attn_ctx **out_ctx, attn_ctx_reserve_fn reserve);

/* Records a failure: formats the message into ctx->error (or the thread's buffer when ctx is
 * NULL) and returns `status`, so callers can write `return attn_fail(...)`. */
attn_status attn_fail(attn_ctx *ctx, attn_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Marks the context's last call as successful (empty message). */
void attn_clear_error(attn_ctx *ctx);

#endif
