/* Narrowing with AVX-512F: vcvtps2ph (round to nearest even) and integer rounding for bfloat16,
 * sixteen elements at a time, the tail through a mask. */
#include <immintrin.h>
#include <string.h>

#include "kernels/softmax.h"

/* Sixteen floats to bfloat16: x + 0x7FFF + lsb, the top 16 bits; NaNs made quiet. */
static inline __m256i bf16_16(__m512 f)
{
    __m512i x = _mm512_castps_si512(f);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_srli_epi32(
        _mm512_add_epi32(x, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
    __mmask16 nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(x, _mm512_set1_epi32(0x7FFFFFFF)),
                                            _mm512_set1_epi32(0x7F800000));
    __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(0x40));
    return _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(nan, rounded, quiet));
}

static inline __m256i narrow16(__m512 f, uint32_t dtype)
{
    return dtype == ATTN_WIDEN_BF16 ? bf16_16(f) : _mm512_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT);
}

static void narrow_avx512(uint16_t *dst, const float *src, size_t n, uint32_t dtype)
{
    size_t k = 0;
    for (; k + 16 <= n; k += 16)
        _mm256_storeu_si256((__m256i *)(dst + k), narrow16(_mm512_loadu_ps(src + k), dtype));
    if (k < n) { /* a masked load, the store through a buffer (16-bit masked stores need
                  * AVX-512BW): nothing is touched past element n - 1 */
        __mmask16 lanes = (__mmask16)((1u << (n - k)) - 1u);
        uint16_t h[16];
        _mm256_storeu_si256((__m256i *)h, narrow16(_mm512_maskz_loadu_ps(lanes, src + k), dtype));
        memcpy(dst + k, h, (n - k) * sizeof *h);
    }
}

void attn_narrow_fill_avx512(attn_kernels *t)
{
    t->narrow = narrow_avx512;
}
