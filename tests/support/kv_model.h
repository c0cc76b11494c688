/*
 * A model of a K/V cache for the tests and the fuzz target: every sequence's tokens as plain
 * arrays of the values the cache stores (rounded by this code's own conversions: the compiler's
 * _Float16, round-to-nearest-even on the bits for bfloat16), and a check of attention over the
 * cache against it: per batch entry against the float64 oracle within the float32 tolerance,
 * and, when the tiles are the same, bit for bit against attn_forward on the model's tokens laid
 * out as tensors of the cache's dtype with the same key extent.
 */
#ifndef ATTN_TEST_KV_MODEL_H
#define ATTN_TEST_KV_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include <attn/attn.h>
#include <attn/attn_kv_cache.h>

#include "support/util.h"

/* x rounded to the 16-bit type of an attn_kv_dtype (F16 or BF16), and back. */
uint16_t kv_round16(float x, uint32_t dtype);
float kv_widen16(uint16_t b, uint32_t dtype);

typedef struct kv_model {
    uint32_t S, Hkv, Dk, Dv, dtype;
    int64_t max_len;
    int64_t *len;
    float **k, **v; /* [S] of [Hkv][max_len][D]: the stored (rounded) values */
} kv_model;

void kv_model_init(kv_model *m, const attn_kv_cache_desc *d, int64_t max_len);
void kv_model_free(kv_model *m);
/* What the cache stores for x. */
float kv_model_stored(const kv_model *m, float x);
/* Tokens [n, Hkv, D] (token-major, attn_strides_bshd) appended to sequence s. */
void kv_model_append(kv_model *m, uint32_t s, int64_t n, const float *k, const float *v);
/* Sequence dst becomes a copy of sequence src. */
void kv_model_copy(kv_model *m, uint32_t dst, uint32_t src);

/* Sequence i becomes what sequence from[i] was, for i < n. */
void kv_model_reorder(kv_model *m, const uint32_t *from, uint32_t n);

/* One attention call over the cache. */
typedef struct kv_call {
    uint32_t q_len;
    int causal;
    int64_t window_left, window_right;
    int64_t q_offset;       /* ATTN_Q_OFFSET_DEFAULT: per sequence */
    int with_mask, with_bias, with_weights, with_lse, with_entropy;
    uint32_t q_heads;
    uint32_t threads;
    uint32_t kv_len;        /* 0: the longest */
} kv_call;

typedef struct kv_totals {
    long calls, compared, bitwise;
    double worst;
} kv_totals;

/* Attention of random queries (from r) over the sequences ids[0 .. n) of the cache, checked
 * against the model. Returns 0, or 1 with the reason in msg. */
int kv_model_check(rng *r, const kv_model *m, const attn_kv_cache *cache, const uint32_t *ids,
                   uint32_t n, const kv_call *o, int expect_bitwise, kv_totals *tot, char *msg,
                   size_t msg_size);

#endif
