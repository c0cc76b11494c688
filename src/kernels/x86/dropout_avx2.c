/*
 * AVX2 dropout kernels: Philox4x32-10 on 8 counters (32 columns) at a time, in CHAINS
 * independent pairs of vectors. Compiled with -mavx2 alone; called only after the dispatcher has
 * seen AVX2 enabled by the CPU and OS.
 *
 * The layout is that of dropout_avx512.c at half the width: each counter in the low half of a
 * 64-bit lane (so _mm256_mul_epu32 gives its full product in place and one shift gives the hi
 * word), one vector holding counters c + 2t, its partner c + 2t + 1, t = 0..3; the row's
 * constant counter words fold into the first rounds (attn_dropout_plan). The words are put in
 * column order and applied through masked loads and stores, so a segment may start anywhere.
 */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels/softmax.h"

/* Pairs of vectors per block: two pairs hide the multiplier latency better than one (0.61 vs
 * 0.77 ns per column measured), even though 16 state vectors spill a little. */
#define CHAINS 2
#define BLOCK (32 * CHAINS) /* columns per block */

#define B32(x) _mm256_set1_epi32((int)(x))
#define M0 _mm256_set1_epi64x(ATTN_PHILOX_M0)
#define M1 _mm256_set1_epi64x(ATTN_PHILOX_M1)
#define XOR3(a, b, c) _mm256_xor_si256(_mm256_xor_si256((a), (b)), (c))

/* Rounds of the counters in x[0][u] (low halves of 64-bit lanes), u < nv; word k ends in
 * x[k][u]. */
static inline __attribute__((always_inline)) void philox_vectors(int nv, __m256i x[4][2 * CHAINS],
                                                                 const attn_dropout_plan *v)
{
    __m256i p0[2 * CHAINS], p1[2 * CHAINS];
    for (int u = 0; u < nv; u++) {
        /* round 0: words 1, 2, 3 are the row's constants */
        p0[u] = _mm256_mul_epu32(x[0][u], M0);
        x[2][u] = _mm256_xor_si256(_mm256_srli_epi64(p0[u], 32), B32(v->r0_k));
        x[3][u] = p0[u];
    }
    for (int u = 0; u < nv; u++) {
        /* round 1: words 0 and 1 are constants */
        p1[u] = _mm256_mul_epu32(x[2][u], M1);
        x[0][u] = _mm256_xor_si256(_mm256_srli_epi64(p1[u], 32), B32(v->r1_k0));
        x[1][u] = p1[u];
        x[2][u] = _mm256_xor_si256(x[3][u], B32(v->r1_k2));
    }
    for (int u = 0; u < nv; u++) {
        /* round 2: word 3 is a constant */
        p0[u] = _mm256_mul_epu32(x[0][u], M0);
        p1[u] = _mm256_mul_epu32(x[2][u], M1);
        x[0][u] = XOR3(_mm256_srli_epi64(p1[u], 32), x[1][u], B32(v->rk.k[2][0]));
        x[1][u] = p1[u];
        x[2][u] = _mm256_xor_si256(_mm256_srli_epi64(p0[u], 32), B32(v->r2_k2));
        x[3][u] = p0[u];
    }
    for (int r = 3; r < ATTN_PHILOX_ROUNDS; r++) {
        for (int u = 0; u < nv; u++) {
            p0[u] = _mm256_mul_epu32(x[0][u], M0);
            p1[u] = _mm256_mul_epu32(x[2][u], M1);
            x[0][u] = XOR3(_mm256_srli_epi64(p1[u], 32), x[1][u], B32(v->rk.k[r][0]));
            x[1][u] = p1[u];
            x[2][u] = XOR3(_mm256_srli_epi64(p0[u], 32), x[3][u], B32(v->rk.k[r][1]));
            x[3][u] = p0[u];
        }
    }
}

/* Words of the 8 counters whose chains are x[.][a] (counters 2t) and x[.][b] (2t + 1) in
 * column order: out[r] lane l = column 8r + l of the 32. */
static inline __attribute__((always_inline)) void columns32(__m256i x[4][2 * CHAINS], int a,
                                                            int b, __m256i out[4])
{
    /* 64-bit lane t of a01: words 0, 1 of counter 2t; of a23: words 2, 3; b: counter 2t + 1 */
    __m256i a01 = _mm256_blend_epi32(x[0][a], _mm256_slli_epi64(x[1][a], 32), 0xAA);
    __m256i a23 = _mm256_blend_epi32(x[2][a], _mm256_slli_epi64(x[3][a], 32), 0xAA);
    __m256i b01 = _mm256_blend_epi32(x[0][b], _mm256_slli_epi64(x[1][b], 32), 0xAA);
    __m256i b23 = _mm256_blend_epi32(x[2][b], _mm256_slli_epi64(x[3][b], 32), 0xAA);
    /* 128-bit halves: t0 = counters 0 | 4, t1 = 1 | 5, t2 = 2 | 6, t3 = 3 | 7 */
    __m256i t0 = _mm256_unpacklo_epi64(a01, a23);
    __m256i t2 = _mm256_unpackhi_epi64(a01, a23);
    __m256i t1 = _mm256_unpacklo_epi64(b01, b23);
    __m256i t3 = _mm256_unpackhi_epi64(b01, b23);
    out[0] = _mm256_permute2x128_si256(t0, t1, 0x20);
    out[1] = _mm256_permute2x128_si256(t2, t3, 0x20);
    out[2] = _mm256_permute2x128_si256(t0, t1, 0x31);
    out[3] = _mm256_permute2x128_si256(t2, t3, 0x31);
}

/* The words of columns 4c .. 4c + 32 * pairs - 1 in order (pairs 1 .. CHAINS): out[r] lane l =
 * column 4c + 8r + l. A block's tail that needs fewer columns is generated with fewer pairs. */
static void gen_block(uint32_t c, int pairs, const attn_dropout_plan *v, __m256i out[4 * CHAINS])
{
    const __m256i even = _mm256_set_epi32(0, 6, 0, 4, 0, 2, 0, 0);
    const __m256i odd = _mm256_add_epi32(even, _mm256_set1_epi64x(1));
    __m256i x[4][2 * CHAINS];
    for (int u = 0; u < CHAINS; u++) {
        const __m256i base = _mm256_set1_epi32((int)(c + 8u * (uint32_t)u));
        x[0][2 * u] = _mm256_add_epi32(base, even);
        x[0][2 * u + 1] = _mm256_add_epi32(base, odd);
    }
    if (pairs == CHAINS) {
        philox_vectors(2 * CHAINS, x, v);
    } else {
        philox_vectors(2, x, v);
        for (int r = 4; r < 4 * CHAINS; r++)
            out[r] = _mm256_setzero_si256();
    }
    for (int u = 0; u < pairs; u++)
        columns32(x, 2 * u, 2 * u + 1, out + 4 * u);
}

/*
 * Walks the segment in steps of BLOCK columns. The stream of words starts at the segment's
 * first counter, column 4c = at->col - s (s = at->col mod 4), so stream position t is
 * x[t - s]: APPLY gets the words of positions [t, t + BLOCK) as w[] and handles those of
 * [s, s + n).
 */
#define WALK_SEGMENT(n, at, d, APPLY)                                                         \
    do {                                                                                      \
        attn_dropout_plan pl_ = attn_dropout_plan_row((d), (at)->batch, (at)->head, (at)->row); \
        uint32_t c_ = (uint32_t)((uint64_t)(at)->col >> 2);                                   \
        size_t s = (size_t)((uint64_t)(at)->col & 3u), end = s + (n);                         \
        __m256i w[4 * CHAINS];                                                                \
        for (size_t t = 0; t < end; t += BLOCK, c_ += BLOCK / 4) {                            \
            gen_block(c_, end - t > 32 ? CHAINS : 1, &pl_, w);                                \
            APPLY;                                                                            \
        }                                                                                     \
    } while (0)

/* Lane l of the 8 stream positions from `pos` is set (all ones) when s <= pos + l < end. */
static inline __m256i lanes_in(size_t pos, size_t s, size_t end)
{
    const __m256i lane = _mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0);
    int lo = s > pos ? (int)(s - pos) : 0;
    int hi = end - pos >= 8 ? 8 : (int)(end - pos);
    return _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(lo), lane),
                               _mm256_cmpgt_epi32(_mm256_set1_epi32(hi), lane));
}

/* Stream positions count from the segment's first counter, up to 3 columns before x[0]; those
 * lanes are always masked off, so the shifted base is never dereferenced there. The address is
 * formed as an integer to stay clear of pointer arithmetic outside the array. */
#define SHIFTED(ptr, s) ((void *)((uintptr_t)(ptr) - (s) * sizeof *(ptr)))

/* All-ones lanes where w >= thr (unsigned). */
static inline __m256i kept_lanes(__m256i w, __m256i thr)
{
    return _mm256_cmpeq_epi32(_mm256_max_epu32(w, thr), w);
}

static void dropout_row_avx2(float *x, size_t n, const attn_row_coord *at,
                             const attn_dropout *d)
{
    const __m256 scale = _mm256_set1_ps(d->scale);
    if (d->threshold == 0) {
        size_t k = 0;
        for (; k + 8 <= n; k += 8)
            _mm256_storeu_ps(x + k, _mm256_mul_ps(_mm256_loadu_ps(x + k), scale));
        for (; k < n; k++)
            x[k] *= d->scale;
        return;
    }
    if (n == 0)
        return;
    const __m256i thr = _mm256_set1_epi32((int)d->threshold);
    WALK_SEGMENT(n, at, d, {
        float *base = SHIFTED(x, s);
        for (int r = 0; r < 4 * CHAINS && t + 8 * (size_t)r < end; r++) {
            size_t pos = t + 8 * (size_t)r;
            float *p = base + pos;
            __m256 keep = _mm256_castsi256_ps(kept_lanes(w[r], thr));
            if (pos >= s && end - pos >= 8) {
                _mm256_storeu_ps(p, _mm256_and_ps(_mm256_mul_ps(_mm256_loadu_ps(p), scale), keep));
            } else {
                __m256i lanes = lanes_in(pos, s, end);
                __m256 y = _mm256_and_ps(_mm256_mul_ps(_mm256_maskload_ps(p, lanes), scale), keep);
                _mm256_maskstore_ps(p, lanes, y);
            }
        }
    });
}

/* Bytes 1 (kept) or 0 of the 32 stream positions whose words are w[0..4). */
static inline __m256i kept_bytes(const __m256i w[4], __m256i thr)
{
    /* saturating packs keep -1 and 0; they interleave 128-bit halves, which the permute undoes */
    __m256i k01 = _mm256_packs_epi32(kept_lanes(w[0], thr), kept_lanes(w[1], thr));
    __m256i k23 = _mm256_packs_epi32(kept_lanes(w[2], thr), kept_lanes(w[3], thr));
    __m256i b = _mm256_packs_epi16(k01, k23);
    b = _mm256_permutevar8x32_epi32(b, _mm256_set_epi32(7, 3, 6, 2, 5, 1, 4, 0));
    return _mm256_and_si256(b, _mm256_set1_epi8(1));
}

static void keep_row_avx2(uint8_t *keep, size_t n, const attn_row_coord *at,
                          const attn_dropout *d)
{
    if (n == 0)
        return;
    if (d->threshold == 0) {
        memset(keep, 1, n);
        return;
    }
    const __m256i thr = _mm256_set1_epi32((int)d->threshold);
    WALK_SEGMENT(n, at, d, {
        uint8_t *base = SHIFTED(keep, s);
        for (int g = 0; g < CHAINS && t + 32 * (size_t)g < end; g++) {
            size_t pos = t + 32 * (size_t)g;
            __m256i bytes = kept_bytes(w + 4 * g, thr);
            if (pos >= s && end - pos >= 32) {
                _mm256_storeu_si256((__m256i *)(base + pos), bytes);
            } else {
                uint8_t tmp[32];
                _mm256_storeu_si256((__m256i *)tmp, bytes);
                size_t lo = pos > s ? pos : s;
                size_t hi = end - pos >= 32 ? pos + 32 : end;
                memcpy(keep + (lo - s), tmp + (lo - pos), hi - lo);
            }
        }
    });
}

void attn_dropout_fill_avx2(attn_kernels *t)
{
    t->dropout_row = dropout_row_avx2;
    t->keep_row = keep_row_avx2;
}
