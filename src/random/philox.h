/*
 * Philox4x32-10, the counter-based generator of Salmon, Moraes, Dror and Shaw ("Parallel random
 * numbers: as easy as 1, 2, 3", SC'11), with the constants and round structure of their
 * Random123 library, so that its published known-answer vectors hold. A 128-bit counter and a
 * 64-bit key map to 128 random bits with no state: any element of a stream can be computed
 * directly, in any order, on any thread.
 *
 * One round, on counter words (x0, x1, x2, x3) and key words (k0, k1):
 *     (hi0, lo0) = x0 * M0,  (hi1, lo1) = x2 * M1      (32 x 32 -> 64-bit products)
 *     (x0, x1, x2, x3) <- (hi1 ^ x1 ^ k0, lo1, hi0 ^ x3 ^ k1, lo0)
 * Round r (0..9) uses the key (k0 + r * W0, k1 + r * W1) mod 2^32.
 *
 * This header is the scalar definition; the vector kernels (kernels/x86/dropout_*.c) compute
 * the same function on many counters at once and are tested against it.
 */
#ifndef ATTN_RANDOM_PHILOX_H
#define ATTN_RANDOM_PHILOX_H

#include <stdint.h>

#define ATTN_PHILOX_M0 UINT32_C(0xD2511F53)
#define ATTN_PHILOX_M1 UINT32_C(0xCD9E8D57)
#define ATTN_PHILOX_W0 UINT32_C(0x9E3779B9) /* golden ratio */
#define ATTN_PHILOX_W1 UINT32_C(0xBB67AE85) /* sqrt(3) - 1 */
#define ATTN_PHILOX_ROUNDS 10

/* The key schedule: k[r] = (key[0] + r * W0, key[1] + r * W1) mod 2^32 for round r. */
typedef struct attn_philox_keys {
    uint32_t k[ATTN_PHILOX_ROUNDS][2];
} attn_philox_keys;

static inline attn_philox_keys attn_philox_schedule(const uint32_t key[2])
{
    attn_philox_keys rk;
    uint32_t k0 = key[0], k1 = key[1];
    for (int r = 0; r < ATTN_PHILOX_ROUNDS; r++) {
        rk.k[r][0] = k0;
        rk.k[r][1] = k1;
        k0 += ATTN_PHILOX_W0;
        k1 += ATTN_PHILOX_W1;
    }
    return rk;
}

/* out = Philox4x32-10(ctr, key) given the schedule of key. out may alias ctr. */
static inline void attn_philox4x32_10_rk(const uint32_t ctr[4], const attn_philox_keys *rk,
                                         uint32_t out[4])
{
    uint32_t x0 = ctr[0], x1 = ctr[1], x2 = ctr[2], x3 = ctr[3];
    for (int r = 0; r < ATTN_PHILOX_ROUNDS; r++) {
        uint64_t p0 = (uint64_t)x0 * ATTN_PHILOX_M0;
        uint64_t p1 = (uint64_t)x2 * ATTN_PHILOX_M1;
        uint32_t y0 = (uint32_t)(p1 >> 32) ^ x1 ^ rk->k[r][0];
        uint32_t y2 = (uint32_t)(p0 >> 32) ^ x3 ^ rk->k[r][1];
        x1 = (uint32_t)p1;
        x3 = (uint32_t)p0;
        x0 = y0;
        x2 = y2;
    }
    out[0] = x0;
    out[1] = x1;
    out[2] = x2;
    out[3] = x3;
}

/* out = Philox4x32-10(ctr, key). out may alias ctr. */
static inline void attn_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2],
                                      uint32_t out[4])
{
    attn_philox_keys rk = attn_philox_schedule(key);
    attn_philox4x32_10_rk(ctr, &rk, out);
}

#endif
