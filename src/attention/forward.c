/*
 * The forward driver. Work is split into tasks of ATTN_TILE_Q query rows of one (batch, head).
 * Each task streams its visible key range ATTN_TILE_K keys at a time:
 *   S = scale * Q_blk K_blkᵀ            (cblas_sgemm)
 *   per row: bias, mask, running max, exp, running sum, rescale of the accumulator (kernel)
 *   Acc += P V_blk                      (cblas_sgemm)
 * and divides by the running sum once at the end (deferred normalisation). Keys outside the
 * union of the rows' structured intervals are never touched, so causal, window and kv_lens
 * tiles are skipped without a BLAS call.
 */
#include <math.h>
#include <string.h>

#include "attention/instance.h"
#include "attention/tiles.h"
#include "attention/task.h"
#include "attention/weights.h"
#include "core/blas.h"

void attn_task_init(const attn_ctx *ctx, const attn_instance *inst, attn_task *t, int64_t b,
                    int64_t h, int64_t i0)
{
    const attn_args *a = inst->args;
    int64_t g = h / ctx->group;
    int64_t keys = a->kv_lens ? (int64_t)a->kv_lens[b] : (int64_t)a->kv_len;
    int64_t rest = a->q_len - i0;
    t->b = b;
    t->h = h;
    t->i0 = i0;
    t->rows = rest < ATTN_TILE_Q ? rest : ATTN_TILE_Q;
    t->q = a->q + b * a->q_strides.batch + h * a->q_strides.head + i0 * a->q_strides.seq;
    t->k = a->k + b * a->k_strides.batch + g * a->k_strides.head;
    t->v = a->v + b * a->v_strides.batch + g * a->v_strides.head;
    t->bias = a->bias ? a->bias + b * a->bias_strides.batch + h * a->bias_strides.head +
                            i0 * a->bias_strides.seq
                      : NULL;
    t->mask = a->mask ? a->mask + b * a->mask_strides.batch + h * a->mask_strides.head +
                            i0 * a->mask_strides.seq
                      : NULL;
    attn_visible_rows(&inst->vis, keys, i0, t->rows, ctx->scratch.lo, ctx->scratch.hi, &t->klo,
                      &t->khi);
}

void attn_task_scores(const attn_ctx *ctx, const attn_instance *inst, const attn_task *t,
                      int64_t j0, int64_t n)
{
    const attn_args *a = inst->args;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)t->rows, (int)n,
                (int)ctx->desc.qk_dim, ctx->scale, t->q, inst->ldq, t->k + j0 * a->k_strides.seq,
                inst->ldk, 0.0f, ctx->scratch.scores, ATTN_TILE_K);
}

/* Row r's visible part of the key block [j0, j0 + n), relative to j0: [*a, *z). */
void attn_task_row_span(const attn_ctx *ctx, int64_t r, int64_t j0, int64_t n, int64_t *a,
                        int64_t *z)
{
    int64_t lo = ctx->scratch.lo[r] - j0, hi = ctx->scratch.hi[r] - j0;
    *a = lo < 0 ? 0 : lo > n ? n : lo;
    *z = hi < 0 ? 0 : hi > n ? n : hi;
}

static void online_block(attn_ctx *ctx, const attn_instance *inst, const attn_task *t,
                         int64_t j0, int64_t n, int entropy)
{
    const attn_args *a = inst->args;
    const attn_scratch *w = &ctx->scratch;
    int64_t dv = ctx->desc.v_dim;
    attn_task_scores(ctx, inst, t, j0, n);
    for (int64_t r = 0; r < t->rows; r++) {
        float *s = w->scores + r * ATTN_TILE_K;
        int64_t lo, hi;
        attn_task_row_span(ctx, r, j0, n, &lo, &hi);
        if (lo >= hi) {
            memset(s, 0, (size_t)n * sizeof *s);
            continue;
        }
        memset(s, 0, (size_t)lo * sizeof *s);
        memset(s + hi, 0, (size_t)(n - hi) * sizeof *s);
        const float *bias = t->bias ? t->bias + r * a->bias_strides.seq + j0 + lo : NULL;
        const uint8_t *mask = t->mask ? t->mask + r * a->mask_strides.seq + j0 + lo : NULL;
        float alpha = ctx->kernels->online_row(s + lo, (size_t)(hi - lo), bias, mask,
                                               &w->state[r], entropy);
        if (alpha != 1.0f) {
            float *acc = w->acc + r * dv;
            for (int64_t d = 0; d < dv; d++)
                acc[d] *= alpha;
        }
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)t->rows, (int)dv, (int)n, 1.0f,
                w->scores, ATTN_TILE_K, t->v + j0 * a->v_strides.seq, inst->ldv, 1.0f, w->acc,
                (int)dv);
}

/* Normalises the accumulator into out and writes the optional per-row outputs. */
static void finish_rows(const attn_ctx *ctx, const attn_instance *inst, const attn_task *t)
{
    const attn_args *a = inst->args;
    const attn_scratch *w = &ctx->scratch;
    int64_t dv = ctx->desc.v_dim;
    int nan_rows = ctx->desc.masked_rows == ATTN_MASKED_ROWS_NAN;
    for (int64_t r = 0; r < t->rows; r++) {
        const attn_row_state *st = &w->state[r];
        float *out = a->out + t->b * a->out_strides.batch + t->h * a->out_strides.head +
                     (t->i0 + r) * a->out_strides.seq;
        const float *acc = w->acc + r * dv;
        int64_t row = (t->b * ctx->desc.q_heads + t->h) * a->q_len + t->i0 + r;
        if (st->l == 0.0f) { /* fully masked row */
            float fill = nan_rows ? NAN : 0.0f;
            for (int64_t d = 0; d < dv; d++)
                out[d] = fill;
            if (a->lse)
                a->lse[row] = -INFINITY;
            if (a->entropy)
                a->entropy[row] = fill;
            continue;
        }
        for (int64_t d = 0; d < dv; d++)
            out[d] = acc[d] / st->l;
        float log_l = logf(st->l);
        if (a->lse)
            a->lse[row] = st->m + log_l;
        if (a->entropy) {
            float h = log_l - st->u / st->l;
            a->entropy[row] = h > 0.0f ? h : 0.0f; /* rounding must not make it negative */
        }
    }
}

static void run_task(attn_ctx *ctx, const attn_instance *inst, int64_t b, int64_t h, int64_t i0)
{
    const attn_args *a = inst->args;
    attn_task t;
    attn_task_init(ctx, inst, &t, b, h, i0);
    for (int64_t r = 0; r < t.rows; r++)
        ctx->scratch.state[r] = (attn_row_state){-INFINITY, 0.0f, 0.0f};
    memset(ctx->scratch.acc, 0, (size_t)t.rows * ctx->desc.v_dim * sizeof(float));
    int entropy = a->entropy != NULL;
    for (int64_t j0 = t.klo; j0 < t.khi; j0 += ATTN_TILE_K) {
        int64_t n = t.khi - j0 < ATTN_TILE_K ? t.khi - j0 : ATTN_TILE_K;
        online_block(ctx, inst, &t, j0, n, entropy);
    }
    finish_rows(ctx, inst, &t);
    if (a->weights_mode != ATTN_WEIGHTS_NONE)
        attn_write_weights(ctx, inst, &t);
}

attn_status attn_forward(attn_ctx *ctx, const attn_args *args)
{
    if (!ctx)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "ctx is NULL");
    attn_instance inst;
    attn_status st = attn_validate_args(ctx, args, &inst);
    if (st != ATTN_OK)
        return st;
    int64_t H = ctx->desc.q_heads;
    /* The head mean sums heads into one buffer: visit the heads of a query block in order so the
     * sum has one fixed order. Otherwise stay on one head so its K and V stay in cache. */
    int head_inner = args->weights_mode == ATTN_WEIGHTS_HEAD_MEAN;
    for (int64_t b = 0; b < args->batch; b++) {
        if (head_inner) {
            for (int64_t i0 = 0; i0 < args->q_len; i0 += ATTN_TILE_Q)
                for (int64_t h = 0; h < H; h++)
                    run_task(ctx, &inst, b, h, i0);
        } else {
            for (int64_t h = 0; h < H; h++)
                for (int64_t i0 = 0; i0 < args->q_len; i0 += ATTN_TILE_Q)
                    run_task(ctx, &inst, b, h, i0);
        }
    }
    attn_clear_error(ctx);
    return ATTN_OK;
}
