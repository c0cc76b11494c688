/* Kernel selection: the scalar table is always there; vector tables override it when compiled
 * in and supported. ATTN_ISA forces a variant so every path can be tested on one machine. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <attn/attn.h>

#include "dispatch/cpu_features.h"
#include "dispatch/dispatch.h"

#ifndef ATTN_HAVE_AVX2
const attn_kernels *attn_kernels_avx2(void) { return NULL; }
#endif
#ifndef ATTN_HAVE_AVX512
const attn_kernels *attn_kernels_avx512(void) { return NULL; }
#endif

const attn_kernels *attn_dispatch_lookup(const char *isa)
{
    attn_cpu_features f = attn_cpu_features_detect();
    if (strcmp(isa, "scalar") == 0)
        return attn_kernels_scalar();
    if (strcmp(isa, "avx2") == 0)
        return f.avx2_fma ? attn_kernels_avx2() : NULL;
    if (strcmp(isa, "avx512") == 0)
        return f.avx512f ? attn_kernels_avx512() : NULL;
    return NULL;
}

static const attn_kernels *select_kernels(void)
{
    const char *forced = getenv("ATTN_ISA");
    if (forced && *forced) {
        const attn_kernels *k = attn_dispatch_lookup(forced);
        if (k)
            return k;
    }
    static const char *const preference[] = {"avx512", "avx2", "scalar"};
    for (size_t i = 0; i < sizeof preference / sizeof preference[0]; i++) {
        const attn_kernels *k = attn_dispatch_lookup(preference[i]);
        if (k)
            return k;
    }
    return attn_kernels_scalar();
}

/* Every thread that races here computes the same answer, so a plain atomic store suffices. */
static _Atomic(const attn_kernels *) chosen;

const attn_kernels *attn_dispatch_kernels(void)
{
    const attn_kernels *k = atomic_load_explicit(&chosen, memory_order_acquire);
    if (!k) {
        k = select_kernels();
        atomic_store_explicit(&chosen, k, memory_order_release);
    }
    return k;
}

const char *attn_kernel_isa(void)
{
    return attn_dispatch_kernels()->name;
}
