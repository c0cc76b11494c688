/* CPU feature detection. A feature counts only if cpuid reports it *and* the OS saves the
 * registers it uses (XCR0), otherwise executing it faults even though the CPU has it. */
#include "dispatch/cpu_features.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <stdint.h>

static uint64_t read_xcr0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

attn_cpu_features attn_cpu_features_detect(void)
{
    attn_cpu_features f = {false, false, false};
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return f;
    int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, f16c = (c >> 29) & 1;
    if (!osxsave || !avx)
        return f;
    uint64_t xcr0 = read_xcr0();
    int ymm_state = (xcr0 & 0x6) == 0x6;     /* SSE and AVX state */
    int zmm_state = (xcr0 & 0xe6) == 0xe6;   /* plus opmask, ZMM_Hi256, Hi16_ZMM */
    f.f16c = ymm_state && f16c;
    if (__get_cpuid_max(0, 0) < 7)
        return f;
    __cpuid_count(7, 0, a, b, c, d);
    int avx2 = (b >> 5) & 1, avx512f = (b >> 16) & 1;
    f.avx2_fma = ymm_state && avx2 && fma;
    f.avx512f = zmm_state && avx512f && f.avx2_fma;
    return f;
}
#else
attn_cpu_features attn_cpu_features_detect(void)
{
    attn_cpu_features f = {false, false, false};
    return f;
}
#endif
