/*
 * The online pass: a task's rows over a range of keys, one key tile at a time —
 *   S = scores of the tile                 (the score operation)
 *   per row: bias, mask, running max, exp, running sum, rescale of the accumulator (kernel)
 *   Acc += P V_tile                        (cblas_sgemm; cblas_sgemv for a single row)
 * leaving each row's softmax state and unnormalised accumulator. Keys outside the union of the
 * rows' visible intervals are never touched. What to do with the result (normalise and write,
 * keep as a partial, differentiate) is the operation's business.
 */
#ifndef ATTN_ENGINE_ONLINE_H
#define ATTN_ENGINE_ONLINE_H

#include "engine/task.h"
#include "engine/tiles.h"

/*
 * The scores of the task's rows for the key tile [j0, j0 + n) into t->w->scores, exactly as the
 * online pass computes them: either one product for all rows (returns 0), or, for a tile a
 * causal or window bound cuts across, one per sub-block of ATTN_SUB_ROWS rows over the keys
 * [j0 + a[s], j0 + z[s]) that sub-block sees (returns the number of sub-blocks; columns outside
 * a sub-block's range are not written). Anything that recomputes scores after the pass (the
 * weights output) uses this, so it sees the very values the pass's maxima and sums came from.
 */
int attn_tile_scores(const attn_problem *p, const attn_task *t, int64_t j0, int64_t n,
                     int64_t a[ATTN_TILE_Q / ATTN_SUB_ROWS], int64_t z[ATTN_TILE_Q / ATTN_SUB_ROWS]);

/* state[r], acc[r * v_dim ..] = the online softmax of the task's rows over keys [from, to). */
void attn_online_range(const attn_problem *p, const attn_task *t, int64_t from, int64_t to,
                       attn_row_state *state, float *acc);

#endif
