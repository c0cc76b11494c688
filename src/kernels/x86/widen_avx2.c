/* Widening with F16C (vcvtph2ps) and AVX2 shifts. Compiled with -mavx2 -mf16c; dispatch only
 * installs it when the CPU reports F16C. */
#include <immintrin.h>
#include <string.h>

#include "kernels/softmax.h"

static void widen_avx2(float *dst, const uint16_t *src, size_t n, uint32_t dtype)
{
    size_t k = 0;
    if (dtype == ATTN_WIDEN_BF16) {
        for (; k + 8 <= n; k += 8) {
            __m256i x = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + k)));
            _mm256_storeu_ps(dst + k, _mm256_castsi256_ps(_mm256_slli_epi32(x, 16)));
        }
        for (; k < n; k++) {
            uint32_t bits = (uint32_t)src[k] << 16;
            memcpy(&dst[k], &bits, sizeof bits);
        }
    } else {
        for (; k + 8 <= n; k += 8)
            _mm256_storeu_ps(dst + k, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + k))));
        if (k < n) { /* the tail through a zero-padded block */
            uint16_t h[8] = {0};
            float f[8];
            for (size_t i = 0; k + i < n; i++)
                h[i] = src[k + i];
            _mm256_storeu_ps(f, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h)));
            for (size_t i = 0; k + i < n; i++)
                dst[k + i] = f[i];
        }
    }
}

void attn_widen_fill_avx2(attn_kernels *t)
{
    t->widen = widen_avx2;
}
