/*
 * A task of the engine: up to ATTN_TILE_Q query rows that share a batch and a kv head, computed
 * by one thread in its own scratch. Its row map (w->row_h, w->row_i) says which (query head,
 * position) each row is: either consecutive positions of one query head (a block, read in place
 * through Q's strides) or every (query head, position) of a kv head's group (gathered into
 * scratch so they form one matrix and K/V are read once for the group).
 */
#ifndef ATTN_ENGINE_TASK_H
#define ATTN_ENGINE_TASK_H

#include "engine/problem.h"
#include "engine/scratch.h"

typedef struct attn_task {
    attn_scratch *w;         /* the running thread's scratch; w->row_h / row_i describe rows */
    int64_t b, g, rows;      /* batch, kv head, number of rows */
    int64_t klo, khi;        /* union of the rows' visible key intervals */
    const float *q;          /* row 0 of the query matrix */
    int ldq;                 /* its leading dimension */
    int thin;                /* few rows: the thin (streaming) kernels instead of the BLAS */
} attn_task;

/* Rows i0 .. i0+rows-1 of query head h (rows = min(attn_block_rows, q_len - i0)). */
void attn_task_block(const attn_problem *p, attn_scratch *w, attn_task *t, int64_t b, int64_t h,
                     int64_t i0);

/* Rows first .. first+rows-1 (rows <= ATTN_GROUP_ROWS) of kv head g's group, numbered
 * (head - g*group) * q_len + i. */
void attn_task_group(const attn_problem *p, attn_scratch *w, attn_task *t, int64_t b, int64_t g,
                     int64_t first, int64_t rows);

/* Only the row map of such a group task, into w->row_h / w->row_i. */
void attn_task_group_rows(const attn_problem *p, attn_scratch *w, int64_t g, int64_t first,
                          int64_t rows);

/* Row r's visible part of the key block [j0, j0 + n), relative to j0: [*a, *z). */
void attn_task_row_span(const attn_task *t, int64_t r, int64_t j0, int64_t n, int64_t *a,
                        int64_t *z);

/* Bias and mask row of task row r (NULL when absent), at key 0. */
const float *attn_task_bias_row(const attn_problem *p, const attn_task *t, int64_t r);
const uint8_t *attn_task_mask_row(const attn_problem *p, const attn_task *t, int64_t r);

/* The coordinates of task row r's keys from j: for kernels keyed on positions. */
static inline attn_row_coord attn_task_coord(const attn_task *t, int64_t r, int64_t j)
{
    attn_row_coord c = {t->b, t->w->row_h[r], t->w->row_i[r], j};
    return c;
}

#endif
