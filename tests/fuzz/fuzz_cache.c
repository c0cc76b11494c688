/*
 * Fuzz target for the K/V cache: the input picks a cache (heads, dims, dtype, sequences, block
 * size, a capacity that is often too small, sometimes an invalid descriptor) and then a program
 * of operations — appends (sometimes with NULL pointers, negative strides or too many tokens),
 * truncations, forks, reorders (ids in and out of range), resets and attention calls (decode,
 * verification and prefill shapes, GQA, causal, windows, offsets, masks, every output, 1 to 4
 * threads). A model of every sequence (tests/support/kv_model.c) follows the successful
 * operations; after each step the lengths must agree, a refused operation must change nothing
 * (lengths, free blocks), ATTN_ERR_CAPACITY may only come when the blocks are really short,
 * and every attention call must match the float64 oracle on the model's tokens (and
 * attn_forward bit for bit when the blocks are whole key tiles). Anything else aborts.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <attn/attn.h>
#include <attn/attn_kv_cache.h>

#include "support/kv_model.h"

static long outcomes[3]; /* [0] refused descriptors, [1] refused operations, [2] checked calls */

typedef struct bytes {
    const uint8_t *p;
    size_t n, at;
} bytes;

static unsigned byte(bytes *b)
{
    return b->at < b->n ? b->p[b->at++] : 0;
}

static unsigned pick(bytes *b, unsigned n)
{
    return byte(b) % n;
}

static void fail(const char *what)
{
    fprintf(stderr, "fuzz_cache: %s\n", what);
    abort();
}

static int64_t blocks_for(int64_t len, int64_t block)
{
    return (len + block - 1) / block;
}

/* Everything a refused operation must leave alone. */
typedef struct observed {
    int64_t len[8];
    uint64_t free_blocks;
} observed;

static observed observe(const attn_kv_cache *c, uint32_t S)
{
    observed o;
    memset(&o, 0, sizeof o);
    for (uint32_t s = 0; s < S; s++)
        o.len[s] = attn_kv_cache_len(c, s);
    o.free_blocks = attn_kv_cache_free_blocks(c);
    return o;
}

/* A refusal: an expected status, and nothing changed. */
static void refused(const attn_kv_cache *c, uint32_t S, const observed *before, attn_status st)
{
    if (st != ATTN_ERR_NULL_POINTER && st != ATTN_ERR_LIMIT && st != ATTN_ERR_STRIDE &&
        st != ATTN_ERR_CAPACITY) {
        fprintf(stderr, "status %d (%s)\n", st, attn_kv_cache_last_error(c));
        fail("an operation failed with an unexpected status");
    }
    observed now = observe(c, S);
    if (memcmp(&now, before, sizeof now) != 0)
        fail("a refused operation changed the cache");
    outcomes[1]++;
}

static const uint32_t block_sizes[] = {1, 2, 3, 7, 16, 64, 256, 512};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bytes in = {data, size, 0};
    attn_kv_cache_desc d;
    attn_kv_cache_desc_init(&d);
    d.kv_heads = 1 + pick(&in, 3);
    d.qk_dim = 1 + pick(&in, 24);
    d.v_dim = 1 + pick(&in, 24);
    d.dtype = pick(&in, 3);
    d.max_seqs = 1 + pick(&in, 8);
    d.block_tokens = block_sizes[pick(&in, 8)];
    d.capacity = 1 + pick(&in, 250) * 3;
    d.max_len = pick(&in, 2) ? 0 : 1 + pick(&in, 200);
    if (d.max_len > d.capacity)
        d.max_len = d.capacity;
    unsigned hostile = pick(&in, 32);
    if (hostile == 0)
        d.kv_heads = 0;
    else if (hostile == 1)
        d.dtype = 3 + byte(&in);
    else if (hostile == 2)
        d.capacity = UINT64_MAX;
    else if (hostile == 3)
        d.max_len = d.capacity + 1;
    attn_kv_cache *c = NULL;
    attn_status st = attn_kv_cache_create(&d, &c);
    if (st != ATTN_OK) {
        if (c || hostile > 3)
            fail("a valid descriptor was refused, or a refused one gave a cache");
        outcomes[0]++;
        return 0;
    }
    int64_t max_len = d.max_len ? (int64_t)d.max_len : (int64_t)d.capacity;
    int64_t nblocks = blocks_for((int64_t)d.capacity, d.block_tokens);
    kv_model m;
    kv_model_init(&m, &d, max_len);
    rng r = {(uint64_t)byte(&in) << 8 | byte(&in)};
    uint32_t S = d.max_seqs;
    float *k = random_floats(&r, (size_t)(80 * d.kv_heads * d.qk_dim), 1.0);
    float *v = random_floats(&r, (size_t)(80 * d.kv_heads * d.v_dim), 1.0);
    char msg[1024];
    kv_totals tot = {0};

    for (int step = 0; step < 24 && in.at < in.n; step++) {
        uint32_t s = pick(&in, S + 1); /* sometimes one past the last id */
        observed before = observe(c, S);
        switch (pick(&in, 7)) {
        case 0: case 1: { /* append */
            uint32_t n = pick(&in, 80);
            unsigned bad = pick(&in, 16);
            attn_strides ks = attn_strides_bshd(d.kv_heads, n, d.qk_dim);
            attn_strides vs = attn_strides_bshd(d.kv_heads, n, d.v_dim);
            if (bad == 1)
                ks.seq = -1;
            st = attn_kv_cache_append(c, s, n, bad == 0 ? NULL : k, ks, v, vs);
            int64_t len = s < S ? m.len[s] : 0;
            if (st == ATTN_OK) {
                if (s >= S || (n > 0 && bad <= 1) || len + n > max_len)
                    fail("an invalid append was accepted");
                kv_model_append(&m, s, n, k, v);
            } else if (st == ATTN_ERR_CAPACITY) {
                int64_t least = blocks_for(len + n, d.block_tokens) - blocks_for(len, d.block_tokens);
                if ((uint64_t)least + 1 <= before.free_blocks)
                    fail("ATTN_ERR_CAPACITY with enough free blocks");
                refused(c, S, &before, st);
            } else {
                refused(c, S, &before, st);
            }
            break;
        }
        case 2: { /* truncate */
            uint64_t len = pick(&in, 200);
            st = attn_kv_cache_truncate(c, s, len);
            if (st == ATTN_OK) {
                if (s >= S || (int64_t)len > m.len[s])
                    fail("an invalid truncation was accepted");
                m.len[s] = (int64_t)len;
            } else {
                refused(c, S, &before, st);
            }
            break;
        }
        case 3: { /* fork */
            uint32_t dst = pick(&in, S + 1);
            st = attn_kv_cache_fork(c, s, dst);
            if (st == ATTN_OK) {
                if (s >= S || dst >= S)
                    fail("an invalid fork was accepted");
                if (attn_kv_cache_free_blocks(c) < before.free_blocks)
                    fail("a fork took blocks");
                kv_model_copy(&m, dst, s);
            } else {
                refused(c, S, &before, st);
            }
            break;
        }
        case 4: { /* reorder */
            uint32_t n = pick(&in, S + 2), from[10];
            for (uint32_t i = 0; i < n; i++)
                from[i] = pick(&in, S + (i == 0));
            st = attn_kv_cache_reorder(c, from, n);
            if (st == ATTN_OK) {
                if (n > S || (n > 0 && from[0] >= S))
                    fail("an invalid reorder was accepted");
                kv_model_reorder(&m, from, n);
            } else {
                refused(c, S, &before, st);
            }
            break;
        }
        case 5: /* reset, rarely */
            if (pick(&in, 4) == 0) {
                attn_kv_cache_reset(c);
                for (uint32_t i = 0; i < S; i++)
                    m.len[i] = 0;
            }
            break;
        default: { /* attention over some sequences */
            uint32_t n = 1 + pick(&in, 4), ids[4];
            for (uint32_t b = 0; b < n; b++)
                ids[b] = pick(&in, S);
            kv_call o;
            memset(&o, 0, sizeof o);
            unsigned shape = pick(&in, 3);
            o.q_len = shape == 0 ? 1 : shape == 1 ? 2 + pick(&in, 8) : 1 + pick(&in, 40);
            o.causal = pick(&in, 2);
            o.window_left = pick(&in, 4) == 0 ? (int64_t)pick(&in, 50) : -1;
            o.window_right = pick(&in, 6) == 0 ? (int64_t)pick(&in, 10) : -1;
            o.q_offset = pick(&in, 5) == 0 ? (int64_t)pick(&in, 200) : ATTN_Q_OFFSET_DEFAULT;
            o.with_mask = pick(&in, 6) == 0;
            o.with_bias = pick(&in, 6) == 0;
            o.with_weights = pick(&in, 5) == 0;
            o.with_lse = pick(&in, 2);
            o.with_entropy = pick(&in, 3) == 0;
            o.q_heads = d.kv_heads * (1 + pick(&in, 3));
            o.threads = 1 + pick(&in, 4);
            if (kv_model_check(&r, &m, c, ids, n, &o, d.block_tokens % 256 == 0, &tot, msg,
                               sizeof msg)) {
                fprintf(stderr, "%s\n", msg);
                fail("attention over the cache disagrees with the model");
            }
            break;
        }
        }
        for (uint32_t i = 0; i < S; i++)
            if (attn_kv_cache_len(c, i) != m.len[i])
                fail("a sequence's length differs from the model's");
    }
    outcomes[2] += tot.calls;
    /* every block comes back once every sequence is empty */
    for (uint32_t i = 0; i < S; i++)
        if (attn_kv_cache_truncate(c, i, 0) != ATTN_OK)
            fail("truncating to 0 failed");
    if ((int64_t)attn_kv_cache_free_blocks(c) != nblocks)
        fail("blocks leaked");
    free(k), free(v);
    kv_model_free(&m);
    attn_kv_cache_destroy(c);
    return 0;
}

#ifdef ATTN_FUZZ_CACHE_REPLAY
#include "replay.h"

/* The replay summary (the driver is replay.c). */
int replay_summary(int files)
{
    printf("inputs: %ld refused cache descriptors, %ld refused operations (nothing changed), "
           "%ld attention calls checked against the model\n", outcomes[0], outcomes[1],
           outcomes[2]);
    printf("%d passed, 0 failed\n", files);
    return files > 0 && outcomes[2] > 0 ? 0 : 1;
}
#endif
