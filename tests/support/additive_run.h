/*
 * Test helpers for additive attention: one training forward and SET backward of a problem
 * through the public API, and the comparison of every result with the float64 reference under
 * the tolerances of docs/testing.md ("Additive attention's tolerance").
 */
#ifndef ATTN_TEST_ADDITIVE_RUN_H
#define ATTN_TEST_ADDITIVE_RUN_H

#include <stddef.h>
#include <stdint.h>

#include <attn/attn_additive.h>

#include "support/reference_additive.h"

typedef struct adt_case {
    int B, Lq, Lk, Dq, Dk, Dv, A, bias, causal;
    const int32_t *kv_lens;
    const uint8_t *mask;
    const float *q, *k, *v, *wq, *wk, *b, *w, *dout;
    uint32_t threads;
    int want_weights, want_lse, want_entropy;
} adt_case;

typedef struct adt_out {
    float *out, *weights, *lse, *entropy;
    float *dq, *dk, *dv, *dwq, *dwk, *dbias, *dw;
} adt_out;

/* Runs the case; on failure returns the status with the message in err. */
attn_status adt_run(const adt_case *c, adt_out *o, char *err, size_t err_size);
void adt_out_free(adt_out *o);

/* The reference's problem over widened copies of the case's inputs (free with adt_ref_free). */
void adt_ref_problem(const adt_case *c, refa_problem *p);
void adt_ref_free(refa_problem *p);

/* Largest error / tolerance over every result; the first element above its tolerance (if any)
 * is described in msg. */
double adt_check(const adt_case *c, const adt_out *o, const refa_result *r, const refa_grads *g,
                 char *msg, size_t msg_size);

#endif
