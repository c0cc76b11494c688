/* Widening with AVX-512F: vcvtph2ps / a 16-bit shift on 16 elements at a time. */
#include <immintrin.h>
#include <string.h>

#include "kernels/softmax.h"

static inline __m512 widen16(__m256i x, uint32_t dtype)
{
    if (dtype == ATTN_WIDEN_BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(x), 16));
    return _mm512_cvtph_ps(x);
}

static void widen_avx512(float *dst, const uint16_t *src, size_t n, uint32_t dtype)
{
    size_t k = 0;
    for (; k + 16 <= n; k += 16)
        _mm512_storeu_ps(dst + k, widen16(_mm256_loadu_si256((const __m256i *)(src + k)), dtype));
    if (k < n) { /* the tail through a zero-padded block: nothing is read past src[n - 1] */
        uint16_t h[16] = {0};
        memcpy(h, src + k, (n - k) * sizeof *h);
        __mmask16 lanes = (__mmask16)((1u << (n - k)) - 1u);
        _mm512_mask_storeu_ps(dst + k, lanes, widen16(_mm256_loadu_si256((const __m256i *)h), dtype));
    }
}

void attn_widen_fill_avx512(attn_kernels *t)
{
    t->widen = widen_avx512;
}
