/*
 * Typed tensor views and the checks every operation runs on the tensors of a call. An
 * operation lists its tensors (what each is, its shape, how it is used) and validates them in
 * three phases that keep the documented check order (pointers, then sizes and options, then
 * layouts, then aliasing; see docs/errors.md): the operation's own checks sit between them.
 */
#ifndef ATTN_CORE_TENSOR_H
#define ATTN_CORE_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <attn/attn.h>

/* Element types of tensors. */
typedef enum attn_dtype {
    ATTN_DTYPE_F32 = 0,
    ATTN_DTYPE_U8 = 1,  /* boolean masks */
    ATTN_DTYPE_I32 = 2, /* per-batch lengths */
    ATTN_DTYPE_F16 = 3, /* K and V with ATTN_KV_F16 */
    ATTN_DTYPE_BF16 = 4 /* K and V with ATTN_KV_BF16 */
} attn_dtype;

static inline size_t attn_dtype_size(uint32_t dtype)
{
    return dtype == ATTN_DTYPE_U8 ? 1 : dtype == ATTN_DTYPE_F16 || dtype == ATTN_DTYPE_BF16 ? 2 : 4;
}

/* The tensor dtype of K and V for a descriptor's kv_dtype. */
static inline uint32_t attn_kv_tensor_dtype(uint32_t kv_dtype)
{
    return kv_dtype == ATTN_KV_F16 ? ATTN_DTYPE_F16 : kv_dtype == ATTN_KV_BF16 ? ATTN_DTYPE_BF16 : ATTN_DTYPE_F32;
}

/* attn_tensor.use bits. */
#define ATTN_USE_INPUT 0x1u     /* read by the call */
#define ATTN_USE_OUTPUT 0x2u    /* written: no two elements may share memory, and its address
                                   span may not overlap any other tensor's */
#define ATTN_USE_REQUIRED 0x4u  /* NULL is ATTN_ERR_NULL_POINTER */
#define ATTN_USE_BLAS_ROWS 0x8u /* rows are BLAS operands: rows do not overlap and the seq
                                   stride (the leading dimension) fits an int */

/* A 4-D view [batch][head][seq][width]; the width axis is contiguous. */
typedef struct attn_tensor {
    const char *name;     /* as in messages: "q" gives "args->q", "args->q_strides.batch" */
    const void *data;     /* NULL: absent (an error when ATTN_USE_REQUIRED) */
    uint32_t dtype;       /* an attn_dtype */
    uint32_t use;         /* ATTN_USE_* */
    int64_t shape[4];     /* batch, heads, seq, width; all >= 1 */
    attn_strides strides; /* elements */
    /* Set by attn_tensors_check_layout: */
    int64_t extent;       /* one past the largest element offset the view reaches */
    int ld;               /* BLAS leading dimension (ATTN_USE_BLAS_ROWS) */
} attn_tensor;

/* Element offset of [b, h, i, 0]. */
static inline int64_t attn_tensor_offset(const attn_strides *s, int64_t b, int64_t h, int64_t i)
{
    return b * s->batch + h * s->head + i * s->seq;
}

/* Phase 1: every required tensor is present. `owner` names the struct in messages ("args"). */
attn_status attn_tensors_check_present(attn_ctx *ctx, const char *owner, const attn_tensor *t,
                                       size_t n);

/* Phase 2 (present tensors only): strides not negative, every reachable offset (and its byte
 * offset) fits the index types, BLAS rows, distinct output elements. Fills extent and ld. */
attn_status attn_tensors_check_layout(attn_ctx *ctx, const char *owner, attn_tensor *t, size_t n);

/* Phase 3: no output's address span overlaps another tensor's (by span, not by element). */
attn_status attn_tensors_check_alias(attn_ctx *ctx, const char *owner, const attn_tensor *t,
                                     size_t n);

/* An optional output whose strides are all 0 gets the contiguous ones of its shape (absent
 * tensors and explicit strides are left alone); ATTN_ERR_OVERFLOW if they do not fit. */
attn_status attn_tensor_default_strides(attn_ctx *ctx, const char *owner, attn_tensor *t);

/* Contiguous strides of [batch, heads, seq, width] into *s; false if they overflow int64. */
bool attn_strides_contiguous(int64_t heads, int64_t seq, int64_t width, attn_strides *s);

#endif
