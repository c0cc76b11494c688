/*
 * Tile sizes of the engine, in one place. A block task owns ATTN_TILE_Q query rows and streams
 * the keys ATTN_TILE_K at a time. Measured on a Zen 5 core with OpenBLAS's AVX-512 kernels
 * (docs/performance.md): 256 rows amortise the packing of each K and V tile over four times the
 * work of 64 rows (enc-1k: 138 against 106 GFLOP/s per core), while the 256 x 256 score tile
 * (256 KiB) and a key and a value block still sit in the 1 MiB L2. Tiles a causal or window
 * bound cuts across are computed in sub-blocks of ATTN_SUB_ROWS rows, each over its own keys,
 * so the hidden part of a diagonal tile costs little. The workspace depends on these and the
 * head dims only.
 */
#ifndef ATTN_ENGINE_TILES_H
#define ATTN_ENGINE_TILES_H

#include <stdint.h>

#ifndef ATTN_TILE_Q /* overridable for tuning experiments only */
#define ATTN_TILE_Q 256
#endif
#define ATTN_SUB_ROWS 64
#ifndef ATTN_TILE_K
#define ATTN_TILE_K 256
#endif

/* Rows of a group task (the split-key path gathers a kv head's query rows into one matrix):
 * few queries per kv head, so 64 rows cover most groups and keep the partial results small. */
#define ATTN_GROUP_ROWS 64

/*
 * The split-key path, for decoding-like shapes: at most ATTN_SPLIT_MAX_QUERIES queries and at
 * least ATTN_SPLIT_MIN_KEYS keys. Chunks of ATTN_SPLIT_KEYS keys (four key tiles: 1024 keys of a
 * 128-wide head are 512 KiB of K and 512 KiB of V, streamed once) are enough work per item to
 * hide the hand-out cost, and a 4k-key sequence still splits into 4 independent pieces per kv
 * head. Measured on 2 cores: 512-key chunks streamed 5-15 % slower, 2048 no faster.
 */
#define ATTN_SPLIT_MAX_QUERIES 16
#define ATTN_SPLIT_MIN_KEYS 512
#define ATTN_SPLIT_KEYS 1024

/* Number of tiles of `tile` covering n items, in 64-bit arithmetic: lengths are uint32_t, and
 * n + tile - 1 in 32 bits wraps to a small count for n near 2^32. */
static inline int64_t attn_tiles(int64_t n, int64_t tile)
{
    return (n + tile - 1) / tile;
}

#endif
