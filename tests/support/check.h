/*
 * Comparison of library outputs with the oracle. An element passes when |got - ref| <= tol,
 * with tol from the error model in reference.c; rows that see no key must hold exactly what the
 * masked-rows policy promises. Statistics record the worst |got - ref| / tol seen, so a run shows
 * how much of the tolerance it used.
 */
#ifndef ATTN_TEST_CHECK_H
#define ATTN_TEST_CHECK_H

#include "reference.h"

typedef struct check_stats {
    long compared;
    long failures;
    double worst_ratio;       /* max |got - ref| / tol over all elements */
    char first_failure[512];
} check_stats;

/* Compares every output that `a` requested (out always; weights, lse, entropy when set). */
void check_outputs(const ref_problem *p, const ref_result *r, const attn_desc *d,
                   const attn_args *a, const char *label, check_stats *st);

#endif
