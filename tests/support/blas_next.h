/*
 * The real BLAS entry points behind a test's interposers: a test that defines cblas_sgemm or
 * cblas_sgemv itself (to hold a call inside libattn, or to count calls) forwards to these.
 * Safe to call from any thread; the lookup is done once and published atomically.
 */
#ifndef ATTN_TEST_BLAS_NEXT_H
#define ATTN_TEST_BLAS_NEXT_H

typedef void (*attn_test_sgemm_fn)(int, int, int, int, int, int, float, const float *, int,
                                   const float *, int, float, float *, int);
typedef void (*attn_test_sgemv_fn)(int, int, int, int, float, const float *, int, const float *,
                                   int, float, float *, int);

/* The next definition of cblas_sgemm / cblas_sgemv after the calling executable's own. */
attn_test_sgemm_fn attn_test_next_sgemm(void);
attn_test_sgemv_fn attn_test_next_sgemv(void);

/* The BLAS's own thread-count getter and setter, found in the process: OpenBLAS's pthread
 * build (openblas_get_parallel() == 1), with `openmp` also its OpenMP build (== 2, through
 * omp_get_max_threads / omp_set_num_threads), or BLIS. Both NULL when there is none. */
typedef int (*attn_test_threads_get_fn)(void);
typedef void (*attn_test_threads_set_fn)(int);
void attn_test_blas_thread_count(int openmp, attn_test_threads_get_fn *get,
                                 attn_test_threads_set_fn *set);

#endif
