/* Narrowing with F16C (vcvtps2ph, round to nearest even) and AVX2 integer rounding for bfloat16.
 * Compiled with -mavx2 -mf16c; dispatch only installs it when the CPU reports F16C. */
#include <immintrin.h>

#include "kernels/half.h"
#include "kernels/softmax.h"

/* Eight floats to bfloat16 in the low halves of 32-bit lanes: x + 0x7FFF + lsb, then the top
 * 16 bits; NaNs keep their top bits and are made quiet. */
static inline __m256i bf16_lanes(__m256 f)
{
    __m256i x = _mm256_castps_si256(f);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_srli_epi32(
        _mm256_add_epi32(x, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
    __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(0x40));
    __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(x, _mm256_set1_epi32(0x7FFFFFFF)),
                                     _mm256_set1_epi32(0x7F800000));
    return _mm256_blendv_epi8(rounded, quiet, nan);
}

static void narrow_avx2(uint16_t *dst, const float *src, size_t n, uint32_t dtype)
{
    size_t k = 0;
    if (dtype == ATTN_WIDEN_BF16) {
        for (; k + 16 <= n; k += 16) {
            __m256i a = bf16_lanes(_mm256_loadu_ps(src + k));
            __m256i b = bf16_lanes(_mm256_loadu_ps(src + k + 8));
            /* packus works per 128-bit lane: put the four 64-bit quarters back in order */
            __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xD8);
            _mm256_storeu_si256((__m256i *)(dst + k), packed);
        }
        for (; k < n; k++)
            dst[k] = attn_float_to_bf16(src[k]);
    } else {
        for (; k + 8 <= n; k += 8)
            _mm_storeu_si128((__m128i *)(dst + k),
                             _mm256_cvtps_ph(_mm256_loadu_ps(src + k), _MM_FROUND_TO_NEAREST_INT));
        for (; k < n; k++)
            dst[k] = attn_float_to_half(src[k]);
    }
}

void attn_narrow_fill_avx2(attn_kernels *t)
{
    t->narrow = narrow_avx2;
}
