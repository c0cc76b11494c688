/* Items on the worker pool with a single-threaded BLAS (see run.h). */
#include "engine/run.h"

void attn_engine_begin(attn_engine_section *s, attn_ctx *ctx)
{
    s->ctx = ctx;
    s->serial_blas = !(ctx->desc.flags & ATTN_BLAS_THREADS_UNTOUCHED);
    if (s->serial_blas)
        attn_blas_serial_enter(&s->saved);
}

void attn_engine_end(attn_engine_section *s)
{
    if (s->serial_blas)
        attn_blas_serial_leave(&s->saved);
}

typedef struct run_job {
    attn_engine_section *s;
    attn_engine_item_fn fn;
    void *job;
} run_job;

static void run_item(void *arg, int64_t item, unsigned thread)
{
    const run_job *r = arg;
    /* A worker thread's BLAS calls must be single-threaded too (cheap after the first). */
    if (thread > 0 && r->s->serial_blas)
        attn_blas_serial_worker();
    r->fn(r->job, item, &r->s->ctx->scratch[thread]);
}

void attn_engine_run(attn_engine_section *s, attn_engine_item_fn fn, void *job, int64_t items)
{
    run_job r = {s, fn, job};
    attn_pool_run(&s->ctx->pool, run_item, &r, items);
}
