/*
 * fork() support. libattn registers pthread_atfork handlers once, when the first context is
 * created:
 *   - before fork: the BLAS-policy lock (blas_threads.c) is taken, so that no other thread holds
 *     it at the instant of the fork;
 *   - in the parent after fork: it is released;
 *   - in the child after fork: the fork generation is advanced (so every pool started before the
 *     fork knows it is inherited and that its workers do not exist here), the BLAS thread count
 *     lowered by calls that were running in the parent is restored, and the lock is released.
 * See docs/threading.md.
 */
#ifndef ATTN_PARALLEL_FORK_H
#define ATTN_PARALLEL_FORK_H

#include <stdint.h>

/* Registers the handlers once per process (thread-safe). Returns 0, or -1 if the system could
 * not register them (out of memory). */
int attn_fork_handlers_install(void);

/* Number of fork() calls since the handlers were installed that led to this process: 0 in the
 * process that created its contexts, 1 in a child, 2 in a grandchild... */
uint64_t attn_fork_generation(void);

#endif
