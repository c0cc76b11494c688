/*
 * The 24 problems of tests/data/training/mha (torch.nn.MultiheadAttention, batch_first, computed
 * in float64 by PyTorch 1.13 with autograd): attn_mha_forward's out and weights and every
 * gradient attn_mha_backward gives must match within the normwise tolerance of docs/testing.md
 * ("The MHA layer's tolerance"). Causal problems are run twice: with their mask, and with
 * desc.flags = ATTN_CAUSAL. Self-attention problems pass one buffer as query, key and value and
 * one gradient buffer for all three, which must receive the summed gradient.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <attn/attn_mha.h>

#include "support/cases.h"
#include "support/manifest.h"
#include "support/reference_mha.h"
#include "support/util.h"

#define NCASES 24

static char *manifest;

typedef struct mcase {
    char name[16];
    int H, E, kdim, vdim, B, Lq, Lk, self_attn, bias, key_padding, need_weights, average;
    char attn_mask[16];
} mcase;

static const char *field(const char *obj, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(obj, pat);
    if (!p)
        fail_msg("manifest: no %s", key);
    p += strlen(pat);
    while (*p == ' ')
        p++;
    return p;
}

static int int_field(const char *obj, const char *key)
{
    return atoi(field(obj, key));
}

static int bool_field(const char *obj, const char *key)
{
    return strncmp(field(obj, key), "true", 4) == 0;
}

static void read_case(int index, mcase *c)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"name\": \"case%03d\"", index);
    const char *obj = strstr(manifest, pat);
    if (!obj)
        fail_msg("manifest: no case %d", index);
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "case%03d", index);
    c->H = int_field(obj, "H"), c->E = int_field(obj, "E");
    c->kdim = int_field(obj, "kdim"), c->vdim = int_field(obj, "vdim");
    c->B = int_field(obj, "B"), c->Lq = int_field(obj, "Lq"), c->Lk = int_field(obj, "Lk");
    c->self_attn = bool_field(obj, "self_attn"), c->bias = bool_field(obj, "bias");
    c->key_padding = bool_field(obj, "key_padding");
    c->need_weights = bool_field(obj, "need_weights");
    c->average = bool_field(obj, "average_attn_weights");
    sscanf(field(obj, "attn_mask"), "\"%15[^\"]\"", c->attn_mask);
}

static npy_array load(const char *case_name, const char *file, int required)
{
    return case_load(ATTN_TEST_MHA_DIR, case_name, file, required);
}

/* The tolerances of docs/testing.md ("The MHA layer's tolerance"): an element passes when
 * |got - ref| <= 2 tau mag, mag from the float64 layer's magnitudes, tau the first-order count
 * of roundings along the forward's chain (tau_f) or the backward's (tau_b). */
static double tau_forward(int64_t kmax, int64_t E, int64_t D, int64_t Lk)
{
    return 0x1p-24 * (double)(kmax + D + 2 * Lk + E + 8);
}

static double tau_backward(int64_t kmax, int64_t E, int64_t D, int64_t Lk, int64_t rows)
{
    return tau_forward(kmax, E, D, Lk) + 0x1p-24 * (double)(E + 2 * D + Lk + rows + 8);
}

static double worst_ratio;
static int causal_runs;

/* got (float) against PyTorch's ref (float64 npy) with the oracle's magnitudes. */
static void compare(const char *name, const char *what, const float *got, const double *ref,
                    const double *mag, size_t n, double tau)
{
    for (size_t i = 0; i < n; i++) {
        double tol = 2.0 * tau * mag[i] + 1e-300;
        double e = fabs((double)got[i] - ref[i]);
        if (e / tol > worst_ratio)
            worst_ratio = e / tol;
        if (!(e <= tol))
            fail_msg("%s %s[%zu] = %.9g, PyTorch %.9g: error %.3g above tolerance %.3g", name,
                     what, i, (double)got[i], ref[i], e, tol);
    }
}

/* Loads file `what` of the case, checks the oracle's `ours` against it, then the library's. */
static void check_tensor(const char *name, const char *what, const float *got, const double *ours,
                         const double *mag, double tau)
{
    npy_array r = load(name, what, 1);
    case_expect_close_1e9(name, what, ours, r.data, r.count);
    compare(name, what, got, r.data, mag, r.count, tau);
    npy_free(&r);
}

static void run_case(int index, int causal_flag, uint32_t threads)
{
    mcase c;
    read_case(index, &c);
    if (causal_flag && strcmp(c.attn_mask, "causal") != 0)
        return;
    int packed = c.kdim == c.E && c.vdim == c.E;
    npy_array query = load(c.name, "query", 1), dout = load(c.name, "dout", 1);
    npy_array key = load(c.name, "key", !c.self_attn), value = load(c.name, "value", !c.self_attn);
    npy_array w_in = load(c.name, "in_proj_weight", packed);
    npy_array wq = load(c.name, "q_proj_weight", !packed), wk = load(c.name, "k_proj_weight", !packed);
    npy_array wv = load(c.name, "v_proj_weight", !packed);
    npy_array b_in = load(c.name, "in_proj_bias", c.bias), wo = load(c.name, "out_proj_weight", 1);
    npy_array bo = load(c.name, "out_proj_bias", c.bias);
    npy_array kvis = load(c.name, "key_visible", c.key_padding);
    int has_vis = strcmp(c.attn_mask, "none") != 0 && strcmp(c.attn_mask, "float") != 0;
    npy_array avis = load(c.name, "attn_visible", has_vis);
    npy_array abias = load(c.name, "attn_bias", strcmp(c.attn_mask, "float") == 0);
    npy_array x_out = load(c.name, "out", 1), x_w = load(c.name, "weights", c.need_weights);

    if (causal_flag) { /* only where the problem's mask is exactly ATTN_CAUSAL's rule (the
                          data keeps key 0 visible where the rule would hide a whole row) */
        const uint8_t *mv = avis.data;
        for (int i = 0; i < c.Lq; i++)
            for (int j = 0; j < c.Lk; j++)
                if (!mv[i * c.Lk + j] != !(j <= i + c.Lk - c.Lq)) {
                    causal_flag = -1;
                    i = c.Lq;
                    break;
                }
    }
    if (causal_flag < 0) {
        npy_free(&query), npy_free(&dout), npy_free(&key), npy_free(&value), npy_free(&w_in);
        npy_free(&wq), npy_free(&wk), npy_free(&wv), npy_free(&b_in), npy_free(&wo);
        npy_free(&bo), npy_free(&kvis), npy_free(&avis), npy_free(&abias), npy_free(&x_out);
        npy_free(&x_w);
        return;
    }
    attn_mha_desc d;
    attn_mha_desc_init(&d);
    d.embed_dim = (uint32_t)c.E, d.heads = (uint32_t)c.H;
    d.kdim = (uint32_t)c.kdim, d.vdim = (uint32_t)c.vdim;
    d.bias = (uint32_t)c.bias;
    d.threads = threads;
    if (causal_flag)
        d.flags = ATTN_CAUSAL;
    attn_mha *m;
    assert_int_equal(attn_mha_create(&d, &m), ATTN_OK);
    causal_runs += causal_flag;

    size_t act = attn_mha_activation_size(m, (uint32_t)c.B, (uint32_t)c.Lq, (uint32_t)c.Lk);
    size_t sav = attn_mha_saved_size(m, (uint32_t)c.B, (uint32_t)c.Lq, (uint32_t)c.Lk);
    assert_true(act > 0 && sav > 0);
    size_t nout = (size_t)c.B * c.Lq * c.E;
    float *out = xcalloc(nout, sizeof(float));
    size_t nw = c.need_weights ? x_w.count : 0;
    float *weights = nw ? xcalloc(nw, sizeof(float)) : NULL;
    void *abuf = xcalloc(act, 1), *sbuf = xcalloc(sav, 1);

    attn_mha_args a;
    attn_mha_args_init(&a);
    a.batch = (uint32_t)c.B, a.q_len = (uint32_t)c.Lq, a.kv_len = (uint32_t)c.Lk;
    a.query = query.data;
    a.key = c.self_attn ? query.data : key.data;
    a.value = c.self_attn ? query.data : value.data;
    a.out = out;
    if (packed)
        a.in_proj_weight = w_in.data;
    else
        a.q_proj_weight = wq.data, a.k_proj_weight = wk.data, a.v_proj_weight = wv.data;
    a.in_proj_bias = b_in.data, a.out_proj_weight = wo.data, a.out_proj_bias = bo.data;
    a.key_visible = kvis.data;
    if (has_vis && !causal_flag) {
        a.attn_mask = avis.data;
        a.mask_shape = avis.ndim == 3 ? ATTN_MHA_MASK_3D : ATTN_MHA_MASK_2D;
    }
    if (abias.data) {
        a.attn_bias = abias.data;
        a.mask_shape = abias.ndim == 3 ? ATTN_MHA_MASK_3D : ATTN_MHA_MASK_2D;
    }
    if (c.need_weights) {
        a.weights_mode = c.average ? ATTN_WEIGHTS_HEAD_MEAN : ATTN_WEIGHTS_PER_HEAD;
        a.weights = weights;
    }
    a.activations = abuf, a.activation_size = act;
    a.saved = sbuf, a.saved_size = sav;
    attn_status st = attn_mha_forward(m, &a);
    if (st != ATTN_OK)
        fail_msg("%s forward: %s (%s)", c.name, attn_status_str(st), attn_mha_last_error(m));
    /* the float64 oracle on the same float32 data */
    refm_problem rp;
    memset(&rp, 0, sizeof rp);
    rp.B = c.B, rp.Lq = c.Lq, rp.Lk = c.Lk, rp.E = c.E, rp.H = c.H, rp.Hkv = c.H;
    rp.kdim = c.kdim, rp.vdim = c.vdim;
    rp.query = a.query, rp.key = a.key, rp.value = a.value;
    const float *win = w_in.data, *bin = b_in.data;
    rp.wq = packed ? win : a.q_proj_weight;
    rp.wk = packed ? win + c.E * c.E : a.k_proj_weight;
    rp.wv = packed ? win + 2 * c.E * c.E : a.v_proj_weight;
    if (c.bias)
        rp.bq = bin, rp.bk = bin + c.E, rp.bv = bin + 2 * c.E, rp.bo = bo.data;
    rp.wo = wo.data;
    rp.key_visible = a.key_visible;
    rp.attn_mask = has_vis ? avis.data : NULL; /* the causal problems' mask is the causal rule */
    rp.attn_bias = a.attn_bias;
    rp.mask3d = a.mask_shape == ATTN_MHA_MASK_3D;
    refm_result rr;
    refm_forward(&rp, &rr);
    int64_t kmax = c.E > c.kdim ? c.E : c.kdim;
    kmax = kmax > c.vdim ? kmax : c.vdim;
    int64_t D = c.E / c.H, rows = (int64_t)c.B * (c.Lq > c.Lk ? c.Lq : c.Lk);
    double tf = tau_forward(kmax, c.E, D, c.Lk), tb = tau_backward(kmax, c.E, D, c.Lk, rows);
    check_tensor(c.name, "out", out, rr.out, rr.out_mag, tf);
    if (c.need_weights)
        check_tensor(c.name, "weights", weights, c.average ? rr.wmean : rr.weights,
                     c.average ? rr.wmean_mag : rr.weights_mag, tf);

    /* backward; gradients start from garbage: mode SET overwrites them */
    size_t nq = nout, nk = (size_t)c.B * c.Lk * c.kdim, nv = (size_t)c.B * c.Lk * c.vdim;
    size_t E = (size_t)c.E, Etot = 3 * E;
    float *dq = random_floats(&(rng){index + 1}, nq, 5.0);
    float *dk = c.self_attn ? dq : random_floats(&(rng){index + 2}, nk, 5.0);
    float *dv = c.self_attn ? dq : random_floats(&(rng){index + 3}, nv, 5.0);
    float *dwin = random_floats(&(rng){index + 4}, Etot * E, 5.0);
    float *dwq = random_floats(&(rng){index + 5}, E * E, 5.0);
    float *dwk = random_floats(&(rng){index + 6}, E * (size_t)c.kdim, 5.0);
    float *dwv = random_floats(&(rng){index + 7}, E * (size_t)c.vdim, 5.0);
    float *dbin = random_floats(&(rng){index + 8}, Etot, 5.0);
    float *dwo = random_floats(&(rng){index + 9}, E * E, 5.0);
    float *dbo = random_floats(&(rng){index + 10}, E, 5.0);
    attn_mha_grads g;
    attn_mha_grads_init(&g);
    g.dout = dout.data;
    g.d_query = dq, g.d_key = dk, g.d_value = dv;
    if (packed)
        g.d_in_proj_weight = dwin;
    else
        g.d_q_proj_weight = dwq, g.d_k_proj_weight = dwk, g.d_v_proj_weight = dwv;
    if (c.bias)
        g.d_in_proj_bias = dbin, g.d_out_proj_bias = dbo;
    g.d_out_proj_weight = dwo;
    st = attn_mha_backward(m, &a, &g);
    if (st != ATTN_OK)
        fail_msg("%s backward: %s (%s)", c.name, attn_status_str(st), attn_mha_last_error(m));
    refm_grads rg;
    refm_backward(&rp, &rr, dout.data, &rg);
    if (c.self_attn) { /* one input used three times: the gradients sum */
        for (size_t x = 0; x < nq; x++) {
            rg.d_query[x] += rg.d_key[x] + rg.d_value[x];
            rg.m_query[x] += rg.m_key[x] + rg.m_value[x];
        }
    }
    check_tensor(c.name, "d_query", dq, rg.d_query, rg.m_query, tb);
    if (!c.self_attn) {
        check_tensor(c.name, "d_key", dk, rg.d_key, rg.m_key, tb);
        check_tensor(c.name, "d_value", dv, rg.d_value, rg.m_value, tb);
    }
    if (packed) {
        double *cat = xcalloc(Etot * E, sizeof(double)), *catm = xcalloc(Etot * E, sizeof(double));
        memcpy(cat, rg.d_wq, E * E * sizeof(double)), memcpy(catm, rg.m_wq, E * E * sizeof(double));
        memcpy(cat + E * E, rg.d_wk, E * E * sizeof(double));
        memcpy(catm + E * E, rg.m_wk, E * E * sizeof(double));
        memcpy(cat + 2 * E * E, rg.d_wv, E * E * sizeof(double));
        memcpy(catm + 2 * E * E, rg.m_wv, E * E * sizeof(double));
        check_tensor(c.name, "d_in_proj_weight", dwin, cat, catm, tb);
        free(cat), free(catm);
    } else {
        check_tensor(c.name, "d_q_proj_weight", dwq, rg.d_wq, rg.m_wq, tb);
        check_tensor(c.name, "d_k_proj_weight", dwk, rg.d_wk, rg.m_wk, tb);
        check_tensor(c.name, "d_v_proj_weight", dwv, rg.d_wv, rg.m_wv, tb);
    }
    if (c.bias) {
        double cat[3 * 64], catm[3 * 64];
        assert_true(E <= 64);
        memcpy(cat, rg.d_bq, E * sizeof(double)), memcpy(catm, rg.m_bq, E * sizeof(double));
        memcpy(cat + E, rg.d_bk, E * sizeof(double)), memcpy(catm + E, rg.m_bk, E * sizeof(double));
        memcpy(cat + 2 * E, rg.d_bv, E * sizeof(double));
        memcpy(catm + 2 * E, rg.m_bv, E * sizeof(double));
        check_tensor(c.name, "d_in_proj_bias", dbin, cat, catm, tb);
        check_tensor(c.name, "d_out_proj_bias", dbo, rg.d_bo, rg.m_bo, tb);
    }
    check_tensor(c.name, "d_out_proj_weight", dwo, rg.d_wo, rg.m_wo, tb);
    refm_grads_free(&rg), refm_free(&rr);

    /* ADD mode: a second backward adds the same gradients again */
    float *dwo2 = xcalloc(E * E, sizeof(float));
    memcpy(dwo2, dwo, E * E * sizeof(float));
    float *dq2 = xcalloc(nq, sizeof(float));
    memcpy(dq2, dq, nq * sizeof(float));
    g.mode = ATTN_MHA_GRAD_ADD;
    assert_int_equal(attn_mha_backward(m, &a, &g), ATTN_OK);
    /* exact for one product (C + C); a self-attention d_query sums three products, in another
     * order the second time: within a few roundings of its largest element */
    float mq = 0.0f;
    for (size_t i = 0; i < nq; i++)
        mq = fmaxf(mq, fabsf(dq2[i]));
    for (size_t i = 0; i < E * E; i++)
        if (dwo[i] != 2.0f * dwo2[i])
            fail_msg("%s ADD d_out_proj_weight[%zu] = %g, once %g", c.name, i, dwo[i], dwo2[i]);
    for (size_t i = 0; i < nq; i++)
        if (!(fabsf(dq[i] - 2.0f * dq2[i]) <= (c.self_attn ? 1e-6f * mq : 0.0f)))
            fail_msg("%s ADD d_query[%zu] = %g, once %g", c.name, i, dq[i], dq2[i]);
    free(dwo2), free(dq2);

    attn_mha_destroy(m);
    free(out), free(weights), free(abuf), free(sbuf);
    free(dq);
    if (!c.self_attn)
        free(dk), free(dv);
    free(dwin), free(dwq), free(dwk), free(dwv), free(dbin), free(dwo), free(dbo);
    npy_free(&query), npy_free(&dout), npy_free(&key), npy_free(&value), npy_free(&w_in);
    npy_free(&wq), npy_free(&wk), npy_free(&wv), npy_free(&b_in), npy_free(&wo), npy_free(&bo);
    npy_free(&kvis), npy_free(&avis), npy_free(&abias), npy_free(&x_out), npy_free(&x_w);
}

static void test_pytorch_problems(void **state)
{
    (void)state;
    worst_ratio = 0.0;
    for (int i = 0; i < NCASES; i++)
        for (uint32_t t = 1; t <= 2; t++) {
            run_case(i, 0, t);
            run_case(i, 1, t);
        }
    printf("worst error / tolerance over the %d problems (1 and 2 threads, causal problems also "
           "through ATTN_CAUSAL where it is the same rule: %d runs): %.3g\n", NCASES, causal_runs,
           worst_ratio);
}

int main(void)
{
    manifest = manifest_read(ATTN_TEST_MHA_DIR "/manifest.json");
    if (!manifest) {
        fprintf(stderr, "cannot read %s/manifest.json\n", ATTN_TEST_MHA_DIR);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pytorch_problems),
    };
    int r = cmocka_run_group_tests(tests, NULL, NULL);
    free(manifest);
    return r;
}
