/*
 * Reference problems stored one directory a case (tests/data/reference, tests/data/training/...):
 * loading a case's .npy files, the strides of its broadcast masks and biases, the oracle's
 * 1e-9 agreement with the stored values, and one cmocka test per case. For cmocka suites.
 */
#ifndef ATTN_TEST_CASES_H
#define ATTN_TEST_CASES_H

#include <stddef.h>

#include <attn/attn.h>

#include "manifest.h"
#include "npy.h"

/* <dir>/<case_name>/<file>.npy. A missing or unreadable file fails the current test when
 * `required`, else gives an empty array (data NULL, count 0). Free with npy_free. */
npy_array case_load(const char *dir, const char *case_name, const char *file, int required);

/* Strides of a dense [B', H', rows, cols] array broadcast to [B, H, Lq, Lk]: an axis of size 1
 * gets stride 0. */
attn_strides case_broadcast_strides(const npy_array *a);

/* Fails the current test unless |ours[i] - theirs[i]| <= 1e-9 (1 + |theirs[i]|) for every i:
 * the float64 oracle against the stored float64 results. `name` and `what` label the message. */
void case_expect_close_1e9(const char *name, const char *what, const double *ours,
                           const double *theirs, size_t n);

/* The descriptor of case c (heads, dims, scale, causal, window) with the given masked-row
 * policy; the other fields at attn_desc_init's defaults. */
void case_desc(const manifest_case *c, attn_masked_rows policy, attn_desc *d);

/* The forward call of case c on the dense [B, H, L, D] arrays q, k, v and out under d (from
 * case_desc): lengths, strides, q_offset (ATTN_Q_OFFSET_DEFAULT where the case's offset is the
 * default one, so that the default is exercised), kv_lens, and bias and mask (read only when
 * the case has them) through case_broadcast_strides. No weights, lse or entropy. */
void case_args(const manifest_case *c, const attn_desc *d, const npy_array *q,
               const npy_array *k, const npy_array *v, float *out, const npy_array *bias,
               const npy_array *mask, attn_args *a);

/* Runs the cmocka group `group` of n tests named case000, case001, ..., each calling `test`
 * with *state = (void *)(intptr_t)index. Returns the number of failed tests. */
int case_run_group(const char *group, int n, void (*test)(void **state));

#endif
