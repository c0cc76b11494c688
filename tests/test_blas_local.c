/*
 * libattn does not use openblas_set_num_threads_local (docs/threading.md): in OpenBLAS >= 0.3.27
 * it sets the same process-wide count as openblas_set_num_threads and returns the old one, so a
 * save-set-restore through it, without libattn's counter, lets concurrent calls restore each
 * other's counts. This executable exports a function of that name that behaves as OpenBLAS's does
 * and counts its callers (Debian's 0.3.21 has none; a newer OpenBLAS's is interposed), then runs
 * calls on two contexts at once with the program's BLAS count at 2: the function is never
 * called, the count is 2 again afterwards, and the results match the float64 oracle.
 */
#define _GNU_SOURCE /* RTLD_DEFAULT, RTLD_NEXT */
#include <dlfcn.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <attn/attn.h>

#include "support/check.h"
#include "support/reference.h"
#include "support/util.h"

typedef int (*get_fn)(void);
typedef void (*set_fn)(int);

static atomic_int local_calls;

int openblas_set_num_threads_local(int n);
int openblas_set_num_threads_local(int n)
{
    atomic_fetch_add(&local_calls, 1);
    void *g = dlsym(RTLD_DEFAULT, "openblas_get_num_threads");
    void *s = dlsym(RTLD_DEFAULT, "openblas_set_num_threads");
    if (!g || !s)
        return 1;
    get_fn get;
    set_fn set;
    memcpy(&get, &g, sizeof g);
    memcpy(&set, &s, sizeof s);
    int old = get();
    set(n);
    return old;
}

typedef struct job {
    uint64_t seed;
    int failures;
} job;

static void *run(void *arg)
{
    job *j = arg;
    const int64_t Hq = 4, Lq = 70, Lk = 130, D = 32, Dv = 16;
    rng g = {j->seed};
    float *q = random_floats(&g, (size_t)(Hq * Lq * D), 1.0);
    float *k = random_floats(&g, (size_t)(Hq * Lk * D), 1.0);
    float *v = random_floats(&g, (size_t)(Hq * Lk * Dv), 1.0);
    float *out = xcalloc((size_t)(Hq * Lq * Dv), sizeof *out);
    attn_desc d;
    attn_desc_init(&d);
    d.q_heads = d.kv_heads = (uint32_t)Hq;
    d.qk_dim = (uint32_t)D, d.v_dim = (uint32_t)Dv, d.threads = 2;
    attn_ctx *ctx;
    if (attn_create(&d, &ctx) != ATTN_OK) {
        j->failures = 1;
        return NULL;
    }
    attn_args a;
    attn_args_init(&a);
    a.batch = 1, a.q_len = (uint32_t)Lq, a.kv_len = (uint32_t)Lk;
    a.q = q, a.k = k, a.v = v, a.out = out;
    a.q_strides = attn_strides_bhsd((uint32_t)Hq, (uint32_t)Lq, (uint32_t)D);
    a.k_strides = attn_strides_bhsd((uint32_t)Hq, (uint32_t)Lk, (uint32_t)D);
    a.v_strides = attn_strides_bhsd((uint32_t)Hq, (uint32_t)Lk, (uint32_t)Dv);
    a.out_strides = attn_strides_bhsd((uint32_t)Hq, (uint32_t)Lq, (uint32_t)Dv);
    ref_problem p = ref_problem_from(&d, &a);
    ref_result r;
    ref_attention(&p, &r);
    for (int it = 0; it < 20; it++) {
        check_stats cs = {0};
        if (attn_forward(ctx, &a) != ATTN_OK)
            j->failures++;
        check_outputs(&p, &r, &d, &a, "blas_local", &cs);
        j->failures += cs.failures > 0;
    }
    ref_free(&r);
    attn_destroy(ctx);
    free(q), free(k), free(v), free(out);
    return NULL;
}

static void test_local_setter_not_used(void **state)
{
    (void)state;
    void *g = dlsym(RTLD_DEFAULT, "openblas_get_num_threads");
    void *s = dlsym(RTLD_DEFAULT, "openblas_set_num_threads");
    get_fn get = NULL;
    set_fn set = NULL;
    if (g && s) {
        memcpy(&get, &g, sizeof g);
        memcpy(&set, &s, sizeof s);
        set(2);
    }
    job jobs[2] = {{21, 0}, {22, 0}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, run, &jobs[i]), 0);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    assert_int_equal(jobs[0].failures, 0);
    assert_int_equal(jobs[1].failures, 0);
    assert_int_equal(atomic_load(&local_calls), 0);
    if (get)
        assert_int_equal(get(), 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_local_setter_not_used),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
