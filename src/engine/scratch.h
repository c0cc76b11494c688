/*
 * Per-thread scratch of the engine, carved from the context's arena at creation; its size
 * depends on the head dims and the tile sizes only. Thread t of a call uses ctx->scratch[t].
 */
#ifndef ATTN_ENGINE_SCRATCH_H
#define ATTN_ENGINE_SCRATCH_H

#include <stdint.h>

#include "core/context.h"

typedef struct attn_scratch {
    float *scores;          /* ATTN_TILE_Q x ATTN_TILE_K score / probability tile */
    float *acc;             /* ATTN_TILE_Q x v_dim unnormalised output accumulator */
    float *qrows;           /* ATTN_TILE_Q x qk_dim gathered query rows (group tasks) */
    attn_row_state *state;  /* ATTN_TILE_Q running (max, sum, entropy) triples */
    int64_t *lo;            /* ATTN_TILE_Q first visible key per row (structured masks) */
    int64_t *hi;            /* ATTN_TILE_Q one past the last visible key per row */
    int64_t *row_h;         /* ATTN_TILE_Q query head of each row */
    int64_t *row_i;         /* ATTN_TILE_Q query position of each row */
    float *convert;         /* room for a key/value tile a source converts or gathers; NULL
                               until a context is created for such a source */
} attn_scratch;

/* Reserves ctx->threads scratches (an attn_ctx_reserve_fn part). */
void attn_scratch_reserve(attn_arena *a, attn_ctx *ctx);

#endif
