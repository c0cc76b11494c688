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
    ATTN_ERR_STRUCT_SIZE = 11,    /* struct_size is not a size of this struct this library knows */
    ATTN_ERR_LIMIT = 12,          /* a size exceeds a documented limit (see ATTN_MAX_HEAD_DIM) */
    ATTN_ERR_ALIAS = 13,          /* an output overlaps an input or another output */
    ATTN_ERR_WORKSPACE_SIZE = 14, /* a caller-provided workspace is smaller than required */
    ATTN_ERR_WORKSPACE_ALIGN = 15,/* a caller-provided workspace is not ATTN_WORKSPACE_ALIGN-aligned */
    ATTN_ERR_NO_MEMORY = 16,      /* the allocator returned NULL */
    ATTN_ERR_THREADS = 17,        /* the system could not start a worker thread */
    ATTN_ERR_BUSY = 18,           /* the context is already in use by another call (thread) */
    ATTN_ERR_FORKED = 19,         /* the context was inherited across fork(): its worker threads
                                     do not exist in this process */
    ATTN_ERR_CAPACITY = 20        /* a K/V cache has no room for the tokens (attn_kv_cache.h) */
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

/* attn_desc.ops bits: the operations a context is created for. Each one adds its own part to the
 * workspace, so a context pays only for what it runs. 0 means ATTN_OP_FORWARD. */
#define ATTN_OP_FORWARD 0x1u  /* attn_forward */
#define ATTN_OP_BACKWARD 0x2u /* attn_backward */

/* What a query row that sees no key at all (a "fully masked row") produces. The values are
 * pinned; attn_desc.masked_rows holds them in a uint32_t. */
typedef enum attn_masked_rows {
    ATTN_MASKED_ROWS_ZERO = 0, /* out row 0, weights row 0, entropy 0, lse -inf (default) */
    ATTN_MASKED_ROWS_NAN = 1   /* out row NaN, weights row NaN, entropy NaN, lse -inf */
} attn_masked_rows;

/* How K and V are stored (attn_desc.kv_dtype; pinned values). The 16-bit types halve the bytes
 * read, which is what decoding is bound by; they are converted to float tile by tile and every
 * product and sum stays in float32. */
typedef enum attn_kv_dtype {
    ATTN_KV_F32 = 0,  /* float (default) */
    ATTN_KV_F16 = 1,  /* IEEE 754 binary16, as uint16_t bits */
    ATTN_KV_BF16 = 2  /* bfloat16 (the upper half of a float), as uint16_t bits */
} attn_kv_dtype;

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
 * fields you need. Fields are only ever appended, and struct_size tells the library which ones
 * the caller knows: a caller built against an older, smaller attn_desc is accepted and the
 * fields beyond its struct_size take their defaults (see attn_desc_init_size). Every field has a
 * fixed-width type, so other languages can mirror the layout exactly.
 */
typedef struct attn_desc {
    size_t struct_size;        /* size of the caller's attn_desc; set by attn_desc_init */
    uint32_t q_heads;          /* query heads, >= 1 */
    uint32_t kv_heads;         /* key/value heads, >= 1, dividing q_heads; query head h reads
                                  kv head h / (q_heads / kv_heads) (GQA; 1 = multi-query) */
    uint32_t qk_dim;           /* feature size of Q and K, 1 .. ATTN_MAX_HEAD_DIM */
    uint32_t v_dim;            /* feature size of V and out, 1 .. ATTN_MAX_HEAD_DIM */
    float scale;               /* scores = (q . k) * scale; 0 selects 1/sqrt(qk_dim) */
    uint32_t flags;            /* OR of ATTN_CAUSAL, ATTN_BLAS_THREADS_UNTOUCHED; 0 = none */
    int64_t window_left;       /* local attention: key j visible only if
                                  j >= i + q_offset - window_left; -1 = unbounded */
    int64_t window_right;      /* ... and only if j <= i + q_offset + window_right; -1 = unbounded */
    uint32_t masked_rows;      /* an attn_masked_rows: policy for rows that see no key */
    const attn_allocator *allocator; /* NULL: the C library's aligned allocation */
    uint32_t threads;          /* threads a call runs on, 1 .. ATTN_MAX_THREADS;
                                  0 = the processors this process may use */
    /* --- since 0.2 --- */
    uint32_t ops;              /* OR of ATTN_OP_* the context will run; 0 = ATTN_OP_FORWARD */
    float dropout;             /* attention dropout probability p, 0 <= p < 1; 0 = none. Each
                                  weight is dropped (zeroed) after the softmax and before P.V
                                  with probability p, the kept ones scaled by 1 / (1 - p), by the
                                  pinned mask of attn_dropout_mask() keyed by the call's
                                  dropout_seed and dropout_offset; lse and entropy describe the
                                  weights before dropout, the weights output is after it */
    uint32_t kv_dtype;         /* an attn_kv_dtype: the element type of args.k and args.v (and of
                                  attn_backward_args.k, .v). With ATTN_KV_F16 or ATTN_KV_BF16 those
                                  pointers point to uint16_t elements: cast them to const float *
                                  (strides still count elements). The context reserves room to
                                  convert one key and one value tile per thread. */
} attn_desc;

/*
 * Fills the caller's attn_desc with the defaults: struct_size = `size`, 1 query head, 1 kv head,
 * qk_dim = v_dim = 64, scale 0 (1/sqrt(qk_dim)), no flags, unbounded window,
 * ATTN_MASKED_ROWS_ZERO, default allocator, threads 0 (all available processors), ops 0
 * (forward only), dropout 0, kv_dtype ATTN_KV_F32. Exactly `size` bytes are written, so a program built against an older, smaller
 * attn_desc is never written past its struct; a `size` larger than this library's attn_desc gets
 * its unknown tail zeroed (attn_create then refuses it with ATTN_ERR_STRUCT_SIZE). A NULL desc,
 * or a size below sizeof(size_t), is ignored. Thread-safe.
 * Call it through the attn_desc_init(desc) macro, which passes sizeof *(desc).
 */
ATTN_EXPORT void attn_desc_init_size(attn_desc *desc, size_t size);
#define attn_desc_init(desc) attn_desc_init_size((desc), sizeof *(desc))

/*
 * Returns the number of bytes attn_create_static() needs for `desc` (the context itself plus its
 * workspace), or 0 if the descriptor is invalid; attn_last_error(NULL) then says why. The size
 * depends on the descriptor (head dims, thread count and the operations in desc->ops) and the
 * library's tile sizes only, never on sequence lengths or batch. With desc->threads = 0 the thread count is the number of
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
 * function), ATTN_ERR_STRUCT_SIZE (desc->struct_size is not the size of an attn_desc of this or an
 * earlier version), ATTN_ERR_ZERO_SIZE (a head count or dim is 0), ATTN_ERR_HEADS,
 * ATTN_ERR_LIMIT (a dim above ATTN_MAX_HEAD_DIM), ATTN_ERR_SCALE, ATTN_ERR_BAD_OPTION (unknown
 * flag or ops bits, or masked_rows value), ATTN_ERR_WINDOW, ATTN_ERR_LIMIT (threads above
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
 * a NULL workspace, ATTN_ERR_WORKSPACE_ALIGN and ATTN_ERR_WORKSPACE_SIZE. Every check is made
 * before the workspace is touched, so those failures leave it unchanged; only ATTN_ERR_THREADS
 * (a worker could not start) comes after the context was laid out in it, and then its contents
 * are unspecified. Thread-safe.
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
 * string after a success); with NULL, of the last attn_create(), attn_create_static(),
 * attn_workspace_size() or attn_dropout_mask() that failed on the calling thread. The text
 * names the argument and the bound, e.g. "args->kv_lens[3] = 70 exceeds kv_len = 64". The string
 * is owned by the library and stays valid until the next call with the same context (or on the
 * same thread). Never NULL.
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

/* Strides of a contiguous [batch, heads, seq, dim] tensor. A component too large for int64_t is
 * INT64_MAX, which attn_forward refuses as ATTN_ERR_OVERFLOW. Thread-safe. */
ATTN_EXPORT attn_strides attn_strides_bhsd(uint32_t heads, uint32_t seq, uint32_t dim);

/*
 * Strides of a contiguous [batch, seq, heads, dim] tensor. A packed QKV buffer
 * [batch, seq, 3, heads, dim] is three such views with heads' = 3 * heads: use
 * attn_strides_bshd(3 * heads, seq, dim) with base pointers p, p + heads*dim, p + 2*heads*dim.
 * Saturates like attn_strides_bhsd. Thread-safe.
 */
ATTN_EXPORT attn_strides attn_strides_bshd(uint32_t heads, uint32_t seq, uint32_t dim);

/* What attn_args.weights receives (pinned values, held in a uint32_t). */
typedef enum attn_weights_mode {
    ATTN_WEIGHTS_NONE = 0,     /* weights must be NULL */
    ATTN_WEIGHTS_PER_HEAD = 1, /* weights is [batch, q_heads, q_len, kv_len] */
    ATTN_WEIGHTS_HEAD_MEAN = 2 /* weights is [batch, q_len, kv_len]: the mean over query heads */
} attn_weights_mode;

/*
 * One forward call. Always start from attn_args_init(); like attn_desc, the struct only grows at
 * its end and struct_size says which fields the caller knows (missing ones take their defaults).
 * Visibility of key j to query row i of
 * batch b is the AND of: causal (j <= i + q_offset, when ATTN_CAUSAL), window
 * (i + q_offset - window_left <= j <= i + q_offset + window_right, bounds of -1 omitted),
 * kv_lens (j < kv_lens[b]), and the boolean mask (nonzero); a bias of -inf also hides a key.
 * A row that sees no key follows desc.masked_rows.
 */
typedef struct attn_args {
    size_t struct_size;       /* size of the caller's attn_args; set by attn_args_init */
    uint32_t batch;           /* >= 1 */
    uint32_t q_len;           /* query rows per (batch, head), >= 1 */
    uint32_t kv_len;          /* keys per (batch, kv head), >= 1 */

    const float *q;           /* [batch, q_heads, q_len, qk_dim] through q_strides */
    attn_strides q_strides;
    const float *k;           /* [batch, kv_heads, kv_len, qk_dim] through k_strides; elements of
                                 desc.kv_dtype (16-bit ones through a cast pointer) */
    attn_strides k_strides;
    const float *v;           /* [batch, kv_heads, kv_len, v_dim] through v_strides; likewise */
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

    uint32_t weights_mode;    /* an attn_weights_mode: which attention weights to write */
    float *weights;           /* see attn_weights_mode; NULL with ATTN_WEIGHTS_NONE */
    float *lse;               /* optional [batch, q_heads, q_len]: ln sum_j exp(score_j) */
    float *entropy;           /* optional [batch, q_heads, q_len]: -sum_j p_j ln p_j */

    /* --- since 0.2: strides of the optional outputs. All three components 0 (the default)
     * means contiguous: attn_strides_bhsd(q_heads, q_len, kv_len) for per-head weights,
     * attn_strides_bhsd(1, q_len, kv_len) for head-mean weights (whose head stride is unused),
     * attn_strides_bhsd(q_heads, q_len, 1) for lse and entropy (one float per row). Otherwise
     * the key axis of weights is contiguous and two elements may not share memory. --- */
    attn_strides weights_strides;
    attn_strides lse_strides;
    attn_strides entropy_strides;

    /* --- since 0.2: the dropout mask's key (used when desc.dropout > 0): the same seed and
     * offset in attn_backward regenerate the same mask. --- */
    uint64_t dropout_seed;
    uint32_t dropout_offset;
} attn_args;

/*
 * Fills the caller's attn_args with an empty call: struct_size = `size`, all pointers NULL, all
 * sizes and strides 0, q_offset = ATTN_Q_OFFSET_DEFAULT, weights_mode = ATTN_WEIGHTS_NONE.
 * Writes exactly `size` bytes, as attn_desc_init_size does (a larger size gets a zeroed tail and
 * is refused by attn_forward). A NULL args, or a size below sizeof(size_t), is ignored.
 * Thread-safe. Call it through the attn_args_init(args) macro, which passes sizeof *(args).
 */
ATTN_EXPORT void attn_args_init_size(attn_args *args, size_t size);
#define attn_args_init(args) attn_args_init_size((args), sizeof *(args))

/* The 0.1 entry points behind the macros, kept for programs built against 0.1: they write the
 * 0.1 size of the struct (the macros above hide them from newer callers). */
ATTN_EXPORT void(attn_desc_init)(attn_desc *desc);
ATTN_EXPORT void(attn_args_init)(attn_args *args);

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
 *   ctx:  a context from attn_create*() whose desc.ops includes ATTN_OP_FORWARD (the default);
 *         its workspace is used, so one thread at a time.
 *   args: the instance; read during the call only. Inputs are never written. Outputs must not
 *         overlap inputs or each other; the test is by address span (the bytes from a tensor's
 *         first to its last addressable element), so an output interleaved with an input
 *         sharing no element, such as one slot of a packed buffer whose other slot is an input,
 *         is refused as ATTN_ERR_ALIAS too.
 * Returns ATTN_OK, or: ATTN_ERR_NULL_POINTER (ctx, args, q, k, v or out NULL; weights NULL with a
 * weights mode), ATTN_ERR_STRUCT_SIZE, ATTN_ERR_ZERO_SIZE (batch, q_len or kv_len 0),
 * ATTN_ERR_STRIDE, ATTN_ERR_OVERFLOW, ATTN_ERR_OFFSET, ATTN_ERR_KV_LENS, ATTN_ERR_BAD_OPTION
 * (unknown weights_mode, weights given with ATTN_WEIGHTS_NONE, or a context created without
 * ATTN_OP_FORWARD), ATTN_ERR_ALIAS,
 * ATTN_ERR_BUSY (another thread is inside a call on ctx: using one context from two
 * threads at once is outside the contract, and this detects it rather than computing garbage;
 * the call in progress is unaffected), ATTN_ERR_FORKED (ctx was created before this process was
 * forked from its parent: its worker threads do not exist here; create a new context).
 * On failure no output is written and attn_last_error(ctx) names the argument (for a NULL ctx,
 * and for ATTN_ERR_BUSY, attn_last_error(NULL) on the calling thread).
 */
ATTN_EXPORT attn_status attn_forward(attn_ctx *ctx, const attn_args *args);

/* ------------------------------------------------------------------------------------------ */
/* Backward pass                                                                               */
/* ------------------------------------------------------------------------------------------ */

/*
 * One backward call: the forward's inputs and options, its output and log-sum-exp, the gradient
 * of the loss with respect to the output, and where to write the gradients. Always start from
 * attn_backward_args_init(); struct_size works as for attn_args. Shapes are those of attn_args;
 * every tensor has strides with a contiguous last axis.
 */
typedef struct attn_backward_args {
    size_t struct_size;       /* size of the caller's struct; set by attn_backward_args_init */
    uint32_t batch;           /* as in the forward call */
    uint32_t q_len;
    uint32_t kv_len;

    const float *q;           /* [batch, q_heads, q_len, qk_dim], the forward's inputs */
    attn_strides q_strides;
    const float *k;           /* [batch, kv_heads, kv_len, qk_dim] */
    attn_strides k_strides;
    const float *v;           /* [batch, kv_heads, kv_len, v_dim] */
    attn_strides v_strides;
    const float *out;         /* [batch, q_heads, q_len, v_dim]: the forward's output */
    attn_strides out_strides;
    const float *dout;        /* [batch, q_heads, q_len, v_dim]: d loss / d out */
    attn_strides dout_strides;
    const float *lse;         /* [batch, q_heads, q_len]: the forward's lse (-inf for a row that
                                 saw no key, under either masked-rows policy) */
    attn_strides lse_strides; /* {0, 0, 0}: contiguous */

    int64_t q_offset;         /* as in the forward; ATTN_Q_OFFSET_DEFAULT = kv_len - q_len */
    const int32_t *kv_lens;   /* optional [batch], as in the forward */
    const uint8_t *mask;      /* optional boolean mask, as in the forward */
    attn_strides mask_strides;
    const float *bias;        /* optional additive bias, as in the forward */
    attn_strides bias_strides;

    float *dq;                /* [batch, q_heads, q_len, qk_dim]: d loss / d q, overwritten */
    attn_strides dq_strides;
    float *dk;                /* [batch, kv_heads, kv_len, qk_dim]: overwritten; a kv head's
                                 gradient sums over the query heads that share it */
    attn_strides dk_strides;
    float *dv;                /* [batch, kv_heads, kv_len, v_dim]: overwritten */
    attn_strides dv_strides;
    float *dbias;             /* optional, only with bias: d loss / d bias in the bias's own
                                 shape: an axis along which bias_strides is 0 (broadcast) has size
                                 1 and its gradient is summed over it; [Bb, Hb, Lqb, kv_len] */
    attn_strides dbias_strides; /* {0, 0, 0}: contiguous in that shape */

    uint64_t dropout_seed;    /* with desc.dropout > 0: the forward call's seed and offset, so the */
    uint32_t dropout_offset;  /* backward regenerates the mask the forward applied */
} attn_backward_args;

/* Fills the caller's attn_backward_args with an empty call (like attn_args_init_size). */
ATTN_EXPORT void attn_backward_args_init_size(attn_backward_args *args, size_t size);
#define attn_backward_args_init(args) attn_backward_args_init_size((args), sizeof *(args))

/*
 * Computes the gradients of a loss L with respect to q, k, v (and the bias) from dout = dL/dout,
 * for the attention attn_forward computed with the same context and arguments:
 *   P = softmax(scale Q Kᵀ + bias) over the visible keys, recomputed from the saved lse;
 *   dV = Pᵀ dO;  dP = dO Vᵀ;  dS = P ∘ (dP - rowsum(dO ∘ O));  dQ = scale dS K;  dK = scale dSᵀ Q;
 *   dbias = dS (summed over the bias's broadcast axes).
 * With desc.dropout = p > 0 the mask M of (dropout_seed, dropout_offset) is regenerated: the
 * forward computed O = (P ∘ M / (1 - p)) V, so dV = (P ∘ M / (1 - p))ᵀ dO and dP is taken through
 * the same mask; dS keeps the formula above (rowsum(dO ∘ O) uses the dropped output).
 * Every product is a cblas_sgemm on tiles; tiles that causal, window or kv_lens hide are skipped;
 * no Lq x Lk buffer exists and nothing is allocated. The work is split so that each gradient
 * element is owned by one task (a key-major pass for dK and dV, a query-major pass for dQ and
 * dbias), so results are bitwise identical for any thread count, with no atomics.
 * A row that saw no key (lse = -inf) contributes nothing: its dq row is 0, and it adds nothing to
 * dk, dv or dbias. Positions hidden by a mask, a structured bound or a -inf bias get dbias 0; keys
 * no row sees get dk = dv = 0.
 *   ctx:  a context whose desc.ops includes ATTN_OP_BACKWARD (with the forward's descriptor:
 *         heads, dims, scale, causal, window); one thread at a time.
 *   args: read during the call only. Inputs are never written; outputs (dq, dk, dv, dbias) must
 *         not overlap inputs or each other (by address span, as in attn_forward).
 * Returns ATTN_OK, or: ATTN_ERR_NULL_POINTER (ctx, args, q, k, v, out, dout, lse, dq, dk or dv
 * NULL), ATTN_ERR_STRUCT_SIZE, ATTN_ERR_ZERO_SIZE, ATTN_ERR_BAD_OPTION (dbias without bias, or a
 * context created without ATTN_OP_BACKWARD), ATTN_ERR_STRIDE, ATTN_ERR_OVERFLOW, ATTN_ERR_OFFSET,
 * ATTN_ERR_KV_LENS, ATTN_ERR_ALIAS, ATTN_ERR_BUSY and ATTN_ERR_FORKED (as for attn_forward). On
 * failure nothing is written; attn_last_error(ctx) says why (attn_last_error(NULL) for
 * ATTN_ERR_BUSY).
 */
ATTN_EXPORT attn_status attn_backward(attn_ctx *ctx, const attn_backward_args *args);
/* Dropout                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/*
 * Writes the attention-dropout keep-mask of one (batch, head) and a block of rows and columns:
 * keep[r * ld + c] = 1 if element (batch_index, head, row0 + r, col0 + c) of the attention
 * weights is kept, 0 if it is dropped, for r < rows and c < cols; the bytes between rows
 * (c >= cols) are not touched. The mask is pinned, a pure function of its arguments: element
 * (b, h, i, j) is dropped iff word (j mod 4) of
 *     Philox4x32-10(counter = (j / 4, i, b * q_heads + h, offset),
 *                   key = (seed mod 2^32, seed / 2^32))
 * is below floor(p * 2^32) (integer divisions; counter words mod 2^32; Philox4x32-10 exactly as
 * in the Random123 library). It does not depend on tiles, threads or call order, so any block
 * can be computed on its own; docs/guide.md ("Dropout") reproduces it in numpy. Each element is
 * dropped with probability floor(p * 2^32) / 2^32, kept elements are scaled by 1 / (1 - p)
 * where dropout is applied; p = 0 keeps everything.
 *   p:           dropout probability, 0 <= p < 1.
 *   seed:        the 64-bit key.
 *   offset:      counter word 3, e.g. a step number, so that one seed gives a fresh mask per step.
 *   q_heads:     query heads of the problem (the head axis of the weights), >= 1.
 *   batch_index: b; any value (b * q_heads + h is taken mod 2^32, as in the formula).
 *   head:        h, the query head, < q_heads.
 *   row0, rows:  query positions row0 .. row0 + rows - 1; row0 >= 0, rows >= 1,
 *                row0 + rows <= 2^32 (positions are 32-bit, as q_len is).
 *   col0, cols:  key positions col0 .. col0 + cols - 1, with the same bounds.
 *   keep:        caller buffer of at least (rows - 1) * ld + cols bytes.
 *   ld:          distance in bytes between the starts of consecutive rows in keep, >= cols.
 * Returns ATTN_OK, or: ATTN_ERR_NULL_POINTER (keep NULL), ATTN_ERR_BAD_OPTION (p NaN or outside
 * [0, 1)), ATTN_ERR_ZERO_SIZE (q_heads, rows or cols 0), ATTN_ERR_LIMIT (head >= q_heads;
 * row0, col0 negative or above 2^32 - 1; rows, cols negative or reaching past position 2^32 - 1),
 * ATTN_ERR_STRIDE (ld < cols), ATTN_ERR_OVERFLOW ((rows - 1) * ld + cols exceeds PTRDIFF_MAX).
 * The arguments are checked in the order keep, p, q_heads, head, rows and row0, cols and col0,
 * ld, extent, so a call with several faults reports the first. On failure nothing is written
 * and attn_last_error(NULL) names the argument and the bound on the calling thread.
 * Runs on the calling thread with the kernel variant of attn_kernel_isa() (every variant gives
 * the same bytes); needs no context and allocates nothing. Thread-safe.
 */
ATTN_EXPORT attn_status attn_dropout_mask(float p, uint64_t seed, uint32_t offset,
                                          uint32_t q_heads, uint32_t batch_index, uint32_t head,
                                          int64_t row0, int64_t rows, int64_t col0, int64_t cols,
                                          uint8_t *keep, int64_t ld);

/* ------------------------------------------------------------------------------------------ */
/* Merging partial results                                                                     */
/* ------------------------------------------------------------------------------------------ */

/*
 * One partial result: attention of the queries over one subset of the keys, as attn_forward
 * returns it with an lse. Both tensors are read only. This struct is fixed (it is an array
 * element); later additions to the merge go into attn_merge_args.
 */
typedef struct attn_merge_part {
    const float *out;         /* [batch, heads, q_len, v_dim]: the part's attention output */
    attn_strides out_strides; /* {0, 0, 0}: contiguous */
    const float *lse;         /* [batch, heads, q_len]: the part's log-sum-exp; -inf where the
                                 row saw no key of this part */
    attn_strides lse_strides; /* {0, 0, 0}: contiguous */
} attn_merge_part;

/*
 * One merge call. Always start from attn_merge_args_init(); like attn_args, the struct only
 * grows at its end and struct_size says which fields the caller knows.
 */
typedef struct attn_merge_args {
    size_t struct_size;       /* size of the caller's struct; set by attn_merge_args_init */
    uint32_t n_parts;         /* number of parts, >= 1 */
    uint32_t batch;           /* >= 1 */
    uint32_t heads;           /* query heads, >= 1 */
    uint32_t q_len;           /* query rows per (batch, head), >= 1 */
    uint32_t v_dim;           /* feature size of out, 1 .. ATTN_MAX_HEAD_DIM */
    uint32_t masked_rows;     /* an attn_masked_rows: what a row no part saw a key for gets;
                                 ATTN_MASKED_ROWS_ZERO (default) or ATTN_MASKED_ROWS_NAN */
    const attn_merge_part *parts; /* [n_parts], combined in this order */
    float *out;               /* [batch, heads, q_len, v_dim]: the merged output */
    attn_strides out_strides; /* {0, 0, 0}: contiguous */
    float *lse;               /* optional [batch, heads, q_len]: the merged log-sum-exp */
    attn_strides lse_strides; /* {0, 0, 0}: contiguous */
} attn_merge_args;

/* Fills the caller's attn_merge_args with an empty call: struct_size = `size`, everything else
 * 0 or NULL (masked_rows = ATTN_MASKED_ROWS_ZERO). Writes exactly `size` bytes, as
 * attn_args_init_size does. A NULL args, or a size below sizeof(size_t), is ignored.
 * Thread-safe. Call it through the attn_merge_args_init(args) macro. */
ATTN_EXPORT void attn_merge_args_init_size(attn_merge_args *args, size_t size);
#define attn_merge_args_init(args) attn_merge_args_init_size((args), sizeof *(args))

/*
 * Combines partial results of attention of the SAME queries over DISJOINT sets of keys into
 * the result over their union (split keys, chunked prefill over a long cache, ring attention
 * across machines). For every row [b, h, i], with o_k and lse_k part k's out row and lse:
 *   lse = ln sum_k exp(lse_k)        (computed stably, relative to the largest lse_k)
 *   out = sum_k exp(lse_k - lse) o_k
 * which is exactly attention over the union of the parts' visible keys.
 *   - A part whose lse_k is -inf saw no key for that row and contributes nothing, whatever its
 *     out row holds (NaN included: that is what attn_forward's ATTN_MASKED_ROWS_NAN writes).
 *   - A row for which every part has lse_k = -inf saw no key at all: out follows
 *     args->masked_rows (0 or NaN) and lse is -inf.
 *   - An lse_k of NaN makes the row's out and lse NaN; one of +inf makes out NaN and lse +inf.
 *     NaN or Inf inside an out row of a part with a finite lse_k reaches the merged row.
 * The weights exp(lse_k - lse) and the sums are computed in double precision, part 0 first,
 * then 1, 2, ...: the result is deterministic (the same call gives the same bits) and adds one
 * float rounding to what the parts carry. Permuting the parts changes only the rounding of the
 * double sums (about 2^-53 of sum_k |weight_k o_k|), so rarely more than the last bit.
 * The call runs on the calling thread, reads each part once and allocates nothing; it needs no
 * context and is thread-safe (calls on disjoint outputs may run concurrently).
 *   args: read during the call only. The parts are never written (unless merged into in
 *         place) and may overlap each other. The outputs (out, lse) must not overlap any part's
 *         out or lse, or each other (by address span, as in attn_forward), with one exception
 *         for folding in place: out may be exactly parts[0].out (same pointer and strides once
 *         {0, 0, 0} is resolved), and lse exactly parts[0].lse.
 * Returns ATTN_OK, or: ATTN_ERR_NULL_POINTER (args, parts, out, a part's out or lse NULL),
 * ATTN_ERR_STRUCT_SIZE, ATTN_ERR_ZERO_SIZE (n_parts, batch, heads, q_len or v_dim 0),
 * ATTN_ERR_LIMIT (v_dim above ATTN_MAX_HEAD_DIM), ATTN_ERR_BAD_OPTION (masked_rows not an
 * attn_masked_rows), ATTN_ERR_STRIDE (a negative stride; output elements that would share
 * memory), ATTN_ERR_OVERFLOW (a view's extent or default strides overflow the index range),
 * ATTN_ERR_ALIAS. On failure nothing is written and attn_last_error(NULL) on the calling thread
 * names the argument, e.g. "args->parts[2].lse_strides.seq = -1 is negative".
 */
ATTN_EXPORT attn_status attn_merge(const attn_merge_args *args);

#ifdef __cplusplus
}
#endif

#endif /* ATTN_ATTN_H */
