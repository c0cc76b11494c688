/* The optional attention-weights output of the forward. */
#ifndef ATTN_ATTENTION_WEIGHTS_H
#define ATTN_ATTENTION_WEIGHTS_H

#include "attention/forward.h"

/*
 * Writes the task's rows of the weights output, after the online pass has left each row's final
 * max m and sum l in t->w->state (block tasks only: one head, consecutive rows): recomputes the
 * score tiles and writes p = exp(s - m) / l straight into the caller's buffer, so no Lq x Lk
 * buffer is ever needed. In head-mean mode head 0 stores, later heads add, and the last head
 * divides by q_heads.
 */
void attn_write_weights(const attn_forward_call *c, const attn_task *t);

#endif
