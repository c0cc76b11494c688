/* Portable dropout kernels: Philox4x32-10 one counter (four columns) at a time. They are the
 * reference the vector variants match bit for bit. */
#include <string.h>

#include "kernels/softmax.h"

/* Runs BODY for every k < n with `word`, the Philox word of column at->col + k. */
#define FOR_EACH_WORD(n, at, d, BODY)                                                          \
    do {                                                                                       \
        uint32_t ctr_[4], key_[2], w_[4];                                                      \
        attn_dropout_row_counter((d), (at)->batch, (at)->head, (at)->row, ctr_);               \
        attn_dropout_key((d), key_);                                                           \
        attn_philox_keys rk_ = attn_philox_schedule(key_);                                     \
        uint64_t j_ = (uint64_t)(at)->col;                                                     \
        for (size_t k = 0; k < (n);) {                                                         \
            ctr_[0] = (uint32_t)(j_ >> 2);                                                     \
            attn_philox4x32_10_rk(ctr_, &rk_, w_);                                              \
            for (unsigned t_ = (unsigned)(j_ & 3u); t_ < 4 && k < (n); t_++, k++, j_++) {      \
                uint32_t word = w_[t_];                                                        \
                BODY;                                                                          \
            }                                                                                  \
        }                                                                                      \
    } while (0)

static void dropout_row_scalar(float *x, size_t n, const attn_row_coord *at,
                               const attn_dropout *d)
{
    if (d->threshold == 0) { /* nothing is dropped */
        for (size_t k = 0; k < n; k++)
            x[k] *= d->scale;
        return;
    }
    FOR_EACH_WORD(n, at, d, x[k] = word < d->threshold ? 0.0f : x[k] * d->scale);
}

static void keep_row_scalar(uint8_t *keep, size_t n, const attn_row_coord *at,
                            const attn_dropout *d)
{
    if (d->threshold == 0) {
        if (n)
            memset(keep, 1, n);
        return;
    }
    FOR_EACH_WORD(n, at, d, keep[k] = word >= d->threshold);
}

void attn_dropout_fill_scalar(attn_kernels *t)
{
    t->dropout_row = dropout_row_scalar;
    t->keep_row = keep_row_scalar;
}
