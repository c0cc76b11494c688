/*
 * libattn key/value cache: the keys and values of many sequences for decoding, stored in
 * float32, binary16 or bfloat16, and attention of new queries over it.
 *
 * Storage is a fixed pool of blocks of block_tokens tokens, allocated once at creation (or
 * placed in caller memory); a sequence is a list of blocks (its block table) and a length.
 * Nothing ever reallocates: an append the pool cannot hold fails with ATTN_ERR_CAPACITY and
 * changes nothing. Forking a sequence shares its blocks (every one, the partial last block
 * included) and copies only its block table; a block shared by several sequences is copied the
 * first time one of them appends into it (copy on write). So:
 *   append n tokens      O(n) converted writes, plus one block copy when the block written
 *                        into is shared
 *   truncate, fork       O(blocks of the sequences involved): no token data is moved
 *   reorder (beams)      O(blocks of the reordered sequences)
 * The block tables live in the cache's own memory; attn_kv_cache_size() gives all of it.
 *
 * Within a block, each kv head's keys are consecutive rows of qk_dim elements and its values
 * consecutive rows of v_dim elements, so attention reads a block's rows in place (float32) or
 * widens them in registers (16-bit), with no gathering copy.
 *
 * Threading: operations that change a cache (append, truncate, fork, reorder, reset) must not
 * run concurrently with any other use of the same cache. Any number of attn_forward_cache()
 * calls (each on its own context) may read one cache at the same time while nothing changes
 * it. Different caches are independent.
 *
 * Errors: attn_kv_cache_create*() and attn_kv_cache_size() leave their reason in
 * attn_last_error(NULL) of the calling thread; the other functions in
 * attn_kv_cache_last_error(cache). Every failing call changes nothing.
 */
#ifndef ATTN_ATTN_KV_CACHE_H
#define ATTN_ATTN_KV_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include <attn/attn.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Largest block_tokens accepted. */
#define ATTN_KV_CACHE_MAX_BLOCK 65536u
/* Largest number of blocks a cache may have (block ids are 32-bit). */
#define ATTN_KV_CACHE_MAX_BLOCKS 1073741824u

/*
 * The shape of a cache, fixed for its life. Start from attn_kv_cache_desc_init(); like
 * attn_desc, the struct only grows at its end and struct_size says which fields the caller knows.
 */
typedef struct attn_kv_cache_desc {
    size_t struct_size;     /* size of the caller's struct; set by attn_kv_cache_desc_init */
    uint32_t kv_heads;      /* key/value heads, >= 1 */
    uint32_t qk_dim;        /* key feature size, 1 .. ATTN_MAX_HEAD_DIM */
    uint32_t v_dim;         /* value feature size, 1 .. ATTN_MAX_HEAD_DIM */
    uint32_t dtype;         /* an attn_kv_dtype: how K and V are stored. Appends take float32
                               and round to nearest even (binary16 overflows to infinity; NaN
                               stays NaN) */
    uint32_t max_seqs;      /* sequence ids are 0 .. max_seqs - 1; >= 1 */
    uint32_t block_tokens;  /* tokens per block, 1 .. ATTN_KV_CACHE_MAX_BLOCK; 0 = 256 (one key
                               tile of the attention kernels: smaller blocks share at a finer
                               grain but cut the kernels' tiles shorter) */
    uint64_t capacity;      /* tokens of storage: ceil(capacity / block_tokens) blocks, >= 1.
                               A sequence of n tokens uses ceil(n / block_tokens) blocks, shared
                               blocks counted once */
    uint64_t max_len;       /* longest sequence, in tokens (sizes the block tables);
                               0 = capacity */
    const attn_allocator *allocator; /* NULL: the C library's aligned allocation */
} attn_kv_cache_desc;

/* Fills the defaults: kv_heads 1, qk_dim = v_dim = 64, ATTN_KV_F32, max_seqs 1, block_tokens
 * 0 (256), capacity 4096, max_len 0, default allocator. Writes exactly `size` bytes (see
 * attn_desc_init_size). Thread-safe. Call it through the macro. */
ATTN_EXPORT void attn_kv_cache_desc_init_size(attn_kv_cache_desc *desc, size_t size);
#define attn_kv_cache_desc_init(desc) attn_kv_cache_desc_init_size((desc), sizeof *(desc))

/* Opaque cache. */
typedef struct attn_kv_cache attn_kv_cache;

/*
 * Bytes attn_kv_cache_create_static() needs for `desc` (the cache, its block tables and its
 * blocks), or 0 if the descriptor is invalid (attn_last_error(NULL) says why). Thread-safe.
 */
ATTN_EXPORT size_t attn_kv_cache_size(const attn_kv_cache_desc *desc);

/*
 * Validates `desc` and creates an empty cache (every sequence of length 0), allocating
 * attn_kv_cache_size(desc) bytes once with desc->allocator.
 *   desc:      read during the call only.
 *   out_cache: receives the cache; set to NULL on failure.
 * Returns ATTN_OK, or: ATTN_ERR_NULL_POINTER (desc or out_cache NULL, an allocator with a NULL
 * function), ATTN_ERR_STRUCT_SIZE, ATTN_ERR_ZERO_SIZE (kv_heads, a dim, max_seqs or capacity
 * is 0), ATTN_ERR_LIMIT (a dim above ATTN_MAX_HEAD_DIM, block_tokens above
 * ATTN_KV_CACHE_MAX_BLOCK, more than ATTN_KV_CACHE_MAX_BLOCKS blocks, max_len above capacity),
 * ATTN_ERR_BAD_OPTION (dtype not an attn_kv_dtype), ATTN_ERR_OVERFLOW (the size does not fit
 * size_t), ATTN_ERR_NO_MEMORY. Thread-safe. The caller releases it with attn_kv_cache_destroy().
 */
ATTN_EXPORT attn_status attn_kv_cache_create(const attn_kv_cache_desc *desc,
                                             attn_kv_cache **out_cache);

/*
 * Like attn_kv_cache_create(), in caller memory: `memory` must be ATTN_WORKSPACE_ALIGN-aligned
 * and at least attn_kv_cache_size(desc) bytes, and stay valid and unused otherwise until the
 * cache is destroyed; desc->allocator is ignored. Never allocates. Returns the statuses of
 * attn_kv_cache_create() except ATTN_ERR_NO_MEMORY, plus ATTN_ERR_NULL_POINTER (memory NULL),
 * ATTN_ERR_WORKSPACE_ALIGN and ATTN_ERR_WORKSPACE_SIZE; every check comes before the memory is
 * written, so a failure leaves it unchanged.
 */
ATTN_EXPORT attn_status attn_kv_cache_create_static(const attn_kv_cache_desc *desc, void *memory,
                                                    size_t memory_size,
                                                    attn_kv_cache **out_cache);

/* Releases a cache made by attn_kv_cache_create() (for the static form, the caller keeps its
 * memory). NULL is ignored. Not concurrently with any other use of the cache. */
ATTN_EXPORT void attn_kv_cache_destroy(attn_kv_cache *cache);

/* The message of the last failed call on `cache` (an empty string after a success); "" for a
 * NULL cache. Owned by the cache, valid until its next call. Never NULL. */
ATTN_EXPORT const char *attn_kv_cache_last_error(const attn_kv_cache *cache);

/*
 * Appends n tokens to sequence `seq`: token t of kv head g gets the key k[g * k_strides.head +
 * t * k_strides.seq + 0 .. qk_dim) and the value v[g * v_strides.head + t * v_strides.seq +
 * 0 .. v_dim), converted to the cache's dtype (batch strides are not used). For a contiguous
 * [n, kv_heads, dim] array (one token after another, as a projection writes them) use
 * attn_strides_bshd(kv_heads, n, dim); for [kv_heads, n, dim], attn_strides_bhsd(kv_heads, n,
 * dim). n = 0 does nothing.
 * Returns ATTN_OK, or: ATTN_ERR_NULL_POINTER (cache, or k or v with n > 0), ATTN_ERR_LIMIT
 * (seq >= max_seqs, or the sequence would exceed max_len), ATTN_ERR_STRIDE (a negative
 * stride), ATTN_ERR_OVERFLOW (the strides address past the index range), ATTN_ERR_CAPACITY
 * (not enough free blocks: nothing appended). The inputs are only read.
 */
ATTN_EXPORT attn_status attn_kv_cache_append(attn_kv_cache *cache, uint32_t seq, uint32_t n,
                                             const float *k, attn_strides k_strides,
                                             const float *v, attn_strides v_strides);

/* The number of tokens in sequence `seq`, or -1 when cache is NULL or seq >= max_seqs. */
ATTN_EXPORT int64_t attn_kv_cache_len(const attn_kv_cache *cache, uint32_t seq);

/* Blocks not used by any sequence: an append of n tokens to a sequence of length L needs
 * ceil((L + n) / block_tokens) - ceil(L / block_tokens) of them, plus one when its last block
 * is partial and shared. 0 for a NULL cache. */
ATTN_EXPORT uint64_t attn_kv_cache_free_blocks(const attn_kv_cache *cache);

/*
 * Shortens sequence `seq` to its first `len` tokens (rollback of rejected speculative tokens);
 * blocks no longer used by any sequence return to the pool. Returns ATTN_OK, or
 * ATTN_ERR_NULL_POINTER, ATTN_ERR_LIMIT (seq >= max_seqs, or len above the sequence's length).
 */
ATTN_EXPORT attn_status attn_kv_cache_truncate(attn_kv_cache *cache, uint32_t seq, uint64_t len);

/*
 * Makes sequence `dst` a copy of sequence `src` (a shared prompt, a new beam): dst's previous
 * tokens are released and it shares every block of src; no token data is copied. src == dst
 * does nothing. Returns ATTN_OK, or ATTN_ERR_NULL_POINTER, ATTN_ERR_LIMIT (an id >= max_seqs).
 */
ATTN_EXPORT attn_status attn_kv_cache_fork(attn_kv_cache *cache, uint32_t src, uint32_t dst);

/*
 * Beam search's survivors: for i < n, sequence i becomes what sequence from[i] was before the
 * call (ids may repeat or be missing; a sequence not chosen by anyone is released). Sequences
 * n .. max_seqs - 1 are unchanged. Shares blocks, copies block tables only.
 * Returns ATTN_OK, or ATTN_ERR_NULL_POINTER (cache, or from with n > 0), ATTN_ERR_LIMIT (n >
 * max_seqs, or from[i] >= max_seqs).
 */
ATTN_EXPORT attn_status attn_kv_cache_reorder(attn_kv_cache *cache, const uint32_t *from,
                                              uint32_t n);

/* Empties every sequence. NULL is ignored. */
ATTN_EXPORT void attn_kv_cache_reset(attn_kv_cache *cache);

/*
 * Attention of new queries over sequences of a cache: attn_forward() with the keys and values
 * of sequence seq_ids[b] in place of k and v for batch entry b.
 *   ctx:     a context whose kv_heads, qk_dim and v_dim equal the cache's and whose
 *            desc.kv_dtype is the cache's dtype (it reserves the 16-bit conversion room).
 *   args:    as for attn_forward(), except: k, v and kv_lens must be NULL (the cache supplies
 *            them: batch entry b sees the attn_kv_cache_len(cache, seq_ids[b]) keys of its
 *            sequence); kv_len is the key extent of mask, bias and weights and must be at
 *            least the longest chosen sequence, or 0 to mean exactly that; q_offset, when left
 *            at ATTN_Q_OFFSET_DEFAULT, is per sequence len - q_len (the queries are the
 *            sequence's last q_len tokens, appended before the call: decoding, chunked prefill,
 *            speculative verification), and otherwise applies to every sequence as given.
 *            Every other option (causal, window, mask, bias, outputs, dropout) is attn_forward's.
 *   cache:   read only; must not change during the call.
 *   seq_ids: [args->batch] sequence ids (repeats allowed).
 * A sequence of length 0 gives rows that see no key (desc.masked_rows). Results are bitwise
 * identical for any desc.threads and equal to attn_forward() on the cache's contents laid out
 * as tensors (the same tiles are read in the same order when block_tokens is a multiple of 256).
 * Returns attn_forward()'s statuses, plus ATTN_ERR_NULL_POINTER (cache or seq_ids NULL),
 * ATTN_ERR_BAD_OPTION (k, v or kv_lens given; the cache's shape or dtype differs from the
 * context's), ATTN_ERR_LIMIT (a seq id >= max_seqs), ATTN_ERR_ZERO_SIZE (batch or q_len 0, or
 * every chosen sequence empty with kv_len 0 and an output that needs a key extent),
 * ATTN_ERR_KV_LENS (kv_len below a chosen sequence's length). Nothing is written on failure.
 */
ATTN_EXPORT attn_status attn_forward_cache(attn_ctx *ctx, const attn_args *args,
                                           const attn_kv_cache *cache, const uint32_t *seq_ids);

#ifdef __cplusplus
}
#endif

#endif
