/* One task of the forward pass: up to ATTN_TILE_Q query rows of one (batch, head). */
#ifndef ATTN_ATTENTION_TASK_H
#define ATTN_ATTENTION_TASK_H

#include "attention/instance.h"

typedef struct attn_task {
    int64_t b, h, i0, rows;  /* batch, query head, first query row, number of rows */
    int64_t klo, khi;        /* union of the rows' visible key intervals */
    const float *q;          /* first query row of the block */
    const float *k, *v;      /* key / value row 0 of the block's kv head */
    const float *bias;       /* bias row of the first query row, or NULL */
    const uint8_t *mask;     /* mask row of the first query row, or NULL */
} attn_task;

/* Sets up the task and the rows' visible intervals in ctx->scratch.lo / hi. */
void attn_task_init(const attn_ctx *ctx, const attn_instance *inst, attn_task *t, int64_t b,
                    int64_t h, int64_t i0);

/* ctx->scratch.scores[r][0..n) = scale * q_r . k_{j0 + c} for the task's rows. */
void attn_task_scores(const attn_ctx *ctx, const attn_instance *inst, const attn_task *t,
                      int64_t j0, int64_t n);

/* Row r's visible part of the key block [j0, j0 + n), relative to j0: [*a, *z). */
void attn_task_row_span(const attn_ctx *ctx, int64_t r, int64_t j0, int64_t n, int64_t *a,
                        int64_t *z);

#endif
