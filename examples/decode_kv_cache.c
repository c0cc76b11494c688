/*
 * Decoding with a K/V cache: a tiny decoder with random weights (one attention layer, 4 query
 * heads sharing 2 kv heads, head dim 16, a 48-token vocabulary) generates text token by token.
 *
 *   1. the prompt is prefilled into sequence 0 in one call (chunked prefill, causal);
 *   2. greedy decoding: each new token's key and value are appended, and one query attends to
 *      the whole sequence; the logits are checked against attention recomputed from scratch
 *      over the full prefix (attn_forward on plain tensors), and tokens/s is printed;
 *   3. speculative decoding's rollback: draft tokens appended, rejected ones truncated;
 *   4. beam search of width 4: the prompt forked into four sequences (sharing its blocks), one
 *      batched call per step for all beams, and attn_kv_cache_reorder to keep the survivors.
 *
 *   decode_kv_cache [f32|f16|bf16]     (default f16: the cache stores half the bytes)
 * Exits with status 1 if the cached logits disagree with the recomputed ones.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <attn/attn.h>
#include <attn/attn_kv_cache.h>

enum { VOCAB = 48, E = 64, HQ = 4, HKV = 2, D = 16, KVE = HKV * D, PROMPT = 40, GREEDY = 64,
       BEAM = 4, BEAM_STEPS = 12, MAX_LEN = 256 };

static float emb[VOCAB][E], wq[E][E], wk[E][KVE], wv[E][KVE], wo[E][E], unemb[E][VOCAB];

static uint64_t seed = 42;
static float uniform(void)
{
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(seed >> 40) * 0x1p-24 * 2.0 - 1.0);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void die(const char *what, const char *why)
{
    fprintf(stderr, "decode_kv_cache: %s: %s\n", what, why);
    exit(1);
}

/* y[n] = x[m] · w[m][n] */
static void matvec(float *y, const float *x, const float *w, int m, int n)
{
    for (int j = 0; j < n; j++)
        y[j] = 0.0f;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++)
            y[j] += x[i] * w[i * n + j];
}

/* The input of position t: the token's embedding plus a sinusoidal position code. */
static void embed(float *x, int token, int t)
{
    for (int i = 0; i < E; i++)
        x[i] = emb[token][i] + 0.5f * (i % 2 ? cosf((float)t / powf(100.0f, (float)i / E))
                                             : sinf((float)t / powf(100.0f, (float)i / E)));
}

/* Logits of the token after the one whose input is x, given its attention output o (the heads
 * side by side): a weak residual, the output projection, the unembedding. */
static void logits_of(float *logits, const float *x, const float *o)
{
    float h[E], p[E];
    matvec(p, o, &wo[0][0], E, E);
    for (int i = 0; i < E; i++)
        h[i] = 0.1f * x[i] + p[i];
    matvec(logits, h, &unemb[0][0], E, VOCAB);
}

static int argmax(const float *v, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return best;
}

/* Tokens as letters, to print them. */
static char letter(int token)
{
    static const char set[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV";
    return set[token % (int)(sizeof set - 1)];
}

typedef struct decoder {
    attn_ctx *ctx;
    attn_kv_cache *cache;
    float keys[MAX_LEN][KVE], values[MAX_LEN][KVE]; /* sequence 0's K/V in float, for the check */
} decoder;

/* Appends the keys and values of `n` inputs x[n][E] to sequence `seq` and computes the queries. */
static void project(decoder *dec, uint32_t seq, const float *x, int n, float *q)
{
    static float k[MAX_LEN][KVE], v[MAX_LEN][KVE];
    for (int t = 0; t < n; t++) {
        matvec(q + t * E, x + t * E, &wq[0][0], E, E);
        matvec(k[t], x + t * E, &wk[0][0], E, KVE);
        matvec(v[t], x + t * E, &wv[0][0], E, KVE);
    }
    /* [n, HKV, D] token after token: the layout a projection writes */
    attn_strides s = attn_strides_bshd(HKV, (uint32_t)n, D);
    if (attn_kv_cache_append(dec->cache, seq, (uint32_t)n, &k[0][0], s, &v[0][0], s) != ATTN_OK)
        die("append", attn_kv_cache_last_error(dec->cache));
    if (seq == 0) {
        int64_t at = attn_kv_cache_len(dec->cache, 0) - n;
        memcpy(dec->keys[at], k, sizeof(float) * (size_t)(n * KVE));
        memcpy(dec->values[at], v, sizeof(float) * (size_t)(n * KVE));
    }
}

/* Attention of q [batch, n, HQ*D] (token-major) over the sequences `ids`: each query row is
 * one of its sequence's last n tokens. out has the same layout. */
static void attend(decoder *dec, const uint32_t *ids, uint32_t batch, int n, const float *q,
                   float *out)
{
    attn_args a;
    attn_args_init(&a);
    a.batch = batch, a.q_len = (uint32_t)n;
    a.q = q, a.q_strides = attn_strides_bshd(HQ, (uint32_t)n, D);
    a.out = out, a.out_strides = attn_strides_bshd(HQ, (uint32_t)n, D);
    if (attn_forward_cache(dec->ctx, &a, dec->cache, ids) != ATTN_OK)
        die("attn_forward_cache", attn_last_error(dec->ctx));
}

/* The last position's output recomputed from scratch: attention over sequence 0's float K/V
 * as plain tensors. */
static void recompute(decoder *dec, attn_ctx *ctx32, const float *q, int len, float *out)
{
    attn_args a;
    attn_args_init(&a);
    a.batch = 1, a.q_len = 1, a.kv_len = (uint32_t)len;
    a.q = q, a.q_strides = attn_strides_bshd(HQ, 1, D);
    a.k = &dec->keys[0][0], a.k_strides = attn_strides_bshd(HKV, (uint32_t)len, D);
    a.v = &dec->values[0][0], a.v_strides = attn_strides_bshd(HKV, (uint32_t)len, D);
    a.out = out, a.out_strides = attn_strides_bshd(HQ, 1, D);
    if (attn_forward(ctx32, &a) != ATTN_OK)
        die("attn_forward", attn_last_error(ctx32));
}

int main(int argc, char **argv)
{
    uint32_t dtype = ATTN_KV_F16;
    if (argc > 1)
        dtype = !strcmp(argv[1], "f32") ? ATTN_KV_F32 : !strcmp(argv[1], "bf16") ? ATTN_KV_BF16 : ATTN_KV_F16;
    const char *dtype_name = dtype == ATTN_KV_F32 ? "f32" : dtype == ATTN_KV_BF16 ? "bf16" : "f16";
    for (int i = 0; i < VOCAB; i++)
        for (int j = 0; j < E; j++)
            emb[i][j] = uniform();
    for (int i = 0; i < E; i++) {
        for (int j = 0; j < E; j++)
            wq[i][j] = 0.3f * uniform(), wo[i][j] = 0.3f * uniform();
        for (int j = 0; j < KVE; j++)
            wk[i][j] = 0.3f * uniform(), wv[i][j] = 0.3f * uniform();
        for (int j = 0; j < VOCAB; j++)
            unemb[i][j] = uniform();
    }

    static decoder dec;
    attn_kv_cache_desc cd;
    attn_kv_cache_desc_init(&cd);
    cd.kv_heads = HKV, cd.qk_dim = cd.v_dim = D, cd.dtype = dtype;
    cd.max_seqs = BEAM, cd.block_tokens = 16, cd.capacity = BEAM * MAX_LEN, cd.max_len = MAX_LEN;
    if (attn_kv_cache_create(&cd, &dec.cache) != ATTN_OK)
        die("attn_kv_cache_create", attn_last_error(NULL));
    attn_desc d;
    attn_desc_init(&d);
    d.q_heads = HQ, d.kv_heads = HKV, d.qk_dim = d.v_dim = D, d.flags = ATTN_CAUSAL;
    d.kv_dtype = dtype, d.threads = 1; /* a 64-wide model: one thread is plenty */
    attn_ctx *ctx32;
    if (attn_create(&d, &dec.ctx) != ATTN_OK)
        die("attn_create", attn_last_error(NULL));
    d.kv_dtype = ATTN_KV_F32;
    if (attn_create(&d, &ctx32) != ATTN_OK)
        die("attn_create", attn_last_error(NULL));
    printf("K/V cache: %s, blocks of %u tokens, %llu blocks, %zu bytes\n", dtype_name,
           cd.block_tokens, (unsigned long long)attn_kv_cache_free_blocks(dec.cache),
           attn_kv_cache_size(&cd));

    /* 1. prefill */
    static float x[MAX_LEN][E], q[MAX_LEN][E], o[MAX_LEN][E];
    int tokens[MAX_LEN], len = PROMPT;
    printf("prompt:  ");
    for (int t = 0; t < PROMPT; t++) {
        tokens[t] = (int)((uniform() + 1.0f) * 0.5f * VOCAB) % VOCAB;
        embed(x[t], tokens[t], t);
        putchar(letter(tokens[t]));
    }
    putchar('\n');
    uint32_t seq0 = 0;
    project(&dec, 0, &x[0][0], PROMPT, &q[0][0]);
    attend(&dec, &seq0, 1, PROMPT, &q[0][0], &o[0][0]);

    /* 2. greedy decoding, checked against attention recomputed over the whole prefix */
    float logits[VOCAB], check[VOCAB], worst = 0.0f, scale = 0.0f;
    int flips = 0;
    double t0 = now();
    printf("greedy:  ");
    for (int step = 0; step < GREEDY; step++) {
        int last = len - 1;
        logits_of(logits, x[last], o[last]);
        int next = argmax(logits, VOCAB);
        recompute(&dec, ctx32, q[last], len, o[MAX_LEN - 1]);
        logits_of(check, x[last], o[MAX_LEN - 1]);
        for (int v = 0; v < VOCAB; v++) {
            worst = fmaxf(worst, fabsf(logits[v] - check[v]));
            scale = fmaxf(scale, fabsf(check[v]));
        }
        flips += argmax(check, VOCAB) != next;
        putchar(letter(next));
        tokens[len] = next;
        embed(x[len], next, len);
        project(&dec, 0, x[len], 1, q[len]);
        len++;
        attend(&dec, &seq0, 1, 1, q[len - 1], o[len - 1]);
    }
    double secs = now() - t0;
    printf("\n%d tokens in %.1f ms with the check (%.0f tokens/s); cached logits within %.2g of "
           "recomputed ones (largest logit %.2g), %d different choices\n",
           GREEDY, secs * 1e3, GREEDY / secs, (double)worst, (double)scale, flips);
    /* float32 keys agree to rounding; 16-bit ones to their 3 (bf16: 2) significant digits */
    float allowed = (dtype == ATTN_KV_F32 ? 1e-4f : dtype == ATTN_KV_F16 ? 2e-2f : 1e-1f) * fmaxf(scale, 1.0f);
    if (worst > allowed)
        die("check", "the cached logits differ from the recomputed ones");

    /* 3. speculative decoding: four draft tokens, the last three rejected */
    int64_t before = attn_kv_cache_len(dec.cache, 0);
    for (int t = 0; t < 4; t++) {
        embed(x[len + t], (tokens[len - 1] + 7 * t) % VOCAB, len + t);
        project(&dec, 0, x[len + t], 1, q[len + t]);
    }
    if (attn_kv_cache_truncate(dec.cache, 0, (uint64_t)before + 1) != ATTN_OK)
        die("truncate", attn_kv_cache_last_error(dec.cache));
    printf("speculative: %lld tokens, 4 drafted, 1 accepted: %lld tokens\n", (long long)before,
           (long long)attn_kv_cache_len(dec.cache, 0));
    if (attn_kv_cache_truncate(dec.cache, 0, (uint64_t)PROMPT) != ATTN_OK) /* back to the prompt */
        die("truncate", attn_kv_cache_last_error(dec.cache));

    /* 4. beam search from the prompt: four sequences sharing its blocks */
    uint64_t free_before = attn_kv_cache_free_blocks(dec.cache);
    for (uint32_t b = 1; b < BEAM; b++)
        if (attn_kv_cache_fork(dec.cache, 0, b) != ATTN_OK)
            die("fork", attn_kv_cache_last_error(dec.cache));
    printf("beam search: 4 beams share the prompt's blocks (free blocks %llu before the forks, "
           "%llu after)\n", (unsigned long long)free_before,
           (unsigned long long)attn_kv_cache_free_blocks(dec.cache));
    static int beam_tokens[BEAM][BEAM_STEPS], next_tokens[BEAM][BEAM_STEPS];
    double score[BEAM] = {0.0, -1e30, -1e30, -1e30}; /* one live beam at first: no duplicates */
    float bx[BEAM][E], bq[BEAM][E], bo[BEAM][E];
    uint32_t ids[BEAM] = {0, 1, 2, 3};
    int pos = PROMPT - 1, last_token[BEAM];
    for (int b = 0; b < BEAM; b++) /* the prompt's last output starts every beam */
        memcpy(bo[b], o[PROMPT - 1], sizeof bo[b]), memcpy(bx[b], x[PROMPT - 1], sizeof bx[b]);
    for (int step = 0; step < BEAM_STEPS; step++) {
        /* every (beam, token) candidate; keep the four best */
        double cand[BEAM];
        int cand_beam[BEAM], cand_token[BEAM];
        for (int c = 0; c < BEAM; c++)
            cand[c] = -INFINITY, cand_beam[c] = 0, cand_token[c] = 0;
        for (int b = 0; b < BEAM; b++) {
            logits_of(logits, bx[b], bo[b]);
            double m = logits[argmax(logits, VOCAB)], sum = 0.0;
            for (int v = 0; v < VOCAB; v++)
                sum += exp(logits[v] - m);
            for (int v = 0; v < VOCAB; v++) {
                double s = score[b] + logits[v] - m - log(sum);
                int c = BEAM - 1;
                if (s <= cand[c])
                    continue;
                for (; c > 0 && s > cand[c - 1]; c--)
                    cand[c] = cand[c - 1], cand_beam[c] = cand_beam[c - 1], cand_token[c] = cand_token[c - 1];
                cand[c] = s, cand_beam[c] = b, cand_token[c] = v;
            }
        }
        /* the survivors' caches: beam c continues beam cand_beam[c] */
        uint32_t from[BEAM];
        for (int c = 0; c < BEAM; c++) {
            from[c] = (uint32_t)cand_beam[c];
            memcpy(next_tokens[c], beam_tokens[cand_beam[c]], sizeof next_tokens[c]);
            next_tokens[c][step] = cand_token[c];
            score[c] = cand[c];
            last_token[c] = cand_token[c];
        }
        memcpy(beam_tokens, next_tokens, sizeof beam_tokens);
        if (attn_kv_cache_reorder(dec.cache, from, BEAM) != ATTN_OK)
            die("reorder", attn_kv_cache_last_error(dec.cache));
        /* one batched step for the four beams */
        pos++;
        for (int b = 0; b < BEAM; b++) {
            embed(bx[b], last_token[b], pos);
            project(&dec, (uint32_t)b, bx[b], 1, bq[b]);
        }
        attend(&dec, ids, BEAM, 1, &bq[0][0], &bo[0][0]);
    }
    for (int b = 0; b < BEAM; b++) {
        printf("beam %d (log p %7.3f): ", b, score[b]);
        for (int t = 0; t < BEAM_STEPS; t++)
            putchar(letter(beam_tokens[b][t]));
        putchar('\n');
    }
    printf("free blocks after the search: %llu (the beams still share the prompt's full blocks)\n",
           (unsigned long long)attn_kv_cache_free_blocks(dec.cache));
    attn_destroy(ctx32);
    attn_destroy(dec.ctx);
    attn_kv_cache_destroy(dec.cache);
    return 0;
}
