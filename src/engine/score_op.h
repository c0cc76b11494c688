/*
 * Score operations: how the engine turns a task's query rows and a key tile into scores. The
 * scaled dot product (Q·Kᵀ through the BLAS) is the one there is today; additive (tanh) scores
 * will be another, and the engine's online pass does not change for it.
 */
#ifndef ATTN_ENGINE_SCORE_OP_H
#define ATTN_ENGINE_SCORE_OP_H

#include "engine/task.h"
#include "engine/tiles.h"

struct attn_score_op {
    const char *name;
    /* scores[(r - r0) * ld + c] = score of task row r against key j0 + c, for r0 <= r < r1 and
     * c < n, the keys read through p->kv. */
    void (*tile)(const attn_problem *p, const attn_task *t, int64_t r0, int64_t r1, int64_t j0,
                 int64_t n, float *scores, int ld);
};

/* scale · q · k: cblas_sgemm (cblas_sgemv for a single query row). */
extern const attn_score_op attn_score_dot;

/* t->w->scores[r][0..n) = the scores of the task's rows against keys j0 .. j0+n-1. */
static inline void attn_task_scores(const attn_problem *p, const attn_task *t, int64_t j0,
                                    int64_t n)
{
    p->score->tile(p, t, 0, t->rows, j0, n, t->w->scores, ATTN_TILE_K);
}

#endif
