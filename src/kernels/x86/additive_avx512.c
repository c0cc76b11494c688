/* AVX-512F kernels of additive attention (kernels/additive.h). This file alone is compiled with
 * -mavx512f -mfma; it is only called after the dispatcher has seen AVX-512F enabled. */
#include <immintrin.h>

#include "kernels/exp_poly.h"
#include "kernels/softmax.h"
#include "kernels/tanh_poly.h"

/* exp(x) for 0 <= x <= 2 TANH_CLAMP (or NaN): no underflow to handle. */
static inline __m512 exp_pos(__m512 x)
{
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
    return _mm512_scalef_ps(y, n);
}

static inline __m512 tanh16(__m512 x)
{
    __m512 ax = _mm512_abs_ps(x);
    __m512 x2 = _mm512_mul_ps(x, x);
    __m512 p = _mm512_set1_ps(TANH_P4);
    p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(TANH_P3));
    p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(TANH_P2));
    p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(TANH_P1));
    p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(TANH_P0));
    __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(x, x2), p, x);
    __m512 z = _mm512_min_ps(_mm512_set1_ps(TANH_CLAMP), ax); /* NaN: the second operand */
    __m512 e = exp_pos(_mm512_add_ps(z, z));
    __m512 big = _mm512_sub_ps(_mm512_set1_ps(1.0f),
                               _mm512_div_ps(_mm512_set1_ps(2.0f),
                                             _mm512_add_ps(e, _mm512_set1_ps(1.0f))));
    __mmask16 is_small = _mm512_cmp_ps_mask(ax, _mm512_set1_ps(TANH_SMALL), _CMP_LT_OQ);
    __m512 r = _mm512_abs_ps(_mm512_mask_blend_ps(is_small, big, small));
    /* tanh is odd: |r| with the sign of x (which also keeps -0) */
    return _mm512_castsi512_ps(_mm512_or_si512(
        _mm512_castps_si512(r),
        _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32((int)0x80000000u))));
}

static inline __mmask16 lanes(int64_t k)
{
    return k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << k) - 1u);
}

static void tanh_avx512(float *y, const float *x, size_t n)
{
    for (size_t k = 0; k < n; k += 16) {
        __mmask16 m = lanes((int64_t)(n - k));
        _mm512_mask_storeu_ps(y + k, m, tanh16(_mm512_maskz_loadu_ps(m, x + k)));
    }
}

static void row_avx512(float *s, const float *qp, const float *kt, int64_t ldk, int64_t n,
                       int64_t A, const float *w, float *t, int64_t ldt)
{
    int64_t j = 0;
    /* two vectors of keys at a time: two independent tanh chains per step */
    for (; j + 32 <= n; j += 32) {
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
        for (int64_t a = 0; a < A; a++) {
            const float *k = kt + a * ldk + j;
            __m512 q = _mm512_set1_ps(qp[a]), wa = _mm512_set1_ps(w[a]);
            __m512 t0 = tanh16(_mm512_add_ps(q, _mm512_loadu_ps(k)));
            __m512 t1 = tanh16(_mm512_add_ps(q, _mm512_loadu_ps(k + 16)));
            if (t) {
                _mm512_storeu_ps(t + a * ldt + j, t0);
                _mm512_storeu_ps(t + a * ldt + j + 16, t1);
            }
            acc0 = _mm512_fmadd_ps(wa, t0, acc0);
            acc1 = _mm512_fmadd_ps(wa, t1, acc1);
        }
        _mm512_storeu_ps(s + j, acc0);
        _mm512_storeu_ps(s + j + 16, acc1);
    }
    for (; j < n; j += 16) {
        __mmask16 m = lanes(n - j);
        __m512 acc = _mm512_setzero_ps();
        for (int64_t a = 0; a < A; a++) {
            __m512 q = _mm512_set1_ps(qp[a]);
            __m512 th = tanh16(_mm512_add_ps(q, _mm512_maskz_loadu_ps(m, kt + a * ldk + j)));
            if (t)
                _mm512_mask_storeu_ps(t + a * ldt + j, m, th);
            acc = _mm512_fmadd_ps(_mm512_set1_ps(w[a]), th, acc);
        }
        _mm512_mask_storeu_ps(s + j, m, acc);
    }
}

static void grad_q_avx512(float *dqp, float *dw, const float *ds, const float *t, int64_t ldt,
                          int64_t n, int64_t A, const float *w)
{
    __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t a = 0; a < A; a++) {
        const float *ta = t + a * ldt;
        __m512 g = _mm512_setzero_ps(), h = _mm512_setzero_ps();
        for (int64_t j = 0; j < n; j += 16) {
            __mmask16 m = lanes(n - j);
            __m512 tv = _mm512_maskz_loadu_ps(m, ta + j), d = _mm512_maskz_loadu_ps(m, ds + j);
            g = _mm512_fmadd_ps(d, _mm512_fnmadd_ps(tv, tv, one), g);
            h = _mm512_fmadd_ps(d, tv, h);
        }
        dqp[a] += w[a] * _mm512_reduce_add_ps(g);
        dw[a] += _mm512_reduce_add_ps(h);
    }
}

static void grad_k_avx512(float *dkt, int64_t lddk, const float *ds, const float *t, int64_t ldt,
                          int64_t n, int64_t A, const float *w)
{
    __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t a = 0; a < A; a++) {
        const float *ta = t + a * ldt;
        float *d = dkt + a * lddk;
        __m512 wa = _mm512_set1_ps(w[a]);
        for (int64_t j = 0; j < n; j += 16) {
            __mmask16 m = lanes(n - j);
            __m512 tv = _mm512_maskz_loadu_ps(m, ta + j);
            __m512 g = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, ds + j), _mm512_fnmadd_ps(tv, tv, one));
            _mm512_mask_storeu_ps(d + j, m, _mm512_fmadd_ps(wa, g, _mm512_maskz_loadu_ps(m, d + j)));
        }
    }
}

void attn_additive_fill_avx512(attn_kernels *t)
{
    t->tanh = tanh_avx512;
    t->additive_row = row_avx512;
    t->additive_grad_q = grad_q_avx512;
    t->additive_grad_k = grad_k_avx512;
}
