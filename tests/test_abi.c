/*
 * Structs that grow: a caller built against an older, smaller attn_desc or attn_args is
 * accepted with defaults for the fields it lacks, the init functions write exactly the caller's
 * size (checked with guard bytes past the struct), a struct larger than the library knows is
 * refused, the 0.1 init entry points write the 0.1 sizes, and the pinned values a binding
 * mirrors have not moved.
 */
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

#define GUARD 0xA5

/* The sizes of earlier versions, as a program built against their headers has them. */
#define DESC_SIZE_0_1 offsetof(attn_desc, ops)
#define ARGS_SIZE_0_1 offsetof(attn_args, weights_strides)

/* Room for a struct of `size` bytes followed by guard bytes. */
typedef union {
    attn_desc d;
    attn_args a;
    unsigned char bytes[1024];
} buffer;

static void fill_guard(buffer *b)
{
    memset(b->bytes, GUARD, sizeof b->bytes);
}

static void assert_guard_from(const buffer *b, size_t from)
{
    for (size_t i = from; i < sizeof b->bytes; i++)
        if (b->bytes[i] != GUARD)
            fail_msg("byte %zu past a %zu-byte struct was written", i, from);
}

static void test_desc_init_writes_only_the_callers_size(void **state)
{
    (void)state;
    buffer b;
    fill_guard(&b);
    attn_desc_init_size(&b.d, DESC_SIZE_0_1);
    assert_guard_from(&b, DESC_SIZE_0_1);
    assert_int_equal(b.d.struct_size, DESC_SIZE_0_1);
    assert_int_equal(b.d.q_heads, 1);
    assert_int_equal(b.d.window_left, -1);

    fill_guard(&b);
    attn_desc_init(&b.d); /* the macro: this header's size */
    assert_guard_from(&b, sizeof(attn_desc));
    assert_int_equal(b.d.struct_size, sizeof(attn_desc));
    assert_int_equal(b.d.ops, 0);

    /* a caller newer than the library: the unknown tail is zeroed, then refused */
    fill_guard(&b);
    attn_desc_init_size(&b.d, sizeof(attn_desc) + 24);
    assert_guard_from(&b, sizeof(attn_desc) + 24);
    for (size_t i = sizeof(attn_desc); i < sizeof(attn_desc) + 24; i++)
        assert_int_equal(b.bytes[i], 0);
    attn_ctx *ctx = (attn_ctx *)&b;
    assert_int_equal(attn_create(&b.d, &ctx), ATTN_ERR_STRUCT_SIZE);
    assert_null(ctx);
    assert_non_null(strstr(attn_last_error(NULL), "struct_size"));
    assert_int_equal(attn_workspace_size(&b.d), 0);

    /* too small to hold struct_size: nothing written */
    fill_guard(&b);
    attn_desc_init_size(&b.d, sizeof(size_t) - 1);
    assert_guard_from(&b, 0);
    attn_desc_init_size(NULL, sizeof(attn_desc));
}

/* An old caller's descriptor: the fields it knows set, the rest left to the library. */
static void test_old_desc_takes_defaults(void **state)
{
    (void)state;
    buffer b;
    fill_guard(&b);
    attn_desc_init_size(&b.d, DESC_SIZE_0_1);
    b.d.q_heads = 4, b.d.kv_heads = 2, b.d.qk_dim = 16, b.d.v_dim = 8, b.d.threads = 2;
    /* `ops` lies past the old struct: whatever is there (guard bytes) must not be read */
    attn_desc now;
    attn_desc_init(&now);
    now.q_heads = 4, now.kv_heads = 2, now.qk_dim = 16, now.v_dim = 8, now.threads = 2;
    size_t old_size = attn_workspace_size(&b.d);
    assert_true(old_size > 0);
    assert_int_equal(old_size, attn_workspace_size(&now));
    now.ops = ATTN_OP_FORWARD; /* the default, spelled out */
    assert_int_equal(old_size, attn_workspace_size(&now));
    attn_ctx *ctx;
    assert_int_equal(attn_create(&b.d, &ctx), ATTN_OK);
    attn_destroy(ctx);

    /* sizes between the known ones, or below the oldest, are not a struct we know */
    size_t bad[] = {0, sizeof(size_t), DESC_SIZE_0_1 - 4, DESC_SIZE_0_1 + 1, sizeof(attn_desc) + 8};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        attn_desc d;
        attn_desc_init(&d);
        d.struct_size = bad[i];
        assert_int_equal(attn_create(&d, &ctx), ATTN_ERR_STRUCT_SIZE);
    }
    /* unknown operation bits */
    now.ops = 0x80;
    assert_int_equal(attn_create(&now, &ctx), ATTN_ERR_BAD_OPTION);
    assert_non_null(strstr(attn_last_error(NULL), "desc->ops"));
}

enum { B = 2, H = 2, L = 24, D = 8 };

static void make_ctx(attn_ctx **ctx)
{
    attn_desc d;
    attn_desc_init(&d);
    d.q_heads = d.kv_heads = H, d.qk_dim = d.v_dim = D, d.threads = 2, d.flags = ATTN_CAUSAL;
    assert_int_equal(attn_create(&d, ctx), ATTN_OK);
}

static void set_call(attn_args *a, const float *x, float *out, float *w, float *lse, float *ent)
{
    a->batch = B, a->q_len = a->kv_len = L;
    a->q = a->k = a->v = x;
    a->q_strides = a->k_strides = a->v_strides = attn_strides_bhsd(H, L, D);
    a->out = out, a->out_strides = attn_strides_bhsd(H, L, D);
    a->weights_mode = ATTN_WEIGHTS_PER_HEAD, a->weights = w;
    a->lse = lse, a->entropy = ent;
}

/* An old caller's arguments: the output strides it does not know are the contiguous default,
 * so its call gives the same bits as a current caller's with contiguous outputs. */
static void test_old_args_take_defaults(void **state)
{
    (void)state;
    rng r = {11};
    float *x = random_floats(&r, B * H * L * D, 1.0);
    static float out[2][B * H * L * D], w[2][B * H * L * L], lse[2][B * H * L], ent[2][B * H * L];
    attn_ctx *ctx;
    make_ctx(&ctx);

    buffer b;
    fill_guard(&b);
    attn_args_init_size(&b.a, ARGS_SIZE_0_1);
    assert_guard_from(&b, ARGS_SIZE_0_1);
    assert_int_equal(b.a.struct_size, ARGS_SIZE_0_1);
    assert_true(b.a.q_offset == ATTN_Q_OFFSET_DEFAULT);
    set_call(&b.a, x, out[0], w[0], lse[0], ent[0]);
    assert_guard_from(&b, ARGS_SIZE_0_1); /* the strides past it stay guard bytes */
    assert_int_equal(attn_forward(ctx, &b.a), ATTN_OK);

    attn_args now;
    attn_args_init(&now);
    assert_int_equal(now.struct_size, sizeof(attn_args));
    set_call(&now, x, out[1], w[1], lse[1], ent[1]);
    assert_int_equal(attn_forward(ctx, &now), ATTN_OK);
    assert_memory_equal(out[0], out[1], sizeof out[0]);
    assert_memory_equal(w[0], w[1], sizeof w[0]);
    assert_memory_equal(lse[0], lse[1], sizeof lse[0]);
    assert_memory_equal(ent[0], ent[1], sizeof ent[0]);
    /* and the defaults really are the dense layout: row (b=1, h=1, i=3) of lse is finite and
     * a causal row 0 has weight 1 on key 0 */
    assert_true(isfinite(lse[0][(1 * H + 1) * L + 3]));
    assert_true(w[0][0] == 1.0f);

    /* a newer caller's larger struct is refused, nothing written */
    fill_guard(&b);
    attn_args_init_size(&b.a, sizeof(attn_args) + 16);
    set_call(&b.a, x, out[0], w[0], lse[0], ent[0]);
    memset(out[0], 0, sizeof out[0]);
    assert_int_equal(attn_forward(ctx, &b.a), ATTN_ERR_STRUCT_SIZE);
    assert_non_null(strstr(attn_last_error(ctx), "struct_size"));
    for (size_t i = 0; i < sizeof out[0] / sizeof out[0][0]; i++)
        assert_true(out[0][i] == 0.0f);
    attn_destroy(ctx);
    free(x);
}

/* The 0.1 entry points behind the macros write the 0.1 sizes: a program built against 0.1
 * calls them by these names. */
static void test_old_entry_points(void **state)
{
    (void)state;
    buffer b;
    fill_guard(&b);
    (attn_args_init)(&b.a);
    assert_guard_from(&b, ARGS_SIZE_0_1);
    assert_int_equal(b.a.struct_size, ARGS_SIZE_0_1);
    fill_guard(&b);
    (attn_desc_init)(&b.d);
    /* 0.1's attn_desc was the fields through `threads` plus tail padding */
    size_t size_0_1 = (DESC_SIZE_0_1 + _Alignof(attn_desc) - 1) / _Alignof(attn_desc) * _Alignof(attn_desc);
    assert_guard_from(&b, size_0_1);
    assert_int_equal(b.d.struct_size, size_0_1);
    attn_ctx *ctx;
    assert_int_equal(attn_create(&b.d, &ctx), ATTN_OK);
    attn_destroy(ctx);
}

/* The values a binding in another language mirrors (docs/guide.md, "For bindings"). */
static void test_pinned_values(void **state)
{
    (void)state;
    assert_int_equal(ATTN_CAUSAL, 0x1);
    assert_int_equal(ATTN_BLAS_THREADS_UNTOUCHED, 0x2);
    assert_int_equal(ATTN_OP_FORWARD, 0x1);
    assert_int_equal(ATTN_MASKED_ROWS_ZERO, 0);
    assert_int_equal(ATTN_MASKED_ROWS_NAN, 1);
    assert_int_equal(ATTN_WEIGHTS_NONE, 0);
    assert_int_equal(ATTN_WEIGHTS_PER_HEAD, 1);
    assert_int_equal(ATTN_WEIGHTS_HEAD_MEAN, 2);
    assert_true(ATTN_Q_OFFSET_DEFAULT == INT64_MIN);
    assert_true(ATTN_MAX_DISTANCE == INT64_C(4294967295));
    assert_int_equal(ATTN_MAX_HEAD_DIM, 16384);
    assert_int_equal(ATTN_MAX_THREADS, 256);
    assert_int_equal(ATTN_WORKSPACE_ALIGN, 64);
    /* x86-64 / aarch64 (LP64) layout of the structs */
    if (sizeof(void *) == 8) {
        assert_int_equal(sizeof(attn_desc), 80);
        assert_int_equal(offsetof(attn_desc, ops), 68);
        assert_int_equal(offsetof(attn_desc, dropout), 72);
        assert_int_equal(offsetof(attn_desc, threads), 64);
        assert_int_equal(sizeof(attn_args), 352);
        assert_int_equal(offsetof(attn_args, dropout_seed), 336);
        assert_int_equal(offsetof(attn_args, weights_strides), 264);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_desc_init_writes_only_the_callers_size),
        cmocka_unit_test(test_old_desc_takes_defaults),
        cmocka_unit_test(test_old_args_take_defaults),
        cmocka_unit_test(test_old_entry_points),
        cmocka_unit_test(test_pinned_values),
    };
    return cmocka_run_group_tests_name("abi", tests, NULL, NULL);
}
