/*
 * The K/V cache (attn_kv_cache.h) and attention over it (attn_forward_cache).
 *
 * A kv_model kept by the test holds every sequence's tokens as plain arrays (rounded to the
 * cache's dtype by the test's own conversion: the compiler's _Float16, round-to-nearest-even on
 * the bits for bfloat16). Random runs of appends, truncations, forks, reorders and resets are
 * applied to the cache and the kv_model alike; after each step the lengths must agree, and
 * attention over every sequence must agree with
 *   - the float64 oracle on the model's tokens, within the float32 tolerance, and
 *   - attn_forward on the model's tokens laid out as tensors (same dtype, same key extent),
 *     bit for bit when block_tokens is a multiple of the key tile (the same tiles are read).
 * Then: random configurations of attention over a cache (decode, chunked prefill and
 * speculative verification shapes; GQA; causal, windows, masks, biases; every output; explicit
 * and per-sequence offsets), bitwise thread invariance, the block accounting of fork / copy on
 * write / truncate / reorder (no block copied by a fork, one by the first append into a shared
 * partial block), capacity errors that change nothing, the static form, allocation failure,
 * and every error path of every function with nothing written.
 */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <attn/attn.h>
#include <attn/attn_kv_cache.h>

#include "support/kv_model.h"

/* ATTN_TEST_QUICK=1 (valgrind's run, where every thread runs serialised and 50 times
 * slower) cuts the random runs to a twentieth and the long shapes short. */
static int quick(void)
{
    const char *q = getenv("ATTN_TEST_QUICK");
    return q && q[0] == '1';
}

static uint64_t runs(uint64_t n)
{
    return quick() ? n / 20 : n;
}

/* The model's check, failing the test with its reason. */
static void check(rng *r, const kv_model *m, const attn_kv_cache *cache, const uint32_t *ids,
                  uint32_t n, const kv_call *o, int expect_bitwise, kv_totals *tot)
{
    char msg[1024];
    if (kv_model_check(r, m, cache, ids, n, o, expect_bitwise, tot, msg, sizeof msg))
        fail_msg("%s", msg);
}

/* ---- random operations against the model ---------------------------------------------------- */

static attn_kv_cache *make_cache(const attn_kv_cache_desc *d)
{
    attn_kv_cache *c = NULL;
    if (attn_kv_cache_create(d, &c) != ATTN_OK)
        fail_msg("attn_kv_cache_create: %s", attn_last_error(NULL));
    return c;
}

static void append_random(rng *r, attn_kv_cache *c, kv_model *m, uint32_t s, int64_t n)
{
    float *k = random_floats(r, (size_t)(n * m->Hkv * m->Dk), 1.0);
    float *v = random_floats(r, (size_t)(n * m->Hkv * m->Dv), 1.0);
    attn_status st = attn_kv_cache_append(c, s, (uint32_t)n, k,
                                          attn_strides_bshd(m->Hkv, (uint32_t)n, m->Dk), v,
                                          attn_strides_bshd(m->Hkv, (uint32_t)n, m->Dv));
    if (st != ATTN_OK)
        fail_msg("append %lld to %u: %s", (long long)n, s, attn_kv_cache_last_error(c));
    kv_model_append(m, s, n, k, v);
    free(k), free(v);
}

static void run_operations(uint64_t seed, kv_totals *tot)
{
    rng r = {seed};
    static const uint32_t blocks[] = {1, 5, 16, 64, 256, 512};
    static const uint32_t dtypes[] = {ATTN_KV_F32, ATTN_KV_F16, ATTN_KV_BF16};
    attn_kv_cache_desc d;
    attn_kv_cache_desc_init(&d);
    d.kv_heads = (uint32_t)(1 + rng_below(&r, 3));
    d.qk_dim = (uint32_t)(1 + rng_below(&r, 40));
    d.v_dim = (uint32_t)(1 + rng_below(&r, 40));
    d.dtype = dtypes[rng_below(&r, 3)];
    d.max_seqs = (uint32_t)(1 + rng_below(&r, 6));
    d.block_tokens = blocks[rng_below(&r, 6)];
    int64_t max_len = 64 + rng_below(&r, 1200);
    d.max_len = (uint64_t)max_len;
    /* room for every sequence at max_len (partial last blocks included) */
    d.capacity = (uint64_t)((max_len + d.block_tokens - 1) / d.block_tokens * d.block_tokens * d.max_seqs);
    attn_kv_cache *c = make_cache(&d);
    kv_model m;
    kv_model_init(&m, &d, max_len);
    kv_call o = {1, 0, -1, -1, ATTN_Q_OFFSET_DEFAULT, 0, 0, 0, 0, 0, d.kv_heads * 2, 2, 0};
    uint32_t ids[8];
    for (int step = 0; step < 24; step++) {
        uint32_t s = (uint32_t)rng_below(&r, d.max_seqs);
        switch (rng_below(&r, 8)) {
        case 0: case 1: case 2: { /* append, within max_len */
            int64_t room = max_len - m.len[s];
            if (room > 0)
                append_random(&r, c, &m, s, 1 + rng_below(&r, room < 300 ? room : 300));
            break;
        }
        case 3: { /* truncate */
            uint64_t len = (uint64_t)rng_below(&r, m.len[s] + 1);
            assert_int_equal(attn_kv_cache_truncate(c, s, len), ATTN_OK);
            m.len[s] = (int64_t)len;
            break;
        }
        case 4: case 5: { /* fork */
            uint32_t dst = (uint32_t)rng_below(&r, d.max_seqs);
            assert_int_equal(attn_kv_cache_fork(c, s, dst), ATTN_OK);
            kv_model_copy(&m, dst, s);
            break;
        }
        case 6: { /* reorder the first n sequences from random ones */
            uint32_t n = (uint32_t)(1 + rng_below(&r, d.max_seqs)), from[8];
            for (uint32_t i = 0; i < n; i++)
                from[i] = (uint32_t)rng_below(&r, d.max_seqs);
            assert_int_equal(attn_kv_cache_reorder(c, from, n), ATTN_OK);
            kv_model_reorder(&m, from, n);
            break;
        }
        default:
            if (rng_below(&r, 4) == 0) {
                attn_kv_cache_reset(c);
                for (uint32_t i = 0; i < d.max_seqs; i++)
                    m.len[i] = 0;
            }
            break;
        }
        for (uint32_t i = 0; i < d.max_seqs; i++)
            if (attn_kv_cache_len(c, i) != m.len[i])
                fail_msg("seed %llu step %d: sequence %u has %lld tokens, the model %lld",
                         (unsigned long long)seed, step, i, (long long)attn_kv_cache_len(c, i),
                         (long long)m.len[i]);
        if (step % 3 == 2) {
            for (uint32_t i = 0; i < d.max_seqs; i++)
                ids[i] = i;
            o.q_len = (uint32_t)(1 + rng_below(&r, 3));
            o.causal = (int)rng_below(&r, 2);
            check(&r, &m, c, ids, d.max_seqs, &o, d.block_tokens % 256 == 0, tot);
        }
    }
    /* every block comes back when every sequence is emptied */
    for (uint32_t i = 0; i < d.max_seqs; i++)
        assert_int_equal(attn_kv_cache_truncate(c, i, 0), ATTN_OK);
    assert_int_equal(attn_kv_cache_free_blocks(c),
                     (d.capacity + d.block_tokens - 1) / d.block_tokens);
    kv_model_free(&m);
    attn_kv_cache_destroy(c);
}

static void test_operations_against_model(void **state)
{
    (void)state;
    kv_totals tot = {0};
    uint64_t n = runs(60);
    for (uint64_t seed = 1; seed <= n; seed++)
        run_operations(seed, &tot);
    print_message("%llu operation runs: %ld attention calls, %ld elements within tolerance "
                  "(worst %.3f of it), %ld batch entries bitwise equal to attn_forward\n",
                  (unsigned long long)n, tot.calls, tot.compared, tot.worst, tot.bitwise);
    assert_true(quick() || tot.bitwise > (long)n); /* the quick runs may draw no 256-token blocks */
}

/* ---- random attention configurations over a filled cache ---------------------------------- */

static void run_config(uint64_t seed, kv_totals *tot)
{
    rng r = {seed};
    static const uint32_t blocks[] = {3, 16, 100, 256, 512, 1024};
    static const uint32_t dtypes[] = {ATTN_KV_F32, ATTN_KV_F16, ATTN_KV_BF16};
    attn_kv_cache_desc d;
    attn_kv_cache_desc_init(&d);
    d.kv_heads = (uint32_t)(1 + rng_below(&r, 2));
    d.qk_dim = (uint32_t)(1 + rng_below(&r, 70));
    d.v_dim = (uint32_t)(1 + rng_below(&r, 70));
    d.dtype = dtypes[rng_below(&r, 3)];
    d.max_seqs = (uint32_t)(1 + rng_below(&r, 4));
    d.block_tokens = blocks[rng_below(&r, 6)];
    int64_t max_len = 1 + rng_below(&r, quick() ? 300 : rng_below(&r, 3) ? 700 : 2500);
    d.max_len = (uint64_t)max_len;
    d.capacity = (uint64_t)((max_len + d.block_tokens - 1) / d.block_tokens * d.block_tokens * d.max_seqs);
    attn_kv_cache *c = make_cache(&d);
    kv_model m;
    kv_model_init(&m, &d, max_len);
    for (uint32_t s = 0; s < d.max_seqs; s++) { /* filled in a few chunks */
        int64_t target = rng_below(&r, 5) ? 1 + rng_below(&r, max_len) : 0;
        while (m.len[s] < target)
            append_random(&r, c, &m, s, 1 + rng_below(&r, target - m.len[s]));
    }
    kv_call o;
    memset(&o, 0, sizeof o);
    o.q_heads = d.kv_heads * (uint32_t)(1 + rng_below(&r, 3));
    int shape = (int)rng_below(&r, 3); /* decode, speculative verification, chunked prefill */
    o.q_len = shape == 0 ? 1 : shape == 1 ? (uint32_t)(2 + rng_below(&r, 8))
                                           : (uint32_t)(1 + rng_below(&r, 300));
    o.causal = rng_below(&r, 3) != 0;
    o.window_left = rng_below(&r, 4) == 0 ? rng_below(&r, 200) : -1;
    o.window_right = rng_below(&r, 6) == 0 ? rng_below(&r, 20) : -1;
    o.q_offset = rng_below(&r, 5) == 0 ? rng_below(&r, max_len) : ATTN_Q_OFFSET_DEFAULT;
    o.with_mask = rng_below(&r, 5) == 0;
    o.with_bias = rng_below(&r, 5) == 0;
    o.with_weights = rng_below(&r, 4) == 0;
    o.with_lse = rng_below(&r, 2) == 0;
    o.with_entropy = rng_below(&r, 3) == 0;
    o.threads = (uint32_t)(1 + rng_below(&r, 3));
    o.kv_len = rng_below(&r, 4) == 0 ? (uint32_t)(max_len + rng_below(&r, 10)) : 0;
    uint32_t n = (uint32_t)(1 + rng_below(&r, 5)), ids[5];
    for (uint32_t b = 0; b < n; b++)
        ids[b] = (uint32_t)rng_below(&r, d.max_seqs);
    check(&r, &m, c, ids, n, &o, 0, tot);
    kv_model_free(&m);
    attn_kv_cache_destroy(c);
}

static void test_random_configurations(void **state)
{
    (void)state;
    kv_totals tot = {0};
    uint64_t n = runs(260);
    for (uint64_t seed = 1000; seed < 1000 + n; seed++)
        run_config(seed, &tot);
    print_message("%llu configurations: %ld calls, %ld elements within tolerance (worst %.3f)\n",
                  (unsigned long long)n, tot.calls, tot.compared, tot.worst);
    assert_true(tot.calls > (long)(n * 3 / 4));
}

/* ---- thread invariance ------------------------------------------------------------------------ */

static void test_thread_invariance(void **state)
{
    (void)state;
    static const uint32_t dtypes[] = {ATTN_KV_F32, ATTN_KV_F16, ATTN_KV_BF16};
    for (int t = 0; t < 3; t++)
        for (uint32_t q_len = 1; q_len <= 300; q_len += quick() ? 300 : 299) {
            rng r = {77 + (uint64_t)t};
            attn_kv_cache_desc d;
            attn_kv_cache_desc_init(&d);
            d.kv_heads = 2, d.qk_dim = 64, d.v_dim = 48, d.dtype = dtypes[t], d.max_seqs = 3;
            d.block_tokens = 128, d.capacity = 3 * 3000;
            attn_kv_cache *c = make_cache(&d);
            kv_model m;
            kv_model_init(&m, &d, 3000);
            append_random(&r, c, &m, 0, 2500);
            append_random(&r, c, &m, 1, 700);
            append_random(&r, c, &m, 2, 1900);
            float *q = random_floats(&r, (size_t)3 * 8 * q_len * 64, 1.0);
            float *first = NULL;
            uint32_t ids[3] = {2, 0, 1};
            size_t bytes = (size_t)3 * 8 * q_len * 48 * sizeof(float);
            for (uint32_t threads = 1; threads <= 4; threads++) {
                attn_desc ad;
                attn_desc_init(&ad);
                ad.q_heads = 8, ad.kv_heads = 2, ad.qk_dim = 64, ad.v_dim = 48;
                ad.kv_dtype = d.dtype, ad.threads = threads, ad.flags = ATTN_CAUSAL;
                attn_ctx *ctx;
                assert_int_equal(attn_create(&ad, &ctx), ATTN_OK);
                attn_args a;
                attn_args_init(&a);
                a.batch = 3, a.q_len = q_len, a.q = q;
                a.q_strides = attn_strides_bhsd(8, q_len, 64);
                float *out = xcalloc(bytes, 1);
                a.out = out;
                a.out_strides = attn_strides_bhsd(8, q_len, 48);
                assert_int_equal(attn_forward_cache(ctx, &a, c, ids), ATTN_OK);
                if (!first)
                    first = out;
                else {
                    assert_memory_equal(first, out, bytes);
                    free(out);
                }
                attn_destroy(ctx);
            }
            free(first), free(q);
            kv_model_free(&m);
            attn_kv_cache_destroy(c);
        }
}

/* ---- concurrent readers -------------------------------------------------------------------------- */

/* Several contexts reading one cache at once (allowed while nothing changes it): each thread's
 * results equal those of the same calls made alone. */
typedef struct reader {
    const attn_kv_cache *cache;
    const float *q;
    float *out;
    attn_status status;
} reader;

static void *read_cache(void *arg)
{
    reader *rd = arg;
    attn_desc ad;
    attn_desc_init(&ad);
    ad.q_heads = 4, ad.kv_heads = 2, ad.qk_dim = 32, ad.v_dim = 32, ad.threads = 2;
    ad.kv_dtype = ATTN_KV_F16;
    attn_ctx *ctx;
    rd->status = attn_create(&ad, &ctx);
    if (rd->status != ATTN_OK)
        return NULL;
    uint32_t ids[2] = {1, 0};
    attn_args a;
    attn_args_init(&a);
    a.batch = 2, a.q_len = 3, a.q = rd->q, a.q_strides = attn_strides_bhsd(4, 3, 32);
    a.out = rd->out, a.out_strides = attn_strides_bhsd(4, 3, 32);
    for (int i = 0; i < 20 && rd->status == ATTN_OK; i++)
        rd->status = attn_forward_cache(ctx, &a, rd->cache, ids);
    attn_destroy(ctx);
    return NULL;
}

static void test_concurrent_readers(void **state)
{
    (void)state;
    rng r = {21};
    attn_kv_cache_desc d;
    attn_kv_cache_desc_init(&d);
    d.kv_heads = 2, d.qk_dim = 32, d.v_dim = 32, d.dtype = ATTN_KV_F16, d.max_seqs = 2;
    d.block_tokens = 64, d.capacity = 4096;
    attn_kv_cache *c = make_cache(&d);
    kv_model m;
    kv_model_init(&m, &d, 2048);
    append_random(&r, c, &m, 0, 1500);
    append_random(&r, c, &m, 1, 900);
    float *q = random_floats(&r, 2 * 4 * 3 * 32, 1.0);
    enum { READERS = 3 };
    reader rd[READERS + 1];
    pthread_t th[READERS];
    for (int i = 0; i <= READERS; i++)
        rd[i] = (reader){c, q, xcalloc(2 * 4 * 3 * 32, sizeof(float)), ATTN_OK};
    read_cache(&rd[READERS]); /* alone first */
    for (int i = 0; i < READERS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, read_cache, &rd[i]), 0);
    for (int i = 0; i < READERS; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i <= READERS; i++) {
        assert_int_equal(rd[i].status, ATTN_OK);
        assert_memory_equal(rd[i].out, rd[READERS].out, 2 * 4 * 3 * 32 * sizeof(float));
        free(rd[i].out);
    }
    free(q);
    kv_model_free(&m);
    attn_kv_cache_destroy(c);
}

/* ---- block accounting -------------------------------------------------------------------------- */

static void test_sharing_and_copy_on_write(void **state)
{
    (void)state;
    rng r = {5};
    attn_kv_cache_desc d;
    attn_kv_cache_desc_init(&d);
    d.kv_heads = 2, d.qk_dim = 16, d.v_dim = 16, d.max_seqs = 4, d.block_tokens = 256;
    d.capacity = 64 * 256;
    attn_kv_cache *c = make_cache(&d);
    kv_model m;
    kv_model_init(&m, &d, d.capacity);
    append_random(&r, c, &m, 0, 4000); /* 15 full blocks and a partial one */
    assert_int_equal(attn_kv_cache_free_blocks(c), 64 - 16);
    /* a fork copies no block */
    assert_int_equal(attn_kv_cache_fork(c, 0, 1), ATTN_OK);
    kv_model_copy(&m, 1, 0);
    assert_int_equal(attn_kv_cache_free_blocks(c), 64 - 16);
    /* the first append into the shared partial block copies that block only */
    append_random(&r, c, &m, 1, 1);
    assert_int_equal(attn_kv_cache_free_blocks(c), 64 - 17);
    append_random(&r, c, &m, 1, 95); /* fills the copy: no new block */
    assert_int_equal(attn_kv_cache_free_blocks(c), 64 - 17);
    append_random(&r, c, &m, 1, 1); /* a new block */
    assert_int_equal(attn_kv_cache_free_blocks(c), 64 - 18);
    /* the original is untouched by its fork's appends */
    append_random(&r, c, &m, 0, 10);
    assert_int_equal(attn_kv_cache_free_blocks(c), 64 - 18);
    /* truncating a sequence frees only the blocks nobody else uses */
    assert_int_equal(attn_kv_cache_truncate(c, 1, 100), ATTN_OK);
    m.len[1] = 100;
    assert_int_equal(attn_kv_cache_free_blocks(c), 64 - 16);
    /* beam search: four beams from one prompt, reordered twice */
    for (uint32_t b = 1; b < 4; b++) {
        assert_int_equal(attn_kv_cache_fork(c, 0, b), ATTN_OK);
        kv_model_copy(&m, b, 0);
    }
    assert_int_equal(attn_kv_cache_free_blocks(c), 64 - 16);
    for (uint32_t b = 0; b < 4; b++)
        append_random(&r, c, &m, b, 1); /* three copies of the shared partial block */
    assert_int_equal(attn_kv_cache_free_blocks(c), 64 - 19);
    uint32_t from[4] = {2, 2, 0, 3};
    assert_int_equal(attn_kv_cache_reorder(c, from, 4), ATTN_OK);
    kv_model_reorder(&m, from, 4);
    assert_int_equal(attn_kv_cache_free_blocks(c), 64 - 18); /* beam 1's last block released */
    kv_totals tot = {0};
    uint32_t ids[4] = {0, 1, 2, 3};
    kv_call o = {1, 1, -1, -1, ATTN_Q_OFFSET_DEFAULT, 0, 0, 1, 1, 1, 4, 2, 0};
    check(&r, &m, c, ids, 4, &o, 1, &tot);
    assert_int_equal(tot.bitwise, 4);
    kv_model_free(&m);
    attn_kv_cache_destroy(c);
}

/* ---- errors ----------------------------------------------------------------------------------- */

static int failing_allocs;
static void *failing_alloc(void *user, size_t size, size_t alignment)
{
    (void)user, (void)size, (void)alignment;
    failing_allocs++;
    return NULL;
}
static void plain_free(void *user, void *p)
{
    (void)user;
    free(p);
}

static void test_creation_errors(void **state)
{
    (void)state;
    attn_kv_cache_desc d;
    attn_kv_cache *c = (attn_kv_cache *)&d;
    assert_int_equal(attn_kv_cache_create(NULL, &c), ATTN_ERR_NULL_POINTER);
    assert_null(c);
    attn_kv_cache_desc_init(&d);
    assert_int_equal(attn_kv_cache_create(&d, NULL), ATTN_ERR_NULL_POINTER);
    struct { uint32_t *field; uint32_t value; attn_status want; const char *word; } cases[] = {
        {&d.kv_heads, 0, ATTN_ERR_ZERO_SIZE, "kv_heads"},
        {&d.qk_dim, 0, ATTN_ERR_ZERO_SIZE, "qk_dim"},
        {&d.v_dim, ATTN_MAX_HEAD_DIM + 1, ATTN_ERR_LIMIT, "v_dim"},
        {&d.max_seqs, 0, ATTN_ERR_ZERO_SIZE, "max_seqs"},
        {&d.dtype, 7, ATTN_ERR_BAD_OPTION, "dtype"},
        {&d.block_tokens, ATTN_KV_CACHE_MAX_BLOCK + 1, ATTN_ERR_LIMIT, "block_tokens"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        attn_kv_cache_desc_init(&d);
        *cases[i].field = cases[i].value;
        assert_int_equal(attn_kv_cache_create(&d, &c), cases[i].want);
        assert_null(c);
        assert_non_null(strstr(attn_last_error(NULL), cases[i].word));
        assert_int_equal(attn_kv_cache_size(&d), 0);
    }
    attn_kv_cache_desc_init(&d);
    d.capacity = 0;
    assert_int_equal(attn_kv_cache_create(&d, &c), ATTN_ERR_ZERO_SIZE);
    attn_kv_cache_desc_init(&d);
    d.max_len = d.capacity + 1;
    assert_int_equal(attn_kv_cache_create(&d, &c), ATTN_ERR_LIMIT);
    attn_kv_cache_desc_init(&d);
    d.struct_size = 8;
    assert_int_equal(attn_kv_cache_create(&d, &c), ATTN_ERR_STRUCT_SIZE);
    /* hostile sizes: too many blocks, and sizes past the address space */
    attn_kv_cache_desc_init(&d);
    d.block_tokens = 1, d.capacity = UINT64_MAX;
    assert_int_equal(attn_kv_cache_create(&d, &c), ATTN_ERR_LIMIT);
    attn_kv_cache_desc_init(&d);
    d.block_tokens = ATTN_KV_CACHE_MAX_BLOCK, d.kv_heads = UINT32_MAX, d.qk_dim = ATTN_MAX_HEAD_DIM;
    d.capacity = (uint64_t)ATTN_KV_CACHE_MAX_BLOCK * ATTN_KV_CACHE_MAX_BLOCKS;
    assert_int_equal(attn_kv_cache_create(&d, &c), ATTN_ERR_OVERFLOW);
    attn_kv_cache_desc_init(&d);
    d.max_seqs = UINT32_MAX, d.block_tokens = 1, d.capacity = ATTN_KV_CACHE_MAX_BLOCKS;
    assert_int_equal(attn_kv_cache_size(&d), 0); /* 2^33 tables of 2^30 entries */
    /* allocation failure */
    attn_allocator failing = {failing_alloc, plain_free, NULL};
    attn_kv_cache_desc_init(&d);
    d.allocator = &failing;
    assert_int_equal(attn_kv_cache_create(&d, &c), ATTN_ERR_NO_MEMORY);
    assert_int_equal(failing_allocs, 1);
    assert_null(c);
    attn_allocator half = {NULL, plain_free, NULL};
    d.allocator = &half;
    assert_int_equal(attn_kv_cache_create(&d, &c), ATTN_ERR_NULL_POINTER);
}

static void test_static_form(void **state)
{
    (void)state;
    attn_kv_cache_desc d;
    attn_kv_cache_desc_init(&d);
    d.kv_heads = 2, d.qk_dim = 8, d.v_dim = 8, d.max_seqs = 2, d.capacity = 1000;
    d.dtype = ATTN_KV_BF16;
    size_t size = attn_kv_cache_size(&d);
    assert_true(size > 1000 * 2 * 16 * 2);
    unsigned char *mem = aligned_alloc(64, size + 64);
    memset(mem, 0xA5, size + 64);
    attn_kv_cache *c;
    assert_int_equal(attn_kv_cache_create_static(&d, NULL, size, &c), ATTN_ERR_NULL_POINTER);
    assert_int_equal(attn_kv_cache_create_static(&d, mem + 1, size, &c), ATTN_ERR_WORKSPACE_ALIGN);
    assert_int_equal(attn_kv_cache_create_static(&d, mem, size - 1, &c), ATTN_ERR_WORKSPACE_SIZE);
    for (size_t i = 0; i < size + 64; i++) /* the failures wrote nothing */
        assert_int_equal(mem[i], 0xA5);
    assert_int_equal(attn_kv_cache_create_static(&d, mem, size, &c), ATTN_OK);
    for (size_t i = size; i < size + 64; i++) /* nothing past the size */
        assert_int_equal(mem[i], 0xA5);
    rng r = {9};
    kv_model m;
    kv_model_init(&m, &d, 1000);
    append_random(&r, c, &m, 1, 600);
    kv_totals tot = {0};
    uint32_t ids[1] = {1};
    kv_call o = {4, 1, -1, -1, ATTN_Q_OFFSET_DEFAULT, 0, 0, 0, 1, 0, 4, 1, 0};
    check(&r, &m, c, ids, 1, &o, 1, &tot);
    attn_kv_cache_destroy(c);
    kv_model_free(&m);
    free(mem);
}

/* Everything observable about a cache: lengths, free blocks, and attention over it. */
static void snapshot(attn_kv_cache *c, uint32_t S, int64_t *lens, uint64_t *free_blocks)
{
    for (uint32_t s = 0; s < S; s++)
        lens[s] = attn_kv_cache_len(c, s);
    *free_blocks = attn_kv_cache_free_blocks(c);
}

static void test_operation_errors(void **state)
{
    (void)state;
    rng r = {11};
    attn_kv_cache_desc d;
    attn_kv_cache_desc_init(&d);
    d.kv_heads = 2, d.qk_dim = 8, d.v_dim = 4, d.max_seqs = 3, d.block_tokens = 16;
    d.capacity = 64, d.max_len = 40;
    attn_kv_cache *c = make_cache(&d);
    kv_model m;
    kv_model_init(&m, &d, 40);
    append_random(&r, c, &m, 0, 30);
    float k[8 * 2 * 40] = {0}, v[4 * 2 * 40] = {0};
    attn_strides ks = attn_strides_bshd(2, 1, 8), vs = attn_strides_bshd(2, 1, 4);
    int64_t lens[3], lens2[3];
    uint64_t free0, free1;
    snapshot(c, 3, lens, &free0);
#define CHECK(call, status, word)                                                                 \
    do {                                                                                          \
        attn_status st_ = (call);                                                                 \
        const char *w_ = (word);                                                                  \
        if (st_ != (status))                                                                      \
            fail_msg("%s: status %d, want %d", #call, st_, status);                               \
        if (w_ && !strstr(attn_kv_cache_last_error(c), w_))                                       \
            fail_msg("%s: message \"%s\" lacks \"%s\"", #call, attn_kv_cache_last_error(c), w_);  \
    } while (0)
    CHECK(attn_kv_cache_append(NULL, 0, 1, k, ks, v, vs), ATTN_ERR_NULL_POINTER, NULL);
    CHECK(attn_kv_cache_append(c, 0, 1, NULL, ks, v, vs), ATTN_ERR_NULL_POINTER, "k is NULL");
    CHECK(attn_kv_cache_append(c, 0, 1, k, ks, NULL, vs), ATTN_ERR_NULL_POINTER, "v is NULL");
    CHECK(attn_kv_cache_append(c, 3, 1, k, ks, v, vs), ATTN_ERR_LIMIT, "seq = 3");
    CHECK(attn_kv_cache_append(c, 0, 11, k, ks, v, vs), ATTN_ERR_LIMIT, "max_len = 40");
    CHECK(attn_kv_cache_append(c, 1, 1, k, ((attn_strides){0, -8, 16}), v, vs), ATTN_ERR_STRIDE,
          "k_strides.head = -8");
    CHECK(attn_kv_cache_append(c, 1, 1, k, ks, v, ((attn_strides){0, 4, -1})), ATTN_ERR_STRIDE,
          "v_strides.seq = -1");
    CHECK(attn_kv_cache_append(c, 1, 2, k, ((attn_strides){0, 8, INT64_MAX / 2}), v, vs),
          ATTN_ERR_OVERFLOW, "k_strides");
    CHECK(attn_kv_cache_append(c, 1, 40, k, ks, v, vs), ATTN_ERR_CAPACITY, "free blocks");
    CHECK(attn_kv_cache_truncate(NULL, 0, 0), ATTN_ERR_NULL_POINTER, NULL);
    CHECK(attn_kv_cache_truncate(c, 5, 0), ATTN_ERR_LIMIT, "seq = 5");
    CHECK(attn_kv_cache_truncate(c, 0, 31), ATTN_ERR_LIMIT, "len = 31");
    CHECK(attn_kv_cache_fork(NULL, 0, 1), ATTN_ERR_NULL_POINTER, NULL);
    CHECK(attn_kv_cache_fork(c, 3, 1), ATTN_ERR_LIMIT, "src = 3");
    CHECK(attn_kv_cache_fork(c, 0, 9), ATTN_ERR_LIMIT, "dst = 9");
    CHECK(attn_kv_cache_reorder(NULL, NULL, 0), ATTN_ERR_NULL_POINTER, NULL);
    CHECK(attn_kv_cache_reorder(c, NULL, 1), ATTN_ERR_NULL_POINTER, "from is NULL");
    CHECK(attn_kv_cache_reorder(c, ((const uint32_t[]){0, 0, 0, 0}), 4), ATTN_ERR_LIMIT, "n = 4");
    CHECK(attn_kv_cache_reorder(c, ((const uint32_t[]){1, 3}), 2), ATTN_ERR_LIMIT, "from[1] = 3");
#undef CHECK
    snapshot(c, 3, lens2, &free1);
    assert_memory_equal(lens, lens2, sizeof lens);
    assert_int_equal(free0, free1);
    assert_int_equal(attn_kv_cache_len(c, 3), -1);
    assert_int_equal(attn_kv_cache_len(NULL, 0), -1);
    assert_int_equal(attn_kv_cache_free_blocks(NULL), 0);
    assert_string_equal(attn_kv_cache_last_error(NULL), "");
    attn_kv_cache_reset(NULL);
    attn_kv_cache_destroy(NULL);
    /* the contents too: attention over sequence 0 is still the model's */
    kv_totals tot = {0};
    uint32_t ids[1] = {0};
    kv_call o = {2, 1, -1, -1, ATTN_Q_OFFSET_DEFAULT, 0, 0, 0, 0, 0, 2, 1, 0};
    check(&r, &m, c, ids, 1, &o, 0, &tot);
    /* a success clears the message */
    assert_int_equal(attn_kv_cache_append(c, 2, 0, NULL, ks, NULL, vs), ATTN_OK);
    assert_string_equal(attn_kv_cache_last_error(c), "");
    kv_model_free(&m);
    attn_kv_cache_destroy(c);
}

static void test_attention_errors(void **state)
{
    (void)state;
    rng r = {13};
    attn_kv_cache_desc d;
    attn_kv_cache_desc_init(&d);
    d.kv_heads = 2, d.qk_dim = 8, d.v_dim = 4, d.max_seqs = 3, d.capacity = 300;
    attn_kv_cache *c = make_cache(&d);
    kv_model m;
    kv_model_init(&m, &d, 300);
    append_random(&r, c, &m, 0, 20);
    append_random(&r, c, &m, 1, 7);
    attn_desc ad;
    attn_desc_init(&ad);
    ad.q_heads = 4, ad.kv_heads = 2, ad.qk_dim = 8, ad.v_dim = 4, ad.threads = 2;
    attn_ctx *ctx;
    assert_int_equal(attn_create(&ad, &ctx), ATTN_OK);
    float q[2 * 4 * 3 * 8] = {0}, out[2 * 4 * 3 * 4], w[2 * 4 * 3 * 20], kx[8];
    int32_t lens[2] = {1, 1};
    uint32_t ids[2] = {0, 1}, bad_ids[2] = {0, 3};
    attn_args a;
    attn_args_init(&a);
    a.batch = 2, a.q_len = 3, a.q = q, a.q_strides = attn_strides_bhsd(4, 3, 8);
    a.out = out, a.out_strides = attn_strides_bhsd(4, 3, 4);
    for (size_t i = 0; i < sizeof out / sizeof out[0]; i++)
        out[i] = 42.0f;
    attn_args t;
#define EXPECT(call, status, word)                                                                \
    do {                                                                                          \
        attn_status st_ = (call);                                                                 \
        if (st_ != (status))                                                                      \
            fail_msg("%s: status %d, want %d (%s)", #call, st_, status, attn_last_error(ctx));   \
        const char *w_ = (word);                                                                  \
        if (w_ && !strstr(attn_last_error(ctx), w_))                                              \
            fail_msg("%s: message \"%s\" lacks \"%s\"", #call, attn_last_error(ctx), w_);         \
    } while (0)
    EXPECT(attn_forward_cache(NULL, &a, c, ids), ATTN_ERR_NULL_POINTER, NULL);
    EXPECT(attn_forward_cache(ctx, NULL, c, ids), ATTN_ERR_NULL_POINTER, "args is NULL");
    EXPECT(attn_forward_cache(ctx, &a, NULL, ids), ATTN_ERR_NULL_POINTER, "cache is NULL");
    EXPECT(attn_forward_cache(ctx, &a, c, NULL), ATTN_ERR_NULL_POINTER, "seq_ids is NULL");
    EXPECT(attn_forward_cache(ctx, &a, c, bad_ids), ATTN_ERR_LIMIT, "seq_ids[1] = 3");
    t = a, t.kv_len = 19;
    EXPECT(attn_forward_cache(ctx, &t, c, ids), ATTN_ERR_KV_LENS, "kv_len = 19");
    t = a, t.k = kx;
    EXPECT(attn_forward_cache(ctx, &t, c, ids), ATTN_ERR_BAD_OPTION, "args->k must be NULL");
    t = a, t.v = kx;
    EXPECT(attn_forward_cache(ctx, &t, c, ids), ATTN_ERR_BAD_OPTION, "args->v must be NULL");
    t = a, t.kv_lens = lens;
    EXPECT(attn_forward_cache(ctx, &t, c, ids), ATTN_ERR_BAD_OPTION, "kv_lens must be NULL");
    t = a, t.batch = 0;
    EXPECT(attn_forward_cache(ctx, &t, c, ids), ATTN_ERR_ZERO_SIZE, "batch");
    t = a, t.q = NULL;
    EXPECT(attn_forward_cache(ctx, &t, c, ids), ATTN_ERR_NULL_POINTER, "args->q is NULL");
    t = a, t.weights_mode = ATTN_WEIGHTS_PER_HEAD, t.weights = w;
    t.weights_strides = attn_strides_bhsd(4, 3, 19); /* rows shorter than the 20 keys */
    EXPECT(attn_forward_cache(ctx, &t, c, ids), ATTN_ERR_STRIDE, "weights_strides");
    t = a, t.out = q; /* an output on an input */
    EXPECT(attn_forward_cache(ctx, &t, c, ids), ATTN_ERR_ALIAS, NULL);
    /* a cache of another shape or dtype */
    attn_kv_cache_desc d2 = d;
    d2.dtype = ATTN_KV_F16;
    attn_kv_cache *c16 = make_cache(&d2);
    EXPECT(attn_forward_cache(ctx, &a, c16, ids), ATTN_ERR_BAD_OPTION, "does not match");
    attn_kv_cache_destroy(c16);
    d2 = d, d2.v_dim = 5;
    attn_kv_cache *c5 = make_cache(&d2);
    EXPECT(attn_forward_cache(ctx, &a, c5, ids), ATTN_ERR_BAD_OPTION, "v_dim 5");
    attn_kv_cache_destroy(c5);
    for (size_t i = 0; i < sizeof out / sizeof out[0]; i++)
        assert_true(out[i] == 42.0f); /* nothing written by any failure */
    /* empty sequences: rows that see no key; all empty with weights: no key extent */
    uint32_t empty[2] = {2, 2};
    EXPECT(attn_forward_cache(ctx, &a, c, empty), ATTN_OK, NULL);
    for (size_t i = 0; i < sizeof out / sizeof out[0]; i++)
        assert_true(out[i] == 0.0f);
    t = a, t.weights_mode = ATTN_WEIGHTS_PER_HEAD, t.weights = w;
    EXPECT(attn_forward_cache(ctx, &t, c, empty), ATTN_ERR_ZERO_SIZE, "every chosen sequence");
    /* a context without the forward operation */
    attn_ctx *bwd;
    ad.ops = ATTN_OP_BACKWARD;
    assert_int_equal(attn_create(&ad, &bwd), ATTN_OK);
    assert_int_equal(attn_forward_cache(bwd, &a, c, ids), ATTN_ERR_BAD_OPTION);
    attn_destroy(bwd);
#undef EXPECT
    attn_destroy(ctx);
    kv_model_free(&m);
    attn_kv_cache_destroy(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_creation_errors),
        cmocka_unit_test(test_static_form),
        cmocka_unit_test(test_operation_errors),
        cmocka_unit_test(test_attention_errors),
        cmocka_unit_test(test_sharing_and_copy_on_write),
        cmocka_unit_test(test_thread_invariance),
        cmocka_unit_test(test_concurrent_readers),
        cmocka_unit_test(test_operations_against_model),
        cmocka_unit_test(test_random_configurations),
    };
    return cmocka_run_group_tests_name("kv_cache", tests, NULL, NULL);
}
