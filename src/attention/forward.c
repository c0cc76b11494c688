/*
 * The forward driver. Work is split into tasks of up to ATTN_TILE_Q query rows sharing a batch
 * and a kv head. A task streams its visible key range ATTN_TILE_K keys at a time:
 *   S = scale * Q_blk K_blkᵀ            (cblas_sgemm; cblas_sgemv for a single row)
 *   per row: bias, mask, running max, exp, running sum, rescale of the accumulator (kernel)
 *   Acc += P V_blk                      (cblas_sgemm; cblas_sgemv for a single row)
 * and divides by the running sum once at the end (deferred normalisation). Keys outside the
 * union of the rows' structured intervals are never touched.
 *
 * Two ways to cut the work, both independent of the thread count so that results are bitwise
 * the same for any number of threads:
 *   - blocks: one task per (batch, query head, block of ATTN_TILE_Q positions);
 *   - split keys, for few queries and many keys: the rows of a kv head's whole query group form
 *     one task matrix (K and V are read once for the group), the keys are cut into chunks of
 *     ATTN_SPLIT_KEYS, chunks run in parallel, and each group's partial results are folded
 *     through their log-sum-exp strictly in chunk order.
 */
#include <math.h>
#include <string.h>

#include "attention/instance.h"
#include "attention/task.h"
#include "parallel/guard.h" /* fork and busy guard of attn_forward */
#include "attention/tiles.h"
#include "attention/weights.h"
#include "core/blas.h"
#include "parallel/blas_threads.h"

/* ---- tasks ------------------------------------------------------------------------------- */

static void task_finish_setup(const attn_ctx *ctx, const attn_instance *inst, attn_task *t)
{
    const attn_args *a = inst->args;
    int64_t keys = a->kv_lens ? (int64_t)a->kv_lens[t->b] : (int64_t)a->kv_len;
    t->k = a->k + t->b * a->k_strides.batch + t->g * a->k_strides.head;
    t->v = a->v + t->b * a->v_strides.batch + t->g * a->v_strides.head;
    (void)ctx;
    attn_visible_rows(&inst->vis, keys, t->w->row_i, t->rows, t->w->lo, t->w->hi, &t->klo,
                      &t->khi);
}

void attn_task_block(const attn_ctx *ctx, const attn_instance *inst, attn_scratch *w,
                     attn_task *t, int64_t b, int64_t h, int64_t i0)
{
    const attn_args *a = inst->args;
    int64_t rest = a->q_len - i0;
    t->w = w;
    t->b = b;
    t->g = h / ctx->group;
    t->rows = rest < ATTN_TILE_Q ? rest : ATTN_TILE_Q;
    for (int64_t r = 0; r < t->rows; r++) {
        w->row_h[r] = h;
        w->row_i[r] = i0 + r;
    }
    t->q = a->q + b * a->q_strides.batch + h * a->q_strides.head + i0 * a->q_strides.seq;
    t->ldq = inst->ldq;
    task_finish_setup(ctx, inst, t);
}

/* Row maps of a group task: row r is (head, position) number first + r of kv head g's group. */
static void group_rows(const attn_ctx *ctx, const attn_instance *inst, attn_scratch *w,
                       int64_t g, int64_t first, int64_t rows)
{
    int64_t Lq = inst->args->q_len;
    for (int64_t r = 0; r < rows; r++) {
        w->row_h[r] = g * ctx->group + (first + r) / Lq;
        w->row_i[r] = (first + r) % Lq;
    }
}

void attn_task_group(const attn_ctx *ctx, const attn_instance *inst, attn_scratch *w,
                     attn_task *t, int64_t b, int64_t g, int64_t first, int64_t rows)
{
    const attn_args *a = inst->args;
    int64_t D = ctx->desc.qk_dim;
    t->w = w;
    t->b = b;
    t->g = g;
    t->rows = rows;
    group_rows(ctx, inst, w, g, first, rows);
    for (int64_t r = 0; r < rows; r++)
        memcpy(w->qrows + r * D,
               a->q + b * a->q_strides.batch + w->row_h[r] * a->q_strides.head +
                   w->row_i[r] * a->q_strides.seq,
               (size_t)D * sizeof(float));
    t->q = w->qrows;
    t->ldq = (int)D;
    task_finish_setup(ctx, inst, t);
}

void attn_task_scores(const attn_ctx *ctx, const attn_instance *inst, const attn_task *t,
                      int64_t j0, int64_t n)
{
    const attn_args *a = inst->args;
    /* A single query row is a matrix-vector product: the BLAS's sgemv streams K once, where
     * sgemm would first copy it into a packed panel (half the speed on decoding shapes). */
    if (t->rows == 1)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)n, (int)ctx->desc.qk_dim, ctx->scale,
                    t->k + j0 * a->k_strides.seq, inst->ldk, t->q, 1, 0.0f, t->w->scores, 1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)t->rows, (int)n,
                    (int)ctx->desc.qk_dim, ctx->scale, t->q, t->ldq, t->k + j0 * a->k_strides.seq,
                    inst->ldk, 0.0f, t->w->scores, ATTN_TILE_K);
}

void attn_task_row_span(const attn_task *t, int64_t r, int64_t j0, int64_t n, int64_t *a,
                        int64_t *z)
{
    int64_t lo = t->w->lo[r] - j0, hi = t->w->hi[r] - j0;
    *a = lo < 0 ? 0 : lo > n ? n : lo;
    *z = hi < 0 ? 0 : hi > n ? n : hi;
}

/* Element offset of task row r in a [batch, head, row, key] view with strides s. */
static int64_t row_offset(const attn_strides *s, const attn_task *t, int64_t r)
{
    return t->b * s->batch + t->w->row_h[r] * s->head + t->w->row_i[r] * s->seq;
}

const float *attn_task_bias_row(const attn_instance *inst, const attn_task *t, int64_t r)
{
    const attn_args *a = inst->args;
    return a->bias ? a->bias + row_offset(&a->bias_strides, t, r) : NULL;
}

const uint8_t *attn_task_mask_row(const attn_instance *inst, const attn_task *t, int64_t r)
{
    const attn_args *a = inst->args;
    return a->mask ? a->mask + row_offset(&a->mask_strides, t, r) : NULL;
}

/* ---- the online pass --------------------------------------------------------------------- */

static void online_block(const attn_ctx *ctx, const attn_instance *inst, const attn_task *t,
                         int64_t j0, int64_t n, attn_row_state *state, float *acc, int entropy)
{
    const attn_args *a = inst->args;
    int64_t dv = ctx->desc.v_dim;
    float *scores = t->w->scores;
    attn_task_scores(ctx, inst, t, j0, n);
    for (int64_t r = 0; r < t->rows; r++) {
        float *s = scores + r * ATTN_TILE_K;
        int64_t lo, hi;
        attn_task_row_span(t, r, j0, n, &lo, &hi);
        if (lo >= hi) {
            memset(s, 0, (size_t)n * sizeof *s);
            continue;
        }
        memset(s, 0, (size_t)lo * sizeof *s);
        memset(s + hi, 0, (size_t)(n - hi) * sizeof *s);
        const float *bias = attn_task_bias_row(inst, t, r);
        const uint8_t *mask = attn_task_mask_row(inst, t, r);
        float alpha = ctx->kernels->online_row(s + lo, (size_t)(hi - lo), bias ? bias + j0 + lo : NULL,
                                               mask ? mask + j0 + lo : NULL, &state[r], entropy);
        if (alpha != 1.0f) {
            float *row = acc + r * dv;
            for (int64_t d = 0; d < dv; d++)
                row[d] *= alpha;
        }
    }
    if (t->rows == 1) /* see attn_task_scores */
        cblas_sgemv(CblasRowMajor, CblasTrans, (int)n, (int)dv, 1.0f, t->v + j0 * a->v_strides.seq,
                    inst->ldv, scores, 1, 1.0f, acc, 1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)t->rows, (int)dv, (int)n,
                    1.0f, scores, ATTN_TILE_K, t->v + j0 * a->v_strides.seq, inst->ldv, 1.0f, acc,
                    (int)dv);
}

/* Runs the online softmax of the task's rows over the keys [from, to) into state and acc. */
static void online_range(const attn_ctx *ctx, const attn_instance *inst, const attn_task *t,
                         int64_t from, int64_t to, attn_row_state *state, float *acc)
{
    for (int64_t r = 0; r < t->rows; r++)
        state[r] = (attn_row_state){-INFINITY, 0.0f, 0.0f};
    memset(acc, 0, (size_t)t->rows * ctx->desc.v_dim * sizeof(float));
    int entropy = inst->args->entropy != NULL;
    int64_t lo = from > t->klo ? from : t->klo, hi = to < t->khi ? to : t->khi;
    for (int64_t j0 = lo; j0 < hi; j0 += ATTN_TILE_K) {
        int64_t n = hi - j0 < ATTN_TILE_K ? hi - j0 : ATTN_TILE_K;
        online_block(ctx, inst, t, j0, n, state, acc, entropy);
    }
}

/* Normalises acc into out and writes the optional per-row outputs of rows (row_h, row_i). */
static void finish_rows(const attn_ctx *ctx, const attn_instance *inst, int64_t b,
                        const attn_scratch *w, int64_t rows, const attn_row_state *state,
                        const float *acc)
{
    const attn_args *a = inst->args;
    int64_t dv = ctx->desc.v_dim;
    int nan_rows = ctx->desc.masked_rows == ATTN_MASKED_ROWS_NAN;
    for (int64_t r = 0; r < rows; r++) {
        const attn_row_state *st = &state[r];
        int64_t h = w->row_h[r], i = w->row_i[r];
        float *out = a->out + b * a->out_strides.batch + h * a->out_strides.head +
                     i * a->out_strides.seq;
        const float *row_acc = acc + r * dv;
        int64_t row = (b * ctx->desc.q_heads + h) * a->q_len + i;
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
            out[d] = row_acc[d] / st->l;
        float log_l = logf(st->l);
        if (a->lse)
            a->lse[row] = st->m + log_l;
        if (a->entropy) {
            float ent = log_l - st->u / st->l;
            /* rounding must not make it negative; written so that NaN stays NaN */
            a->entropy[row] = ent < 0.0f ? 0.0f : ent;
        }
    }
}

/* ---- blocks ------------------------------------------------------------------------------ */

typedef struct forward_job {
    attn_ctx *ctx;
    const attn_instance *inst;
    int serial_blas;     /* workers make their BLAS calls single-threaded */
    int64_t blocks;      /* query blocks per (batch, head) */
    /* split keys */
    int64_t group_rows;  /* rows of one kv head's group: group * q_len */
    int64_t row_sets;    /* tasks per (batch, kv head): ceil(group_rows / ATTN_TILE_Q) */
    int64_t chunks;      /* key chunks per row set */
    int64_t first_item;  /* first item of the current wave */
} forward_job;

/* Called first by every item: a worker thread's BLAS calls must be single-threaded too. */
static void begin_item(const forward_job *job, unsigned thread)
{
    if (thread > 0 && job->serial_blas)
        attn_blas_serial_worker();
}

static void run_block(const forward_job *job, unsigned thread, int64_t b, int64_t h, int64_t qb)
{
    attn_ctx *ctx = job->ctx;
    attn_scratch *w = &ctx->scratch[thread];
    attn_task t;
    attn_task_block(ctx, job->inst, w, &t, b, h, qb * ATTN_TILE_Q);
    online_range(ctx, job->inst, &t, 0, job->inst->args->kv_len, w->state, w->acc);
    finish_rows(ctx, job->inst, b, w, t.rows, w->state, w->acc);
    if (job->inst->args->weights_mode != ATTN_WEIGHTS_NONE)
        attn_write_weights(ctx, job->inst, &t);
}

/* One (batch, head, block) task; the block order is reversed so that under a causal mask the
 * most expensive blocks are handed out first. */
static void block_item(void *arg, int64_t item, unsigned thread)
{
    const forward_job *job = arg;
    begin_item(job, thread);
    int64_t H = job->ctx->desc.q_heads, nb = job->blocks;
    int64_t b = item / (H * nb), rest = item % (H * nb);
    run_block(job, thread, b, rest / nb, nb - 1 - rest % nb);
}

/* Head-mean weights sum the heads of a block into one buffer: one task per (batch, block)
 * visits its heads in order, so that sum has a fixed order too. */
static void block_all_heads_item(void *arg, int64_t item, unsigned thread)
{
    const forward_job *job = arg;
    begin_item(job, thread);
    int64_t nb = job->blocks, b = item / nb, qb = nb - 1 - item % nb;
    for (int64_t h = 0; h < job->ctx->desc.q_heads; h++)
        run_block(job, thread, b, h, qb);
}

/* ---- split keys -------------------------------------------------------------------------- */

/* Item = (batch, kv head, row set, chunk), chunk fastest. */
static void split_item(void *arg, int64_t k, unsigned thread)
{
    const forward_job *job = arg;
    begin_item(job, thread);
    attn_ctx *ctx = job->ctx;
    int64_t item = job->first_item + k;
    int64_t chunk = item % job->chunks, set = item / job->chunks;
    int64_t rs = set % job->row_sets, bg = set / job->row_sets;
    int64_t b = bg / ctx->desc.kv_heads, g = bg % ctx->desc.kv_heads;
    int64_t first = rs * ATTN_TILE_Q, rest = job->group_rows - first;
    attn_task t;
    attn_task_group(ctx, job->inst, &ctx->scratch[thread], &t, b, g, first,
                    rest < ATTN_TILE_Q ? rest : ATTN_TILE_Q);
    attn_partial *slot = &ctx->slots[k];
    online_range(ctx, job->inst, &t, chunk * ATTN_SPLIT_KEYS, (chunk + 1) * ATTN_SPLIT_KEYS,
                 slot->state, slot->acc);
}

/* carry = carry (+) part for `rows` rows, the two-way case of the online softmax update. */
static void fold_partial(attn_partial *carry, const attn_partial *part, int64_t rows, int64_t dv)
{
    for (int64_t r = 0; r < rows; r++) {
        attn_row_state *c = &carry->state[r];
        const attn_row_state *p = &part->state[r];
        float *ca = carry->acc + r * dv;
        const float *pa = part->acc + r * dv;
        if (p->l == 0.0f) /* the chunk saw no key of this row */
            continue;
        if (c->l == 0.0f) {
            *c = *p;
            memcpy(ca, pa, (size_t)dv * sizeof *ca);
            continue;
        }
        float m = c->m > p->m ? c->m : p->m;
        float ac = expf(c->m - m), ap = expf(p->m - m);
        for (int64_t d = 0; d < dv; d++)
            ca[d] = ac * ca[d] + ap * pa[d];
        c->u = ac * (c->u + (c->m - m) * c->l) + ap * (p->u + (p->m - m) * p->l);
        c->l = ac * c->l + ap * p->l;
        c->m = m;
    }
}

static void run_split(forward_job *job)
{
    attn_ctx *ctx = job->ctx;
    const attn_args *a = job->inst->args;
    int64_t dv = ctx->desc.v_dim;
    job->group_rows = (int64_t)ctx->group * a->q_len;
    job->row_sets = (job->group_rows + ATTN_TILE_Q - 1) / ATTN_TILE_Q;
    job->chunks = ((int64_t)a->kv_len + ATTN_SPLIT_KEYS - 1) / ATTN_SPLIT_KEYS;
    int64_t total = (int64_t)a->batch * ctx->desc.kv_heads * job->row_sets * job->chunks;
    attn_scratch *w0 = &ctx->scratch[0];
    /* Waves of as many chunks as there are slots; the fold walks each row set's chunks in
     * order, carrying a row set that spans two waves, so wave boundaries change nothing. */
    for (int64_t first = 0; first < total; first += ctx->nslots) {
        int64_t n = total - first < ctx->nslots ? total - first : ctx->nslots;
        job->first_item = first;
        attn_pool_run(&ctx->pool, split_item, job, n);
        for (int64_t k = 0; k < n; k++) {
            int64_t item = first + k;
            int64_t chunk = item % job->chunks, set = item / job->chunks;
            int64_t rs = set % job->row_sets, bg = set / job->row_sets;
            int64_t rows = job->group_rows - rs * ATTN_TILE_Q;
            rows = rows < ATTN_TILE_Q ? rows : ATTN_TILE_Q;
            if (chunk == 0) {
                for (int64_t r = 0; r < rows; r++)
                    ctx->carry.state[r] = (attn_row_state){-INFINITY, 0.0f, 0.0f};
            }
            fold_partial(&ctx->carry, &ctx->slots[k], rows, dv);
            if (chunk == job->chunks - 1) {
                group_rows(ctx, job->inst, w0, bg % ctx->desc.kv_heads, rs * ATTN_TILE_Q, rows);
                finish_rows(ctx, job->inst, bg / ctx->desc.kv_heads, w0, rows, ctx->carry.state,
                            ctx->carry.acc);
            }
        }
    }
}

/* ---- entry point ------------------------------------------------------------------------- */

attn_status attn_forward(attn_ctx *ctx, const attn_args *args)
{
    if (!ctx)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "ctx is NULL");
    /* guard: refuse an inherited (forked) or busy context; released on every return below */
    attn_status st = attn_call_enter(ctx);
    if (st != ATTN_OK)
        return st;
    attn_instance inst;
    st = attn_validate_args(ctx, args, &inst);
    if (st != ATTN_OK) {
        attn_call_leave(ctx); /* guard */
        return st;
    }
    /* Every tile product runs single-threaded, also with one libattn thread: a threaded BLAS
     * partitions a product differently and rounds differently, and results must not depend on
     * the thread count. */
    int serial_blas = !(ctx->desc.flags & ATTN_BLAS_THREADS_UNTOUCHED);
    forward_job job = {ctx, &inst, serial_blas, (args->q_len + ATTN_TILE_Q - 1) / ATTN_TILE_Q,
                       0, 0, 0, 0};
    attn_blas_saved saved;
    if (serial_blas)
        attn_blas_serial_enter(&saved);
    if (args->q_len <= ATTN_SPLIT_MAX_QUERIES && args->kv_len >= ATTN_SPLIT_MIN_KEYS &&
        args->weights_mode == ATTN_WEIGHTS_NONE) {
        run_split(&job);
    } else if (args->weights_mode == ATTN_WEIGHTS_HEAD_MEAN) {
        attn_pool_run(&ctx->pool, block_all_heads_item, &job, args->batch * job.blocks);
    } else {
        attn_pool_run(&ctx->pool, block_item, &job,
                      (int64_t)args->batch * ctx->desc.q_heads * job.blocks);
    }
    if (serial_blas)
        attn_blas_serial_leave(&saved);
    attn_clear_error(ctx);
    attn_call_leave(ctx); /* guard */
    return ATTN_OK;
}
