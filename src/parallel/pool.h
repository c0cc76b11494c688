/*
 * A fixed set of worker threads owned by a context. attn_pool_run hands out item indices
 * 0 .. items-1 from one atomic counter to the calling thread and the workers; which thread runs
 * which item varies, so callers must make each item's result independent of the thread (each
 * thread gets its own scratch through `thread`).
 */
#ifndef ATTN_PARALLEL_POOL_H
#define ATTN_PARALLEL_POOL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

typedef void (*attn_item_fn)(void *job, int64_t item, unsigned thread);

typedef struct attn_pool_worker {
    struct attn_pool *pool;
    unsigned index; /* 1 .. threads-1; the calling thread is 0 */
    pthread_t thread;
} attn_pool_worker;

typedef struct attn_pool {
    unsigned threads;          /* including the calling thread */
    unsigned started;          /* workers actually running */
    attn_pool_worker *workers; /* threads - 1 entries, in the context's arena */
    pthread_mutex_t lock;
    pthread_cond_t wake, done;
    atomic_uint_fast64_t generation; /* bumped for every job */
    atomic_uint busy;          /* workers still on the current job */
    atomic_int stop;
    attn_item_fn fn;
    void *job;
    int64_t items;
    atomic_int_fast64_t next;  /* next item to hand out */
    /* Guards of the owning context (see guard.h): */
    atomic_int in_use;         /* 1 while a call runs on the context */
    uint64_t fork_generation;  /* attn_fork_generation() when the workers were started */
} attn_pool;

/* Starts threads - 1 workers; `workers` has room for them. Returns 0, or -1 if a thread could
 * not be started or the fork handlers (fork.h) could not be registered (the pool is then
 * stopped and needs no attn_pool_stop). */
int attn_pool_start(attn_pool *pool, unsigned threads, attn_pool_worker *workers);

/* Runs fn(job, item, thread) for every item and returns when all are done. */
void attn_pool_run(attn_pool *pool, attn_item_fn fn, void *job, int64_t items);

/* Stops and joins the workers. In a process forked after the pool started, the workers do not
 * exist: nothing is joined and the pool's lock and condition variables (possibly held by a
 * thread of the parent at the moment of the fork) are left untouched. */
void attn_pool_stop(attn_pool *pool);

/* Whether the pool was started before the last fork() that led to this process. */
int attn_pool_inherited(const attn_pool *pool);

/* Processors this process may run on (its affinity mask), at least 1. */
unsigned attn_available_cpus(void);

#endif
