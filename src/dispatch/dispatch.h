/* Choice of the kernel table, made once per process. */
#ifndef ATTN_DISPATCH_DISPATCH_H
#define ATTN_DISPATCH_DISPATCH_H

#include "kernels/softmax.h"

/* The table this process uses: the best variant the CPU runs, unless ATTN_ISA names another. */
const attn_kernels *attn_dispatch_kernels(void);

/* The table for an ISA name ("scalar", "avx2", "avx512") if compiled in and runnable here,
 * else NULL. Lets tests compare every variant with the scalar one in one process. */
const attn_kernels *attn_dispatch_lookup(const char *isa);

#endif
