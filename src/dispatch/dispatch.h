/* Choice of the kernel table, made once per process. */
#ifndef ATTN_DISPATCH_DISPATCH_H
#define ATTN_DISPATCH_DISPATCH_H

#include "kernels/softmax.h"

/* The table this process uses: the best variant the CPU runs, unless ATTN_ISA names another. */
const attn_kernels *attn_dispatch_kernels(void);

/* The table for an ISA name ("scalar", "avx2", "avx512") if compiled in and runnable here,
 * else NULL. Lets tests compare every variant with the scalar one in one process. */
const attn_kernels *attn_dispatch_lookup(const char *isa);

/* The thin-kernel policy from ATTN_DECODE, read once: -1 "blas" (never the thin kernels),
 * 1 "fused" (always, for rows <= ATTN_THIN_ROWS, also with the scalar kernels: for tests),
 * 0 otherwise (where the table prefers them). */
int attn_dispatch_thin_mode(void);

#endif
