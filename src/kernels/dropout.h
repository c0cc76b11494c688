/*
 * Attention dropout keyed by position (SPEC F13). Element (b, h, i, j) of the attention weights
 * is dropped iff word (j mod 4) of
 *     Philox4x32-10(counter = (j / 4, i, b * q_heads + h, offset),
 *                   key = (seed mod 2^32, seed / 2^32))
 * is below floor(p * 2^32) (integer division; every counter word taken mod 2^32). The mask is a
 * pure function of (seed, offset, b, h, i, j): no tile, thread or call order enters it, so the
 * backward pass and the public attn_dropout_mask() regenerate exactly what the forward applied.
 *
 * The kernels (slots dropout_row and keep_row of attn_kernels, kernels/softmax.h) work on one
 * row segment at a time; a segment may start at any column and have any length.
 */
#ifndef ATTN_KERNELS_DROPOUT_H
#define ATTN_KERNELS_DROPOUT_H

#include <math.h>
#include <stdint.h>

#include "random/philox.h"

typedef struct attn_dropout {
    uint64_t seed;      /* key = (seed mod 2^32, seed / 2^32) */
    uint32_t offset;    /* counter word 3. 32 bits because it is one counter word: callers that
                           advance it per step (e.g. per training iteration) wrap mod 2^32 */
    uint32_t threshold; /* floor(p * 2^32): an element is dropped iff its word is below it;
                           0 keeps everything */
    float scale;        /* factor applied to kept elements: 1 / (1 - p) */
    uint32_t q_heads;   /* counter word 2 is batch * q_heads + head (mod 2^32) */
} attn_dropout;

/* floor(p * 2^32) for p in [0, 1): exact, since a float times 2^32 is exact in double. */
static inline uint32_t attn_dropout_threshold(float p)
{
    return (uint32_t)floor((double)p * 4294967296.0);
}

/* Parameters for probability p in [0, 1) (the caller has checked it): threshold and scale as
 * pinned above, scale = 1 / (1 - p) rounded once to float. */
static inline attn_dropout attn_dropout_make(float p, uint64_t seed, uint32_t offset,
                                             uint32_t q_heads)
{
    attn_dropout d;
    d.seed = seed;
    d.offset = offset;
    d.threshold = attn_dropout_threshold(p);
    d.scale = (float)(1.0 / (1.0 - (double)p));
    d.q_heads = q_heads;
    return d;
}

/* The Philox key of the parameters. */
static inline void attn_dropout_key(const attn_dropout *d, uint32_t key[2])
{
    key[0] = (uint32_t)d->seed;
    key[1] = (uint32_t)(d->seed >> 32);
}

/* Counter words 1..3 of row `row` of (batch, head); word 0 is the column / 4. */
static inline void attn_dropout_row_counter(const attn_dropout *d, int64_t batch, int64_t head,
                                            int64_t row, uint32_t ctr[4])
{
    ctr[0] = 0;
    ctr[1] = (uint32_t)(uint64_t)row;
    ctr[2] = (uint32_t)((uint64_t)batch * d->q_heads + (uint64_t)head);
    ctr[3] = d->offset;
}

/*
 * What the vector kernels precompute per row. Along a row only counter word 0 varies, so the
 * first rounds partly act on constants: round 0 multiplies only word 0 (word 2 is the row's
 * constant), round 1 only word 2, and several XOR operands fold into one constant each.
 * With x = (c, c1, c2, c3) and key schedule rk:
 *   after round 0: x0 = r0_x0, x1 = r0_x1 (constants), x2 = hi(c * M0) ^ r0_k, x3 = lo(c * M0)
 *   after round 1: x0 = hi(x2 * M1) ^ r1_k0, x1 = lo(x2 * M1), x2 = x3 ^ r1_k2, x3 = r1_x3
 *   after round 2: x2 = hi(x0 * M0) ^ r2_k2 (x3 of round 1 was constant); x0, x1, x3 as usual
 * and rounds 3..9 are general.
 */
typedef struct attn_dropout_plan {
    uint32_t r0_k;  /* c3 ^ rk[0][1] */
    uint32_t r1_k0; /* r0_x1 ^ rk[1][0] */
    uint32_t r1_k2; /* hi(r0_x0 * M0) ^ rk[1][1] */
    uint32_t r2_k2; /* lo(r0_x0 * M0) ^ rk[2][1] */
    attn_philox_keys rk;
} attn_dropout_plan;

static inline attn_dropout_plan attn_dropout_plan_row(const attn_dropout *d, int64_t batch,
                                                      int64_t head, int64_t row)
{
    attn_dropout_plan pl;
    uint32_t key[2], ctr[4];
    attn_dropout_key(d, key);
    pl.rk = attn_philox_schedule(key);
    attn_dropout_row_counter(d, batch, head, row, ctr);
    uint64_t p1 = (uint64_t)ctr[2] * ATTN_PHILOX_M1;
    uint32_t r0_x0 = (uint32_t)(p1 >> 32) ^ ctr[1] ^ pl.rk.k[0][0];
    uint32_t r0_x1 = (uint32_t)p1;
    uint64_t p0 = (uint64_t)r0_x0 * ATTN_PHILOX_M0;
    pl.r0_k = ctr[3] ^ pl.rk.k[0][1];
    pl.r1_k0 = r0_x1 ^ pl.rk.k[1][0];
    pl.r1_k2 = (uint32_t)(p0 >> 32) ^ pl.rk.k[1][1];
    pl.r2_k2 = (uint32_t)p0 ^ pl.rk.k[2][1];
    return pl;
}

#endif
