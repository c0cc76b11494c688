/* The online pass over key tiles (see online.h). */
#include <string.h>

#include "core/blas.h"
#include "engine/online.h"
#include "engine/score_op.h"
#include "engine/tiles.h"

/* One online step for rows [r0, r1) over the keys [j0 + a, j0 + z) of the tile, whose scores
 * are already in the scratch tile (column c is key j0 + c): the kernel per row, then P·V. */
static void softmax_and_values(const attn_problem *p, const attn_task *t, int64_t r0, int64_t r1,
                               int64_t j0, int64_t a, int64_t z, attn_row_state *state,
                               float *acc, attn_kv_tile v)
{
    const attn_ctx *ctx = p->ctx;
    int64_t dv = ctx->desc.v_dim;
    float *scores = t->w->scores;
    for (int64_t r = r0; r < r1; r++) {
        float *s = scores + r * ATTN_TILE_K;
        int64_t lo, hi;
        attn_task_row_span(t, r, j0, z, &lo, &hi);
        lo = lo > a ? lo : a;
        if (lo >= hi) {
            memset(s + a, 0, (size_t)(z - a) * sizeof *s);
            continue;
        }
        memset(s + a, 0, (size_t)(lo - a) * sizeof *s);
        memset(s + hi, 0, (size_t)(z - hi) * sizeof *s);
        const float *bias = attn_task_bias_row(p, t, r);
        const uint8_t *mask = attn_task_mask_row(p, t, r);
        attn_row_coord at = attn_task_coord(t, r, j0 + lo);
        float alpha = ctx->kernels->online_row(s + lo, (size_t)(hi - lo),
                                               bias ? bias + j0 + lo : NULL,
                                               mask ? mask + j0 + lo : NULL, &state[r],
                                               p->entropy, &at);
        if (p->dropout) /* after the softmax state saw the row, before P.V */
            ctx->kernels->dropout_row(s + lo, (size_t)(hi - lo), &at, p->dropout);
        if (alpha != 1.0f) {
            float *row = acc + r * dv;
            for (int64_t d = 0; d < dv; d++)
                row[d] *= alpha;
        }
    }
    if (t->thin) { /* the tile as stored, read once */
        int64_t esize = (int64_t)attn_dtype_size(v.dtype);
        ctx->kernels->thin_values(acc + r0 * dv, dv, scores + r0 * ATTN_TILE_K + a, ATTN_TILE_K,
                                  r1 - r0, (const char *)v.data + a * v.ld * esize, v.ld,
                                  attn_kv_tile_kind(&v), z - a, dv);
        return;
    }
    const float *vrows = (const float *)v.data + a * v.ld;
    if (r1 - r0 == 1) /* see the dot-product score operation */
        cblas_sgemv(CblasRowMajor, CblasTrans, (int)(z - a), (int)dv, 1.0f, vrows, v.ld,
                    scores + r0 * ATTN_TILE_K + a, 1, 1.0f, acc + r0 * dv, 1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(r1 - r0), (int)dv,
                    (int)(z - a), 1.0f, scores + r0 * ATTN_TILE_K + a, ATTN_TILE_K, vrows, v.ld,
                    1.0f, acc + r0 * dv, (int)dv);
}

/* The keys [*a, *z) of the tile [j0, j0 + n) that rows [r0, r1) see, relative to j0. */
static void rows_span(const attn_task *t, int64_t r0, int64_t r1, int64_t j0, int64_t n,
                      int64_t *a, int64_t *z)
{
    int64_t lo = n, hi = 0;
    for (int64_t r = r0; r < r1; r++) {
        int64_t x, y;
        attn_task_row_span(t, r, j0, n, &x, &y);
        if (x < y) {
            lo = x < lo ? x : lo;
            hi = y > hi ? y : hi;
        }
    }
    *a = lo < hi ? lo : 0;
    *z = lo < hi ? hi : 0;
}

int attn_tile_scores(const attn_problem *p, const attn_task *t, int64_t j0, int64_t n,
                     int64_t a[ATTN_TILE_Q / ATTN_SUB_ROWS], int64_t z[ATTN_TILE_Q / ATTN_SUB_ROWS])
{
    int64_t subs = (t->rows + ATTN_SUB_ROWS - 1) / ATTN_SUB_ROWS, split = 0;
    /* A tile a causal or window bound cuts across: each sub-block of rows only over the keys it
     * sees, when that saves a quarter of the work or more. */
    if (subs > 1) {
        int64_t work = 0;
        for (int64_t s = 0; s < subs; s++) {
            int64_t r0 = s * ATTN_SUB_ROWS, r1 = r0 + ATTN_SUB_ROWS < t->rows ? r0 + ATTN_SUB_ROWS : t->rows;
            rows_span(t, r0, r1, j0, n, &a[s], &z[s]);
            work += (r1 - r0) * (z[s] - a[s]);
        }
        split = 4 * work <= 3 * t->rows * n;
    }
    if (!split) {
        attn_task_scores(p, t, j0, n);
        return 0;
    }
    for (int64_t s = 0; s < subs; s++) {
        int64_t r0 = s * ATTN_SUB_ROWS, r1 = r0 + ATTN_SUB_ROWS < t->rows ? r0 + ATTN_SUB_ROWS : t->rows;
        if (a[s] < z[s]) /* rows that see none of the tile get no scores */
            p->score->tile(p, t, r0, r1, j0 + a[s], z[s] - a[s],
                           t->w->scores + r0 * ATTN_TILE_K + a[s], ATTN_TILE_K);
    }
    return (int)subs;
}

static void online_tile(const attn_problem *p, const attn_task *t, int64_t j0, int64_t n,
                        attn_row_state *state, float *acc)
{
    attn_kv_tile v = t->thin
                         ? attn_kv_get_raw(p->kv, ATTN_KV_VALUES, t->b, t->g, j0, n)
                         : attn_kv_get(p->kv, ATTN_KV_VALUES, t->b, t->g, j0, n, t->w->convert);
    int64_t a[ATTN_TILE_Q / ATTN_SUB_ROWS], z[ATTN_TILE_Q / ATTN_SUB_ROWS];
    int64_t subs = attn_tile_scores(p, t, j0, n, a, z);
    if (!subs) {
        softmax_and_values(p, t, 0, t->rows, j0, 0, n, state, acc, v);
        return;
    }
    for (int64_t s = 0; s < subs; s++) {
        int64_t r0 = s * ATTN_SUB_ROWS, r1 = r0 + ATTN_SUB_ROWS < t->rows ? r0 + ATTN_SUB_ROWS : t->rows;
        if (a[s] < z[s])
            softmax_and_values(p, t, r0, r1, j0, a[s], z[s], state, acc, v);
    }
}

void attn_online_range(const attn_problem *p, const attn_task *t, int64_t from, int64_t to,
                       attn_row_state *state, float *acc)
{
    for (int64_t r = 0; r < t->rows; r++)
        state[r] = attn_state_empty();
    memset(acc, 0, (size_t)t->rows * p->ctx->desc.v_dim * sizeof(float));
    int64_t lo = from > t->klo ? from : t->klo, hi = to < t->khi ? to : t->khi;
    for (int64_t j0 = lo, end; j0 < hi; j0 = end) {
        end = attn_kv_tile_end(p->kv, j0, hi);
        online_tile(p, t, j0, end - j0, state, acc);
    }
}
