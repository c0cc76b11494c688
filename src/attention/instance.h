/* One validated forward call: the caller's arguments plus the values derived from them. */
#ifndef ATTN_ATTENTION_INSTANCE_H
#define ATTN_ATTENTION_INSTANCE_H

#include "core/context.h"
#include "mask/visibility.h"

typedef struct attn_instance {
    const attn_args *args;
    attn_visibility vis; /* with q_offset resolved */
    int ldq, ldk, ldv;   /* BLAS leading dimensions of the Q, K and V row blocks */
} attn_instance;

/*
 * Checks every argument of attn_forward against the context's descriptor and fills *inst.
 * Returns ATTN_OK or the first violation, with the message recorded in ctx. Reads only.
 */
attn_status attn_validate_args(attn_ctx *ctx, const attn_args *args, attn_instance *inst);

#endif
