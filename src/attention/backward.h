/* The backward operation (attn_backward) as a client of the engine. */
#ifndef ATTN_ATTENTION_BACKWARD_H
#define ATTN_ATTENTION_BACKWARD_H

#include "engine/problem.h"

/* Keys per task of the key-major pass: its dK and dV accumulators hold this many rows. */
#define ATTN_BWD_KEYS 128

/* One validated attn_backward call: the engine's problem plus the backward's own tensors. */
typedef struct attn_backward_call {
    attn_problem p;
    attn_kv_source kv;
    attn_dropout dropout;
    const float *out, *dout, *lse;
    attn_strides out_strides, dout_strides, lse_strides;
    int lddo;                        /* leading dimension of dO rows */
    float *dq, *dk, *dv, *dbias;
    attn_strides dq_strides, dk_strides, dv_strides, dbias_strides;
    int reduce_batch, reduce_head, reduce_rows; /* dbias summed over these axes */
} attn_backward_call;

/* Checks every argument against the context and fills *call (backward_args.c). */
attn_status attn_backward_check(attn_ctx *ctx, const attn_backward_args *args,
                                attn_backward_call *call);

/* Per-thread scratch of the backward, beyond the engine's. */
typedef struct attn_backward_scratch {
    /* rows = attn_block_rows(ctx) */
    float *dp;    /* rows x ATTN_TILE_K: dO Vᵀ for a tile */
    float *dk;    /* ATTN_BWD_KEYS x qk_dim accumulator */
    float *dv;    /* ATTN_BWD_KEYS x v_dim accumulator */
    float *dq;    /* rows x qk_dim accumulator */
    float *delta; /* rows: rowsum(dO ∘ O) */
    float *lse;   /* rows: the rows' lse */
} attn_backward_scratch;

/* Reserves the backward's workspace: one attn_backward_scratch per thread, in
 * ctx->op_state[attn_op_slot(ATTN_OP_BACKWARD)]. */
void attn_backward_reserve(attn_arena *a, attn_ctx *ctx);

#endif
