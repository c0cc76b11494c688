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
