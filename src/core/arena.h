/*
 * A bump allocator over the context's single block, the way zstd carves its workspace: each part
 * of the context takes its aligned piece in turn, and nothing is ever freed on its own. The same
 * code sizes the block and carves it: with a NULL base the arena only counts (every piece comes
 * back NULL), so the size query and the layout can never disagree.
 */
#ifndef ATTN_CORE_ARENA_H
#define ATTN_CORE_ARENA_H

#include <stddef.h>

#include <attn/attn.h>

typedef struct attn_arena {
    char *base;  /* NULL while measuring */
    size_t used; /* bytes taken so far, each piece rounded up to ATTN_WORKSPACE_ALIGN */
} attn_arena;

static inline size_t attn_align_up(size_t n)
{
    return (n + ATTN_WORKSPACE_ALIGN - 1) & ~(size_t)(ATTN_WORKSPACE_ALIGN - 1);
}

/* The next `bytes` of the arena, ATTN_WORKSPACE_ALIGN-aligned (NULL while measuring). Callers'
 * sizes are bounded by ATTN_MAX_HEAD_DIM and ATTN_MAX_THREADS, far from overflowing size_t. */
static inline void *attn_arena_take(attn_arena *a, size_t bytes)
{
    char *p = a->base ? a->base + a->used : NULL;
    a->used += attn_align_up(bytes);
    return p;
}

#endif
