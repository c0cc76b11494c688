/*
 * The 64 reference problems of tests/data/reference (results computed independently in float64
 * by PyTorch): every case's out, weights, lse and entropy must match within the tolerance of
 * the error model in support/reference.c. The oracle itself is checked against the same data
 * first, to 1e-9, so the model's tolerances are known to sit around the right values.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <attn/attn.h>

#include "support/cases.h"
#include "support/check.h"
#include "support/manifest.h"
#include "support/util.h"

#define NCASES 64

static char *manifest;

static npy_array load_file(const char *case_name, const char *file, int required)
{
    return case_load(ATTN_TEST_DATA_DIR, case_name, file, required);
}

static void run_case(int index, attn_weights_mode mode, attn_masked_rows policy)
{
    manifest_case c;
    assert_int_equal(manifest_case_at(manifest, index, &c), 0);
    npy_array q = load_file(c.name, "q", 1), k = load_file(c.name, "k", 1), v = load_file(c.name, "v", 1);
    npy_array out = load_file(c.name, "out", 1), lse = load_file(c.name, "lse", 1);
    npy_array ent = load_file(c.name, "entropy", 1), w = load_file(c.name, "weights", 1);
    npy_array bias = load_file(c.name, "bias", c.has_bias), mask = load_file(c.name, "mask", c.has_mask);

    attn_desc d;
    case_desc(&c, policy, &d);
    attn_ctx *ctx;
    assert_int_equal(attn_create(&d, &ctx), ATTN_OK);

    size_t rows = (size_t)(c.B * c.Hq * c.Lq);
    float *o = xcalloc(rows * c.Dv, sizeof(float));
    float *l = xcalloc(rows, sizeof(float)), *e = xcalloc(rows, sizeof(float));
    float *wt = xcalloc(rows * c.Lk, sizeof(float));
    attn_args a;
    case_args(&c, &d, &q, &k, &v, o, &bias, &mask, &a);
    a.weights_mode = mode;
    a.weights = mode == ATTN_WEIGHTS_NONE ? NULL : wt;
    a.lse = l;
    a.entropy = e;
    attn_status st = attn_forward(ctx, &a);
    assert_int_equal(st, ATTN_OK);

    /* The oracle against PyTorch's float64 results first. */
    ref_problem p = ref_problem_from(&d, &a);
    p.scale = c.scale;
    ref_result r;
    ref_attention(&p, &r);
    const double *xo = out.data, *xl = lse.data, *xe = ent.data, *xw = w.data;
    case_expect_close_1e9(c.name, "out", r.out, xo, rows * c.Dv);
    for (size_t i = 0; i < rows; i++) {
        assert_true(r.lse[i] == xl[i] || fabs(r.lse[i] - xl[i]) <= 1e-9 * (1.0 + fabs(xl[i])));
        assert_true(fabs(r.entropy[i] - xe[i]) <= 1e-9);
    }
    for (size_t i = 0; i < rows * c.Lk; i++)
        assert_true(fabs(r.weights[i] - xw[i]) <= 1e-9);

    /* Then the library against PyTorch's values, with the oracle's tolerances. */
    memcpy(r.out, xo, rows * c.Dv * sizeof(double));
    memcpy(r.lse, xl, rows * sizeof(double));
    memcpy(r.entropy, xe, rows * sizeof(double));
    memcpy(r.weights, xw, rows * c.Lk * sizeof(double));
    check_stats cs = {0};
    check_outputs(&p, &r, &d, &a, c.name, &cs);
    if (cs.failures)
        fail_msg("%ld of %ld values out of tolerance; first: %s", cs.failures, cs.compared,
                 cs.first_failure);
    assert_true(cs.compared > 0);

    ref_free(&r);
    free(o), free(l), free(e), free(wt);
    npy_free(&q), npy_free(&k), npy_free(&v), npy_free(&out), npy_free(&lse), npy_free(&ent);
    npy_free(&w), npy_free(&bias), npy_free(&mask);
    attn_destroy(ctx);
}

static void test_case(void **state)
{
    int index = (int)(intptr_t)*state;
    run_case(index, ATTN_WEIGHTS_PER_HEAD, ATTN_MASKED_ROWS_ZERO);
    run_case(index, ATTN_WEIGHTS_HEAD_MEAN, ATTN_MASKED_ROWS_ZERO);
    run_case(index, ATTN_WEIGHTS_PER_HEAD, ATTN_MASKED_ROWS_NAN);
}

int main(void)
{
    char path[512];
    snprintf(path, sizeof path, "%s/manifest.json", ATTN_TEST_DATA_DIR);
    manifest = manifest_read(path);
    if (!manifest) {
        fprintf(stderr, "cannot read %s\n", path);
        return 1;
    }
    printf("kernel variant: %s\n", attn_kernel_isa());
    int failed = case_run_group("reference_cases", NCASES, test_case);
    free(manifest);
    return failed;
}
