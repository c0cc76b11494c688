/*
 * What the forward and the backward check and resolve alike about one instance of attention:
 * the query offset, the per-batch key lengths, and the engine's problem built from them and the
 * descriptor. Each operation lists and checks its own tensors (core/tensor.h) and calls these
 * at the same points of the documented check order.
 */
#ifndef ATTN_ATTENTION_INSTANCE_H
#define ATTN_ATTENTION_INSTANCE_H

#include "core/tensor.h"
#include "engine/problem.h"

/* ATTN_ERR_OFFSET unless q_offset is the default or within ±ATTN_MAX_DISTANCE. */
attn_status attn_check_q_offset(attn_ctx *ctx, int64_t q_offset);

/* ATTN_ERR_KV_LENS unless every kv_lens[b] (when given) lies in [0, kv_len]. */
attn_status attn_check_kv_lens(attn_ctx *ctx, const int32_t *kv_lens, int64_t batch,
                               int64_t kv_len);

/* The parts of an instance both operations share; filled into *p with the descriptor's
 * visibility, the dot-product score and dropout keyed by (seed, offset) into *dropout when the
 * descriptor asks for it. The caller sets p->kv, p->entropy and p->q_at_end. */
typedef struct attn_instance {
    int64_t batch, q_len, kv_len, q_offset; /* q_offset may be ATTN_Q_OFFSET_DEFAULT */
    const int32_t *kv_lens;
    const attn_tensor *q;                   /* checked: its ld is set */
    const uint8_t *mask;
    attn_strides mask_strides;
    const float *bias;
    attn_strides bias_strides;
    uint64_t dropout_seed;
    uint32_t dropout_offset;
} attn_instance;

void attn_problem_fill(attn_problem *p, attn_ctx *ctx, const attn_instance *in,
                       attn_dropout *dropout);

#endif
