/*
 * Internal properties of the engine that the public API cannot reach cheaply:
 *   - tile counts are computed in 64 bits: a length near 2^32 does not wrap to 0 blocks;
 *   - every slot of every kernel table is filled (scalar first, then the overrides);
 *   - the online-softmax merge of two partial states equals the state over the union of their
 *     keys (float64 reference), including parts that saw no key.
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

#include "dispatch/dispatch.h"
#include "engine/tiles.h"
#include "kernels/softmax_state.h"
#include "support/util.h"

static void test_tile_counts_do_not_wrap(void **state)
{
    (void)state;
    /* The largest lengths the API accepts are UINT32_MAX; (n + 63) in 32 bits wraps for
     * n >= 2^32 - 63, which once gave 0 query blocks and an ATTN_OK that wrote nothing. */
    uint32_t lens[] = {1, 64, 65, UINT32_MAX - 63, UINT32_MAX - 62, UINT32_MAX - 1, UINT32_MAX};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        int64_t n = lens[i];
        int64_t q_blocks = attn_tiles(lens[i], ATTN_TILE_Q);
        int64_t k_tiles = attn_tiles(lens[i], ATTN_TILE_K);
        int64_t chunks = attn_tiles(lens[i], ATTN_SPLIT_KEYS);
        assert_true(q_blocks * ATTN_TILE_Q >= n && (q_blocks - 1) * ATTN_TILE_Q < n);
        assert_true(k_tiles * ATTN_TILE_K >= n && (k_tiles - 1) * ATTN_TILE_K < n);
        assert_true(chunks * ATTN_SPLIT_KEYS >= n && (chunks - 1) * ATTN_SPLIT_KEYS < n);
    }
    assert_int_equal(attn_tiles(UINT32_MAX, 64), 67108864);
}

static void test_kernel_tables_complete(void **state)
{
    (void)state;
    const char *isas[] = {"scalar", "avx2", "avx512"};
    int found = 0;
    for (size_t i = 0; i < 3; i++) {
        const attn_kernels *k = attn_dispatch_lookup(isas[i]);
        if (!k)
            continue;
        found++;
        assert_string_equal(k->name, isas[i]);
        assert_non_null(k->online_row);
        assert_non_null(k->probs_row);
        assert_non_null(k->dropout_row);
        assert_non_null(k->keep_row);
    }
    assert_true(found >= 1);
    assert_non_null(attn_dispatch_kernels()->online_row);
}

/* m, l, u of scores s[0..n) in float64 (n may be 0: the empty state). */
static void ref_state(const float *s, int n, double *m, double *l, double *u)
{
    *m = -INFINITY, *l = 0.0, *u = 0.0;
    for (int j = 0; j < n; j++)
        *m = s[j] > *m ? s[j] : *m;
    for (int j = 0; j < n; j++) {
        double d = s[j] - *m, e = exp(d);
        *l += e;
        *u += e * d;
    }
}

static void test_state_merge(void **state)
{
    (void)state;
    const attn_kernels *k = attn_dispatch_lookup("scalar");
    const attn_row_coord at = {0, 0, 0, 0};
    rng r = {5};
    for (int trial = 0; trial < 500; trial++) {
        int n1 = (int)rng_below(&r, 40), n2 = (int)rng_below(&r, 40);
        double amp = trial % 5 == 0 ? 50.0 : 2.0;
        float s[80], work[80];
        for (int j = 0; j < n1 + n2; j++)
            s[j] = (float)(rng_normal(&r) * amp + (j < n1 ? 0.0 : rng_normal(&r) * amp));
        attn_row_state a = attn_state_empty(), b = attn_state_empty();
        memcpy(work, s, sizeof s);
        if (n1)
            k->online_row(work, (size_t)n1, NULL, NULL, &a, 1, &at);
        if (n2)
            k->online_row(work + n1, (size_t)n2, NULL, NULL, &b, 1, &at);
        float ac = -1.0f, ap = -1.0f;
        attn_merge_kind kind = attn_state_merge(&a, &b, &ac, &ap);
        assert_int_equal(kind, n2 == 0 ? ATTN_MERGE_KEEP : n1 == 0 ? ATTN_MERGE_TAKE : ATTN_MERGE_BLEND);
        double m, l, u;
        ref_state(s, n1 + n2, &m, &l, &u);
        if (n1 + n2 == 0) {
            assert_true(a.l == 0.0f && a.m == -INFINITY);
            continue;
        }
        assert_true(a.m == (float)m);
        assert_true(fabs(a.l - l) <= 1e-5 * l);
        double ent = log(l) - u / l, got = log(a.l) - a.u / a.l;
        assert_true(fabs(got - ent) <= 1e-4 * (1.0 + ent));
        if (kind == ATTN_MERGE_BLEND) { /* the factors rescale each part to the new maximum */
            assert_true(ac >= 0.0f && ac <= 1.0f && ap >= 0.0f && ap <= 1.0f);
            assert_true(ac == 1.0f || ap == 1.0f);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tile_counts_do_not_wrap),
        cmocka_unit_test(test_kernel_tables_complete),
        cmocka_unit_test(test_state_merge),
    };
    return cmocka_run_group_tests_name("engine", tests, NULL, NULL);
}
