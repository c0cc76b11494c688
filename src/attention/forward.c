/*
 * attn_forward: the forward operation on the engine. Work is cut into tasks of up to
 * attn_block_rows query rows sharing a batch and a kv head; each runs the engine's online pass over
 * its visible keys and divides by the running sum once at the end (deferred normalisation).
 *
 * Two ways to cut the work, both independent of the thread count so that results are bitwise
 * the same for any number of threads:
 *   - blocks (here): one task per (batch, query head, block of attn_block_rows positions);
 *   - split keys (forward_split.c), for few queries and many keys.
 */
#include <math.h>
#include <string.h>

#include "attention/forward.h"
#include "core/guard.h"
#include "attention/weights.h"
#include "engine/tiles.h"

/* Split-key partials: enough per thread that a wave of chunks keeps every thread busy for a
 * while between two synchronisations, within a memory budget. The count does not affect
 * results (see forward_split.c), only how often the threads meet. */
#define SLOTS_PER_THREAD 64
#define SLOTS_BUDGET ((size_t)4 << 20)

void attn_forward_reserve(attn_arena *a, attn_ctx *ctx)
{
    size_t acc_bytes = attn_align_up(sizeof(float) * ATTN_GROUP_ROWS * ctx->desc.v_dim);
    size_t state_bytes = attn_align_up(sizeof(attn_row_state) * ATTN_GROUP_ROWS);
    size_t per_slot = acc_bytes + state_bytes;
    unsigned nslots = SLOTS_PER_THREAD * ctx->threads;
    if ((size_t)nslots * per_slot > SLOTS_BUDGET)
        nslots = (unsigned)(SLOTS_BUDGET / per_slot);
    if (nslots == 0)
        nslots = 1;
    attn_forward_workspace *fw = attn_arena_take(a, sizeof *fw);
    attn_partial *slots = attn_arena_take(a, sizeof *slots * nslots);
    for (unsigned i = 0; i <= nslots; i++) {
        attn_partial part = {attn_arena_take(a, acc_bytes), attn_arena_take(a, state_bytes)};
        if (fw && i < nslots)
            slots[i] = part;
        else if (fw)
            fw->carry = part;
    }
    if (fw) {
        fw->slots = slots;
        fw->nslots = nslots;
    }
    ctx->op_state[attn_op_slot(ATTN_OP_FORWARD)] = fw;
}

void attn_forward_finish_rows(const attn_forward_call *c, int64_t b, const attn_scratch *w,
                              int64_t rows, const attn_row_state *state, const float *acc)
{
    int64_t dv = c->p.ctx->desc.v_dim;
    int nan_rows = c->p.ctx->desc.masked_rows == ATTN_MASKED_ROWS_NAN;
    for (int64_t r = 0; r < rows; r++) {
        const attn_row_state *st = &state[r];
        int64_t h = w->row_h[r], i = w->row_i[r];
        float *out = c->out + attn_tensor_offset(&c->out_strides, b, h, i);
        float *lse = c->lse ? c->lse + attn_tensor_offset(&c->lse_strides, b, h, i) : NULL;
        float *ent = c->entropy ? c->entropy + attn_tensor_offset(&c->entropy_strides, b, h, i)
                                : NULL;
        const float *row_acc = acc + r * dv;
        if (st->l == 0.0f) { /* fully masked row */
            float fill = nan_rows ? NAN : 0.0f;
            for (int64_t d = 0; d < dv; d++)
                out[d] = fill;
            if (lse)
                *lse = -INFINITY;
            if (ent)
                *ent = fill;
            continue;
        }
        for (int64_t d = 0; d < dv; d++)
            out[d] = row_acc[d] / st->l;
        float log_l = logf(st->l);
        if (lse)
            *lse = st->m + log_l;
        if (ent) {
            float e = log_l - st->u / st->l;
            /* rounding must not make it negative; written so that NaN stays NaN */
            *ent = e < 0.0f ? 0.0f : e;
        }
    }
}

typedef struct block_job {
    attn_forward_call *c;
    int64_t block_rows; /* query rows per block task */
    int64_t blocks;     /* query blocks per (batch, head) */
} block_job;

static void run_block(const block_job *job, attn_scratch *w, int64_t b, int64_t h, int64_t qb)
{
    const attn_forward_call *c = job->c;
    attn_task t;
    attn_task_block(&c->p, w, &t, b, h, qb * job->block_rows);
    attn_online_range(&c->p, &t, 0, c->p.kv_len, w->state, w->acc);
    attn_forward_finish_rows(c, b, w, t.rows, w->state, w->acc);
    if (c->weights_mode != ATTN_WEIGHTS_NONE)
        attn_write_weights(c, &t);
}

/* One (batch, head, block) task; the block order is reversed so that under a causal mask the
 * most expensive blocks are handed out first. */
static void block_item(void *arg, int64_t item, attn_scratch *w)
{
    const block_job *job = arg;
    int64_t H = job->c->p.ctx->desc.q_heads, nb = job->blocks;
    int64_t b = item / (H * nb), rest = item % (H * nb);
    run_block(job, w, b, rest / nb, nb - 1 - rest % nb);
}

/* Head-mean weights sum the heads of a block into one buffer: one task per (batch, block)
 * visits its heads in order, so that sum has a fixed order too. */
static void block_all_heads_item(void *arg, int64_t item, attn_scratch *w)
{
    const block_job *job = arg;
    int64_t nb = job->blocks, b = item / nb, qb = nb - 1 - item % nb;
    for (int64_t h = 0; h < job->c->p.ctx->desc.q_heads; h++)
        run_block(job, w, b, h, qb);
}

attn_status attn_forward(attn_ctx *ctx, const attn_args *args)
{
    if (!ctx)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "ctx is NULL");
    /* refuse an inherited (forked) or busy context; released on every return below */
    attn_status st = attn_call_enter(ctx);
    if (st != ATTN_OK)
        return st;
    attn_forward_call c;
    st = attn_forward_check(ctx, args, &c);
    if (st == ATTN_OK)
        attn_forward_execute(ctx, &c);
    attn_call_leave(ctx);
    return st;
}

void attn_forward_execute(attn_ctx *ctx, attn_forward_call *c)
{
    const attn_problem *p = &c->p;
    int64_t rows = attn_block_rows(ctx);
    block_job job = {c, rows, attn_tiles(p->q_len, rows)};
    attn_engine_section s;
    attn_engine_begin(&s, ctx);
    if (p->q_len <= ATTN_SPLIT_MAX_QUERIES && p->kv_len >= ATTN_SPLIT_MIN_KEYS &&
        c->weights_mode == ATTN_WEIGHTS_NONE)
        attn_forward_split(c, &s);
    else if (c->weights_mode == ATTN_WEIGHTS_HEAD_MEAN)
        attn_engine_run(&s, block_all_heads_item, &job, p->batch * job.blocks);
    else
        attn_engine_run(&s, block_item, &job, p->batch * ctx->desc.q_heads * job.blocks);
    attn_engine_end(&s);
    attn_clear_error(ctx);
}
