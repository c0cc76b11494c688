/* The checks of attn_tensor lists: see tensor.h. */
#include <limits.h>
#include <stdbool.h>

#include "core/checked.h"
#include "core/context.h"
#include "core/tensor.h"

attn_status attn_tensors_check_present(attn_ctx *ctx, const char *owner, const attn_tensor *t,
                                       size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((t[i].use & ATTN_USE_REQUIRED) && !t[i].data)
            return attn_fail(ctx, ATTN_ERR_NULL_POINTER, "%s->%s is NULL", owner, t[i].name);
    return ATTN_OK;
}

/* Largest element offset the view addresses, plus one; false on overflow of int64 or of the
 * byte offset (a pointer difference). */
static bool extent_of(const attn_tensor *t, int64_t *extent)
{
    int64_t a, b, c, sum;
    if (!attn_mul_i64(t->shape[0] - 1, t->strides.batch, &a) ||
        !attn_mul_i64(t->shape[1] - 1, t->strides.head, &b) ||
        !attn_mul_i64(t->shape[2] - 1, t->strides.seq, &c) || !attn_add_i64(a, b, &sum) ||
        !attn_add_i64(sum, c, &sum) || !attn_add_i64(sum, t->shape[3], &sum))
        return false;
    if (sum > PTRDIFF_MAX / (int64_t)attn_dtype_size(t->dtype))
        return false;
    *extent = sum;
    return true;
}

static const char *const axis_names[3] = {"batch", "head", "seq"};

static int64_t stride_of(const attn_strides *s, int axis)
{
    return axis == 0 ? s->batch : axis == 1 ? s->head : s->seq;
}

/* Output elements must be distinct. Sufficient test: sorted by stride, every axis with more
 * than one index steps past everything the inner axes span. Some layouts with no shared
 * element fail it (axes that interleave, such as strides {0, 3, 2} of a [1, 2, 3, 1] view),
 * and the rule is documented as such. */
static attn_status check_distinct(attn_ctx *ctx, const char *owner, const attn_tensor *t)
{
    int axis[3] = {0, 1, 2};
    for (int i = 1; i < 3; i++) /* insertion sort of three axes by stride */
        for (int j = i; j > 0 && stride_of(&t->strides, axis[j]) < stride_of(&t->strides, axis[j - 1]); j--) {
            int tmp = axis[j];
            axis[j] = axis[j - 1], axis[j - 1] = tmp;
        }
    int64_t span = t->shape[3]; /* cannot overflow: bounded by the extent checked before */
    for (int i = 0; i < 3; i++) {
        int64_t count = t->shape[axis[i]], stride = stride_of(&t->strides, axis[i]);
        if (count <= 1)
            continue;
        if (stride < span)
            return attn_fail(ctx, ATTN_ERR_STRIDE,
                             "%s->%s_strides.%s = %lld is below the %lld elements the inner axes "
                             "span: output elements would share memory (strides {%lld, %lld, %lld})",
                             owner, t->name, axis_names[axis[i]], (long long)stride,
                             (long long)span, (long long)t->strides.batch,
                             (long long)t->strides.head, (long long)t->strides.seq);
        span = stride * (count - 1) + span;
    }
    return ATTN_OK;
}

/* BLAS operands: consecutive rows do not overlap and the leading dimension fits an int. */
static attn_status check_rows(attn_ctx *ctx, const char *owner, attn_tensor *t)
{
    int64_t width = t->shape[3], seq = t->shape[2];
    if (seq > 1 && t->strides.seq < width)
        return attn_fail(ctx, ATTN_ERR_STRIDE, "%s->%s_strides.seq = %lld is below the row width %lld",
                         owner, t->name, (long long)t->strides.seq, (long long)width);
    int64_t lead = seq > 1 ? t->strides.seq : width;
    if (lead > INT_MAX)
        return attn_fail(ctx, ATTN_ERR_OVERFLOW,
                         "%s->%s_strides.seq = %lld exceeds the BLAS index range %d", owner,
                         t->name, (long long)lead, INT_MAX);
    t->ld = (int)lead;
    return ATTN_OK;
}

attn_status attn_tensors_check_layout(attn_ctx *ctx, const char *owner, attn_tensor *t, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!t[i].data)
            continue;
        for (int axis = 0; axis < 3; axis++)
            if (stride_of(&t[i].strides, axis) < 0)
                return attn_fail(ctx, ATTN_ERR_STRIDE, "%s->%s_strides.%s = %lld is negative",
                                 owner, t[i].name, axis_names[axis],
                                 (long long)stride_of(&t[i].strides, axis));
        if (!extent_of(&t[i], &t[i].extent))
            return attn_fail(ctx, ATTN_ERR_OVERFLOW,
                             "%s->%s: shape [%lld, %lld, %lld, %lld] with strides {%lld, %lld, "
                             "%lld} overflows the index range", owner, t[i].name,
                             (long long)t[i].shape[0], (long long)t[i].shape[1],
                             (long long)t[i].shape[2], (long long)t[i].shape[3],
                             (long long)t[i].strides.batch, (long long)t[i].strides.head,
                             (long long)t[i].strides.seq);
    }
    for (size_t i = 0; i < n; i++) {
        attn_status st;
        if (!t[i].data)
            continue;
        if ((t[i].use & ATTN_USE_BLAS_ROWS) && (st = check_rows(ctx, owner, &t[i])) != ATTN_OK)
            return st;
        if ((t[i].use & ATTN_USE_OUTPUT) && (st = check_distinct(ctx, owner, &t[i])) != ATTN_OK)
            return st;
    }
    return ATTN_OK;
}

static bool spans_overlap(const attn_tensor *a, const attn_tensor *b)
{
    uintptr_t alo = (uintptr_t)a->data, ahi = alo + (uintptr_t)a->extent * attn_dtype_size(a->dtype);
    uintptr_t blo = (uintptr_t)b->data, bhi = blo + (uintptr_t)b->extent * attn_dtype_size(b->dtype);
    return alo < bhi && blo < ahi;
}

attn_status attn_tensors_check_alias(attn_ctx *ctx, const char *owner, const attn_tensor *t,
                                     size_t n)
{
    /* Outputs in listing order, each against the inputs first and then the later outputs, so
     * the message names the pair a reader expects. */
    for (size_t i = 0; i < n; i++) {
        if (!(t[i].use & ATTN_USE_OUTPUT) || !t[i].data)
            continue;
        for (int pass = 0; pass < 2; pass++)
            for (size_t j = 0; j < n; j++) {
                int other_is_output = (t[j].use & ATTN_USE_OUTPUT) != 0;
                if (j == i || !t[j].data || other_is_output != pass || (pass && j < i))
                    continue;
                if (spans_overlap(&t[i], &t[j]))
                    return attn_fail(ctx, ATTN_ERR_ALIAS, "%s->%s overlaps %s->%s", owner,
                                     t[i].name, owner, t[j].name);
            }
    }
    return ATTN_OK;
}

bool attn_strides_contiguous(int64_t heads, int64_t seq, int64_t width, attn_strides *s)
{
    int64_t hs;
    if (!attn_mul_i64(seq, width, &hs) || !attn_mul_i64(heads, hs, &s->batch))
        return false;
    s->head = hs;
    s->seq = width;
    return true;
}

attn_status attn_tensor_default_strides(attn_ctx *ctx, const char *owner, attn_tensor *t)
{
    if (!t->data || t->strides.batch || t->strides.head || t->strides.seq)
        return ATTN_OK;
    if (!attn_strides_contiguous(t->shape[1], t->shape[2], t->shape[3], &t->strides))
        return attn_fail(ctx, ATTN_ERR_OVERFLOW,
                         "%s->%s: %lld x %lld x %lld x %lld elements overflow the index range",
                         owner, t->name, (long long)t->shape[0], (long long)t->shape[1],
                         (long long)t->shape[2], (long long)t->shape[3]);
    return ATTN_OK;
}
