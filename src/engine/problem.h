/*
 * What the engine computes for one call of an operation: the resolved instance (lengths,
 * visibility, where Q, masks and bias are) and the two pluggable parts, the score operation and
 * the key/value source. Operations fill one after validating their arguments; the engine never
 * sees an operation's public argument struct.
 */
#ifndef ATTN_ENGINE_PROBLEM_H
#define ATTN_ENGINE_PROBLEM_H

#include <stdint.h>

#include "core/context.h"
#include "engine/kv_source.h"
#include "kernels/dropout.h"
#include "mask/visibility.h"

typedef struct attn_score_op attn_score_op;

typedef struct attn_problem {
    const attn_ctx *ctx;          /* kernels, scale, heads, dims, per-thread scratch */
    int64_t batch, q_len, kv_len;
    attn_visibility vis;          /* q_offset resolved */
    const int32_t *kv_lens;       /* NULL: every batch has kv_len keys (or kv->keys says) */
    int q_at_end;                 /* 1: batch b's query row 0 sits at keys(b) - q_len on the key
                                     axis (vis.q_offset is ignored) */
    const float *q;               /* [batch, q_heads, q_len, qk_dim] */
    attn_strides q_strides;
    int ldq;
    const uint8_t *mask;          /* optional [batch, q_heads, q_len, kv_len] */
    attn_strides mask_strides;
    const float *bias;            /* optional, same shape */
    attn_strides bias_strides;
    const attn_kv_source *kv;
    const attn_score_op *score;
    int entropy;                  /* keep the entropy accumulator u */
    const attn_dropout *dropout;  /* NULL: no dropout */
} attn_problem;

/* Keys of batch entry b: the source's count, kv_lens[b], or kv_len. */
static inline int64_t attn_problem_keys(const attn_problem *p, int64_t b)
{
    return p->kv->keys ? p->kv->keys(p->kv, b) : p->kv_lens ? (int64_t)p->kv_lens[b] : p->kv_len;
}

#endif
