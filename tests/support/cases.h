/*
 * Reference problems stored one directory a case (tests/data/reference, tests/data/training/...):
 * loading a case's .npy files, the strides of its broadcast masks and biases, the oracle's
 * 1e-9 agreement with the stored values, and one cmocka test per case. For cmocka suites.
 */
#ifndef ATTN_TEST_CASES_H
#define ATTN_TEST_CASES_H

#include <stddef.h>

#include <attn/attn.h>

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

/* Runs the cmocka group `group` of n tests named case000, case001, ..., each calling `test`
 * with *state = (void *)(intptr_t)index. Returns the number of failed tests. */
int case_run_group(const char *group, int n, void (*test)(void **state));

#endif
