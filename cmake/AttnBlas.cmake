# Finds the BLAS that provides cblas_sgemm (CMake's FindBLAS -> BLAS::BLAS) and its cblas.h.
#   ATTN_BLAS_VENDOR: a FindBLAS BLA_VENDOR value. OpenBLAS (default), FLAME (BLIS), Generic
#                     (the system libblas), Intel10_64lp, ... or All.
# Sets ATTN_CBLAS_INCLUDE_DIR. The public header does not include cblas.h, so consumers of a
# shared libattn need neither; a static libattn.a carries BLAS::BLAS as a link dependency.
set(ATTN_BLAS_VENDOR "OpenBLAS" CACHE STRING
    "BLAS providing cblas_sgemm, as a FindBLAS BLA_VENDOR (OpenBLAS, FLAME for BLIS, Generic, All)")

set(BLA_VENDOR "${ATTN_BLAS_VENDOR}")
find_package(BLAS)
if(NOT BLAS_FOUND)
  message(FATAL_ERROR "BLAS '${ATTN_BLAS_VENDOR}' not found (Debian: apt-get install "
                      "libopenblas-dev); choose another with -DATTN_BLAS_VENDOR=...")
endif()

# Debian installs each BLAS variant in its own directory (lib/<arch>/openblas-pthread/, ...)
# with the matching header in include/<arch>/<variant>/: resolve the library to find it, so
# header and library always agree (integer width of blasint).
set(_attn_cblas_hints "")
set(_attn_cblas_suffixes "")
foreach(_lib IN LISTS BLAS_LIBRARIES)
  if(IS_ABSOLUTE "${_lib}")
    get_filename_component(_real "${_lib}" REALPATH)
    get_filename_component(_dir "${_real}" DIRECTORY)
    get_filename_component(_variant "${_dir}" NAME)
    get_filename_component(_libdir "${_lib}" DIRECTORY)
    list(APPEND _attn_cblas_suffixes "${_variant}")
    list(APPEND _attn_cblas_hints "${_libdir}/../include" "${_libdir}/../../include")
  endif()
endforeach()
list(APPEND _attn_cblas_suffixes openblas blis)
find_path(ATTN_CBLAS_INCLUDE_DIR cblas.h
  HINTS ${_attn_cblas_hints}
  PATH_SUFFIXES ${_attn_cblas_suffixes})
if(NOT ATTN_CBLAS_INCLUDE_DIR)
  message(FATAL_ERROR "cblas.h for ${BLAS_LIBRARIES} not found: set ATTN_CBLAS_INCLUDE_DIR")
endif()
message(STATUS "attn: BLAS ${ATTN_BLAS_VENDOR}: ${BLAS_LIBRARIES}; cblas.h in ${ATTN_CBLAS_INCLUDE_DIR}")
