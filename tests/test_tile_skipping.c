/*
 * Tiles hidden by causal, window and kv_lens masks cost no BLAS call. This executable
 * interposes cblas_sgemm (forwarding to the real one) and counts the calls and the m*n*k volume
 * each forward pass asks for; the assertions are properties of the masks, not numbers copied
 * from the implementation: causal work is about half of full work, windowed work scales with
 * the window, and a batch with no keys costs nothing.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <attn/attn.h>

#include "support/blas_next.h"
#include "support/util.h"

/* Updated from every thread that runs tiles, hence atomic. */
static _Atomic long calls;
static _Atomic long long volume; /* sum of m * n * k */

void cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha, const float *a,
                 int lda, const float *b, int ldb, float beta, float *c, int ldc);
void cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha, const float *a,
                 int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
    calls++;
    volume += (long long)m * n * k;
    attn_test_next_sgemm()(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

enum { B = 2, H = 2, L = 1024, D = 32 };

static float *q, *k, *v, *out;

/* Runs one forward pass and returns the m*n*k volume it requested (calls in *ncalls). */
static double measure(uint32_t flags, int64_t window_left, const int32_t *kv_lens, long *ncalls)
{
    attn_desc d;
    attn_desc_init(&d);
    d.q_heads = d.kv_heads = H;
    d.qk_dim = d.v_dim = D;
    d.flags = flags;
    d.window_left = window_left;
    attn_ctx *ctx;
    assert_int_equal(attn_create(&d, &ctx), ATTN_OK);
    attn_args a;
    attn_args_init(&a);
    a.batch = B, a.q_len = L, a.kv_len = L;
    a.q = q, a.k = k, a.v = v, a.out = out;
    a.q_strides = a.k_strides = a.v_strides = a.out_strides = attn_strides_bhsd(H, L, D);
    a.kv_lens = kv_lens;
    calls = 0;
    volume = 0;
    assert_int_equal(attn_forward(ctx, &a), ATTN_OK);
    attn_destroy(ctx);
    if (ncalls)
        *ncalls = calls;
    return (double)volume;
}

static void test_interposed(void **state)
{
    (void)state;
    long n;
    double full = measure(0, -1, NULL, &n);
    assert_true(n > 0);
    /* full attention: two products per key tile, each covering every (query, key) pair once */
    assert_true(fabs(full - 2.0 * B * H * (double)L * L * D) < 1.0);
}

static void test_causal_halves_the_work(void **state)
{
    (void)state;
    double full = measure(0, -1, NULL, NULL);
    double causal = measure(ATTN_CAUSAL, -1, NULL, NULL);
    print_message("causal / full volume: %.3f\n", causal / full);
    assert_true(causal >= 0.5 * full);       /* every visible pair is still computed */
    assert_true(causal <= 0.56 * full);      /* hidden tiles are skipped, partial ones trimmed */
}

static void test_window_scales_with_width(void **state)
{
    (void)state;
    double full = measure(0, -1, NULL, NULL);
    double w64 = measure(ATTN_CAUSAL, 64, NULL, NULL);
    double w256 = measure(ATTN_CAUSAL, 256, NULL, NULL);
    print_message("window 64 / full: %.3f, window 256 / full: %.3f\n", w64 / full, w256 / full);
    /* a row sees at most window+1 keys; a 64-row block spans at most window + 64 of them */
    assert_true(w64 <= (64.0 + 64.0) / L * full);
    assert_true(w256 <= (256.0 + 64.0) / L * full);
    assert_true(w64 < w256);
}

static void test_empty_batches_cost_nothing(void **state)
{
    (void)state;
    int32_t none[B] = {0, 0}, half[B] = {0, L}, short_keys[B] = {100, 100};
    long n;
    assert_true(measure(0, -1, none, &n) == 0.0);
    assert_int_equal(n, 0);
    double full = measure(0, -1, NULL, NULL);
    assert_true(fabs(measure(0, -1, half, NULL) - full / 2) < 1.0);
    assert_true(measure(0, -1, short_keys, NULL) <= 100.0 / L * full + 1.0);
}

int main(void)
{
    rng r = {17};
    size_t n = (size_t)B * H * L * D;
    q = random_floats(&r, n, 1.0), k = random_floats(&r, n, 1.0), v = random_floats(&r, n, 1.0);
    out = xcalloc(n, sizeof *out);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_interposed),
        cmocka_unit_test(test_causal_halves_the_work),
        cmocka_unit_test(test_window_scales_with_width),
        cmocka_unit_test(test_empty_batches_cost_nothing),
    };
    int failed = cmocka_run_group_tests_name("tile_skipping", tests, NULL, NULL);
    free(q), free(k), free(v), free(out);
    return failed;
}
