/*
 * fork() with libattn contexts alive (docs/threading.md, "fork"):
 *   - a child that uses an inherited context gets ATTN_ERR_FORKED (nothing written), can destroy
 *     it without hanging, and can create and use contexts of its own;
 *   - a fork taken while other threads are inside attn_forward leaves the child with the BLAS
 *     thread count the program set (not the 1 libattn uses during a call) and with a usable
 *     library (no lock held by a thread that does not exist in the child). Forty forks: one
 *     thread is held inside attn_forward at every fork (its first BLAS call is interposed and
 *     waits), another runs short calls back to back, so that forks also land while it enters
 *     and leaves the BLAS section.
 * Every child runs under alarm(): a deadlock kills it with SIGALRM, which the parent reports as
 * a failure instead of hanging. Children report through their exit status.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <attn/attn.h>

#include "support/blas_next.h"
#include "support/check.h"
#include "support/reference.h"
#include "support/util.h"

enum { CHILD_ALARM_S = 60, FORKS = 40 };

/* ---- the interposer: holds one chosen call inside attn_forward --------------------------- */

/* OpenBLAS itself is not fork-safe: a fork taken while another thread is inside one of its
 * calls can leave its memory-pool lock held in the child, whose first BLAS call then blocks
 * (docs/threading.md). That is the BLAS's hazard, not libattn's, so the test keeps it out: the
 * forks wait until no thread is inside a real BLAS call and hold new ones back meanwhile
 * (sequentially consistent atomics: a thread announces itself, then checks for a pending fork).
 * libattn's own entry and exit, and its lock, still run at any moment around the forks. */
static atomic_int in_blas, fork_pending;

static atomic_int armed;              /* 1: the next BLAS call of a held call waits */
static _Thread_local int is_looper;   /* the thread running short calls is never held */
static sem_t inside, release;

void cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha, const float *a,
                 int lda, const float *b, int ldb, float beta, float *c, int ldc);
void cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha, const float *a,
                 int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
    attn_test_sgemm_fn real = attn_test_next_sgemm();
    if (!is_looper && atomic_exchange(&armed, 0)) {
        sem_post(&inside);
        while (sem_wait(&release) != 0) {
        }
    }
    for (;;) {
        atomic_fetch_add(&in_blas, 1);
        if (!atomic_load(&fork_pending))
            break;
        atomic_fetch_sub(&in_blas, 1);
        while (atomic_load(&fork_pending))
            sched_yield();
    }
    real(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    atomic_fetch_sub(&in_blas, 1);
}

/* fork() while no thread of this process is inside the real BLAS (see in_blas). */
static pid_t fork_outside_blas(void)
{
    atomic_store(&fork_pending, 1);
    while (atomic_load(&in_blas))
        sched_yield();
    pid_t pid = fork();
    atomic_store(&fork_pending, 0);
    return pid;
}

/* ---- holding libattn's BLAS-policy lock at the instant of a fork ------------------------- */

/* libattn reads and sets OpenBLAS's thread count under its lock (found with dlsym, so this
 * definition, exported from the executable, is the one it finds). When armed, the read
 * announces that the calling thread holds that lock and keeps holding it for HOLD_MS before
 * going on, so that a fork taken meanwhile must either wait for the lock (what libattn's
 * prepare handler does) or leave it held forever in the child. */
enum { HOLD_MS = 300 };
static atomic_int hold_lock;
static sem_t lock_inside;

int openblas_get_num_threads(void);
int openblas_get_num_threads(void)
{
    typedef int (*count_fn)(void);
    static _Atomic(count_fn) next;
    count_fn real = atomic_load(&next);
    if (!real) {
        void *sym = dlsym(RTLD_NEXT, "openblas_get_num_threads");
        memcpy(&real, &sym, sizeof real);
        atomic_store(&next, real);
    }
    if (atomic_exchange(&hold_lock, 0)) {
        sem_post(&lock_inside);
        struct timespec t = {0, HOLD_MS * 1000000L};
        nanosleep(&t, NULL);
    }
    return real ? real() : 1;
}

/* ---- the BLAS's process-wide thread count, where it has one ------------------------------ */

static attn_test_threads_get_fn blas_get;
static attn_test_threads_set_fn blas_set;

static void find_blas_count(void)
{
    attn_test_blas_thread_count(0, &blas_get, &blas_set);
}

/* ---- problems ---------------------------------------------------------------------------- */

enum { H = 2, D = 24 };
static const float sentinel = -555.0f;

typedef struct problem {
    attn_desc d;
    attn_args a;
    float *q, *k, *v, *out;
    size_t n_out;
} problem;

static void make(problem *p, uint32_t threads, uint32_t Lq, uint32_t Lk, uint64_t seed)
{
    rng r = {seed};
    memset(p, 0, sizeof *p);
    attn_desc_init(&p->d);
    p->d.q_heads = p->d.kv_heads = H;
    p->d.qk_dim = p->d.v_dim = D;
    p->d.flags = ATTN_CAUSAL;
    p->d.threads = threads;
    p->q = random_floats(&r, (size_t)H * Lq * D, 1.0);
    p->k = random_floats(&r, (size_t)H * Lk * D, 1.0);
    p->v = random_floats(&r, (size_t)H * Lk * D, 1.0);
    p->n_out = (size_t)H * Lq * D;
    p->out = xcalloc(p->n_out, sizeof(float));
    for (size_t i = 0; i < p->n_out; i++) p->out[i] = sentinel;
    attn_args_init(&p->a);
    p->a.batch = 1, p->a.q_len = Lq, p->a.kv_len = Lk;
    p->a.q = p->q, p->a.k = p->k, p->a.v = p->v, p->a.out = p->out;
    p->a.q_strides = p->a.out_strides = attn_strides_bhsd(H, Lq, D);
    p->a.k_strides = p->a.v_strides = attn_strides_bhsd(H, Lk, D);
}

static void release_problem(problem *p)
{
    free(p->q), free(p->k), free(p->v), free(p->out);
}

static int matches_oracle(const problem *p)
{
    ref_problem rp = ref_problem_from(&p->d, &p->a);
    ref_result rr;
    ref_attention(&rp, &rr);
    check_stats cs = {0};
    check_outputs(&rp, &rr, &p->d, &p->a, "fork", &cs);
    ref_free(&rr);
    if (cs.failures)
        fprintf(stderr, "%s\n", cs.first_failure);
    return cs.failures == 0;
}

static void reset_out(problem *p)
{
    for (size_t i = 0; i < p->n_out; i++) p->out[i] = sentinel;
}

static int untouched(const problem *p)
{
    for (size_t i = 0; i < p->n_out; i++)
        if (p->out[i] != sentinel)
            return 0;
    return 1;
}

/* ---- the child's side -------------------------------------------------------------------- */

/* Exit codes of a child: 0 = all good, else the first check that failed. */
enum {
    CHILD_OK = 0,
    CHILD_NOT_FORKED_STATUS = 10,
    CHILD_WROTE_OUTPUT,
    CHILD_NO_MESSAGE,
    CHILD_BLAS_COUNT,
    CHILD_CREATE,
    CHILD_FORWARD,
    CHILD_WRONG_RESULT,
};

/* Threads of the context a child creates. TEST_FORK_CHILD_THREADS=1 keeps children from
 * starting threads: ThreadSanitizer cannot follow threads started after a multi-threaded fork
 * (it still knows the parent's threads and reports a duplicate thread id). */
static uint32_t child_threads = 3;

/* Uses and destroys every inherited context, then computes with a new one. */
static int child_checks(attn_ctx **inherited, problem **their, int n, int want_blas_threads)
{
    alarm(CHILD_ALARM_S);
    if (want_blas_threads > 0 && blas_get() != want_blas_threads) {
        fprintf(stderr, "child: BLAS thread count %d, the parent set %d\n", blas_get(),
                want_blas_threads);
        return CHILD_BLAS_COUNT;
    }
    for (int i = 0; i < n; i++) {
        reset_out(their[i]);
        attn_status st = attn_forward(inherited[i], &their[i]->a);
        if (st != ATTN_ERR_FORKED) {
            fprintf(stderr, "child: inherited context %d gave %s\n", i, attn_status_str(st));
            return CHILD_NOT_FORKED_STATUS;
        }
        if (!untouched(their[i]))
            return CHILD_WROTE_OUTPUT;
        if (!strstr(attn_last_error(inherited[i]), "forked"))
            return CHILD_NO_MESSAGE;
        attn_destroy(inherited[i]); /* must not wait for workers that do not exist */
    }
    problem p;
    make(&p, child_threads, 150, 150, 99);
    attn_ctx *ctx;
    if (attn_create(&p.d, &ctx) != ATTN_OK)
        return CHILD_CREATE;
    int rc = CHILD_OK;
    if (attn_forward(ctx, &p.a) != ATTN_OK)
        rc = CHILD_FORWARD;
    else if (!matches_oracle(&p))
        rc = CHILD_WRONG_RESULT;
    attn_destroy(ctx);
    release_problem(&p);
    if (rc == CHILD_OK && want_blas_threads > 0 && blas_get() != want_blas_threads)
        rc = CHILD_BLAS_COUNT; /* and libattn's own call restored it too */
    return rc;
}

/* Waits for the child; returns 0 if it exited with CHILD_OK, else 1 with a description. */
static int child_failed(pid_t pid, int round, char *why, size_t n)
{
    int status;
    if (waitpid(pid, &status, 0) != pid)
        return snprintf(why, n, "fork %d: waitpid failed", round), 1;
    if (WIFSIGNALED(status))
        return snprintf(why, n, "fork %d: the child was killed by signal %d%s", round,
                        WTERMSIG(status),
                        WTERMSIG(status) == SIGALRM ? " (watchdog: it deadlocked)" : ""), 1;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != CHILD_OK)
        return snprintf(why, n, "fork %d: the child failed check %d", round,
                        WEXITSTATUS(status)), 1;
    return 0;
}

/* Waits for the child and fails the test unless it exited with CHILD_OK. */
static void expect_child_ok(pid_t pid, int round)
{
    char why[160];
    if (child_failed(pid, round, why, sizeof why))
        fail_msg("%s", why);
}

/* ---- tests ------------------------------------------------------------------------------- */

static void test_idle_context_in_child(void **state)
{
    (void)state;
    problem p;
    make(&p, 3, 130, 90, 1);
    attn_ctx *ctx;
    assert_int_equal(attn_create(&p.d, &ctx), ATTN_OK);
    assert_int_equal(attn_forward(ctx, &p.a), ATTN_OK);
    problem *ps[1] = {&p};
    pid_t pid = fork_outside_blas();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(child_checks(&ctx, ps, 1, 0));
    expect_child_ok(pid, 0);
    /* the parent's context is unaffected */
    reset_out(&p);
    assert_int_equal(attn_forward(ctx, &p.a), ATTN_OK);
    assert_true(matches_oracle(&p));
    attn_destroy(ctx);
    release_problem(&p);
}

/* A context made with attn_create_static, in a child of a child. */
static void test_static_context_in_grandchild(void **state)
{
    (void)state;
    problem p;
    make(&p, 2, 70, 70, 2);
    size_t n = attn_workspace_size(&p.d);
    void *ws = aligned_alloc(ATTN_WORKSPACE_ALIGN, (n + 63) / 64 * 64);
    attn_ctx *ctx;
    assert_int_equal(attn_create_static(&p.d, ws, n, &ctx), ATTN_OK);
    problem *ps[1] = {&p};
    pid_t pid = fork_outside_blas();
    assert_true(pid >= 0);
    if (pid == 0) {
        alarm(CHILD_ALARM_S);
        pid_t grand = fork();
        if (grand < 0)
            _exit(1);
        if (grand == 0)
            _exit(child_checks(&ctx, ps, 1, 0));
        int status;
        if (waitpid(grand, &status, 0) != grand || !WIFEXITED(status))
            _exit(2);
        _exit(WEXITSTATUS(status));
    }
    expect_child_ok(pid, 0);
    reset_out(&p);
    assert_int_equal(attn_forward(ctx, &p.a), ATTN_OK);
    assert_true(matches_oracle(&p));
    attn_destroy(ctx);
    free(ws);
    release_problem(&p);
}

typedef struct looper {
    attn_ctx *ctx;
    problem *p;
    atomic_int *stop;
    atomic_long calls;
    atomic_int failed;
} looper;

static void *loop_calls(void *arg)
{
    looper *l = arg;
    is_looper = 1;
    while (!atomic_load(l->stop)) {
        if (attn_forward(l->ctx, &l->p->a) != ATTN_OK)
            atomic_store(&l->failed, 1);
        atomic_fetch_add(&l->calls, 1);
    }
    return NULL;
}

typedef struct held_call {
    attn_ctx *ctx;
    problem *p;
    attn_status st;
} held_call;

static void *one_call(void *arg)
{
    held_call *c = arg;
    c->st = attn_forward(c->ctx, &c->p->a);
    return NULL;
}

static void test_fork_during_forward(void **state)
{
    (void)state;
    int want = 0;
    if (blas_get) {
        blas_set(2);
        want = blas_get();
        print_message("BLAS thread count set to %d before the forks\n", want);
    } else {
        print_message("this BLAS has no process-wide thread count: not checked\n");
    }
    problem held, busy;
    make(&held, 2, 200, 200, 3);
    make(&busy, 1, 8, 40, 4); /* short calls: many enter/leave per millisecond */
    attn_ctx *held_ctx, *busy_ctx;
    assert_int_equal(attn_create(&held.d, &held_ctx), ATTN_OK);
    assert_int_equal(attn_create(&busy.d, &busy_ctx), ATTN_OK);

    atomic_int stop = 0;
    looper l = {busy_ctx, &busy, &stop, 0, 0};
    pthread_t loop_thread;
    assert_int_equal(pthread_create(&loop_thread, NULL, loop_calls, &l), 0);

    /* No assertion inside the loop: a failed one would leave the test while the looping
     * thread still uses this function's variables. */
    char why[160] = "";
    int failed = 0, rounds = 0;
    for (int round = 1; round <= FORKS && !failed; round++, rounds++) {
        held_call c = {held_ctx, &held, ATTN_ERR_THREADS};
        pthread_t t;
        atomic_store(&armed, 1);
        if (pthread_create(&t, NULL, one_call, &c) != 0) {
            snprintf(why, sizeof why, "pthread_create failed");
            failed = 1;
            break;
        }
        while (sem_wait(&inside) != 0) {
        }
        /* t is inside attn_forward on held_ctx; the looper is in or between its calls */
        attn_ctx *inherited[2] = {held_ctx, busy_ctx};
        problem *theirs[2] = {&held, &busy};
        pid_t pid = fork_outside_blas();
        if (pid == 0)
            _exit(child_checks(inherited, theirs, 2, want));
        sem_post(&release);
        pthread_join(t, NULL);
        if (pid < 0)
            failed = 1, snprintf(why, sizeof why, "fork failed");
        else
            failed = child_failed(pid, round, why, sizeof why);
        if (!failed && c.st != ATTN_OK)
            failed = 1, snprintf(why, sizeof why, "fork %d: the held call gave %s", round,
                                 attn_status_str(c.st));
    }
    atomic_store(&stop, 1);
    pthread_join(loop_thread, NULL);
    if (failed)
        fail_msg("%s", why);
    assert_int_equal(rounds, FORKS);
    assert_int_equal(atomic_load(&l.failed), 0);
    print_message("%d forks, each with one call held inside attn_forward and %ld short calls "
                  "running beside\n", FORKS, (long)atomic_load(&l.calls));
    if (blas_get)
        assert_int_equal(blas_get(), want); /* and the parent's count is back too */
    assert_true(matches_oracle(&held));
    attn_destroy(held_ctx);
    attn_destroy(busy_ctx);
    release_problem(&held);
    release_problem(&busy);
}

/* A fork taken while another thread holds libattn's BLAS-policy lock (inside attn_forward's
 * entry): the child must be able to enter attn_forward itself. Only with OpenBLAS's pthread
 * build, whose thread count libattn reads under that lock. */
static void test_fork_while_policy_lock_held(void **state)
{
    (void)state;
    if (!blas_get || !dlsym(RTLD_DEFAULT, "openblas_get_parallel")) {
        print_message("not OpenBLAS's pthread build: skipped\n");
        return;
    }
    blas_set(2);
    int want = blas_get();
    problem p;
    make(&p, 1, 40, 40, 5);
    attn_ctx *ctx;
    assert_int_equal(attn_create(&p.d, &ctx), ATTN_OK);
    for (int round = 1; round <= 3; round++) {
        held_call c = {ctx, &p, ATTN_ERR_THREADS};
        pthread_t t;
        atomic_store(&hold_lock, 1);
        assert_int_equal(pthread_create(&t, NULL, one_call, &c), 0);
        while (sem_wait(&lock_inside) != 0) {
        }
        /* t holds libattn's lock for HOLD_MS from now */
        attn_ctx *inherited[1] = {ctx};
        problem *theirs[1] = {&p};
        pid_t pid = fork_outside_blas();
        if (pid == 0)
            _exit(child_checks(inherited, theirs, 1, want));
        pthread_join(t, NULL);
        assert_true(pid > 0);
        expect_child_ok(pid, round);
        assert_int_equal(c.st, ATTN_OK);
    }
    assert_true(matches_oracle(&p));
    attn_destroy(ctx);
    release_problem(&p);
}

int main(void)
{
    alarm(600); /* the parent too, should anything here wait forever */
    sem_init(&inside, 0, 0);
    sem_init(&release, 0, 0);
    sem_init(&lock_inside, 0, 0);
    find_blas_count();
    const char *ct = getenv("TEST_FORK_CHILD_THREADS");
    if (ct && atoi(ct) > 0)
        child_threads = (uint32_t)atoi(ct);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_idle_context_in_child),
        cmocka_unit_test(test_static_context_in_grandchild),
        cmocka_unit_test(test_fork_during_forward),
        cmocka_unit_test(test_fork_while_policy_lock_held),
    };
    int failed = cmocka_run_group_tests_name("fork", tests, NULL, NULL);
    sem_destroy(&inside);
    sem_destroy(&release);
    return failed;
}
