#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cases.h"
#include "util.h"

npy_array case_load(const char *dir, const char *case_name, const char *file, int required)
{
    char path[512], err[600];
    snprintf(path, sizeof path, "%s/%s/%s.npy", dir, case_name, file);
    npy_array a;
    memset(&a, 0, sizeof a);
    if (npy_load(path, &a, err, sizeof err) != 0) {
        if (required)
            fail_msg("%s", err);
        memset(&a, 0, sizeof a);
    }
    return a;
}

attn_strides case_broadcast_strides(const npy_array *a)
{
    attn_strides s = {a->shape[0] == 1 ? 0 : a->shape[1] * a->shape[2] * a->shape[3],
                      a->shape[1] == 1 ? 0 : a->shape[2] * a->shape[3],
                      a->shape[2] == 1 ? 0 : a->shape[3]};
    return s;
}

void case_expect_close_1e9(const char *name, const char *what, const double *ours,
                           const double *theirs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!(fabs(ours[i] - theirs[i]) <= 1e-9 * (1.0 + fabs(theirs[i]))))
            fail_msg("%s oracle %s[%zu] = %.12g, PyTorch %.12g", name, what, i, ours[i],
                     theirs[i]);
}

void case_desc(const manifest_case *c, attn_masked_rows policy, attn_desc *d)
{
    attn_desc_init(d);
    d->q_heads = (uint32_t)c->Hq, d->kv_heads = (uint32_t)c->Hkv;
    d->qk_dim = (uint32_t)c->D, d->v_dim = (uint32_t)c->Dv;
    d->scale = (float)c->scale;
    d->flags = c->causal ? ATTN_CAUSAL : 0;
    d->window_left = c->window_left, d->window_right = c->window_right;
    d->masked_rows = policy;
}

void case_args(const manifest_case *c, const attn_desc *d, const npy_array *q,
               const npy_array *k, const npy_array *v, float *out, const npy_array *bias,
               const npy_array *mask, attn_args *a)
{
    attn_args_init(a);
    a->batch = (uint32_t)c->B, a->q_len = (uint32_t)c->Lq, a->kv_len = (uint32_t)c->Lk;
    a->q = q->data, a->q_strides = attn_strides_bhsd(d->q_heads, a->q_len, d->qk_dim);
    a->k = k->data, a->k_strides = attn_strides_bhsd(d->kv_heads, a->kv_len, d->qk_dim);
    a->v = v->data, a->v_strides = attn_strides_bhsd(d->kv_heads, a->kv_len, d->v_dim);
    a->out = out, a->out_strides = attn_strides_bhsd(d->q_heads, a->q_len, d->v_dim);
    a->q_offset = c->q_offset == c->Lk - c->Lq ? ATTN_Q_OFFSET_DEFAULT : c->q_offset;
    a->kv_lens = c->has_kv_lens ? c->kv_lens : NULL;
    if (c->has_bias)
        a->bias = bias->data, a->bias_strides = case_broadcast_strides(bias);
    if (c->has_mask)
        a->mask = mask->data, a->mask_strides = case_broadcast_strides(mask);
}

int case_run_group(const char *group, int n, void (*test)(void **state))
{
    struct CMUnitTest *tests = xcalloc((size_t)n, sizeof *tests);
    char(*names)[16] = xcalloc((size_t)n, sizeof *names);
    for (int i = 0; i < n; i++) {
        snprintf(names[i], sizeof names[i], "case%03d", i);
        tests[i] = (struct CMUnitTest){names[i], test, NULL, NULL, (void *)(intptr_t)i};
    }
    int failed = _cmocka_run_group_tests(group, tests, (size_t)n, NULL, NULL);
    free(names);
    free(tests);
    return failed;
}
