/* AVX2 + FMA kernels. This file alone is compiled with -mavx2 -mfma; it is only called after
 * the dispatcher has seen both features enabled by the CPU and the OS. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels/exp_poly.h"
#include "kernels/softmax.h"

static inline __m256 exp_avx2(__m256 x)
{
    __m256 underflow = _mm256_cmp_ps(x, _mm256_set1_ps(EXP_UNDERFLOW), _CMP_LT_OQ);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(EXP_LOG2E)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_LO), r);
    __m256 p = _mm256_set1_ps(EXP_P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P5));
    __m256 y = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
    y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    y = _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(e, 23)));
    return _mm256_andnot_ps(underflow, y);
}

/* Lanes [0, k) set, for a partial vector of k < 8 elements. */
static inline __m256i lanes_below(size_t k)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

static inline __m256 load_part(const float *p, size_t k, __m256i lanes)
{
    return k == 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lanes);
}

static inline void store_part(float *p, __m256 x, size_t k, __m256i lanes)
{
    if (k == 8)
        _mm256_storeu_ps(p, x);
    else
        _mm256_maskstore_ps(p, lanes, x);
}

/* k (1..8) scores with bias added and hidden keys (mask 0, lanes >= k) set to -inf. */
static inline __m256 load_scores(const float *s, const float *bias, const uint8_t *mask,
                                 size_t k, __m256i lanes)
{
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    __m256 x = load_part(s, k, lanes);
    if (bias)
        x = _mm256_add_ps(x, load_part(bias, k, lanes));
    if (mask) {
        uint8_t bytes[8] = {0};
        memcpy(bytes, mask, k);
        __m256i m = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)bytes));
        __m256 hidden = _mm256_castsi256_ps(_mm256_cmpeq_epi32(m, _mm256_setzero_si256()));
        x = _mm256_blendv_ps(x, ninf, hidden);
    }
    if (k < 8)
        x = _mm256_blendv_ps(ninf, x, _mm256_castsi256_ps(lanes));
    return x;
}

static inline float hmax(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

static inline float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static float online_row_avx2(float *s, size_t n, const float *bias, const uint8_t *mask,
                             attn_row_state *st, int entropy, const attn_row_coord *at)
{
    (void)at;
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    for (size_t j = 0; j < n; j += 8) {
        size_t k = n - j < 8 ? n - j : 8;
        __m256i lanes = lanes_below(k);
        __m256 x = load_scores(s + j, bias ? bias + j : NULL, mask ? mask + j : NULL, k, lanes);
        if (bias || mask) /* otherwise the scores stay as they are */
            store_part(s + j, x, k, lanes);
        vmax = _mm256_max_ps(vmax, x);
    }
    float block_max = hmax(vmax);
    float m_new, alpha;
    float shift = attn_state_begin(st, block_max, &m_new, &alpha);
    __m256 vshift = _mm256_set1_ps(shift);
    __m256 vsum = _mm256_setzero_ps(), vu = _mm256_setzero_ps();
    for (size_t j = 0; j < n; j += 8) {
        size_t k = n - j < 8 ? n - j : 8;
        __m256i lanes = lanes_below(k);
        __m256 x = load_part(s + j, k, lanes);
        if (k < 8)
            x = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), x, _mm256_castsi256_ps(lanes));
        __m256 d = _mm256_sub_ps(x, vshift);
        __m256 p = exp_avx2(d);
        store_part(s + j, p, k, lanes);
        vsum = _mm256_add_ps(vsum, p);
        if (entropy) {
            __m256 seen = _mm256_cmp_ps(p, _mm256_setzero_ps(), _CMP_NEQ_UQ);
            vu = _mm256_add_ps(vu, _mm256_and_ps(seen, _mm256_mul_ps(p, d)));
        }
    }
    float sum = hsum(vsum);
    attn_state_end(st, m_new, alpha, sum, entropy ? hsum(vu) : 0.0f, entropy);
    return alpha;
}

static void probs_row_avx2(const float *s, size_t n, const float *bias, const uint8_t *mask,
                           float m, float l, float *dst, int accumulate,
                           const attn_row_coord *at)
{
    (void)at;
    __m256 vm = _mm256_set1_ps(m), vl = _mm256_set1_ps(l);
    for (size_t j = 0; j < n; j += 8) {
        size_t k = n - j < 8 ? n - j : 8;
        __m256i lanes = lanes_below(k);
        __m256 x = load_scores(s + j, bias ? bias + j : NULL, mask ? mask + j : NULL, k, lanes);
        __m256 p = _mm256_div_ps(exp_avx2(_mm256_sub_ps(x, vm)), vl);
        if (accumulate)
            p = _mm256_add_ps(load_part(dst + j, k, lanes), p);
        store_part(dst + j, p, k, lanes);
    }
}

void attn_kernels_fill_avx2(attn_kernels *t)
{
    t->name = "avx2";
    t->online_row = online_row_avx2;
    t->probs_row = probs_row_avx2;
}
