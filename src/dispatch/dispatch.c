/*
 * Kernel tables, built the way BLIS configures its kernels: every slot first gets the scalar
 * reference kernel, then each instruction set the table stands for, from the narrowest up,
 * overrides the slots it implements. A slot no vector variant has yet keeps its scalar kernel,
 * so adding a slot never needs every variant at once. ATTN_ISA forces a table, so every path
 * can be tested on one machine.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <attn/attn.h>

#include "dispatch/cpu_features.h"
#include "dispatch/dispatch.h"

#ifndef ATTN_HAVE_AVX2
void attn_kernels_fill_avx2(attn_kernels *t) { (void)t; }
void attn_widen_fill_avx2(attn_kernels *t) { (void)t; }
void attn_narrow_fill_avx2(attn_kernels *t) { (void)t; }
void attn_dropout_fill_avx2(attn_kernels *t) { (void)t; }
void attn_additive_fill_avx2(attn_kernels *t) { (void)t; }
#endif
#ifndef ATTN_HAVE_AVX512
void attn_kernels_fill_avx512(attn_kernels *t) { (void)t; }
void attn_widen_fill_avx512(attn_kernels *t) { (void)t; }
void attn_narrow_fill_avx512(attn_kernels *t) { (void)t; }
void attn_thin_fill_avx512(attn_kernels *t) { (void)t; }
void attn_dropout_fill_avx512(attn_kernels *t) { (void)t; }
void attn_additive_fill_avx512(attn_kernels *t) { (void)t; }
#endif

#ifdef ATTN_HAVE_AVX2
#define HAVE_AVX2 1
#else
#define HAVE_AVX2 0
#endif
#ifdef ATTN_HAVE_AVX512
#define HAVE_AVX512 1
#else
#define HAVE_AVX512 0
#endif

enum { TABLE_SCALAR, TABLE_AVX2, TABLE_AVX512, TABLES };

static attn_kernels tables[TABLES];
static int runnable[TABLES];
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static void build_tables(void)
{
    attn_cpu_features f = attn_cpu_features_detect();
    attn_kernels_fill_scalar(&tables[TABLE_SCALAR]);
    attn_dropout_fill_scalar(&tables[TABLE_SCALAR]);
    attn_widen_fill_scalar(&tables[TABLE_SCALAR]);
    attn_narrow_fill_scalar(&tables[TABLE_SCALAR]);
    attn_thin_fill_scalar(&tables[TABLE_SCALAR]);
    attn_additive_fill_scalar(&tables[TABLE_SCALAR]);
    runnable[TABLE_SCALAR] = 1;

    tables[TABLE_AVX2] = tables[TABLE_SCALAR];
    attn_kernels_fill_avx2(&tables[TABLE_AVX2]);
    attn_dropout_fill_avx2(&tables[TABLE_AVX2]);
    attn_additive_fill_avx2(&tables[TABLE_AVX2]);
    if (f.f16c) { /* an AVX2 CPU without F16C keeps the scalar conversions */
        attn_widen_fill_avx2(&tables[TABLE_AVX2]);
        attn_narrow_fill_avx2(&tables[TABLE_AVX2]);
    }
    runnable[TABLE_AVX2] = HAVE_AVX2 && f.avx2_fma;

    /* AVX-512 machines have AVX2 too; the check keeps an odd CPU on the scalar fallback. */
    tables[TABLE_AVX512] = f.avx2_fma ? tables[TABLE_AVX2] : tables[TABLE_SCALAR];
    attn_kernels_fill_avx512(&tables[TABLE_AVX512]);
    attn_dropout_fill_avx512(&tables[TABLE_AVX512]);
    attn_widen_fill_avx512(&tables[TABLE_AVX512]);
    attn_narrow_fill_avx512(&tables[TABLE_AVX512]);
    attn_thin_fill_avx512(&tables[TABLE_AVX512]);
    attn_additive_fill_avx512(&tables[TABLE_AVX512]);
    runnable[TABLE_AVX512] = HAVE_AVX512 && f.avx512f;
}

const attn_kernels *attn_dispatch_lookup(const char *isa)
{
    static const char *const names[TABLES] = {"scalar", "avx2", "avx512"};
    pthread_once(&tables_once, build_tables);
    for (int i = 0; i < TABLES; i++)
        if (strcmp(isa, names[i]) == 0)
            return runnable[i] ? &tables[i] : NULL;
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
    return attn_dispatch_lookup("scalar");
}

static const attn_kernels *chosen;
static pthread_once_t chosen_once = PTHREAD_ONCE_INIT;

static void choose(void)
{
    chosen = select_kernels();
}

const attn_kernels *attn_dispatch_kernels(void)
{
    pthread_once(&chosen_once, choose);
    return chosen;
}

static int thin_mode;
static pthread_once_t thin_once = PTHREAD_ONCE_INIT;

static void read_thin_mode(void)
{
    const char *m = getenv("ATTN_DECODE");
    thin_mode = m && strcmp(m, "blas") == 0 ? -1 : m && strcmp(m, "fused") == 0 ? 1 : 0;
}

int attn_dispatch_thin_mode(void)
{
    pthread_once(&thin_once, read_thin_mode);
    return thin_mode;
}

const char *attn_kernel_isa(void)
{
    return attn_dispatch_kernels()->name;
}
