/*
 * attn_backward's arguments: defaults, prefix-compatible loading and validation, in the order
 * docs/errors.md gives: struct size, pointers, sizes, options, strides and extents, offsets,
 * kv_lens, aliasing.
 */
#include <stddef.h>

#include "attention/backward.h"
#include "core/abi.h"
#include "core/tensor.h"
#include "engine/score_op.h"

static const attn_backward_args args_defaults = {
    .struct_size = sizeof(attn_backward_args),
    .q_offset = ATTN_Q_OFFSET_DEFAULT,
};

static const size_t args_sizes[] = {sizeof(attn_backward_args)}; /* 0.2 */

void attn_backward_args_init_size(attn_backward_args *args, size_t size)
{
    attn_abi_init(args, size, &args_defaults, sizeof args_defaults);
}

enum {
    T_Q, T_K, T_V, T_OUT, T_DOUT, T_LSE, T_MASK, T_BIAS, T_KV_LENS,
    T_DQ, T_DK, T_DV, T_DBIAS, T_COUNT
};

static attn_status default_strides(attn_ctx *ctx, attn_tensor *t)
{
    if (!t->data || t->strides.batch || t->strides.head || t->strides.seq)
        return ATTN_OK;
    if (!attn_strides_contiguous(t->shape[1], t->shape[2], t->shape[3], &t->strides))
        return attn_fail(ctx, ATTN_ERR_OVERFLOW,
                         "args->%s: %lld x %lld x %lld x %lld elements overflow the index range",
                         t->name, (long long)t->shape[0], (long long)t->shape[1],
                         (long long)t->shape[2], (long long)t->shape[3]);
    return ATTN_OK;
}

attn_status attn_backward_check(attn_ctx *ctx, const attn_backward_args *caller,
                                attn_backward_call *c)
{
    const attn_desc *d = &ctx->desc;
    if (!caller)
        return attn_fail(ctx, ATTN_ERR_NULL_POINTER, "args is NULL");
    if (!attn_abi_size_known(caller->struct_size, args_sizes, sizeof args_sizes / sizeof args_sizes[0]))
        return attn_fail(ctx, ATTN_ERR_STRUCT_SIZE,
                         "args->struct_size = %zu is not the size of an attn_backward_args of "
                         "this or an earlier version (%zu): initialise with attn_backward_args_init",
                         caller->struct_size, sizeof(attn_backward_args));
    attn_backward_args a;
    attn_abi_load(&a, &args_defaults, caller, caller->struct_size, sizeof a);

    int64_t B = a.batch, Lq = a.q_len, Lk = a.kv_len;
    int64_t Hq = d->q_heads, Hkv = d->kv_heads, Dk = d->qk_dim, Dv = d->v_dim;
    int rb = a.bias && a.bias_strides.batch == 0, rh = a.bias && a.bias_strides.head == 0,
        rq = a.bias && a.bias_strides.seq == 0;
    const uint32_t in = ATTN_USE_INPUT, out = ATTN_USE_OUTPUT, req = ATTN_USE_REQUIRED,
                   rows = ATTN_USE_BLAS_ROWS;
    attn_tensor t[T_COUNT] = {
        [T_Q] = {"q", a.q, ATTN_DTYPE_F32, in | req | rows, {B, Hq, Lq, Dk}, a.q_strides, 0, 0},
        [T_K] = {"k", a.k, attn_kv_tensor_dtype(d->kv_dtype), in | req | rows, {B, Hkv, Lk, Dk}, a.k_strides, 0, 0},
        [T_V] = {"v", a.v, attn_kv_tensor_dtype(d->kv_dtype), in | req | rows, {B, Hkv, Lk, Dv}, a.v_strides, 0, 0},
        [T_OUT] = {"out", a.out, ATTN_DTYPE_F32, in | req, {B, Hq, Lq, Dv}, a.out_strides, 0, 0},
        [T_DOUT] = {"dout", a.dout, ATTN_DTYPE_F32, in | req | rows, {B, Hq, Lq, Dv},
                    a.dout_strides, 0, 0},
        [T_LSE] = {"lse", a.lse, ATTN_DTYPE_F32, in | req, {B, Hq, Lq, 1}, a.lse_strides, 0, 0},
        [T_MASK] = {"mask", a.mask, ATTN_DTYPE_U8, in, {B, Hq, Lq, Lk}, a.mask_strides, 0, 0},
        [T_BIAS] = {"bias", a.bias, ATTN_DTYPE_F32, in, {B, Hq, Lq, Lk}, a.bias_strides, 0, 0},
        [T_KV_LENS] = {"kv_lens", a.kv_lens, ATTN_DTYPE_I32, in, {B, 1, 1, 1}, {1, 0, 0}, 0, 0},
        [T_DQ] = {"dq", a.dq, ATTN_DTYPE_F32, out | req, {B, Hq, Lq, Dk}, a.dq_strides, 0, 0},
        [T_DK] = {"dk", a.dk, ATTN_DTYPE_F32, out | req, {B, Hkv, Lk, Dk}, a.dk_strides, 0, 0},
        [T_DV] = {"dv", a.dv, ATTN_DTYPE_F32, out | req, {B, Hkv, Lk, Dv}, a.dv_strides, 0, 0},
        [T_DBIAS] = {"dbias", a.dbias, ATTN_DTYPE_F32, out,
                     {rb ? 1 : B, rh ? 1 : Hq, rq ? 1 : Lq, Lk}, a.dbias_strides, 0, 0},
    };
    attn_status st;
    if ((st = attn_tensors_check_present(ctx, "args", t, T_COUNT)) != ATTN_OK)
        return st;
    if (a.batch == 0 || a.q_len == 0 || a.kv_len == 0)
        return attn_fail(ctx, ATTN_ERR_ZERO_SIZE, "args->%s is 0",
                         a.batch == 0 ? "batch" : a.q_len == 0 ? "q_len" : "kv_len");
    if (a.dbias && !a.bias)
        return attn_fail(ctx, ATTN_ERR_BAD_OPTION, "args->dbias is set but args->bias is NULL");
    if (!(d->ops & ATTN_OP_BACKWARD))
        return attn_fail(ctx, ATTN_ERR_BAD_OPTION,
                         "the context was created without ATTN_OP_BACKWARD in desc->ops");
    if ((st = default_strides(ctx, &t[T_LSE])) != ATTN_OK ||
        (st = default_strides(ctx, &t[T_DBIAS])) != ATTN_OK ||
        (st = attn_tensors_check_layout(ctx, "args", t, T_COUNT)) != ATTN_OK)
        return st;
    if (a.q_offset != ATTN_Q_OFFSET_DEFAULT &&
        (a.q_offset < -ATTN_MAX_DISTANCE || a.q_offset > ATTN_MAX_DISTANCE))
        return attn_fail(ctx, ATTN_ERR_OFFSET, "args->q_offset = %lld is outside [%lld, %lld]",
                         (long long)a.q_offset, (long long)-ATTN_MAX_DISTANCE,
                         (long long)ATTN_MAX_DISTANCE);
    if (a.kv_lens)
        for (int64_t b = 0; b < B; b++)
            if (a.kv_lens[b] < 0 || a.kv_lens[b] > Lk)
                return attn_fail(ctx, ATTN_ERR_KV_LENS,
                                 "args->kv_lens[%lld] = %d is outside [0, kv_len = %lld]",
                                 (long long)b, (int)a.kv_lens[b], (long long)Lk);
    if ((st = attn_tensors_check_alias(ctx, "args", t, T_COUNT)) != ATTN_OK)
        return st;

    attn_problem *p = &c->p;
    p->ctx = ctx;
    p->batch = B, p->q_len = Lq, p->kv_len = Lk;
    p->vis.causal = (d->flags & ATTN_CAUSAL) != 0;
    p->vis.window_left = d->window_left;
    p->vis.window_right = d->window_right;
    p->vis.q_offset = a.q_offset == ATTN_Q_OFFSET_DEFAULT ? Lk - Lq : a.q_offset;
    p->kv_lens = a.kv_lens;
    p->q_at_end = 0;
    p->q = a.q, p->q_strides = a.q_strides, p->ldq = t[T_Q].ld;
    p->mask = a.mask, p->mask_strides = a.mask_strides;
    p->bias = a.bias, p->bias_strides = a.bias_strides;
    attn_kv_source_strided(&c->kv, ctx, &t[T_K], &t[T_V]);
    p->kv = &c->kv;
    p->score = &attn_score_dot;
    p->entropy = 0;
    p->dropout = NULL;
    if (d->dropout > 0.0f) {
        c->dropout = attn_dropout_make(d->dropout, a.dropout_seed, a.dropout_offset, d->q_heads);
        p->dropout = &c->dropout;
    }
    c->out = a.out, c->out_strides = a.out_strides;
    c->dout = a.dout, c->dout_strides = a.dout_strides, c->lddo = t[T_DOUT].ld;
    c->lse = a.lse, c->lse_strides = t[T_LSE].strides;
    c->dq = a.dq, c->dq_strides = a.dq_strides;
    c->dk = a.dk, c->dk_strides = a.dk_strides;
    c->dv = a.dv, c->dv_strides = a.dv_strides;
    c->dbias = a.dbias, c->dbias_strides = t[T_DBIAS].strides;
    c->reduce_batch = a.dbias && rb;
    c->reduce_head = a.dbias && rh;
    c->reduce_rows = a.dbias && rq;
    return ATTN_OK;
}
