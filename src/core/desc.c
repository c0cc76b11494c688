/* The descriptor: defaults, prefix-compatible loading and validation. */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "core/abi.h"
#include "core/context.h"

static const attn_desc desc_defaults = {
    .struct_size = sizeof(attn_desc),
    .q_heads = 1,
    .kv_heads = 1,
    .qk_dim = 64,
    .v_dim = 64,
    .scale = 0.0f,
    .flags = 0,
    .window_left = -1,
    .window_right = -1,
    .masked_rows = ATTN_MASKED_ROWS_ZERO,
    .allocator = NULL,
    .threads = 0,
    .ops = 0,
    .dropout = 0.0f,
    .kv_dtype = ATTN_KV_F32,
};

/* 0.1's attn_desc ended with `threads`; its sizeof included the tail padding. */
#define DESC_FIELDS_0_1 offsetof(attn_desc, ops)
#define DESC_SIZE_0_1 ((DESC_FIELDS_0_1 + _Alignof(attn_desc) - 1) / _Alignof(attn_desc) * _Alignof(attn_desc))

/* The sizes of attn_desc this library accepts, oldest first. */
static const size_t desc_sizes[] = {
    DESC_FIELDS_0_1,   /* the 0.1 fields */
    DESC_SIZE_0_1,     /* 0.1's sizeof (its padding is where `ops` now lies: 0 is the default) */
    sizeof(attn_desc), /* 0.2: + ops, dropout, kv_dtype */
};

void attn_desc_init_size(attn_desc *desc, size_t size)
{
    attn_abi_init(desc, size, &desc_defaults, sizeof desc_defaults);
}

void(attn_desc_init)(attn_desc *desc)
{
    attn_desc_init_size(desc, DESC_SIZE_0_1);
}

#define KNOWN_OPS (ATTN_OP_FORWARD | ATTN_OP_BACKWARD)

attn_status attn_desc_resolve(const attn_desc *caller, attn_desc *d)
{
    if (!caller)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "desc is NULL");
    if (!attn_abi_size_known(caller->struct_size, desc_sizes, sizeof desc_sizes / sizeof desc_sizes[0]))
        return attn_fail(NULL, ATTN_ERR_STRUCT_SIZE,
                         "desc->struct_size = %zu is not the size of an attn_desc of this or an "
                         "earlier version (%zu): initialise with attn_desc_init",
                         caller->struct_size, sizeof(attn_desc));
    attn_abi_load(d, &desc_defaults, caller, caller->struct_size, sizeof *d);
    if (d->allocator && (!d->allocator->alloc || !d->allocator->free))
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "desc->allocator has a NULL %s function",
                         d->allocator->alloc ? "free" : "alloc");
    if (d->q_heads == 0)
        return attn_fail(NULL, ATTN_ERR_ZERO_SIZE, "desc->q_heads is 0");
    if (d->kv_heads == 0)
        return attn_fail(NULL, ATTN_ERR_ZERO_SIZE, "desc->kv_heads is 0");
    if (d->qk_dim == 0)
        return attn_fail(NULL, ATTN_ERR_ZERO_SIZE, "desc->qk_dim is 0");
    if (d->v_dim == 0)
        return attn_fail(NULL, ATTN_ERR_ZERO_SIZE, "desc->v_dim is 0");
    if (d->q_heads % d->kv_heads != 0)
        return attn_fail(NULL, ATTN_ERR_HEADS, "desc->kv_heads = %u does not divide q_heads = %u",
                         d->kv_heads, d->q_heads);
    if (d->qk_dim > ATTN_MAX_HEAD_DIM)
        return attn_fail(NULL, ATTN_ERR_LIMIT, "desc->qk_dim = %u exceeds ATTN_MAX_HEAD_DIM = %u",
                         d->qk_dim, ATTN_MAX_HEAD_DIM);
    if (d->v_dim > ATTN_MAX_HEAD_DIM)
        return attn_fail(NULL, ATTN_ERR_LIMIT, "desc->v_dim = %u exceeds ATTN_MAX_HEAD_DIM = %u",
                         d->v_dim, ATTN_MAX_HEAD_DIM);
    if (!isfinite(d->scale))
        return attn_fail(NULL, ATTN_ERR_SCALE, "desc->scale = %g is not finite", (double)d->scale);
    const uint32_t known = ATTN_CAUSAL | ATTN_BLAS_THREADS_UNTOUCHED;
    if (d->flags & ~known)
        return attn_fail(NULL, ATTN_ERR_BAD_OPTION, "desc->flags = 0x%x has unknown bits 0x%x",
                         d->flags, d->flags & ~known);
    if (d->ops & ~(uint32_t)KNOWN_OPS)
        return attn_fail(NULL, ATTN_ERR_BAD_OPTION, "desc->ops = 0x%x has unknown bits 0x%x",
                         d->ops, d->ops & ~(uint32_t)KNOWN_OPS);
    if (d->window_left < -1 || d->window_left > ATTN_MAX_DISTANCE)
        return attn_fail(NULL, ATTN_ERR_WINDOW,
                         "desc->window_left = %lld is outside [-1, %lld]",
                         (long long)d->window_left, (long long)ATTN_MAX_DISTANCE);
    if (d->window_right < -1 || d->window_right > ATTN_MAX_DISTANCE)
        return attn_fail(NULL, ATTN_ERR_WINDOW,
                         "desc->window_right = %lld is outside [-1, %lld]",
                         (long long)d->window_right, (long long)ATTN_MAX_DISTANCE);
    if (d->masked_rows != ATTN_MASKED_ROWS_ZERO && d->masked_rows != ATTN_MASKED_ROWS_NAN)
        return attn_fail(NULL, ATTN_ERR_BAD_OPTION,
                         "desc->masked_rows = %u is not an attn_masked_rows", d->masked_rows);
    if (!(d->dropout >= 0.0f && d->dropout < 1.0f))
        return attn_fail(NULL, ATTN_ERR_BAD_OPTION, "desc->dropout = %g is outside [0, 1)",
                         (double)d->dropout);
    if (d->kv_dtype != ATTN_KV_F32 && d->kv_dtype != ATTN_KV_F16 && d->kv_dtype != ATTN_KV_BF16)
        return attn_fail(NULL, ATTN_ERR_BAD_OPTION, "desc->kv_dtype = %u is not an attn_kv_dtype",
                         d->kv_dtype);
    if (d->threads > ATTN_MAX_THREADS)
        return attn_fail(NULL, ATTN_ERR_LIMIT, "desc->threads = %u exceeds ATTN_MAX_THREADS = %u",
                         d->threads, ATTN_MAX_THREADS);
    if (d->ops == 0)
        d->ops = ATTN_OP_FORWARD;
    d->struct_size = sizeof *d;
    return ATTN_OK;
}
