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

/* bfloat16 -> binary32: the upper half of the float. */
static inline float attn_bf16_to_float(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

#endif
