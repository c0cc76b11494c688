/*
 * Results do not depend on the thread count: the same problems run with 1, 2, 3 and 4 threads
 * must give bitwise identical out, lse, entropy and weights, on the block path (prefill shapes,
 * causal, masks, head-mean weights) and on the split-key path (decoding shapes, GQA, partials
 * folded across waves of slots: the slot count grows with the thread count). Also
 * checks that a context leaves the BLAS's thread setting as it found it.
 */
#define _GNU_SOURCE /* RTLD_DEFAULT */
#include <dlfcn.h>
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

typedef struct shape {
    const char *name;
    int64_t B, Hq, Hkv, Lq, Lk, D, Dv;
    uint32_t flags;
    int weights; /* 0 none, 1 per head, 2 head mean */
    int with_mask, with_lens;
} shape;

static const shape shapes[] = {
    {"prefill causal", 2, 4, 2, 300, 300, 64, 64, ATTN_CAUSAL, 0, 0, 0},
    {"prefill head-mean weights", 1, 3, 3, 130, 200, 32, 16, 0, 2, 1, 0},
    {"prefill per-head weights", 2, 2, 1, 70, 90, 16, 24, ATTN_CAUSAL, 1, 0, 1},
    {"decode GQA", 2, 8, 2, 1, 3000, 64, 64, 0, 0, 0, 1},
    {"decode 16 queries", 1, 4, 4, 16, 1500, 32, 48, ATTN_CAUSAL, 0, 1, 0},
    {"decode many keys", 1, 2, 1, 3, 9000, 64, 64, 0, 0, 0, 0},
    /* 2 batches x 8 kv heads x 5 chunks = 80 partials: two waves of slots on one thread (64
     * slots), one wave on more, with a group crossing the wave boundary */
    {"decode across waves", 2, 16, 8, 2, 5000, 64, 64, 0, 0, 0, 1},
};

typedef struct outputs {
    float *out, *lse, *ent, *w;
    size_t n_out, n_rows, n_w;
} outputs;

static outputs run(const shape *s, uint32_t threads, uint64_t seed)
{
    rng r = {seed};
    attn_desc d;
    attn_desc_init(&d);
    d.q_heads = (uint32_t)s->Hq, d.kv_heads = (uint32_t)s->Hkv;
    d.qk_dim = (uint32_t)s->D, d.v_dim = (uint32_t)s->Dv;
    d.flags = s->flags;
    d.threads = threads;
    attn_ctx *ctx;
    assert_int_equal(attn_create(&d, &ctx), ATTN_OK);
    float *q = random_floats(&r, (size_t)(s->B * s->Hq * s->Lq * s->D), 1.0);
    float *k = random_floats(&r, (size_t)(s->B * s->Hkv * s->Lk * s->D), 1.0);
    float *v = random_floats(&r, (size_t)(s->B * s->Hkv * s->Lk * s->Dv), 1.0);
    uint8_t *mask = xcalloc((size_t)(s->Lq * s->Lk), 1);
    for (int64_t i = 0; i < s->Lq * s->Lk; i++) mask[i] = rng_below(&r, 4) != 0;
    int32_t lens[4];
    for (int b = 0; b < 4; b++) lens[b] = (int32_t)(s->Lk - rng_below(&r, s->Lk / 2));
    outputs o;
    o.n_out = (size_t)(s->B * s->Hq * s->Lq * s->Dv);
    o.n_rows = (size_t)(s->B * s->Hq * s->Lq);
    o.n_w = s->weights == 2 ? (size_t)(s->B * s->Lq * s->Lk) : o.n_rows * (size_t)s->Lk;
    o.out = xcalloc(o.n_out, sizeof(float));
    o.lse = xcalloc(o.n_rows, sizeof(float));
    o.ent = xcalloc(o.n_rows, sizeof(float));
    o.w = xcalloc(o.n_w, sizeof(float));
    attn_args a;
    attn_args_init(&a);
    a.batch = (uint32_t)s->B, a.q_len = (uint32_t)s->Lq, a.kv_len = (uint32_t)s->Lk;
    a.q = q, a.q_strides = attn_strides_bshd((uint32_t)s->Hq, (uint32_t)s->Lq, (uint32_t)s->D);
    a.k = k, a.k_strides = attn_strides_bhsd((uint32_t)s->Hkv, (uint32_t)s->Lk, (uint32_t)s->D);
    a.v = v, a.v_strides = attn_strides_bhsd((uint32_t)s->Hkv, (uint32_t)s->Lk, (uint32_t)s->Dv);
    a.out = o.out, a.out_strides = attn_strides_bhsd((uint32_t)s->Hq, (uint32_t)s->Lq, (uint32_t)s->Dv);
    a.lse = o.lse, a.entropy = o.ent;
    if (s->weights)
        a.weights_mode = s->weights == 1 ? ATTN_WEIGHTS_PER_HEAD : ATTN_WEIGHTS_HEAD_MEAN, a.weights = o.w;
    if (s->with_mask)
        a.mask = mask, a.mask_strides = (attn_strides){0, 0, s->Lk};
    if (s->with_lens)
        a.kv_lens = lens;
    assert_int_equal(attn_forward(ctx, &a), ATTN_OK);
    attn_destroy(ctx);
    free(q), free(k), free(v), free(mask);
    return o;
}

static void free_outputs(outputs *o)
{
    free(o->out), free(o->lse), free(o->ent), free(o->w);
}

static void test_bitwise_identical_for_any_thread_count(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        outputs one = run(&shapes[i], 1, 1000 + i);
        double checksum = 0;
        for (size_t j = 0; j < one.n_out; j++) checksum += one.out[j];
        assert_true(isfinite(checksum));
        for (uint32_t t = 2; t <= 4; t++) {
            outputs many = run(&shapes[i], t, 1000 + i);
            if (memcmp(one.out, many.out, one.n_out * sizeof(float)) != 0 ||
                memcmp(one.lse, many.lse, one.n_rows * sizeof(float)) != 0 ||
                memcmp(one.ent, many.ent, one.n_rows * sizeof(float)) != 0 ||
                memcmp(one.w, many.w, one.n_w * sizeof(float)) != 0)
                fail_msg("%s: %u threads differ from 1 thread", shapes[i].name, t);
            free_outputs(&many);
        }
        print_message("%-26s identical for 1, 2, 3, 4 threads\n", shapes[i].name);
        free_outputs(&one);
    }
}

/* The BLAS's own thread setting is what it was when the program started, after every call of
 * this program (OpenBLAS or BLIS, whichever is loaded; BLIS reports -1 while nothing is set). */
static int (*blas_get_threads)(void);
static const char *blas_getter;
static int blas_threads_at_start;

static void find_blas_getter(void)
{
    const char *names[] = {"openblas_get_num_threads", "bli_thread_get_num_threads"};
    for (int i = 0; i < 2 && !blas_get_threads; i++) {
        void *sym = dlsym(RTLD_DEFAULT, names[i]);
        if (sym) {
            memcpy(&blas_get_threads, &sym, sizeof blas_get_threads);
            blas_getter = names[i];
            blas_threads_at_start = blas_get_threads();
        }
    }
}

static void test_blas_setting_restored(void **state)
{
    (void)state;
    if (!blas_get_threads) {
        print_message("neither OpenBLAS nor BLIS: nothing to check\n");
        skip();
    }
    int before = blas_threads_at_start;
    outputs o = run(&shapes[0], 2, 7);
    free_outputs(&o);
    o = run(&shapes[3], 1, 7);
    free_outputs(&o);
    assert_int_equal(blas_get_threads(), before);
    print_message("%s at the start and after every call: %d\n", blas_getter, before);
}

int main(void)
{
    find_blas_getter();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bitwise_identical_for_any_thread_count),
        cmocka_unit_test(test_blas_setting_restored),
    };
    return cmocka_run_group_tests_name("threads", tests, NULL, NULL);
}
