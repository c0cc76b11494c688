/*
 * Key/value tile sources: the one seam through which the engine reads K and V. A source hands
 * out the keys (or values) [j0, j0 + n) of one (batch, kv head) as rows of floats with a leading
 * dimension. Plain strided tensors return a pointer into the caller's memory; a paged cache or
 * f16/bf16 storage is a new source that gathers or converts the tile into `convert` (room for
 * ATTN_TILE_K rows of the widest head dim), with no change to the engine's loops.
 */
#ifndef ATTN_ENGINE_KV_SOURCE_H
#define ATTN_ENGINE_KV_SOURCE_H

#include <stdint.h>

#include "core/context.h"
#include "core/tensor.h"
#include "engine/tiles.h"
#include "kernels/softmax.h"

enum { ATTN_KV_KEYS = 0, ATTN_KV_VALUES = 1 };

typedef struct attn_kv_tile {
    const void *data; /* row 0 of the tile */
    int ld;           /* elements between rows */
    uint32_t dtype;   /* element type of data (ATTN_DTYPE_F32 for everything the engine reads today) */
} attn_kv_tile;

typedef struct attn_kv_source attn_kv_source;
struct attn_kv_source {
    /* raw = 1: the tile as stored (16-bit elements included), for kernels that widen in
     * registers; raw = 0: as floats, converted into `convert` when needed. */
    attn_kv_tile (*tile)(const attn_kv_source *src, int which, int64_t b, int64_t g, int64_t j0,
                         int64_t n, float *convert, int raw);
    /* The strided-tensor source's state; other sources keep theirs beside it. */
    const char *base[2];        /* K and V base pointers, as bytes */
    attn_strides strides[2];
    int ld[2];
    uint32_t dtype[2];
    int64_t width[2];           /* qk_dim, v_dim */
    int64_t convert_stride;     /* floats between the key and the value tile in `convert` */
    const attn_kernels *kernels;
    /* A paged source's tiles may not cross a multiple of `block` keys (0: no limit); the engine
     * cuts its key tiles there (attn_kv_tile_end). */
    int64_t block;
    /* Keys of batch entry b when the source knows them (a cache's sequence lengths); NULL: the
     * problem's kv_lens or kv_len. */
    int64_t (*keys)(const attn_kv_source *src, int64_t b);
};

/* End of the key tile that starts at j0, for keys before `hi`: at most ATTN_TILE_K keys, and
 * never across a block boundary of a paged source. Every loop over key tiles uses it, so the
 * online pass and the weights see the same tiles. */
static inline int64_t attn_kv_tile_end(const attn_kv_source *src, int64_t j0, int64_t hi)
{
    int64_t end = hi - j0 < ATTN_TILE_K ? hi : j0 + ATTN_TILE_K;
    if (src->block) {
        int64_t edge = (j0 / src->block + 1) * src->block;
        end = end < edge ? end : edge;
    }
    return end;
}

/* Widens n rows of 16-bit elements (rows `ld` elements apart, `width` wide) into consecutive
 * float rows at dst, and returns the float tile. For sources whose storage is 16-bit. */
attn_kv_tile attn_kv_widen_rows(const attn_kv_source *src, const void *rows, int64_t ld,
                                uint32_t dtype, int64_t n, int64_t width, float *dst);

/* A source reading K and V through their strides (already validated): in place when they are
 * float, widened tile by tile into the thread's convert buffer when they are 16-bit. */
void attn_kv_source_strided(attn_kv_source *src, const attn_ctx *ctx, const attn_tensor *k,
                            const attn_tensor *v);

static inline attn_kv_tile attn_kv_get(const attn_kv_source *src, int which, int64_t b,
                                       int64_t g, int64_t j0, int64_t n, float *convert)
{
    return src->tile(src, which, b, g, j0, n, convert, 0);
}

static inline attn_kv_tile attn_kv_get_raw(const attn_kv_source *src, int which, int64_t b,
                                           int64_t g, int64_t j0, int64_t n)
{
    return src->tile(src, which, b, g, j0, n, NULL, 1);
}

/* The kernels' element code of a tile: 0 for float, ATTN_WIDEN_F16 / ATTN_WIDEN_BF16. */
static inline uint32_t attn_kv_tile_kind(const attn_kv_tile *t)
{
    return t->dtype == ATTN_DTYPE_F16 ? ATTN_WIDEN_F16 : t->dtype == ATTN_DTYPE_BF16 ? ATTN_WIDEN_BF16 : 0;
}

#endif
