/* The context: a validated copy of the descriptor, the chosen kernels, the worker pool and the
 * workspace arena. */
#ifndef ATTN_CORE_CONTEXT_H
#define ATTN_CORE_CONTEXT_H

#include <attn/attn.h>

#include "kernels/softmax.h"
#include "parallel/pool.h"

#define ATTN_ERROR_CAPACITY 256

/* Per-thread scratch carved out of the arena; sizes depend on the descriptor only. */
typedef struct attn_scratch {
    float *scores;          /* ATTN_TILE_Q x ATTN_TILE_K score / probability tile */
    float *acc;             /* ATTN_TILE_Q x v_dim unnormalised output accumulator */
    float *qrows;           /* ATTN_TILE_Q x qk_dim gathered query rows (split-key path) */
    attn_row_state *state;  /* ATTN_TILE_Q running (max, sum, entropy) triples */
    int64_t *lo;            /* ATTN_TILE_Q first visible key per row (structured masks) */
    int64_t *hi;            /* ATTN_TILE_Q one past the last visible key per row */
    int64_t *row_h;         /* ATTN_TILE_Q query head of each row */
    int64_t *row_i;         /* ATTN_TILE_Q query position of each row */
} attn_scratch;

/* A partial result of the split-key path: one chunk of keys for one group of query rows. */
typedef struct attn_partial {
    float *acc;             /* ATTN_TILE_Q x v_dim */
    attn_row_state *state;  /* ATTN_TILE_Q */
} attn_partial;

struct attn_ctx {
    attn_desc desc;          /* copy; desc.allocator is cleared, see `allocator` */
    float scale;             /* resolved scale (desc.scale or 1/sqrt(qk_dim)) */
    uint32_t group;          /* q_heads / kv_heads */
    unsigned threads;        /* resolved thread count (desc.threads or the available CPUs) */
    attn_allocator allocator;
    int owns_memory;         /* 1: attn_destroy frees the block through `allocator` */
    void *block;             /* start of the memory holding this struct and the arena */
    const attn_kernels *kernels;
    attn_scratch *scratch;   /* one per thread */
    attn_partial *slots;     /* split-key partials, `nslots` of them, plus `carry` */
    unsigned nslots;
    attn_partial carry;      /* running fold of one row group's partials */
    attn_pool pool;
    char error[ATTN_ERROR_CAPACITY];
};

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
