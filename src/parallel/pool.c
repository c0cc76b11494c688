/* The worker pool: one mutex and two condition variables; items come from an atomic counter,
 * so a job costs one wake-up and one completion signal per worker, not one per item. */
#define _GNU_SOURCE
#include <sched.h>
#include <unistd.h>

#include "parallel/pool.h"

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
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (p->generation == seen && !p->stop)
            pthread_cond_wait(&p->wake, &p->lock);
        if (p->stop)
            break;
        seen = p->generation;
        attn_item_fn fn = p->fn;
        void *job = p->job;
        int64_t items = p->items;
        pthread_mutex_unlock(&p->lock);
        run_items(p, fn, job, items, w->index);
        pthread_mutex_lock(&p->lock);
        if (--p->busy == 0)
            pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

int attn_pool_start(attn_pool *p, unsigned threads, attn_pool_worker *workers)
{
    p->threads = threads;
    p->started = 0;
    p->workers = workers;
    p->generation = 0;
    p->busy = 0;
    p->stop = 0;
    atomic_init(&p->next, 0);
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
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
    pthread_mutex_lock(&p->lock);
    p->fn = fn;
    p->job = job;
    p->items = items;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    p->busy = p->started;
    p->generation++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    run_items(p, fn, job, items, 0);
    pthread_mutex_lock(&p->lock);
    while (p->busy > 0)
        pthread_cond_wait(&p->done, &p->lock);
    pthread_mutex_unlock(&p->lock);
}

void attn_pool_stop(attn_pool *p)
{
    pthread_mutex_lock(&p->lock);
    p->stop = 1;
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
