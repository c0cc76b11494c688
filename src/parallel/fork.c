/* See fork.h. */
#include <pthread.h>
#include <stdatomic.h>

#include "parallel/blas_threads.h"
#include "parallel/fork.h"

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int install_failed;
/* Written only in the child handler, where the process has a single thread; atomic so that
 * reading it from any thread of the parent is well defined. */
static atomic_uint_fast64_t generation;

static void before_fork(void)
{
    attn_blas_fork_prepare();
}

static void parent_after_fork(void)
{
    attn_blas_fork_parent();
}

static void child_after_fork(void)
{
    atomic_fetch_add_explicit(&generation, 1, memory_order_relaxed);
    attn_blas_fork_child();
}

static void install(void)
{
    install_failed = pthread_atfork(before_fork, parent_after_fork, child_after_fork) != 0;
}

int attn_fork_handlers_install(void)
{
    pthread_once(&once, install);
    return install_failed ? -1 : 0;
}

uint64_t attn_fork_generation(void)
{
    return atomic_load_explicit(&generation, memory_order_relaxed);
}
