/*
 * libattn: attention (softmax(Q Kᵀ · scale + mask) V) on the CPU in float32.
 *
 * The library is used in two steps, like a plan and its execution:
 *
 *   1. Describe the *kind* of problem once in an attn_desc (heads, head dims, scale, causal and
 *      window masks, policy for fully masked rows) and create an attn_ctx from it. The context
 *      owns one workspace whose size depends on the descriptor only, never on sequence lengths.
 *   2. Call attn_forward() with an attn_args describing one *instance*: batch, lengths, strided
 *      tensor views, optional masks and optional extra outputs. It never allocates.
 *
 * Conventions used throughout this header:
 *   - Every function that can fail returns an attn_status; ATTN_OK is 0. Status values are pinned:
 *     they never change meaning between releases.
 *   - On failure nothing is written to any caller buffer, and attn_last_error() describes which
 *     argument was wrong and which bound it broke.
 *   - Lengths and counts are elements, never bytes, unless a name says "size".
 *   - Threading: a context is used by one thread at a time (a second thread entering
 *     attn_forward on a context already in a call gets ATTN_ERR_BUSY); distinct contexts may be
 *     used concurrently from different threads. Functions without a context are thread-safe.
 *   - fork(): a child process cannot use a context created before the fork (ATTN_ERR_FORKED);
 *     it may destroy it, and create its own. See docs/threading.md.
 *
 * Tensors are described by a base pointer and an attn_strides triple (batch, head, seq) counted
 * in elements; the last (feature) axis is always contiguous. This covers [B, H, S, D],
 * [B, S, H, D] and packed QKV buffers without copies; a zero batch or head stride broadcasts an
 * input along that axis.
 */
#ifndef ATTN_ATTN_H
#define ATTN_ATTN_H

#include <stddef.h>
#include <stdint.h>

#include <attn/attn_export.h>
#include <attn/attn_version.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------ */
/* Status codes                                                                                */
/* ------------------------------------------------------------------------------------------ */

/*
 * Result of every fallible call. The numeric values are part of the ABI and never change;
 * new codes are only ever appended. docs/errors.md lists when each one is returned.
 */
typedef enum attn_status {
    ATTN_OK = 0,                  /* success */
    ATTN_ERR_NULL_POINTER = 1,    /* a required pointer is NULL */
    ATTN_ERR_ZERO_SIZE = 2,       /* a size that must be at least 1 is 0 */
    ATTN_ERR_HEADS = 3,           /* kv_heads does not divide q_heads */
    ATTN_ERR_OVERFLOW = 4,        /* a product of sizes and strides does not fit the index types */
    ATTN_ERR_STRIDE = 5,          /* a stride is negative, or rows of a tensor would overlap */
    ATTN_ERR_KV_LENS = 6,         /* a kv_lens entry is < 0 or > kv_len */
    ATTN_ERR_WINDOW = 7,          /* window_left / window_right outside [-1, ATTN_MAX_DISTANCE] */
    ATTN_ERR_OFFSET = 8,          /* q_offset outside [-ATTN_MAX_DISTANCE, ATTN_MAX_DISTANCE] */
    ATTN_ERR_SCALE = 9,           /* scale is NaN or infinite */
    ATTN_ERR_BAD_OPTION = 10,     /* unknown flag bit or enumeration value, or options that conflict */
    ATTN_ERR_STRUCT_SIZE = 11,    /* struct_size is not the one of this library version */
    ATTN_ERR_LIMIT = 12,          /* a size exceeds a documented limit (see ATTN_MAX_HEAD_DIM) */
    ATTN_ERR_ALIAS = 13,          /* an output overlaps an input or another output */
    ATTN_ERR_WORKSPACE_SIZE = 14, /* a caller-provided workspace is smaller than required */
    ATTN_ERR_WORKSPACE_ALIGN = 15,/* a caller-provided workspace is not ATTN_WORKSPACE_ALIGN-aligned */
    ATTN_ERR_NO_MEMORY = 16,      /* the allocator returned NULL */
    ATTN_ERR_THREADS = 17,        /* the system could not start a worker thread */
    ATTN_ERR_BUSY = 18,           /* the context is already in use by another call (thread) */
    ATTN_ERR_FORKED = 19          /* the context was inherited across fork(): its worker threads
                                     do not exist in this process */
} attn_status;

/*
 * Returns a short, static, human-readable name for a status ("ATTN_ERR_HEADS: kv_heads does not
 * divide q_heads"). Unknown values give "unknown status". Never NULL; thread-safe.
 */
ATTN_EXPORT const char *attn_status_str(attn_status status);

/* ------------------------------------------------------------------------------------------ */
/* Limits and constants                                                                        */
/* ------------------------------------------------------------------------------------------ */

/* Largest qk_dim and v_dim accepted: bounds the workspace, which grows with the head dims. */
#define ATTN_MAX_HEAD_DIM 16384u
/* Largest |q_offset| and window width accepted: keeps every position sum inside int64_t. */
#define ATTN_MAX_DISTANCE INT64_C(4294967295)
/* Largest attn_desc.threads accepted. */
#define ATTN_MAX_THREADS 256u
/* Alignment in bytes that attn_create_static() requires of its workspace. */
#define ATTN_WORKSPACE_ALIGN 64u
/* attn_args.q_offset value meaning "kv_len - q_len": the last query sees the last key. */
#define ATTN_Q_OFFSET_DEFAULT INT64_MIN

/* ------------------------------------------------------------------------------------------ */
/* Version                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/*
 * Version of the library actually loaded, as ATTN_VERSION_MAJOR * 10000 + MINOR * 100 + PATCH.
 * Compare with ATTN_VERSION_NUMBER (the header you compiled against). Thread-safe.
 */
ATTN_EXPORT unsigned attn_version(void);

/* The same version as a static string "MAJOR.MINOR.PATCH". Never NULL; thread-safe. */
ATTN_EXPORT const char *attn_version_string(void);

/*
 * Name of the softmax kernel variant this process uses: "scalar", "avx2" or "avx512". It is
 * chosen once, on first use, from the CPU's features (cpuid and the OS-enabled register state);
 * the environment variable ATTN_ISA=scalar|avx2|avx512 forces a variant, and a forced variant
 * the CPU cannot run falls back to the best one it can. Never NULL; thread-safe.
 */
ATTN_EXPORT const char *attn_kernel_isa(void);

/* ------------------------------------------------------------------------------------------ */
/* Descriptor: the kind of problem, fixed for the life of a context                           */
/* ------------------------------------------------------------------------------------------ */

/* attn_desc.flags bits. */
#define ATTN_CAUSAL 0x1u /* key j is visible to query i only if j <= i + q_offset */
/* Never change the BLAS's thread count. By default, while attn_forward runs, libattn sets
 * OpenBLAS's or BLIS's process-wide thread count to 1 and restores it afterwards
 * (docs/threading.md), so that the tile products run on libattn's threads only and results do
 * not depend on the thread count. With this flag the BLAS is left as configured: results are
 * then bitwise reproducible across thread counts only if the BLAS is single-threaded. */
#define ATTN_BLAS_THREADS_UNTOUCHED 0x2u

/* What a query row that sees no key at all (a "fully masked row") produces. */
typedef enum attn_masked_rows {
    ATTN_MASKED_ROWS_ZERO = 0, /* out row 0, weights row 0, entropy 0, lse -inf (default) */
    ATTN_MASKED_ROWS_NAN = 1   /* out row NaN, weights row NaN, entropy NaN, lse -inf */
} attn_masked_rows;

/*
 * Caller-provided memory functions. alloc returns memory aligned to at least `alignment` bytes
 * (a power of two, at most 4096) or NULL; free releases what alloc returned (never called with
 * NULL). `user` is passed through untouched. The context keeps a copy of this struct, so the
 * struct itself need not outlive attn_create(), but `user` must outlive the context.
 */
typedef struct attn_allocator {
    void *(*alloc)(void *user, size_t size, size_t alignment);
    void (*free)(void *user, void *ptr);
    void *user;
} attn_allocator;

/*
 * The kind of attention a context computes. Always start from attn_desc_init(), then set the
 * fields you need: fields may be appended in later versions, and struct_size tells which.
 */
typedef struct attn_desc {
    size_t struct_size;        /* sizeof(attn_desc); set by attn_desc_init */
    uint32_t q_heads;          /* query heads, >= 1 */
    uint32_t kv_heads;         /* key/value heads, >= 1, dividing q_heads; query head h reads
                                  kv head h / (q_heads / kv_heads) (GQA; 1 = multi-query) */
    uint32_t qk_dim;           /* feature size of Q and K, 1 .. ATTN_MAX_HEAD_DIM */
    uint32_t v_dim;            /* feature size of V and out, 1 .. ATTN_MAX_HEAD_DIM */
    float scale;               /* scores = (q . k) * scale; 0 selects 1/sqrt(qk_dim) */
    uint32_t flags;            /* OR of ATTN_CAUSAL; 0 = no structured mask */
    int64_t window_left;       /* local attention: key j visible only if
                                  j >= i + q_offset - window_left; -1 = unbounded */
    int64_t window_right;      /* ... and only if j <= i + q_offset + window_right; -1 = unbounded */
    attn_masked_rows masked_rows; /* policy for rows that see no key */
    const attn_allocator *allocator; /* NULL: the C library's aligned allocation */
    uint32_t threads;          /* threads attn_forward runs on, 1 .. ATTN_MAX_THREADS;
                                  0 = the processors this process may use */
} attn_desc;

/*
 * Fills *desc with the defaults: struct_size set, 1 query head, 1 kv head, qk_dim = v_dim = 64,
 * scale 0 (1/sqrt(qk_dim)), no flags, unbounded window, ATTN_MASKED_ROWS_ZERO, default allocator,
 * threads 0 (all available processors).
 * desc: must not be NULL (a NULL desc is ignored). Thread-safe.
 */
ATTN_EXPORT void attn_desc_init(attn_desc *desc);

/*
 * Returns the number of bytes attn_create_static() needs for `desc` (the context itself plus its
 * workspace), or 0 if the descriptor is invalid; attn_last_error(NULL) then says why. The size
 * depends on the descriptor (head dims and thread count) and the library's tile sizes only, never
 * on sequence lengths or batch. With desc->threads = 0 the thread count is the number of
 * processors this process may use, so the size can differ between machines: give threads
 * explicitly when a buffer is sized ahead of time for attn_create_static(). Thread-safe.
 */
ATTN_EXPORT size_t attn_workspace_size(const attn_desc *desc);

/* Opaque context: the descriptor, the kernel table and the workspace. */
typedef struct attn_ctx attn_ctx;

/*
 * Validates `desc` and creates a context, allocating its workspace once with desc->allocator
 * (or the C library when NULL), and starts desc->threads - 1 worker threads, which sleep between
 * calls (their stacks come from the system, not from the allocator).
 *   desc:    the kind of problem; read during the call only.
 *   out_ctx: receives the new context; set to NULL on failure.
 * Returns ATTN_OK, or: ATTN_ERR_NULL_POINTER (desc or out_ctx NULL, or an allocator with a NULL
 * function), ATTN_ERR_STRUCT_SIZE, ATTN_ERR_ZERO_SIZE (a head count or dim is 0), ATTN_ERR_HEADS,
 * ATTN_ERR_LIMIT (a dim above ATTN_MAX_HEAD_DIM), ATTN_ERR_SCALE, ATTN_ERR_BAD_OPTION (unknown
 * flag bits or masked_rows value), ATTN_ERR_WINDOW, ATTN_ERR_LIMIT (threads above
 * ATTN_MAX_THREADS), ATTN_ERR_NO_MEMORY, ATTN_ERR_THREADS.
 * On failure the reason is in attn_last_error(NULL) for the calling thread. Thread-safe.
 * The caller owns the context and releases it with attn_destroy().
 */
ATTN_EXPORT attn_status attn_create(const attn_desc *desc, attn_ctx **out_ctx);

/*
 * Like attn_create(), but places the context and its workspace in caller memory and never
 * allocates (worker threads, when desc->threads asks for them, are still started). `workspace`
 * must be ATTN_WORKSPACE_ALIGN-aligned and at least
 * attn_workspace_size(desc) bytes, and must stay valid and untouched until the context is
 * destroyed; desc->allocator is ignored.
 * Returns the statuses of attn_create() except ATTN_ERR_NO_MEMORY, plus ATTN_ERR_NULL_POINTER for
 * a NULL workspace, ATTN_ERR_WORKSPACE_ALIGN and ATTN_ERR_WORKSPACE_SIZE. Thread-safe.
 */
ATTN_EXPORT attn_status attn_create_static(const attn_desc *desc, void *workspace,
                                           size_t workspace_size, attn_ctx **out_ctx);

/*
 * Stops the context's worker threads and releases a context made by attn_create(). For a context
 * made by attn_create_static() the caller still owns the workspace memory afterwards. NULL is
 * accepted and ignored. Must not run concurrently with any other use of the same context.
 * In a child process that inherited the context across fork(), the workers do not exist there:
 * nothing is joined (so this never waits for them) and the memory is released all the same.
 */
ATTN_EXPORT void attn_destroy(attn_ctx *ctx);

/*
 * Describes the most recent failure: with a context, of the last call that used it (an empty
 * string after a success); with NULL, of the last attn_create(), attn_create_static() or
 * attn_workspace_size() that failed on the calling thread. The text names the argument and the
 * bound, e.g. "args->kv_lens[3] = 70 exceeds kv_len = 64". The string is owned by the library
 * and stays valid until the next call with the same context (or on the same thread). Never NULL.
 * Exception: the message of ATTN_ERR_BUSY goes to attn_last_error(NULL) of the refused thread,
 * since the context's own message belongs to the call in progress.
 */
ATTN_EXPORT const char *attn_last_error(const attn_ctx *ctx);

/* ------------------------------------------------------------------------------------------ */
/* Arguments of one call                                                                       */
/* ------------------------------------------------------------------------------------------ */

/*
 * Strides of a 4-D tensor [batch][head][seq][feature] in elements; the feature axis is
 * contiguous. For masks and biases "seq" is the query-row axis and the feature axis is the key
 * axis. Strides must be >= 0; 0 repeats (broadcasts) an input along that axis.
 */
typedef struct attn_strides {
    int64_t batch;
    int64_t head;
    int64_t seq;
} attn_strides;

/* Strides of a contiguous [batch, heads, seq, dim] tensor. */
ATTN_EXPORT attn_strides attn_strides_bhsd(uint32_t heads, uint32_t seq, uint32_t dim);

/*
 * Strides of a contiguous [batch, seq, heads, dim] tensor. A packed QKV buffer
 * [batch, seq, 3, heads, dim] is three such views with heads' = 3 * heads: use
 * attn_strides_bshd(3 * heads, seq, dim) with base pointers p, p + heads*dim, p + 2*heads*dim.
 */
ATTN_EXPORT attn_strides attn_strides_bshd(uint32_t heads, uint32_t seq, uint32_t dim);

/* What attn_args.weights receives. */
typedef enum attn_weights_mode {
    ATTN_WEIGHTS_NONE = 0,     /* weights must be NULL */
    ATTN_WEIGHTS_PER_HEAD = 1, /* weights is [batch, q_heads, q_len, kv_len], contiguous */
    ATTN_WEIGHTS_HEAD_MEAN = 2 /* weights is [batch, q_len, kv_len]: the mean over query heads */
} attn_weights_mode;

/*
 * One forward call. Always start from attn_args_init(). Visibility of key j to query row i of
 * batch b is the AND of: causal (j <= i + q_offset, when ATTN_CAUSAL), window
 * (i + q_offset - window_left <= j <= i + q_offset + window_right, bounds of -1 omitted),
 * kv_lens (j < kv_lens[b]), and the boolean mask (nonzero); a bias of -inf also hides a key.
 * A row that sees no key follows desc.masked_rows.
 */
typedef struct attn_args {
    size_t struct_size;       /* sizeof(attn_args); set by attn_args_init */
    uint32_t batch;           /* >= 1 */
    uint32_t q_len;           /* query rows per (batch, head), >= 1 */
    uint32_t kv_len;          /* keys per (batch, kv head), >= 1 */

    const float *q;           /* [batch, q_heads, q_len, qk_dim] through q_strides */
    attn_strides q_strides;
    const float *k;           /* [batch, kv_heads, kv_len, qk_dim] through k_strides */
    attn_strides k_strides;
    const float *v;           /* [batch, kv_heads, kv_len, v_dim] through v_strides */
    attn_strides v_strides;
    float *out;               /* [batch, q_heads, q_len, v_dim] through out_strides; strides
                                 must not make two elements share memory */
    attn_strides out_strides;

    int64_t q_offset;         /* position of query row 0 on the key axis, for causal and window;
                                 ATTN_Q_OFFSET_DEFAULT = kv_len - q_len */
    const int32_t *kv_lens;   /* optional [batch]: keys j >= kv_lens[b] are hidden */

    const uint8_t *mask;      /* optional boolean mask [batch, q_heads, q_len, kv_len]: nonzero =
                                 visible; broadcast through zero strides */
    attn_strides mask_strides;
    const float *bias;        /* optional additive bias, same shape, added to the scaled scores */
    attn_strides bias_strides;

    attn_weights_mode weights_mode; /* which attention weights to write, if any */
    float *weights;           /* see attn_weights_mode; NULL with ATTN_WEIGHTS_NONE */
    float *lse;               /* optional [batch, q_heads, q_len]: ln sum_j exp(score_j) */
    float *entropy;           /* optional [batch, q_heads, q_len]: -sum_j p_j ln p_j */
} attn_args;

/*
 * Fills *args with an empty call: struct_size set, all pointers NULL, all sizes and strides 0,
 * q_offset = ATTN_Q_OFFSET_DEFAULT, weights_mode = ATTN_WEIGHTS_NONE. A NULL args is ignored.
 * Thread-safe.
 */
ATTN_EXPORT void attn_args_init(attn_args *args);

/*
 * Computes attention for one instance with the context's descriptor:
 *   out[b,h,i,:] = sum_j softmax_j(scale * q[b,h,i,:] . k[b,g,j,:] + bias[b,h,i,j]) v[b,g,j,:]
 * over the keys j visible to row i (see attn_args), with g = h / (q_heads / kv_heads).
 * The computation is tiled over query and key blocks with an online softmax: memory use is
 * independent of the lengths, no allocation happens, and tiles that causal, window or kv_lens
 * hide entirely are skipped. Optional outputs (weights, lse, entropy) are written straight into
 * the caller's buffers. The work is spread over the context's threads in pieces that do not
 * depend on the thread count, so results are bitwise identical for any desc.threads. With few
 * queries and many keys (q_len <= 16, kv_len >= 512, no weights requested) the keys are split
 * into fixed chunks computed in parallel and combined through their log-sum-exp, and the query
 * heads sharing a kv head are computed together so K and V are read once.
 *   ctx:  a context from attn_create*(); its workspace is used, so one thread at a time.
 *   args: the instance; read during the call only. Inputs are never written. Outputs must not
 *         overlap inputs or each other.
 * Returns ATTN_OK, or: ATTN_ERR_NULL_POINTER (ctx, args, q, k, v or out NULL; weights NULL with a
 * weights mode), ATTN_ERR_STRUCT_SIZE, ATTN_ERR_ZERO_SIZE (batch, q_len or kv_len 0),
 * ATTN_ERR_STRIDE, ATTN_ERR_OVERFLOW, ATTN_ERR_OFFSET, ATTN_ERR_KV_LENS, ATTN_ERR_BAD_OPTION
 * (unknown weights_mode, or weights given with ATTN_WEIGHTS_NONE), ATTN_ERR_ALIAS,
 * ATTN_ERR_BUSY (another thread is inside attn_forward on ctx: using one context from two
 * threads at once is outside the contract, and this detects it rather than computing garbage;
 * the call in progress is unaffected), ATTN_ERR_FORKED (ctx was created before this process was
 * forked from its parent: its worker threads do not exist here; create a new context).
 * On failure no output is written and attn_last_error(ctx) names the argument (for a NULL ctx,
 * and for ATTN_ERR_BUSY, attn_last_error(NULL) on the calling thread).
 */
ATTN_EXPORT attn_status attn_forward(attn_ctx *ctx, const attn_args *args);

#ifdef __cplusplus
}
#endif

#endif /* ATTN_ATTN_H */
