/* The scaled dot-product score operation. */
#include "core/blas.h"
#include "engine/score_op.h"

static void dot_tile(const attn_problem *p, const attn_task *t, int64_t r0, int64_t r1,
                     int64_t j0, int64_t n, float *scores, int ld)
{
    const attn_ctx *ctx = p->ctx;
    const float *q = t->q + r0 * t->ldq;
    if (t->thin) { /* few rows: stream K once, no packing */
        attn_kv_tile k = attn_kv_get_raw(p->kv, ATTN_KV_KEYS, t->b, t->g, j0, n);
        ctx->kernels->thin_scores(scores, ld, q, t->ldq, r1 - r0, k.data, k.ld,
                                  attn_kv_tile_kind(&k), n, ctx->desc.qk_dim, ctx->scale);
        return;
    }
    attn_kv_tile k = attn_kv_get(p->kv, ATTN_KV_KEYS, t->b, t->g, j0, n, t->w->convert);
    /* A single query row is a matrix-vector product: the BLAS's sgemv streams K once, where
     * sgemm would first copy it into a packed panel (half the speed on decoding shapes). */
    if (r1 - r0 == 1)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)n, (int)ctx->desc.qk_dim, ctx->scale,
                    k.data, k.ld, q, 1, 0.0f, scores, 1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(r1 - r0), (int)n,
                    (int)ctx->desc.qk_dim, ctx->scale, q, t->ldq, k.data, k.ld, 0.0f, scores, ld);
}

const attn_score_op attn_score_dot = {"dot", dot_tile};
