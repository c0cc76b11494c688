/* Scalar conversions of 16-bit floating-point elements, shared by the portable kernels. */
#ifndef ATTN_KERNELS_HALF_H
#define ATTN_KERNELS_HALF_H

#include <stdint.h>
#include <string.h>

/* IEEE binary16 -> binary32, every case: zero, subnormal, normal, infinity, NaN (quieted, as
 * the conversion instructions do; the rest of the payload kept). */
static inline float attn_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
    uint32_t bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13) | (man ? 0x00400000u : 0u);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal: normalise; the value man * 2^-24 is a normal float */
        int shift = 0;
        while (!(man & 0x400u)) {
            man <<= 1;
            shift++;
        }
        bits = sign | ((uint32_t)(113 - shift) << 23) | ((man & 0x3FFu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* binary32 -> IEEE binary16, rounded to nearest even: values from 65520 up become infinity,
 * those below 2^-14 binary16 subnormals (or zero); a NaN comes out quiet with the top of its
 * payload, as vcvtps2ph gives it. */
static inline uint16_t attn_float_to_half(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7FFFFFFFu;
    if (ax > 0x7F800000u)
        return (uint16_t)(sign | 0x7E00u | ((ax >> 13) & 0x3FFu));
    if (ax >= 0x477FF000u) /* 65520 and up, infinity included */
        return (uint16_t)(sign | 0x7C00u);
    if (ax >= 0x38800000u) { /* a normal binary16: rebias the exponent, round the mantissa */
        uint32_t r = ax - 0x38000000u;
        r += 0xFFFu + ((r >> 13) & 1u);
        return (uint16_t)(sign | (r >> 13));
    }
    uint32_t e = ax >> 23; /* a subnormal binary16 (or zero): |f| * 2^24 rounded to an integer */
    if (e < 102) /* below 2^-25: rounds to zero (float subnormals included) */
        return (uint16_t)sign;
    uint32_t mant = (ax & 0x7FFFFFu) | 0x800000u, shift = 126 - e; /* 14 .. 24 */
    uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u)))
        q++;
    return (uint16_t)(sign | q);
}

/* binary32 -> bfloat16, rounded to nearest even (overflow to infinity); a NaN comes out quiet
 * with the top of its payload. */
static inline uint16_t attn_float_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u)
        return (uint16_t)((x >> 16) | 0x40u);
    x += 0x7FFFu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

/* bfloat16 -> binary32: the upper half of the float. */
static inline float attn_bf16_to_float(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

#endif
