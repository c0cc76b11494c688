/*
 * The double-precision backward oracle: gradients of L = Σ out · dout written straight from
 * the definition (P from the forward oracle, dS = P ∘ (dO Vᵀ − rowsum(dO ∘ O))), sharing no code
 * with the library, and the per-element tolerance a float32 implementation can be held to.
 * docs/testing.md derives the bounds.
 */
#ifndef ATTN_TEST_REFERENCE_BACKWARD_H
#define ATTN_TEST_REFERENCE_BACKWARD_H

#include "reference.h"

typedef struct ref_grads {
    /* dense: dq [B,Hq,Lq,D], dk [B,Hkv,Lk,D], dv [B,Hkv,Lk,Dv], dbias [Bb,Hb,Lqb,Lk] where an
     * axis along which the bias is broadcast (stride 0) has size 1 */
    double *dq, *dk, *dv, *dbias;
    double *dq_tol, *dk_tol, *dv_tol, *dbias_tol;
    int64_t Bb, Hb, Lqb;
} ref_grads;

/* fwd: ref_attention's result for p (its weights are P). dout dense [B,Hq,Lq,Dv]. */
void ref_backward(const ref_problem *p, const ref_result *fwd, const double *dout, ref_grads *g);

/* With dropout: keep dense [B,Hq,Lq,Lk] (1 = kept), kept weights scaled by `scale`; fwd->out
 * (and its tolerance) must then be the forward's output with that dropout applied. */
void ref_backward_dropout(const ref_problem *p, const ref_result *fwd, const double *dout,
                          const unsigned char *keep, double scale, ref_grads *g);
void ref_grads_free(ref_grads *g);

/* Loss L = Σ out · dout of the forward oracle (for finite differences of the oracle). */
double ref_loss(const ref_problem *p, const double *dout);

typedef struct grad_stats {
    long compared, failures;
    double worst_ratio;
    char first_failure[512];
} grad_stats;

/* Compares one strided float32 gradient [n0, n1, n2, width] with the dense oracle. */
void check_grad(const char *what, const float *got, attn_strides s, int64_t n0, int64_t n1,
                int64_t n2, int64_t width, const double *ref, const double *tol,
                const char *label, grad_stats *st);

#endif
