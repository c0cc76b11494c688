/*
 * AVX-512F dropout kernels: Philox4x32-10 on 32 counters (128 columns) at once. Compiled with
 * -mavx512f alone; called only after the dispatcher has seen AVX-512F enabled by the CPU and OS.
 *
 * Layout: each counter lives in the low half of a 64-bit lane, so that _mm512_mul_epu32 gives
 * its whole 32 x 32 -> 64-bit product in place: the product is the next round's lo word as it
 * stands (the high half is ignored by the next multiply and by the XORs' consumers), and one
 * shift gives the hi word. Of 16 consecutive counters c + t, one vector holds the even ones,
 * another the odd ones; two such pairs run interleaved, as four independent chains, because a
 * single pair waits on the multiplier's latency. The row's constant counter words fold into the
 * first rounds (attn_dropout_plan). At the end the words are put in column order, 16 columns
 * per vector, and applied to the segment through masked loads and stores, so a segment may
 * start at any column at no extra cost.
 */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels/softmax.h"

/* Broadcasts of the row's plan, made where they are used so that the compiler can fold them
 * into the instructions as embedded broadcasts instead of keeping 24 vectors per row. */
#define B32(x) _mm512_set1_epi32((int)(x))

#define XOR3(a, b, c) _mm512_ternarylogic_epi32((a), (b), (c), 0x96)

/* Rounds of the counters in x[0][u] (low halves of 64-bit lanes), u < nv: the nv vectors are
 * independent chains interleaved for the multiplier's latency; word k ends in x[k][u]. */
static inline __attribute__((always_inline)) void philox_vectors(int nv, __m512i x[4][4],
                                                                 const attn_dropout_plan *v)
{
    __m512i p0[4], p1[4];
    for (int u = 0; u < nv; u++) {
        /* round 0: words 1, 2, 3 are the row's constants */
        p0[u] = _mm512_mul_epu32(x[0][u], _mm512_set1_epi64(ATTN_PHILOX_M0));
        x[2][u] = _mm512_xor_si512(_mm512_srli_epi64(p0[u], 32), B32(v->r0_k));
        x[3][u] = p0[u];
    }
    for (int u = 0; u < nv; u++) {
        /* round 1: words 0 and 1 are constants */
        p1[u] = _mm512_mul_epu32(x[2][u], _mm512_set1_epi64(ATTN_PHILOX_M1));
        x[0][u] = _mm512_xor_si512(_mm512_srli_epi64(p1[u], 32), B32(v->r1_k0));
        x[1][u] = p1[u];
        x[2][u] = _mm512_xor_si512(x[3][u], B32(v->r1_k2));
    }
    for (int u = 0; u < nv; u++) {
        /* round 2: word 3 is a constant */
        p0[u] = _mm512_mul_epu32(x[0][u], _mm512_set1_epi64(ATTN_PHILOX_M0));
        p1[u] = _mm512_mul_epu32(x[2][u], _mm512_set1_epi64(ATTN_PHILOX_M1));
        x[0][u] = XOR3(_mm512_srli_epi64(p1[u], 32), x[1][u], B32(v->rk.k[2][0]));
        x[1][u] = p1[u];
        x[2][u] = _mm512_xor_si512(_mm512_srli_epi64(p0[u], 32), B32(v->r2_k2));
        x[3][u] = p0[u];
    }
    for (int r = 3; r < ATTN_PHILOX_ROUNDS; r++) {
        for (int u = 0; u < nv; u++) {
            p0[u] = _mm512_mul_epu32(x[0][u], _mm512_set1_epi64(ATTN_PHILOX_M0));
            p1[u] = _mm512_mul_epu32(x[2][u], _mm512_set1_epi64(ATTN_PHILOX_M1));
            x[0][u] = XOR3(_mm512_srli_epi64(p1[u], 32), x[1][u], B32(v->rk.k[r][0]));
            x[1][u] = p1[u];
            x[2][u] = XOR3(_mm512_srli_epi64(p0[u], 32), x[3][u], B32(v->rk.k[r][1]));
            x[3][u] = p0[u];
        }
    }
}

/* Words of the 16 counters whose chains are x[.][a] (counters 2t) and x[.][b] (counters 2t + 1)
 * in column order: out[r] lane l = column 16r + l of the 64. */
static inline __attribute__((always_inline)) void columns64(__m512i x[4][4], int a, int b,
                                                            __m512i out[4])
{
    /* 64-bit lane t of a01: words 0, 1 of counter 2t; of a23: words 2, 3; b: counter 2t + 1 */
    __m512i a01 = _mm512_mask_blend_epi32(0xAAAA, x[0][a], _mm512_slli_epi64(x[1][a], 32));
    __m512i a23 = _mm512_mask_blend_epi32(0xAAAA, x[2][a], _mm512_slli_epi64(x[3][a], 32));
    __m512i b01 = _mm512_mask_blend_epi32(0xAAAA, x[0][b], _mm512_slli_epi64(x[1][b], 32));
    __m512i b23 = _mm512_mask_blend_epi32(0xAAAA, x[2][b], _mm512_slli_epi64(x[3][b], 32));
    /* 128-bit chunk u of pa_lo: counter 2u (u < 4), of pa_hi: counter 8 + 2u; pb likewise odd */
    const __m512i lo = _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0);
    const __m512i hi = _mm512_set_epi64(15, 7, 14, 6, 13, 5, 12, 4);
    __m512i pa_lo = _mm512_permutex2var_epi64(a01, lo, a23);
    __m512i pa_hi = _mm512_permutex2var_epi64(a01, hi, a23);
    __m512i pb_lo = _mm512_permutex2var_epi64(b01, lo, b23);
    __m512i pb_hi = _mm512_permutex2var_epi64(b01, hi, b23);
    /* columns 16r .. 16r + 15 are counters 4r .. 4r + 3: chunks 2r, 2r + 1 of pa and pb, mixed */
    const __m512i first = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
    const __m512i second = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
    out[0] = _mm512_permutex2var_epi64(pa_lo, first, pb_lo);
    out[1] = _mm512_permutex2var_epi64(pa_lo, second, pb_lo);
    out[2] = _mm512_permutex2var_epi64(pa_hi, first, pb_hi);
    out[3] = _mm512_permutex2var_epi64(pa_hi, second, pb_hi);
}

/* The words of columns 4c .. 4c + 64 * halves - 1 in order (halves 1 or 2): out[r] lane l =
 * column 4c + 16r + l; out[4..7] are zero when halves is 1. */
static inline void gen_block(uint32_t c, int halves, const attn_dropout_plan *v, __m512i out[8])
{
    const __m512i even = _mm512_set_epi32(0, 14, 0, 12, 0, 10, 0, 8, 0, 6, 0, 4, 0, 2, 0, 0);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi64(1));
    const __m512i base = _mm512_set1_epi32((int)c);
    __m512i x[4][4];
    x[0][0] = _mm512_add_epi32(base, even);
    x[0][1] = _mm512_add_epi32(base, odd);
    if (halves == 2) {
        const __m512i base16 = _mm512_set1_epi32((int)(c + 16u));
        x[0][2] = _mm512_add_epi32(base16, even);
        x[0][3] = _mm512_add_epi32(base16, odd);
        philox_vectors(4, x, v);
        columns64(x, 0, 1, out);
        columns64(x, 2, 3, out + 4);
    } else {
        philox_vectors(2, x, v);
        columns64(x, 0, 1, out);
        out[4] = out[5] = out[6] = out[7] = _mm512_setzero_si512();
    }
}

/*
 * Walks the segment in steps of 128 columns. The stream of words starts at the segment's first
 * counter, column 4c = at->col - s (s = at->col mod 4), so stream position t is x[t - s]: APPLY
 * gets the words of positions [t, t + 128) as w[0..8) and handles those of [s, s + n).
 * A block is generated 64 columns at a time when no more is needed.
 */
#define WALK_SEGMENT(n, at, d, APPLY)                                                         \
    do {                                                                                      \
        attn_dropout_plan pl_ = attn_dropout_plan_row((d), (at)->batch, (at)->head, (at)->row); \
        uint32_t c_ = (uint32_t)((uint64_t)(at)->col >> 2);                                   \
        size_t s = (size_t)((uint64_t)(at)->col & 3u), end = s + (n);                         \
        __m512i cur_[8], w[8];                                                                \
        gen_block(c_, end > 64 ? 2 : 1, &pl_, cur_);                                          \
        for (size_t t = 0; t < end; t += 128) {                                               \
            memcpy(w, cur_, sizeof w);                                                        \
            if (end - t > 128) {                                                              \
                c_ += 32;                                                                     \
                gen_block(c_, end - t - 128 > 64 ? 2 : 1, &pl_, cur_);                        \
            }                                                                                 \
            APPLY;                                                                            \
        }                                                                                     \
    } while (0)

/* Lanes l of the 16 stream positions from `pos` with s <= pos + l < end. */
static inline __mmask16 lanes_in(size_t pos, size_t s, size_t end)
{
    uint32_t below_end = end - pos >= 16 ? 0xFFFFu : (1u << (end - pos)) - 1u;
    uint32_t below_start = s > pos ? (1u << (s - pos)) - 1u : 0u;
    return (__mmask16)(below_end & ~below_start);
}

/* Stream positions count from the segment's first counter, up to 3 columns before x[0]; those
 * lanes are always masked off, so the shifted base is never dereferenced there. The address is
 * formed as an integer to stay clear of pointer arithmetic outside the array. */
#define SHIFTED(ptr, s) ((void *)((uintptr_t)(ptr) - (s) * sizeof *(ptr)))

static void dropout_row_avx512(float *x, size_t n, const attn_row_coord *at,
                               const attn_dropout *d)
{
    const __m512 scale = _mm512_set1_ps(d->scale);
    if (d->threshold == 0) {
        for (size_t k = 0; k < n; k += 16) {
            __mmask16 lanes = lanes_in(k, 0, n);
            _mm512_mask_storeu_ps(x + k, lanes,
                                  _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, x + k), scale));
        }
        return;
    }
    if (n == 0)
        return;
    const __m512i thr = _mm512_set1_epi32((int)d->threshold);
    WALK_SEGMENT(n, at, d, {
        float *base = SHIFTED(x, s);
        for (int r = 0; r < 8 && t + 16 * (size_t)r < end; r++) {
            size_t pos = t + 16 * (size_t)r;
            __mmask16 lanes = lanes_in(pos, s, end);
            __mmask16 kept = _mm512_cmp_epu32_mask(w[r], thr, _MM_CMPINT_NLT);
            __m512 y = _mm512_maskz_mul_ps(kept, _mm512_maskz_loadu_ps(lanes, base + pos), scale);
            _mm512_mask_storeu_ps(base + pos, lanes, y);
        }
    });
}

static void keep_row_avx512(uint8_t *keep, size_t n, const attn_row_coord *at,
                            const attn_dropout *d)
{
    if (n == 0)
        return;
    if (d->threshold == 0) {
        memset(keep, 1, n);
        return;
    }
    const __m512i thr = _mm512_set1_epi32((int)d->threshold);
    const __m512i one = _mm512_set1_epi32(1);
    WALK_SEGMENT(n, at, d, {
        uint8_t *base = SHIFTED(keep, s);
        for (int r = 0; r < 8 && t + 16 * (size_t)r < end; r++) {
            size_t pos = t + 16 * (size_t)r;
            __mmask16 kept = _mm512_cmp_epu32_mask(w[r], thr, _MM_CMPINT_NLT);
            _mm512_mask_cvtepi32_storeu_epi8(base + pos, lanes_in(pos, s, end),
                                             _mm512_maskz_mov_epi32(kept, one));
        }
    });
}

void attn_dropout_fill_avx512(attn_kernels *t)
{
    t->dropout_row = dropout_row_avx512;
    t->keep_row = keep_row_avx512;
}
