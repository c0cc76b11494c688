/*
 * attn_forward_cache: the forward operation with K and V read from a cache's blocks. A paged
 * key/value source hands the engine a block's rows in place (float32) or widened into the
 * thread's convert buffer (16-bit); the engine never lets a tile cross a block (source->block),
 * so a tile is always one run of consecutive rows. Everything else is attn_forward's.
 */
#include "attention/forward.h"
#include "cache/kv_cache.h"
#include "core/guard.h"
#include "engine/scratch.h"

typedef struct paged_source {
    attn_kv_source base; /* first: the engine sees only this */
    const attn_kv_cache *cache;
    const uint32_t *seq_ids;
} paged_source;

static attn_kv_tile paged_tile(const attn_kv_source *src, int which, int64_t b, int64_t g,
                               int64_t j0, int64_t n, float *convert, int raw)
{
    const paged_source *ps = (const paged_source *)(const void *)src;
    const attn_kv_cache *c = ps->cache;
    const int32_t *table = attn_kv_cache_table(c, ps->seq_ids[b]);
    int64_t B = c->block_tokens, width = src->width[which];
    const char *rows = c->blocks + table[j0 / B] * c->block_bytes + (which ? c->v_offset : 0) +
                       (g * B + j0 % B) * width * c->esize;
    if (raw || c->elem_dtype == ATTN_DTYPE_F32) {
        attn_kv_tile t = {rows, (int)width, c->elem_dtype};
        return t;
    }
    return attn_kv_widen_rows(src, rows, width, c->elem_dtype, n, width,
                              convert + which * src->convert_stride);
}

static int64_t paged_keys(const attn_kv_source *src, int64_t b)
{
    const paged_source *ps = (const paged_source *)(const void *)src;
    return (int64_t)attn_kv_cache_seq_len(ps->cache, ps->seq_ids[b]);
}

static void paged_source_init(paged_source *ps, const attn_ctx *ctx, const attn_kv_cache *cache,
                              const uint32_t *seq_ids)
{
    attn_kv_source *s = &ps->base;
    s->tile = paged_tile;
    s->keys = paged_keys;
    s->block = cache->block_tokens;
    s->kernels = ctx->kernels;
    s->convert_stride = attn_convert_tile_floats(ctx);
    s->width[ATTN_KV_KEYS] = cache->desc.qk_dim;
    s->width[ATTN_KV_VALUES] = cache->desc.v_dim;
    for (int i = 0; i < 2; i++) { /* unused by this source, set for clarity */
        s->base[i] = NULL;
        s->dtype[i] = cache->elem_dtype;
        s->ld[i] = (int)s->width[i];
    }
    ps->cache = cache;
    ps->seq_ids = seq_ids;
}

static const char *dtype_name(uint32_t kv_dtype)
{
    return kv_dtype == ATTN_KV_F32 ? "ATTN_KV_F32" : kv_dtype == ATTN_KV_F16 ? "ATTN_KV_F16"
                                                                            : "ATTN_KV_BF16";
}

/* The cache-specific checks; on success *kv_len is the key extent of the call. */
static attn_status check_cache(attn_ctx *ctx, const attn_args *a, const attn_kv_cache *cache,
                               const uint32_t *seq_ids, int64_t *kv_len)
{
    const attn_desc *d = &ctx->desc;
    if (!cache || !seq_ids)
        return attn_fail(ctx, ATTN_ERR_NULL_POINTER, "%s is NULL", !cache ? "cache" : "seq_ids");
    if (a->batch == 0)
        return attn_fail(ctx, ATTN_ERR_ZERO_SIZE, "args->batch is 0");
    const attn_kv_cache_desc *cd = &cache->desc;
    if (cd->kv_heads != d->kv_heads || cd->qk_dim != d->qk_dim || cd->v_dim != d->v_dim ||
        cd->dtype != d->kv_dtype)
        return attn_fail(ctx, ATTN_ERR_BAD_OPTION,
                         "the cache (kv_heads %u, qk_dim %u, v_dim %u, dtype %s) does not match "
                         "the context (kv_heads %u, qk_dim %u, v_dim %u, kv_dtype %s)",
                         cd->kv_heads, cd->qk_dim, cd->v_dim, dtype_name(cd->dtype), d->kv_heads,
                         d->qk_dim, d->v_dim, dtype_name(d->kv_dtype));
    uint64_t longest = 0;
    for (uint32_t b = 0; b < a->batch; b++) {
        if (seq_ids[b] >= cd->max_seqs)
            return attn_fail(ctx, ATTN_ERR_LIMIT, "seq_ids[%u] = %u is outside [0, max_seqs = %u)",
                             b, seq_ids[b], cd->max_seqs);
        uint64_t len = attn_kv_cache_seq_len(cache, seq_ids[b]);
        longest = len > longest ? len : longest;
    }
    if (a->kv_len != 0 && a->kv_len < longest)
        return attn_fail(ctx, ATTN_ERR_KV_LENS,
                         "args->kv_len = %u is below the %llu tokens of a chosen sequence",
                         a->kv_len, (unsigned long long)longest);
    int64_t extent = a->kv_len ? (int64_t)a->kv_len : (int64_t)longest;
    if (extent == 0 && (a->mask || a->bias || a->weights))
        return attn_fail(ctx, ATTN_ERR_ZERO_SIZE,
                         "every chosen sequence is empty and args->kv_len is 0: mask, bias and "
                         "weights have no key extent");
    *kv_len = extent ? extent : 1; /* empty sequences: rows see no key; no tensor uses the 1 */
    return ATTN_OK;
}

attn_status attn_forward_cache(attn_ctx *ctx, const attn_args *args, const attn_kv_cache *cache,
                               const uint32_t *seq_ids)
{
    if (!ctx)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "ctx is NULL");
    attn_status st = attn_call_enter(ctx);
    if (st != ATTN_OK)
        return st;
    attn_args a;
    attn_forward_call c;
    paged_source ps;
    int64_t kv_len = 0;
    if ((st = attn_forward_load(ctx, args, &a)) == ATTN_OK &&
        (st = check_cache(ctx, &a, cache, seq_ids, &kv_len)) == ATTN_OK &&
        (st = attn_forward_check_loaded(ctx, &a, &c, kv_len)) == ATTN_OK) {
        paged_source_init(&ps, ctx, cache, seq_ids);
        c.p.kv = &ps.base;
        attn_forward_execute(ctx, &c);
    }
    attn_call_leave(ctx);
    return st;
}
