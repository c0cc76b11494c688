/*
 * What the documentation promises about failures, checked where it was once broken:
 *   - the documented check order: pointers before sizes, also for a static workspace and for
 *     weights requested without a buffer;
 *   - attn_create_static leaves the caller's workspace untouched on every failure but
 *     ATTN_ERR_THREADS;
 *   - stride messages name the offending component;
 *   - aliasing is by address span: an output interleaved with an input is refused, with a
 *     message naming both;
 *   - the distinct-elements rule for outputs refuses interleaved axes such as {0, 3, 2}, as
 *     docs/errors.md says, and accepts the same elements laid out without interleaving;
 *   - the stride helpers saturate instead of overflowing.
 */
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

static void expect(attn_status got, attn_status want, const char *msg, const char *word)
{
    if (got != want || !strstr(msg, word))
        fail_msg("got %s (%s), want %s with \"%s\"", attn_status_str(got), msg,
                 attn_status_str(want), word);
}

static void test_pointers_before_sizes(void **state)
{
    (void)state;
    attn_desc d;
    attn_desc_init(&d);
    d.q_heads = 0; /* a size fault */
    attn_ctx *ctx;
    expect(attn_create_static(&d, NULL, 1 << 20, &ctx), ATTN_ERR_NULL_POINTER,
           attn_last_error(NULL), "workspace is NULL");
    d.q_heads = 3, d.kv_heads = 2; /* a heads fault */
    expect(attn_create_static(&d, NULL, 0, &ctx), ATTN_ERR_NULL_POINTER, attn_last_error(NULL),
           "workspace is NULL");

    attn_desc_init(&d);
    d.threads = 1;
    assert_int_equal(attn_create(&d, &ctx), ATTN_OK);
    static float x[64 * 4];
    attn_args a;
    attn_args_init(&a);
    a.q = a.k = a.v = x, a.out = x + 128;
    a.q_strides = a.k_strides = a.v_strides = a.out_strides = attn_strides_bhsd(1, 1, 64);
    a.batch = 0, a.q_len = a.kv_len = 1; /* a size fault */
    a.weights_mode = ATTN_WEIGHTS_PER_HEAD; /* and weights asked for without a buffer */
    expect(attn_forward(ctx, &a), ATTN_ERR_NULL_POINTER, attn_last_error(ctx), "args->weights");
    a.weights_mode = ATTN_WEIGHTS_NONE;
    expect(attn_forward(ctx, &a), ATTN_ERR_ZERO_SIZE, attn_last_error(ctx), "batch");
    attn_destroy(ctx);
}

static void test_static_workspace_untouched(void **state)
{
    (void)state;
    attn_desc d;
    attn_desc_init(&d);
    d.threads = 2;
    size_t need = attn_workspace_size(&d);
    unsigned char *ws = aligned_alloc(ATTN_WORKSPACE_ALIGN, need + 128);
    attn_ctx *ctx;
    struct {
        attn_desc d;
        void *ws;
        size_t size;
        attn_status want;
    } cases[6];
    int n = 0;
    cases[n].d = d, cases[n].ws = ws, cases[n].size = need - 1, cases[n++].want = ATTN_ERR_WORKSPACE_SIZE;
    cases[n].d = d, cases[n].ws = ws + 8, cases[n].size = need, cases[n++].want = ATTN_ERR_WORKSPACE_ALIGN;
    cases[n].d = d, cases[n].d.qk_dim = 0, cases[n].ws = ws, cases[n].size = need, cases[n++].want = ATTN_ERR_ZERO_SIZE;
    cases[n].d = d, cases[n].d.flags = 0x40, cases[n].ws = ws, cases[n].size = need, cases[n++].want = ATTN_ERR_BAD_OPTION;
    cases[n].d = d, cases[n].d.struct_size = 7, cases[n].ws = ws, cases[n].size = need, cases[n++].want = ATTN_ERR_STRUCT_SIZE;
    cases[n].d = d, cases[n].d.threads = ATTN_MAX_THREADS + 1, cases[n].ws = ws, cases[n].size = need, cases[n++].want = ATTN_ERR_LIMIT;
    for (int i = 0; i < n; i++) {
        memset(ws, 0x5A, need + 128);
        assert_int_equal(attn_create_static(&cases[i].d, cases[i].ws, cases[i].size, &ctx),
                         cases[i].want);
        assert_null(ctx);
        for (size_t j = 0; j < need + 128; j++)
            if (ws[j] != 0x5A)
                fail_msg("case %d (%s): workspace byte %zu written", i,
                         attn_status_str(cases[i].want), j);
    }
    free(ws);
}

enum { B = 2, S = 8, H = 2, D = 4 };

static void base_call(attn_args *a, float *q, float *out)
{
    attn_args_init(a);
    a->batch = B, a->q_len = a->kv_len = S;
    a->q = a->k = a->v = q;
    a->q_strides = a->k_strides = a->v_strides = attn_strides_bhsd(H, S, D);
    a->out = out, a->out_strides = attn_strides_bhsd(H, S, D);
}

static void test_messages_and_rules(void **state)
{
    (void)state;
    attn_desc d;
    attn_desc_init(&d);
    d.q_heads = d.kv_heads = H, d.qk_dim = d.v_dim = D, d.threads = 1;
    attn_ctx *ctx;
    assert_int_equal(attn_create(&d, &ctx), ATTN_OK);
    static float q[B * H * S * D], out[B * H * S * D], packed[B * S * 2 * H * D];
    attn_args a;

    base_call(&a, q, out);
    a.k_strides.batch = -112;
    expect(attn_forward(ctx, &a), ATTN_ERR_STRIDE, attn_last_error(ctx),
           "args->k_strides.batch = -112 is negative");
    base_call(&a, q, out);
    a.out_strides.head = 1; /* heads on top of the features */
    expect(attn_forward(ctx, &a), ATTN_ERR_STRIDE, attn_last_error(ctx), "args->out_strides.head = 1");

    /* [B, S, 2, H, D]: slot 0 is Q (and K, V), slot 1 is out; no element is shared, but the
     * address spans overlap, and the rule is by span */
    base_call(&a, q, out);
    a.q = a.k = a.v = packed, a.out = packed + H * D;
    a.q_strides = a.k_strides = a.v_strides = a.out_strides = attn_strides_bshd(2 * H, S, D);
    expect(attn_forward(ctx, &a), ATTN_ERR_ALIAS, attn_last_error(ctx), "args->out overlaps args->q");

    /* lse of [1, 2, 3] rows with strides {0, 3, 2}: offsets 0,2,4 and 3,5,7 are distinct,
     * but the axes interleave, which the sufficient rule refuses (docs/errors.md) ... */
    attn_desc d2 = d;
    d2.q_heads = d2.kv_heads = 2;
    attn_ctx *c2;
    assert_int_equal(attn_create(&d2, &c2), ATTN_OK);
    static float lse[16];
    base_call(&a, q, out);
    a.batch = 1, a.q_len = a.kv_len = 3;
    a.q_strides = a.k_strides = a.v_strides = a.out_strides = attn_strides_bhsd(2, 3, D);
    a.lse = lse, a.lse_strides = (attn_strides){0, 3, 2};
    expect(attn_forward(c2, &a), ATTN_ERR_STRIDE, attn_last_error(c2), "args->lse_strides.head = 3");
    /* ... while the same rows as [S, H] with strides {0, 1, 2} are fine */
    a.lse_strides = (attn_strides){0, 1, 2};
    assert_int_equal(attn_forward(c2, &a), ATTN_OK);
    attn_destroy(c2);
    attn_destroy(ctx);

    /* the helpers saturate */
    attn_strides s = attn_strides_bhsd(UINT32_MAX, UINT32_MAX, 2);
    assert_true(s.batch == INT64_MAX && s.head == (int64_t)UINT32_MAX * 2 && s.seq == 2);
    s = attn_strides_bshd(UINT32_MAX, UINT32_MAX, 2);
    assert_true(s.batch == INT64_MAX && s.seq == (int64_t)UINT32_MAX * 2 && s.head == 2);
    s = attn_strides_bhsd(UINT32_MAX, UINT32_MAX, UINT32_MAX);
    assert_true(s.batch == INT64_MAX && s.head == INT64_MAX);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pointers_before_sizes),
        cmocka_unit_test(test_static_workspace_untouched),
        cmocka_unit_test(test_messages_and_rules),
    };
    return cmocka_run_group_tests_name("check_order", tests, NULL, NULL);
}
