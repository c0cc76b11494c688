/*
 * The tanh every kernel variant computes, in two branches:
 *   |x| <  TANH_SMALL: x + x^3 P(x^2), P of degree 4 in x^2 (a weighted minimax fit of
 *                      (tanh(x) - x) / x^3 on [0, TANH_SMALL]; 0.77 ulp in float arithmetic);
 *   |x| >= TANH_SMALL: sign(x) (1 - 2 / (exp(2 min(|x|, TANH_CLAMP)) + 1)). The result is at
 *                      least tanh(0.625) = 0.55 and 2 / (e + 1) at most 0.45, so the relative
 *                      errors of exp and of the division reach the result scaled by < 0.45 each.
 * Above TANH_CLAMP (where 1 - tanh(x) < 2^-28) the float result is 1. NaN propagates (the clamp
 * keeps NaN), ±inf gives ±1, and ±0 and tiny inputs come back unchanged.
 * ATTN_TANH_MAX_ULP is the bound the tests enforce on every variant against float64 tanh.
 */
#ifndef ATTN_KERNELS_TANH_POLY_H
#define ATTN_KERNELS_TANH_POLY_H

#define TANH_SMALL 0.625f
#define TANH_CLAMP 10.0f
#define TANH_P0 (-0.3333328068256378f)
#define TANH_P1 0.13331441581249237f
#define TANH_P2 (-0.05373971536755562f)
#define TANH_P3 0.0206390842795372f
#define TANH_P4 (-0.005704984534531832f)

#define ATTN_TANH_MAX_ULP 3.0

#endif
