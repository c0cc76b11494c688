/*
 * One context entered by two threads at once: the second call must be refused with
 * ATTN_ERR_BUSY, write nothing, leave its message in attn_last_error(NULL) of its own thread,
 * and leave the first call's result correct (checked against the float64 oracle).
 *
 * The overlap is made certain, not left to timing: this executable interposes cblas_sgemm and
 * cblas_sgemv (forwarding to the real ones). When armed, the first BLAS call of the first caller
 * signals that it is inside attn_forward and waits until the second call has come back; the
 * second call, made from the main thread in that window, is then the one under test.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <semaphore.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <attn/attn.h>

#include "support/blas_next.h"
#include "support/check.h"
#include "support/reference.h"
#include "support/util.h"

/* ---- the interposer ---------------------------------------------------------------------- */

static atomic_int armed;    /* 1: the next BLAS call stops and waits for `release` */
static sem_t inside, release;

static void maybe_hold(void)
{
    if (atomic_exchange(&armed, 0)) {
        sem_post(&inside);
        while (sem_wait(&release) != 0) {
        }
    }
}

void cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha, const float *a,
                 int lda, const float *b, int ldb, float beta, float *c, int ldc);
void cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha, const float *a,
                 int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
    maybe_hold();
    attn_test_next_sgemm()(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void cblas_sgemv(int order, int ta, int m, int n, float alpha, const float *a, int lda,
                 const float *x, int incx, float beta, float *y, int incy);
void cblas_sgemv(int order, int ta, int m, int n, float alpha, const float *a, int lda,
                 const float *x, int incx, float beta, float *y, int incy)
{
    maybe_hold();
    attn_test_next_sgemv()(order, ta, m, n, alpha, a, lda, x, incx, beta, y, incy);
}

/* ---- one problem ------------------------------------------------------------------------- */

enum { H = 2, D = 16 };
static const float sentinel = -777.0f;

typedef struct problem {
    attn_desc d;
    attn_args a;
    float *q, *k, *v, *out, *lse;
    size_t n_out, n_rows;
} problem;

static void make(problem *p, uint32_t threads, uint32_t Lq, uint32_t Lk, uint64_t seed)
{
    rng r = {seed};
    memset(p, 0, sizeof *p);
    attn_desc_init(&p->d);
    p->d.q_heads = p->d.kv_heads = H;
    p->d.qk_dim = p->d.v_dim = D;
    p->d.threads = threads;
    p->q = random_floats(&r, (size_t)H * Lq * D, 1.0);
    p->k = random_floats(&r, (size_t)H * Lk * D, 1.0);
    p->v = random_floats(&r, (size_t)H * Lk * D, 1.0);
    p->n_out = (size_t)H * Lq * D;
    p->n_rows = (size_t)H * Lq;
    p->out = xcalloc(p->n_out, sizeof(float));
    p->lse = xcalloc(p->n_rows, sizeof(float));
    for (size_t i = 0; i < p->n_out; i++) p->out[i] = sentinel;
    for (size_t i = 0; i < p->n_rows; i++) p->lse[i] = sentinel;
    attn_args_init(&p->a);
    p->a.batch = 1, p->a.q_len = Lq, p->a.kv_len = Lk;
    p->a.q = p->q, p->a.k = p->k, p->a.v = p->v, p->a.out = p->out, p->a.lse = p->lse;
    p->a.q_strides = p->a.out_strides = attn_strides_bhsd(H, Lq, D);
    p->a.k_strides = p->a.v_strides = attn_strides_bhsd(H, Lk, D);
}

static void release_problem(problem *p)
{
    free(p->q), free(p->k), free(p->v), free(p->out), free(p->lse);
}

static int untouched(const problem *p)
{
    for (size_t i = 0; i < p->n_out; i++)
        if (p->out[i] != sentinel)
            return 0;
    for (size_t i = 0; i < p->n_rows; i++)
        if (p->lse[i] != sentinel)
            return 0;
    return 1;
}

static void check_against_oracle(const problem *p, const char *label)
{
    ref_problem rp = ref_problem_from(&p->d, &p->a);
    ref_result rr;
    ref_attention(&rp, &rr);
    check_stats cs = {0};
    check_outputs(&rp, &rr, &p->d, &p->a, label, &cs);
    ref_free(&rr);
    if (cs.failures)
        fail_msg("%s: %s", label, cs.first_failure);
}

typedef struct call {
    attn_ctx *ctx;
    const attn_args *a;
    attn_status st;
} call;

static void *run_call(void *arg)
{
    call *c = arg;
    c->st = attn_forward(c->ctx, c->a);
    return NULL;
}

/* ---- tests ------------------------------------------------------------------------------- */

/* First call on another thread, held inside its first BLAS call; second call on this thread. */
static void overlap(uint32_t threads, uint32_t Lq, uint32_t Lk)
{
    problem first, second;
    make(&first, threads, Lq, Lk, 11);
    make(&second, threads, Lq, Lk, 12);
    attn_ctx *ctx;
    assert_int_equal(attn_create(&first.d, &ctx), ATTN_OK);

    call c = {ctx, &first.a, ATTN_ERR_THREADS};
    pthread_t t;
    atomic_store(&armed, 1);
    assert_int_equal(pthread_create(&t, NULL, run_call, &c), 0);
    while (sem_wait(&inside) != 0) {
    }
    /* the first call is now inside attn_forward on ctx */
    attn_status st = attn_forward(ctx, &second.a);
    const char *msg = attn_last_error(NULL);
    sem_post(&release);
    pthread_join(t, NULL);

    if (st != ATTN_ERR_BUSY)
        fail_msg("threads=%u Lq=%u Lk=%u: the second caller got %s, expected ATTN_ERR_BUSY",
                 threads, Lq, Lk, attn_status_str(st));
    assert_true(untouched(&second));
    assert_non_null(strstr(msg, "already running"));
    /* the first call is unharmed and its context records its success */
    assert_int_equal(c.st, ATTN_OK);
    assert_string_equal(attn_last_error(ctx), "");
    check_against_oracle(&first, "first caller");

    /* the flag is released: the context serves the next call */
    assert_int_equal(attn_forward(ctx, &second.a), ATTN_OK);
    check_against_oracle(&second, "next call");
    attn_destroy(ctx);
    release_problem(&first);
    release_problem(&second);
}

static void test_busy_one_thread_blocks(void **state)
{
    (void)state;
    overlap(1, 100, 70);
}

static void test_busy_workers_blocks(void **state)
{
    (void)state;
    overlap(3, 200, 300);
}

static void test_busy_split_keys(void **state)
{
    (void)state;
    overlap(2, 3, 1500);
}

/* A refused (invalid) call releases the flag too. */
static void test_failed_call_releases(void **state)
{
    (void)state;
    problem p;
    make(&p, 2, 20, 20, 13);
    attn_ctx *ctx;
    assert_int_equal(attn_create(&p.d, &ctx), ATTN_OK);
    attn_args bad = p.a;
    bad.q = NULL;
    assert_int_equal(attn_forward(ctx, &bad), ATTN_ERR_NULL_POINTER);
    bad = p.a;
    bad.struct_size = 1;
    assert_int_equal(attn_forward(ctx, &bad), ATTN_ERR_STRUCT_SIZE);
    assert_int_equal(attn_forward(ctx, &p.a), ATTN_OK);
    check_against_oracle(&p, "after failures");
    attn_destroy(ctx);
    release_problem(&p);
}

int main(void)
{
    /* The hold sits in the BLAS: keep the decode path's thin tasks on the BLAS too (the thin
     * kernels would never reach the interposer), and fail rather than hang if a hold is never
     * reached. */
    setenv("ATTN_DECODE", "blas", 1);
    alarm(120);
    sem_init(&inside, 0, 0);
    sem_init(&release, 0, 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_busy_one_thread_blocks),
        cmocka_unit_test(test_busy_workers_blocks),
        cmocka_unit_test(test_busy_split_keys),
        cmocka_unit_test(test_failed_call_releases),
    };
    int failed = cmocka_run_group_tests_name("busy", tests, NULL, NULL);
    sem_destroy(&inside);
    sem_destroy(&release);
    return failed;
}
