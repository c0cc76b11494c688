/*
 * Additive (Bahdanau) attention (include/attn/attn_additive.h).
 *
 * Forward: qp = q W_qᵀ + bias and kt = W_k kᵀ (per batch entry, [A, Lk] with a padded leading
 * dimension) are cblas_sgemm calls over fixed blocks on the context's threads. The attention is
 * the engine's: an attn_problem whose score operation is the fused additive kernel (below,
 * `additive_tile`), whose K/V source hands out value tiles, and the forward operation's own
 * block tasks, finishing and weights writer. So masks, the online softmax, lse, entropy and
 * weights behave exactly as in attn_forward.
 *
 * Backward: the scores are recomputed from the saved qp, kt and lse, tile by tile, keeping the
 * row's tanh values of one tile (A × 256 floats per thread) for the gradient kernels:
 *   pass Q, tasks over (batch, 64 query rows): dqp rows and a per-task d_w partial;
 *   pass K, tasks over (batch, 256 keys): dkt columns and d_value rows;
 * each output element belongs to one task, the d_w partials are folded in task order, so no
 * result depends on the thread count. Then the parameter and input gradients are sgemm calls
 * over fixed blocks, as in the MHA layer.
 *
 * Unlike the MHA layer this file reaches below the public API (engine, kernels): the score
 * operation is an engine part.
 */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <attn/attn_additive.h>

#include "attention/forward.h"
#include "attention/weights.h"
#include "core/abi.h"
#include "core/blas.h"
#include "core/context.h"
#include "core/guard.h"
#include "engine/online.h"
#include "engine/run.h"
#include "engine/score_op.h"
#include "engine/tiles.h"

#define ALIGN 64
#define ROW_BLOCK 128 /* rows per projection / input-gradient product */
#define FEAT_BLOCK 64 /* weight rows per weight-gradient product */
#define QBLOCK 64     /* query rows per backward pass-Q task (and per pass-K step) */

struct attn_additive {
    attn_additive_desc desc;
    int64_t Dq, Dk, Dv, A;
    attn_allocator allocator;
    int custom_allocator;
    attn_ctx *ctx;
    float *tiles; /* threads × ATTN_TILE_K × A: one row's tanh values of a tile, per thread */
};

/* ---- descriptor and struct defaults ---------------------------------------------------------- */

static const attn_additive_desc desc_defaults = {
    .struct_size = sizeof(attn_additive_desc),
    .q_dim = 64,
    .k_dim = 64,
    .v_dim = 64,
    .attn_dim = 64,
    .bias = 1,
    .masked_rows = ATTN_MASKED_ROWS_ZERO,
};
static const size_t desc_sizes[] = {sizeof(attn_additive_desc)};
static const attn_additive_args args_defaults = {.struct_size = sizeof(attn_additive_args)};
static const size_t args_sizes[] = {sizeof(attn_additive_args)};
static const attn_additive_grads grads_defaults = {
    .struct_size = sizeof(attn_additive_grads),
    .mode = ATTN_ADDITIVE_GRAD_SET,
};
static const size_t grads_sizes[] = {sizeof(attn_additive_grads)};

void attn_additive_desc_init_size(attn_additive_desc *desc, size_t size)
{
    attn_abi_init(desc, size, &desc_defaults, sizeof desc_defaults);
}

void attn_additive_args_init_size(attn_additive_args *args, size_t size)
{
    attn_abi_init(args, size, &args_defaults, sizeof args_defaults);
}

void attn_additive_grads_init_size(attn_additive_grads *grads, size_t size)
{
    attn_abi_init(grads, size, &grads_defaults, sizeof grads_defaults);
}

/* ---- create / destroy ------------------------------------------------------------------------ */

static attn_status resolve_desc(const attn_additive_desc *caller, attn_additive_desc *d)
{
    if (!attn_abi_size_known(caller->struct_size, desc_sizes, sizeof desc_sizes / sizeof desc_sizes[0]))
        return attn_fail(NULL, ATTN_ERR_STRUCT_SIZE,
                         "desc->struct_size = %zu is not the size of an attn_additive_desc of "
                         "this or an earlier version (%zu): initialise with "
                         "attn_additive_desc_init", caller->struct_size, sizeof(attn_additive_desc));
    attn_abi_load(d, &desc_defaults, caller, caller->struct_size, sizeof *d);
    if (d->allocator && (!d->allocator->alloc || !d->allocator->free))
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "desc->allocator has a NULL %s function",
                         d->allocator->alloc ? "free" : "alloc");
    const char *names[4] = {"q_dim", "k_dim", "v_dim", "attn_dim"};
    uint32_t dims[4] = {d->q_dim, d->k_dim, d->v_dim, d->attn_dim};
    uint32_t limits[4] = {ATTN_ADDITIVE_MAX_DIM, ATTN_ADDITIVE_MAX_DIM, ATTN_MAX_HEAD_DIM,
                          ATTN_MAX_HEAD_DIM};
    for (int i = 0; i < 4; i++)
        if (dims[i] == 0)
            return attn_fail(NULL, ATTN_ERR_ZERO_SIZE, "desc->%s is 0", names[i]);
    for (int i = 0; i < 4; i++)
        if (dims[i] > limits[i])
            return attn_fail(NULL, ATTN_ERR_LIMIT, "desc->%s = %u exceeds %s = %u", names[i],
                             dims[i], i < 2 ? "ATTN_ADDITIVE_MAX_DIM" : "ATTN_MAX_HEAD_DIM",
                             limits[i]);
    if (d->threads > ATTN_MAX_THREADS)
        return attn_fail(NULL, ATTN_ERR_LIMIT, "desc->threads = %u exceeds ATTN_MAX_THREADS = %u",
                         d->threads, ATTN_MAX_THREADS);
    if (d->bias > 1)
        return attn_fail(NULL, ATTN_ERR_BAD_OPTION, "desc->bias = %u is not 0 or 1", d->bias);
    if (d->flags & ~(uint32_t)(ATTN_CAUSAL | ATTN_BLAS_THREADS_UNTOUCHED))
        return attn_fail(NULL, ATTN_ERR_BAD_OPTION, "desc->flags = 0x%x has unknown bits",
                         d->flags);
    if (d->masked_rows > ATTN_MASKED_ROWS_NAN)
        return attn_fail(NULL, ATTN_ERR_BAD_OPTION, "desc->masked_rows = %u is not an "
                         "attn_masked_rows value", d->masked_rows);
    return ATTN_OK;
}

static void *layer_alloc(const attn_allocator *al, size_t bytes)
{
    return al ? al->alloc(al->user, bytes, ALIGN) : aligned_alloc(ALIGN, (bytes + ALIGN - 1) / ALIGN * ALIGN);
}

static void layer_free(const attn_allocator *al, void *p)
{
    if (al)
        al->free(al->user, p);
    else
        free(p);
}

attn_status attn_additive_create(const attn_additive_desc *desc, attn_additive **out_add)
{
    if (!out_add)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "out_add is NULL");
    *out_add = NULL;
    if (!desc)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "desc is NULL");
    attn_additive_desc d;
    attn_status st = resolve_desc(desc, &d);
    if (st != ATTN_OK)
        return st;

    attn_desc ad;
    attn_desc_init(&ad);
    ad.q_heads = ad.kv_heads = 1;
    ad.qk_dim = d.attn_dim;
    ad.v_dim = d.v_dim;
    ad.flags = d.flags;
    ad.masked_rows = d.masked_rows;
    ad.allocator = d.allocator;
    ad.threads = d.threads;
    ad.ops = ATTN_OP_FORWARD;

    attn_additive *m = layer_alloc(d.allocator, sizeof *m);
    if (!m)
        return attn_fail(NULL, ATTN_ERR_NO_MEMORY, "the allocator returned NULL for the layer "
                         "object (%zu bytes)", sizeof *m);
    memset(m, 0, sizeof *m);
    if ((st = attn_create(&ad, &m->ctx)) != ATTN_OK) { /* its message stays in attn_last_error */
        layer_free(d.allocator, m);
        return st;
    }
    size_t tile_bytes = (size_t)m->ctx->threads * ATTN_TILE_K * d.attn_dim * sizeof(float);
    m->tiles = layer_alloc(d.allocator, tile_bytes);
    if (!m->tiles) {
        attn_destroy(m->ctx);
        layer_free(d.allocator, m);
        return attn_fail(NULL, ATTN_ERR_NO_MEMORY, "the allocator returned NULL for the layer's "
                         "tanh tiles (%zu bytes)", tile_bytes);
    }
    m->desc = d;
    m->custom_allocator = d.allocator != NULL;
    if (d.allocator)
        m->allocator = *d.allocator;
    m->desc.allocator = NULL;
    m->Dq = d.q_dim, m->Dk = d.k_dim, m->Dv = d.v_dim, m->A = d.attn_dim;
    *out_add = m;
    return ATTN_OK;
}

void attn_additive_destroy(attn_additive *add)
{
    if (!add)
        return;
    const attn_allocator *al = add->custom_allocator ? &add->allocator : NULL;
    attn_destroy(add->ctx);
    layer_free(al, add->tiles);
    layer_free(al, add);
}

const char *attn_additive_last_error(const attn_additive *add)
{
    return attn_last_error(add ? add->ctx : NULL);
}

/* ---- per-call memory ------------------------------------------------------------------------- */

static int64_t align_floats(int64_t n)
{
    return (n + ALIGN / 4 - 1) / (ALIGN / 4) * (ALIGN / 4);
}

/* The leading dimension of a batch entry's transposed keys [A, Lk]: padded so that rows are
 * 64-byte aligned and consecutive rows do not fall into the same cache sets (a power-of-two
 * stride would). */
static int64_t kt_ld(int64_t Lk)
{
    return align_floats(Lk) + ALIGN / 4;
}

/* Float counts of the per-call pieces (each aligned). */
typedef struct sizes {
    int64_t qp;    /* B Lq A */
    int64_t kt;    /* B A ldk */
    int64_t o;     /* B Lq Dv */
    int64_t rows;  /* B Lq: lse, or the backward's dout·out */
    int64_t parts; /* B ceil(Lq / QBLOCK) A: the backward's d_w partials */
} sizes;

static bool call_sizes(const attn_additive *m, int64_t B, int64_t Lq, int64_t Lk, sizes *s)
{
    int64_t bq, bk, x;
    if (__builtin_mul_overflow(B, Lq, &bq) || __builtin_mul_overflow(B, Lk, &bk) ||
        bq > INT_MAX || bk > INT_MAX || kt_ld(Lk) > INT_MAX)
        return false;
    if (__builtin_mul_overflow(bq, m->A, &s->qp) || __builtin_mul_overflow(B, m->A, &x) ||
        __builtin_mul_overflow(x, kt_ld(Lk), &s->kt) || __builtin_mul_overflow(bq, m->Dv, &s->o) ||
        __builtin_mul_overflow(B * ((Lq + QBLOCK - 1) / QBLOCK), m->A, &s->parts))
        return false;
    s->rows = bq;
    int64_t parts[5] = {s->qp, s->kt, s->o, s->rows, s->parts}, total = 0;
    for (int i = 0; i < 5; i++)
        if (parts[i] > INT64_MAX / 8 || __builtin_add_overflow(total, align_floats(parts[i]), &total))
            return false;
    return total <= (int64_t)((SIZE_MAX - ALIGN) / 4) && total <= INT64_MAX / 4 - ALIGN;
}

static size_t activation_bytes(const sizes *s)
{
    return ALIGN + 4 * (size_t)(align_floats(s->qp) + align_floats(s->kt) +
                                align_floats(s->rows) + align_floats(s->parts));
}

static size_t saved_bytes(const sizes *s)
{
    return ALIGN + 4 * (size_t)(align_floats(s->qp) + align_floats(s->kt) + align_floats(s->o) +
                                align_floats(s->rows));
}

size_t attn_additive_activation_size(const attn_additive *add, uint32_t batch, uint32_t q_len,
                                     uint32_t kv_len)
{
    sizes s;
    if (!add || !batch || !q_len || !kv_len || !call_sizes(add, batch, q_len, kv_len, &s))
        return 0;
    return activation_bytes(&s);
}

size_t attn_additive_saved_size(const attn_additive *add, uint32_t batch, uint32_t q_len,
                                uint32_t kv_len)
{
    sizes s;
    if (!add || !batch || !q_len || !kv_len || !call_sizes(add, batch, q_len, kv_len, &s))
        return 0;
    return saved_bytes(&s);
}

static float *aligned_base(void *p)
{
    uintptr_t u = (uintptr_t)p;
    return (float *)((u + ALIGN - 1) & ~(uintptr_t)(ALIGN - 1));
}

/* ---- validated call -------------------------------------------------------------------------- */

typedef struct call {
    attn_additive_args a;
    attn_additive_grads g;
    int64_t B, Lq, Lk, ldk;
    float *qp, *kt, *o, *lse;       /* saved (training) or activations (inference) */
    float *dqp, *dkt, *drow, *parts; /* backward: in the activations */
} call;

typedef struct span {
    const char *name;
    const void *p;
    size_t bytes;
    int output;
} span;

static attn_status check_spans(attn_ctx *ctx, const span *s, int n)
{
    for (int i = 0; i < n; i++) {
        if (!s[i].p || !s[i].output)
            continue;
        uintptr_t a0 = (uintptr_t)s[i].p, a1 = a0 + s[i].bytes;
        for (int j = 0; j < n; j++) {
            if (j == i || !s[j].p)
                continue;
            uintptr_t b0 = (uintptr_t)s[j].p, b1 = b0 + s[j].bytes;
            if (a0 < b1 && b0 < a1)
                return attn_fail(ctx, ATTN_ERR_ALIAS, "%s overlaps %s", s[i].name, s[j].name);
        }
    }
    return ATTN_OK;
}

static attn_status check_call(attn_additive *m, const attn_additive_args *caller,
                              const attn_additive_grads *gcaller, call *c, int backward)
{
    attn_ctx *ctx = m->ctx;
    if (!caller)
        return attn_fail(ctx, ATTN_ERR_NULL_POINTER, "args is NULL");
    if (backward && !gcaller)
        return attn_fail(ctx, ATTN_ERR_NULL_POINTER, "grads is NULL");
    if (!attn_abi_size_known(caller->struct_size, args_sizes, sizeof args_sizes / sizeof args_sizes[0]))
        return attn_fail(ctx, ATTN_ERR_STRUCT_SIZE,
                         "args->struct_size = %zu is not the size of an attn_additive_args of "
                         "this or an earlier version (%zu): initialise with "
                         "attn_additive_args_init", caller->struct_size, sizeof(attn_additive_args));
    if (backward && !attn_abi_size_known(gcaller->struct_size, grads_sizes,
                                         sizeof grads_sizes / sizeof grads_sizes[0]))
        return attn_fail(ctx, ATTN_ERR_STRUCT_SIZE,
                         "grads->struct_size = %zu is not the size of an attn_additive_grads of "
                         "this or an earlier version (%zu): initialise with "
                         "attn_additive_grads_init", gcaller->struct_size,
                         sizeof(attn_additive_grads));
    memset(c, 0, sizeof *c);
    attn_additive_args *a = &c->a;
    attn_abi_load(a, &args_defaults, caller, caller->struct_size, sizeof *a);
    attn_additive_grads *g = &c->g;
    if (backward)
        attn_abi_load(g, &grads_defaults, gcaller, gcaller->struct_size, sizeof *g);
    const void *one = (const void *)1;
    const struct {
        const char *name;
        const void *p;
    } req[] = {
        {"args->query", a->query},
        {"args->key", a->key},
        {"args->value", a->value},
        {"args->out", backward ? one : a->out},
        {"args->w_q", a->w_q},
        {"args->w_k", a->w_k},
        {"args->bias", m->desc.bias ? a->bias : one},
        {"args->w", a->w},
        {"args->activations", a->activations},
        {"args->saved", backward ? a->saved : one},
        {"grads->dout", backward ? g->dout : one},
    };
    for (size_t i = 0; i < sizeof req / sizeof req[0]; i++)
        if (!req[i].p)
            return attn_fail(ctx, ATTN_ERR_NULL_POINTER, "%s is NULL", req[i].name);
    if (a->batch == 0 || a->q_len == 0 || a->kv_len == 0)
        return attn_fail(ctx, ATTN_ERR_ZERO_SIZE, "args->%s is 0",
                         a->batch == 0 ? "batch" : a->q_len == 0 ? "q_len" : "kv_len");
    if (!m->desc.bias && a->bias)
        return attn_fail(ctx, ATTN_ERR_BAD_OPTION,
                         "args->bias is set but the layer has no bias (desc->bias = 0)");
    if (backward && g->mode > ATTN_ADDITIVE_GRAD_ADD)
        return attn_fail(ctx, ATTN_ERR_BAD_OPTION, "grads->mode = %u is not an "
                         "attn_additive_grad_mode value", g->mode);
    if (backward && !m->desc.bias && g->d_bias)
        return attn_fail(ctx, ATTN_ERR_BAD_OPTION,
                         "grads->d_bias is set but the layer has no bias (desc->bias = 0)");
    int64_t B = a->batch, Lq = a->q_len, Lk = a->kv_len, lqlk;
    sizes s;
    if (!call_sizes(m, B, Lq, Lk, &s) || __builtin_mul_overflow(Lq, Lk, &lqlk) ||
        __builtin_mul_overflow(lqlk, B, &lqlk) || lqlk > INT64_MAX / 8)
        return attn_fail(ctx, ATTN_ERR_OVERFLOW,
                         "args: batch %lld x lengths %lld, %lld exceed the index range "
                         "(B * max(Lq, Lk) must fit an int)",
                         (long long)B, (long long)Lq, (long long)Lk);
    if (a->kv_lens)
        for (int64_t b = 0; b < B; b++)
            if (a->kv_lens[b] < 0 || a->kv_lens[b] > Lk)
                return attn_fail(ctx, ATTN_ERR_KV_LENS,
                                 "args->kv_lens[%lld] = %d is outside [0, kv_len = %lld]",
                                 (long long)b, (int)a->kv_lens[b], (long long)Lk);
    size_t need = activation_bytes(&s);
    if (a->activation_size < need)
        return attn_fail(ctx, ATTN_ERR_WORKSPACE_SIZE,
                         "args->activation_size = %zu is below attn_additive_activation_size() "
                         "= %zu", a->activation_size, need);
    size_t need_saved = saved_bytes(&s);
    if (a->saved && a->saved_size < need_saved)
        return attn_fail(ctx, ATTN_ERR_WORKSPACE_SIZE,
                         "args->saved_size = %zu is below attn_additive_saved_size() = %zu",
                         a->saved_size, need_saved);
    a->activation_size = need;
    if (a->saved)
        a->saved_size = need_saved;

    /* aliasing, by address span */
    size_t f = sizeof(float);
    int64_t A = m->A, bq = B * Lq, bk = B * Lk;
    span sp[24];
    int n = 0;
    sp[n++] = (span){"args->query", a->query, (size_t)(bq * m->Dq) * f, 0};
    sp[n++] = (span){"args->key", a->key, (size_t)(bk * m->Dk) * f, 0};
    sp[n++] = (span){"args->value", a->value, (size_t)(bk * m->Dv) * f, 0};
    sp[n++] = (span){"args->w_q", a->w_q, (size_t)(A * m->Dq) * f, 0};
    sp[n++] = (span){"args->w_k", a->w_k, (size_t)(A * m->Dk) * f, 0};
    sp[n++] = (span){"args->bias", a->bias, (size_t)A * f, 0};
    sp[n++] = (span){"args->w", a->w, (size_t)A * f, 0};
    sp[n++] = (span){"args->kv_lens", a->kv_lens, (size_t)B * 4, 0};
    sp[n++] = (span){"args->mask", a->mask, (size_t)lqlk, 0};
    sp[n++] = (span){"args->activations", a->activations, a->activation_size, 1};
    sp[n++] = (span){"args->saved", a->saved, a->saved_size, !backward};
    if (!backward) {
        sp[n++] = (span){"args->out", a->out, (size_t)(bq * m->Dv) * f, 1};
        sp[n++] = (span){"args->weights", a->weights, (size_t)lqlk * f, 1};
        sp[n++] = (span){"args->lse", a->lse, (size_t)bq * f, 1};
        sp[n++] = (span){"args->entropy", a->entropy, (size_t)bq * f, 1};
    } else {
        sp[n++] = (span){"grads->dout", g->dout, (size_t)(bq * m->Dv) * f, 0};
        sp[n++] = (span){"grads->d_query", g->d_query, (size_t)(bq * m->Dq) * f, 1};
        sp[n++] = (span){"grads->d_key", g->d_key, (size_t)(bk * m->Dk) * f, 1};
        sp[n++] = (span){"grads->d_value", g->d_value, (size_t)(bk * m->Dv) * f, 1};
        sp[n++] = (span){"grads->d_w_q", g->d_w_q, (size_t)(A * m->Dq) * f, 1};
        sp[n++] = (span){"grads->d_w_k", g->d_w_k, (size_t)(A * m->Dk) * f, 1};
        sp[n++] = (span){"grads->d_bias", g->d_bias, (size_t)A * f, 1};
        sp[n++] = (span){"grads->d_w", g->d_w, (size_t)A * f, 1};
    }
    attn_status st = check_spans(ctx, sp, n);
    if (st != ATTN_OK)
        return st;

    c->B = B, c->Lq = Lq, c->Lk = Lk, c->ldk = kt_ld(Lk);
    float *act = aligned_base(a->activations);
    float *mem = a->saved ? aligned_base(a->saved) : act;
    c->qp = mem;
    c->kt = mem + align_floats(s.qp);
    c->o = c->kt + align_floats(s.kt);
    c->lse = c->o + align_floats(s.o);
    c->dqp = act;
    c->dkt = act + align_floats(s.qp);
    c->drow = c->dkt + align_floats(s.kt);
    c->parts = c->drow + align_floats(s.rows);
    return ATTN_OK;
}

/* ---- products on the pool -------------------------------------------------------------------- */

enum { JOB_QP, JOB_KT, JOB_DQ, JOB_DWQ, JOB_DBIAS, JOB_DK, JOB_DWK, JOB_DROW };

typedef struct gemm_job {
    int kind;
    const attn_additive *m;
    const call *c;
    float *dst;
    float beta;
} gemm_job;

static int64_t gemm_items(const attn_additive *m, const call *c, int kind)
{
    int64_t rows_blocks = (c->B * c->Lq + ROW_BLOCK - 1) / ROW_BLOCK;
    int64_t key_blocks = c->B * ((c->Lk + ROW_BLOCK - 1) / ROW_BLOCK);
    int64_t feat_blocks = (m->A + FEAT_BLOCK - 1) / FEAT_BLOCK;
    switch (kind) {
    case JOB_QP:
    case JOB_DQ:
    case JOB_DROW:
        return rows_blocks;
    case JOB_KT:
    case JOB_DK:
        return key_blocks;
    default:
        return feat_blocks;
    }
}

static void gemm_item(void *arg, int64_t item, attn_scratch *w)
{
    (void)w;
    const gemm_job *j = arg;
    const attn_additive *m = j->m;
    const call *c = j->c;
    const attn_additive_args *a = &c->a;
    int A = (int)m->A, Dq = (int)m->Dq, Dk = (int)m->Dk, Dv = (int)m->Dv, ldk = (int)c->ldk;
    int64_t rows = c->B * c->Lq;
    int64_t r0 = item * ROW_BLOCK, mr = rows - r0 < ROW_BLOCK ? rows - r0 : ROW_BLOCK;
    int64_t kpb = (c->Lk + ROW_BLOCK - 1) / ROW_BLOCK, b = item / kpb;
    int64_t j0 = (item % kpb) * ROW_BLOCK, mk = c->Lk - j0 < ROW_BLOCK ? c->Lk - j0 : ROW_BLOCK;
    int64_t f0 = item * FEAT_BLOCK, mf = m->A - f0 < FEAT_BLOCK ? m->A - f0 : FEAT_BLOCK;
    switch (j->kind) {
    case JOB_QP: { /* qp rows = q W_qᵀ + bias */
        float *y = c->qp + r0 * A;
        if (a->bias)
            for (int64_t r = 0; r < mr; r++)
                memcpy(y + r * A, a->bias, (size_t)A * sizeof(float));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)mr, A, Dq, 1.0f,
                    a->query + r0 * Dq, Dq, a->w_q, Dq, a->bias ? 1.0f : 0.0f, y, A);
        break;
    }
    case JOB_KT: /* kt[b][:, j0 .. j0+mk) = W_k k[b, j0 .. j0+mk)ᵀ */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, A, (int)mk, Dk, 1.0f, a->w_k, Dk,
                    a->key + (b * c->Lk + j0) * Dk, Dk, 0.0f, c->kt + b * m->A * c->ldk + j0, ldk);
        break;
    case JOB_DROW: /* drow = dout · out per row */
        for (int64_t r = r0; r < r0 + mr; r++) {
            const float *x = c->g.dout + r * Dv, *y = c->o + r * Dv;
            float acc = 0.0f;
            for (int d = 0; d < Dv; d++)
                acc += x[d] * y[d];
            c->drow[r] = acc;
        }
        break;
    case JOB_DQ: /* d_query rows (+)= dqp W_q */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)mr, Dq, A, 1.0f,
                    c->dqp + r0 * A, A, a->w_q, Dq, j->beta, j->dst + r0 * Dq, Dq);
        break;
    case JOB_DWQ: /* d_w_q rows f0.. (+)= dqp[:, f0..]ᵀ q */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)mf, Dq, (int)rows, 1.0f,
                    c->dqp + f0, A, a->query, Dq, j->beta, j->dst + f0 * Dq, Dq);
        break;
    case JOB_DBIAS: { /* column sums of dqp, rows in order */
        float acc[FEAT_BLOCK];
        for (int64_t f = 0; f < mf; f++)
            acc[f] = 0.0f;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t f = 0; f < mf; f++)
                acc[f] += c->dqp[r * A + f0 + f];
        for (int64_t f = 0; f < mf; f++)
            j->dst[f0 + f] = j->beta != 0.0f ? j->dst[f0 + f] + acc[f] : acc[f];
        break;
    }
    case JOB_DK: /* d_key[b, j0..] (+)= dkt[b][:, j0..]ᵀ W_k */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)mk, Dk, A, 1.0f,
                    c->dkt + b * m->A * c->ldk + j0, ldk, a->w_k, Dk, j->beta,
                    j->dst + (b * c->Lk + j0) * Dk, Dk);
        break;
    default: /* JOB_DWK: d_w_k rows f0.. (+)= Σ_b dkt[b][f0.., :] k[b], batches in order */
        for (int64_t bb = 0; bb < c->B; bb++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)mf, Dk, (int)c->Lk, 1.0f,
                        c->dkt + (bb * m->A + f0) * c->ldk, ldk, a->key + bb * c->Lk * Dk, Dk,
                        bb == 0 ? j->beta : 1.0f, j->dst + f0 * Dk, Dk);
        break;
    }
}

static void run_gemm(attn_engine_section *s, const attn_additive *m, const call *c, int kind,
                     float *dst, float beta)
{
    gemm_job j = {kind, m, c, dst, beta};
    attn_engine_run(s, gemm_item, &j, gemm_items(m, c, kind));
}

/* ---- the additive score operation and the value source ----------------------------------------- */

/* The engine's problem with what the additive score operation needs beside it. */
typedef struct additive_call {
    attn_forward_call f; /* first: the engine's attn_problem is its first member */
    const float *kt;     /* [B][A][ldk] */
    int64_t ldk, A;
    const float *w;
    const float *value;  /* [B, Lk, Dv] */
} additive_call;

static void additive_tile(const attn_problem *p, const attn_task *t, int64_t r0, int64_t r1,
                          int64_t j0, int64_t n, float *scores, int ld)
{
    const additive_call *ac = (const additive_call *)(const void *)p;
    const float *kt = ac->kt + t->b * ac->A * ac->ldk + j0;
    for (int64_t r = r0; r < r1; r++)
        p->ctx->kernels->additive_row(scores + (r - r0) * ld, t->q + r * t->ldq, kt, ac->ldk, n,
                                      ac->A, ac->w, NULL, 0);
}

static const attn_score_op score_additive = {"additive", additive_tile};

/* Values only (the score operation reads the keys itself). */
static attn_kv_tile value_tile(const attn_kv_source *src, int which, int64_t b, int64_t g,
                               int64_t j0, int64_t n, float *convert, int raw)
{
    (void)which, (void)g, (void)n, (void)convert, (void)raw;
    attn_kv_tile t = {src->base[1] + (b * src->strides[1].batch + j0 * src->strides[1].seq) * 4,
                      src->ld[1], ATTN_DTYPE_F32};
    return t;
}

typedef struct block_job {
    additive_call *c;
    int64_t block_rows, blocks;
} block_job;

static void block_item(void *arg, int64_t item, attn_scratch *w)
{
    const block_job *job = arg;
    const attn_forward_call *c = &job->c->f;
    int64_t nb = job->blocks, b = item / nb, qb = nb - 1 - item % nb;
    attn_task t;
    attn_task_block(&c->p, w, &t, b, 0, qb * job->block_rows);
    /* the engine's block may be longer than ours: keep our rows (its key range, a union over
     * more rows, can only be wider, and rows outside their own keys are skipped per row) */
    if (t.rows > job->block_rows)
        t.rows = job->block_rows;
    attn_online_range(&c->p, &t, 0, c->p.kv_len, w->state, w->acc);
    attn_forward_finish_rows(c, b, w, t.rows, w->state, w->acc);
    if (c->weights_mode != ATTN_WEIGHTS_NONE)
        attn_write_weights(c, &t);
}

static void attention_forward(attn_engine_section *s, attn_additive *m, call *c)
{
    attn_ctx *ctx = m->ctx;
    const attn_additive_args *a = &c->a;
    additive_call ac;
    memset(&ac, 0, sizeof ac);
    attn_problem *p = &ac.f.p;
    p->ctx = ctx;
    p->batch = c->B, p->q_len = c->Lq, p->kv_len = c->Lk;
    p->vis.causal = (m->desc.flags & ATTN_CAUSAL) != 0;
    p->vis.window_left = p->vis.window_right = -1;
    p->vis.q_offset = c->Lk - c->Lq;
    p->kv_lens = a->kv_lens;
    p->q = c->qp;
    p->q_strides = (attn_strides){c->Lq * m->A, 0, m->A};
    p->ldq = (int)m->A;
    p->mask = a->mask;
    p->mask_strides = (attn_strides){c->Lq * c->Lk, 0, c->Lk};
    ac.f.kv.tile = value_tile;
    ac.f.kv.kernels = ctx->kernels;
    ac.f.kv.base[1] = (const char *)a->value;
    ac.f.kv.strides[1] = (attn_strides){c->Lk * m->Dv, 0, m->Dv};
    ac.f.kv.ld[1] = (int)m->Dv;
    ac.f.kv.dtype[0] = ac.f.kv.dtype[1] = ATTN_DTYPE_F32;
    ac.f.kv.width[0] = m->A, ac.f.kv.width[1] = m->Dv;
    p->kv = &ac.f.kv;
    p->score = &score_additive;
    p->entropy = a->entropy != NULL;
    ac.f.weights_mode = a->weights ? ATTN_WEIGHTS_PER_HEAD : ATTN_WEIGHTS_NONE;
    ac.f.out = a->saved ? c->o : a->out;
    ac.f.out_strides = (attn_strides){c->Lq * m->Dv, 0, m->Dv};
    ac.f.weights = a->weights;
    ac.f.weights_strides = (attn_strides){c->Lq * c->Lk, 0, c->Lk};
    ac.f.lse = a->saved ? c->lse : a->lse;
    ac.f.lse_strides = (attn_strides){c->Lq, 0, 1};
    ac.f.entropy = a->entropy;
    ac.f.entropy_strides = (attn_strides){c->Lq, 0, 1};
    ac.kt = c->kt, ac.ldk = c->ldk, ac.A = m->A, ac.w = a->w;
    /* Each row costs Lk·A tanh terms, so smaller blocks than the engine's cost little and give
     * the threads work when B·Lq is small; the choice depends on the problem only, never on
     * the thread count (results stay bitwise the same for any). */
    int64_t rows = attn_block_rows(ctx);
    while (rows > 32 && c->B * attn_tiles(c->Lq, rows) < 16)
        rows /= 2;
    block_job job = {&ac, rows, attn_tiles(c->Lq, rows)};
    attn_engine_run(s, block_item, &job, c->B * job.blocks);
}

attn_status attn_additive_forward(attn_additive *add, const attn_additive_args *args)
{
    if (!add)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "add is NULL");
    attn_status st = attn_call_enter(add->ctx);
    if (st != ATTN_OK)
        return st;
    call c;
    if ((st = check_call(add, args, NULL, &c, 0)) != ATTN_OK) {
        attn_call_leave(add->ctx);
        return st;
    }
    attn_engine_section s;
    attn_engine_begin(&s, add->ctx);
    run_gemm(&s, add, &c, JOB_QP, NULL, 0.0f);
    run_gemm(&s, add, &c, JOB_KT, NULL, 0.0f);
    attention_forward(&s, add, &c);
    attn_engine_end(&s);
    if (c.a.saved) { /* the training call kept out and lse in the saved buffer */
        const attn_additive_args *a = &c.a;
        memcpy(a->out, c.o, (size_t)(c.B * c.Lq * add->Dv) * sizeof(float));
        if (a->lse)
            memcpy(a->lse, c.lse, (size_t)(c.B * c.Lq) * sizeof(float));
    }
    attn_clear_error(add->ctx);
    attn_call_leave(add->ctx);
    return ATTN_OK;
}

/* ---- backward -------------------------------------------------------------------------------- */

typedef struct back_job {
    const attn_additive *m;
    const call *c;
    attn_visibility vis;
    int64_t qblocks; /* per batch entry */
    int64_t kblocks;
} back_job;

/* Visible key intervals of query rows i0 .. i0+rows-1 of batch b into w->lo / w->hi. */
static void row_spans(const back_job *j, attn_scratch *w, int64_t b, int64_t i0, int64_t rows,
                      int64_t *klo, int64_t *khi)
{
    const call *c = j->c;
    for (int64_t r = 0; r < rows; r++)
        w->row_i[r] = i0 + r;
    int64_t keys = c->a.kv_lens ? (int64_t)c->a.kv_lens[b] : c->Lk;
    attn_visible_rows(&j->vis, keys, w->row_i, rows, w->lo, w->hi, klo, khi);
}

/* One row against the keys [j0 + lo, j0 + hi) of a tile: scores with their tanh values into
 * tile (A × ATTN_TILE_K), then ds[0 .. hi-lo) = d loss / d s and, if p, the weights. */
static void row_grad(const back_job *j, attn_scratch *w, float *tile, int64_t b, int64_t i,
                     int64_t j0, int64_t lo, int64_t hi, const float *dp, float *ds, float *p)
{
    const attn_additive *m = j->m;
    const call *c = j->c;
    const attn_kernels *k = m->ctx->kernels;
    int64_t n = hi - lo, r = b * c->Lq + i;
    (void)w;
    k->additive_row(ds, c->qp + r * m->A, c->kt + b * m->A * c->ldk + j0 + lo, c->ldk, n, m->A,
                    c->a.w, tile, ATTN_TILE_K);
    float lse = c->lse[r], d = c->drow[r];
    const uint8_t *mask = c->a.mask ? c->a.mask + (b * c->Lq + i) * c->Lk + j0 + lo : NULL;
    for (int64_t x = 0; x < n; x++) {
        float pr = (mask && !mask[x]) ? 0.0f : expf(ds[x] - lse);
        if (p)
            p[x] = pr;
        ds[x] = pr * (dp[lo + x] - d);
    }
}

/* Pass Q: task (b, block of QBLOCK query rows): dqp rows and this task's d_w partial. */
static void pass_q_item(void *arg, int64_t item, attn_scratch *w)
{
    const back_job *j = arg;
    const attn_additive *m = j->m;
    const call *c = j->c;
    const attn_kernels *k = m->ctx->kernels;
    float *tile = m->tiles + (w - m->ctx->scratch) * ATTN_TILE_K * m->A;
    int64_t b = item / j->qblocks, i0 = (item % j->qblocks) * QBLOCK;
    int64_t rows = c->Lq - i0 < QBLOCK ? c->Lq - i0 : QBLOCK, A = m->A, Dv = m->Dv;
    float *part = c->parts + item * A, ds[ATTN_TILE_K];
    memset(part, 0, (size_t)A * sizeof(float));
    memset(c->dqp + (b * c->Lq + i0) * A, 0, (size_t)(rows * A) * sizeof(float));
    int64_t klo, khi;
    row_spans(j, w, b, i0, rows, &klo, &khi);
    const float *dout = c->g.dout + (b * c->Lq + i0) * Dv;
    for (int64_t j0 = klo; j0 < khi; j0 += ATTN_TILE_K) {
        int64_t n = khi - j0 < ATTN_TILE_K ? khi - j0 : ATTN_TILE_K;
        /* dP = dout vᵀ for the tile */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)n, (int)Dv, 1.0f,
                    dout, (int)Dv, c->a.value + (b * c->Lk + j0) * Dv, (int)Dv, 0.0f, w->scores,
                    ATTN_TILE_K);
        for (int64_t r = 0; r < rows; r++) {
            int64_t lo = w->lo[r] - j0, hi = w->hi[r] - j0;
            lo = lo < 0 ? 0 : lo;
            hi = hi > n ? n : hi;
            if (lo >= hi || c->lse[b * c->Lq + i0 + r] == -INFINITY)
                continue;
            row_grad(j, w, tile, b, i0 + r, j0, lo, hi, w->scores + r * ATTN_TILE_K, ds, NULL);
            k->additive_grad_q(c->dqp + (b * c->Lq + i0 + r) * A, part, ds, tile, ATTN_TILE_K,
                               hi - lo, A, c->a.w);
        }
    }
}

/* Pass K: task (b, block of ATTN_TILE_K keys): dkt columns and d_value rows. */
static void pass_k_item(void *arg, int64_t item, attn_scratch *w)
{
    const back_job *j = arg;
    const attn_additive *m = j->m;
    const call *c = j->c;
    const attn_kernels *k = m->ctx->kernels;
    float *tile = m->tiles + (w - m->ctx->scratch) * ATTN_TILE_K * m->A;
    int64_t b = item / j->kblocks, j0 = (item % j->kblocks) * ATTN_TILE_K;
    int64_t n = c->Lk - j0 < ATTN_TILE_K ? c->Lk - j0 : ATTN_TILE_K, A = m->A, Dv = m->Dv;
    float *dkt = c->dkt + b * A * c->ldk + j0, *dv = c->g.d_value;
    float ds[ATTN_TILE_K], pr[ATTN_TILE_K];
    for (int64_t a = 0; a < A; a++)
        memset(dkt + a * c->ldk, 0, (size_t)n * sizeof(float));
    if (dv && c->g.mode == ATTN_ADDITIVE_GRAD_SET)
        memset(dv + (b * c->Lk + j0) * Dv, 0, (size_t)(n * Dv) * sizeof(float));
    for (int64_t i0 = 0; i0 < c->Lq; i0 += QBLOCK) {
        int64_t rows = c->Lq - i0 < QBLOCK ? c->Lq - i0 : QBLOCK, klo, khi;
        row_spans(j, w, b, i0, rows, &klo, &khi);
        if (khi <= j0 || klo >= j0 + n)
            continue;
        const float *dout = c->g.dout + (b * c->Lq + i0) * Dv;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)n, (int)Dv, 1.0f,
                    dout, (int)Dv, c->a.value + (b * c->Lk + j0) * Dv, (int)Dv, 0.0f, w->scores,
                    ATTN_TILE_K);
        for (int64_t r = 0; r < rows; r++) {
            float *row = w->scores + r * ATTN_TILE_K;
            int64_t lo = w->lo[r] - j0, hi = w->hi[r] - j0;
            lo = lo < 0 ? 0 : lo;
            hi = hi > n ? n : hi;
            if (lo >= hi || c->lse[b * c->Lq + i0 + r] == -INFINITY) {
                memset(row, 0, (size_t)n * sizeof(float));
                continue;
            }
            row_grad(j, w, tile, b, i0 + r, j0, lo, hi, row, ds, pr);
            k->additive_grad_k(dkt + lo, c->ldk, ds, tile, ATTN_TILE_K, hi - lo, A, c->a.w);
            /* the row of P for d_value, zero outside [lo, hi) */
            memset(row, 0, (size_t)lo * sizeof(float));
            memcpy(row + lo, pr, (size_t)(hi - lo) * sizeof(float));
            memset(row + hi, 0, (size_t)(n - hi) * sizeof(float));
        }
        if (dv)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)n, (int)Dv, (int)rows,
                        1.0f, w->scores, ATTN_TILE_K, dout, (int)Dv, 1.0f,
                        dv + (b * c->Lk + j0) * Dv, (int)Dv);
    }
}

attn_status attn_additive_backward(attn_additive *add, const attn_additive_args *args,
                                   const attn_additive_grads *grads)
{
    if (!add)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "add is NULL");
    attn_status st = attn_call_enter(add->ctx);
    if (st != ATTN_OK)
        return st;
    call c;
    if ((st = check_call(add, args, grads, &c, 1)) != ATTN_OK) {
        attn_call_leave(add->ctx);
        return st;
    }
    const attn_additive_grads *g = &c.g;
    float beta = g->mode == ATTN_ADDITIVE_GRAD_ADD ? 1.0f : 0.0f;
    back_job j = {add, &c, {0, -1, -1, 0}, (c.Lq + QBLOCK - 1) / QBLOCK,
                  (c.Lk + ATTN_TILE_K - 1) / ATTN_TILE_K};
    j.vis.causal = (add->desc.flags & ATTN_CAUSAL) != 0;
    j.vis.q_offset = c.Lk - c.Lq;
    int need_q = g->d_query || g->d_w_q || g->d_bias || g->d_w;
    int need_k = g->d_key || g->d_w_k || g->d_value;
    attn_engine_section s;
    attn_engine_begin(&s, add->ctx);
    if (need_q || need_k)
        run_gemm(&s, add, &c, JOB_DROW, NULL, 0.0f);
    if (need_q) {
        attn_engine_run(&s, pass_q_item, &j, c.B * j.qblocks);
        if (g->d_w) { /* the partials in task order */
            int64_t tasks = c.B * j.qblocks;
            for (int64_t a = 0; a < add->A; a++) {
                float acc = 0.0f;
                for (int64_t t = 0; t < tasks; t++)
                    acc += c.parts[t * add->A + a];
                g->d_w[a] = beta != 0.0f ? g->d_w[a] + acc : acc;
            }
        }
        if (g->d_query)
            run_gemm(&s, add, &c, JOB_DQ, g->d_query, beta);
        if (g->d_w_q)
            run_gemm(&s, add, &c, JOB_DWQ, g->d_w_q, beta);
        if (g->d_bias)
            run_gemm(&s, add, &c, JOB_DBIAS, g->d_bias, beta);
    }
    if (need_k) {
        attn_engine_run(&s, pass_k_item, &j, c.B * j.kblocks);
        if (g->d_key)
            run_gemm(&s, add, &c, JOB_DK, g->d_key, beta);
        if (g->d_w_k)
            run_gemm(&s, add, &c, JOB_DWK, g->d_w_k, beta);
    }
    attn_engine_end(&s);
    attn_clear_error(add->ctx);
    attn_call_leave(add->ctx);
    return ATTN_OK;
}
