/*
 * Distinct contexts run concurrently: 8 threads, each with its own context and its own problem
 * (different shapes, masks, optional outputs, thread counts, both the block and the split-key
 * path), each running its problem several times while the others run theirs. Every result must
 * be bitwise identical to the same problem computed alone beforehand. Built with
 * -fsanitize=thread in CI, where this is also a data-race check (the BLAS thread policy is the
 * one piece of state the contexts share).
 */
#include <math.h>
#include <pthread.h>
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

enum { NTHREADS = 8, ROUNDS = 12 };

typedef struct job {
    attn_desc desc;
    attn_args args;
    float *q, *k, *v, *bias, *out, *lse, *ent, *w;
    uint8_t *mask;
    int32_t lens[2];
    size_t n_out, n_rows, n_w;
    float *expect_out, *expect_lse, *expect_ent, *expect_w;
    int failures;
} job;

static void make_job(job *j, int index)
{
    rng r = {500 + (uint64_t)index};
    memset(j, 0, sizeof *j);
    int64_t B = 1 + index % 2, Hkv = 1 + index % 3, Hq = Hkv * (1 + index % 2);
    int64_t Lq = index % 4 == 3 ? 1 + index % 5 : 40 + 23 * index;
    int64_t Lk = index % 4 == 3 ? 1500 + 100 * index : 30 + 31 * index;
    int64_t D = 16 + 8 * (index % 3), Dv = 8 + 8 * (index % 4);
    attn_desc_init(&j->desc);
    j->desc.q_heads = (uint32_t)Hq, j->desc.kv_heads = (uint32_t)Hkv;
    j->desc.qk_dim = (uint32_t)D, j->desc.v_dim = (uint32_t)Dv;
    j->desc.flags = index % 2 ? ATTN_CAUSAL : 0;
    j->desc.window_left = index % 3 == 2 ? 20 : -1;
    j->desc.threads = (uint32_t)(1 + index % 3);
    j->q = random_floats(&r, (size_t)(B * Hq * Lq * D), 1.0);
    j->k = random_floats(&r, (size_t)(B * Hkv * Lk * D), 1.0);
    j->v = random_floats(&r, (size_t)(B * Hkv * Lk * Dv), 1.0);
    j->bias = random_floats(&r, (size_t)(Lq * Lk), 1.0);
    j->mask = xcalloc((size_t)(Lq * Lk), 1);
    for (int64_t i = 0; i < Lq * Lk; i++) j->mask[i] = rng_below(&r, 5) != 0;
    j->lens[0] = (int32_t)Lk, j->lens[1] = (int32_t)(Lk / 2);
    j->n_out = (size_t)(B * Hq * Lq * Dv);
    j->n_rows = (size_t)(B * Hq * Lq);
    j->n_w = j->n_rows * (size_t)Lk;
    j->out = xcalloc(j->n_out, sizeof(float));
    j->lse = xcalloc(j->n_rows, sizeof(float));
    j->ent = xcalloc(j->n_rows, sizeof(float));
    j->w = xcalloc(j->n_w, sizeof(float));
    attn_args *a = &j->args;
    attn_args_init(a);
    a->batch = (uint32_t)B, a->q_len = (uint32_t)Lq, a->kv_len = (uint32_t)Lk;
    a->q = j->q, a->q_strides = attn_strides_bhsd((uint32_t)Hq, (uint32_t)Lq, (uint32_t)D);
    a->k = j->k, a->k_strides = attn_strides_bshd((uint32_t)Hkv, (uint32_t)Lk, (uint32_t)D);
    a->v = j->v, a->v_strides = attn_strides_bhsd((uint32_t)Hkv, (uint32_t)Lk, (uint32_t)Dv);
    a->out = j->out, a->out_strides = attn_strides_bhsd((uint32_t)Hq, (uint32_t)Lq, (uint32_t)Dv);
    a->lse = j->lse, a->entropy = j->ent;
    if (index % 4 == 1)
        a->weights_mode = ATTN_WEIGHTS_PER_HEAD, a->weights = j->w;
    if (index % 4 == 2)
        a->mask = j->mask, a->mask_strides = (attn_strides){0, 0, Lk};
    if (index % 4 == 0)
        a->bias = j->bias, a->bias_strides = (attn_strides){0, 0, Lk};
    if (index % 2 == 0)
        a->kv_lens = j->lens;
}

static int run_once(job *j)
{
    attn_ctx *ctx;
    if (attn_create(&j->desc, &ctx) != ATTN_OK)
        return -1;
    attn_status st = attn_forward(ctx, &j->args);
    attn_destroy(ctx);
    return st == ATTN_OK ? 0 : -1;
}

static int same(const job *j)
{
    return memcmp(j->out, j->expect_out, j->n_out * sizeof(float)) == 0 &&
           memcmp(j->lse, j->expect_lse, j->n_rows * sizeof(float)) == 0 &&
           memcmp(j->ent, j->expect_ent, j->n_rows * sizeof(float)) == 0 &&
           memcmp(j->w, j->expect_w, j->n_w * sizeof(float)) == 0;
}

static void *worker(void *arg)
{
    job *j = arg;
    for (int round = 0; round < ROUNDS; round++) {
        memset(j->out, 0, j->n_out * sizeof(float));
        if (run_once(j) != 0 || !same(j))
            j->failures++;
    }
    return NULL;
}

static float *copy_of(const float *p, size_t n)
{
    float *c = xcalloc(n, sizeof *c);
    memcpy(c, p, n * sizeof *c);
    return c;
}

static void test_eight_contexts_concurrently(void **state)
{
    (void)state;
    static job jobs[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        make_job(&jobs[i], i);
        assert_int_equal(run_once(&jobs[i]), 0); /* alone first: the expected result */
        jobs[i].expect_out = copy_of(jobs[i].out, jobs[i].n_out);
        jobs[i].expect_lse = copy_of(jobs[i].lse, jobs[i].n_rows);
        jobs[i].expect_ent = copy_of(jobs[i].ent, jobs[i].n_rows);
        jobs[i].expect_w = copy_of(jobs[i].w, jobs[i].n_w);
    }
    pthread_t tid[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        assert_int_equal(pthread_create(&tid[i], NULL, worker, &jobs[i]), 0);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(tid[i], NULL);
    int failures = 0;
    for (int i = 0; i < NTHREADS; i++) {
        if (jobs[i].failures)
            print_message("problem %d: %d of %d concurrent runs differ\n", i, jobs[i].failures, ROUNDS);
        failures += jobs[i].failures;
        job *j = &jobs[i];
        free(j->q), free(j->k), free(j->v), free(j->bias), free(j->mask), free(j->out);
        free(j->lse), free(j->ent), free(j->w), free(j->expect_out), free(j->expect_lse);
        free(j->expect_ent), free(j->expect_w);
    }
    print_message("%d threads x %d runs each: %s\n", NTHREADS, ROUNDS,
                  failures ? "MISMATCH" : "all bitwise identical to the serial runs");
    assert_int_equal(failures, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_eight_contexts_concurrently)};
    return cmocka_run_group_tests_name("concurrency", tests, NULL, NULL);
}
