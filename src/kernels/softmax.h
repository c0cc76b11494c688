/*
 * The fused softmax kernels as one table of slots. Every slot has a portable scalar kernel; an
 * instruction set overrides the slots it has a faster kernel for (see dispatch/dispatch.c), so a
 * new slot can ship with its scalar kernel alone. Variants implement the same contract and are
 * tested against the scalar one. A row is one query row of a score tile restricted to its
 * visible key range.
 */
#ifndef ATTN_KERNELS_SOFTMAX_H
#define ATTN_KERNELS_SOFTMAX_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/additive.h"
#include "kernels/dropout.h"
#include "kernels/softmax_state.h"

/* Where a row segment sits in the problem: kernels that key anything on positions (such as a
 * counter-based dropout mask) use these; the softmax itself does not. */
typedef struct attn_row_coord {
    int64_t batch, head; /* query head */
    int64_t row;         /* query position */
    int64_t col;         /* key position of element 0 of the segment */
} attn_row_coord;

/*
 * One online-softmax step over s[0..n): adds bias[j] (if bias), hides keys whose mask[j] is 0
 * (if mask), folds the row's maximum into st->m, overwrites s[j] with exp(s[j] - m_new) (0 for
 * hidden keys) and updates st->l (and st->u when `entropy`). Returns alpha = exp(m_old - m_new),
 * the factor the row's output accumulator must be multiplied by before adding this step's P*V.
 * NaN scores propagate into l (the row becomes NaN); -inf scores count as hidden.
 */
typedef float (*attn_online_row_fn)(float *s, size_t n, const float *bias, const uint8_t *mask,
                                    attn_row_state *st, int entropy, const attn_row_coord *at);

/*
 * Final probabilities of one row: p[j] = exp(s[j] + bias[j] - m) / l, 0 where mask[j] is 0;
 * stores p into dst[j], or adds it to dst[j] when `accumulate`. s is not modified.
 */
typedef void (*attn_probs_row_fn)(const float *s, size_t n, const float *bias,
                                  const uint8_t *mask, float m, float l, float *dst,
                                  int accumulate, const attn_row_coord *at);

/*
 * Dropout of one row segment (kernels/dropout.h gives the pinned mask): for k < n, the element
 * at column j = at->col + k of row (at->batch, at->head, at->row) becomes x[k] * d->scale if
 * kept and +0 if dropped (whatever its value, NaN included). The segment may start at any
 * column and have any length; n = 0 does nothing.
 */
typedef void (*attn_dropout_row_fn)(float *x, size_t n, const attn_row_coord *at,
                                    const attn_dropout *d);

/* The keep-mask of the same segment: keep[k] = 1 if column at->col + k is kept, 0 if dropped. */
typedef void (*attn_keep_row_fn)(uint8_t *keep, size_t n, const attn_row_coord *at,
                                 const attn_dropout *d);

/* Element types a key/value tile may be stored in (the values of the public attn_kv_dtype). */
enum { ATTN_WIDEN_F16 = 1, ATTN_WIDEN_BF16 = 2 };

/* dst[k] = the float value of the 16-bit element src[k] (IEEE binary16 for ATTN_WIDEN_F16,
 * bfloat16 for ATTN_WIDEN_BF16), k < n; exact (every such value is a float); a binary16 NaN
 * comes out quiet, with the rest of its payload. */
typedef void (*attn_widen_fn)(float *dst, const uint16_t *src, size_t n, uint32_t dtype);

/* dst[k] = src[k] rounded to the 16-bit type (ATTN_WIDEN_F16 or ATTN_WIDEN_BF16) to nearest
 * even, k < n; see attn_float_to_half / attn_float_to_bf16 for overflow and NaN. */
typedef void (*attn_narrow_fn)(uint16_t *dst, const float *src, size_t n, uint32_t dtype);

/* Most query rows the thin (streaming) kernels take: decoding's few rows per kv head. */
#define ATTN_THIN_ROWS 16

/*
 * Thin products for few query rows against a key/value tile, reading each K and V element once
 * (the BLAS would first copy them into packed panels). `dtype` is 0 for float elements or
 * ATTN_WIDEN_F16 / ATTN_WIDEN_BF16 for 16-bit ones, widened in registers.
 *   thin_scores: scores[r * ld + c] = scale * sum_d q[r * ldq + d] * k[c * ldk + d]
 *   thin_values: acc[r * ldacc + e] += sum_c p[r * ldp + c] * v[c * ldv + e]
 * for r < rows (<= ATTN_THIN_ROWS), c < n, d < dk, e < dv.
 */
typedef void (*attn_thin_scores_fn)(float *scores, int64_t ld, const float *q, int64_t ldq,
                                    int64_t rows, const void *k, int64_t ldk, uint32_t dtype,
                                    int64_t n, int64_t dk, float scale);
typedef void (*attn_thin_values_fn)(float *acc, int64_t ldacc, const float *p, int64_t ldp,
                                    int64_t rows, const void *v, int64_t ldv, uint32_t dtype,
                                    int64_t n, int64_t dv);

typedef struct attn_kernels {
    const char *name; /* the instruction set of the table: "scalar", "avx2", "avx512" */
    attn_online_row_fn online_row;
    attn_probs_row_fn probs_row;
    attn_dropout_row_fn dropout_row;
    attn_widen_fn widen;
    attn_narrow_fn narrow;
    attn_keep_row_fn keep_row;
    attn_thin_scores_fn thin_scores;
    attn_thin_values_fn thin_values;
    int thin_preferred; /* the thin kernels beat the BLAS here (set by the vector variants) */
    attn_tanh_fn tanh;                     /* additive attention (kernels/additive.h) */
    attn_additive_row_fn additive_row;
    attn_additive_grad_q_fn additive_grad_q;
    attn_additive_grad_k_fn additive_grad_k;
} attn_kernels;

/* Each variant writes the slots it implements into *t and leaves the others alone; every
 * kernel family has its own fill function per variant (softmax_*.c, dropout_*.c), and the
 * scalar ones together write every slot. A variant that was not compiled in writes nothing. */
void attn_kernels_fill_scalar(attn_kernels *t);
void attn_kernels_fill_avx2(attn_kernels *t);
void attn_kernels_fill_avx512(attn_kernels *t);
void attn_dropout_fill_scalar(attn_kernels *t);
void attn_widen_fill_scalar(attn_kernels *t);
void attn_widen_fill_avx2(attn_kernels *t);   /* F16C: dispatch checks the CPU has it */
void attn_widen_fill_avx512(attn_kernels *t);
void attn_narrow_fill_scalar(attn_kernels *t);
void attn_narrow_fill_avx2(attn_kernels *t);  /* F16C, like the widening */
void attn_narrow_fill_avx512(attn_kernels *t);
void attn_thin_fill_scalar(attn_kernels *t);
void attn_thin_fill_avx512(attn_kernels *t);
void attn_dropout_fill_avx2(attn_kernels *t);
void attn_dropout_fill_avx512(attn_kernels *t);
void attn_additive_fill_scalar(attn_kernels *t);
void attn_additive_fill_avx2(attn_kernels *t);
void attn_additive_fill_avx512(attn_kernels *t);

#endif
