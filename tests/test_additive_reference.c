/*
 * The 24 problems of tests/data/training/additive (additive attention computed in float64 by
 * PyTorch autograd; manifest.json pins the semantics): the float64 reference of
 * tests/support/reference_additive.c must agree with PyTorch to 1e-9 on every output and
 * gradient, and attn_additive_forward / attn_additive_backward with PyTorch within the
 * tolerance of docs/testing.md ("Additive attention's tolerance"), on 1 and 2 threads.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "support/additive_run.h"
#include "support/npy.h"
#include "support/util.h"

#define NCASES 24

static char *manifest;

static const char *field(const char *obj, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(obj, pat);
    if (!p)
        fail_msg("manifest: no %s", key);
    p += strlen(pat);
    while (*p == ' ' || *p == '\n')
        p++;
    return p;
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *t = xcalloc((size_t)n + 1, 1);
    if (fread(t, 1, (size_t)n, f) != (size_t)n)
        t[0] = 0;
    fclose(f);
    return t;
}

static npy_array load(const char *case_name, const char *file, int required)
{
    char path[512], err[600];
    snprintf(path, sizeof path, "%s/%s/%s.npy", ATTN_TEST_ADDITIVE_DIR, case_name, file);
    npy_array a;
    memset(&a, 0, sizeof a);
    if (npy_load(path, &a, err, sizeof err) != 0) {
        if (required)
            fail_msg("%s", err);
        memset(&a, 0, sizeof a);
    }
    return a;
}

static double worst_ratio, worst_oracle;
static double max_abs[12];
static const char *const names[12] = {"out", "weights", "dq", "dk", "dv", "dW_q", "dW_k",
                                      "dbias", "dw"};

static void oracle_vs_pytorch(const char *cname, const char *what, const double *ours,
                              const npy_array *theirs)
{
    const double *t = theirs->data;
    for (size_t i = 0; i < theirs->count; i++) {
        double e = fabs(ours[i] - t[i]) / (1.0 + fabs(t[i]));
        worst_oracle = e > worst_oracle ? e : worst_oracle;
        if (!(e <= 1e-9))
            fail_msg("%s oracle %s[%zu] = %.12g, PyTorch %.12g", cname, what, i, ours[i], t[i]);
    }
}

static void run_case(int index, uint32_t threads)
{
    char cname[16], pat[64];
    snprintf(cname, sizeof cname, "case%03d", index);
    snprintf(pat, sizeof pat, "\"name\": \"%s\"", cname);
    const char *obj = strstr(manifest, pat);
    if (!obj)
        fail_msg("manifest: no %s", cname);
    adt_case c;
    memset(&c, 0, sizeof c);
    c.B = atoi(field(obj, "B")), c.Lq = atoi(field(obj, "Lq")), c.Lk = atoi(field(obj, "Lk"));
    c.Dq = atoi(field(obj, "Dq")), c.Dk = atoi(field(obj, "Dk")), c.Dv = atoi(field(obj, "Dv"));
    c.A = atoi(field(obj, "A"));
    c.bias = strncmp(field(obj, "has_bias"), "true", 4) == 0;
    c.causal = strncmp(field(obj, "causal"), "true", 4) == 0;
    int32_t kv_lens[16];
    const char *kl = field(obj, "kv_lens");
    if (*kl == '[') {
        const char *p = kl + 1;
        for (int b = 0; b < c.B; b++) {
            char *end;
            kv_lens[b] = (int32_t)strtol(p, &end, 10);
            p = end + 1;
        }
        c.kv_lens = kv_lens;
    }
    npy_array q = load(cname, "q", 1), k = load(cname, "k", 1), v = load(cname, "v", 1);
    npy_array wq = load(cname, "W_q", 1), wk = load(cname, "W_k", 1), w = load(cname, "w", 1);
    npy_array b = load(cname, "bias", c.bias), dout = load(cname, "dout", 1);
    c.q = q.data, c.k = k.data, c.v = v.data, c.wq = wq.data, c.wk = wk.data, c.w = w.data;
    c.b = b.data, c.dout = dout.data, c.threads = threads;
    c.want_weights = c.want_lse = c.want_entropy = 1;
    adt_out o;
    char err[512];
    attn_status st = adt_run(&c, &o, err, sizeof err);
    if (st != ATTN_OK)
        fail_msg("%s: %s", cname, err);

    refa_problem p;
    adt_ref_problem(&c, &p);
    refa_result r;
    refa_forward(&p, &r);
    double *dd = refa_widen(c.dout, (size_t)c.B * c.Lq * c.Dv);
    refa_grads g;
    refa_backward(&p, &r, dd, &g);

    /* the oracle against PyTorch, and ours against PyTorch's numbers in the oracle's place */
    const char *files[9] = {"out", "weights", "dq", "dk", "dv", "dW_q", "dW_k", "dbias", "dw"};
    double *mine[9] = {r.out, r.weights, g.dq, g.dk, g.dv, g.dwq, g.dwk, g.dbias, g.dw};
    const float *got[9] = {o.out, o.weights, o.dq, o.dk, o.dv, o.dwq, o.dwk, o.dbias, o.dw};
    npy_array ref[9];
    for (int x = 0; x < 9; x++) {
        ref[x] = load(cname, files[x], x != 7 || c.bias);
        if (!ref[x].data)
            continue;
        oracle_vs_pytorch(cname, files[x], mine[x], &ref[x]);
        const double *t = ref[x].data;
        for (size_t i = 0; i < ref[x].count; i++) {
            double e = fabs((double)got[x][i] - t[i]);
            max_abs[x] = e > max_abs[x] ? e : max_abs[x];
        }
        memcpy(mine[x], ref[x].data, ref[x].count * sizeof(double));
    }
    char msg[512];
    double ratio = adt_check(&c, &o, &r, &g, msg, sizeof msg);
    if (!(ratio <= 1.0))
        fail_msg("%s (%u threads): %s", cname, threads, msg);
    worst_ratio = ratio > worst_ratio ? ratio : worst_ratio;

    /* rows that see no key: out 0 and lse -inf (the manifest's rule) */
    for (int row = 0; row < c.B * c.Lq; row++)
        if (r.lse[row] == -INFINITY) {
            assert_true(o.lse[row] == -INFINITY);
            for (int d = 0; d < c.Dv; d++)
                assert_true(o.out[row * c.Dv + d] == 0.0f);
        }
    for (int x = 0; x < 9; x++)
        npy_free(&ref[x]);
    refa_grads_free(&g), refa_free(&r), adt_ref_free(&p), free(dd);
    adt_out_free(&o);
    npy_free(&q), npy_free(&k), npy_free(&v), npy_free(&wq), npy_free(&wk), npy_free(&w);
    npy_free(&b), npy_free(&dout);
}

static void test_pytorch_problems(void **state)
{
    (void)state;
    for (int i = 0; i < NCASES; i++)
        for (uint32_t t = 1; t <= 2; t++)
            run_case(i, t);
    printf("oracle vs PyTorch: worst relative difference %.3g\n", worst_oracle);
    printf("library vs PyTorch over the %d problems (1 and 2 threads): worst error / tolerance "
           "%.3g; max abs errors:", NCASES, worst_ratio);
    for (int x = 0; x < 9; x++)
        printf(" %s %.2g", names[x], max_abs[x]);
    printf("\n");
}

int main(void)
{
    manifest = read_text(ATTN_TEST_ADDITIVE_DIR "/manifest.json");
    if (!manifest) {
        fprintf(stderr, "cannot read %s/manifest.json\n", ATTN_TEST_ADDITIVE_DIR);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pytorch_problems),
    };
    int r = cmocka_run_group_tests(tests, NULL, NULL);
    free(manifest);
    return r;
}
