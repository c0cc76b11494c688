/* Validation of attn_forward's arguments: everything is checked before anything is written. */
#include <limits.h>
#include <stdint.h>

#include "attention/instance.h"
#include "core/checked.h"

/* A tensor's shape as the call sees it: counts per axis (batch, head, seq) and row width. */
typedef struct view {
    const char *name;
    const void *data;
    size_t elem_size;
    attn_strides s;
    int64_t batch, heads, seq, width;
} view;

/* Largest element offset the view addresses, plus one; false on int64 overflow. */
static bool view_extent(const view *t, int64_t *extent)
{
    int64_t a, b, c, sum;
    if (!attn_mul_i64(t->batch - 1, t->s.batch, &a) || !attn_mul_i64(t->heads - 1, t->s.head, &b) ||
        !attn_mul_i64(t->seq - 1, t->s.seq, &c) || !attn_add_i64(a, b, &sum) ||
        !attn_add_i64(sum, c, &sum) || !attn_add_i64(sum, t->width, &sum))
        return false;
    /* The byte offset must be representable as a pointer difference too. */
    if (sum > PTRDIFF_MAX / (int64_t)t->elem_size)
        return false;
    *extent = sum;
    return true;
}

static attn_status check_view(attn_ctx *ctx, const view *t, int64_t *extent)
{
    if (t->s.batch < 0 || t->s.head < 0 || t->s.seq < 0)
        return attn_fail(ctx, ATTN_ERR_STRIDE,
                         "args->%s_strides = {%lld, %lld, %lld} has a negative stride", t->name,
                         (long long)t->s.batch, (long long)t->s.head, (long long)t->s.seq);
    if (!view_extent(t, extent))
        return attn_fail(ctx, ATTN_ERR_OVERFLOW,
                         "args->%s: shape [%lld, %lld, %lld, %lld] with strides {%lld, %lld, %lld} "
                         "overflows the index range", t->name, (long long)t->batch,
                         (long long)t->heads, (long long)t->seq, (long long)t->width,
                         (long long)t->s.batch, (long long)t->s.head, (long long)t->s.seq);
    return ATTN_OK;
}

/* Q, K, V rows feed BLAS: consecutive rows must not overlap and the stride must fit an int. */
static attn_status check_rows(attn_ctx *ctx, const view *t, int *ld)
{
    if (t->seq > 1 && t->s.seq < t->width)
        return attn_fail(ctx, ATTN_ERR_STRIDE,
                         "args->%s_strides.seq = %lld is below the row width %lld", t->name,
                         (long long)t->s.seq, (long long)t->width);
    int64_t lead = t->seq > 1 ? t->s.seq : t->width;
    if (lead > INT_MAX)
        return attn_fail(ctx, ATTN_ERR_OVERFLOW,
                         "args->%s_strides.seq = %lld exceeds the BLAS index range %d", t->name,
                         (long long)lead, INT_MAX);
    *ld = (int)lead;
    return ATTN_OK;
}

/* Outputs: no two elements may share memory. Sufficient test: sorted by stride, every axis with
 * more than one index must step past everything the inner axes span. */
static attn_status check_distinct(attn_ctx *ctx, const view *t)
{
    int64_t stride[3] = {t->s.batch, t->s.head, t->s.seq};
    int64_t count[3] = {t->batch, t->heads, t->seq};
    for (int i = 1; i < 3; i++) /* insertion sort of three axes by stride */
        for (int j = i; j > 0 && stride[j] < stride[j - 1]; j--) {
            int64_t ts = stride[j], tc = count[j];
            stride[j] = stride[j - 1], count[j] = count[j - 1];
            stride[j - 1] = ts, count[j - 1] = tc;
        }
    int64_t span = t->width; /* cannot overflow: bounded by the extent checked before */
    for (int i = 0; i < 3; i++) {
        if (count[i] <= 1)
            continue;
        if (stride[i] < span)
            return attn_fail(ctx, ATTN_ERR_STRIDE,
                             "args->%s_strides = {%lld, %lld, %lld} make output elements overlap",
                             t->name, (long long)t->s.batch, (long long)t->s.head,
                             (long long)t->s.seq);
        span = stride[i] * (count[i] - 1) + span;
    }
    return ATTN_OK;
}

typedef struct range {
    const char *name;
    uintptr_t lo, hi; /* [lo, hi) in bytes; lo == hi: absent */
} range;

static range range_of(const char *name, const void *p, int64_t elems, size_t elem_size)
{
    range r = {name, (uintptr_t)p, (uintptr_t)p};
    if (p)
        r.hi = r.lo + (uintptr_t)elems * elem_size;
    return r;
}

static bool overlaps(range a, range b)
{
    return a.lo < a.hi && b.lo < b.hi && a.lo < b.hi && b.lo < a.hi;
}

attn_status attn_validate_args(attn_ctx *ctx, const attn_args *a, attn_instance *inst)
{
    const attn_desc *d = &ctx->desc;
    if (!a)
        return attn_fail(ctx, ATTN_ERR_NULL_POINTER, "args is NULL");
    if (a->struct_size != sizeof(attn_args))
        return attn_fail(ctx, ATTN_ERR_STRUCT_SIZE,
                         "args->struct_size = %zu, expected %zu: initialise with attn_args_init",
                         a->struct_size, sizeof(attn_args));
    static const char *const required_names[] = {"q", "k", "v", "out"};
    const void *required[] = {a->q, a->k, a->v, a->out};
    for (int i = 0; i < 4; i++)
        if (!required[i])
            return attn_fail(ctx, ATTN_ERR_NULL_POINTER, "args->%s is NULL", required_names[i]);
    if (a->batch == 0 || a->q_len == 0 || a->kv_len == 0)
        return attn_fail(ctx, ATTN_ERR_ZERO_SIZE, "args->%s is 0",
                         a->batch == 0 ? "batch" : a->q_len == 0 ? "q_len" : "kv_len");
    if (a->weights_mode != ATTN_WEIGHTS_NONE && a->weights_mode != ATTN_WEIGHTS_PER_HEAD &&
        a->weights_mode != ATTN_WEIGHTS_HEAD_MEAN)
        return attn_fail(ctx, ATTN_ERR_BAD_OPTION, "args->weights_mode = %d is not an attn_weights_mode",
                         (int)a->weights_mode);
    if (a->weights_mode == ATTN_WEIGHTS_NONE && a->weights)
        return attn_fail(ctx, ATTN_ERR_BAD_OPTION,
                         "args->weights is set but args->weights_mode is ATTN_WEIGHTS_NONE");
    if (a->weights_mode != ATTN_WEIGHTS_NONE && !a->weights)
        return attn_fail(ctx, ATTN_ERR_NULL_POINTER,
                         "args->weights is NULL but args->weights_mode asks for weights");

    int64_t B = a->batch, Lq = a->q_len, Lk = a->kv_len;
    int64_t Hq = d->q_heads, Hkv = d->kv_heads;
    view q = {"q", a->q, sizeof(float), a->q_strides, B, Hq, Lq, d->qk_dim};
    view k = {"k", a->k, sizeof(float), a->k_strides, B, Hkv, Lk, d->qk_dim};
    view v = {"v", a->v, sizeof(float), a->v_strides, B, Hkv, Lk, d->v_dim};
    view o = {"out", a->out, sizeof(float), a->out_strides, B, Hq, Lq, d->v_dim};
    view mk = {"mask", a->mask, 1, a->mask_strides, B, Hq, Lq, Lk};
    view bs = {"bias", a->bias, sizeof(float), a->bias_strides, B, Hq, Lq, Lk};
    int64_t eq, ek, ev, eo, emk = 0, ebs = 0;
    attn_status st;
    if ((st = check_view(ctx, &q, &eq)) || (st = check_view(ctx, &k, &ek)) ||
        (st = check_view(ctx, &v, &ev)) || (st = check_view(ctx, &o, &eo)) ||
        (a->mask && (st = check_view(ctx, &mk, &emk))) ||
        (a->bias && (st = check_view(ctx, &bs, &ebs))))
        return st;
    if ((st = check_rows(ctx, &q, &inst->ldq)) || (st = check_rows(ctx, &k, &inst->ldk)) ||
        (st = check_rows(ctx, &v, &inst->ldv)) || (st = check_distinct(ctx, &o)))
        return st;

    /* Dense outputs: their element counts must fit too. */
    int64_t bh, rows_total, mean_rows, weights_total = 0;
    if (!attn_mul_i64(B, Hq, &bh) || !attn_mul_i64(bh, Lq, &rows_total) ||
        rows_total > PTRDIFF_MAX / (int64_t)sizeof(float) || !attn_mul_i64(B, Lq, &mean_rows) ||
        (a->weights_mode != ATTN_WEIGHTS_NONE &&
         (!attn_mul_i64(a->weights_mode == ATTN_WEIGHTS_PER_HEAD ? rows_total : mean_rows, Lk,
                        &weights_total) ||
          weights_total > PTRDIFF_MAX / (int64_t)sizeof(float))))
        return attn_fail(ctx, ATTN_ERR_OVERFLOW,
                         "args->weights/lse/entropy: %lld x %u heads x %lld x %lld elements overflow the index range",
                         (long long)B, d->q_heads, (long long)Lq, (long long)Lk);

    if (a->q_offset != ATTN_Q_OFFSET_DEFAULT &&
        (a->q_offset < -ATTN_MAX_DISTANCE || a->q_offset > ATTN_MAX_DISTANCE))
        return attn_fail(ctx, ATTN_ERR_OFFSET, "args->q_offset = %lld is outside [%lld, %lld]",
                         (long long)a->q_offset, (long long)-ATTN_MAX_DISTANCE,
                         (long long)ATTN_MAX_DISTANCE);
    if (a->kv_lens)
        for (int64_t b = 0; b < B; b++)
            if (a->kv_lens[b] < 0 || a->kv_lens[b] > Lk)
                return attn_fail(ctx, ATTN_ERR_KV_LENS,
                                 "args->kv_lens[%lld] = %d is outside [0, kv_len = %lld]",
                                 (long long)b, (int)a->kv_lens[b], (long long)Lk);

    /* Outputs must not overlap inputs or each other: a write would change what is still read. */
    range outputs[] = {range_of("out", a->out, eo, sizeof(float)),
                       range_of("weights", a->weights, weights_total, sizeof(float)),
                       range_of("lse", a->lse, rows_total, sizeof(float)),
                       range_of("entropy", a->entropy, rows_total, sizeof(float))};
    range inputs[] = {range_of("q", a->q, eq, sizeof(float)),
                      range_of("k", a->k, ek, sizeof(float)),
                      range_of("v", a->v, ev, sizeof(float)),
                      range_of("mask", a->mask, emk, 1),
                      range_of("bias", a->bias, ebs, sizeof(float)),
                      range_of("kv_lens", a->kv_lens, a->kv_lens ? B : 0, sizeof(int32_t))};
    for (size_t i = 0; i < sizeof outputs / sizeof outputs[0]; i++) {
        for (size_t j = 0; j < sizeof inputs / sizeof inputs[0]; j++)
            if (overlaps(outputs[i], inputs[j]))
                return attn_fail(ctx, ATTN_ERR_ALIAS, "args->%s overlaps args->%s",
                                 outputs[i].name, inputs[j].name);
        for (size_t j = i + 1; j < sizeof outputs / sizeof outputs[0]; j++)
            if (overlaps(outputs[i], outputs[j]))
                return attn_fail(ctx, ATTN_ERR_ALIAS, "args->%s overlaps args->%s",
                                 outputs[i].name, outputs[j].name);
    }

    inst->args = a;
    inst->vis.causal = (d->flags & ATTN_CAUSAL) != 0;
    inst->vis.window_left = d->window_left;
    inst->vis.window_right = d->window_right;
    inst->vis.q_offset = a->q_offset == ATTN_Q_OFFSET_DEFAULT ? Lk - Lq : a->q_offset;
    return ATTN_OK;
}
