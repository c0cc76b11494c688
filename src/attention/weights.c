/* Attention weights written into the caller's [.., q_len, kv_len] buffer, tile by tile. */
#include <math.h>
#include <string.h>

#include "attention/weights.h"
#include "engine/online.h"
#include "engine/score_op.h"
#include "engine/tiles.h"

static void fill(float *dst, int64_t n, float value, int accumulate)
{
    for (int64_t j = 0; j < n; j++)
        dst[j] = accumulate ? dst[j] + value : value;
}

void attn_write_weights(const attn_forward_call *c, const attn_task *t)
{
    const attn_problem *p = &c->p;
    const attn_ctx *ctx = p->ctx;
    const attn_scratch *w = t->w;
    int64_t Lk = p->kv_len, H = ctx->desc.q_heads;
    int64_t h = w->row_h[0], i0 = w->row_i[0]; /* a block task: one head, consecutive rows */
    int mean = c->weights_mode == ATTN_WEIGHTS_HEAD_MEAN;
    int accumulate = mean && h > 0;
    float masked = ctx->desc.masked_rows == ATTN_MASKED_ROWS_NAN ? NAN : 0.0f;
    float *base = c->weights + attn_tensor_offset(&c->weights_strides, t->b, mean ? 0 : h, i0);
    int64_t ld = c->weights_strides.seq; /* rows of the task are consecutive positions */

    /* Keys no row of the task can see, and rows that see no key at all. */
    for (int64_t r = 0; r < t->rows; r++) {
        float *row = base + r * ld;
        if (w->state[r].l == 0.0f) {
            fill(row, Lk, masked, accumulate);
            continue;
        }
        if (!accumulate) {
            memset(row, 0, (size_t)t->klo * sizeof *row);
            memset(row + t->khi, 0, (size_t)(Lk - t->khi) * sizeof *row);
        }
    }
    for (int64_t j0 = t->klo, end; j0 < t->khi; j0 = end) {
        end = attn_kv_tile_end(p->kv, j0, t->khi);
        int64_t n = end - j0;
        int64_t sa[ATTN_TILE_Q / ATTN_SUB_ROWS], sz[ATTN_TILE_Q / ATTN_SUB_ROWS];
        attn_tile_scores(p, t, j0, n, sa, sz); /* the scores the online pass saw */
        for (int64_t r = 0; r < t->rows; r++) {
            const attn_row_state *st = &w->state[r];
            if (st->l == 0.0f)
                continue;
            float *dst = base + r * ld + j0;
            const float *s = w->scores + r * ATTN_TILE_K;
            int64_t lo, hi;
            attn_task_row_span(t, r, j0, n, &lo, &hi);
            if (lo >= hi) {
                if (!accumulate)
                    memset(dst, 0, (size_t)n * sizeof *dst);
                continue;
            }
            if (!accumulate) {
                memset(dst, 0, (size_t)lo * sizeof *dst);
                memset(dst + hi, 0, (size_t)(n - hi) * sizeof *dst);
            }
            const float *bias = attn_task_bias_row(p, t, r);
            const uint8_t *mask = attn_task_mask_row(p, t, r);
            attn_row_coord at = attn_task_coord(t, r, j0 + lo);
            if (!p->dropout) {
                ctx->kernels->probs_row(s + lo, (size_t)(hi - lo), bias ? bias + j0 + lo : NULL,
                                        mask ? mask + j0 + lo : NULL, st->m, st->l, dst + lo,
                                        accumulate, &at);
                continue;
            }
            /* with dropout: the probabilities in the score row, dropped there, then stored */
            float *pr = w->scores + r * ATTN_TILE_K + lo;
            ctx->kernels->probs_row(pr, (size_t)(hi - lo), bias ? bias + j0 + lo : NULL,
                                    mask ? mask + j0 + lo : NULL, st->m, st->l, pr, 0, &at);
            ctx->kernels->dropout_row(pr, (size_t)(hi - lo), &at, p->dropout);
            for (int64_t j = 0; j < hi - lo; j++)
                dst[lo + j] = accumulate ? dst[lo + j] + pr[j] : pr[j];
        }
    }
    if (mean && h == H - 1) {
        float heads = (float)H;
        for (int64_t r = 0; r < t->rows; r++) {
            float *row = base + r * ld;
            for (int64_t j = 0; j < Lk; j++)
                row[j] /= heads;
        }
    }
}
