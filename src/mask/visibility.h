/*
 * Structured masks (causal, sliding window, per-batch key lengths) as one visible key interval
 * per query row: each of them keeps a contiguous range of keys, so their intersection is one
 * range too. The forward pass uses the intervals to skip whole key tiles and trim partial ones
 * without ever materialising a mask.
 */
#ifndef ATTN_MASK_VISIBILITY_H
#define ATTN_MASK_VISIBILITY_H

#include <stdint.h>

typedef struct attn_visibility {
    int causal;           /* key j visible only if j <= i + q_offset */
    int64_t window_left;  /* -1: unbounded */
    int64_t window_right; /* -1: unbounded */
    int64_t q_offset;     /* position of query row 0 on the key axis (already resolved) */
} attn_visibility;

/*
 * For the query positions row_i[0 .. rows-1] with `keys` keys available (kv_len, or kv_lens[b]):
 * lo[r] .. hi[r] - 1 are the keys row r may see (lo[r] >= hi[r]: none). Returns the union
 * [*klo, *khi) over the rows, empty (*klo == *khi == 0) when no row sees any key.
 */
void attn_visible_rows(const attn_visibility *vis, int64_t keys, const int64_t *row_i,
                       int64_t rows, int64_t *lo, int64_t *hi, int64_t *klo, int64_t *khi);

#endif
