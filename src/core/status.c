/* Status names and the per-context / per-thread error message. */
#include <stdarg.h>
#include <stdio.h>

#include "core/context.h"

/* Messages of failures that happen before a context exists (create, workspace size). */
static _Thread_local char thread_error[ATTN_ERROR_CAPACITY];

const char *attn_status_str(attn_status status)
{
    switch (status) {
    case ATTN_OK: return "ATTN_OK: success";
    case ATTN_ERR_NULL_POINTER: return "ATTN_ERR_NULL_POINTER: a required pointer is NULL";
    case ATTN_ERR_ZERO_SIZE: return "ATTN_ERR_ZERO_SIZE: a size that must be at least 1 is 0";
    case ATTN_ERR_HEADS: return "ATTN_ERR_HEADS: kv_heads does not divide q_heads";
    case ATTN_ERR_OVERFLOW: return "ATTN_ERR_OVERFLOW: sizes and strides overflow the index types";
    case ATTN_ERR_STRIDE: return "ATTN_ERR_STRIDE: a stride is negative or makes rows overlap";
    case ATTN_ERR_KV_LENS: return "ATTN_ERR_KV_LENS: a kv_lens entry is outside [0, kv_len]";
    case ATTN_ERR_WINDOW: return "ATTN_ERR_WINDOW: a window bound is outside [-1, ATTN_MAX_DISTANCE]";
    case ATTN_ERR_OFFSET: return "ATTN_ERR_OFFSET: q_offset is outside +-ATTN_MAX_DISTANCE";
    case ATTN_ERR_SCALE: return "ATTN_ERR_SCALE: scale is NaN or infinite";
    case ATTN_ERR_BAD_OPTION: return "ATTN_ERR_BAD_OPTION: unknown or conflicting option value";
    case ATTN_ERR_STRUCT_SIZE: return "ATTN_ERR_STRUCT_SIZE: struct_size does not match this library";
    case ATTN_ERR_LIMIT: return "ATTN_ERR_LIMIT: a size exceeds a documented limit";
    case ATTN_ERR_ALIAS: return "ATTN_ERR_ALIAS: an output overlaps an input or another output";
    case ATTN_ERR_WORKSPACE_SIZE: return "ATTN_ERR_WORKSPACE_SIZE: the workspace is too small";
    case ATTN_ERR_WORKSPACE_ALIGN: return "ATTN_ERR_WORKSPACE_ALIGN: the workspace is misaligned";
    case ATTN_ERR_NO_MEMORY: return "ATTN_ERR_NO_MEMORY: the allocator returned NULL";
    case ATTN_ERR_THREADS: return "ATTN_ERR_THREADS: a worker thread could not be started";
    case ATTN_ERR_BUSY: return "ATTN_ERR_BUSY: the context is in use by another call";
    case ATTN_ERR_FORKED: return "ATTN_ERR_FORKED: the context was inherited across fork()";
    case ATTN_ERR_CAPACITY: return "ATTN_ERR_CAPACITY: the K/V cache has no room for the tokens";
    }
    return "unknown status";
}

attn_status attn_fail(attn_ctx *ctx, attn_status status, const char *fmt, ...)
{
    char *buf = ctx ? ctx->error : thread_error;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, ATTN_ERROR_CAPACITY, fmt, ap);
    va_end(ap);
    return status;
}

void attn_clear_error(attn_ctx *ctx)
{
    ctx->error[0] = '\0';
}

const char *attn_last_error(const attn_ctx *ctx)
{
    return ctx ? ctx->error : thread_error;
}
