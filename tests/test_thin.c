/*
 * The thin (streaming) kernels against float64, for every compiled variant: scores and value
 * accumulation for 1..16 rows, 1..256 keys, head dims 1..300 (masked tails), float, float16 and
 * bfloat16 elements with row padding, weights with exact zeros (hidden keys, whose value rows
 * may hold NaN and must not leak into the result). Bound per element: (n + 2) u Σ|terms|.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dispatch/dispatch.h"
#include "support/util.h"

#define U 0x1p-24

static double value_of(const void *base, int64_t i, uint32_t dtype)
{
    if (dtype == 0)
        return ((const float *)base)[i];
    uint16_t h = ((const uint16_t *)base)[i];
    if (dtype == ATTN_WIDEN_BF16) {
        uint32_t bits = (uint32_t)h << 16;
        float f;
        memcpy(&f, &bits, 4);
        return f;
    }
    /* binary16 by its definition */
    int e = (h >> 10) & 31, m = h & 1023;
    double v = e ? ldexp(1.0 + m / 1024.0, e - 15) : ldexp(m / 1024.0, -14);
    return (h & 0x8000) ? -v : v;
}

static void test_thin_kernels(void **state)
{
    (void)state;
    const char *isas[] = {"scalar", "avx2", "avx512"};
    rng r = {17};
    long checked = 0;
    for (int t = 0; t < 3; t++) {
        const attn_kernels *k = attn_dispatch_lookup(isas[t]);
        if (!k)
            continue;
        for (int trial = 0; trial < 300; trial++) {
            int64_t rows = 1 + rng_below(&r, ATTN_THIN_ROWS), n = 1 + rng_below(&r, 256);
            int64_t dk = 1 + rng_below(&r, 300), pad = rng_below(&r, 5);
            uint32_t dtype = (uint32_t)rng_below(&r, 3); /* 0, F16, BF16 */
            int64_t ld = dk + pad, esize = dtype ? 2 : 4;
            float *q = random_floats(&r, (size_t)(rows * dk), 1.0);
            char *kv = xcalloc((size_t)(n * ld), (size_t)esize);
            for (int64_t i = 0; i < n * ld; i++) {
                float x = (float)rng_normal(&r);
                if (dtype == 0)
                    ((float *)(void *)kv)[i] = x;
                else /* any bits of a finite value: exponent kept away from 31 */
                    ((uint16_t *)(void *)kv)[i] = (uint16_t)((rng_next(&r) & 0xBFFF) | (dtype == ATTN_WIDEN_F16 ? 0 : 0x3C00));
            }
            float *scores = xcalloc((size_t)(rows * 256), sizeof(float));
            float scale = (float)rng_uniform(&r, -1.0, 1.0);
            k->thin_scores(scores, 256, q, dk, rows, kv, ld, dtype, n, dk, scale);
            for (int64_t row = 0; row < rows; row++)
                for (int64_t c = 0; c < n; c++) {
                    double sum = 0.0, mag = 0.0;
                    for (int64_t d = 0; d < dk; d++) {
                        double x = (double)q[row * dk + d] * value_of(kv, c * ld + d, dtype);
                        sum += x, mag += fabs(x);
                    }
                    double want = sum * scale, tol = (double)(dk + 3) * U * mag * fabs(scale) + 1e-30;
                    if (!(fabs(scores[row * 256 + c] - want) <= tol))
                        fail_msg("%s thin_scores rows=%lld n=%lld dk=%lld dtype=%u: [%lld,%lld] %g vs %g",
                                 isas[t], (long long)rows, (long long)n, (long long)dk, dtype,
                                 (long long)row, (long long)c, (double)scores[row * 256 + c], want);
                    checked++;
                }
            /* values: weights with zeros; the rows they hide hold NaN in float tiles */
            float *p = xcalloc((size_t)(rows * 256), sizeof(float));
            for (int64_t i = 0; i < rows * 256; i++)
                p[i] = rng_below(&r, 4) ? (float)rng_uniform(&r, 0.0, 1.0) : 0.0f;
            if (dtype == 0)
                for (int64_t c = 0; c < n; c++) {
                    int hidden = 1;
                    for (int64_t row = 0; row < rows; row++)
                        hidden &= p[row * 256 + c] == 0.0f;
                    if (hidden)
                        ((float *)(void *)kv)[c * ld] = NAN;
                }
            float *acc = random_floats(&r, (size_t)(rows * dk), 1.0), *acc0 = xcalloc((size_t)(rows * dk), sizeof(float));
            memcpy(acc0, acc, (size_t)(rows * dk) * sizeof(float));
            k->thin_values(acc, dk, p, 256, rows, kv, ld, dtype, n, dk);
            for (int64_t row = 0; row < rows; row++)
                for (int64_t e = 0; e < dk; e++) {
                    double sum = acc0[row * dk + e], mag = fabs(sum);
                    for (int64_t c = 0; c < n; c++)
                        if (p[row * 256 + c] != 0.0f) {
                            double x = p[row * 256 + c] * value_of(kv, c * ld + e, dtype);
                            sum += x, mag += fabs(x);
                        }
                    double tol = (double)(n + 3) * U * mag + 1e-30;
                    if (!(fabs(acc[row * dk + e] - sum) <= tol))
                        fail_msg("%s thin_values rows=%lld n=%lld dv=%lld dtype=%u: [%lld,%lld] %g vs %g",
                                 isas[t], (long long)rows, (long long)n, (long long)dk, dtype,
                                 (long long)row, (long long)e, (double)acc[row * dk + e], sum);
                    checked++;
                }
            free(q), free(kv), free(scores), free(p), free(acc), free(acc0);
        }
    }
    print_message("%ld thin-kernel results checked against float64\n", checked);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_thin_kernels)};
    return cmocka_run_group_tests_name("thin", tests, NULL, NULL);
}
