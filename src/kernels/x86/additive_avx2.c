/* AVX2 + FMA kernels of additive attention (kernels/additive.h). This file alone is compiled
 * with -mavx2 -mfma; it is only called after the dispatcher has seen both enabled. */
#include <immintrin.h>

#include "kernels/exp_poly.h"
#include "kernels/softmax.h"
#include "kernels/tanh_poly.h"

/* exp(x) for 0 <= x <= 2 TANH_CLAMP (or NaN): no underflow to handle. */
static inline __m256 exp_pos(__m256 x)
{
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
    return _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(e, 23)));
}

static inline __m256 tanh8(__m256 x)
{
    __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 ax = _mm256_andnot_ps(sign, x);
    __m256 x2 = _mm256_mul_ps(x, x);
    __m256 p = _mm256_set1_ps(TANH_P4);
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(TANH_P3));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(TANH_P2));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(TANH_P1));
    p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(TANH_P0));
    __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(x, x2), p, x);
    __m256 z = _mm256_min_ps(_mm256_set1_ps(TANH_CLAMP), ax); /* NaN: the second operand */
    __m256 e = exp_pos(_mm256_add_ps(z, z));
    __m256 big = _mm256_sub_ps(_mm256_set1_ps(1.0f),
                               _mm256_div_ps(_mm256_set1_ps(2.0f),
                                             _mm256_add_ps(e, _mm256_set1_ps(1.0f))));
    __m256 is_small = _mm256_cmp_ps(ax, _mm256_set1_ps(TANH_SMALL), _CMP_LT_OQ);
    __m256 r = _mm256_andnot_ps(sign, _mm256_blendv_ps(big, small, is_small));
    /* tanh is odd: |r| with the sign of x (which also keeps -0) */
    return _mm256_or_ps(r, _mm256_and_ps(x, sign));
}

/* Lanes [0, k) set (all for k >= 8). */
static inline __m256i lanes(int64_t k)
{
    __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(k >= 8 ? 8 : (int)k), idx);
}

static void tanh_avx2(float *y, const float *x, size_t n)
{
    for (size_t k = 0; k < n; k += 8) {
        __m256i m = lanes((int64_t)(n - k));
        _mm256_maskstore_ps(y + k, m, tanh8(_mm256_maskload_ps(x + k, m)));
    }
}

static void row_avx2(float *s, const float *qp, const float *kt, int64_t ldk, int64_t n,
                     int64_t A, const float *w, float *t, int64_t ldt)
{
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        for (int64_t a = 0; a < A; a++) {
            const float *k = kt + a * ldk + j;
            __m256 q = _mm256_set1_ps(qp[a]), wa = _mm256_set1_ps(w[a]);
            __m256 t0 = tanh8(_mm256_add_ps(q, _mm256_loadu_ps(k)));
            __m256 t1 = tanh8(_mm256_add_ps(q, _mm256_loadu_ps(k + 8)));
            if (t) {
                _mm256_storeu_ps(t + a * ldt + j, t0);
                _mm256_storeu_ps(t + a * ldt + j + 8, t1);
            }
            acc0 = _mm256_fmadd_ps(wa, t0, acc0);
            acc1 = _mm256_fmadd_ps(wa, t1, acc1);
        }
        _mm256_storeu_ps(s + j, acc0);
        _mm256_storeu_ps(s + j + 8, acc1);
    }
    for (; j < n; j += 8) {
        __m256i m = lanes(n - j);
        __m256 acc = _mm256_setzero_ps();
        for (int64_t a = 0; a < A; a++) {
            __m256 q = _mm256_set1_ps(qp[a]);
            __m256 th = tanh8(_mm256_add_ps(q, _mm256_maskload_ps(kt + a * ldk + j, m)));
            if (t)
                _mm256_maskstore_ps(t + a * ldt + j, m, th);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(w[a]), th, acc);
        }
        _mm256_maskstore_ps(s + j, m, acc);
    }
}

static inline float hsum(__m256 v)
{
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_shuffle_ps(x, x, 1));
    return _mm_cvtss_f32(x);
}

static void grad_q_avx2(float *dqp, float *dw, const float *ds, const float *t, int64_t ldt,
                        int64_t n, int64_t A, const float *w)
{
    __m256 one = _mm256_set1_ps(1.0f);
    for (int64_t a = 0; a < A; a++) {
        const float *ta = t + a * ldt;
        __m256 g = _mm256_setzero_ps(), h = _mm256_setzero_ps();
        for (int64_t j = 0; j < n; j += 8) {
            __m256i m = lanes(n - j);
            __m256 tv = _mm256_maskload_ps(ta + j, m), d = _mm256_maskload_ps(ds + j, m);
            g = _mm256_fmadd_ps(d, _mm256_fnmadd_ps(tv, tv, one), g);
            h = _mm256_fmadd_ps(d, tv, h);
        }
        dqp[a] += w[a] * hsum(g);
        dw[a] += hsum(h);
    }
}

static void grad_k_avx2(float *dkt, int64_t lddk, const float *ds, const float *t, int64_t ldt,
                        int64_t n, int64_t A, const float *w)
{
    __m256 one = _mm256_set1_ps(1.0f);
    for (int64_t a = 0; a < A; a++) {
        const float *ta = t + a * ldt;
        float *d = dkt + a * lddk;
        __m256 wa = _mm256_set1_ps(w[a]);
        for (int64_t j = 0; j < n; j += 8) {
            __m256i m = lanes(n - j);
            __m256 tv = _mm256_maskload_ps(ta + j, m);
            __m256 g = _mm256_mul_ps(_mm256_maskload_ps(ds + j, m), _mm256_fnmadd_ps(tv, tv, one));
            _mm256_maskstore_ps(d + j, m, _mm256_fmadd_ps(wa, g, _mm256_maskload_ps(d + j, m)));
        }
    }
}

void attn_additive_fill_avx2(attn_kernels *t)
{
    t->tanh = tanh_avx2;
    t->additive_row = row_avx2;
    t->additive_grad_q = grad_q_avx2;
    t->additive_grad_k = grad_k_avx2;
}
