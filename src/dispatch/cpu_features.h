/* What the CPU and the operating system together allow this process to execute. */
#ifndef ATTN_DISPATCH_CPU_FEATURES_H
#define ATTN_DISPATCH_CPU_FEATURES_H

#include <stdbool.h>

typedef struct attn_cpu_features {
    bool avx2_fma; /* AVX2 and FMA instructions, YMM state enabled in XCR0 */
    bool avx512f;  /* AVX-512F instructions, ZMM and opmask state enabled in XCR0 */
    bool f16c;     /* F16C half-precision conversions, YMM state enabled */
} attn_cpu_features;

attn_cpu_features attn_cpu_features_detect(void);

#endif
