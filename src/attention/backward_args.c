/*
 * attn_backward's arguments: defaults, prefix-compatible loading and validation, in the order
 * docs/errors.md gives: struct size, pointers, sizes, options, strides and extents, offsets,
 * kv_lens, aliasing.
 */
#include <stddef.h>

#include "attention/backward.h"
#include "attention/instance.h"
#include "core/abi.h"
#include "core/tensor.h"

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
    if ((st = attn_tensor_default_strides(ctx, "args", &t[T_LSE])) != ATTN_OK ||
        (st = attn_tensor_default_strides(ctx, "args", &t[T_DBIAS])) != ATTN_OK ||
        (st = attn_tensors_check_layout(ctx, "args", t, T_COUNT)) != ATTN_OK)
        return st;
    if ((st = attn_check_q_offset(ctx, a.q_offset)) != ATTN_OK ||
        (st = attn_check_kv_lens(ctx, a.kv_lens, B, Lk)) != ATTN_OK)
        return st;
    if ((st = attn_tensors_check_alias(ctx, "args", t, T_COUNT)) != ATTN_OK)
        return st;

    attn_instance inst = {B, Lq, Lk, a.q_offset, a.kv_lens, &t[T_Q], a.mask, a.mask_strides,
                          a.bias, a.bias_strides, a.dropout_seed, a.dropout_offset};
    attn_problem *p = &c->p;
    attn_problem_fill(p, ctx, &inst, &c->dropout);
    p->q_at_end = 0;
    p->entropy = 0;
    attn_kv_source_strided(&c->kv, ctx, &t[T_K], &t[T_V]);
    p->kv = &c->kv;
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
