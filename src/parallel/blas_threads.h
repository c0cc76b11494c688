/*
 * Keeping the BLAS single-threaded while libattn's own threads call it, found at run time in
 * whatever BLAS the process has loaded:
 *   - OpenBLAS, pthread build (openblas_get_parallel() == 1), and BLIS: the thread count is
 *     process-wide, so it is set to 1 only while calls are inside attn_forward, counted across
 *     concurrent calls, and restored by the last one to leave;
 *   - OpenBLAS, OpenMP build (== 2): it follows the calling thread's OpenMP setting, so only
 *     per-thread settings change: libattn's workers set theirs to 1 once, and the calling
 *     thread's is saved, set to 1 and restored around the call. Nothing process-wide changes.
 * See docs/threading.md.
 */
#ifndef ATTN_PARALLEL_BLAS_THREADS_H
#define ATTN_PARALLEL_BLAS_THREADS_H

/* What the calling thread must restore. */
typedef struct attn_blas_saved {
    int omp_threads; /* OpenMP build: the thread's omp_get_max_threads(), 0 = nothing to restore */
    int global;      /* 1 if a process-wide section was entered */
} attn_blas_saved;

/* Around one attn_forward, on the calling thread. */
void attn_blas_serial_enter(attn_blas_saved *saved);
void attn_blas_serial_leave(const attn_blas_saved *saved);

/* On a libattn worker thread, before its first BLAS call of a call that asked for a serial
 * BLAS: makes that thread's BLAS calls single-threaded (once per thread; cheap after). */
void attn_blas_serial_worker(void);

/* The fork handlers (fork.c): take the lock of the process-wide section before fork, release it
 * after; in the child, restore the thread count if calls of the parent were inside the section
 * (their threads do not exist in the child, so none of them will). */
void attn_blas_fork_prepare(void);
void attn_blas_fork_parent(void);
void attn_blas_fork_child(void);

/* "OpenBLAS (pthreads)", "OpenBLAS (OpenMP)", "OpenBLAS (serial)", "BLIS" or "other". */
const char *attn_blas_threading_kind(void);

#endif
