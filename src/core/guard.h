/*
 * The entry and exit of every operation on a context (attn_forward, attn_backward):
 *   - a context inherited across fork() (its pool was started in an ancestor process, so its
 *     worker threads do not exist here) is refused with ATTN_ERR_FORKED, message in
 *     attn_last_error(ctx);
 *   - a context already inside a call (another thread entered it) is refused with
 *     ATTN_ERR_BUSY; that message goes to the calling thread's attn_last_error(NULL), because
 *     the context's own buffer belongs to the call in progress.
 * The busy flag is taken with one compare-exchange and released with one store; it also orders
 * consecutive calls made from different threads.
 */
#ifndef ATTN_CORE_GUARD_H
#define ATTN_CORE_GUARD_H

#include <attn/attn.h>

/* ATTN_OK: the caller owns ctx until attn_call_leave. Otherwise nothing was taken. */
attn_status attn_call_enter(attn_ctx *ctx);
void attn_call_leave(attn_ctx *ctx);

#endif
