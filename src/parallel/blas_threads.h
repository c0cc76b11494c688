/*
 * Keeping the BLAS single-threaded while libattn's own threads call it. Found at run time in
 * whatever BLAS the process has loaded: OpenBLAS (openblas_get/set_num_threads) or BLIS
 * (bli_thread_get/set_num_threads). The setting is process-wide in both, so it is changed only
 * for the duration of a multi-threaded call, counted across concurrent calls, and restored by
 * the last one to leave. See docs/threading.md.
 */
#ifndef ATTN_PARALLEL_BLAS_THREADS_H
#define ATTN_PARALLEL_BLAS_THREADS_H

void attn_blas_serial_enter(void);
void attn_blas_serial_leave(void);

/* "OpenBLAS", "BLIS" or "other" (a BLAS whose threads libattn cannot control). */
const char *attn_blas_threading_kind(void);

#endif
