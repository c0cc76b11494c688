/*
 * The double-precision oracle: naive attention written straight from the semantics in
 * tests/data/reference/manifest.json, sharing no code with the library. It also returns, per
 * output element, the tolerance that a float32 implementation can be held to (see check.h).
 */
#ifndef ATTN_TEST_REFERENCE_H
#define ATTN_TEST_REFERENCE_H

#include <stdint.h>

#include <attn/attn.h>

typedef struct ref_problem {
    int64_t B, Hq, Hkv, Lq, Lk, D, Dv;
    double scale;          /* already resolved (no 0 = default) */
    int causal;
    int64_t q_offset;      /* already resolved */
    int64_t window_left, window_right;
    const int32_t *kv_lens;
    const float *q, *k, *v, *bias;
    const uint8_t *mask;
    attn_strides qs, ks, vs, bias_s, mask_s;
} ref_problem;

typedef struct ref_result {
    /* values, dense: out [B,Hq,Lq,Dv], lse/entropy [B,Hq,Lq], weights [B,Hq,Lq,Lk] */
    double *out, *lse, *entropy, *weights;
    /* tolerances, same shapes */
    double *out_tol, *lse_tol, *entropy_tol, *weights_tol;
    unsigned char *masked; /* [B,Hq,Lq]: 1 if the row sees no key */
    /* visible (row, key) pairs, and how many of them have a dot product that float32 computes
     * exactly (the tighter score bound applies to those); the largest |lse| of the problem */
    int64_t visible_keys, exact_keys;
    double max_abs_lse;
} ref_result;

/* Allocates the result arrays (abort on no memory: tests only) and computes them. */
void ref_attention(const ref_problem *p, ref_result *r);
void ref_free(ref_result *r);

/* Fills a ref_problem from a library descriptor and call (resolving defaults). */
ref_problem ref_problem_from(const attn_desc *d, const attn_args *a);

#endif
