/*
 * The public API's contract apart from the numbers: every invalid descriptor and argument gets
 * its own status and a message naming the argument, no output is written on failure, the static
 * workspace and the caller allocator behave as documented.
 */
#include <limits.h>
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

/* ---- descriptor errors ------------------------------------------------------------------ */

static attn_desc valid_desc(void)
{
    attn_desc d;
    attn_desc_init(&d);
    d.q_heads = 4;
    d.kv_heads = 2;
    d.qk_dim = 8;
    d.v_dim = 6;
    return d;
}

/* attn_create, attn_create_static and attn_workspace_size must all reject d the same way. */
static void expect_desc_error(attn_desc d, attn_status want, const char *word)
{
    attn_ctx *ctx = (attn_ctx *)(uintptr_t)1;
    assert_int_equal(attn_create(&d, &ctx), want);
    assert_null(ctx);
    if (!strstr(attn_last_error(NULL), word))
        fail_msg("message \"%s\" does not name \"%s\"", attn_last_error(NULL), word);
    static _Alignas(64) unsigned char ws[1 << 20];
    ctx = (attn_ctx *)(uintptr_t)1;
    assert_int_equal(attn_create_static(&d, ws, sizeof ws, &ctx), want);
    assert_null(ctx);
    assert_int_equal(attn_workspace_size(&d), 0);
    assert_non_null(strstr(attn_last_error(NULL), word));
}

static void test_desc_errors(void **state)
{
    (void)state;
    attn_desc d = valid_desc();
    attn_ctx *ctx;
    assert_int_equal(attn_create(NULL, &ctx), ATTN_ERR_NULL_POINTER);
    assert_int_equal(attn_create(&d, NULL), ATTN_ERR_NULL_POINTER);
    assert_int_equal(attn_workspace_size(NULL), 0);

    d = valid_desc(), d.struct_size = sizeof d - 1; /* no version of attn_desc has this size */
    expect_desc_error(d, ATTN_ERR_STRUCT_SIZE, "struct_size");
    d = valid_desc(), d.q_heads = 0;
    expect_desc_error(d, ATTN_ERR_ZERO_SIZE, "q_heads");
    d = valid_desc(), d.kv_heads = 0;
    expect_desc_error(d, ATTN_ERR_ZERO_SIZE, "kv_heads");
    d = valid_desc(), d.qk_dim = 0;
    expect_desc_error(d, ATTN_ERR_ZERO_SIZE, "qk_dim");
    d = valid_desc(), d.v_dim = 0;
    expect_desc_error(d, ATTN_ERR_ZERO_SIZE, "v_dim");
    d = valid_desc(), d.kv_heads = 3;
    expect_desc_error(d, ATTN_ERR_HEADS, "kv_heads = 3");
    d = valid_desc(), d.q_heads = UINT32_MAX, d.kv_heads = 2;
    expect_desc_error(d, ATTN_ERR_HEADS, "kv_heads");
    d = valid_desc(), d.qk_dim = ATTN_MAX_HEAD_DIM + 1;
    expect_desc_error(d, ATTN_ERR_LIMIT, "qk_dim");
    d = valid_desc(), d.v_dim = UINT32_MAX;
    expect_desc_error(d, ATTN_ERR_LIMIT, "v_dim");
    d = valid_desc(), d.scale = NAN;
    expect_desc_error(d, ATTN_ERR_SCALE, "scale");
    d = valid_desc(), d.scale = -INFINITY;
    expect_desc_error(d, ATTN_ERR_SCALE, "scale");
    d = valid_desc(), d.flags = 0x80;
    expect_desc_error(d, ATTN_ERR_BAD_OPTION, "flags");
    d = valid_desc(), d.masked_rows = (attn_masked_rows)5;
    expect_desc_error(d, ATTN_ERR_BAD_OPTION, "masked_rows");
    d = valid_desc(), d.window_left = -2;
    expect_desc_error(d, ATTN_ERR_WINDOW, "window_left");
    d = valid_desc(), d.window_right = ATTN_MAX_DISTANCE + 1;
    expect_desc_error(d, ATTN_ERR_WINDOW, "window_right");
    d = valid_desc(), d.window_left = INT64_MIN;
    expect_desc_error(d, ATTN_ERR_WINDOW, "window_left");
    attn_allocator half = {NULL, NULL, NULL};
    d = valid_desc(), d.allocator = &half;
    expect_desc_error(d, ATTN_ERR_NULL_POINTER, "allocator");

    /* the limits themselves are accepted */
    d = valid_desc(), d.qk_dim = ATTN_MAX_HEAD_DIM, d.window_left = ATTN_MAX_DISTANCE;
    assert_true(attn_workspace_size(&d) > 0);
}

static void test_status_strings(void **state)
{
    (void)state;
    const char *seen[ATTN_ERR_CAPACITY + 1];
    for (int s = 0; s <= ATTN_ERR_CAPACITY; s++) {
        seen[s] = attn_status_str((attn_status)s);
        assert_non_null(seen[s]);
        assert_int_equal(strncmp(seen[s], "ATTN_", 5), 0);
        for (int t = 0; t < s; t++)
            assert_string_not_equal(seen[s], seen[t]);
    }
    assert_string_equal(attn_status_str((attn_status)999), "unknown status");
    /* pinned values */
    assert_int_equal(ATTN_OK, 0);
    assert_int_equal(ATTN_ERR_NULL_POINTER, 1);
    assert_int_equal(ATTN_ERR_KV_LENS, 6);
    assert_int_equal(ATTN_ERR_NO_MEMORY, 16);
    assert_int_equal(ATTN_ERR_THREADS, 17);
    assert_int_equal(ATTN_ERR_BUSY, 18);
    assert_int_equal(ATTN_ERR_FORKED, 19);
    assert_int_equal(ATTN_ERR_CAPACITY, 20);
}

static void test_version(void **state)
{
    (void)state;
    char expect[32];
    snprintf(expect, sizeof expect, "%d.%d.%d", ATTN_VERSION_MAJOR, ATTN_VERSION_MINOR,
             ATTN_VERSION_PATCH);
    assert_string_equal(attn_version_string(), expect);
    assert_string_equal(attn_version_string(), ATTN_VERSION_STRING);
    assert_int_equal(attn_version(), ATTN_VERSION_NUMBER);
    assert_int_equal(attn_version(),
                     ATTN_VERSION_MAJOR * 10000 + ATTN_VERSION_MINOR * 100 + ATTN_VERSION_PATCH);
    const char *isa = attn_kernel_isa();
    assert_true(!strcmp(isa, "scalar") || !strcmp(isa, "avx2") || !strcmp(isa, "avx512"));
}

/* ---- argument errors -------------------------------------------------------------------- */

enum { B = 2, HQ = 4, HKV = 2, LQ = 5, LK = 7, D = 8, DV = 6 };

typedef struct fixture {
    float q[B * HQ * LQ * D], k[B * HKV * LK * D], v[B * HKV * LK * DV];
    float out[B * HQ * LQ * DV], lse[B * HQ * LQ], ent[B * HQ * LQ], w[B * HQ * LQ * LK];
    float bias[B * HQ * LQ * LK];
    uint8_t mask[B * HQ * LQ * LK];
    int32_t kv_lens[B];
    attn_args a;
    attn_ctx *ctx;
} fixture;

static const float SENTINEL = -7777.0f;

static fixture *make_fixture(void)
{
    fixture *f = xcalloc(1, sizeof *f);
    rng r = {99};
    for (size_t i = 0; i < sizeof f->q / sizeof f->q[0]; i++) f->q[i] = (float)rng_normal(&r);
    for (size_t i = 0; i < sizeof f->k / sizeof f->k[0]; i++) f->k[i] = (float)rng_normal(&r);
    for (size_t i = 0; i < sizeof f->v / sizeof f->v[0]; i++) f->v[i] = (float)rng_normal(&r);
    for (size_t i = 0; i < sizeof f->bias / sizeof f->bias[0]; i++) f->bias[i] = (float)rng_normal(&r);
    memset(f->mask, 1, sizeof f->mask);
    f->kv_lens[0] = LK, f->kv_lens[1] = 3;
    attn_desc d = valid_desc();
    d.flags = ATTN_CAUSAL;
    assert_int_equal(attn_create(&d, &f->ctx), ATTN_OK);
    attn_args_init(&f->a);
    attn_args *a = &f->a;
    a->batch = B, a->q_len = LQ, a->kv_len = LK;
    a->q = f->q, a->q_strides = attn_strides_bhsd(HQ, LQ, D);
    a->k = f->k, a->k_strides = attn_strides_bhsd(HKV, LK, D);
    a->v = f->v, a->v_strides = attn_strides_bhsd(HKV, LK, DV);
    a->out = f->out, a->out_strides = attn_strides_bhsd(HQ, LQ, DV);
    a->lse = f->lse, a->entropy = f->ent;
    a->weights_mode = ATTN_WEIGHTS_PER_HEAD, a->weights = f->w;
    a->bias = f->bias, a->bias_strides = attn_strides_bhsd(HQ, LQ, LK);
    a->mask = f->mask, a->mask_strides = attn_strides_bhsd(HQ, LQ, LK);
    a->kv_lens = f->kv_lens;
    return f;
}

static void fill_outputs(fixture *f)
{
    for (size_t i = 0; i < sizeof f->out / sizeof f->out[0]; i++) f->out[i] = SENTINEL;
    for (size_t i = 0; i < sizeof f->lse / sizeof f->lse[0]; i++) f->lse[i] = f->ent[i] = SENTINEL;
    for (size_t i = 0; i < sizeof f->w / sizeof f->w[0]; i++) f->w[i] = SENTINEL;
}

static void assert_outputs_untouched(const fixture *f)
{
    for (size_t i = 0; i < sizeof f->out / sizeof f->out[0]; i++) assert_true(f->out[i] == SENTINEL);
    for (size_t i = 0; i < sizeof f->lse / sizeof f->lse[0]; i++)
        assert_true(f->lse[i] == SENTINEL && f->ent[i] == SENTINEL);
    for (size_t i = 0; i < sizeof f->w / sizeof f->w[0]; i++) assert_true(f->w[i] == SENTINEL);
}

/* Runs the call with args `a`, expects `want` and a message containing `word`. */
static void expect_arg_error(fixture *f, const attn_args *a, attn_status want, const char *word)
{
    fill_outputs(f);
    attn_status got = attn_forward(f->ctx, a);
    if (got != want)
        fail_msg("expected %s, got %s (%s)", attn_status_str(want), attn_status_str(got),
                 attn_last_error(f->ctx));
    if (!strstr(attn_last_error(f->ctx), word))
        fail_msg("message \"%s\" does not name \"%s\"", attn_last_error(f->ctx), word);
    assert_outputs_untouched(f);
}

static void test_arg_errors(void **state)
{
    (void)state;
    fixture *f = make_fixture();
    attn_args a;

    fill_outputs(f);
    assert_int_equal(attn_forward(NULL, &f->a), ATTN_ERR_NULL_POINTER);
    assert_outputs_untouched(f);
    expect_arg_error(f, NULL, ATTN_ERR_NULL_POINTER, "args");

    a = f->a, a.struct_size = 3;
    expect_arg_error(f, &a, ATTN_ERR_STRUCT_SIZE, "struct_size");
    a = f->a, a.q = NULL;
    expect_arg_error(f, &a, ATTN_ERR_NULL_POINTER, "args->q");
    a = f->a, a.k = NULL;
    expect_arg_error(f, &a, ATTN_ERR_NULL_POINTER, "args->k");
    a = f->a, a.v = NULL;
    expect_arg_error(f, &a, ATTN_ERR_NULL_POINTER, "args->v");
    a = f->a, a.out = NULL;
    expect_arg_error(f, &a, ATTN_ERR_NULL_POINTER, "args->out");
    a = f->a, a.batch = 0;
    expect_arg_error(f, &a, ATTN_ERR_ZERO_SIZE, "batch");
    a = f->a, a.q_len = 0;
    expect_arg_error(f, &a, ATTN_ERR_ZERO_SIZE, "q_len");
    a = f->a, a.kv_len = 0;
    expect_arg_error(f, &a, ATTN_ERR_ZERO_SIZE, "kv_len");

    a = f->a, a.weights_mode = (attn_weights_mode)9;
    expect_arg_error(f, &a, ATTN_ERR_BAD_OPTION, "weights_mode");
    a = f->a, a.weights_mode = ATTN_WEIGHTS_NONE;
    expect_arg_error(f, &a, ATTN_ERR_BAD_OPTION, "weights");
    a = f->a, a.weights = NULL;
    expect_arg_error(f, &a, ATTN_ERR_NULL_POINTER, "weights");

    a = f->a, a.k_strides.head = -1;
    expect_arg_error(f, &a, ATTN_ERR_STRIDE, "k_strides");
    a = f->a, a.q_strides.seq = D - 1;
    expect_arg_error(f, &a, ATTN_ERR_STRIDE, "q_strides.seq");
    a = f->a, a.v_strides.seq = 0;
    expect_arg_error(f, &a, ATTN_ERR_STRIDE, "v_strides.seq");
    a = f->a, a.out_strides.batch = 0;
    expect_arg_error(f, &a, ATTN_ERR_STRIDE, "out_strides");
    a = f->a, a.out_strides.head = DV; /* heads interleave with rows */
    expect_arg_error(f, &a, ATTN_ERR_STRIDE, "out_strides");
    a = f->a, a.mask_strides.seq = -3;
    expect_arg_error(f, &a, ATTN_ERR_STRIDE, "mask_strides");

    a = f->a, a.q_strides.batch = INT64_MAX / 2;
    expect_arg_error(f, &a, ATTN_ERR_OVERFLOW, "args->q");
    a = f->a, a.bias_strides.seq = INT64_MAX / 3;
    expect_arg_error(f, &a, ATTN_ERR_OVERFLOW, "args->bias");
    a = f->a, a.k_strides.seq = (int64_t)INT_MAX + 1;
    expect_arg_error(f, &a, ATTN_ERR_OVERFLOW, "k_strides.seq");
    a = f->a, a.k_strides.seq = (int64_t)1 << 61; /* extent overflows even as bytes */
    expect_arg_error(f, &a, ATTN_ERR_OVERFLOW, "args->k");
    a = f->a, a.batch = UINT32_MAX, a.q_len = UINT32_MAX, a.kv_len = UINT32_MAX;
    a.q_strides = a.k_strides = a.v_strides = (attn_strides){0, 0, 0};
    a.kv_lens = NULL, a.mask = NULL, a.bias = NULL;
    expect_arg_error(f, &a, ATTN_ERR_STRIDE, "q_strides.seq");

    a = f->a, a.q_offset = ATTN_MAX_DISTANCE + 1;
    expect_arg_error(f, &a, ATTN_ERR_OFFSET, "q_offset");
    a = f->a, a.q_offset = INT64_MIN + 1;
    expect_arg_error(f, &a, ATTN_ERR_OFFSET, "q_offset");

    int32_t bad_lens[B] = {LK, LK + 1};
    a = f->a, a.kv_lens = bad_lens;
    expect_arg_error(f, &a, ATTN_ERR_KV_LENS, "kv_lens[1] = 8");
    bad_lens[0] = -1, bad_lens[1] = 0;
    expect_arg_error(f, &a, ATTN_ERR_KV_LENS, "kv_lens[0] = -1");

    a = f->a, a.out = f->q;
    expect_arg_error(f, &a, ATTN_ERR_ALIAS, "overlaps args->q");
    a = f->a, a.entropy = f->lse + 1;
    expect_arg_error(f, &a, ATTN_ERR_ALIAS, "overlaps");
    a = f->a, a.weights = f->bias + 5;
    expect_arg_error(f, &a, ATTN_ERR_ALIAS, "weights overlaps args->");
    a = f->a, a.lse = (float *)(void *)f->kv_lens;
    expect_arg_error(f, &a, ATTN_ERR_ALIAS, "kv_lens");

    /* a success clears the message; the same fixture is valid */
    assert_int_equal(attn_forward(f->ctx, &f->a), ATTN_OK);
    assert_string_equal(attn_last_error(f->ctx), "");
    attn_destroy(f->ctx);
    free(f);
}

/* ---- workspace and allocation ----------------------------------------------------------- */

typedef struct counting {
    int allocs, frees, fail_next;
    size_t bytes;
} counting;

static void *counting_alloc(void *user, size_t size, size_t alignment)
{
    counting *c = user;
    if (c->fail_next) {
        c->fail_next = 0;
        return NULL;
    }
    c->allocs++;
    c->bytes += size;
    assert_true(alignment >= 64 && (alignment & (alignment - 1)) == 0);
    return aligned_alloc(alignment, (size + alignment - 1) / alignment * alignment);
}

static void counting_free(void *user, void *p)
{
    counting *c = user;
    assert_non_null(p);
    c->frees++;
    free(p);
}

/* A long problem (64k queries and keys, sliding window) through a counting allocator: one
 * allocation at creation of attn_workspace_size bytes, none during forward, one free. */
static void test_counting_allocator(void **state)
{
    (void)state;
    counting c = {0, 0, 0, 0};
    attn_allocator al = {counting_alloc, counting_free, &c};
    attn_desc d;
    attn_desc_init(&d);
    d.qk_dim = d.v_dim = 64;
    d.flags = ATTN_CAUSAL;
    d.window_left = 64;
    d.allocator = &al;
    attn_ctx *ctx;
    c.fail_next = 1;
    assert_int_equal(attn_create(&d, &ctx), ATTN_ERR_NO_MEMORY);
    assert_null(ctx);
    assert_non_null(strstr(attn_last_error(NULL), "workspace"));
    assert_int_equal(c.allocs, 0);

    assert_int_equal(attn_create(&d, &ctx), ATTN_OK);
    assert_int_equal(c.allocs, 1);
    assert_int_equal(c.bytes, attn_workspace_size(&d));
    print_message("workspace for qk_dim = v_dim = 64 on %s threads: %zu bytes\n",
                  "all available", c.bytes);
    assert_true(c.bytes <= (8u << 20)); /* the bound promised for 64k-token problems */

    enum { L = 65536 };
    float *q = xcalloc((size_t)L * 64, sizeof(float)), *out = xcalloc((size_t)L * 64, sizeof(float));
    rng r = {5};
    for (size_t i = 0; i < (size_t)L * 64; i++) q[i] = (float)rng_normal(&r);
    attn_args a;
    attn_args_init(&a);
    a.batch = 1, a.q_len = L, a.kv_len = L;
    a.q = a.k = a.v = q; /* inputs may alias each other */
    a.q_strides = a.k_strides = a.v_strides = a.out_strides = attn_strides_bhsd(1, L, 64);
    a.out = out;
    assert_int_equal(attn_forward(ctx, &a), ATTN_OK);
    assert_int_equal(c.allocs, 1);
    assert_int_equal(c.frees, 0);
    /* spot check: row 0 sees only key 0, so it returns v[0] */
    for (int i = 0; i < 64; i++)
        assert_true(out[i] == q[i]);
    for (size_t i = 0; i < (size_t)L * 64; i++)
        assert_true(isfinite(out[i]));
    attn_destroy(ctx);
    assert_int_equal(c.frees, 1);
    free(q);
    free(out);
}

static void test_static_workspace(void **state)
{
    (void)state;
    attn_desc d = valid_desc();
    d.flags = ATTN_CAUSAL;
    size_t need = attn_workspace_size(&d);
    assert_true(need > 0);
    unsigned char *raw = aligned_alloc(64, need + 128);
    attn_ctx *ctx;
    assert_int_equal(attn_create_static(&d, NULL, need, &ctx), ATTN_ERR_NULL_POINTER);
    assert_int_equal(attn_create_static(&d, raw, need, NULL), ATTN_ERR_NULL_POINTER);
    assert_int_equal(attn_create_static(&d, raw + 4, need, &ctx), ATTN_ERR_WORKSPACE_ALIGN);
    assert_null(ctx);
    assert_non_null(strstr(attn_last_error(NULL), "aligned"));
    assert_int_equal(attn_create_static(&d, raw, need - 1, &ctx), ATTN_ERR_WORKSPACE_SIZE);
    assert_non_null(strstr(attn_last_error(NULL), "workspace_size"));
    assert_int_equal(attn_create_static(&d, raw + 64, need, &ctx), ATTN_OK);

    /* the static context computes exactly what a heap context computes */
    fixture *f = make_fixture();
    float heap_out[sizeof f->out / sizeof f->out[0]];
    assert_int_equal(attn_forward(f->ctx, &f->a), ATTN_OK);
    memcpy(heap_out, f->out, sizeof heap_out);
    fill_outputs(f);
    assert_int_equal(attn_forward(ctx, &f->a), ATTN_OK);
    assert_memory_equal(heap_out, f->out, sizeof heap_out);
    attn_destroy(ctx); /* only invalidates: the memory stays the caller's */
    attn_destroy(NULL);
    attn_destroy(f->ctx);
    free(f);
    free(raw);
}

/* The workspace is a function of the descriptor alone: it grows with the head dims and the
 * thread count, and with nothing else. */
static void test_workspace_size(void **state)
{
    (void)state;
    attn_desc d = valid_desc();
    d.threads = 1;
    size_t base = attn_workspace_size(&d);
    d.flags = ATTN_CAUSAL, d.window_left = 5, d.q_heads = 64, d.kv_heads = 8;
    assert_int_equal(attn_workspace_size(&d), base);
    d.v_dim = 128;
    assert_true(attn_workspace_size(&d) > base);
    d.threads = 2;
    assert_true(attn_workspace_size(&d) > attn_workspace_size(&(attn_desc){.struct_size = 0}));
    size_t two = attn_workspace_size(&d);
    d.threads = 1;
    assert_true(two > attn_workspace_size(&d));
    d.v_dim = ATTN_MAX_HEAD_DIM, d.qk_dim = ATTN_MAX_HEAD_DIM;
    print_message("workspace at the head-dim limit, one thread: %zu bytes\n", attn_workspace_size(&d));
    /* five 64-row buffers of the widest head (scores, accumulator, gathered queries, one split
     * partial, the fold's carry) and small change */
    assert_true(attn_workspace_size(&d) < 5u * 64u * ATTN_MAX_HEAD_DIM * 4u + (1u << 20));
    d.threads = ATTN_MAX_THREADS + 1;
    assert_int_equal(attn_workspace_size(&d), 0);
    assert_non_null(strstr(attn_last_error(NULL), "threads"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_desc_errors),     cmocka_unit_test(test_status_strings),
        cmocka_unit_test(test_version),         cmocka_unit_test(test_arg_errors),
        cmocka_unit_test(test_counting_allocator), cmocka_unit_test(test_static_workspace),
        cmocka_unit_test(test_workspace_size),
    };
    return cmocka_run_group_tests_name("api", tests, NULL, NULL);
}
