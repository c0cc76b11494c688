/*
 * The widening kernels (16-bit key/value elements to float): the scalar one against the
 * compiler's own _Float16 conversion (binary16) and the definition (bfloat16 is the upper half
 * of a float) for all 65,536 bit patterns, NaN payloads included; every vector variant bit for
 * bit equal to the scalar one on every pattern (binary16 NaNs come out quiet, as the hardware
 * conversions make them) and on every length and start from 1 to 40.
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

/* The compiler's binary16 type: an independent conversion to check against. */
__extension__ typedef _Float16 test_half;

#include "dispatch/dispatch.h"

static uint16_t all[65536];
static float got[65536 + 64], want[65536];

static void test_scalar_against_definition(void **state)
{
    (void)state;
    const attn_kernels *k = attn_dispatch_lookup("scalar");
    for (uint32_t i = 0; i < 65536; i++)
        all[i] = (uint16_t)i;
    k->widen(got, all, 65536, ATTN_WIDEN_F16);
    for (uint32_t i = 0; i < 65536; i++) {
        test_half h;
        memcpy(&h, &all[i], sizeof h);
        float f = (float)h;
        if (memcmp(&f, &got[i], sizeof f) != 0 && !(isnan(f) && isnan(got[i])))
            fail_msg("f16 %04x: got %a, want %a", i, (double)got[i], (double)f);
        uint32_t gb, fb;
        memcpy(&gb, &got[i], 4), memcpy(&fb, &f, 4);
        if (isnan(f) && (gb & 0x007FE000u) != (fb & 0x007FE000u)) /* payload kept */
            fail_msg("f16 NaN %04x: payload %08x, want %08x", i, gb, fb);
    }
    k->widen(got, all, 65536, ATTN_WIDEN_BF16);
    for (uint32_t i = 0; i < 65536; i++) {
        uint32_t bits = i << 16, gb;
        memcpy(&gb, &got[i], 4);
        if (gb != bits)
            fail_msg("bf16 %04x: got %08x", i, gb);
    }
}

static void test_variants_equal_scalar(void **state)
{
    (void)state;
    const attn_kernels *scalar = attn_dispatch_lookup("scalar");
    const char *isas[] = {"avx2", "avx512"};
    int tested = 0;
    for (int t = 0; t < 2; t++) {
        const attn_kernels *k = attn_dispatch_lookup(isas[t]);
        if (!k)
            continue;
        tested++;
        for (uint32_t dtype = ATTN_WIDEN_F16; dtype <= ATTN_WIDEN_BF16; dtype++) {
            scalar->widen(want, all, 65536, dtype);
            k->widen(got, all, 65536, dtype);
            assert_memory_equal(got, want, sizeof want);
            for (size_t start = 0; start < 20; start++)
                for (size_t n = 1; n <= 40; n++) {
                    for (size_t i = 0; i < n + 8; i++)
                        got[i] = -7.0f;
                    k->widen(got, all + 0x3C00 + start * 97, n, dtype);
                    assert_memory_equal(got, want + 0x3C00 + start * 97, n * sizeof(float));
                    for (size_t i = n; i < n + 8; i++)
                        assert_true(got[i] == -7.0f); /* nothing written past n */
                }
        }
    }
    print_message("%d vector variants equal to the scalar widening\n", tested);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_scalar_against_definition),
                                       cmocka_unit_test(test_variants_equal_scalar)};
    return cmocka_run_group_tests_name("widen", tests, NULL, NULL);
}
