/* The online pass over key tiles (see online.h). */
#include <string.h>

#include "core/blas.h"
#include "engine/online.h"
#include "engine/score_op.h"
#include "engine/tiles.h"

static void online_tile(const attn_problem *p, const attn_task *t, int64_t j0, int64_t n,
                        attn_row_state *state, float *acc)
{
    const attn_ctx *ctx = p->ctx;
    int64_t dv = ctx->desc.v_dim;
    float *scores = t->w->scores;
    attn_task_scores(p, t, j0, n);
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
        const float *bias = attn_task_bias_row(p, t, r);
        const uint8_t *mask = attn_task_mask_row(p, t, r);
        attn_row_coord at = attn_task_coord(t, r, j0 + lo);
        float alpha = ctx->kernels->online_row(s + lo, (size_t)(hi - lo),
                                               bias ? bias + j0 + lo : NULL,
                                               mask ? mask + j0 + lo : NULL, &state[r],
                                               p->entropy, &at);
        if (alpha != 1.0f) {
            float *row = acc + r * dv;
            for (int64_t d = 0; d < dv; d++)
                row[d] *= alpha;
        }
    }
    attn_kv_tile v = attn_kv_get(p->kv, ATTN_KV_VALUES, t->b, t->g, j0, n, t->w->convert);
    if (t->rows == 1) /* see the dot-product score operation */
        cblas_sgemv(CblasRowMajor, CblasTrans, (int)n, (int)dv, 1.0f, v.data, v.ld, scores, 1,
                    1.0f, acc, 1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)t->rows, (int)dv, (int)n,
                    1.0f, scores, ATTN_TILE_K, v.data, v.ld, 1.0f, acc, (int)dv);
}

void attn_online_range(const attn_problem *p, const attn_task *t, int64_t from, int64_t to,
                       attn_row_state *state, float *acc)
{
    for (int64_t r = 0; r < t->rows; r++)
        state[r] = attn_state_empty();
    memset(acc, 0, (size_t)t->rows * p->ctx->desc.v_dim * sizeof(float));
    int64_t lo = from > t->klo ? from : t->klo, hi = to < t->khi ? to : t->khi;
    for (int64_t j0 = lo; j0 < hi; j0 += ATTN_TILE_K) {
        int64_t n = hi - j0 < ATTN_TILE_K ? hi - j0 : ATTN_TILE_K;
        online_tile(p, t, j0, n, state, acc);
    }
}
