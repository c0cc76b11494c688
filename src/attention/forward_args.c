/*
 * attn_forward's arguments: defaults, prefix-compatible loading and validation. Everything is
 * checked before anything is written, in the documented order: struct size, pointers, sizes,
 * options, strides and extents, offsets, kv_lens, aliasing.
 */
#include <stddef.h>
#include <stdint.h>

#include "attention/forward.h"
#include "attention/instance.h"
#include "core/abi.h"
#include "core/tensor.h"

static const attn_args args_defaults = {
    .struct_size = sizeof(attn_args),
    .q_offset = ATTN_Q_OFFSET_DEFAULT,
    .weights_mode = ATTN_WEIGHTS_NONE,
};

/* The sizes of attn_args this library accepts, oldest first. */
static const size_t args_sizes[] = {
    offsetof(attn_args, weights_strides), /* 0.1: through `entropy` */
    sizeof(attn_args),                    /* 0.2: + output strides, dropout key */
};

void attn_args_init_size(attn_args *args, size_t size)
{
    attn_abi_init(args, size, &args_defaults, sizeof args_defaults);
}

void(attn_args_init)(attn_args *args)
{
    attn_args_init_size(args, args_sizes[0]);
}

enum { T_Q, T_K, T_V, T_OUT, T_MASK, T_BIAS, T_KV_LENS, T_WEIGHTS, T_LSE, T_ENTROPY, T_COUNT };

attn_status attn_forward_load(attn_ctx *ctx, const attn_args *caller, attn_args *a)
{
    if (!caller)
        return attn_fail(ctx, ATTN_ERR_NULL_POINTER, "args is NULL");
    if (!attn_abi_size_known(caller->struct_size, args_sizes, sizeof args_sizes / sizeof args_sizes[0]))
        return attn_fail(ctx, ATTN_ERR_STRUCT_SIZE,
                         "args->struct_size = %zu is not the size of an attn_args of this or an "
                         "earlier version (%zu): initialise with attn_args_init",
                         caller->struct_size, sizeof(attn_args));
    attn_abi_load(a, &args_defaults, caller, caller->struct_size, sizeof *a);
    return ATTN_OK;
}

attn_status attn_forward_check(attn_ctx *ctx, const attn_args *caller, attn_forward_call *c)
{
    attn_args a;
    attn_status st = attn_forward_load(ctx, caller, &a);
    return st != ATTN_OK ? st : attn_forward_check_loaded(ctx, &a, c, -1);
}

attn_status attn_forward_check_loaded(attn_ctx *ctx, const attn_args *args, attn_forward_call *c,
                                      int64_t cache_kv_len)
{
    const attn_desc *d = &ctx->desc;
    const attn_args a = *args;
    int cached = cache_kv_len >= 0; /* K and V come from a cache: args->k, v, kv_lens unused */
    int64_t B = a.batch, Lq = a.q_len, Lk = cached ? cache_kv_len : a.kv_len;
    int64_t Hq = d->q_heads, Hkv = d->kv_heads, Dk = d->qk_dim, Dv = d->v_dim;
    int64_t Hw = a.weights_mode == ATTN_WEIGHTS_HEAD_MEAN ? 1 : Hq;
    const uint32_t in = ATTN_USE_INPUT, out = ATTN_USE_OUTPUT, req = ATTN_USE_REQUIRED,
                   rows = ATTN_USE_BLAS_ROWS;
    attn_tensor t[T_COUNT] = {
        [T_Q] = {"q", a.q, ATTN_DTYPE_F32, in | req | rows, {B, Hq, Lq, Dk}, a.q_strides, 0, 0},
        [T_K] = {"k", cached ? NULL : a.k, attn_kv_tensor_dtype(d->kv_dtype), in | req | rows,
                 {B, Hkv, Lk, Dk}, a.k_strides, 0, 0},
        [T_V] = {"v", cached ? NULL : a.v, attn_kv_tensor_dtype(d->kv_dtype), in | req | rows,
                 {B, Hkv, Lk, Dv}, a.v_strides, 0, 0},
        [T_OUT] = {"out", a.out, ATTN_DTYPE_F32, out | req, {B, Hq, Lq, Dv}, a.out_strides, 0, 0},
        [T_MASK] = {"mask", a.mask, ATTN_DTYPE_U8, in, {B, Hq, Lq, Lk}, a.mask_strides, 0, 0},
        [T_BIAS] = {"bias", a.bias, ATTN_DTYPE_F32, in, {B, Hq, Lq, Lk}, a.bias_strides, 0, 0},
        [T_KV_LENS] = {"kv_lens", cached ? NULL : a.kv_lens, ATTN_DTYPE_I32, in, {B, 1, 1, 1}, {1, 0, 0}, 0, 0},
        [T_WEIGHTS] = {"weights", a.weights, ATTN_DTYPE_F32, out, {B, Hw, Lq, Lk},
                       a.weights_strides, 0, 0},
        [T_LSE] = {"lse", a.lse, ATTN_DTYPE_F32, out, {B, Hq, Lq, 1}, a.lse_strides, 0, 0},
        [T_ENTROPY] = {"entropy", a.entropy, ATTN_DTYPE_F32, out, {B, Hq, Lq, 1},
                       a.entropy_strides, 0, 0},
    };
    attn_status st;
    if (cached) /* supplied by the cache */
        t[T_K].use = t[T_V].use = in;

    /* pointers */
    if ((st = attn_tensors_check_present(ctx, "args", t, T_COUNT)) != ATTN_OK)
        return st;
    if ((a.weights_mode == ATTN_WEIGHTS_PER_HEAD || a.weights_mode == ATTN_WEIGHTS_HEAD_MEAN) &&
        !a.weights)
        return attn_fail(ctx, ATTN_ERR_NULL_POINTER,
                         "args->weights is NULL but args->weights_mode asks for weights");
    /* sizes */
    if (a.batch == 0 || a.q_len == 0 || Lk == 0)
        return attn_fail(ctx, ATTN_ERR_ZERO_SIZE, "args->%s is 0",
                         a.batch == 0 ? "batch" : a.q_len == 0 ? "q_len" : "kv_len");
    /* options */
    if (a.weights_mode != ATTN_WEIGHTS_NONE && a.weights_mode != ATTN_WEIGHTS_PER_HEAD &&
        a.weights_mode != ATTN_WEIGHTS_HEAD_MEAN)
        return attn_fail(ctx, ATTN_ERR_BAD_OPTION,
                         "args->weights_mode = %u is not an attn_weights_mode", a.weights_mode);
    if (a.weights_mode == ATTN_WEIGHTS_NONE && a.weights)
        return attn_fail(ctx, ATTN_ERR_BAD_OPTION,
                         "args->weights is set but args->weights_mode is ATTN_WEIGHTS_NONE");
    if (cached && (a.k || a.v || a.kv_lens))
        return attn_fail(ctx, ATTN_ERR_BAD_OPTION,
                         "args->%s must be NULL when the keys and values come from a cache",
                         a.k ? "k" : a.v ? "v" : "kv_lens");
    if (!(d->ops & ATTN_OP_FORWARD))
        return attn_fail(ctx, ATTN_ERR_BAD_OPTION,
                         "the context was created without ATTN_OP_FORWARD in desc->ops");
    /* strides and extents: the tensors of the problem first, then the optional outputs */
    if ((st = attn_tensors_check_layout(ctx, "args", t, T_WEIGHTS)) != ATTN_OK)
        return st;
    if ((st = attn_tensor_default_strides(ctx, "args", &t[T_WEIGHTS])) != ATTN_OK ||
        (st = attn_tensor_default_strides(ctx, "args", &t[T_LSE])) != ATTN_OK ||
        (st = attn_tensor_default_strides(ctx, "args", &t[T_ENTROPY])) != ATTN_OK)
        return st;
    if (a.weights_mode == ATTN_WEIGHTS_HEAD_MEAN)
        t[T_WEIGHTS].strides.head = 0; /* one head: its stride is never used */
    if ((st = attn_tensors_check_layout(ctx, "args", t + T_WEIGHTS, T_COUNT - T_WEIGHTS)) != ATTN_OK)
        return st;
    /* offsets, kv_lens */
    if ((st = attn_check_q_offset(ctx, a.q_offset)) != ATTN_OK ||
        (!cached && (st = attn_check_kv_lens(ctx, a.kv_lens, B, Lk)) != ATTN_OK))
        return st;
    /* aliasing: a write would change what is still read */
    if ((st = attn_tensors_check_alias(ctx, "args", t, T_COUNT)) != ATTN_OK)
        return st;

    attn_instance inst = {B, Lq, Lk, a.q_offset, cached ? NULL : a.kv_lens, &t[T_Q], a.mask,
                          a.mask_strides, a.bias, a.bias_strides, a.dropout_seed,
                          a.dropout_offset};
    attn_problem *p = &c->p;
    attn_problem_fill(p, ctx, &inst, &c->dropout);
    p->q_at_end = cached && a.q_offset == ATTN_Q_OFFSET_DEFAULT;
    p->entropy = a.entropy != NULL;
    if (!cached) /* a cache's caller fills c->kv */
        attn_kv_source_strided(&c->kv, ctx, &t[T_K], &t[T_V]);
    p->kv = &c->kv;
    c->weights_mode = a.weights_mode;
    c->out = a.out;
    c->out_strides = a.out_strides;
    c->weights = a.weights;
    c->weights_strides = t[T_WEIGHTS].strides;
    c->lse = a.lse;
    c->lse_strides = t[T_LSE].strides;
    c->entropy = a.entropy;
    c->entropy_strides = t[T_ENTROPY].strides;
    return ATTN_OK;
}
