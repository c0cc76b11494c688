/* attn_dropout_mask: the pinned dropout keep-mask of a block of rows and columns, written by
 * the same kernels the forward and backward passes apply. */
#include <math.h>
#include <stdint.h>

#include "core/context.h"
#include "dispatch/dispatch.h"

#define POSITIONS INT64_C(4294967296) /* positions are uint32_t: 0 .. 2^32 - 1 */

/* Checks that [first, first + count) is a nonempty range of positions. */
static attn_status check_range(const char *first_name, int64_t first, const char *count_name,
                               int64_t count)
{
    if (count == 0)
        return attn_fail(NULL, ATTN_ERR_ZERO_SIZE, "%s is 0", count_name);
    if (first < 0 || first >= POSITIONS)
        return attn_fail(NULL, ATTN_ERR_LIMIT, "%s = %lld is outside [0, %lld]", first_name,
                         (long long)first, (long long)(POSITIONS - 1));
    if (count < 0 || count > POSITIONS - first)
        return attn_fail(NULL, ATTN_ERR_LIMIT,
                         "%s = %lld is outside [1, %lld] (%s + %s may not exceed 2^32)",
                         count_name, (long long)count, (long long)(POSITIONS - first),
                         first_name, count_name);
    return ATTN_OK;
}

attn_status attn_dropout_mask(float p, uint64_t seed, uint32_t offset, uint32_t q_heads,
                              uint32_t batch_index, uint32_t head, int64_t row0, int64_t rows,
                              int64_t col0, int64_t cols, uint8_t *keep, int64_t ld)
{
    if (!keep)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "keep is NULL");
    if (!(p >= 0.0f && p < 1.0f)) /* NaN fails both */
        return attn_fail(NULL, ATTN_ERR_BAD_OPTION, "p = %g is outside [0, 1)", (double)p);
    if (q_heads == 0)
        return attn_fail(NULL, ATTN_ERR_ZERO_SIZE, "q_heads is 0");
    if (head >= q_heads)
        return attn_fail(NULL, ATTN_ERR_LIMIT, "head = %u is not below q_heads = %u",
                         (unsigned)head, (unsigned)q_heads);
    attn_status st = check_range("row0", row0, "rows", rows);
    if (st == ATTN_OK)
        st = check_range("col0", col0, "cols", cols);
    if (st != ATTN_OK)
        return st;
    if (ld < cols)
        return attn_fail(NULL, ATTN_ERR_STRIDE, "ld = %lld is below cols = %lld",
                         (long long)ld, (long long)cols);
    /* The last byte written is keep[(rows - 1) * ld + cols - 1]. */
    if (rows - 1 > ((int64_t)PTRDIFF_MAX - cols) / ld)
        return attn_fail(NULL, ATTN_ERR_OVERFLOW,
                         "(rows - 1) * ld + cols = (%lld - 1) * %lld + %lld exceeds %lld",
                         (long long)rows, (long long)ld, (long long)cols,
                         (long long)PTRDIFF_MAX);

    const attn_kernels *k = attn_dispatch_kernels();
    attn_dropout d = attn_dropout_make(p, seed, offset, q_heads);
    for (int64_t r = 0; r < rows; r++) {
        attn_row_coord at = {batch_index, head, row0 + r, col0};
        k->keep_row(keep + r * ld, (size_t)cols, &at, &d);
    }
    return ATTN_OK;
}
