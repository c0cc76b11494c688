/* The checks and the problem both operations share (see instance.h). */
#include "attention/instance.h"
#include "engine/score_op.h"

attn_status attn_check_q_offset(attn_ctx *ctx, int64_t q_offset)
{
    if (q_offset != ATTN_Q_OFFSET_DEFAULT &&
        (q_offset < -ATTN_MAX_DISTANCE || q_offset > ATTN_MAX_DISTANCE))
        return attn_fail(ctx, ATTN_ERR_OFFSET, "args->q_offset = %lld is outside [%lld, %lld]",
                         (long long)q_offset, (long long)-ATTN_MAX_DISTANCE,
                         (long long)ATTN_MAX_DISTANCE);
    return ATTN_OK;
}

attn_status attn_check_kv_lens(attn_ctx *ctx, const int32_t *kv_lens, int64_t batch,
                               int64_t kv_len)
{
    if (kv_lens)
        for (int64_t b = 0; b < batch; b++)
            if (kv_lens[b] < 0 || kv_lens[b] > kv_len)
                return attn_fail(ctx, ATTN_ERR_KV_LENS,
                                 "args->kv_lens[%lld] = %d is outside [0, kv_len = %lld]",
                                 (long long)b, (int)kv_lens[b], (long long)kv_len);
    return ATTN_OK;
}

void attn_problem_fill(attn_problem *p, attn_ctx *ctx, const attn_instance *in,
                       attn_dropout *dropout)
{
    const attn_desc *d = &ctx->desc;
    p->ctx = ctx;
    p->batch = in->batch;
    p->q_len = in->q_len;
    p->kv_len = in->kv_len;
    p->vis.causal = (d->flags & ATTN_CAUSAL) != 0;
    p->vis.window_left = d->window_left;
    p->vis.window_right = d->window_right;
    p->vis.q_offset = in->q_offset == ATTN_Q_OFFSET_DEFAULT ? in->kv_len - in->q_len : in->q_offset;
    p->kv_lens = in->kv_lens;
    p->q = in->q->data;
    p->q_strides = in->q->strides;
    p->ldq = in->q->ld;
    p->mask = in->mask;
    p->mask_strides = in->mask_strides;
    p->bias = in->bias;
    p->bias_strides = in->bias_strides;
    p->score = &attn_score_dot;
    p->dropout = NULL;
    if (d->dropout > 0.0f) {
        *dropout = attn_dropout_make(d->dropout, in->dropout_seed, in->dropout_offset, d->q_heads);
        p->dropout = dropout;
    }
}
