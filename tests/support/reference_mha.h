/*
 * A float64 multi-head attention layer written for the tests, sharing no code with the
 * library: naive loops over the definitions (projections, per-head softmax attention with every
 * mask, output projection) and the chain rule by hand for every gradient. Alongside each result
 * it carries a magnitude: the same expression evaluated on absolute values (|x| |W|, softmax
 * weights scaled by (1 + the row's largest absolute score), ...), which bounds how much float32
 * rounding can move that element; docs/testing.md derives the tolerance from it.
 */
#ifndef ATTN_TEST_REFERENCE_MHA_H
#define ATTN_TEST_REFERENCE_MHA_H

#include <stdint.h>

typedef struct refm_problem {
    int64_t B, Lq, Lk, E, H, Hkv, kdim, vdim;
    int causal;               /* j <= i + Lk - Lq */
    const float *query, *key, *value;   /* [B,Lq,E], [B,Lk,kdim], [B,Lk,vdim] */
    const float *wq, *wk, *wv;          /* [E,E], [kvE,kdim], [kvE,vdim] */
    const float *bq, *bk, *bv;          /* NULL: no bias */
    const float *wo, *bo;               /* [E,E], [E] or NULL */
    const int32_t *kv_lens;             /* [B] or NULL */
    const uint8_t *key_visible;         /* [B,Lk] or NULL */
    const uint8_t *attn_mask;           /* [Lq,Lk] or [B*H,Lq,Lk] (mask3d) or NULL */
    const float *attn_bias;             /* likewise */
    int mask3d;
    const uint8_t *drop_keep;           /* optional [B,H,Lq,Lk] keep-mask (1 kept) */
    double dropout;                     /* p, with drop_keep */
} refm_problem;

typedef struct refm_result {
    double *out, *out_mag;              /* [B,Lq,E] */
    double *weights, *weights_mag;      /* [B,H,Lq,Lk], after dropout */
    double *wmean, *wmean_mag;          /* [B,Lq,Lk] */
    /* internals */
    double *q, *k, *v, *q_mag, *k_mag, *v_mag, *o, *o_mag, *p, *sigma;
} refm_result;

typedef struct refm_grads {
    double *d_query, *d_key, *d_value;
    double *d_wq, *d_wk, *d_wv, *d_bq, *d_bk, *d_bv, *d_wo, *d_bo;
    double *m_query, *m_key, *m_value;
    double *m_wq, *m_wk, *m_wv, *m_bq, *m_bk, *m_bv, *m_wo, *m_bo;
} refm_grads;

void refm_forward(const refm_problem *p, refm_result *r);
/* Gradients of sum(out * dout). */
void refm_backward(const refm_problem *p, const refm_result *r, const float *dout, refm_grads *g);
void refm_free(refm_result *r);
void refm_grads_free(refm_grads *g);

#endif
