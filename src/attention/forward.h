/*
 * The forward operation (attn_forward) as a client of the engine: its validated call, its own
 * workspace (the split-key partials) and the pieces its files share.
 */
#ifndef ATTN_ATTENTION_FORWARD_H
#define ATTN_ATTENTION_FORWARD_H

#include "engine/online.h"
#include "engine/run.h"

/* One validated attn_forward call: the engine's problem plus the outputs. */
typedef struct attn_forward_call {
    attn_problem p;
    attn_kv_source kv;
    attn_dropout dropout;
    uint32_t weights_mode;
    float *out;
    attn_strides out_strides;
    float *weights;
    attn_strides weights_strides; /* resolved: never the all-zero default */
    float *lse;
    attn_strides lse_strides;
    float *entropy;
    attn_strides entropy_strides;
} attn_forward_call;

/* Checks every argument against the context and fills *call (see forward_args.c). Returns
 * ATTN_OK or the first violation, with the message recorded in ctx. Reads only. */
attn_status attn_forward_check(attn_ctx *ctx, const attn_args *args, attn_forward_call *call);

/* The two halves of attn_forward_check: the struct-size check and load into *a, then the
 * checks of the loaded arguments. cache_kv_len >= 0 says K and V come from a cache with that
 * key extent: args->k, v and kv_lens must then be NULL, queries sit at the end of each
 * sequence when q_offset is the default, and the caller fills call->kv afterwards. */
attn_status attn_forward_load(attn_ctx *ctx, const attn_args *caller, attn_args *a);
attn_status attn_forward_check_loaded(attn_ctx *ctx, const attn_args *a, attn_forward_call *call,
                                      int64_t cache_kv_len);

/* Runs a checked call on the context's threads (the busy guard already held). */
void attn_forward_execute(attn_ctx *ctx, attn_forward_call *call);

/* A partial result of the split-key path: one chunk of keys for one group of query rows. */
typedef struct attn_partial {
    float *acc;             /* ATTN_GROUP_ROWS x v_dim */
    attn_row_state *state;  /* ATTN_GROUP_ROWS */
} attn_partial;

/* The forward operation's workspace, ctx->op_state[attn_op_slot(ATTN_OP_FORWARD)]. */
typedef struct attn_forward_workspace {
    attn_partial *slots;    /* split-key partials of one wave */
    unsigned nslots;
    attn_partial carry;     /* running fold of one row group's partials */
} attn_forward_workspace;

/* Reserves the forward's workspace (an attn_ctx_reserve_fn part). */
void attn_forward_reserve(attn_arena *a, attn_ctx *ctx);

/* Normalises acc into out and writes the optional per-row outputs of the rows w->row_h/row_i
 * of batch b. */
void attn_forward_finish_rows(const attn_forward_call *c, int64_t b, const attn_scratch *w,
                              int64_t rows, const attn_row_state *state, const float *acc);

/* The split-key path (forward_split.c): few queries, many keys, no weights. */
void attn_forward_split(attn_forward_call *c, attn_engine_section *s);

#endif
