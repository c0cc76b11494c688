/* Structured masks → visible key interval per query row. */
#include "mask/visibility.h"

/* Positions are bounded by ATTN_MAX_DISTANCE and 32-bit lengths, so these sums fit in int64. */
void attn_visible_rows(const attn_visibility *vis, int64_t keys, const int64_t *row_i,
                       int64_t rows, int64_t *lo, int64_t *hi, int64_t *klo, int64_t *khi)
{
    int64_t union_lo = keys, union_hi = 0;
    for (int64_t r = 0; r < rows; r++) {
        int64_t pos = row_i[r] + vis->q_offset;
        int64_t a = 0, z = keys;
        if (vis->causal && pos + 1 < z)
            z = pos + 1;
        if (vis->window_right >= 0 && pos + vis->window_right + 1 < z)
            z = pos + vis->window_right + 1;
        if (vis->window_left >= 0 && pos - vis->window_left > a)
            a = pos - vis->window_left;
        if (z < a)
            z = a;
        lo[r] = a;
        hi[r] = z;
        if (a < z) {
            union_lo = a < union_lo ? a : union_lo;
            union_hi = z > union_hi ? z : union_hi;
        }
    }
    if (union_lo >= union_hi)
        union_lo = union_hi = 0;
    *klo = union_lo;
    *khi = union_hi;
}
