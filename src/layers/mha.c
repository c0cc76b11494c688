/*
 * The multi-head attention layer (include/attn/attn_mha.h): input projections, attn_forward /
 * attn_backward on the projected heads, output projection, and their gradients.
 *
 * Every product is a single-threaded cblas_sgemm over a fixed block of rows (forward
 * projections and input gradients: ROW_BLOCK rows of the B·L rows) or of output features
 * (weight gradients: FEAT_BLOCK rows of the weight, each reducing over all B·L rows in one
 * product), run on the context's worker pool. Which thread runs a block varies, what a block
 * computes does not, so results are bitwise identical for any thread count. Bias gradients
 * are column sums in a fixed row order.
 *
 * Per-call memory is the caller's: the activations buffer holds the projected Q, K, V (or
 * their gradients), the attention output O (or its gradient dO) and a per-key bias row; a
 * training call keeps Q, K, V, O and lse in the saved buffer instead.
 */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <attn/attn_mha.h>

#include "core/abi.h"
#include "core/blas.h"
#include "core/context.h"
#include "parallel/blas_threads.h"
#include "parallel/pool.h"

#ifndef ROW_BLOCK
#define ROW_BLOCK 128  /* rows of X per projection product */
#endif
#ifndef FEAT_BLOCK
#define FEAT_BLOCK 64  /* weight rows per weight-gradient product */
#endif
#define ALIGN 64

struct attn_mha {
    attn_mha_desc desc;      /* resolved: kv_heads, kdim, vdim filled in */
    int64_t E, H, Hkv, D, kvE, kdim, vdim;
    attn_allocator allocator;
    int custom_allocator;
    attn_ctx *ctx;
};

/* ---- descriptor and struct defaults ---------------------------------------------------------- */

static const attn_mha_desc desc_defaults = {
    .struct_size = sizeof(attn_mha_desc),
    .embed_dim = 64,
    .heads = 1,
    .bias = 1,
    .masked_rows = ATTN_MASKED_ROWS_ZERO,
};
static const size_t desc_sizes[] = {sizeof(attn_mha_desc)};

static const attn_mha_args args_defaults = {
    .struct_size = sizeof(attn_mha_args),
    .mask_shape = ATTN_MHA_MASK_2D,
    .weights_mode = ATTN_WEIGHTS_NONE,
};
static const size_t args_sizes[] = {sizeof(attn_mha_args)};

static const attn_mha_grads grads_defaults = {
    .struct_size = sizeof(attn_mha_grads),
    .mode = ATTN_MHA_GRAD_SET,
};
static const size_t grads_sizes[] = {sizeof(attn_mha_grads)};

void attn_mha_desc_init_size(attn_mha_desc *desc, size_t size)
{
    attn_abi_init(desc, size, &desc_defaults, sizeof desc_defaults);
}

void attn_mha_args_init_size(attn_mha_args *args, size_t size)
{
    attn_abi_init(args, size, &args_defaults, sizeof args_defaults);
}

void attn_mha_grads_init_size(attn_mha_grads *grads, size_t size)
{
    attn_abi_init(grads, size, &grads_defaults, sizeof grads_defaults);
}

/* ---- create / destroy ------------------------------------------------------------------------ */

static attn_status resolve_desc(const attn_mha_desc *caller, attn_mha_desc *d)
{
    if (!attn_abi_size_known(caller->struct_size, desc_sizes, sizeof desc_sizes / sizeof desc_sizes[0]))
        return attn_fail(NULL, ATTN_ERR_STRUCT_SIZE,
                         "desc->struct_size = %zu is not the size of an attn_mha_desc of this or "
                         "an earlier version (%zu): initialise with attn_mha_desc_init",
                         caller->struct_size, sizeof(attn_mha_desc));
    attn_abi_load(d, &desc_defaults, caller, caller->struct_size, sizeof *d);
    if (d->allocator && (!d->allocator->alloc || !d->allocator->free))
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "desc->allocator has a NULL %s function",
                         d->allocator->alloc ? "free" : "alloc");
    if (d->embed_dim == 0)
        return attn_fail(NULL, ATTN_ERR_ZERO_SIZE, "desc->embed_dim is 0");
    if (d->heads == 0)
        return attn_fail(NULL, ATTN_ERR_ZERO_SIZE, "desc->heads is 0");
    if (d->embed_dim % d->heads != 0)
        return attn_fail(NULL, ATTN_ERR_HEADS, "desc->heads = %u does not divide embed_dim = %u",
                         d->heads, d->embed_dim);
    if (d->kv_heads == 0)
        d->kv_heads = d->heads;
    if (d->heads % d->kv_heads != 0)
        return attn_fail(NULL, ATTN_ERR_HEADS, "desc->kv_heads = %u does not divide heads = %u",
                         d->kv_heads, d->heads);
    if (d->kdim == 0)
        d->kdim = d->embed_dim;
    if (d->vdim == 0)
        d->vdim = d->embed_dim;
    const char *names[3] = {"embed_dim", "kdim", "vdim"};
    uint32_t dims[3] = {d->embed_dim, d->kdim, d->vdim};
    for (int i = 0; i < 3; i++)
        if (dims[i] > ATTN_MHA_MAX_DIM)
            return attn_fail(NULL, ATTN_ERR_LIMIT, "desc->%s = %u exceeds ATTN_MHA_MAX_DIM = %u",
                             names[i], dims[i], ATTN_MHA_MAX_DIM);
    if (d->embed_dim / d->heads > ATTN_MAX_HEAD_DIM)
        return attn_fail(NULL, ATTN_ERR_LIMIT,
                         "desc->embed_dim / heads = %u exceeds ATTN_MAX_HEAD_DIM = %u",
                         d->embed_dim / d->heads, ATTN_MAX_HEAD_DIM);
    if (d->threads > ATTN_MAX_THREADS)
        return attn_fail(NULL, ATTN_ERR_LIMIT, "desc->threads = %u exceeds ATTN_MAX_THREADS = %u",
                         d->threads, ATTN_MAX_THREADS);
    if (d->bias > 1)
        return attn_fail(NULL, ATTN_ERR_BAD_OPTION, "desc->bias = %u is not 0 or 1", d->bias);
    if (d->flags & ~(uint32_t)(ATTN_CAUSAL | ATTN_BLAS_THREADS_UNTOUCHED))
        return attn_fail(NULL, ATTN_ERR_BAD_OPTION, "desc->flags = 0x%x has unknown bits",
                         d->flags);
    if (d->masked_rows > ATTN_MASKED_ROWS_NAN)
        return attn_fail(NULL, ATTN_ERR_BAD_OPTION, "desc->masked_rows = %u is not an "
                         "attn_masked_rows value", d->masked_rows);
    if (!(d->dropout >= 0.0f && d->dropout < 1.0f))
        return attn_fail(NULL, ATTN_ERR_BAD_OPTION, "desc->dropout = %g is outside [0, 1)",
                         (double)d->dropout);
    return ATTN_OK;
}

attn_status attn_mha_create(const attn_mha_desc *desc, attn_mha **out_mha)
{
    if (!out_mha)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "out_mha is NULL");
    *out_mha = NULL;
    if (!desc)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "desc is NULL");
    attn_mha_desc d;
    attn_status st = resolve_desc(desc, &d);
    if (st != ATTN_OK)
        return st;

    attn_desc ad;
    attn_desc_init(&ad);
    ad.q_heads = d.heads, ad.kv_heads = d.kv_heads;
    ad.qk_dim = ad.v_dim = d.embed_dim / d.heads;
    ad.flags = d.flags;
    ad.masked_rows = d.masked_rows;
    ad.allocator = d.allocator;
    ad.threads = d.threads;
    ad.ops = ATTN_OP_FORWARD | ATTN_OP_BACKWARD;
    ad.dropout = d.dropout;

    attn_mha *m = d.allocator ? d.allocator->alloc(d.allocator->user, sizeof *m, ALIGN)
                              : malloc(sizeof *m);
    if (!m)
        return attn_fail(NULL, ATTN_ERR_NO_MEMORY, "the allocator returned NULL for the layer "
                         "object (%zu bytes)", sizeof *m);
    memset(m, 0, sizeof *m);
    if ((st = attn_create(&ad, &m->ctx)) != ATTN_OK) { /* its message stays in attn_last_error */
        if (d.allocator)
            d.allocator->free(d.allocator->user, m);
        else
            free(m);
        return st;
    }
    m->desc = d;
    m->custom_allocator = d.allocator != NULL;
    if (d.allocator)
        m->allocator = *d.allocator;
    m->desc.allocator = NULL;
    m->E = d.embed_dim, m->H = d.heads, m->Hkv = d.kv_heads, m->D = d.embed_dim / d.heads;
    m->kvE = m->Hkv * m->D, m->kdim = d.kdim, m->vdim = d.vdim;
    *out_mha = m;
    return ATTN_OK;
}

void attn_mha_destroy(attn_mha *mha)
{
    if (!mha)
        return;
    attn_destroy(mha->ctx);
    if (mha->custom_allocator)
        mha->allocator.free(mha->allocator.user, mha);
    else
        free(mha);
}

const char *attn_mha_last_error(const attn_mha *mha)
{
    return attn_last_error(mha ? mha->ctx : NULL);
}

/* ---- per-call memory ------------------------------------------------------------------------- */

/* Float counts of the per-call pieces; false on overflow. */
typedef struct sizes {
    int64_t qkv;   /* B Lq E + 2 B Lk kvE */
    int64_t o;     /* B Lq E */
    int64_t kbias; /* B Lk */
    int64_t lse;   /* B H Lq */
} sizes;

static int64_t align_floats(int64_t n)
{
    return (n + ALIGN / 4 - 1) / (ALIGN / 4) * (ALIGN / 4);
}

static bool call_sizes(const attn_mha *m, int64_t B, int64_t Lq, int64_t Lk, sizes *s)
{
    /* each factor is below 2^32 and E, kvE below 2^21: compute in a wide type with checks */
    int64_t bq, bk;
    if (__builtin_mul_overflow(B, Lq, &bq) || __builtin_mul_overflow(B, Lk, &bk))
        return false;
    int64_t a, b, c;
    if (__builtin_mul_overflow(bq, m->E, &a) || __builtin_mul_overflow(bk, m->kvE, &b) ||
        __builtin_mul_overflow(b, 2, &b) || __builtin_add_overflow(a, b, &c))
        return false;
    s->qkv = c, s->o = a, s->kbias = bk;
    if (__builtin_mul_overflow(bq, m->H, &s->lse))
        return false;
    /* each piece aligned, and a total in bytes (with slack to align the base) within size_t and
     * int64 */
    int64_t total = 0;
    int64_t parts[4] = {s->qkv, s->o, s->kbias, s->lse};
    for (int i = 0; i < 4; i++) {
        if (parts[i] > INT64_MAX / 8)
            return false;
        if (__builtin_add_overflow(total, align_floats(parts[i]), &total))
            return false;
    }
    if (total > (int64_t)((SIZE_MAX - ALIGN) / 4) || total > INT64_MAX / 4 - ALIGN)
        return false;
    return true;
}

static size_t activation_bytes(const sizes *s)
{
    return ALIGN + 4 * (size_t)(align_floats(s->qkv) + align_floats(s->o) + align_floats(s->kbias));
}

static size_t saved_bytes(const sizes *s)
{
    return ALIGN + 4 * (size_t)(align_floats(s->qkv) + align_floats(s->o) + align_floats(s->lse));
}

size_t attn_mha_activation_size(const attn_mha *mha, uint32_t batch, uint32_t q_len,
                                uint32_t kv_len)
{
    sizes s;
    if (!mha || !batch || !q_len || !kv_len || !call_sizes(mha, batch, q_len, kv_len, &s))
        return 0;
    return activation_bytes(&s);
}

size_t attn_mha_saved_size(const attn_mha *mha, uint32_t batch, uint32_t q_len, uint32_t kv_len)
{
    sizes s;
    if (!mha || !batch || !q_len || !kv_len || !call_sizes(mha, batch, q_len, kv_len, &s))
        return 0;
    return saved_bytes(&s);
}

static float *aligned_base(void *p)
{
    uintptr_t u = (uintptr_t)p;
    return (float *)((u + ALIGN - 1) & ~(uintptr_t)(ALIGN - 1));
}

/* ---- validated call -------------------------------------------------------------------------- */

typedef struct proj {
    const float *x;  /* [rows, in] */
    int64_t rows, in;
    const float *w;  /* [n, in] */
    const float *b;  /* [n] or NULL */
    int64_t n;
} proj;

typedef struct call {
    attn_mha_args a;
    int64_t B, Lq, Lk, rows_q, rows_k;
    int packed_params;      /* in_proj_weight rather than q/k/v_proj_weight */
    int self_packed;        /* one product for Q, K and V */
    proj pq, pk, pv;        /* the three input projections */
    /* per-call memory */
    float *qkv;             /* Q, K, V: one [rows, Etot] block (self_packed) or three blocks */
    float *q, *k, *v;
    int64_t ldq, ldk, ldv;
    float *o;               /* [B, Lq, E] */
    float *lse;             /* [B, H, Lq], training only */
    float *kbias;           /* [B, Lk] 0 / -inf, when key_visible and attn_mask meet */
    float *dq, *dk, *dv, *dO; /* backward: in the activations */
} call;

typedef struct span {
    const char *name;
    const void *p;
    size_t bytes;
    int output;
} span;

static attn_status check_spans(attn_ctx *ctx, const span *s, int n)
{
    for (int i = 0; i < n; i++) {
        if (!s[i].p || !s[i].output)
            continue;
        uintptr_t a0 = (uintptr_t)s[i].p, a1 = a0 + s[i].bytes;
        for (int j = 0; j < n; j++) {
            if (j == i || !s[j].p)
                continue;
            uintptr_t b0 = (uintptr_t)s[j].p, b1 = b0 + s[j].bytes;
            if (a0 < b1 && b0 < a1)
                return attn_fail(ctx, ATTN_ERR_ALIAS, "%s overlaps %s", s[i].name, s[j].name);
        }
    }
    return ATTN_OK;
}

static attn_status load_args(attn_mha *m, const attn_mha_args *caller, call *c)
{
    attn_ctx *ctx = m->ctx;
    if (!caller)
        return attn_fail(ctx, ATTN_ERR_NULL_POINTER, "args is NULL");
    if (!attn_abi_size_known(caller->struct_size, args_sizes, sizeof args_sizes / sizeof args_sizes[0]))
        return attn_fail(ctx, ATTN_ERR_STRUCT_SIZE,
                         "args->struct_size = %zu is not the size of an attn_mha_args of this or "
                         "an earlier version (%zu): initialise with attn_mha_args_init",
                         caller->struct_size, sizeof(attn_mha_args));
    memset(c, 0, sizeof *c);
    attn_mha_args *a = &c->a;
    attn_abi_load(a, &args_defaults, caller, caller->struct_size, sizeof *a);
    return ATTN_OK;
}

/* Pointers, sizes, options, values, buffer sizes; fills c. `backward` needs saved. */
static attn_status check_call(attn_mha *m, call *c, int backward)
{
    attn_ctx *ctx = m->ctx;
    attn_mha_args *a = &c->a;
    int sep = a->q_proj_weight || a->k_proj_weight || a->v_proj_weight;
    c->packed_params = !sep;
    /* pointers */
    const struct {
        const char *name;
        const void *p;
    } req[] = {
        {"query", a->query},
        {"key", a->key},
        {"value", a->value},
        {"out", backward ? (const void *)1 : a->out},
        {c->packed_params ? "in_proj_weight" : "q_proj_weight",
         c->packed_params ? a->in_proj_weight : a->q_proj_weight},
        {"k_proj_weight", c->packed_params ? (const void *)1 : a->k_proj_weight},
        {"v_proj_weight", c->packed_params ? (const void *)1 : a->v_proj_weight},
        {"in_proj_bias", m->desc.bias ? a->in_proj_bias : (const void *)1},
        {"out_proj_weight", a->out_proj_weight},
        {"out_proj_bias", m->desc.bias ? a->out_proj_bias : (const void *)1},
        {"activations", a->activations},
        {"saved", backward ? a->saved : (const void *)1},
        {"weights", (!backward && a->weights_mode != ATTN_WEIGHTS_NONE &&
                     a->weights_mode <= ATTN_WEIGHTS_HEAD_MEAN) ? a->weights : (const void *)1},
    };
    for (size_t i = 0; i < sizeof req / sizeof req[0]; i++)
        if (!req[i].p)
            return attn_fail(ctx, ATTN_ERR_NULL_POINTER, "args->%s is NULL", req[i].name);
    /* sizes */
    if (a->batch == 0 || a->q_len == 0 || a->kv_len == 0)
        return attn_fail(ctx, ATTN_ERR_ZERO_SIZE, "args->%s is 0",
                         a->batch == 0 ? "batch" : a->q_len == 0 ? "q_len" : "kv_len");
    /* options */
    if (a->weights_mode > ATTN_WEIGHTS_HEAD_MEAN)
        return attn_fail(ctx, ATTN_ERR_BAD_OPTION, "args->weights_mode = %u is not an "
                         "attn_weights_mode value", a->weights_mode);
    if (!backward && a->weights_mode == ATTN_WEIGHTS_NONE && a->weights)
        return attn_fail(ctx, ATTN_ERR_BAD_OPTION,
                         "args->weights is set but args->weights_mode is ATTN_WEIGHTS_NONE");
    if (a->mask_shape > ATTN_MHA_MASK_3D)
        return attn_fail(ctx, ATTN_ERR_BAD_OPTION, "args->mask_shape = %u is not an "
                         "attn_mha_mask_shape value", a->mask_shape);
    if (a->attn_mask && a->attn_bias)
        return attn_fail(ctx, ATTN_ERR_BAD_OPTION,
                         "args->attn_mask and args->attn_bias are both set: give one");
    if (sep && a->in_proj_weight)
        return attn_fail(ctx, ATTN_ERR_BAD_OPTION, "args->in_proj_weight is set together with "
                         "q/k/v_proj_weight: give one layout");
    if (c->packed_params && (m->kdim != m->E || m->vdim != m->E))
        return attn_fail(ctx, ATTN_ERR_BAD_OPTION,
                         "args->in_proj_weight needs kdim = vdim = embed_dim (%lld, %lld, %lld): "
                         "give q/k/v_proj_weight", (long long)m->kdim, (long long)m->vdim,
                         (long long)m->E);
    if (!m->desc.bias && (a->in_proj_bias || a->out_proj_bias))
        return attn_fail(ctx, ATTN_ERR_BAD_OPTION, "args->%s is set but the layer has no biases "
                         "(desc->bias = 0)", a->in_proj_bias ? "in_proj_bias" : "out_proj_bias");
    int64_t B = a->batch, Lq = a->q_len, Lk = a->kv_len;
    /* sizes of everything */
    sizes s;
    int64_t rows_max, lqlk;
    if (!call_sizes(m, B, Lq, Lk, &s) ||
        __builtin_mul_overflow(B, Lq > Lk ? Lq : Lk, &rows_max) || rows_max > INT_MAX ||
        __builtin_mul_overflow(Lq, Lk, &lqlk) ||
        __builtin_mul_overflow(lqlk, B * m->H, &lqlk) || lqlk > INT64_MAX / 8)
        return attn_fail(ctx, ATTN_ERR_OVERFLOW,
                         "args: batch %lld x lengths %lld, %lld exceed the index range "
                         "(B * max(Lq, Lk) must fit an int)",
                         (long long)B, (long long)Lq, (long long)Lk);
    /* values (after the sizes, so that a huge batch is refused before kv_lens is read) */
    if (a->kv_lens)
        for (int64_t b = 0; b < B; b++)
            if (a->kv_lens[b] < 0 || a->kv_lens[b] > Lk)
                return attn_fail(ctx, ATTN_ERR_KV_LENS,
                                 "args->kv_lens[%lld] = %d is outside [0, kv_len = %lld]",
                                 (long long)b, (int)a->kv_lens[b], (long long)Lk);
    size_t need = activation_bytes(&s);
    if (a->activation_size < need)
        return attn_fail(ctx, ATTN_ERR_WORKSPACE_SIZE,
                         "args->activation_size = %zu is below attn_mha_activation_size() = %zu",
                         a->activation_size, need);
    size_t need_saved = saved_bytes(&s);
    if (a->saved && a->saved_size < need_saved)
        return attn_fail(ctx, ATTN_ERR_WORKSPACE_SIZE,
                         "args->saved_size = %zu is below attn_mha_saved_size() = %zu",
                         a->saved_size, need_saved);

    c->B = B, c->Lq = Lq, c->Lk = Lk, c->rows_q = B * Lq, c->rows_k = B * Lk;
    int64_t E = m->E, kvE = m->kvE, Etot = E + 2 * kvE;
    const float *wq = c->packed_params ? a->in_proj_weight : a->q_proj_weight;
    const float *wk = c->packed_params ? a->in_proj_weight + E * E : a->k_proj_weight;
    const float *wv = c->packed_params ? a->in_proj_weight + (E + kvE) * E : a->v_proj_weight;
    const float *bb = a->in_proj_bias;
    c->pq = (proj){a->query, c->rows_q, E, wq, bb, E};
    c->pk = (proj){a->key, c->rows_k, m->kdim, wk, bb ? bb + E : NULL, kvE};
    c->pv = (proj){a->value, c->rows_k, m->vdim, wv, bb ? bb + E + kvE : NULL, kvE};
    c->self_packed = c->packed_params && a->query == a->key && a->key == a->value && Lq == Lk;

    /* where Q, K, V, O, lse live: saved for training calls, activations otherwise */
    float *act = aligned_base(a->activations);
    float *mem = a->saved ? aligned_base(a->saved) : act;
    c->qkv = mem;
    c->o = mem + align_floats(s.qkv);
    if (c->self_packed) {
        c->q = c->qkv, c->k = c->qkv + E, c->v = c->qkv + E + kvE;
        c->ldq = c->ldk = c->ldv = Etot;
    } else {
        c->q = c->qkv, c->k = c->qkv + c->rows_q * E, c->v = c->k + c->rows_k * kvE;
        c->ldq = E, c->ldk = c->ldv = kvE;
    }
    if (a->saved)
        c->lse = c->o + align_floats(s.o);
    c->kbias = act + align_floats(s.qkv) + align_floats(s.o);
    /* backward: gradients of Q, K, V (three blocks) and of O in the activations */
    c->dq = act, c->dk = act + c->rows_q * E, c->dv = c->dk + c->rows_k * kvE;
    c->dO = act + align_floats(s.qkv);

    c->a.activation_size = need; /* the spans checked for aliasing */
    if (a->saved)
        c->a.saved_size = need_saved;
    return ATTN_OK;
}

/* Spans of the call's tensors for the alias check (outputs: out, weights, activations, and
 * saved in a training forward). */
static int call_spans(const attn_mha *m, const call *c, int backward, span *s)
{
    const attn_mha_args *a = &c->a;
    int64_t E = m->E, kvE = m->kvE, Etot = E + 2 * kvE;
    size_t f = sizeof(float);
    int64_t masks = a->mask_shape == ATTN_MHA_MASK_3D ? c->B * m->H * c->Lq * c->Lk : c->Lq * c->Lk;
    int64_t wsize = a->weights_mode == ATTN_WEIGHTS_PER_HEAD ? c->B * m->H * c->Lq * c->Lk
                                                              : c->B * c->Lq * c->Lk;
    int n = 0;
    s[n++] = (span){"args->query", a->query, (size_t)(c->rows_q * E) * f, 0};
    s[n++] = (span){"args->key", a->key, (size_t)(c->rows_k * m->kdim) * f, 0};
    s[n++] = (span){"args->value", a->value, (size_t)(c->rows_k * m->vdim) * f, 0};
    s[n++] = (span){"args->in_proj_weight", a->in_proj_weight, (size_t)(Etot * E) * f, 0};
    s[n++] = (span){"args->q_proj_weight", a->q_proj_weight, (size_t)(E * E) * f, 0};
    s[n++] = (span){"args->k_proj_weight", a->k_proj_weight, (size_t)(kvE * m->kdim) * f, 0};
    s[n++] = (span){"args->v_proj_weight", a->v_proj_weight, (size_t)(kvE * m->vdim) * f, 0};
    s[n++] = (span){"args->in_proj_bias", a->in_proj_bias, (size_t)Etot * f, 0};
    s[n++] = (span){"args->out_proj_weight", a->out_proj_weight, (size_t)(E * E) * f, 0};
    s[n++] = (span){"args->out_proj_bias", a->out_proj_bias, (size_t)E * f, 0};
    s[n++] = (span){"args->kv_lens", a->kv_lens, (size_t)c->B * 4, 0};
    s[n++] = (span){"args->key_visible", a->key_visible, (size_t)c->rows_k, 0};
    s[n++] = (span){"args->attn_mask", a->attn_mask, (size_t)masks, 0};
    s[n++] = (span){"args->attn_bias", a->attn_bias, (size_t)masks * f, 0};
    s[n++] = (span){"args->activations", a->activations, a->activation_size, 1};
    s[n++] = (span){"args->saved", a->saved, a->saved_size, !backward};
    if (!backward) {
        s[n++] = (span){"args->out", a->out, (size_t)(c->rows_q * E) * f, 1};
        s[n++] = (span){"args->weights", a->weights_mode ? a->weights : NULL, (size_t)wsize * f, 1};
    }
    return n;
}

/* ---- products on the pool -------------------------------------------------------------------- */

enum { JOB_PROJECT, JOB_DWEIGHT, JOB_DBIAS, JOB_DINPUT };

typedef struct gemm_job {
    int kind;
    int serial;       /* hold each worker's BLAS single-threaded */
    const proj *p;    /* x [rows, in], w [n, in], b [n] */
    float *y;         /* JOB_PROJECT: Y [rows, n] with leading dimension ldy */
    const float *dy;  /* the others: dY [rows, n] with leading dimension ldy */
    int64_t ldy;
    float *dst;       /* dW [n, in], db [n] or dX [rows, in] */
    float beta;       /* 0: overwrite dst, 1: add to it */
} gemm_job;

static void gemm_item(void *arg, int64_t item, unsigned thread)
{
    const gemm_job *j = arg;
    const proj *p = j->p;
    if (thread > 0 && j->serial)
        attn_blas_serial_worker();
    int in = (int)p->in, n = (int)p->n, ldy = (int)j->ldy;
    switch (j->kind) {
    case JOB_PROJECT: { /* Y[r0 .. r0+m) = X Wᵀ + b */
        int64_t r0 = item * ROW_BLOCK, m = p->rows - r0 < ROW_BLOCK ? p->rows - r0 : ROW_BLOCK;
        float *y = j->y + r0 * j->ldy;
        if (p->b)
            for (int64_t r = 0; r < m; r++)
                memcpy(y + r * j->ldy, p->b, (size_t)n * sizeof(float));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, n, in, 1.0f,
                    p->x + r0 * p->in, in, p->w, in, p->b ? 1.0f : 0.0f, y, ldy);
        break;
    }
    case JOB_DWEIGHT: { /* dW[f0 .. f0+m) (+)= dY[:, f0 .. f0+m)ᵀ X */
        int64_t f0 = item * FEAT_BLOCK, m = p->n - f0 < FEAT_BLOCK ? p->n - f0 : FEAT_BLOCK;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)m, in, (int)p->rows, 1.0f,
                    j->dy + f0, ldy, p->x, in, j->beta, j->dst + f0 * p->in, in);
        break;
    }
    case JOB_DBIAS: { /* db[f0 .. f0+m) (+)= column sums of dY, rows in order */
        int64_t f0 = item * FEAT_BLOCK, m = p->n - f0 < FEAT_BLOCK ? p->n - f0 : FEAT_BLOCK;
        float acc[FEAT_BLOCK];
        for (int64_t f = 0; f < m; f++)
            acc[f] = 0.0f;
        for (int64_t r = 0; r < p->rows; r++) {
            const float *row = j->dy + r * j->ldy + f0;
            for (int64_t f = 0; f < m; f++)
                acc[f] += row[f];
        }
        for (int64_t f = 0; f < m; f++)
            j->dst[f0 + f] = j->beta != 0.0f ? j->dst[f0 + f] + acc[f] : acc[f];
        break;
    }
    default: { /* dX[r0 .. r0+m) (+)= dY W */
        int64_t r0 = item * ROW_BLOCK, m = p->rows - r0 < ROW_BLOCK ? p->rows - r0 : ROW_BLOCK;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, in, n, 1.0f,
                    j->dy + r0 * j->ldy, ldy, p->w, in, j->beta, j->dst + r0 * p->in, in);
        break;
    }
    }
}

static void run_job(attn_mha *m, gemm_job *j)
{
    int64_t blocks = j->kind == JOB_PROJECT || j->kind == JOB_DINPUT
                         ? (j->p->rows + ROW_BLOCK - 1) / ROW_BLOCK
                         : (j->p->n + FEAT_BLOCK - 1) / FEAT_BLOCK;
    j->serial = !(m->desc.flags & ATTN_BLAS_THREADS_UNTOUCHED);
    attn_pool_run(&m->ctx->pool, gemm_item, j, blocks);
}

static void project(attn_mha *m, const proj *p, float *y, int64_t ldy)
{
    gemm_job j = {.kind = JOB_PROJECT, .p = p, .y = y, .ldy = ldy};
    run_job(m, &j);
}

/* Gradients of one projection Y = X Wᵀ + b from dY: any of dW, db, dX (NULL: skipped). */
static void project_backward(attn_mha *m, const proj *p, const float *dy, int64_t ldy, float *dw,
                             float beta_w, float *db, float beta_b, float *dx, float beta_x)
{
    gemm_job j = {.p = p, .dy = dy, .ldy = ldy};
    if (dw) {
        j.kind = JOB_DWEIGHT, j.dst = dw, j.beta = beta_w;
        run_job(m, &j);
    }
    if (db) {
        j.kind = JOB_DBIAS, j.dst = db, j.beta = beta_b;
        run_job(m, &j);
    }
    if (dx) {
        j.kind = JOB_DINPUT, j.dst = dx, j.beta = beta_x;
        run_job(m, &j);
    }
}

/* ---- the attention call on the projected heads ----------------------------------------------- */

/* Masks of the inner call: kv_lens as is; key_visible as a broadcast boolean mask, or, when the
 * boolean attn_mask takes the mask slot, as a 0 / -inf bias row per batch entry. */
typedef struct inner_masks {
    const uint8_t *mask;
    attn_strides mask_strides;
    const float *bias;
    attn_strides bias_strides;
} inner_masks;

static inner_masks build_masks(const attn_mha *m, const call *c)
{
    const attn_mha_args *a = &c->a;
    inner_masks r;
    memset(&r, 0, sizeof r);
    attn_strides per_mask = a->mask_shape == ATTN_MHA_MASK_3D
                                ? (attn_strides){m->H * c->Lq * c->Lk, c->Lq * c->Lk, c->Lk}
                                : (attn_strides){0, 0, c->Lk};
    attn_strides per_key = {c->Lk, 0, 0};
    if (a->attn_mask)
        r.mask = a->attn_mask, r.mask_strides = per_mask;
    if (a->attn_bias)
        r.bias = a->attn_bias, r.bias_strides = per_mask;
    if (a->key_visible && !a->attn_mask) {
        r.mask = a->key_visible, r.mask_strides = per_key;
    } else if (a->key_visible) {
        for (int64_t i = 0; i < c->rows_k; i++)
            c->kbias[i] = a->key_visible[i] ? 0.0f : -INFINITY;
        r.bias = c->kbias, r.bias_strides = per_key;
    }
    return r;
}

static attn_strides heads_strides(int64_t L, int64_t D, int64_t ld)
{
    return (attn_strides){L * ld, D, ld};
}

/* ---- forward --------------------------------------------------------------------------------- */

attn_status attn_mha_forward(attn_mha *m, const attn_mha_args *args)
{
    if (!m)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "mha is NULL");
    call c;
    attn_status st;
    if ((st = load_args(m, args, &c)) != ATTN_OK || (st = check_call(m, &c, 0)) != ATTN_OK)
        return st;
    span s[24];
    int ns = call_spans(m, &c, 0, s);
    if ((st = check_spans(m->ctx, s, ns)) != ATTN_OK)
        return st;

    const attn_mha_args *a = &c.a;
    int64_t E = m->E, D = m->D;
    attn_blas_saved saved;
    int serial = !(m->desc.flags & ATTN_BLAS_THREADS_UNTOUCHED);
    if (serial)
        attn_blas_serial_enter(&saved);
    if (c.self_packed) {
        proj all = c.pq;
        all.n = E + 2 * m->kvE;
        project(m, &all, c.qkv, all.n);
    } else {
        project(m, &c.pq, c.q, c.ldq);
        project(m, &c.pk, c.k, c.ldk);
        project(m, &c.pv, c.v, c.ldv);
    }
    inner_masks im = build_masks(m, &c);
    attn_args f;
    attn_args_init(&f);
    f.batch = a->batch, f.q_len = a->q_len, f.kv_len = a->kv_len;
    f.q = c.q, f.q_strides = heads_strides(c.Lq, D, c.ldq);
    f.k = c.k, f.k_strides = heads_strides(c.Lk, D, c.ldk);
    f.v = c.v, f.v_strides = heads_strides(c.Lk, D, c.ldv);
    f.out = c.o, f.out_strides = heads_strides(c.Lq, D, E);
    f.kv_lens = a->kv_lens;
    f.mask = im.mask, f.mask_strides = im.mask_strides;
    f.bias = im.bias, f.bias_strides = im.bias_strides;
    f.weights_mode = a->weights_mode, f.weights = a->weights;
    f.lse = c.lse;
    f.dropout_seed = a->dropout_seed, f.dropout_offset = a->dropout_offset;
    st = attn_forward(m->ctx, &f);
    if (st == ATTN_OK) {
        proj po = {c.o, c.rows_q, E, a->out_proj_weight, a->out_proj_bias, E};
        project(m, &po, a->out, E);
    }
    if (serial)
        attn_blas_serial_leave(&saved);
    return st;
}

/* ---- backward -------------------------------------------------------------------------------- */

attn_status attn_mha_backward(attn_mha *m, const attn_mha_args *args, const attn_mha_grads *grads)
{
    if (!m)
        return attn_fail(NULL, ATTN_ERR_NULL_POINTER, "mha is NULL");
    attn_ctx *ctx = m->ctx;
    call c;
    attn_status st;
    if ((st = load_args(m, args, &c)) != ATTN_OK)
        return st;
    if (!grads)
        return attn_fail(ctx, ATTN_ERR_NULL_POINTER, "grads is NULL");
    if (!attn_abi_size_known(grads->struct_size, grads_sizes, sizeof grads_sizes / sizeof grads_sizes[0]))
        return attn_fail(ctx, ATTN_ERR_STRUCT_SIZE,
                         "grads->struct_size = %zu is not the size of an attn_mha_grads of this "
                         "or an earlier version (%zu): initialise with attn_mha_grads_init",
                         grads->struct_size, sizeof(attn_mha_grads));
    attn_mha_grads g;
    attn_abi_load(&g, &grads_defaults, grads, grads->struct_size, sizeof g);
    if (!g.dout)
        return attn_fail(ctx, ATTN_ERR_NULL_POINTER, "grads->dout is NULL");
    if ((st = check_call(m, &c, 1)) != ATTN_OK)
        return st;
    const attn_mha_args *a = &c.a;
    if (g.mode > ATTN_MHA_GRAD_ADD)
        return attn_fail(ctx, ATTN_ERR_BAD_OPTION, "grads->mode = %u is not an "
                         "attn_mha_grad_mode value", g.mode);
    if (c.packed_params && (g.d_q_proj_weight || g.d_k_proj_weight || g.d_v_proj_weight))
        return attn_fail(ctx, ATTN_ERR_BAD_OPTION, "grads->d_%s_proj_weight is set but the call "
                         "has in_proj_weight: use grads->d_in_proj_weight",
                         g.d_q_proj_weight ? "q" : g.d_k_proj_weight ? "k" : "v");
    if (!c.packed_params && g.d_in_proj_weight)
        return attn_fail(ctx, ATTN_ERR_BAD_OPTION, "grads->d_in_proj_weight is set but the call "
                         "has q/k/v_proj_weight: use grads->d_q/k/v_proj_weight");
    if (!m->desc.bias && (g.d_in_proj_bias || g.d_out_proj_bias))
        return attn_fail(ctx, ATTN_ERR_BAD_OPTION, "grads->%s is set but the layer has no "
                         "biases", g.d_in_proj_bias ? "d_in_proj_bias" : "d_out_proj_bias");
    /* one gradient buffer for several inputs: only for the same input buffer and shape */
    if (g.d_key && g.d_key == g.d_query &&
        !(a->key == a->query && m->kdim == m->E && c.Lk == c.Lq))
        return attn_fail(ctx, ATTN_ERR_ALIAS, "grads->d_key is grads->d_query but args->key is "
                         "not args->query with the same shape");
    if (g.d_value && (g.d_value == g.d_query || g.d_value == g.d_key)) {
        const float *x = g.d_value == g.d_query ? a->query : a->key;
        int64_t dim = g.d_value == g.d_query ? m->E : m->kdim;
        int64_t L = g.d_value == g.d_query ? c.Lq : c.Lk;
        if (!(a->value == x && m->vdim == dim && c.Lk == L))
            return attn_fail(ctx, ATTN_ERR_ALIAS, "grads->d_value is grads->%s but args->value "
                             "is not args->%s with the same shape",
                             g.d_value == g.d_query ? "d_query" : "d_key",
                             g.d_value == g.d_query ? "query" : "key");
    }
    span s[40];
    int ns = call_spans(m, &c, 1, s);
    int64_t E = m->E, kvE = m->kvE, Etot = E + 2 * kvE, D = m->D;
    size_t f4 = sizeof(float);
    s[ns++] = (span){"grads->dout", g.dout, (size_t)(c.rows_q * E) * f4, 0};
    s[ns++] = (span){"grads->d_query", g.d_query, (size_t)(c.rows_q * E) * f4, 1};
    s[ns++] = (span){"grads->d_key", g.d_key == g.d_query ? NULL : g.d_key,
                     (size_t)(c.rows_k * m->kdim) * f4, 1};
    s[ns++] = (span){"grads->d_value",
                     g.d_value == g.d_query || g.d_value == g.d_key ? NULL : g.d_value,
                     (size_t)(c.rows_k * m->vdim) * f4, 1};
    s[ns++] = (span){"grads->d_in_proj_weight", g.d_in_proj_weight, (size_t)(Etot * E) * f4, 1};
    s[ns++] = (span){"grads->d_q_proj_weight", g.d_q_proj_weight, (size_t)(E * E) * f4, 1};
    s[ns++] = (span){"grads->d_k_proj_weight", g.d_k_proj_weight, (size_t)(kvE * m->kdim) * f4, 1};
    s[ns++] = (span){"grads->d_v_proj_weight", g.d_v_proj_weight, (size_t)(kvE * m->vdim) * f4, 1};
    s[ns++] = (span){"grads->d_in_proj_bias", g.d_in_proj_bias, (size_t)Etot * f4, 1};
    s[ns++] = (span){"grads->d_out_proj_weight", g.d_out_proj_weight, (size_t)(E * E) * f4, 1};
    s[ns++] = (span){"grads->d_out_proj_bias", g.d_out_proj_bias, (size_t)E * f4, 1};
    if ((st = check_spans(ctx, s, ns)) != ATTN_OK)
        return st;

    attn_blas_saved bsaved;
    int serial = !(m->desc.flags & ATTN_BLAS_THREADS_UNTOUCHED);
    if (serial)
        attn_blas_serial_enter(&bsaved);
    /* dO = dout Wo, into the activations */
    proj po = {c.o, c.rows_q, E, a->out_proj_weight, a->out_proj_bias, E};
    project_backward(m, &po, g.dout, E, NULL, 0, NULL, 0, c.dO, 0.0f);
    /* the attention backward from the saved Q, K, V, O, lse */
    inner_masks im = build_masks(m, &c);
    attn_backward_args b;
    attn_backward_args_init(&b);
    b.batch = a->batch, b.q_len = a->q_len, b.kv_len = a->kv_len;
    b.q = c.q, b.q_strides = heads_strides(c.Lq, D, c.ldq);
    b.k = c.k, b.k_strides = heads_strides(c.Lk, D, c.ldk);
    b.v = c.v, b.v_strides = heads_strides(c.Lk, D, c.ldv);
    b.out = c.o, b.out_strides = heads_strides(c.Lq, D, E);
    b.dout = c.dO, b.dout_strides = heads_strides(c.Lq, D, E);
    b.lse = c.lse;
    b.kv_lens = a->kv_lens;
    b.mask = im.mask, b.mask_strides = im.mask_strides;
    b.bias = im.bias, b.bias_strides = im.bias_strides;
    b.dq = c.dq, b.dq_strides = heads_strides(c.Lq, D, E);
    b.dk = c.dk, b.dk_strides = heads_strides(c.Lk, D, kvE);
    b.dv = c.dv, b.dv_strides = heads_strides(c.Lk, D, kvE);
    b.dropout_seed = a->dropout_seed, b.dropout_offset = a->dropout_offset;
    st = attn_backward(ctx, &b);
    if (st == ATTN_OK) {
        float beta = g.mode == ATTN_MHA_GRAD_ADD ? 1.0f : 0.0f;
        project_backward(m, &po, g.dout, E, g.d_out_proj_weight, beta, g.d_out_proj_bias, beta,
                         NULL, 0);
        float *dw[3] = {g.d_q_proj_weight, g.d_k_proj_weight, g.d_v_proj_weight};
        if (c.packed_params && g.d_in_proj_weight) {
            dw[0] = g.d_in_proj_weight;
            dw[1] = g.d_in_proj_weight + E * E;
            dw[2] = g.d_in_proj_weight + (E + kvE) * E;
        }
        float *db[3] = {NULL, NULL, NULL};
        if (g.d_in_proj_bias)
            db[0] = g.d_in_proj_bias, db[1] = db[0] + E, db[2] = db[0] + E + kvE;
        float *dx[3] = {g.d_query, g.d_key, g.d_value};
        const proj *pp[3] = {&c.pq, &c.pk, &c.pv};
        const float *dy[3] = {c.dq, c.dk, c.dv};
        int64_t ld[3] = {E, kvE, kvE};
        for (int i = 0; i < 3; i++) {
            /* a gradient buffer shared with an earlier input's receives the sum */
            int shared = dx[i] && ((i >= 1 && dx[i] == dx[0]) || (i == 2 && dx[i] == dx[1]));
            float bx = shared ? 1.0f : beta;
            project_backward(m, pp[i], dy[i], ld[i], dw[i], beta, db[i], beta, dx[i], bx);
        }
    }
    if (serial)
        attn_blas_serial_leave(&bsaved);
    return st;
}
