/*
 * Failure injection in everything that acquires resources. attn_create allocates through the
 * caller's allocator and starts worker threads: each allocation k = 1, 2, ... of a successful
 * creation is made to fail in turn, and so is each worker thread start (pthread_create is
 * interposed in this program). Every failure must return its status (ATTN_ERR_NO_MEMORY or
 * ATTN_ERR_THREADS), release everything acquired so far (allocator balance zero, no thread left
 * running) and leave the caller's memory as it was, apart from *out_ctx = NULL. Functions that
 * do not acquire resources (attn_forward included) are checked to make no allocation at all.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
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

/* ---- a caller allocator that fails its k-th allocation ----------------------------------- */

typedef struct failing {
    int calls;      /* allocations requested */
    int fail_at;    /* 1-based index of the allocation to fail, 0 = never */
    int live;       /* allocations not yet freed */
} failing;

static void *failing_alloc(void *user, size_t size, size_t alignment)
{
    failing *f = user;
    if (++f->calls == f->fail_at)
        return NULL;
    void *p = aligned_alloc(alignment, (size + alignment - 1) / alignment * alignment);
    if (p)
        f->live++;
    return p;
}

static void failing_free(void *user, void *p)
{
    failing *f = user;
    f->live--;
    free(p);
}

/* ---- pthread_create that fails its k-th call --------------------------------------------- */

typedef int (*create_fn)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);
static int thread_calls, thread_fail_at;
static _Atomic int threads_alive;

typedef struct trampoline {
    void *(*start)(void *);
    void *arg;
} trampoline;

static void *counted_start(void *p)
{
    trampoline t = *(trampoline *)p;
    free(p);
    threads_alive++;
    void *r = t.start(t.arg);
    threads_alive--;
    return r;
}

int pthread_create(pthread_t *tid, const pthread_attr_t *attr, void *(*start)(void *), void *arg)
{
    static create_fn real;
    if (!real) {
        void *sym = dlsym(RTLD_NEXT, "pthread_create");
        memcpy(&real, &sym, sizeof real);
    }
    if (++thread_calls == thread_fail_at)
        return 11; /* EAGAIN */
    trampoline *t = malloc(sizeof *t);
    t->start = start;
    t->arg = arg;
    int rc = real(tid, attr, counted_start, t);
    if (rc != 0)
        free(t);
    return rc;
}

static attn_desc desc_with(const attn_allocator *al, uint32_t threads)
{
    attn_desc d;
    attn_desc_init(&d);
    d.q_heads = 4, d.kv_heads = 2, d.qk_dim = 32, d.v_dim = 16;
    d.allocator = al;
    d.threads = threads;
    return d;
}

static void test_every_allocation_failure(void **state)
{
    (void)state;
    failing f = {0, 0, 0};
    attn_allocator al = {failing_alloc, failing_free, &f};
    attn_desc d = desc_with(&al, 3);
    attn_ctx *ctx;
    /* how many allocations a successful creation makes */
    assert_int_equal(attn_create(&d, &ctx), ATTN_OK);
    int needed = f.calls;
    attn_destroy(ctx);
    assert_int_equal(f.live, 0);
    assert_true(needed >= 1);
    int points = 0;
    for (int k = 1; k <= needed; k++) {
        f = (failing){0, k, 0};
        attn_desc before = d;
        ctx = (attn_ctx *)(uintptr_t)0x1234;
        assert_int_equal(attn_create(&d, &ctx), ATTN_ERR_NO_MEMORY);
        assert_null(ctx);
        assert_int_equal(f.live, 0);
        assert_memory_equal(&before, &d, sizeof d);
        assert_non_null(strstr(attn_last_error(NULL), "workspace"));
        points++;
    }
    print_message("allocation failure points exercised in attn_create: %d of %d\n", points, needed);
}

static void test_every_thread_start_failure(void **state)
{
    (void)state;
    failing f = {0, 0, 0};
    attn_allocator al = {failing_alloc, failing_free, &f};
    const uint32_t threads = 4;
    attn_desc d = desc_with(&al, threads);
    int points = 0;
    /* other libraries (OpenBLAS) may run threads of their own: count relative to now */
    int baseline = threads_alive;
    for (int k = 1; k < (int)threads; k++) {
        f = (failing){0, 0, 0};
        thread_calls = 0, thread_fail_at = k;
        attn_ctx *ctx = (attn_ctx *)(uintptr_t)0x1234;
        assert_int_equal(attn_create(&d, &ctx), ATTN_ERR_THREADS);
        assert_null(ctx);
        assert_int_equal(f.live, 0);                    /* the workspace went back */
        assert_int_equal(threads_alive, baseline);       /* the started workers were joined */
        assert_non_null(strstr(attn_last_error(NULL), "worker threads"));
        points++;

        /* the same with a caller workspace: nothing to free, workers still joined */
        thread_calls = 0, thread_fail_at = k;
        size_t n = attn_workspace_size(&d);
        void *ws = aligned_alloc(ATTN_WORKSPACE_ALIGN, (n + 63) / 64 * 64);
        assert_int_equal(attn_create_static(&d, ws, n, &ctx), ATTN_ERR_THREADS);
        assert_null(ctx);
        assert_int_equal(threads_alive, baseline);
        free(ws);
        points++;
    }
    thread_fail_at = 0;
    print_message("thread start failure points exercised: %d\n", points);
}

/* After a failed creation the same descriptor still works, and destroy releases everything. */
static void test_recovery(void **state)
{
    (void)state;
    failing f = {0, 1, 0};
    attn_allocator al = {failing_alloc, failing_free, &f};
    attn_desc d = desc_with(&al, 2);
    attn_ctx *ctx;
    int baseline = threads_alive;
    assert_int_equal(attn_create(&d, &ctx), ATTN_ERR_NO_MEMORY);
    assert_int_equal(threads_alive, baseline);
    f.fail_at = 0;
    assert_int_equal(attn_create(&d, &ctx), ATTN_OK);
    rng r = {8};
    float *q = random_floats(&r, 4 * 9 * 32, 1.0), *k = random_floats(&r, 2 * 11 * 32, 1.0);
    float *v = random_floats(&r, 2 * 11 * 16, 1.0), *out = xcalloc(4 * 9 * 16, sizeof(float));
    attn_args a;
    attn_args_init(&a);
    a.batch = 1, a.q_len = 9, a.kv_len = 11;
    a.q = q, a.q_strides = attn_strides_bhsd(4, 9, 32);
    a.k = k, a.k_strides = attn_strides_bhsd(2, 11, 32);
    a.v = v, a.v_strides = attn_strides_bhsd(2, 11, 16);
    a.out = out, a.out_strides = attn_strides_bhsd(4, 9, 16);
    int calls = f.calls;
    assert_int_equal(attn_forward(ctx, &a), ATTN_OK);
    assert_int_equal(f.calls, calls); /* attn_forward allocates nothing */
    attn_destroy(ctx);
    assert_int_equal(f.live, 0);
    assert_int_equal(threads_alive, baseline);
    free(q), free(k), free(v), free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_allocation_failure),
        cmocka_unit_test(test_every_thread_start_failure),
        cmocka_unit_test(test_recovery),
    };
    return cmocka_run_group_tests_name("alloc_failure", tests, NULL, NULL);
}
