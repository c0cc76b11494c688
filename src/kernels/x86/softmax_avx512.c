/* AVX-512F kernels. This file alone is compiled with -mavx512f (and -mfma); it is only called
 * after the dispatcher has seen AVX-512F and the ZMM/opmask state enabled by the OS. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels/exp_poly.h"
#include "kernels/softmax.h"

static inline __m512 exp_avx512(__m512 x)
{
    __mmask16 normal = _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_UNDERFLOW), _CMP_NLT_UQ);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(EXP_LOG2E)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_LO), r);
    __m512 p = _mm512_set1_ps(EXP_P0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P5));
    __m512 y = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
    y = _mm512_add_ps(y, _mm512_set1_ps(1.0f));
    /* y * 2^n in one instruction; exact (and the same bits as building 2^n), since n >= -126
     * wherever the result is kept */
    y = _mm512_scalef_ps(y, n);
    return _mm512_maskz_mov_ps(normal, y); /* NaN compares unordered: kept, and stays NaN */
}

/* k (1..16) scores with bias added and hidden keys (mask 0, lanes >= k) set to -inf. */
static inline __m512 load_scores(const float *s, const float *bias, const uint8_t *mask,
                                 __mmask16 lanes)
{
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    __m512 x = _mm512_mask_loadu_ps(ninf, lanes, s);
    if (bias)
        x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(lanes, bias));
    if (mask) {
        uint8_t bytes[16] = {0};
        memcpy(bytes, mask, (size_t)__builtin_popcount(lanes));
        __m512i m = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)bytes));
        __mmask16 hidden = _mm512_cmpeq_epi32_mask(m, _mm512_setzero_si512());
        x = _mm512_mask_mov_ps(x, hidden, ninf);
    }
    return x;
}

static inline __mmask16 lanes_for(size_t remaining)
{
    return remaining >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << remaining) - 1u);
}

/* exp(x - shift) of 16 scores into s, added to *sum (and p * d to *u when entropy). */
static inline void exp_step(float *s, __m512 x, __m512 vshift, __mmask16 lanes, __m512 *sum,
                            __m512 *u, int entropy)
{
    __m512 d = _mm512_sub_ps(x, vshift);
    __m512 p = exp_avx512(d);
    _mm512_mask_storeu_ps(s, lanes, p);
    *sum = _mm512_add_ps(*sum, p);
    if (entropy) {
        __mmask16 seen = _mm512_cmp_ps_mask(p, _mm512_setzero_ps(), _CMP_NEQ_UQ);
        *u = _mm512_mask_add_ps(*u, seen, *u, _mm512_mul_ps(p, d));
    }
}

static float online_row_avx512(float *s, size_t n, const float *bias, const uint8_t *mask,
                               attn_row_state *st, int entropy, const attn_row_coord *at)
{
    (void)at;
    /* Four independent accumulators per pass: one add or max chain would bound the loops by
     * its latency rather than by throughput. */
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    __m512 mx[4] = {ninf, ninf, ninf, ninf};
    size_t j = 0;
    if (!bias && !mask) { /* the scores stay as they are: only their maximum is needed */
        for (; j + 64 <= n; j += 64)
            for (int k = 0; k < 4; k++)
                mx[k] = _mm512_max_ps(mx[k], _mm512_loadu_ps(s + j + 16 * k));
        for (; j < n; j += 16)
            mx[0] = _mm512_max_ps(mx[0], _mm512_mask_loadu_ps(ninf, lanes_for(n - j), s + j));
    } else {
        for (; j < n; j += 16) {
            __mmask16 lanes = lanes_for(n - j);
            __m512 x = load_scores(s + j, bias ? bias + j : NULL, mask ? mask + j : NULL, lanes);
            _mm512_mask_storeu_ps(s + j, lanes, x);
            mx[(j >> 4) & 3] = _mm512_max_ps(mx[(j >> 4) & 3], x);
        }
    }
    __m512 vmax = _mm512_max_ps(_mm512_max_ps(mx[0], mx[1]), _mm512_max_ps(mx[2], mx[3]));
    float block_max = _mm512_reduce_max_ps(vmax);
    float m_new, alpha;
    float shift = attn_state_begin(st, block_max, &m_new, &alpha);
    __m512 vshift = _mm512_set1_ps(shift);
    __m512 sum[4], u[4];
    for (int k = 0; k < 4; k++)
        sum[k] = u[k] = _mm512_setzero_ps();
    for (j = 0; j + 64 <= n; j += 64)
        for (int k = 0; k < 4; k++)
            exp_step(s + j + 16 * k, _mm512_loadu_ps(s + j + 16 * k), vshift, 0xFFFF, &sum[k],
                     &u[k], entropy);
    for (; j < n; j += 16) {
        __mmask16 lanes = lanes_for(n - j);
        exp_step(s + j, _mm512_mask_loadu_ps(ninf, lanes, s + j), vshift, lanes, &sum[0], &u[0],
                 entropy);
    }
    float total = _mm512_reduce_add_ps(
        _mm512_add_ps(_mm512_add_ps(sum[0], sum[1]), _mm512_add_ps(sum[2], sum[3])));
    float utotal = entropy ? _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(u[0], u[1]),
                                                                _mm512_add_ps(u[2], u[3])))
                           : 0.0f;
    attn_state_end(st, m_new, alpha, total, utotal, entropy);
    return alpha;
}

static void probs_row_avx512(const float *s, size_t n, const float *bias, const uint8_t *mask,
                             float m, float l, float *dst, int accumulate,
                             const attn_row_coord *at)
{
    (void)at;
    __m512 vm = _mm512_set1_ps(m), vl = _mm512_set1_ps(l);
    for (size_t j = 0; j < n; j += 16) {
        __mmask16 lanes = lanes_for(n - j);
        __m512 x = load_scores(s + j, bias ? bias + j : NULL, mask ? mask + j : NULL, lanes);
        __m512 p = _mm512_div_ps(exp_avx512(_mm512_sub_ps(x, vm)), vl);
        if (accumulate)
            p = _mm512_add_ps(_mm512_maskz_loadu_ps(lanes, dst + j), p);
        _mm512_mask_storeu_ps(dst + j, lanes, p);
    }
}

void attn_kernels_fill_avx512(attn_kernels *t)
{
    t->name = "avx512";
    t->online_row = online_row_avx512;
    t->probs_row = probs_row_avx512;
}
