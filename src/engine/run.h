/*
 * Running an operation's items on the context's threads with the BLAS held single-threaded:
 * every tile product then runs on libattn's threads only, and results do not depend on the
 * thread count (a threaded BLAS partitions a product differently and rounds differently).
 */
#ifndef ATTN_ENGINE_RUN_H
#define ATTN_ENGINE_RUN_H

#include <stdint.h>

#include "engine/scratch.h"
#include "parallel/blas_threads.h"

/* One item of a job, run by some thread with that thread's scratch. */
typedef void (*attn_engine_item_fn)(void *job, int64_t item, attn_scratch *w);

typedef struct attn_engine_section {
    attn_ctx *ctx;
    int serial_blas;        /* 0 with ATTN_BLAS_THREADS_UNTOUCHED */
    attn_blas_saved saved;
} attn_engine_section;

/* Around everything an operation computes in one call. */
void attn_engine_begin(attn_engine_section *s, attn_ctx *ctx);
void attn_engine_end(attn_engine_section *s);

/* fn(job, item, scratch) for items 0 .. items-1 on the context's threads; returns when done. */
void attn_engine_run(attn_engine_section *s, attn_engine_item_fn fn, void *job, int64_t items);

#endif
