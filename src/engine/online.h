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

/* state[r], acc[r * v_dim ..] = the online softmax of the task's rows over keys [from, to). */
void attn_online_range(const attn_problem *p, const attn_task *t, int64_t from, int64_t to,
                       attn_row_state *state, float *acc);

#endif
