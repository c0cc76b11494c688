/*
 * attn_merge: partial attention results over disjoint key sets, combined through their
 * log-sum-exp into the result over the union. It needs no context: the arguments are checked
 * with the table-driven tensor checks (core/tensor.h), failures go to the calling thread's
 * error buffer, and the combination runs on the calling thread with a small stack buffer.
 *
 * Per row the weights are c_k = exp(lse_k - lse) = exp(lse_k - M) / l with
 * l = sum_k exp(lse_k - M), M the largest finite lse_k, and lse = M + ln l. Everything is in
 * double and the parts are added in their order, so a call gives the same bits every time and
 * adds about one float rounding to what the parts carry. Double costs nothing measurable when
 * the parts come from memory (the loop waits for memory either way: 11 GB/s both in double
 * and in float for 8 parts of 8 MiB on one thread); in cache, float would be 1.5x faster.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/abi.h"
#include "core/context.h"
#include "core/tensor.h"

static const attn_merge_args args_defaults = {
    .struct_size = sizeof(attn_merge_args),
    .masked_rows = ATTN_MASKED_ROWS_ZERO,
};

static const size_t args_sizes[] = {sizeof(attn_merge_args)}; /* 0.2 */

void attn_merge_args_init_size(attn_merge_args *args, size_t size)
{
    attn_abi_init(args, size, &args_defaults, sizeof args_defaults);
}

/* Columns combined per pass over the parts: the double accumulator stays in L1. */
#define MERGE_CHUNK 512

/* The tensors of one part, or of the outputs, as the checks see them. */
typedef struct merge_pair {
    char out_name[40], lse_name[40];
    attn_tensor t[2]; /* out, lse */
} merge_pair;

static void pair_init(merge_pair *p, const char *prefix, const void *out, attn_strides out_s,
                      const void *lse, attn_strides lse_s, uint32_t use, const int64_t shape[4])
{
    snprintf(p->out_name, sizeof p->out_name, "%sout", prefix);
    snprintf(p->lse_name, sizeof p->lse_name, "%slse", prefix);
    attn_tensor o = {p->out_name, out, ATTN_DTYPE_F32, use, {shape[0], shape[1], shape[2], shape[3]},
                     out_s, 0, 0};
    attn_tensor l = {p->lse_name, lse, ATTN_DTYPE_F32, use, {shape[0], shape[1], shape[2], 1},
                     lse_s, 0, 0};
    p->t[0] = o;
    p->t[1] = l;
}

static void part_pair(merge_pair *p, const attn_merge_part *part, uint32_t k, const int64_t shape[4])
{
    char prefix[32];
    snprintf(prefix, sizeof prefix, "parts[%u].", (unsigned)k);
    pair_init(p, prefix, part->out, part->out_strides, part->lse, part->lse_strides,
              ATTN_USE_INPUT | ATTN_USE_REQUIRED, shape);
}

/* {0, 0, 0} means contiguous, for every tensor of a merge. */
static attn_status default_strides(attn_tensor *t)
{
    if (!t->data || t->strides.batch || t->strides.head || t->strides.seq)
        return ATTN_OK;
    if (!attn_strides_contiguous(t->shape[1], t->shape[2], t->shape[3], &t->strides))
        return attn_fail(NULL, ATTN_ERR_OVERFLOW,
                         "args->%s: %lld x %lld x %lld x %lld elements overflow the index range",
                         t->name, (long long)t->shape[0], (long long)t->shape[1],
                         (long long)t->shape[2], (long long)t->shape[3]);
    return ATTN_OK;
}

static attn_status pair_layout(merge_pair *p)
{
    attn_status st;
    if ((st = default_strides(&p->t[0])) != ATTN_OK || (st = default_strides(&p->t[1])) != ATTN_OK)
        return st;
    return attn_tensors_check_layout(NULL, "args", p->t, 2);
}

static int same_view(const attn_tensor *a, const attn_tensor *b)
{
    return a->data == b->data && a->strides.batch == b->strides.batch &&
           a->strides.head == b->strides.head && a->strides.seq == b->strides.seq;
}

/* Everything before anything is written, in the order docs/errors.md gives. On success `outs`
 * holds the outputs' resolved views. */
static attn_status merge_check(const attn_merge_args *caller, attn_merge_args *a, merge_pair *outs)
{
    if (!caller)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "args is NULL");
    if (!attn_abi_size_known(caller->struct_size, args_sizes, sizeof args_sizes / sizeof args_sizes[0]))
        return attn_fail(NULL, ATTN_ERR_STRUCT_SIZE,
                         "args->struct_size = %zu is not the size of an attn_merge_args of this "
                         "or an earlier version (%zu): initialise with attn_merge_args_init",
                         caller->struct_size, sizeof(attn_merge_args));
    attn_abi_load(a, &args_defaults, caller, caller->struct_size, sizeof *a);

    const int64_t shape[4] = {a->batch, a->heads, a->q_len, a->v_dim};
    attn_status st;
    merge_pair part;

    /* pointers */
    if (!a->parts)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "args->parts is NULL");
    pair_init(outs, "", a->out, a->out_strides, a->lse, a->lse_strides, ATTN_USE_OUTPUT, shape);
    outs->t[0].use |= ATTN_USE_REQUIRED;
    if ((st = attn_tensors_check_present(NULL, "args", outs->t, 2)) != ATTN_OK)
        return st;
    for (uint32_t k = 0; k < a->n_parts; k++) {
        part_pair(&part, &a->parts[k], k, shape);
        if ((st = attn_tensors_check_present(NULL, "args", part.t, 2)) != ATTN_OK)
            return st;
    }
    /* sizes, limits, options */
    if (a->n_parts == 0 || a->batch == 0 || a->heads == 0 || a->q_len == 0 || a->v_dim == 0)
        return attn_fail(NULL, ATTN_ERR_ZERO_SIZE, "args->%s is 0",
                         a->n_parts == 0 ? "n_parts" : a->batch == 0 ? "batch"
                         : a->heads == 0 ? "heads" : a->q_len == 0 ? "q_len" : "v_dim");
    if (a->v_dim > ATTN_MAX_HEAD_DIM)
        return attn_fail(NULL, ATTN_ERR_LIMIT, "args->v_dim = %u exceeds ATTN_MAX_HEAD_DIM = %u",
                         (unsigned)a->v_dim, (unsigned)ATTN_MAX_HEAD_DIM);
    if (a->masked_rows != ATTN_MASKED_ROWS_ZERO && a->masked_rows != ATTN_MASKED_ROWS_NAN)
        return attn_fail(NULL, ATTN_ERR_BAD_OPTION,
                         "args->masked_rows = %u is not an attn_masked_rows", (unsigned)a->masked_rows);
    /* strides and extents: the outputs, then each part */
    if ((st = pair_layout(outs)) != ATTN_OK)
        return st;
    for (uint32_t k = 0; k < a->n_parts; k++) {
        part_pair(&part, &a->parts[k], k, shape);
        if ((st = pair_layout(&part)) != ATTN_OK)
            return st;
    }
    /* aliasing: each output against each part's tensors (inputs may overlap each other), then
     * the outputs against each other. out (lse) may be exactly parts[0].out (lse): every
     * element is read before the element at the same place is written. */
    for (uint32_t k = 0; k < a->n_parts; k++) {
        part_pair(&part, &a->parts[k], k, shape);
        (void)pair_layout(&part); /* resolves the strides; checked above */
        for (int o = 0; o < 2; o++) {
            attn_tensor t[3] = {outs->t[o], part.t[0], part.t[1]};
            if (k == 0 && same_view(&t[0], &t[1 + o]))
                t[1 + o].data = NULL;
            if ((st = attn_tensors_check_alias(NULL, "args", t, 3)) != ATTN_OK)
                return st;
        }
    }
    return attn_tensors_check_alias(NULL, "args", outs->t, 2);
}

typedef double acc_t;

/*
 * The column loops: a group of up to 4 parts folded into the accumulator in one pass, in part
 * order, acc = (((acc + c0 p0) + c1 p1) + c2 p2) + c3 p3, or without the leading acc for the
 * first group. The order of the additions is that of a fold one part at a time, so the grouping
 * changes no bit; it only reads and writes the accumulator once per 4 parts.
 */
#define FOLD_LOOP(expr)                                                                          \
    for (int64_t d = 0; d < w; d++)                                                              \
        acc[d] = expr
static void fold_group(acc_t *restrict acc, const acc_t *c, const float *const *p, int cnt,
                       int first, int64_t w)
{
    const float *restrict p0 = p[0], *restrict p1 = p[cnt > 1 ? 1 : 0],
                *restrict p2 = p[cnt > 2 ? 2 : 0], *restrict p3 = p[cnt > 3 ? 3 : 0];
    const acc_t c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3];
    if (first) {
        switch (cnt) {
        case 1: FOLD_LOOP(c0 * p0[d]); break;
        case 2: FOLD_LOOP(c0 * p0[d] + c1 * p1[d]); break;
        case 3: FOLD_LOOP(c0 * p0[d] + c1 * p1[d] + c2 * p2[d]); break;
        default: FOLD_LOOP(c0 * p0[d] + c1 * p1[d] + c2 * p2[d] + c3 * p3[d]); break;
        }
    } else {
        switch (cnt) {
        case 1: FOLD_LOOP(acc[d] + c0 * p0[d]); break;
        case 2: FOLD_LOOP(acc[d] + c0 * p0[d] + c1 * p1[d]); break;
        case 3: FOLD_LOOP(acc[d] + c0 * p0[d] + c1 * p1[d] + c2 * p2[d]); break;
        default: FOLD_LOOP(acc[d] + c0 * p0[d] + c1 * p1[d] + c2 * p2[d] + c3 * p3[d]); break;
        }
    }
}
#undef FOLD_LOOP

/* Offset of [b, h, i] in a validated view; strides {0, 0, 0} are contiguous (no overflow:
 * checked before). */
static int64_t view_offset(const attn_strides *s, const attn_merge_args *a, int64_t width,
                           int64_t b, int64_t h, int64_t i)
{
    if (!s->batch && !s->head && !s->seq)
        return ((b * a->heads + h) * a->q_len + i) * width;
    return attn_tensor_offset(s, b, h, i);
}

static float part_lse(const attn_merge_args *a, uint32_t k, int64_t b, int64_t h, int64_t i)
{
    return a->parts[k].lse[view_offset(&a->parts[k].lse_strides, a, 1, b, h, i)];
}

static void merge_rows(const attn_merge_args *a, const attn_tensor *out_t, const attn_tensor *lse_t)
{
    const uint32_t n = a->n_parts;
    const int64_t Dv = a->v_dim;
    const float masked_value = a->masked_rows == ATTN_MASKED_ROWS_NAN ? NAN : 0.0f;
    acc_t acc[MERGE_CHUNK];

    for (int64_t b = 0; b < a->batch; b++)
        for (int64_t h = 0; h < a->heads; h++)
            for (int64_t i = 0; i < a->q_len; i++) {
                /* the row's largest finite lse, and whether a NaN or +inf is among them */
                double M = -INFINITY;
                int any = 0, nan = 0;
                for (uint32_t k = 0; k < n; k++) {
                    float x = part_lse(a, k, b, h, i);
                    if (x == -INFINITY)
                        continue;
                    any = 1;
                    if (isnan(x))
                        nan = 1;
                    else if (x > M)
                        M = x;
                }
                float *orow = a->out + attn_tensor_offset(&out_t->strides, b, h, i);
                float row_lse;
                if (!any) {
                    for (int64_t d = 0; d < Dv; d++)
                        orow[d] = masked_value;
                    row_lse = -INFINITY;
                } else if (nan || M == INFINITY) {
                    for (int64_t d = 0; d < Dv; d++)
                        orow[d] = NAN;
                    row_lse = nan ? NAN : INFINITY;
                } else {
                    double l = 0.0;
                    for (uint32_t k = 0; k < n; k++) {
                        float x = part_lse(a, k, b, h, i);
                        if (x != -INFINITY)
                            l += exp((double)x - M);
                    }
                    double inv_l = 1.0 / l;
                    /* Column chunks: every part's piece of a chunk is read before the chunk is
                     * written, which makes out == parts[0].out safe. */
                    for (int64_t d0 = 0; d0 < Dv; d0 += MERGE_CHUNK) {
                        int64_t w = Dv - d0 < MERGE_CHUNK ? Dv - d0 : MERGE_CHUNK;
                        acc_t c[4] = {0, 0, 0, 0};
                        const float *p[4];
                        int cnt = 0, first = 1;
                        for (uint32_t k = 0; k < n; k++) {
                            float x = part_lse(a, k, b, h, i);
                            if (x == -INFINITY)
                                continue; /* its out row is never read */
                            /* exp(x - lse) = exp(x - M) / l, without the rounding of
                             * lse = M + ln l (which loses ln l entirely when M is huge) */
                            c[cnt] = (acc_t)(exp((double)x - M) * inv_l);
                            p[cnt++] = a->parts[k].out +
                                       view_offset(&a->parts[k].out_strides, a, Dv, b, h, i) + d0;
                            if (cnt == 4) {
                                fold_group(acc, c, p, cnt, first, w);
                                cnt = first = 0;
                            }
                        }
                        if (cnt)
                            fold_group(acc, c, p, cnt, first, w);
                        for (int64_t d = 0; d < w; d++)
                            orow[d0 + d] = (float)acc[d];
                    }
                    row_lse = (float)(M + log(l));
                }
                /* after the row's last read of parts[0].lse: lse == parts[0].lse is safe */
                if (a->lse)
                    a->lse[attn_tensor_offset(&lse_t->strides, b, h, i)] = row_lse;
            }
}

attn_status attn_merge(const attn_merge_args *args)
{
    attn_merge_args a;
    merge_pair outs;
    attn_status st = merge_check(args, &a, &outs);
    if (st != ATTN_OK)
        return st;
    merge_rows(&a, &outs.t[0], &outs.t[1]);
    return ATTN_OK;
}
