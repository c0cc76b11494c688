/* The K/V cache object: creation, sizes and the operations that change it (see kv_cache.h). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/kv_cache.h"
#include "core/abi.h"
#include "core/arena.h"
#include "core/checked.h"
#include "core/context.h"
#include "core/tensor.h"
#include "dispatch/dispatch.h"

#define DEFAULT_BLOCK_TOKENS 256u

static const attn_kv_cache_desc cache_desc_defaults = {
    .struct_size = sizeof(attn_kv_cache_desc),
    .kv_heads = 1,
    .qk_dim = 64,
    .v_dim = 64,
    .dtype = ATTN_KV_F32,
    .max_seqs = 1,
    .block_tokens = 0,
    .capacity = 4096,
    .max_len = 0,
    .allocator = NULL,
};

static const size_t cache_desc_sizes[] = {sizeof(attn_kv_cache_desc)};

void attn_kv_cache_desc_init_size(attn_kv_cache_desc *desc, size_t size)
{
    attn_abi_init(desc, size, &cache_desc_defaults, sizeof cache_desc_defaults);
}

/* Records a failure of an operation on `c` and returns `status`. */
static attn_status cache_fail(attn_kv_cache *c, attn_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static attn_status cache_fail(attn_kv_cache *c, attn_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->error, sizeof c->error, fmt, ap);
    va_end(ap);
    return status;
}

/* ---- the descriptor and the layout --------------------------------------------------------- */

/* The sizes of the parts, in bytes, all checked against overflow (int64, then size_t). */
typedef struct cache_geometry {
    int64_t block_tokens, nblocks, table_len, esize, block_bytes, v_offset;
    int64_t total;
} cache_geometry;

/* Adds an aligned part of count * size bytes to *total; false on overflow. */
static int add_part(int64_t *total, int64_t count, int64_t size)
{
    int64_t bytes;
    if (!attn_mul_i64(count, size, &bytes) || bytes > INT64_MAX - ATTN_WORKSPACE_ALIGN)
        return 0;
    bytes = (bytes + ATTN_WORKSPACE_ALIGN - 1) & ~(int64_t)(ATTN_WORKSPACE_ALIGN - 1);
    return attn_add_i64(*total, bytes, total);
}

/* Validates a caller's descriptor into *d and computes the geometry. Messages go to
 * attn_last_error(NULL). */
static attn_status resolve(const attn_kv_cache_desc *desc, attn_kv_cache_desc *d, cache_geometry *g)
{
    if (!desc)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "desc is NULL");
    if (!attn_abi_size_known(desc->struct_size, cache_desc_sizes, 1))
        return attn_fail(NULL, ATTN_ERR_STRUCT_SIZE,
                         "desc->struct_size = %zu is not the size of an attn_kv_cache_desc (%zu): "
                         "initialise with attn_kv_cache_desc_init",
                         desc->struct_size, sizeof(attn_kv_cache_desc));
    attn_abi_load(d, &cache_desc_defaults, desc, desc->struct_size, sizeof *d);
    if (d->allocator && (!d->allocator->alloc || !d->allocator->free))
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "desc->allocator has a NULL function");
    if (!d->kv_heads || !d->qk_dim || !d->v_dim || !d->max_seqs || !d->capacity)
        return attn_fail(NULL, ATTN_ERR_ZERO_SIZE, "desc->%s is 0",
                         !d->kv_heads ? "kv_heads" : !d->qk_dim ? "qk_dim" : !d->v_dim ? "v_dim"
                         : !d->max_seqs ? "max_seqs" : "capacity");
    if (d->qk_dim > ATTN_MAX_HEAD_DIM || d->v_dim > ATTN_MAX_HEAD_DIM)
        return attn_fail(NULL, ATTN_ERR_LIMIT, "desc->%s = %u exceeds ATTN_MAX_HEAD_DIM = %u",
                         d->qk_dim > ATTN_MAX_HEAD_DIM ? "qk_dim" : "v_dim",
                         d->qk_dim > ATTN_MAX_HEAD_DIM ? d->qk_dim : d->v_dim, ATTN_MAX_HEAD_DIM);
    if (d->dtype != ATTN_KV_F32 && d->dtype != ATTN_KV_F16 && d->dtype != ATTN_KV_BF16)
        return attn_fail(NULL, ATTN_ERR_BAD_OPTION, "desc->dtype = %u is not an attn_kv_dtype",
                         d->dtype);
    if (d->block_tokens > ATTN_KV_CACHE_MAX_BLOCK)
        return attn_fail(NULL, ATTN_ERR_LIMIT,
                         "desc->block_tokens = %u exceeds ATTN_KV_CACHE_MAX_BLOCK = %u",
                         d->block_tokens, ATTN_KV_CACHE_MAX_BLOCK);
    if (!d->block_tokens)
        d->block_tokens = DEFAULT_BLOCK_TOKENS;
    uint64_t nblocks = d->capacity / d->block_tokens + (d->capacity % d->block_tokens != 0);
    if (nblocks > ATTN_KV_CACHE_MAX_BLOCKS)
        return attn_fail(NULL, ATTN_ERR_LIMIT,
                         "desc->capacity = %llu tokens makes %llu blocks of %u, above "
                         "ATTN_KV_CACHE_MAX_BLOCKS = %u",
                         (unsigned long long)d->capacity, (unsigned long long)nblocks,
                         d->block_tokens, ATTN_KV_CACHE_MAX_BLOCKS);
    if (d->max_len > d->capacity)
        return attn_fail(NULL, ATTN_ERR_LIMIT, "desc->max_len = %llu exceeds capacity = %llu",
                         (unsigned long long)d->max_len, (unsigned long long)d->capacity);
    if (!d->max_len)
        d->max_len = d->capacity;

    g->block_tokens = d->block_tokens;
    g->nblocks = (int64_t)nblocks;
    g->table_len = (int64_t)(d->max_len / d->block_tokens + (d->max_len % d->block_tokens != 0));
    g->esize = d->dtype == ATTN_KV_F32 ? 4 : 2;
    int64_t S = d->max_seqs, k_bytes = 0, v_bytes = 0, total = 0;
    int ok = attn_mul_i64((int64_t)d->kv_heads * g->block_tokens, (int64_t)d->qk_dim * g->esize, &k_bytes) &&
             attn_mul_i64((int64_t)d->kv_heads * g->block_tokens, (int64_t)d->v_dim * g->esize, &v_bytes);
    g->v_offset = k_bytes;
    ok = ok && add_part(&total, 1, (int64_t)sizeof(attn_kv_cache)) && add_part(&total, S, 4) &&
         add_part(&total, 2 * S, 8) && add_part(&total, 2 * S, g->table_len * 4) &&
         add_part(&total, 2 * S, 4) && add_part(&total, S, 4) && add_part(&total, g->nblocks, 4) &&
         add_part(&total, g->nblocks, 4);
    int64_t block_bytes = 0;
    ok = ok && attn_add_i64(k_bytes, v_bytes, &block_bytes) &&
         block_bytes <= INT64_MAX - ATTN_WORKSPACE_ALIGN;
    if (ok) {
        block_bytes = (block_bytes + ATTN_WORKSPACE_ALIGN - 1) & ~(int64_t)(ATTN_WORKSPACE_ALIGN - 1);
        ok = add_part(&total, g->nblocks, block_bytes);
    }
    if (!ok || (uint64_t)total > (uint64_t)SIZE_MAX || total > PTRDIFF_MAX)
        return attn_fail(NULL, ATTN_ERR_OVERFLOW,
                         "the cache's size (%llu blocks of %u tokens, %u kv heads, dims %u + %u, "
                         "%u sequences) does not fit the address space",
                         (unsigned long long)nblocks, d->block_tokens, d->kv_heads, d->qk_dim,
                         d->v_dim, d->max_seqs);
    g->block_bytes = block_bytes;
    g->total = total;
    return ATTN_OK;
}

size_t attn_kv_cache_size(const attn_kv_cache_desc *desc)
{
    attn_kv_cache_desc d;
    cache_geometry g;
    return resolve(desc, &d, &g) == ATTN_OK ? (size_t)g.total : 0;
}

/* Every sequence empty: rows 0 .. S-1 in use, the others free, every block free (block 0 on
 * top of the stack). */
static void reset_state(attn_kv_cache *c)
{
    int64_t S = c->desc.max_seqs;
    for (int64_t s = 0; s < S; s++)
        c->slot[s] = (uint32_t)s;
    for (int64_t r = 0; r < 2 * S; r++)
        c->row_len[r] = 0;
    c->nfree_rows = S;
    for (int64_t r = 0; r < S; r++)
        c->free_rows[r] = (uint32_t)(2 * S - 1 - r);
    for (int64_t b = 0; b < c->nblocks; b++) {
        c->refs[b] = 0;
        c->free_blocks[b] = (int32_t)(c->nblocks - 1 - b);
    }
    c->nfree = c->nblocks;
}

static attn_kv_cache *lay_out(void *memory, const attn_kv_cache_desc *d, const cache_geometry *g)
{
    attn_arena a = {memory, 0};
    int64_t S = d->max_seqs;
    attn_kv_cache *c = attn_arena_take(&a, sizeof *c);
    memset(c, 0, sizeof *c);
    c->desc = *d;
    c->desc.allocator = NULL;
    c->kernels = attn_dispatch_kernels();
    c->elem_dtype = attn_kv_tensor_dtype(d->dtype);
    c->narrow_kind = d->dtype == ATTN_KV_F16 ? ATTN_WIDEN_F16 : d->dtype == ATTN_KV_BF16 ? ATTN_WIDEN_BF16 : 0;
    c->esize = g->esize;
    c->block_tokens = g->block_tokens;
    c->nblocks = g->nblocks;
    c->table_len = g->table_len;
    c->block_bytes = g->block_bytes;
    c->v_offset = g->v_offset;
    c->slot = attn_arena_take(&a, (size_t)S * 4);
    c->row_len = attn_arena_take(&a, (size_t)(2 * S) * 8);
    c->rows = attn_arena_take(&a, (size_t)(2 * S) * (size_t)g->table_len * 4);
    c->free_rows = attn_arena_take(&a, (size_t)(2 * S) * 4);
    c->staged = attn_arena_take(&a, (size_t)S * 4);
    c->refs = attn_arena_take(&a, (size_t)g->nblocks * 4);
    c->free_blocks = attn_arena_take(&a, (size_t)g->nblocks * 4);
    c->blocks = attn_arena_take(&a, (size_t)g->nblocks * (size_t)g->block_bytes);
    reset_state(c);
    return c;
}

static void *default_alloc(size_t size, size_t alignment)
{
    return aligned_alloc(alignment, (size + alignment - 1) & ~(alignment - 1));
}

static attn_status create(const attn_kv_cache_desc *desc, int is_static, void *memory,
                          size_t memory_size, attn_kv_cache **out)
{
    if (!out)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "out_cache is NULL");
    *out = NULL;
    if (!desc)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "desc is NULL");
    if (is_static && !memory)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "memory is NULL");
    attn_kv_cache_desc d;
    cache_geometry g;
    attn_status st = resolve(desc, &d, &g);
    if (st != ATTN_OK)
        return st;
    if (is_static) {
        if ((uintptr_t)memory % ATTN_WORKSPACE_ALIGN != 0)
            return attn_fail(NULL, ATTN_ERR_WORKSPACE_ALIGN,
                             "memory %p is not aligned to ATTN_WORKSPACE_ALIGN = %u bytes", memory,
                             ATTN_WORKSPACE_ALIGN);
        if (memory_size < (size_t)g.total)
            return attn_fail(NULL, ATTN_ERR_WORKSPACE_SIZE,
                             "memory_size = %zu is below attn_kv_cache_size(desc) = %zu",
                             memory_size, (size_t)g.total);
    } else {
        memory = d.allocator ? d.allocator->alloc(d.allocator->user, (size_t)g.total, ATTN_WORKSPACE_ALIGN)
                             : default_alloc((size_t)g.total, ATTN_WORKSPACE_ALIGN);
        if (!memory)
            return attn_fail(NULL, ATTN_ERR_NO_MEMORY, "allocating the %zu-byte cache failed",
                             (size_t)g.total);
    }
    attn_kv_cache *c = lay_out(memory, &d, &g);
    c->memory = memory;
    c->owns_memory = !is_static;
    if (!is_static && d.allocator)
        c->allocator = *d.allocator;
    *out = c;
    return ATTN_OK;
}

attn_status attn_kv_cache_create(const attn_kv_cache_desc *desc, attn_kv_cache **out_cache)
{
    return create(desc, 0, NULL, 0, out_cache);
}

attn_status attn_kv_cache_create_static(const attn_kv_cache_desc *desc, void *memory,
                                        size_t memory_size, attn_kv_cache **out_cache)
{
    return create(desc, 1, memory, memory_size, out_cache);
}

void attn_kv_cache_destroy(attn_kv_cache *cache)
{
    if (!cache || !cache->owns_memory)
        return;
    void *memory = cache->memory;
    if (cache->allocator.free)
        cache->allocator.free(cache->allocator.user, memory);
    else
        free(memory);
}

const char *attn_kv_cache_last_error(const attn_kv_cache *cache)
{
    return cache ? cache->error : "";
}

/* ---- blocks and tables ---------------------------------------------------------------------- */

static int64_t blocks_for(const attn_kv_cache *c, uint64_t len)
{
    return (int64_t)(len / (uint64_t)c->block_tokens + (len % (uint64_t)c->block_tokens != 0));
}

static int32_t take_block(attn_kv_cache *c)
{
    int32_t b = c->free_blocks[--c->nfree];
    c->refs[b] = 1;
    return b;
}

static void release_block(attn_kv_cache *c, int32_t b)
{
    if (--c->refs[b] == 0)
        c->free_blocks[c->nfree++] = b;
}

/* Releases the blocks of table row `row` from entry `from` on, and sets its length to len. */
static void release_tail(attn_kv_cache *c, uint32_t row, int64_t from, uint64_t len)
{
    int32_t *table = c->rows + (int64_t)row * c->table_len;
    int64_t used = blocks_for(c, c->row_len[row]);
    for (int64_t i = from; i < used; i++)
        release_block(c, table[i]);
    c->row_len[row] = len;
}

static attn_status check_seq(attn_kv_cache *c, const char *what, uint32_t seq)
{
    if (seq >= c->desc.max_seqs)
        return cache_fail(c, ATTN_ERR_LIMIT, "%s = %u is outside [0, max_seqs = %u)", what, seq,
                          c->desc.max_seqs);
    return ATTN_OK;
}

/* ---- operations ----------------------------------------------------------------------------- */

/* Converts `count` rows of `width` floats (source rows `src_ld` apart) into consecutive rows of
 * the cache's element type at dst. */
static void store_rows(const attn_kv_cache *c, char *dst, const float *src, int64_t src_ld,
                       int64_t count, int64_t width)
{
    for (int64_t t = 0; t < count; t++) {
        const float *row = src + t * src_ld;
        char *out = dst + t * width * c->esize;
        if (c->narrow_kind)
            c->kernels->narrow((uint16_t *)(void *)out, row, (size_t)width, c->narrow_kind);
        else
            memcpy(out, row, (size_t)width * sizeof(float));
    }
}

/* Validates one appended tensor's strides: non-negative and every offset within int64/ptrdiff. */
static attn_status check_input(attn_kv_cache *c, const char *name, attn_strides s, int64_t n,
                               int64_t width)
{
    if (s.head < 0 || s.seq < 0)
        return cache_fail(c, ATTN_ERR_STRIDE, "%s_strides.%s = %lld is negative", name,
                          s.head < 0 ? "head" : "seq", (long long)(s.head < 0 ? s.head : s.seq));
    int64_t a, b, sum;
    if (!attn_mul_i64((int64_t)c->desc.kv_heads - 1, s.head, &a) || !attn_mul_i64(n - 1, s.seq, &b) ||
        !attn_add_i64(a, b, &sum) || !attn_add_i64(sum, width, &sum) ||
        sum > PTRDIFF_MAX / (int64_t)sizeof(float))
        return cache_fail(c, ATTN_ERR_OVERFLOW,
                          "%s_strides {head %lld, seq %lld} with %lld tokens address past the "
                          "index range",
                          name, (long long)s.head, (long long)s.seq, (long long)n);
    return ATTN_OK;
}

attn_status attn_kv_cache_append(attn_kv_cache *c, uint32_t seq, uint32_t n, const float *k,
                                 attn_strides k_strides, const float *v, attn_strides v_strides)
{
    if (!c)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "cache is NULL");
    attn_status st;
    if (n > 0 && (!k || !v))
        return cache_fail(c, ATTN_ERR_NULL_POINTER, "%s is NULL", !k ? "k" : "v");
    if ((st = check_seq(c, "seq", seq)) != ATTN_OK)
        return st;
    uint32_t row = c->slot[seq];
    uint64_t len = c->row_len[row];
    if ((uint64_t)n > c->desc.max_len - len)
        return cache_fail(c, ATTN_ERR_LIMIT,
                          "appending %u tokens to sequence %u of %llu tokens exceeds max_len = %llu",
                          n, seq, (unsigned long long)len, (unsigned long long)c->desc.max_len);
    if (n == 0) {
        c->error[0] = '\0';
        return ATTN_OK;
    }
    if ((st = check_input(c, "k", k_strides, n, c->desc.qk_dim)) != ATTN_OK ||
        (st = check_input(c, "v", v_strides, n, c->desc.v_dim)) != ATTN_OK)
        return st;
    int32_t *table = c->rows + (int64_t)row * c->table_len;
    int64_t B = c->block_tokens, have = blocks_for(c, len), fill = (int64_t)(len % (uint64_t)B);
    int shared = fill != 0 && c->refs[table[have - 1]] > 1;
    int64_t need = blocks_for(c, len + n) - have + shared;
    if (need > c->nfree)
        return cache_fail(c, ATTN_ERR_CAPACITY,
                          "appending %u tokens to sequence %u needs %lld free blocks of %lld "
                          "tokens; %lld are free",
                          n, seq, (long long)need, (long long)B, (long long)c->nfree);
    if (shared) { /* copy on write: this sequence gets its own copy of the partial block */
        int32_t old = table[have - 1], fresh = take_block(c);
        memcpy(c->blocks + fresh * c->block_bytes, c->blocks + old * c->block_bytes,
               (size_t)c->block_bytes);
        release_block(c, old);
        table[have - 1] = fresh;
    }
    int64_t Hkv = c->desc.kv_heads, Dk = c->desc.qk_dim, Dv = c->desc.v_dim;
    for (int64_t t = 0; t < n;) { /* one block's worth of tokens at a time */
        uint64_t pos = len + (uint64_t)t;
        int64_t at = (int64_t)(pos % (uint64_t)B), entry = (int64_t)(pos / (uint64_t)B);
        if (at == 0)
            table[entry] = take_block(c);
        int64_t count = B - at < n - t ? B - at : n - t;
        char *block = c->blocks + table[entry] * c->block_bytes;
        for (int64_t g = 0; g < Hkv; g++) {
            store_rows(c, block + (g * B + at) * Dk * c->esize,
                       k + g * k_strides.head + t * k_strides.seq, k_strides.seq, count, Dk);
            store_rows(c, block + c->v_offset + (g * B + at) * Dv * c->esize,
                       v + g * v_strides.head + t * v_strides.seq, v_strides.seq, count, Dv);
        }
        t += count;
    }
    c->row_len[row] = len + n;
    c->error[0] = '\0';
    return ATTN_OK;
}

int64_t attn_kv_cache_len(const attn_kv_cache *c, uint32_t seq)
{
    if (!c || seq >= c->desc.max_seqs)
        return -1;
    return (int64_t)attn_kv_cache_seq_len(c, seq);
}

uint64_t attn_kv_cache_free_blocks(const attn_kv_cache *c)
{
    return c ? (uint64_t)c->nfree : 0;
}

attn_status attn_kv_cache_truncate(attn_kv_cache *c, uint32_t seq, uint64_t len)
{
    if (!c)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "cache is NULL");
    attn_status st = check_seq(c, "seq", seq);
    if (st != ATTN_OK)
        return st;
    uint32_t row = c->slot[seq];
    if (len > c->row_len[row])
        return cache_fail(c, ATTN_ERR_LIMIT,
                          "len = %llu exceeds the %llu tokens of sequence %u",
                          (unsigned long long)len, (unsigned long long)c->row_len[row], seq);
    release_tail(c, row, blocks_for(c, len), len);
    c->error[0] = '\0';
    return ATTN_OK;
}

/* Row `dst_row` becomes a copy of row `src_row`'s table, sharing its blocks. */
static void share_row(attn_kv_cache *c, uint32_t dst_row, uint32_t src_row)
{
    const int32_t *from = c->rows + (int64_t)src_row * c->table_len;
    int32_t *to = c->rows + (int64_t)dst_row * c->table_len;
    int64_t used = blocks_for(c, c->row_len[src_row]);
    for (int64_t i = 0; i < used; i++) {
        to[i] = from[i];
        c->refs[from[i]]++;
    }
    c->row_len[dst_row] = c->row_len[src_row];
}

attn_status attn_kv_cache_fork(attn_kv_cache *c, uint32_t src, uint32_t dst)
{
    if (!c)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "cache is NULL");
    attn_status st;
    if ((st = check_seq(c, "src", src)) != ATTN_OK || (st = check_seq(c, "dst", dst)) != ATTN_OK)
        return st;
    if (src != dst) {
        release_tail(c, c->slot[dst], 0, 0);
        share_row(c, c->slot[dst], c->slot[src]);
    }
    c->error[0] = '\0';
    return ATTN_OK;
}

attn_status attn_kv_cache_reorder(attn_kv_cache *c, const uint32_t *from, uint32_t n)
{
    if (!c)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "cache is NULL");
    if (n > 0 && !from)
        return cache_fail(c, ATTN_ERR_NULL_POINTER, "from is NULL");
    if (n > c->desc.max_seqs)
        return cache_fail(c, ATTN_ERR_LIMIT, "n = %u exceeds max_seqs = %u", n, c->desc.max_seqs);
    for (uint32_t i = 0; i < n; i++)
        if (from[i] >= c->desc.max_seqs)
            return cache_fail(c, ATTN_ERR_LIMIT, "from[%u] = %u is outside [0, max_seqs = %u)", i,
                              from[i], c->desc.max_seqs);
    /* New tables first (at most max_seqs rows are in use, so n rows are free), then the old
     * ones released: a block moving from one sequence to another never reaches zero refs. */
    for (uint32_t i = 0; i < n; i++) {
        uint32_t fresh = c->free_rows[--c->nfree_rows];
        share_row(c, fresh, c->slot[from[i]]);
        c->staged[i] = fresh;
    }
    for (uint32_t i = 0; i < n; i++) {
        uint32_t old = c->slot[i];
        release_tail(c, old, 0, 0);
        c->free_rows[c->nfree_rows++] = old;
        c->slot[i] = c->staged[i];
    }
    c->error[0] = '\0';
    return ATTN_OK;
}

void attn_kv_cache_reset(attn_kv_cache *c)
{
    if (!c)
        return;
    reset_state(c);
    c->error[0] = '\0';
}
