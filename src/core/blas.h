/* The one place the CBLAS header is included, so the BLAS choice stays a build setting. */
#ifndef ATTN_CORE_BLAS_H
#define ATTN_CORE_BLAS_H

#include <cblas.h>

#endif
