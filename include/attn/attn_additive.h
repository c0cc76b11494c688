/*
 * libattn additive (Bahdanau) attention, forward and backward:
 *
 *   qp = q W_qᵀ + bias      [B, Lq, A]     (cblas_sgemm)
 *   kp = k W_kᵀ             [B, Lk, A]     (cblas_sgemm, kept transposed as [B, A, Lk])
 *   s_ij = Σ_a w_a tanh(qp_ia + kp_ja)     (a fused vector kernel, tile by tile)
 *   p_i = softmax over the visible keys of s_i;  out_i = Σ_j p_ij v_j
 *
 * The scores are never stored: each tile of at most 256 keys is scored and fed to the engine's
 * online softmax (running max and sum, deferred normalisation), so memory does not grow with
 * B·Lq·Lk, let alone B·Lq·Lk·A. The tanh is within 3 ulp of the exact value in every kernel
 * variant (docs/testing.md).
 *
 * The layer object owns an attn_ctx and per-thread tiles whose size depends on A and v_dim
 * only; per-call memory is the caller's, sized by attn_additive_activation_size() and, for
 * training, attn_additive_saved_size().
 *
 * Conventions are those of attn.h and attn_mha.h: statuses, nothing written to the caller's
 * buffers on failure, the reason in attn_additive_last_error(), one thread at a time per
 * object, results bitwise identical for any desc.threads.
 */
#ifndef ATTN_ATTN_ADDITIVE_H
#define ATTN_ATTN_ADDITIVE_H

#include <stddef.h>
#include <stdint.h>

#include <attn/attn.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Largest q_dim and k_dim accepted (every parameter matrix's leading dimension stays a BLAS
 * int); attn_dim and v_dim are bounded by ATTN_MAX_HEAD_DIM. */
#define ATTN_ADDITIVE_MAX_DIM 1048576u

/*
 * The kind of layer, fixed for the life of an attn_additive. Start from
 * attn_additive_desc_init(); the struct only grows at its end.
 */
typedef struct attn_additive_desc {
    size_t struct_size;   /* size of the caller's struct; set by attn_additive_desc_init */
    uint32_t q_dim;       /* Dq >= 1: the query's feature size */
    uint32_t k_dim;       /* Dk >= 1: the key's feature size */
    uint32_t v_dim;       /* Dv >= 1: the value's (and the output's) feature size */
    uint32_t attn_dim;    /* A >= 1: rows of W_q and W_k, length of w and bias */
    uint32_t bias;        /* 1 (default): the bias [A] exists; 0: none */
    uint32_t flags;       /* OR of ATTN_CAUSAL (key j visible to query i iff j <= i + Lk - Lq)
                             and ATTN_BLAS_THREADS_UNTOUCHED */
    uint32_t masked_rows; /* an attn_masked_rows for query rows that see no key (their
                             gradients are 0 under either policy) */
    uint32_t threads;     /* as attn_desc.threads: 0 = every available processor */
    const attn_allocator *allocator; /* NULL: the C library; used for the object and its
                                        context */
} attn_additive_desc;

/* Fills defaults: Dq = Dk = Dv = A = 64, bias 1, flags 0, ATTN_MASKED_ROWS_ZERO, threads 0,
 * default allocator. Writes exactly `size` bytes. Thread-safe. Use the macro. */
ATTN_EXPORT void attn_additive_desc_init_size(attn_additive_desc *desc, size_t size);
#define attn_additive_desc_init(desc) attn_additive_desc_init_size((desc), sizeof *(desc))

/* Opaque layer object. */
typedef struct attn_additive attn_additive;

/*
 * Validates `desc` and creates a layer: the object, its per-thread tiles (ATTN_TILE_K × A
 * floats per thread, for the backward) and an attn_ctx for one head of width A with v_dim Dv,
 * none of which depends on the lengths.
 *   desc:    read during the call only.
 *   out_add: receives the layer; NULL on failure.
 * Returns ATTN_OK, or ATTN_ERR_NULL_POINTER (desc or out_add NULL, an allocator with a NULL
 * function), ATTN_ERR_STRUCT_SIZE, ATTN_ERR_ZERO_SIZE (a dim 0), ATTN_ERR_LIMIT (q_dim or
 * k_dim above ATTN_ADDITIVE_MAX_DIM, attn_dim or v_dim above ATTN_MAX_HEAD_DIM, threads above
 * ATTN_MAX_THREADS), ATTN_ERR_BAD_OPTION (bias not 0 or 1, unknown flags, masked_rows),
 * ATTN_ERR_NO_MEMORY, ATTN_ERR_THREADS. The reason is in attn_additive_last_error(NULL) on
 * the calling thread. Thread-safe. Release with attn_additive_destroy().
 */
ATTN_EXPORT attn_status attn_additive_create(const attn_additive_desc *desc,
                                             attn_additive **out_add);

/* Stops the layer's threads and frees the object, its context and its tiles (the caller's
 * buffers are the caller's). NULL is ignored. Not concurrently with any other call on it. */
ATTN_EXPORT void attn_additive_destroy(attn_additive *add);

/*
 * The last failure: of the last call on `add` (empty after a success), or with NULL, of the
 * last attn_additive_create or call with a NULL layer on this thread. Owned by the library,
 * valid until the next call on the same object (or thread). Never NULL.
 */
ATTN_EXPORT const char *attn_additive_last_error(const attn_additive *add);

/*
 * Bytes of the activations buffer every attn_additive_forward and attn_additive_backward call
 * of this shape needs: the projected queries and keys (or their gradients), about
 * 4 (B Lq A + B A Lk) bytes, plus per-row and per-block sums of the backward and alignment
 * padding. Linear in B·Lq and B·Lk. Returns 0 if add is NULL, a size is 0 or the size does not
 * fit size_t. Reads the layer only: callable from any thread, also during a call on it.
 */
ATTN_EXPORT size_t attn_additive_activation_size(const attn_additive *add, uint32_t batch,
                                                 uint32_t q_len, uint32_t kv_len);

/*
 * Bytes of the saved buffer a training forward call fills for attn_additive_backward: the
 * projected queries and keys, the output and its log-sum-exp per row. 0 as above; threading
 * as attn_additive_activation_size().
 */
ATTN_EXPORT size_t attn_additive_saved_size(const attn_additive *add, uint32_t batch,
                                            uint32_t q_len, uint32_t kv_len);

/*
 * One call of the layer. Start from attn_additive_args_init(). Every tensor is contiguous, row
 * major, in the shape given.
 */
typedef struct attn_additive_args {
    size_t struct_size;       /* set by attn_additive_args_init */
    uint32_t batch;           /* B >= 1 */
    uint32_t q_len;           /* Lq >= 1 */
    uint32_t kv_len;          /* Lk >= 1 */

    const float *query;       /* [B, Lq, Dq] */
    const float *key;         /* [B, Lk, Dk] */
    const float *value;       /* [B, Lk, Dv] */
    float *out;               /* [B, Lq, Dv], written by the forward */

    const float *w_q;         /* [A, Dq] */
    const float *w_k;         /* [A, Dk] */
    const float *bias;        /* [A]; required iff desc.bias */
    const float *w;           /* [A] */

    /* Masks (optional). A key is visible to a query when every one given allows it. */
    const int32_t *kv_lens;   /* [B]: keys j >= kv_lens[b] hidden; 0 <= kv_lens[b] <= Lk */
    const uint8_t *mask;      /* [B, Lq, Lk]: nonzero = visible */

    /* Optional outputs of the forward (NULL: not computed). */
    float *weights;           /* [B, Lq, Lk] softmax weights */
    float *lse;               /* [B, Lq] log Σ_j exp(s_ij) over the visible keys; -inf for a
                                 row that sees none */
    float *entropy;           /* [B, Lq] entropy of each row's weights, in nats */

    void *activations;        /* attn_additive_activation_size() bytes, required; 64-byte
                                 alignment recommended; contents unspecified after a call */
    size_t activation_size;   /* bytes available there */
    void *saved;              /* training: attn_additive_saved_size() bytes, filled by the
                                 forward for attn_additive_backward; NULL for inference */
    size_t saved_size;
} attn_additive_args;

/* Fills an empty call (pointers NULL, sizes 0); writes exactly `size` bytes. Thread-safe. Use
 * the macro. */
ATTN_EXPORT void attn_additive_args_init_size(attn_additive_args *args, size_t size);
#define attn_additive_args_init(args) attn_additive_args_init_size((args), sizeof *(args))

/*
 * The forward pass: the two projections (cblas_sgemm over fixed blocks of rows on the layer's
 * threads, the BLAS held single-threaded), then tasks of up to 256 query rows per batch entry,
 * each streaming its visible keys in tiles of 256 through the fused score kernel and the
 * online softmax, and P·V through cblas_sgemm.
 *   add:  one thread at a time (a second thread entering gets ATTN_ERR_BUSY); the calling
 *         thread and the layer's desc.threads - 1 workers compute.
 *   args: read during the call; nothing is kept after it returns. out, weights, lse, entropy, activations and saved are written;
 *         they may not overlap each other or any input (by address span).
 * Returns ATTN_OK, or: ATTN_ERR_NULL_POINTER (add, args, query, key, value, out, w_q, w_k, w,
 * activations, or bias with desc.bias), ATTN_ERR_STRUCT_SIZE, ATTN_ERR_ZERO_SIZE (batch,
 * q_len, kv_len), ATTN_ERR_BAD_OPTION (a bias given to a layer without one), ATTN_ERR_KV_LENS,
 * ATTN_ERR_OVERFLOW (sizes too large), ATTN_ERR_WORKSPACE_SIZE (activation_size or saved_size
 * below the size query's), ATTN_ERR_ALIAS, ATTN_ERR_BUSY, ATTN_ERR_FORKED. On failure nothing
 * is written, and attn_additive_last_error(add) says why.
 */
ATTN_EXPORT attn_status attn_additive_forward(attn_additive *add, const attn_additive_args *args);

/* attn_additive_grads.mode (pinned values), as cuDNN's beta = 0 / 1. */
typedef enum attn_additive_grad_mode {
    ATTN_ADDITIVE_GRAD_SET = 0, /* gradients overwrite the caller's buffers */
    ATTN_ADDITIVE_GRAD_ADD = 1  /* gradients are added to what the buffers hold */
} attn_additive_grad_mode;

/*
 * Where a backward call writes. Start from attn_additive_grads_init(). Every gradient is
 * optional (NULL: not computed); each has the shape of its tensor.
 */
typedef struct attn_additive_grads {
    size_t struct_size;  /* set by attn_additive_grads_init */
    uint32_t mode;       /* an attn_additive_grad_mode */
    const float *dout;   /* [B, Lq, Dv]: d loss / d out, required */
    float *d_query;      /* [B, Lq, Dq] */
    float *d_key;        /* [B, Lk, Dk] */
    float *d_value;      /* [B, Lk, Dv] */
    float *d_w_q;        /* [A, Dq] */
    float *d_w_k;        /* [A, Dk] */
    float *d_bias;       /* [A]; only with desc.bias */
    float *d_w;          /* [A] */
} attn_additive_grads;

/* Fills an empty set of gradients (NULL, ATTN_ADDITIVE_GRAD_SET); writes exactly `size`
 * bytes. Thread-safe. Use the macro. */
ATTN_EXPORT void attn_additive_grads_init_size(attn_additive_grads *grads, size_t size);
#define attn_additive_grads_init(grads) attn_additive_grads_init_size((grads), sizeof *(grads))

/*
 * The backward pass of the training forward call made with the same `args` (same inputs,
 * parameters and masks, and its saved buffer, unchanged since). With dS_ij = p_ij (dout_i·v_j
 * - dout_i·out_i): d_value = pᵀ dout; d_w = Σ_ij dS_ij tanh_ija; dqp_ia = w_a Σ_j dS_ij
 * (1 - tanh²); dkp_ja = w_a Σ_i dS_ij (1 - tanh²); d_query = dqp W_q, d_w_q = dqpᵀ q,
 * d_bias = Σ_i dqp_i, d_key = dkp W_k, d_w_k = dkpᵀ k. Scores are recomputed tile by tile
 * from the saved projections and lse: one pass over query blocks (dqp, d_w) and one over key
 * blocks (dkp, d_value), each gradient element owned by one task or summed in a fixed order,
 * so results are bitwise identical for any thread count. args->out, weights, lse and entropy
 * are not read or written.
 *   grads: read during the call; gradient buffers may not overlap each other, the inputs, or
 *          the activations or saved buffers.
 * Returns the statuses of attn_additive_forward (saved is required: ATTN_ERR_NULL_POINTER),
 * plus ATTN_ERR_NULL_POINTER (grads or dout NULL), ATTN_ERR_STRUCT_SIZE (grads),
 * ATTN_ERR_BAD_OPTION (unknown mode, d_bias without a bias), ATTN_ERR_ALIAS. On failure
 * nothing is written.
 */
ATTN_EXPORT attn_status attn_additive_backward(attn_additive *add, const attn_additive_args *args,
                                               const attn_additive_grads *grads);

#ifdef __cplusplus
}
#endif

#endif /* ATTN_ATTN_ADDITIVE_H */
