/*
 * Constants of the vector exp used by the SIMD kernels: exp(x) = 2^n * e^r with
 * n = round(x * log2(e)), r = x - n * ln2 (ln2 split in two for an exact product), and e^r from a
 * degree-6 polynomial on [-ln2/2, ln2/2] (Cephes' expf coefficients, max error about 1 ulp).
 * Inputs below EXP_UNDERFLOW return 0 (softmax only ever needs exp of x <= 0, and terms below
 * 2^-126 relative to the row maximum cannot change a float sum); NaN propagates.
 */
#ifndef ATTN_KERNELS_EXP_POLY_H
#define ATTN_KERNELS_EXP_POLY_H

#define EXP_LOG2E 1.44269504088896341f
#define EXP_LN2_HI 0.693359375f
#define EXP_LN2_LO (-2.12194440e-4f)
#define EXP_UNDERFLOW (-87.33654f) /* ln(2^-126): smallest input with a normal 2^n */
#define EXP_P0 1.9875691500e-4f
#define EXP_P1 1.3981999507e-3f
#define EXP_P2 8.3334519073e-3f
#define EXP_P3 4.1665795894e-2f
#define EXP_P4 1.6666665459e-1f
#define EXP_P5 5.0000001201e-1f

#endif
