/*
 * Tile sizes of the engine, in one place. A task owns ATTN_TILE_Q query rows and streams
 * the keys ATTN_TILE_K at a time. The per-task working set, the score tile (64 x 256 floats =
 * 64 KiB) plus one key block and one value block (256 x d floats each, 64 KiB at d = 64), fits
 * the 512 KiB-2 MiB L2 of current x86 cores, while 64 rows keep the Q.K^T and P.V products large
 * enough for the BLAS micro-kernels. The workspace depends on these and the head dims only.
 */
#ifndef ATTN_ENGINE_TILES_H
#define ATTN_ENGINE_TILES_H

#include <stdint.h>

#ifndef ATTN_TILE_Q /* overridable for tuning experiments only */
#define ATTN_TILE_Q 64
#endif
#ifndef ATTN_TILE_K
#define ATTN_TILE_K 256
#endif

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
