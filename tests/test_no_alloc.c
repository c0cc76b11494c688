/*
 * attn_forward allocates nothing: this executable interposes malloc, calloc, realloc,
 * aligned_alloc, posix_memalign and memalign (forwarding to glibc) and, for every call made
 * while attn_forward runs, walks the stack to the innermost frame outside libc and this
 * program: inside libattn it is libattn's allocation, anywhere else (the BLAS, its threading
 * runtime) the BLAS's. libattn's count must be zero. The BLAS's is reported, and for OpenBLAS
 * (either build, at its default thread count) it must be zero too after the warm-up call: that
 * is what holding it single-threaded inside attn_forward promises (docs/threading.md); a
 * threaded OpenBLAS allocates job descriptors in every call. BLIS's OpenMP build allocates in
 * its own calls whatever libattn does; that is only reported.
 * Where the interposition is not in effect (sanitizer or valgrind runtimes replace malloc
 * themselves) the test says so and is skipped rather than passing vacuously.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <execinfo.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <attn/attn.h>

#include "support/util.h"

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static volatile int counting;
static volatile long calls;    /* every allocation while counting */
static volatile long ours;     /* those whose innermost non-libc frame is in libattn */

/* Attributes the current allocation; runs with counting off (dladdr may not allocate, but
 * nothing here may recurse into the counters anyway). */
static void attribute(void)
{
    int saved = counting;
    counting = 0;
    calls++;
    void *frames[32];
    int n = backtrace(frames, 32);
    for (int i = 2; i < n; i++) { /* 0: attribute, 1: the interposer */
        Dl_info info;
        if (!dladdr(frames[i], &info) || !info.dli_fname)
            continue;
        const char *obj = strrchr(info.dli_fname, '/');
        obj = obj ? obj + 1 : info.dli_fname;
        if (strncmp(obj, "libc.so", 7) == 0 || strstr(obj, "test_no_alloc"))
            continue;
        if (strncmp(obj, "libattn", 7) == 0)
            ours++;
        break;
    }
    counting = saved;
}

void *malloc(size_t n)
{
    if (counting) attribute();
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t size)
{
    if (counting) attribute();
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t n)
{
    if (counting) attribute();
    return __libc_realloc(p, n);
}

void *aligned_alloc(size_t alignment, size_t n)
{
    if (counting) attribute();
    return __libc_memalign(alignment, n);
}

void *memalign(size_t alignment, size_t n)
{
    if (counting) attribute();
    return __libc_memalign(alignment, n);
}

int posix_memalign(void **p, size_t alignment, size_t n)
{
    if (counting) attribute();
    *p = __libc_memalign(alignment, n);
    return *p ? 0 : 12;
}

void free(void *p)
{
    __libc_free(p);
}

static int interposition_active(void)
{
    void *prime[2];
    backtrace(prime, 2); /* loads the unwinder now, not while counting */
    counting = 1;
    calls = 0;
    void *volatile p = malloc(16);
    counting = 0;
    free(p);
    return calls == 1;
}

static void test_forward_does_not_allocate(void **state)
{
    (void)state;
    if (!interposition_active()) {
        print_message("malloc is replaced by a runtime here: cannot count, skipping\n");
        skip();
    }
    enum { B = 2, HQ = 4, HKV = 2, LQ = 300, LK = 700, D = 64, DV = 48 };
    attn_desc d;
    attn_desc_init(&d);
    d.q_heads = HQ, d.kv_heads = HKV, d.qk_dim = D, d.v_dim = DV;
    d.flags = ATTN_CAUSAL;
    d.window_left = 400;
    attn_ctx *ctx;
    assert_int_equal(attn_create(&d, &ctx), ATTN_OK);
    rng r = {3};
    float *q = random_floats(&r, (size_t)B * HQ * LQ * D, 1.0);
    float *k = random_floats(&r, (size_t)B * HKV * LK * D, 1.0);
    float *v = random_floats(&r, (size_t)B * HKV * LK * DV, 1.0);
    float *bias = random_floats(&r, (size_t)LQ * LK, 1.0);
    uint8_t *mask = xcalloc((size_t)HQ * LQ * LK, 1);
    for (size_t i = 0; i < (size_t)HQ * LQ * LK; i++) mask[i] = rng_below(&r, 5) != 0;
    float *out = xcalloc((size_t)B * HQ * LQ * DV, sizeof(float));
    float *w = xcalloc((size_t)B * LQ * LK, sizeof(float));
    float *lse = xcalloc((size_t)B * HQ * LQ, sizeof(float)), *ent = xcalloc((size_t)B * HQ * LQ, sizeof(float));
    int32_t lens[B] = {LK, 500};
    attn_args a;
    attn_args_init(&a);
    a.batch = B, a.q_len = LQ, a.kv_len = LK;
    a.q = q, a.q_strides = attn_strides_bhsd(HQ, LQ, D);
    a.k = k, a.k_strides = attn_strides_bhsd(HKV, LK, D);
    a.v = v, a.v_strides = attn_strides_bhsd(HKV, LK, DV);
    a.out = out, a.out_strides = attn_strides_bshd(HQ, LQ, DV);
    a.bias = bias, a.bias_strides = (attn_strides){0, 0, LK};
    a.mask = mask, a.mask_strides = (attn_strides){0, (int64_t)LQ * LK, LK};
    a.kv_lens = lens;
    a.lse = lse, a.entropy = ent;
    a.weights_mode = ATTN_WEIGHTS_HEAD_MEAN, a.weights = w;

    counting = 1, calls = ours = 0;
    assert_int_equal(attn_forward(ctx, &a), ATTN_OK);
    counting = 0;
    long warmup = calls, warmup_ours = ours;
    counting = 1, calls = ours = 0;
    assert_int_equal(attn_forward(ctx, &a), ATTN_OK);
    a.weights = NULL;
    a.weights_mode = ATTN_WEIGHTS_NONE;
    assert_int_equal(attn_forward(ctx, &a), ATTN_OK);
    counting = 0;
    print_message("allocations by libattn: %ld in the warm-up call, %ld in two later calls\n",
                  warmup_ours, ours);
    print_message("allocations by the BLAS: %ld in the warm-up call, %ld in two later calls\n",
                  warmup - warmup_ours, calls - ours);
    assert_int_equal(warmup_ours, 0);
    assert_int_equal(ours, 0);
    if (dlsym(RTLD_DEFAULT, "openblas_get_parallel"))
        assert_int_equal(calls - ours, 0);
    attn_destroy(ctx);
    free(q), free(k), free(v), free(bias), free(mask), free(out), free(w), free(lse), free(ent);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_forward_does_not_allocate)};
    return cmocka_run_group_tests_name("no_alloc", tests, NULL, NULL);
}
