/* Tasks: row maps, visible key ranges, Q rows, bias and mask rows. */
#include <string.h>

#include "dispatch/dispatch.h"
#include "engine/task.h"
#include "engine/tiles.h"

/* Whether a task of `rows` rows takes the thin kernels: ATTN_DECODE decides, else the table. */
static int takes_thin(const attn_ctx *ctx, int64_t rows)
{
    int mode = attn_dispatch_thin_mode();
    return rows <= ATTN_THIN_ROWS && mode >= 0 && (mode > 0 || ctx->kernels->thin_preferred);
}

static void finish_setup(const attn_problem *p, attn_task *t)
{
    t->thin = takes_thin(p->ctx, t->rows);
    int64_t keys = attn_problem_keys(p, t->b);
    attn_visibility vis = p->vis;
    if (p->q_at_end)
        vis.q_offset = keys - p->q_len;
    attn_visible_rows(&vis, keys, t->w->row_i, t->rows, t->w->lo, t->w->hi, &t->klo, &t->khi);
}

void attn_task_block(const attn_problem *p, attn_scratch *w, attn_task *t, int64_t b, int64_t h,
                     int64_t i0)
{
    int64_t rest = p->q_len - i0;
    t->w = w;
    t->b = b;
    t->g = h / p->ctx->group;
    int64_t cap = attn_block_rows(p->ctx);
    t->rows = rest < cap ? rest : cap;
    for (int64_t r = 0; r < t->rows; r++) {
        w->row_h[r] = h;
        w->row_i[r] = i0 + r;
    }
    t->q = p->q + attn_tensor_offset(&p->q_strides, b, h, i0);
    t->ldq = p->ldq;
    finish_setup(p, t);
}

void attn_task_group_rows(const attn_problem *p, attn_scratch *w, int64_t g, int64_t first,
                          int64_t rows)
{
    int64_t Lq = p->q_len, group = p->ctx->group;
    for (int64_t r = 0; r < rows; r++) {
        w->row_h[r] = g * group + (first + r) / Lq;
        w->row_i[r] = (first + r) % Lq;
    }
}

void attn_task_group(const attn_problem *p, attn_scratch *w, attn_task *t, int64_t b, int64_t g,
                     int64_t first, int64_t rows)
{
    int64_t D = p->ctx->desc.qk_dim;
    t->w = w;
    t->b = b;
    t->g = g;
    t->rows = rows;
    attn_task_group_rows(p, w, g, first, rows);
    for (int64_t r = 0; r < rows; r++)
        memcpy(w->qrows + r * D, p->q + attn_tensor_offset(&p->q_strides, b, w->row_h[r], w->row_i[r]),
               (size_t)D * sizeof(float));
    t->q = w->qrows;
    t->ldq = (int)D;
    finish_setup(p, t);
}

void attn_task_row_span(const attn_task *t, int64_t r, int64_t j0, int64_t n, int64_t *a,
                        int64_t *z)
{
    int64_t lo = t->w->lo[r] - j0, hi = t->w->hi[r] - j0;
    *a = lo < 0 ? 0 : lo > n ? n : lo;
    *z = hi < 0 ? 0 : hi > n ? n : hi;
}

const float *attn_task_bias_row(const attn_problem *p, const attn_task *t, int64_t r)
{
    return p->bias ? p->bias + attn_tensor_offset(&p->bias_strides, t->b, t->w->row_h[r],
                                                  t->w->row_i[r])
                   : NULL;
}

const uint8_t *attn_task_mask_row(const attn_problem *p, const attn_task *t, int64_t r)
{
    return p->mask ? p->mask + attn_tensor_offset(&p->mask_strides, t->b, t->w->row_h[r],
                                                  t->w->row_i[r])
                   : NULL;
}
