/*
 * The K/V cache object (attn_kv_cache.h): a pool of fixed-size blocks with reference counts, a
 * free-block stack, and per sequence a block table and a length. Tables are rows of a pool of
 * twice max_seqs rows, and each sequence names its row (slot[]), so that a reorder can build
 * every new table before releasing any old one, copying only the tables involved.
 *
 * Block b holds, for each kv head g, block_tokens key rows of qk_dim elements and then, after
 * all the keys, block_tokens value rows of v_dim elements per head:
 *   key row (g, t):   blocks + b * block_bytes + (g * block_tokens + t) * qk_dim * esize
 *   value row (g, t): blocks + b * block_bytes + v_offset + (g * block_tokens + t) * v_dim * esize
 */
#ifndef ATTN_CACHE_KV_CACHE_H
#define ATTN_CACHE_KV_CACHE_H

#include <stdint.h>

#include <attn/attn_kv_cache.h>

#include "kernels/softmax.h"

struct attn_kv_cache {
    attn_kv_cache_desc desc;  /* resolved: block_tokens and max_len set, allocator NULL */
    attn_allocator allocator;
    int owns_memory;
    void *memory;             /* the single block holding everything below */
    const attn_kernels *kernels;
    uint32_t elem_dtype;      /* an attn_dtype */
    uint32_t narrow_kind;     /* ATTN_WIDEN_F16 / _BF16, 0 for float storage */
    int64_t esize;            /* bytes per element */
    int64_t block_tokens, nblocks;
    int64_t table_len;        /* entries per table: ceil(max_len / block_tokens) */
    int64_t block_bytes, v_offset;
    char *blocks;
    uint32_t *refs;           /* [nblocks]: sequences using each block */
    int32_t *free_blocks;     /* [nblocks]: stack of unused block ids */
    int64_t nfree;
    uint32_t *slot;           /* [max_seqs]: the table row of each sequence */
    uint64_t *row_len;        /* [2 * max_seqs]: tokens of the sequence a row belongs to */
    int32_t *rows;            /* [2 * max_seqs][table_len]: block ids */
    uint32_t *free_rows;      /* [2 * max_seqs]: stack of unused rows */
    int64_t nfree_rows;
    uint32_t *staged;         /* [max_seqs]: a reorder's new rows */
    char error[256];
};

/* The block table and length of sequence `seq` (valid id). */
static inline const int32_t *attn_kv_cache_table(const attn_kv_cache *c, uint32_t seq)
{
    return c->rows + (int64_t)c->slot[seq] * c->table_len;
}

static inline uint64_t attn_kv_cache_seq_len(const attn_kv_cache *c, uint32_t seq)
{
    return c->row_len[c->slot[seq]];
}

#endif
