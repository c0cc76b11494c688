/*
 * Hostile sizes: lengths, heads and dims at or near UINT32_MAX, strides at the ends of int64_t,
 * kv_lens and offsets and windows far outside their ranges. Each call must return a clear status
 * (no crash, no attempt to allocate anything huge, no write to the outputs); values exactly at
 * the documented limits must work. Sizes that are consistent but merely large cannot be told
 * from a caller's mistake about its buffers and are not exercised here.
 */
#define _GNU_SOURCE /* MAP_ANONYMOUS, MAP_NORESERVE */
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/mman.h>

#include <cmocka.h>

#include <attn/attn.h>

#include "support/util.h"

/* ---- descriptors: accepted ones must not ask for much memory ------------------------------ */

static size_t largest_request;

static void *recording_alloc(void *user, size_t size, size_t alignment)
{
    (void)user;
    if (size > largest_request)
        largest_request = size;
    return aligned_alloc(alignment, (size + alignment - 1) / alignment * alignment);
}

static void recording_free(void *user, void *p)
{
    (void)user;
    free(p);
}

static void test_hostile_descriptors(void **state)
{
    (void)state;
    attn_allocator al = {recording_alloc, recording_free, NULL};
    struct {
        uint32_t q_heads, kv_heads, qk_dim, v_dim, threads;
        int64_t wl, wr;
        attn_status want;
    } cases[] = {
        {UINT32_MAX, 1, 64, 64, 1, -1, -1, ATTN_OK},          /* heads do not size the workspace */
        {UINT32_MAX, UINT32_MAX, 64, 64, 1, -1, -1, ATTN_OK},
        {UINT32_MAX, UINT32_MAX - 1, 64, 64, 1, -1, -1, ATTN_ERR_HEADS},
        {4, 2, UINT32_MAX, 64, 1, -1, -1, ATTN_ERR_LIMIT},
        {4, 2, 64, UINT32_MAX, 1, -1, -1, ATTN_ERR_LIMIT},
        {4, 2, ATTN_MAX_HEAD_DIM, ATTN_MAX_HEAD_DIM, 1, -1, -1, ATTN_OK},
        {4, 2, 64, 64, UINT32_MAX, -1, -1, ATTN_ERR_LIMIT},
        {4, 2, 64, 64, ATTN_MAX_THREADS + 1, -1, -1, ATTN_ERR_LIMIT},
        {4, 2, 64, 64, 1, INT64_MAX, -1, ATTN_ERR_WINDOW},
        {4, 2, 64, 64, 1, -1, INT64_MIN, ATTN_ERR_WINDOW},
        {4, 2, 64, 64, 1, ATTN_MAX_DISTANCE, ATTN_MAX_DISTANCE, ATTN_OK},
        {4, 2, 64, 64, 1, ATTN_MAX_DISTANCE + 1, 0, ATTN_ERR_WINDOW},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        attn_desc d;
        attn_desc_init(&d);
        d.q_heads = cases[i].q_heads, d.kv_heads = cases[i].kv_heads;
        d.qk_dim = cases[i].qk_dim, d.v_dim = cases[i].v_dim, d.threads = cases[i].threads;
        d.window_left = cases[i].wl, d.window_right = cases[i].wr;
        d.allocator = &al;
        attn_ctx *ctx = NULL;
        largest_request = 0;
        attn_status st = attn_create(&d, &ctx);
        if (st != cases[i].want)
            fail_msg("case %zu: %s, expected %s (%s)", i, attn_status_str(st),
                     attn_status_str(cases[i].want), attn_last_error(NULL));
        if (st == ATTN_OK)
            assert_true(largest_request <= ((size_t)64 << 20));
        else
            assert_true(largest_request == 0 && attn_workspace_size(&d) == 0);
        attn_destroy(ctx);
    }
}

/* ---- arguments ------------------------------------------------------------------------------ */

enum { H = 2, D = 4 };
static const float SENTINEL = 31337.0f;
static float q[H * 8 * D], k[H * 8 * D], v[H * 8 * D], out[H * 8 * D], lse[H * 8], w[H * 8 * 8];

static attn_args base_args(void)
{
    attn_args a;
    attn_args_init(&a);
    a.batch = 1, a.q_len = 8, a.kv_len = 8;
    a.q = q, a.q_strides = attn_strides_bhsd(H, 8, D);
    a.k = k, a.k_strides = attn_strides_bhsd(H, 8, D);
    a.v = v, a.v_strides = attn_strides_bhsd(H, 8, D);
    a.out = out, a.out_strides = attn_strides_bhsd(H, 8, D);
    a.lse = lse;
    return a;
}

static void expect(attn_ctx *ctx, const attn_args *a, attn_status want, const char *what)
{
    for (size_t i = 0; i < sizeof out / sizeof out[0]; i++) out[i] = SENTINEL;
    for (size_t i = 0; i < sizeof lse / sizeof lse[0]; i++) lse[i] = SENTINEL;
    for (size_t i = 0; i < sizeof w / sizeof w[0]; i++) w[i] = SENTINEL;
    attn_status st = attn_forward(ctx, a);
    if (st != want)
        fail_msg("%s: %s, expected %s (%s)", what, attn_status_str(st), attn_status_str(want),
                 attn_last_error(ctx));
    if (st != ATTN_OK) {
        for (size_t i = 0; i < sizeof out / sizeof out[0]; i++) assert_true(out[i] == SENTINEL);
        for (size_t i = 0; i < sizeof lse / sizeof lse[0]; i++) assert_true(lse[i] == SENTINEL);
        for (size_t i = 0; i < sizeof w / sizeof w[0]; i++) assert_true(w[i] == SENTINEL);
    } else {
        for (size_t i = 0; i < sizeof out / sizeof out[0]; i++) assert_true(isfinite(out[i]));
    }
}

static void test_hostile_arguments(void **state)
{
    (void)state;
    rng r = {4};
    for (size_t i = 0; i < sizeof q / sizeof q[0]; i++)
        q[i] = (float)rng_normal(&r), k[i] = (float)rng_normal(&r), v[i] = (float)rng_normal(&r);
    attn_desc d;
    attn_desc_init(&d);
    d.q_heads = d.kv_heads = H, d.qk_dim = d.v_dim = D;
    d.flags = ATTN_CAUSAL;
    d.window_left = 3;
    attn_ctx *ctx;
    assert_int_equal(attn_create(&d, &ctx), ATTN_OK);
    attn_args a;

    a = base_args(), a.batch = UINT32_MAX, a.q_len = UINT32_MAX, a.kv_len = UINT32_MAX;
    a.q_strides = attn_strides_bhsd(H, UINT32_MAX, D);
    expect(ctx, &a, ATTN_ERR_OVERFLOW, "every length UINT32_MAX");
    a = base_args(), a.q_len = UINT32_MAX, a.q_strides.seq = 0;
    expect(ctx, &a, ATTN_ERR_STRIDE, "UINT32_MAX query rows on one row of memory");
    a = base_args(), a.batch = UINT32_MAX, a.q_len = UINT32_MAX, a.kv_len = UINT32_MAX;
    a.q_strides = a.k_strides = a.v_strides = (attn_strides){0, 0, 0};
    a.q_len = 1, a.kv_len = 1; /* inputs broadcast; a distinct output would not fit */
    a.out_strides = attn_strides_bhsd(H, 1, D), a.out_strides.batch = INT64_MAX / 4;
    expect(ctx, &a, ATTN_ERR_OVERFLOW, "batch UINT32_MAX output");
    /* views that fit, but a weights output of H x 2^32 x 2^32 elements does not */
    a = base_args(), a.q_len = UINT32_MAX, a.kv_len = UINT32_MAX;
    a.q_strides = (attn_strides){0, 0, D}, a.k_strides = a.v_strides = (attn_strides){0, 0, D};
    a.out_strides = attn_strides_bhsd(H, UINT32_MAX, D);
    a.weights_mode = ATTN_WEIGHTS_PER_HEAD, a.weights = w;
    expect(ctx, &a, ATTN_ERR_OVERFLOW, "weights of UINT32_MAX x UINT32_MAX");

    int64_t strides[] = {INT64_MAX, INT64_MAX / 2, (int64_t)1 << 62, (int64_t)INT_MAX + 1};
    for (size_t i = 0; i < sizeof strides / sizeof strides[0]; i++) {
        a = base_args(), a.k_strides.seq = strides[i];
        expect(ctx, &a, ATTN_ERR_OVERFLOW, "huge key row stride");
        if (i < 3) { /* 2^31 fits int64: it spans 8 GiB, which is a matter for the alias check */
            a = base_args(), a.v_strides.batch = strides[i], a.batch = 2;
            expect(ctx, &a, ATTN_ERR_OVERFLOW, "huge batch stride");
        }
    }
    a = base_args(), a.q_strides.head = INT64_MIN;
    expect(ctx, &a, ATTN_ERR_STRIDE, "INT64_MIN stride");
    a = base_args(), a.out_strides.seq = -1;
    expect(ctx, &a, ATTN_ERR_STRIDE, "negative output stride");

    int32_t lens[1];
    int32_t bad_lens[] = {INT32_MAX, INT32_MIN, -1, 9};
    for (size_t i = 0; i < sizeof bad_lens / sizeof bad_lens[0]; i++) {
        lens[0] = bad_lens[i];
        a = base_args(), a.kv_lens = lens;
        expect(ctx, &a, ATTN_ERR_KV_LENS, "kv_lens out of range");
    }
    int64_t bad_offsets[] = {INT64_MAX, INT64_MIN + 1, ATTN_MAX_DISTANCE + 1, -ATTN_MAX_DISTANCE - 1};
    for (size_t i = 0; i < sizeof bad_offsets / sizeof bad_offsets[0]; i++) {
        a = base_args(), a.q_offset = bad_offsets[i];
        expect(ctx, &a, ATTN_ERR_OFFSET, "q_offset out of range");
    }
    /* at the limits: every row sees nothing (zeros), or the last keys of its window */
    a = base_args(), a.q_offset = -ATTN_MAX_DISTANCE;
    expect(ctx, &a, ATTN_OK, "q_offset at -limit");
    for (size_t i = 0; i < sizeof out / sizeof out[0]; i++) assert_true(out[i] == 0.0f);
    a = base_args(), a.q_offset = ATTN_MAX_DISTANCE;
    expect(ctx, &a, ATTN_OK, "q_offset at +limit"); /* window [pos-3, pos]: beyond every key */
    for (size_t i = 0; i < sizeof out / sizeof out[0]; i++) assert_true(out[i] == 0.0f);
    attn_destroy(ctx);
}

/* Regression (from fuzzing): an output row stride above INT_MAX is valid, since the output is
 * no BLAS operand. 8 GiB of address space is reserved but only the two rows written are touched;
 * they must equal the same call with a contiguous output, bit for bit. */
static void test_output_row_stride_above_int_max(void **state)
{
    (void)state;
    const int64_t stride = (int64_t)INT_MAX + 1;
    size_t bytes = ((size_t)stride + D) * sizeof(float);
    float *huge = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                       -1, 0);
    if (huge == MAP_FAILED) {
        print_message("cannot reserve %zu bytes of address space here: skipped\n", bytes);
        skip();
    }
    attn_desc d;
    attn_desc_init(&d);
    d.qk_dim = d.v_dim = D;
    attn_ctx *ctx;
    assert_int_equal(attn_create(&d, &ctx), ATTN_OK);
    attn_args a;
    attn_args_init(&a);
    a.batch = 1, a.q_len = 2, a.kv_len = 5;
    a.q = q, a.k = k, a.v = v;
    a.q_strides = a.k_strides = a.v_strides = attn_strides_bhsd(1, 5, D);
    float dense[2 * D];
    a.out = dense, a.out_strides = attn_strides_bhsd(1, 2, D);
    assert_int_equal(attn_forward(ctx, &a), ATTN_OK);
    a.out = huge, a.out_strides = (attn_strides){0, 0, stride};
    assert_int_equal(attn_forward(ctx, &a), ATTN_OK);
    assert_memory_equal(huge, dense, D * sizeof(float));
    assert_memory_equal(huge + stride, dense + D, D * sizeof(float));
    attn_destroy(ctx);
    munmap(huge, bytes);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hostile_descriptors),
        cmocka_unit_test(test_hostile_arguments),
        cmocka_unit_test(test_output_row_stride_above_int_max),
    };
    return cmocka_run_group_tests_name("hostile", tests, NULL, NULL);
}
