/* The worker pool: items come from an atomic counter, so a job costs one hand-over per worker,
 * not one per item. Between jobs a worker spins for SPIN_NS before it blocks on a condition
 * variable: jobs that follow each other closely (the waves of the split-key path) then cost no
 * wake-up, and an idle pool costs no CPU. */
#define _GNU_SOURCE
#include <sched.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

#include "parallel/fork.h"
#include "parallel/pool.h"

#define SPIN_NS 100000 /* 100 us */

static int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Spins until cond(p) holds or SPIN_NS passed; returns whether it holds. */
#define SPIN_UNTIL(cond)                                                                           \
    do {                                                                                           \
        int64_t spin_end_ = 0;                                                                     \
        for (unsigned spin_i_ = 0; !(cond); spin_i_++) {                                           \
            cpu_relax();                                                                           \
            if ((spin_i_ & 63) == 63) {                                                            \
                int64_t t_ = now_ns();                                                             \
                if (!spin_end_)                                                                    \
                    spin_end_ = t_ + SPIN_NS;                                                      \
                else if (t_ > spin_end_)                                                           \
                    break;                                                                         \
            }                                                                                      \
        }                                                                                          \
    } while (0)

static void run_items(attn_pool *p, attn_item_fn fn, void *job, int64_t items, unsigned thread)
{
    for (;;) {
        int64_t i = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (i >= items)
            return;
        fn(job, i, thread);
    }
}

static void *worker_main(void *arg)
{
    attn_pool_worker *w = arg;
    attn_pool *p = w->pool;
    uint64_t seen = 0;
    for (;;) {
        SPIN_UNTIL(atomic_load_explicit(&p->generation, memory_order_acquire) != seen ||
                   atomic_load_explicit(&p->stop, memory_order_relaxed));
        pthread_mutex_lock(&p->lock);
        while (atomic_load_explicit(&p->generation, memory_order_acquire) == seen &&
               !atomic_load_explicit(&p->stop, memory_order_relaxed))
            pthread_cond_wait(&p->wake, &p->lock);
        pthread_mutex_unlock(&p->lock);
        if (atomic_load_explicit(&p->stop, memory_order_relaxed))
            break;
        seen = atomic_load_explicit(&p->generation, memory_order_acquire);
        run_items(p, p->fn, p->job, p->items, w->index);
        if (atomic_fetch_sub_explicit(&p->busy, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->lock); /* the caller may be asleep on `done` */
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->lock);
        }
    }
    return NULL;
}

int attn_pool_start(attn_pool *p, unsigned threads, attn_pool_worker *workers)
{
    p->threads = threads;
    p->started = 0;
    p->workers = workers;
    atomic_init(&p->generation, 0);
    atomic_init(&p->busy, 0);
    atomic_init(&p->stop, 0);
    atomic_init(&p->next, 0);
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    atomic_init(&p->in_use, 0);
    p->fork_generation = attn_fork_generation();
    if (attn_fork_handlers_install() != 0) { /* out of memory: no fork safety, no context */
        attn_pool_stop(p);
        return -1;
    }
    for (unsigned i = 1; i < threads; i++) {
        workers[i - 1].pool = p;
        workers[i - 1].index = i;
        if (pthread_create(&workers[i - 1].thread, NULL, worker_main, &workers[i - 1]) != 0) {
            attn_pool_stop(p);
            return -1;
        }
        p->started++;
    }
    return 0;
}

void attn_pool_run(attn_pool *p, attn_item_fn fn, void *job, int64_t items)
{
    if (p->started == 0 || items <= 1) {
        atomic_store_explicit(&p->next, 0, memory_order_relaxed);
        run_items(p, fn, job, items, 0);
        return;
    }
    p->fn = fn;
    p->job = job;
    p->items = items;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    atomic_store_explicit(&p->busy, p->started, memory_order_relaxed);
    pthread_mutex_lock(&p->lock);
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_release); /* publishes the job */
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    run_items(p, fn, job, items, 0);
    SPIN_UNTIL(atomic_load_explicit(&p->busy, memory_order_acquire) == 0);
    pthread_mutex_lock(&p->lock);
    while (atomic_load_explicit(&p->busy, memory_order_acquire) != 0)
        pthread_cond_wait(&p->done, &p->lock);
    pthread_mutex_unlock(&p->lock);
}

int attn_pool_inherited(const attn_pool *p)
{
    return p->fork_generation != attn_fork_generation();
}

void attn_pool_stop(attn_pool *p)
{
    if (attn_pool_inherited(p)) {
        p->started = 0;
        return;
    }
    pthread_mutex_lock(&p->lock);
    atomic_store_explicit(&p->stop, 1, memory_order_relaxed);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (unsigned i = 0; i < p->started; i++)
        pthread_join(p->workers[i].thread, NULL);
    p->started = 0;
    pthread_cond_destroy(&p->done);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->lock);
}

unsigned attn_available_cpus(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0)
            return (unsigned)n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)n : 1u;
}
