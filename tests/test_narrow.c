/*
 * The narrowing kernels (float to 16-bit key/value elements, used when a K/V cache stores
 * binary16 or bfloat16): the scalar one against independent references — the compiler's own
 * _Float16 conversion for binary16, and for bfloat16 the nearest of the two neighbouring
 * bfloat16 values chosen in double precision (ties to even, overflow past the largest finite
 * value plus half an ulp to infinity) — on every sign/exponent/top-mantissa pattern combined
 * with the low bits that decide rounding (ties, one below and above them) and on a million
 * random patterns; every vector variant bit for bit equal to the scalar one on the same inputs
 * and on every length and start from 1 to 40, nothing written past the end.
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

__extension__ typedef _Float16 test_half;

#include "dispatch/dispatch.h"

/* Low 16 bits that decide rounding: binary16 rounds at bit 12 (result lsb bit 13), bfloat16 at
 * bit 15 (result lsb bit 16, in the upper half); ties, one either side, with and without the
 * result's lsb. */
static const uint16_t low_bits[] = {0x0000, 0x0001, 0x0FFF, 0x1000, 0x1001, 0x2FFF, 0x3000,
                                    0x3001, 0x7FFF, 0x8000, 0x8001, 0xFFFF, 0x5A5A, 0xE000};
enum { LOWS = sizeof low_bits / sizeof low_bits[0], RANDOM = 1 << 20,
       COUNT = 65536 * LOWS + RANDOM };

static float *input;
static uint16_t *got, *want;

static float from_bits(uint32_t b)
{
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

static uint32_t bits_of(float f)
{
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return b;
}

static int setup(void **state)
{
    (void)state;
    input = malloc(sizeof *input * COUNT);
    got = malloc(sizeof *got * (COUNT + 64));
    want = malloc(sizeof *want * COUNT);
    if (!input || !got || !want)
        return -1;
    size_t n = 0;
    for (uint32_t hi = 0; hi < 65536; hi++)
        for (int l = 0; l < LOWS; l++)
            input[n++] = from_bits(hi << 16 | low_bits[l]);
    uint64_t s = 0x9E3779B97F4A7C15u;
    while (n < COUNT) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        input[n++] = from_bits((uint32_t)(s >> 16));
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    free(input), free(got), free(want);
    return 0;
}

/* The bfloat16 nearest to x, found without the kernels' bit trick. */
static uint16_t bf16_reference(float x)
{
    uint32_t b = bits_of(x), sign = b & 0x80000000u, mag = b & 0x7FFFFFFFu;
    if (mag > 0x7F800000u) /* NaN: stays NaN, quiet, sign and top payload kept */
        return (uint16_t)((b >> 16) | 0x40u);
    uint32_t lo = mag & 0xFFFF0000u, hi = lo + 0x10000u;
    if (lo == mag)
        return (uint16_t)((sign | lo) >> 16);
    double v = fabs((double)x), vlo = (double)from_bits(lo);
    double vhi = hi == 0x7F800000u ? ldexp(1.0, 128) : (double)from_bits(hi);
    uint32_t pick = v - vlo < vhi - v ? lo : v - vlo > vhi - v ? hi : ((lo >> 16) & 1u) ? hi : lo;
    return (uint16_t)((sign | pick) >> 16);
}

static void test_scalar_against_references(void **state)
{
    (void)state;
    const attn_kernels *k = attn_dispatch_lookup("scalar");
    k->narrow(got, input, COUNT, ATTN_WIDEN_F16);
    long nans = 0, ties = 0;
    for (size_t i = 0; i < COUNT; i++) {
        test_half h = (test_half)input[i];
        uint16_t r;
        memcpy(&r, &h, sizeof r);
        if (isnan(input[i])) { /* NaN: a quiet binary16 NaN with the sign */
            nans++;
            if ((got[i] & 0x7E00u) != 0x7E00u || (got[i] & 0x8000u) != (r & 0x8000u))
                fail_msg("f16 of NaN %08x: got %04x", bits_of(input[i]), got[i]);
            continue;
        }
        ties += (bits_of(input[i]) & 0x1FFFu) == 0x1000u;
        if (got[i] != r)
            fail_msg("f16 of %a (%08x): got %04x, want %04x", (double)input[i],
                     bits_of(input[i]), got[i], r);
    }
    k->narrow(got, input, COUNT, ATTN_WIDEN_BF16);
    for (size_t i = 0; i < COUNT; i++) {
        uint16_t r = bf16_reference(input[i]);
        if (got[i] != r)
            fail_msg("bf16 of %a (%08x): got %04x, want %04x", (double)input[i],
                     bits_of(input[i]), got[i], r);
    }
    print_message("%d inputs (%ld NaNs, %ld binary16 ties) equal to the references\n", COUNT,
                  nans, ties);
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
            scalar->narrow(want, input, COUNT, dtype);
            k->narrow(got, input, COUNT, dtype);
            for (size_t i = 0; i < COUNT; i++)
                if (got[i] != want[i])
                    fail_msg("%s dtype %u: %08x gives %04x, scalar %04x", isas[t], dtype,
                             bits_of(input[i]), got[i], want[i]);
            for (size_t start = 0; start < 20; start++)
                for (size_t n = 1; n <= 40; n++) {
                    for (size_t i = 0; i < n + 8; i++)
                        got[i] = 0xBEEF;
                    k->narrow(got, input + 4321 + start * 97, n, dtype);
                    assert_memory_equal(got, want + 4321 + start * 97, n * sizeof *got);
                    for (size_t i = n; i < n + 8; i++)
                        assert_int_equal(got[i], 0xBEEF); /* nothing written past n */
                }
        }
    }
    print_message("%d vector variants equal to the scalar narrowing\n", tested);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_scalar_against_references),
                                       cmocka_unit_test(test_variants_equal_scalar)};
    return cmocka_run_group_tests_name("narrow", tests, setup, teardown);
}
