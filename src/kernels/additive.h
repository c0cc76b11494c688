/*
 * Kernels of additive (Bahdanau) attention: the fused score
 *   s[j] = sum_a w[a] tanh(qp[a] + kt[a][j])
 * of one projected query row against a tile of projected keys stored transposed (kt[a][j], so
 * that a vector holds consecutive keys and no horizontal sum is needed), and the two gradient
 * kernels of the backward pass. The tanh of every variant follows one algorithm (tanh_poly.h),
 * so every variant meets the same bound, ATTN_TANH_MAX_ULP.
 */
#ifndef ATTN_KERNELS_ADDITIVE_H
#define ATTN_KERNELS_ADDITIVE_H

#include <stddef.h>
#include <stdint.h>

/* y[k] = tanh(x[k]) for k < n, within ATTN_TANH_MAX_ULP ulp of the exact value (measured in
 * tests/test_kernels.c); tanh(±0) = ±0, tanh(±inf) = ±1, NaN stays NaN. y may be x. */
typedef void (*attn_tanh_fn)(float *y, const float *x, size_t n);

/*
 * One query row against n keys:
 *   s[j] = sum over a < A, in increasing a, of w[a] * tanh(qp[a] + kt[a * ldk + j]),  j < n,
 * and, when t is not NULL, t[a * ldt + j] = that tanh (what the backward kernels read).
 */
typedef void (*attn_additive_row_fn)(float *s, const float *qp, const float *kt, int64_t ldk,
                                     int64_t n, int64_t A, const float *w, float *t, int64_t ldt);

/*
 * The query side of the backward for one row, from ds[j] = d loss / d s[j] and the row's
 * tanh values t[a * ldt + j] (j < n):
 *   dqp[a] += w[a] * sum_j ds[j] (1 - t_aj^2),   dw[a] += sum_j ds[j] t_aj,   a < A.
 */
typedef void (*attn_additive_grad_q_fn)(float *dqp, float *dw, const float *ds, const float *t,
                                        int64_t ldt, int64_t n, int64_t A, const float *w);

/* The key side: dkt[a * lddk + j] += w[a] * ds[j] * (1 - t_aj^2) for a < A, j < n. */
typedef void (*attn_additive_grad_k_fn)(float *dkt, int64_t lddk, const float *ds,
                                        const float *t, int64_t ldt, int64_t n, int64_t A,
                                        const float *w);

#endif
