#define _GNU_SOURCE
#include "support/blas_next.h"

#include <dlfcn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* dlsym hands back an object pointer; POSIX guarantees the conversion, ISO C does not. */
static void *next_symbol(const char *name)
{
    void *sym = dlsym(RTLD_NEXT, name);
    if (!sym) {
        fprintf(stderr, "blas_next: no %s after the interposer\n", name);
        abort();
    }
    return sym;
}

/* Every access is an explicit atomic load or store: worker threads enter the interposers while
 * the main thread may still be publishing the pointer. Two threads may both look it up; they
 * find the same address. */
attn_test_sgemm_fn attn_test_next_sgemm(void)
{
    static _Atomic(attn_test_sgemm_fn) real;
    attn_test_sgemm_fn f = atomic_load_explicit(&real, memory_order_acquire);
    if (!f) {
        void *sym = next_symbol("cblas_sgemm");
        memcpy(&f, &sym, sizeof f);
        atomic_store_explicit(&real, f, memory_order_release);
    }
    return f;
}

attn_test_sgemv_fn attn_test_next_sgemv(void)
{
    static _Atomic(attn_test_sgemv_fn) real;
    attn_test_sgemv_fn f = atomic_load_explicit(&real, memory_order_acquire);
    if (!f) {
        void *sym = next_symbol("cblas_sgemv");
        memcpy(&f, &sym, sizeof f);
        atomic_store_explicit(&real, f, memory_order_release);
    }
    return f;
}

void attn_test_blas_thread_count(int openmp, attn_test_threads_get_fn *get,
                                 attn_test_threads_set_fn *set)
{
    void *par = dlsym(RTLD_DEFAULT, "openblas_get_parallel"), *g = NULL, *s = NULL;
    if (par) {
        attn_test_threads_get_fn parallel;
        memcpy(&parallel, &par, sizeof par);
        int mode = parallel();
        if (mode == 1) /* pthread build: one process-wide count */
            g = dlsym(RTLD_DEFAULT, "openblas_get_num_threads"),
            s = dlsym(RTLD_DEFAULT, "openblas_set_num_threads");
        else if (mode == 2 && openmp)
            g = dlsym(RTLD_DEFAULT, "omp_get_max_threads"),
            s = dlsym(RTLD_DEFAULT, "omp_set_num_threads");
    } else {
        g = dlsym(RTLD_DEFAULT, "bli_thread_get_num_threads");
        s = dlsym(RTLD_DEFAULT, "bli_thread_set_num_threads");
    }
    *get = NULL, *set = NULL;
    if (g && s) {
        memcpy(get, &g, sizeof g);
        memcpy(set, &s, sizeof s);
    }
}
