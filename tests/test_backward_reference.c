/*
 * The 40 backward problems of tests/data/training/backward (gradients computed independently in
 * float64 by PyTorch autograd): the float64 backward oracle is first checked against them to
 * 1e-9, then attn_backward, fed with libattn's own forward output and lse, must match PyTorch's
 * dq, dk, dv and dbias within the oracle's tolerances, under both masked-row policies.
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
#include "support/manifest.h"
#include "support/reference_backward.h"
#include "support/util.h"

#define NCASES 40

static char *manifest;

static npy_array load_file(const char *case_name, const char *file, int required)
{
    return case_load(ATTN_TEST_BACKWARD_DIR, case_name, file, required);
}

static void run_case(int index, attn_masked_rows policy, grad_stats *st)
{
    manifest_case c;
    assert_int_equal(manifest_case_at(manifest, index, &c), 0);
    npy_array q = load_file(c.name, "q", 1), k = load_file(c.name, "k", 1), v = load_file(c.name, "v", 1);
    npy_array dout = load_file(c.name, "dout", 1), xdq = load_file(c.name, "dq", 1);
    npy_array xdk = load_file(c.name, "dk", 1), xdv = load_file(c.name, "dv", 1);
    npy_array bias = load_file(c.name, "bias", c.has_bias), mask = load_file(c.name, "mask", c.has_mask);
    npy_array xdb = load_file(c.name, "dbias", c.has_bias);

    attn_desc d;
    case_desc(&c, policy, &d);
    d.ops = ATTN_OP_FORWARD | ATTN_OP_BACKWARD;
    attn_ctx *ctx;
    assert_int_equal(attn_create(&d, &ctx), ATTN_OK);

    size_t rows = (size_t)(c.B * c.Hq * c.Lq);
    float *o = xcalloc(rows * c.Dv, sizeof(float)), *l = xcalloc(rows, sizeof(float));
    attn_args a;
    case_args(&c, &d, &q, &k, &v, o, &bias, &mask, &a);
    a.lse = l;
    assert_int_equal(attn_forward(ctx, &a), ATTN_OK);

    float *dq = xcalloc(rows * c.D, sizeof(float));
    float *dk = xcalloc((size_t)(c.B * c.Hkv * c.Lk * c.D), sizeof(float));
    float *dv = xcalloc((size_t)(c.B * c.Hkv * c.Lk * c.Dv), sizeof(float));
    float *db = c.has_bias ? xcalloc(bias.count, sizeof(float)) : NULL;
    attn_backward_args g;
    attn_backward_args_init(&g);
    g.batch = a.batch, g.q_len = a.q_len, g.kv_len = a.kv_len;
    g.q = a.q, g.q_strides = a.q_strides, g.k = a.k, g.k_strides = a.k_strides;
    g.v = a.v, g.v_strides = a.v_strides, g.out = o, g.out_strides = a.out_strides;
    g.dout = dout.data, g.dout_strides = a.out_strides, g.lse = l;
    g.q_offset = a.q_offset, g.kv_lens = a.kv_lens;
    g.mask = a.mask, g.mask_strides = a.mask_strides, g.bias = a.bias, g.bias_strides = a.bias_strides;
    g.dq = dq, g.dq_strides = a.q_strides, g.dk = dk, g.dk_strides = a.k_strides;
    g.dv = dv, g.dv_strides = a.v_strides, g.dbias = db;
    attn_status status = attn_backward(ctx, &g);
    if (status != ATTN_OK)
        fail_msg("%s: %s (%s)", c.name, attn_status_str(status), attn_last_error(ctx));

    /* the oracle against PyTorch first */
    ref_problem p = ref_problem_from(&d, &a);
    p.scale = c.scale;
    ref_result r;
    ref_attention(&p, &r);
    const float *gf = dout.data;
    double *gd = xcalloc(rows * c.Dv, sizeof(double));
    for (size_t i = 0; i < rows * c.Dv; i++)
        gd[i] = gf[i];
    ref_grads rg;
    ref_backward(&p, &r, gd, &rg);
    size_t nk = (size_t)(c.B * c.Hkv * c.Lk);
    case_expect_close_1e9(c.name, "dq", rg.dq, xdq.data, rows * c.D);
    case_expect_close_1e9(c.name, "dk", rg.dk, xdk.data, nk * c.D);
    case_expect_close_1e9(c.name, "dv", rg.dv, xdv.data, nk * c.Dv);
    if (c.has_bias) {
        assert_int_equal(xdb.count, (size_t)(rg.Bb * rg.Hb * rg.Lqb * c.Lk));
        case_expect_close_1e9(c.name, "dbias", rg.dbias, xdb.data, xdb.count);
    }
    /* then the library against PyTorch, with the oracle's tolerances */
    memcpy(rg.dq, xdq.data, rows * c.D * sizeof(double));
    memcpy(rg.dk, xdk.data, nk * c.D * sizeof(double));
    memcpy(rg.dv, xdv.data, nk * c.Dv * sizeof(double));
    check_grad("dq", dq, a.q_strides, c.B, c.Hq, c.Lq, c.D, rg.dq, rg.dq_tol, c.name, st);
    check_grad("dk", dk, a.k_strides, c.B, c.Hkv, c.Lk, c.D, rg.dk, rg.dk_tol, c.name, st);
    check_grad("dv", dv, a.v_strides, c.B, c.Hkv, c.Lk, c.Dv, rg.dv, rg.dv_tol, c.name, st);
    if (c.has_bias) {
        memcpy(rg.dbias, xdb.data, xdb.count * sizeof(double));
        attn_strides s = {rg.Hb * rg.Lqb * c.Lk, rg.Lqb * c.Lk, c.Lk};
        check_grad("dbias", db, s, rg.Bb, rg.Hb, rg.Lqb, c.Lk, rg.dbias, rg.dbias_tol, c.name, st);
    }
    if (st->failures)
        fail_msg("%ld of %ld gradients out of tolerance; first: %s", st->failures, st->compared,
                 st->first_failure);
    ref_grads_free(&rg), ref_free(&r), free(gd);
    free(o), free(l), free(dq), free(dk), free(dv), free(db);
    npy_free(&q), npy_free(&k), npy_free(&v), npy_free(&dout), npy_free(&xdq), npy_free(&xdk);
    npy_free(&xdv), npy_free(&bias), npy_free(&mask), npy_free(&xdb);
    attn_destroy(ctx);
}

static grad_stats totals;

static void test_case(void **state)
{
    int index = (int)(intptr_t)*state;
    run_case(index, ATTN_MASKED_ROWS_ZERO, &totals);
    run_case(index, ATTN_MASKED_ROWS_NAN, &totals);
}

int main(void)
{
    char path[512];
    snprintf(path, sizeof path, "%s/manifest.json", ATTN_TEST_BACKWARD_DIR);
    manifest = manifest_read(path);
    if (!manifest) {
        fprintf(stderr, "cannot read %s\n", path);
        return 1;
    }
    int failed = case_run_group("backward_reference", NCASES, test_case);
    printf("kernel variant %s: %ld gradients compared, worst error/tolerance %.3f\n",
           attn_kernel_isa(), totals.compared, totals.worst_ratio);
    free(manifest);
    return failed;
}
