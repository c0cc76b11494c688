# Finds the CBLAS that provides cblas_sgemm and exposes it as the interface target attn_blas.
# ATTN_BLAS selects it: "OpenBLAS" (default) or "Generic" (CMake's FindBLAS, honouring BLA_VENDOR).
set(ATTN_BLAS "OpenBLAS" CACHE STRING "BLAS providing cblas_sgemm: OpenBLAS or Generic")
set_property(CACHE ATTN_BLAS PROPERTY STRINGS OpenBLAS Generic)

if(ATTN_BLAS STREQUAL "OpenBLAS")
  find_library(ATTN_BLAS_LIBRARIES NAMES openblas)
  find_path(ATTN_CBLAS_INCLUDE_DIR cblas.h PATH_SUFFIXES openblas openblas-pthread)
  if(NOT ATTN_BLAS_LIBRARIES OR NOT ATTN_CBLAS_INCLUDE_DIR)
    message(FATAL_ERROR "OpenBLAS not found (Debian: apt-get install libopenblas-dev); "
                        "or configure with -DATTN_BLAS=Generic")
  endif()
elseif(ATTN_BLAS STREQUAL "Generic")
  find_package(BLAS REQUIRED)
  set(ATTN_BLAS_LIBRARIES ${BLAS_LIBRARIES})
  find_path(ATTN_CBLAS_INCLUDE_DIR cblas.h PATH_SUFFIXES openblas blis)
  if(NOT ATTN_CBLAS_INCLUDE_DIR)
    message(FATAL_ERROR "cblas.h not found: set ATTN_CBLAS_INCLUDE_DIR")
  endif()
else()
  message(FATAL_ERROR "ATTN_BLAS must be OpenBLAS or Generic, not '${ATTN_BLAS}'")
endif()
message(STATUS "attn: BLAS ${ATTN_BLAS}: ${ATTN_BLAS_LIBRARIES} (cblas.h in ${ATTN_CBLAS_INCLUDE_DIR})")

add_library(attn_blas INTERFACE)
target_include_directories(attn_blas INTERFACE $<BUILD_INTERFACE:${ATTN_CBLAS_INCLUDE_DIR}>)
target_link_libraries(attn_blas INTERFACE $<BUILD_INTERFACE:${ATTN_BLAS_LIBRARIES}>)
