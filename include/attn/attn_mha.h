/*
 * libattn multi-head attention layer: torch.nn.MultiheadAttention's computation (batch-first,
 * forward and backward) on top of attn_forward and attn_backward.
 *
 *   Q = query Wqᵀ + bq     [B, Lq, E]       = [B, Lq, H, D] with D = E / H
 *   K = key   Wkᵀ + bk     [B, Lk, kvE]     kvE = kv_heads * D (kv_heads = H: PyTorch)
 *   V = value Wvᵀ + bv     [B, Lk, kvE]
 *   O = attention(Q, K, V) per head, scale 1/sqrt(D), masks and dropout as below
 *   out = O Woᵀ + bo       [B, Lq, E]
 *
 * Parameters are the caller's buffers in PyTorch's layout, so a state_dict loads without
 * reshaping. The layer object owns an attn_ctx (forward and backward) and nothing that grows
 * with the batch or the lengths: per-call memory is the caller's, sized by
 * attn_mha_activation_size() and, for training, attn_mha_saved_size().
 *
 * Conventions are those of attn.h: statuses, nothing written to the caller's buffers on
 * failure, the reason in attn_mha_last_error(), one thread at a time per layer object, results
 * bitwise identical for any desc.threads.
 */
#ifndef ATTN_ATTN_MHA_H
#define ATTN_ATTN_MHA_H

#include <stddef.h>
#include <stdint.h>

#include <attn/attn.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Largest embed_dim, kdim and vdim accepted (keeps every product of two in int64 and every
 * parameter matrix's leading dimension in the BLAS's int). */
#define ATTN_MHA_MAX_DIM 1048576u

/*
 * The kind of layer, fixed for the life of an attn_mha. Start from attn_mha_desc_init(); the
 * struct only grows at its end and struct_size says which fields the caller knows.
 */
typedef struct attn_mha_desc {
    size_t struct_size;     /* size of the caller's struct; set by attn_mha_desc_init */
    uint32_t embed_dim;     /* E, >= 1; the query's feature size and the output's */
    uint32_t heads;         /* H, >= 1, dividing E; head dim D = E / H */
    uint32_t kv_heads;      /* key/value heads, dividing H (GQA); 0 = heads (PyTorch) */
    uint32_t kdim;          /* the key input's feature size; 0 = E */
    uint32_t vdim;          /* the value input's feature size; 0 = E */
    uint32_t bias;          /* 1 (default): in_proj_bias and out_proj_bias exist; 0: none */
    uint32_t flags;         /* OR of ATTN_CAUSAL (key j visible to query i iff
                               j <= i + kv_len - q_len) and ATTN_BLAS_THREADS_UNTOUCHED */
    uint32_t masked_rows;   /* an attn_masked_rows for query rows that see no key;
                               PyTorch gives NaN there (ATTN_MASKED_ROWS_NAN) */
    float dropout;          /* attention dropout p, 0 <= p < 1, applied in EVERY forward call
                               (see attn_mha_forward); 0 = none */
    uint32_t threads;       /* as attn_desc.threads: 0 = every available processor */
    const attn_allocator *allocator; /* NULL: the C library; used for the object and its
                                        context */
} attn_mha_desc;

/* Fills defaults: E = 64, heads 1, kv_heads 0, kdim 0, vdim 0, bias 1, flags 0,
 * ATTN_MASKED_ROWS_ZERO, dropout 0, threads 0, default allocator. Writes exactly `size` bytes
 * (as attn_desc_init_size). Thread-safe. Use the macro. */
ATTN_EXPORT void attn_mha_desc_init_size(attn_mha_desc *desc, size_t size);
#define attn_mha_desc_init(desc) attn_mha_desc_init_size((desc), sizeof *(desc))

/* Opaque layer object. */
typedef struct attn_mha attn_mha;

/*
 * Validates `desc` and creates a layer: the object and an attn_ctx (ATTN_OP_FORWARD |
 * ATTN_OP_BACKWARD, heads, head dim D, dropout, flags, masked_rows, threads of desc), whose
 * workspace depends on the descriptor only.
 *   desc:    read during the call only.
 *   out_mha: receives the layer; NULL on failure.
 * Returns ATTN_OK, or ATTN_ERR_NULL_POINTER (desc or out_mha NULL, an allocator with a NULL
 * function), ATTN_ERR_STRUCT_SIZE, ATTN_ERR_ZERO_SIZE (embed_dim or heads 0), ATTN_ERR_HEADS
 * (heads does not divide embed_dim, or kv_heads does not divide heads), ATTN_ERR_LIMIT
 * (embed_dim, kdim or vdim above ATTN_MHA_MAX_DIM, the head dim above ATTN_MAX_HEAD_DIM, or
 * threads above ATTN_MAX_THREADS),
 * ATTN_ERR_BAD_OPTION (bias not 0 or 1, unknown flags, masked_rows, dropout NaN or outside
 * [0, 1)), ATTN_ERR_NO_MEMORY, ATTN_ERR_THREADS. The reason is in attn_mha_last_error(NULL)
 * on the calling thread. Thread-safe. Release with attn_mha_destroy().
 */
ATTN_EXPORT attn_status attn_mha_create(const attn_mha_desc *desc, attn_mha **out_mha);

/* Stops the layer's threads and frees it. NULL is ignored. Not concurrently with other use. */
ATTN_EXPORT void attn_mha_destroy(attn_mha *mha);

/*
 * The last failure: of the last call on `mha` (empty after a success), or with NULL, of the
 * last attn_mha_create or call with a NULL layer on this thread. Owned by the library, valid
 * until the next call on the same object (or thread). Never NULL.
 */
ATTN_EXPORT const char *attn_mha_last_error(const attn_mha *mha);

/*
 * Bytes of the activations buffer every attn_mha_forward and attn_mha_backward call of this
 * shape needs (projected Q, K, V, the attention output, or their gradients, and a per-key
 * bias row): 4 * (B Lq E + 2 B Lk kvE + B Lq E + B Lk) plus alignment padding. Returns 0 if
 * mha is NULL, a size is 0 or the size does not fit size_t.
 */
ATTN_EXPORT size_t attn_mha_activation_size(const attn_mha *mha, uint32_t batch, uint32_t q_len,
                                            uint32_t kv_len);

/*
 * Bytes of the saved buffer a training forward call fills for attn_mha_backward: projected
 * Q, K, V, the attention output and its log-sum-exp per (batch, head, query). 0 as above.
 */
ATTN_EXPORT size_t attn_mha_saved_size(const attn_mha *mha, uint32_t batch, uint32_t q_len,
                                       uint32_t kv_len);

/* attn_mha_args.mask_shape: the shape of attn_mask and attn_bias (pinned values). */
typedef enum attn_mha_mask_shape {
    ATTN_MHA_MASK_2D = 0, /* [Lq, Lk], the same for every batch entry and head */
    ATTN_MHA_MASK_3D = 1  /* [B * H, Lq, Lk]: entry b * H + h for batch b, head h (PyTorch) */
} attn_mha_mask_shape;

/*
 * One call of the layer. Start from attn_mha_args_init(). Every tensor is contiguous, row
 * major, in the shape given; E = embed_dim, Etot = E + 2 kvE.
 */
typedef struct attn_mha_args {
    size_t struct_size;          /* set by attn_mha_args_init */
    uint32_t batch;              /* B >= 1 */
    uint32_t q_len;              /* Lq >= 1 */
    uint32_t kv_len;             /* Lk >= 1 */

    const float *query;          /* [B, Lq, E] */
    const float *key;            /* [B, Lk, kdim]; may be the query's buffer (self-attention) */
    const float *value;          /* [B, Lk, vdim]; may be the key's or query's buffer */
    float *out;                  /* [B, Lq, E], written */

    /* Parameters, PyTorch's names and layout. Either in_proj_weight (only when
     * kdim = vdim = E) or all three q/k/v_proj_weight. */
    const float *in_proj_weight;  /* [Etot, E]: rows Wq, then Wk, then Wv */
    const float *q_proj_weight;   /* [E, E] */
    const float *k_proj_weight;   /* [kvE, kdim] */
    const float *v_proj_weight;   /* [kvE, vdim] */
    const float *in_proj_bias;    /* [Etot]: bq, bk, bv; required iff desc.bias */
    const float *out_proj_weight; /* [E, E] */
    const float *out_proj_bias;   /* [E]; required iff desc.bias */

    /* Masks (all optional). A key is visible to a query when every one given allows it. */
    const int32_t *kv_lens;       /* [B]: keys j >= kv_lens[b] hidden; 0 <= kv_lens[b] <= Lk */
    const uint8_t *key_visible;   /* [B, Lk]: nonzero = the key is VISIBLE. This is the
                                     opposite of PyTorch's key_padding_mask (True = ignore):
                                     pass ~key_padding_mask */
    uint32_t mask_shape;          /* an attn_mha_mask_shape, for attn_mask and attn_bias */
    const uint8_t *attn_mask;     /* boolean, nonzero = may attend: the opposite of PyTorch's
                                     boolean attn_mask (True = not allowed) */
    const float *attn_bias;       /* additive, added to the scaled scores (PyTorch's float
                                     attn_mask); -inf hides. At most one of attn_mask and
                                     attn_bias, as in PyTorch */

    uint32_t weights_mode;        /* an attn_weights_mode: NONE, PER_HEAD [B, H, Lq, Lk] or
                                     HEAD_MEAN [B, Lq, Lk] (PyTorch's average_attn_weights) */
    float *weights;               /* written when weights_mode asks; after dropout */

    void *activations;            /* scratch of attn_mha_activation_size() bytes, required;
                                     64-byte alignment recommended; contents unspecified after */
    size_t activation_size;       /* bytes available there */
    void *saved;                  /* training: attn_mha_saved_size() bytes filled for
                                     attn_mha_backward; NULL for inference */
    size_t saved_size;

    uint64_t dropout_seed;        /* with desc.dropout > 0: the mask's key (see attn.h); pass */
    uint32_t dropout_offset;      /* the same to attn_mha_backward */
} attn_mha_args;

/* Fills an empty call (pointers NULL, sizes 0, ATTN_MHA_MASK_2D, ATTN_WEIGHTS_NONE); writes
 * exactly `size` bytes. Thread-safe. Use the macro. */
ATTN_EXPORT void attn_mha_args_init_size(attn_mha_args *args, size_t size);
#define attn_mha_args_init(args) attn_mha_args_init_size((args), sizeof *(args))

/*
 * The layer's forward pass. The projections are cblas_sgemm calls over fixed blocks of rows
 * (or of output features) spread over the layer's threads with the BLAS held single-threaded,
 * writing Q, K and V straight in the [B, L, H, D] layout attn_forward reads; self-attention
 * (query, key and value the same buffer, Lq = Lk, in_proj_weight) projects all three with one
 * product per block. With desc.dropout > 0 every call drops attention weights (the mask of
 * dropout_seed, dropout_offset, as attn_forward): for evaluation use a second layer object
 * with dropout 0 over the same parameter buffers (parameters are the caller's, so this costs
 * one context).
 *   mha:  one thread at a time.
 *   args: read during the call. out, weights, activations and saved are written; they may not
 *         overlap each other or any input (by address span).
 * Returns ATTN_OK, or: ATTN_ERR_NULL_POINTER (mha, args, query, key, value, out, activations,
 * a parameter the layout needs, weights with a weights mode), ATTN_ERR_STRUCT_SIZE,
 * ATTN_ERR_ZERO_SIZE (batch, q_len, kv_len), ATTN_ERR_BAD_OPTION (weights_mode, mask_shape,
 * both attn_mask and attn_bias, in_proj_weight together with q/k/v_proj_weight or when
 * kdim or vdim differ from E, a bias given to a layer without biases, weights with
 * ATTN_WEIGHTS_NONE), ATTN_ERR_KV_LENS, ATTN_ERR_OVERFLOW (sizes too large),
 * ATTN_ERR_WORKSPACE_SIZE (activation_size or saved_size below the size query's),
 * ATTN_ERR_ALIAS. On failure nothing is written, and attn_mha_last_error(mha) says why.
 */
ATTN_EXPORT attn_status attn_mha_forward(attn_mha *mha, const attn_mha_args *args);

/* attn_mha_grads.accumulate (pinned values), as cuDNN's beta = 0 / 1. */
typedef enum attn_mha_grad_mode {
    ATTN_MHA_GRAD_SET = 0, /* gradients overwrite the caller's buffers */
    ATTN_MHA_GRAD_ADD = 1  /* gradients are added to what the buffers hold */
} attn_mha_grad_mode;

/*
 * Where a backward call writes. Start from attn_mha_grads_init(). Every gradient is optional
 * (NULL: not computed, e.g. a frozen parameter or an input that needs none); each has the
 * shape of its tensor. Parameter gradients follow the parameters' layout: d_in_proj_weight
 * with in_proj_weight, d_q/k/v_proj_weight with the separate ones.
 * Self-attention: when two or three of query, key, value are one buffer and the matching
 * gradients are one buffer too (the same pointer), that buffer receives the SUM of their
 * gradients (d_query + d_key + d_value), as autograd gives for a tensor used three times;
 * distinct gradient buffers receive each part on its own.
 */
typedef struct attn_mha_grads {
    size_t struct_size;        /* set by attn_mha_grads_init */
    uint32_t mode;             /* an attn_mha_grad_mode */
    const float *dout;         /* [B, Lq, E]: d loss / d out, required */
    float *d_query;            /* [B, Lq, E] */
    float *d_key;              /* [B, Lk, kdim] */
    float *d_value;            /* [B, Lk, vdim] */
    float *d_in_proj_weight;   /* [Etot, E] */
    float *d_q_proj_weight;    /* [E, E] */
    float *d_k_proj_weight;    /* [kvE, kdim] */
    float *d_v_proj_weight;    /* [kvE, vdim] */
    float *d_in_proj_bias;     /* [Etot] */
    float *d_out_proj_weight;  /* [E, E] */
    float *d_out_proj_bias;    /* [E] */
} attn_mha_grads;

ATTN_EXPORT void attn_mha_grads_init_size(attn_mha_grads *grads, size_t size);
#define attn_mha_grads_init(grads) attn_mha_grads_init_size((grads), sizeof *(grads))

/*
 * The layer's backward pass, for the training forward call made with the same `args` (same
 * inputs, parameters, masks, dropout seed and offset, and its saved buffer, unchanged since):
 * dO = dout Wo; the attention backward (attn_backward) from the saved Q, K, V, O and lse;
 * then every requested gradient: d_out_proj_weight = doutᵀ O, d_out_proj_bias = Σ dout,
 * d_in_proj_* = dQᵀ query, dKᵀ key, dVᵀ value (and row sums), d_query = dQ Wq, and so on.
 * args->out and args->weights are not read or written. Each gradient element is computed by
 * one product over a fixed block, so results are bitwise identical for any thread count.
 *   grads: read during the call; gradient buffers may not overlap each other (other than the
 *          self-attention case above), the inputs, or the activations or saved buffers.
 * Returns the statuses of attn_mha_forward (saved is required: ATTN_ERR_NULL_POINTER), plus
 * ATTN_ERR_NULL_POINTER (grads or dout NULL), ATTN_ERR_STRUCT_SIZE (grads), ATTN_ERR_BAD_OPTION
 * (unknown mode, a gradient for a parameter this call does not have), ATTN_ERR_ALIAS.
 * On failure nothing is written.
 */
ATTN_EXPORT attn_status attn_mha_backward(attn_mha *mha, const attn_mha_args *args,
                                          const attn_mha_grads *grads);

#ifdef __cplusplus
}
#endif

#endif /* ATTN_ATTN_MHA_H */
