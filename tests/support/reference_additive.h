/*
 * Float64 reference of additive attention (include/attn/attn_additive.h), written from the
 * definition with no shared code: forward (out, weights, lse, entropy), backward (every
 * gradient) and, for the tolerances of docs/testing.md ("Additive attention's tolerance"), the
 * magnitudes of each result (the same sums over absolute values) and the score error bound
 * sigma (in units of the float rounding unit).
 */
#ifndef ATTN_TEST_REFERENCE_ADDITIVE_H
#define ATTN_TEST_REFERENCE_ADDITIVE_H

#include <stdint.h>

typedef struct refa_problem {
    int B, Lq, Lk, Dq, Dk, Dv, A;
    int causal;              /* key j visible to query i iff j <= i + Lk - Lq */
    const int32_t *kv_lens;  /* [B] or NULL */
    const uint8_t *mask;     /* [B, Lq, Lk] nonzero = visible, or NULL */
    const double *q, *k, *v; /* [B, Lq, Dq], [B, Lk, Dk], [B, Lk, Dv] */
    const double *wq, *wk;   /* [A, Dq], [A, Dk] */
    const double *bias;      /* [A] or NULL */
    const double *w;         /* [A] */
} refa_problem;

typedef struct refa_result {
    double *out, *out_mag;         /* [B, Lq, Dv] */
    double *weights, *weights_mag; /* [B, Lq, Lk] */
    double *lse, *entropy;         /* [B, Lq]; lse -inf and entropy 0 for rows that see nothing */
    double *sigma;                 /* [B, Lq]: max over the row's keys of the score error bound */
    double sigma_max;
} refa_result;

typedef struct refa_grads {
    double *dq, *dk, *dv, *dwq, *dwk, *dbias, *dw;
    double *m_dq, *m_dk, *m_dv, *m_dwq, *m_dwk, *m_dbias, *m_dw; /* magnitudes */
} refa_grads;

int refa_visible(const refa_problem *p, int b, int i, int j);
void refa_forward(const refa_problem *p, refa_result *r);
void refa_backward(const refa_problem *p, const refa_result *r, const double *dout, refa_grads *g);
void refa_free(refa_result *r);
void refa_grads_free(refa_grads *g);

/* Σ out · dout of the forward alone (for finite differences). */
double refa_loss(const refa_problem *p, const double *dout);

/* A float array as doubles (xcalloc'd). */
double *refa_widen(const float *x, size_t n);

#endif
