/* Thin products with AVX-512F: each key and value row is read once from memory, widened in
 * registers when 16-bit (see kernels/softmax.h for the contract). */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels/softmax.h"

static inline __m512 widen16(__m256i h, uint32_t dtype)
{
    if (dtype == ATTN_WIDEN_BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

/* Elements d .. d+15 of a row as floats; `count` < 16 reads only that many (zeros after). */
static inline __m512 load16(const void *row, int64_t d, uint32_t dtype, int64_t count)
{
    if (dtype == 0) {
        __mmask16 lanes = count >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << count) - 1u);
        return _mm512_maskz_loadu_ps(lanes, (const float *)row + d);
    }
    const uint16_t *src = (const uint16_t *)row + d;
    if (count >= 16)
        return widen16(_mm256_loadu_si256((const __m256i *)src), dtype);
    uint16_t h[16] = {0}; /* a tail: nothing is read past the row */
    memcpy(h, src, (size_t)count * sizeof *h);
    return widen16(_mm256_loadu_si256((const __m256i *)h), dtype);
}

/* Rows ahead that the thin kernels ask for (8 KiB of float keys of width 128). Measured on
 * 2 threads (docs/performance.md): the hardware prefetcher alone left decode-4k at 49 % and
 * decode-gqa-8k at 23-26 % of the read bandwidth, cold K/V rows arriving a demand miss at a
 * time; asked 16 rows ahead, 69-79 % and 49-54 %. 32 rows were no better. */
#define PREFETCH_ROWS 16

static inline int64_t elem_size(uint32_t dtype)
{
    return dtype == 0 ? 4 : 2;
}

/* Asks for the `bytes` bytes at base + offset, a line at a time. The address is formed as an
 * integer: it may lie past the tile (and the array), where a prefetch is harmless. */
static inline void prefetch_row(const void *base, int64_t offset, int64_t bytes)
{
    uintptr_t at = (uintptr_t)base + (uintptr_t)offset;
    for (int64_t line = 0; line < bytes; line += 64)
        _mm_prefetch((const char *)(at + (uintptr_t)line), _MM_HINT_T0);
}

/* The four horizontal sums of a0..a3, in one pass of shuffles (cheaper than four reductions). */
static inline __m128 sum4(__m512 a0, __m512 a1, __m512 a2, __m512 a3)
{
    __m512 s01 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
    __m512 s23 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
    /* each 128-bit lane now holds partial sums (a0, a1, a0, a1) and (a2, a3, a2, a3) */
    __m512 s = _mm512_add_ps(_mm512_shuffle_ps(s01, s23, _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(s01, s23, _MM_SHUFFLE(3, 2, 3, 2)));
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(s),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1)));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

static void thin_scores_avx512(float *scores, int64_t ld, const float *q, int64_t ldq,
                               int64_t rows, const void *k, int64_t ldk, uint32_t dtype,
                               int64_t n, int64_t dk, float scale)
{
    const char *kb = k;
    int64_t row_bytes = ldk * elem_size(dtype);
    int64_t c = 0;
    /* four keys at a time: four independent accumulators per row and one shared reduction;
     * the four key rows stay in L1 while the query rows pass over them */
    for (; c + 4 <= n; c += 4) {
        /* the rows PREFETCH_ROWS keys ahead, one line a row; past the tile's end they are
         * usually the next tile's (a prefetch never faults, whatever the address) */
        for (int i = 0; i < 4; i++)
            prefetch_row(kb, (c + PREFETCH_ROWS + i) * row_bytes, dk * elem_size(dtype));
        for (int64_t r = 0; r < rows; r++) {
            __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                           _mm512_setzero_ps()};
            for (int64_t d = 0; d < dk; d += 16) {
                int64_t count = dk - d < 16 ? dk - d : 16;
                __mmask16 lanes = count >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << count) - 1u);
                __m512 qv = _mm512_maskz_loadu_ps(lanes, q + r * ldq + d);
                for (int i = 0; i < 4; i++)
                    a[i] = _mm512_fmadd_ps(qv, load16(kb + (c + i) * row_bytes, d, dtype, count), a[i]);
            }
            __m128 s4 = _mm_mul_ps(sum4(a[0], a[1], a[2], a[3]), _mm_set1_ps(scale));
            _mm_storeu_ps(scores + r * ld + c, s4);
        }
    }
    for (; c < n; c++) {
        const void *krow = kb + c * row_bytes;
        for (int64_t r = 0; r < rows; r++) {
            __m512 acc = _mm512_setzero_ps();
            for (int64_t d = 0; d < dk; d += 16) {
                int64_t count = dk - d < 16 ? dk - d : 16;
                __mmask16 lanes = count >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << count) - 1u);
                acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(lanes, q + r * ldq + d),
                                      load16(krow, d, dtype, count), acc);
            }
            scores[r * ld + c] = scale * _mm512_reduce_add_ps(acc);
        }
    }
}

/* acc rows r0, r0+1 (or only r0), elements e0 .. e0+127, over the n keys. */
static inline void values_block(float *acc, int64_t ldacc, const float *p, int64_t ldp,
                                int64_t r0, int64_t nr, const char *v, int64_t ldv_bytes,
                                uint32_t dtype, int64_t n, int64_t e0, int64_t width)
{
    enum { CH = 8 };
    int64_t chunks = (width + 15) / 16;
    __m512 a[2][CH];
    __mmask16 tail = (width % 16) ? (__mmask16)((1u << (width % 16)) - 1u) : (__mmask16)0xFFFF;
    for (int64_t r = 0; r < nr; r++)
        for (int64_t x = 0; x < chunks; x++)
            a[r][x] = _mm512_maskz_loadu_ps(x == chunks - 1 ? tail : 0xFFFF,
                                            acc + (r0 + r) * ldacc + e0 + 16 * x);
    for (int64_t c = 0; c < n; c++) {
        float w0 = p[r0 * ldp + c], w1 = nr > 1 ? p[(r0 + 1) * ldp + c] : 0.0f;
        if (w0 == 0.0f && w1 == 0.0f) /* hidden or dropped: skip the row (0 * inf is NaN) */
            continue;
        const void *vrow = v + c * ldv_bytes;
        /* this block's part of the row PREFETCH_ROWS ahead (past the tile too, as above) */
        prefetch_row(v, (c + PREFETCH_ROWS) * ldv_bytes + e0 * elem_size(dtype),
                     width * elem_size(dtype));
        __m512 b0 = _mm512_set1_ps(w0), b1 = _mm512_set1_ps(w1);
        for (int64_t x = 0; x < chunks; x++) {
            int64_t count = width - 16 * x < 16 ? width - 16 * x : 16;
            __m512 vv = load16(vrow, e0 + 16 * x, dtype, count);
            if (w0 != 0.0f)
                a[0][x] = _mm512_fmadd_ps(b0, vv, a[0][x]);
            if (nr > 1 && w1 != 0.0f)
                a[1][x] = _mm512_fmadd_ps(b1, vv, a[1][x]);
        }
    }
    for (int64_t r = 0; r < nr; r++)
        for (int64_t x = 0; x < chunks; x++)
            _mm512_mask_storeu_ps(acc + (r0 + r) * ldacc + e0 + 16 * x,
                                  x == chunks - 1 ? tail : 0xFFFF, a[r][x]);
}

static void thin_values_avx512(float *acc, int64_t ldacc, const float *p, int64_t ldp,
                               int64_t rows, const void *v, int64_t ldv, uint32_t dtype,
                               int64_t n, int64_t dv)
{
    /* Two rows and 128 elements of accumulator live in 16 registers while the value rows
     * stream past; a value row is read once per pair of query rows (from cache after the
     * first). */
    for (int64_t e0 = 0; e0 < dv; e0 += 128) {
        int64_t width = dv - e0 < 128 ? dv - e0 : 128;
        for (int64_t r0 = 0; r0 < rows; r0 += 2)
            values_block(acc, ldacc, p, ldp, r0, rows - r0 >= 2 ? 2 : 1, v, ldv * elem_size(dtype),
                         dtype, n, e0, width);
    }
}

void attn_thin_fill_avx512(attn_kernels *t)
{
    t->thin_scores = thin_scores_avx512;
    t->thin_values = thin_values_avx512;
    t->thin_preferred = 1;
}
