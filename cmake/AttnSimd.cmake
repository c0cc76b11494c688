# Per-ISA kernel sources, each compiled with its own flags after a check that the compiler
# accepts them; the run-time dispatcher decides whether the CPU may execute them.
# Sets ATTN_SIMD_SOURCES and ATTN_SIMD_DEFINITIONS.
include(CheckCSourceCompiles)
set(ATTN_SIMD_SOURCES "")
set(ATTN_SIMD_DEFINITIONS "")

if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64|i[3-6]86)$")
  set(CMAKE_REQUIRED_FLAGS "-mavx2 -mfma")
  check_c_source_compiles("#include <immintrin.h>
    int main(void) { __m256 x = _mm256_fmadd_ps(_mm256_set1_ps(1.f), _mm256_set1_ps(2.f), _mm256_setzero_ps());
                     return (int)_mm256_cvtss_f32(x); }" ATTN_COMPILER_AVX2)
  set(CMAKE_REQUIRED_FLAGS "-mavx512f -mavx2 -mfma")
  check_c_source_compiles("#include <immintrin.h>
    int main(void) { __m512 x = _mm512_set1_ps(1.f);
                     return (int)_mm512_reduce_add_ps(_mm512_maskz_mov_ps((__mmask16)3, x)); }"
                          ATTN_COMPILER_AVX512)
  unset(CMAKE_REQUIRED_FLAGS)
  if(ATTN_COMPILER_AVX2)
    list(APPEND ATTN_SIMD_SOURCES src/kernels/x86/softmax_avx2.c src/kernels/x86/dropout_avx2.c
      src/kernels/x86/widen_avx2.c src/kernels/x86/narrow_avx2.c)
    list(APPEND ATTN_SIMD_SOURCES src/kernels/x86/additive_avx2.c)
    list(APPEND ATTN_SIMD_DEFINITIONS ATTN_HAVE_AVX2)
    set_source_files_properties(src/kernels/x86/additive_avx2.c PROPERTIES COMPILE_OPTIONS "-mavx2;-mfma")
    set_source_files_properties(src/kernels/x86/softmax_avx2.c PROPERTIES COMPILE_OPTIONS "-mavx2;-mfma")
    set_source_files_properties(src/kernels/x86/dropout_avx2.c PROPERTIES COMPILE_OPTIONS "-mavx2")
    set_source_files_properties(src/kernels/x86/widen_avx2.c src/kernels/x86/narrow_avx2.c
      PROPERTIES COMPILE_OPTIONS "-mavx2;-mf16c")
  endif()
  if(ATTN_COMPILER_AVX512)
    list(APPEND ATTN_SIMD_SOURCES src/kernels/x86/softmax_avx512.c src/kernels/x86/dropout_avx512.c
      src/kernels/x86/widen_avx512.c src/kernels/x86/narrow_avx512.c src/kernels/x86/thin_avx512.c)
    list(APPEND ATTN_SIMD_SOURCES src/kernels/x86/additive_avx512.c)
    list(APPEND ATTN_SIMD_DEFINITIONS ATTN_HAVE_AVX512)
    set_source_files_properties(src/kernels/x86/additive_avx512.c PROPERTIES COMPILE_OPTIONS "-mavx512f;-mavx2;-mfma")
    set_source_files_properties(src/kernels/x86/softmax_avx512.c PROPERTIES COMPILE_OPTIONS "-mavx512f;-mavx2;-mfma")
    set_source_files_properties(src/kernels/x86/dropout_avx512.c PROPERTIES COMPILE_OPTIONS "-mavx512f;-mavx2")
    set_source_files_properties(src/kernels/x86/widen_avx512.c src/kernels/x86/narrow_avx512.c
      PROPERTIES COMPILE_OPTIONS "-mavx512f;-mavx2;-mf16c")
    set_source_files_properties(src/kernels/x86/thin_avx512.c PROPERTIES COMPILE_OPTIONS "-mavx512f;-mavx2;-mfma;-mf16c")
  endif()
endif()
message(STATUS "attn: SIMD kernels: scalar ${ATTN_SIMD_DEFINITIONS}")
