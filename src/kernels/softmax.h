/*
 * The fused softmax kernels: one table of function pointers per instruction set. The scalar
 * table is complete and portable; vector tables implement the same contract and are tested
 * against it. A row is one query row of a score tile restricted to its visible key range.
 */
#ifndef ATTN_KERNELS_SOFTMAX_H
#define ATTN_KERNELS_SOFTMAX_H

#include <stddef.h>
#include <stdint.h>

/* Running online-softmax state of one query row. */
typedef struct attn_row_state {
    float m; /* running max of the visible scores; -inf while none was seen */
    float l; /* sum of exp(score - m) */
    float u; /* sum of exp(score - m) * (score - m): gives the entropy ln(l) - u / l */
} attn_row_state;

/*
 * One online-softmax step over s[0..n): adds bias[j] (if bias), hides keys whose mask[j] is 0
 * (if mask), folds the row's maximum into st->m, overwrites s[j] with exp(s[j] - m_new) (0 for
 * hidden keys) and updates st->l (and st->u when `entropy`). Returns alpha = exp(m_old - m_new),
 * the factor the row's output accumulator must be multiplied by before adding this step's P*V.
 * NaN scores propagate into l (the row becomes NaN); -inf scores count as hidden.
 */
typedef float (*attn_online_row_fn)(float *s, size_t n, const float *bias, const uint8_t *mask,
                                    attn_row_state *st, int entropy);

/*
 * Final probabilities of one row: p[j] = exp(s[j] + bias[j] - m) / l, 0 where mask[j] is 0;
 * stores p into dst[j], or adds it to dst[j] when `accumulate`. s is not modified.
 */
typedef void (*attn_probs_row_fn)(const float *s, size_t n, const float *bias,
                                  const uint8_t *mask, float m, float l, float *dst,
                                  int accumulate);

typedef struct attn_kernels {
    const char *name;
    attn_online_row_fn online_row;
    attn_probs_row_fn probs_row;
} attn_kernels;

/* Tables of each variant; NULL when the variant was not compiled in. */
const attn_kernels *attn_kernels_scalar(void);
const attn_kernels *attn_kernels_avx2(void);
const attn_kernels *attn_kernels_avx512(void);

#endif
