/*
 * attn_backward: FlashAttention-2's backward on the engine's tiles, split so that every gradient
 * element has one owner and no atomics are needed, whatever the thread count:
 *   - pass 1, key-major: a task per (batch, kv head, ATTN_BWD_KEYS keys) walks every query row
 *     of the kv head's group that sees those keys and accumulates dV = Pᵀ dO and
 *     dK = scale dSᵀ Q for its keys (four products per tile: S, Pᵀ dO, dO Vᵀ, dSᵀ Q);
 *   - pass 2, query-major: a task per (batch, query head, block of query rows) walks its visible
 *     keys and accumulates dQ = scale dS K (three products per tile: S, dO Vᵀ, dS K) and writes
 *     dbias = dS. When dbias is summed over broadcast axes, one task owns each dbias row and
 *     visits its contributors in a fixed order.
 * P is recomputed from the saved lse: P = exp(S + bias - lse), so no Lq x Lk state is kept.
 * A row whose lse is -inf saw no key and contributes nothing.
 */
#include <math.h>
#include <string.h>

#include "attention/backward.h"
#include "core/blas.h"
#include "core/guard.h"
#include "engine/run.h"
#include "engine/score_op.h"
#include "engine/tiles.h"

void attn_backward_reserve(attn_arena *a, attn_ctx *ctx)
{
    size_t tq = (size_t)attn_block_rows(ctx), kb = ATTN_BWD_KEYS, dk = ctx->desc.qk_dim, dv = ctx->desc.v_dim;
    attn_backward_scratch *all = attn_arena_take(a, sizeof *all * ctx->threads);
    for (unsigned t = 0; t < ctx->threads; t++) {
        attn_backward_scratch s;
        s.dp = attn_arena_take(a, sizeof(float) * tq * ATTN_TILE_K);
        s.dk = attn_arena_take(a, sizeof(float) * kb * dk);
        s.dv = attn_arena_take(a, sizeof(float) * kb * dv);
        s.dq = attn_arena_take(a, sizeof(float) * tq * dk);
        s.delta = attn_arena_take(a, sizeof(float) * tq);
        s.lse = attn_arena_take(a, sizeof(float) * tq);
        if (all)
            all[t] = s;
    }
    ctx->op_state[attn_op_slot(ATTN_OP_BACKWARD)] = all;
}

typedef struct bwd_job {
    const attn_backward_call *c;
    attn_backward_scratch *scratch; /* per thread, indexed like the engine's */
    attn_scratch *engine_scratch;
    int64_t block_rows, q_blocks, key_blocks;
    int64_t items_b, items_h, items_q; /* pass 2: tasks along batch, head, query blocks */
} bwd_job;

static attn_backward_scratch *own_scratch(const bwd_job *job, const attn_scratch *w)
{
    return &job->scratch[w - job->engine_scratch];
}

/* The block task's per-row lse and delta = rowsum(dO ∘ O). */
static void row_values(const attn_backward_call *c, const attn_task *t, attn_backward_scratch *s)
{
    int64_t dv = c->p.ctx->desc.v_dim;
    for (int64_t r = 0; r < t->rows; r++) {
        int64_t h = t->w->row_h[r], i = t->w->row_i[r];
        const float *o = c->out + attn_tensor_offset(&c->out_strides, t->b, h, i);
        const float *g = c->dout + attn_tensor_offset(&c->dout_strides, t->b, h, i);
        float sum = 0.0f;
        for (int64_t d = 0; d < dv; d++)
            sum += g[d] * o[d];
        s->delta[r] = sum;
        s->lse[r] = c->lse[attn_tensor_offset(&c->lse_strides, t->b, h, i)];
    }
}

/* dO rows of a block task: consecutive positions of one head. */
static const float *dout_rows(const attn_backward_call *c, const attn_task *t)
{
    return c->dout + attn_tensor_offset(&c->dout_strides, t->b, t->w->row_h[0], t->w->row_i[0]);
}

/*
 * For keys [j0, j0 + n) of a block task: P into w->scores (0 where hidden or for a row that saw
 * no key), and, when `dv_acc` is given, dv_acc += Pᵀ dO; then dS = P ∘ (dO Vᵀ - delta) into
 * w->scores. Returns 0 if no row sees any of the keys (nothing computed).
 */
static int tile_ds(const attn_backward_call *c, const attn_task *t, attn_backward_scratch *s,
                   int64_t j0, int64_t n, float *dv_acc, int64_t ld_dv)
{
    const attn_problem *p = &c->p;
    const attn_ctx *ctx = p->ctx;
    int64_t Dv = ctx->desc.v_dim;
    float *sc = t->w->scores;
    attn_task_scores(p, t, j0, n);
    int any = 0;
    for (int64_t r = 0; r < t->rows; r++) {
        float *row = sc + r * ATTN_TILE_K;
        int64_t a, z;
        attn_task_row_span(t, r, j0, n, &a, &z);
        if (a >= z || s->lse[r] == -INFINITY) {
            memset(row, 0, (size_t)n * sizeof *row);
            continue;
        }
        any = 1;
        memset(row, 0, (size_t)a * sizeof *row);
        memset(row + z, 0, (size_t)(n - z) * sizeof *row);
        const float *bias = attn_task_bias_row(p, t, r);
        const uint8_t *mask = attn_task_mask_row(p, t, r);
        attn_row_coord at = attn_task_coord(t, r, j0 + a);
        ctx->kernels->probs_row(row + a, (size_t)(z - a), bias ? bias + j0 + a : NULL,
                                mask ? mask + j0 + a : NULL, s->lse[r], 1.0f, row + a, 0, &at);
    }
    if (!any)
        return 0;
    const float *g = dout_rows(c, t);
    int rows = (int)t->rows;
    if (dv_acc && p->dropout) {
        /* dV takes the dropped weights the forward multiplied V by: P ∘ M / (1 - p), built in
         * the dP buffer (free until dP), P itself kept for dS */
        for (int64_t r = 0; r < t->rows; r++) {
            float *dst = s->dp + r * ATTN_TILE_K;
            memcpy(dst, sc + r * ATTN_TILE_K, (size_t)n * sizeof *dst);
            attn_row_coord at = attn_task_coord(t, r, j0);
            ctx->kernels->dropout_row(dst, (size_t)n, &at, p->dropout);
        }
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)n, (int)Dv, rows, 1.0f, s->dp,
                    ATTN_TILE_K, g, c->lddo, 1.0f, dv_acc, (int)ld_dv);
    } else if (dv_acc) {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)n, (int)Dv, rows, 1.0f, sc,
                    ATTN_TILE_K, g, c->lddo, 1.0f, dv_acc, (int)ld_dv);
    }
    attn_kv_tile v = attn_kv_get(p->kv, ATTN_KV_VALUES, t->b, t->g, j0, n, t->w->convert);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, (int)n, (int)Dv, 1.0f, g, c->lddo,
                v.data, v.ld, 0.0f, s->dp, ATTN_TILE_K);
    for (int64_t r = 0; r < t->rows; r++) {
        float *row = sc + r * ATTN_TILE_K;
        float *dp = s->dp + r * ATTN_TILE_K;
        int64_t a, z;
        attn_task_row_span(t, r, j0, n, &a, &z);
        if (a >= z || s->lse[r] == -INFINITY)
            continue;
        if (p->dropout) { /* dP through the same mask and scale */
            attn_row_coord at = attn_task_coord(t, r, j0 + a);
            ctx->kernels->dropout_row(dp + a, (size_t)(z - a), &at, p->dropout);
        }
        float delta = s->delta[r];
        for (int64_t j = a; j < z; j++)
            row[j] = row[j] * (dp[j] - delta);
    }
    return 1;
}

/* ---- pass 1: dK and dV, key-major ------------------------------------------------------------ */

static void key_item(void *arg, int64_t item, attn_scratch *w)
{
    const bwd_job *job = arg;
    const attn_backward_call *c = job->c;
    const attn_problem *p = &c->p;
    const attn_ctx *ctx = p->ctx;
    attn_backward_scratch *s = own_scratch(job, w);
    int64_t Dk = ctx->desc.qk_dim, Dv = ctx->desc.v_dim, group = ctx->group;
    int64_t kb = item % job->key_blocks, bg = item / job->key_blocks;
    int64_t b = bg / ctx->desc.kv_heads, g = bg % ctx->desc.kv_heads;
    int64_t j0 = kb * ATTN_BWD_KEYS, n = p->kv_len - j0 < ATTN_BWD_KEYS ? p->kv_len - j0 : ATTN_BWD_KEYS;
    memset(s->dk, 0, (size_t)(n * Dk) * sizeof(float));
    memset(s->dv, 0, (size_t)(n * Dv) * sizeof(float));
    int64_t keys = attn_problem_keys(p, b);
    for (int64_t h = g * group; j0 < keys && h < (g + 1) * group; h++)
        for (int64_t qb = 0; qb < job->q_blocks; qb++) {
            attn_task t;
            attn_task_block(p, w, &t, b, h, qb * job->block_rows);
            int64_t lo = t.klo > j0 ? t.klo : j0, hi = t.khi < j0 + n ? t.khi : j0 + n;
            if (lo >= hi)
                continue;
            row_values(c, &t, s);
            if (!tile_ds(c, &t, s, lo, hi - lo, s->dv + (lo - j0) * Dv, Dv))
                continue;
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)(hi - lo), (int)Dk,
                        (int)t.rows, ctx->scale, w->scores, ATTN_TILE_K, t.q, t.ldq, 1.0f,
                        s->dk + (lo - j0) * Dk, (int)Dk);
        }
    for (int64_t j = 0; j < n; j++) {
        memcpy(c->dk + attn_tensor_offset(&c->dk_strides, b, g, j0 + j), s->dk + j * Dk,
               (size_t)Dk * sizeof(float));
        memcpy(c->dv + attn_tensor_offset(&c->dv_strides, b, g, j0 + j), s->dv + j * Dv,
               (size_t)Dv * sizeof(float));
    }
}

/* ---- pass 2: dQ and dbias, query-major ------------------------------------------------------- */

static float *dbias_row(const attn_backward_call *c, int64_t b, int64_t h, int64_t i)
{
    return c->dbias + attn_tensor_offset(&c->dbias_strides, c->reduce_batch ? 0 : b,
                                         c->reduce_head ? 0 : h, c->reduce_rows ? 0 : i);
}

static void query_block(const bwd_job *job, attn_scratch *w, int64_t b, int64_t h, int64_t qb)
{
    const attn_backward_call *c = job->c;
    const attn_problem *p = &c->p;
    const attn_ctx *ctx = p->ctx;
    attn_backward_scratch *s = own_scratch(job, w);
    int64_t Dk = ctx->desc.qk_dim;
    attn_task t;
    attn_task_block(p, w, &t, b, h, qb * job->block_rows);
    memset(s->dq, 0, (size_t)(t.rows * Dk) * sizeof(float));
    row_values(c, &t, s);
    for (int64_t j0 = t.klo, end; j0 < t.khi; j0 = end) {
        end = attn_kv_tile_end(p->kv, j0, t.khi);
        int64_t n = end - j0;
        if (!tile_ds(c, &t, s, j0, n, NULL, 0))
            continue;
        attn_kv_tile k = attn_kv_get(p->kv, ATTN_KV_KEYS, b, t.g, j0, n, w->convert);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)t.rows, (int)Dk, (int)n,
                    ctx->scale, w->scores, ATTN_TILE_K, k.data, k.ld, 1.0f, s->dq, (int)Dk);
        if (c->dbias)
            for (int64_t r = 0; r < t.rows; r++) {
                int64_t a, z;
                attn_task_row_span(&t, r, j0, n, &a, &z);
                if (a >= z || s->lse[r] == -INFINITY)
                    continue;
                float *dst = dbias_row(c, b, h, w->row_i[r]) + j0;
                const float *ds = w->scores + r * ATTN_TILE_K;
                for (int64_t j = a; j < z; j++)
                    dst[j] += ds[j];
            }
    }
    for (int64_t r = 0; r < t.rows; r++)
        memcpy(c->dq + attn_tensor_offset(&c->dq_strides, b, h, w->row_i[r]), s->dq + r * Dk,
               (size_t)Dk * sizeof(float));
}

/* Item (bi, hi, qi) along the axes dbias is not summed over; the summed axes are walked inside,
 * in the order batch, head, query block, so each dbias row's sum has one fixed order. */
static void query_item(void *arg, int64_t item, attn_scratch *w)
{
    const bwd_job *job = arg;
    const attn_backward_call *c = job->c;
    const attn_problem *p = &c->p;
    int64_t qi = item % job->items_q, rest = item / job->items_q;
    int64_t hi = rest % job->items_h, bi = rest / job->items_h;
    int64_t H = p->ctx->desc.q_heads;
    int64_t b0 = c->reduce_batch ? 0 : bi, b1 = c->reduce_batch ? p->batch : bi + 1;
    int64_t h0 = c->reduce_head ? 0 : hi, h1 = c->reduce_head ? H : hi + 1;
    int64_t q0 = c->reduce_rows ? 0 : qi, q1 = c->reduce_rows ? job->q_blocks : qi + 1;
    if (c->dbias) { /* the dbias rows this item owns start at zero */
        int64_t i0 = c->reduce_rows ? 0 : qi * job->block_rows;
        int64_t i1 = c->reduce_rows ? 1 : (i0 + job->block_rows < p->q_len ? i0 + job->block_rows : p->q_len);
        for (int64_t i = i0; i < i1; i++)
            memset(dbias_row(c, bi, hi, i), 0, (size_t)p->kv_len * sizeof(float));
    }
    for (int64_t b = b0; b < b1; b++)
        for (int64_t h = h0; h < h1; h++)
            for (int64_t qb = q0; qb < q1; qb++)
                query_block(job, w, b, h, qb);
}

attn_status attn_backward(attn_ctx *ctx, const attn_backward_args *args)
{
    if (!ctx)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "ctx is NULL");
    /* refuse an inherited (forked) or busy context; released on every return below */
    attn_status st = attn_call_enter(ctx);
    if (st != ATTN_OK)
        return st;
    attn_backward_call c;
    st = attn_backward_check(ctx, args, &c);
    if (st != ATTN_OK) {
        attn_call_leave(ctx);
        return st;
    }
    const attn_problem *p = &c.p;
    bwd_job job;
    job.c = &c;
    job.scratch = ctx->op_state[attn_op_slot(ATTN_OP_BACKWARD)];
    job.engine_scratch = ctx->scratch;
    job.block_rows = attn_block_rows(ctx);
    job.q_blocks = attn_tiles(p->q_len, job.block_rows);
    job.key_blocks = attn_tiles(p->kv_len, ATTN_BWD_KEYS);
    job.items_b = c.reduce_batch ? 1 : p->batch;
    job.items_h = c.reduce_head ? 1 : ctx->desc.q_heads;
    job.items_q = c.reduce_rows ? 1 : job.q_blocks;
    attn_engine_section s;
    attn_engine_begin(&s, ctx);
    attn_engine_run(&s, key_item, &job, p->batch * ctx->desc.kv_heads * job.key_blocks);
    attn_engine_run(&s, query_item, &job, job.items_b * job.items_h * job.items_q);
    attn_engine_end(&s);
    attn_clear_error(ctx);
    attn_call_leave(ctx);
    return ATTN_OK;
}
