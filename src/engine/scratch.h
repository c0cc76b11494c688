/*
 * Per-thread scratch of the engine, carved from the context's arena at creation; its size
 * depends on the head dims and the tile sizes only. Thread t of a call uses ctx->scratch[t].
 */
#ifndef ATTN_ENGINE_SCRATCH_H
#define ATTN_ENGINE_SCRATCH_H

#include <stdint.h>

#include "core/context.h"

typedef struct attn_scratch {
    /* Row counts below are attn_block_rows(ctx), at most ATTN_TILE_Q. */
    float *scores;          /* rows x ATTN_TILE_K score / probability tile */
    float *acc;             /* rows x v_dim unnormalised output accumulator */
    float *qrows;           /* ATTN_GROUP_ROWS x qk_dim gathered query rows (group tasks) */
    attn_row_state *state;  /* rows running (max, sum, entropy) triples */
    int64_t *lo;            /* rows first visible key per row (structured masks) */
    int64_t *hi;            /* rows one past the last visible key per row */
    int64_t *row_h;         /* rows query head of each row */
    int64_t *row_i;         /* rows query position of each row */
    float *convert;         /* room for a key tile and a value tile a source converts or gathers
                               (2 x attn_convert_tile_floats); NULL when the context's K and V
                               are float */
} attn_scratch;

/* Query rows of a block task for this context: ATTN_TILE_Q, or ATTN_SUB_ROWS when the head dims
 * are so wide (above 256) that 256 rows of accumulator would leave the L2 and bloat the
 * workspace (the workspace at ATTN_MAX_HEAD_DIM stays that of 64 rows). */
int64_t attn_block_rows(const attn_ctx *ctx);

/* Floats of one converted key or value tile: ATTN_TILE_K rows of the wider head dim. */
int64_t attn_convert_tile_floats(const attn_ctx *ctx);

/* Reserves ctx->threads scratches (an attn_ctx_reserve_fn part). */
void attn_scratch_reserve(attn_arena *a, attn_ctx *ctx);

#endif
