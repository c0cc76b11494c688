/*
 * attn-bench: libattn's forward pass against this machine's own limits, measured in the same
 * run and interleaved with it, so that a noisy shared machine disturbs both alike:
 *   - the sgemm ceiling: N threads each running a large square single-threaded sgemm (the way
 *     libattn itself uses the BLAS), aggregate GFLOP/s;
 *   - the streaming read bandwidth: N threads reading disjoint parts of a 512 MiB buffer.
 * Every timed run of a case is preceded by one ceiling sample (and, for decode cases, one
 * bandwidth sample); a case reports the median of its runs in GFLOP/s (4·B·H·Lq·Lk·D per second,
 * halved for causal; backward cases count 2.5 times that, the five products of the textbook
 * backward) and the median of the per-run ratios to the ceiling; decode cases also
 * report the bytes of K and V read per second and their ratio to the read bandwidth. Each case
 * reports its peak resident memory above what the program held before it ("peak MiB") next to
 * the size of its inputs and outputs ("data MiB"). The merge case times attn_merge, which runs on
 * the calling thread: it reports the bytes of the parts (out and lse) read per second against
 * a one-thread read-bandwidth sample taken before each run. Progress goes to stderr.
 *
 * It first names the BLAS, its core type and any OPENBLAS_* variable that overrides it, and
 * warns when the BLAS runs narrower kernels than the CPU has.
 *
 *   attn-bench [--threads N] [--case NAME]... [--reps N] [--json] [--list]
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <strings.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <attn/attn.h>
#include <attn/attn_kv_cache.h>
#include <attn/attn_additive.h>
#include <attn/attn_mha.h>
#include <cblas.h>

typedef struct bench_case {
    const char *name;
    uint32_t B, Hq, Hkv, Lq, Lk, D;
    int causal, decode, opt_in;
    int backward; /* time attn_backward; its GFLOP/s count 2.5x the forward's flops */
    float dropout; /* desc.dropout */
    uint32_t kv_dtype; /* desc.kv_dtype: 16-bit K and V read half the bytes */
    uint32_t merge; /* time attn_merge of this many parts [B, Hq, Lq, D] (Hkv, Lk unused) */
    int mha;       /* the attn_mha layer, self-attention with E = Hq·D and biases: 1 its forward,
                      2 its backward; GFLOP/s count the four projections (8 B L E², twice that
                      backward) plus the attention (4 B L² E, 2.5 times that backward) */
    int cache;     /* K and V from an attn_kv_cache of kv_dtype (B sequences of Lk tokens, the
                      queries being each sequence's last Lq) through attn_forward_cache */
    int additive;  /* attn_additive with Dq = Dk = Dv = A = D and a bias: 1 its forward, 2 its
                      backward; GFLOP/s count the projections 2 B (Lq + Lk) D A, the scores
                      2 B Lq Lk A (one multiply-add per tanh) and P·V 2 B Lq Lk D, 2.5 times
                      that backward */
} bench_case;

static const bench_case cases[] = {
    {"enc-1k", 1, 8, 8, 1024, 1024, 64, 0, 0, 0, 0, 0.0f, ATTN_KV_F32, 0, 0, 0, 0},
    {"causal-1k", 1, 8, 8, 1024, 1024, 64, 1, 0, 0, 0, 0.0f, ATTN_KV_F32, 0, 0, 0, 0},
    {"bert-512", 4, 12, 12, 512, 512, 64, 0, 0, 0, 0, 0.0f, ATTN_KV_F32, 0, 0, 0, 0},
    {"d128-2k", 1, 8, 8, 2048, 2048, 128, 0, 0, 0, 0, 0.0f, ATTN_KV_F32, 0, 0, 0, 0},
    {"gqa-2k", 1, 32, 8, 2048, 2048, 128, 1, 0, 0, 0, 0.0f, ATTN_KV_F32, 0, 0, 0, 0},
    {"decode-4k", 1, 32, 32, 1, 4096, 128, 0, 1, 0, 0, 0.0f, ATTN_KV_F32, 0, 0, 0, 0},
    {"decode-gqa-8k", 1, 32, 8, 1, 8192, 128, 0, 1, 0, 0, 0.0f, ATTN_KV_F32, 0, 0, 0, 0},
    {"decode-4k-f16", 1, 32, 32, 1, 4096, 128, 0, 1, 0, 0, 0.0f, ATTN_KV_F16, 0, 0, 0, 0},
    {"decode-4k-bf16", 1, 32, 32, 1, 4096, 128, 0, 1, 0, 0, 0.0f, ATTN_KV_BF16, 0, 0, 0, 0},
    {"decode-gqa-8k-f16", 1, 32, 8, 1, 8192, 128, 0, 1, 0, 0, 0.0f, ATTN_KV_F16, 0, 0, 0, 0},
    {"decode-batch-32k-f16", 8, 32, 8, 1, 4096, 128, 0, 1, 0, 0, 0.0f, ATTN_KV_F16, 0, 0, 0, 0},
    {"long-8k", 1, 1, 1, 8192, 8192, 64, 1, 0, 0, 0, 0.0f, ATTN_KV_F32, 0, 0, 0, 0},
    {"long-64k", 1, 1, 1, 65536, 65536, 64, 1, 0, 1, 0, 0.0f, ATTN_KV_F32, 0, 0, 0, 0},
    {"enc-1k-drop", 1, 8, 8, 1024, 1024, 64, 0, 0, 0, 0, 0.1f, ATTN_KV_F32, 0, 0, 0, 0},
    {"bwd-enc-1k", 1, 8, 8, 1024, 1024, 64, 0, 0, 0, 1, 0.0f, ATTN_KV_F32, 0, 0, 0, 0},
    {"bwd-causal-1k", 1, 8, 8, 1024, 1024, 64, 1, 0, 0, 1, 0.0f, ATTN_KV_F32, 0, 0, 0, 0},
    {"bwd-gqa-2k", 1, 32, 8, 2048, 2048, 128, 1, 0, 0, 1, 0.0f, ATTN_KV_F32, 0, 0, 0, 0},
    /* chunked prefill over a cache split 8 ways: 512 queries x 32 heads, 8 partials */
    {"merge-8", 1, 32, 32, 512, 1, 128, 0, 0, 0, 0, 0.0f, ATTN_KV_F32, 8, 0, 0, 0},
    {"mha-bert", 4, 12, 12, 512, 512, 64, 0, 0, 0, 0, 0.0f, ATTN_KV_F32, 0, 1, 0, 0},
    {"bwd-mha-bert", 4, 12, 12, 512, 512, 64, 0, 0, 0, 1, 0.0f, ATTN_KV_F32, 0, 2, 0, 0},
    /* the decode step from a K/V cache; the batch case: 8 sequences of 4k tokens, GQA 32/8 */
    {"decode-4k-cache", 1, 32, 32, 1, 4096, 128, 0, 1, 0, 0, 0.0f, ATTN_KV_F32, 0, 0, 1, 0},
    {"decode-4k-cache-f16", 1, 32, 32, 1, 4096, 128, 0, 1, 0, 0, 0.0f, ATTN_KV_F16, 0, 0, 1, 0},
    {"decode-4k-cache-bf16", 1, 32, 32, 1, 4096, 128, 0, 1, 0, 0, 0.0f, ATTN_KV_BF16, 0, 0, 1, 0},
    {"decode-gqa-8k-cache", 1, 32, 8, 1, 8192, 128, 0, 1, 0, 0, 0.0f, ATTN_KV_F32, 0, 0, 1, 0},
    {"decode-gqa-8k-cache-f16", 1, 32, 8, 1, 8192, 128, 0, 1, 0, 0, 0.0f, ATTN_KV_F16, 0, 0, 1, 0},
    {"decode-batch-32k", 8, 32, 8, 1, 4096, 128, 0, 1, 0, 0, 0.0f, ATTN_KV_F16, 0, 0, 1, 0},
    /* chunked prefill: 512 new queries at the end of a 4k-token cached sequence, causal */
    {"prefill-chunk", 1, 32, 8, 512, 4096, 128, 1, 0, 0, 0, 0.0f, ATTN_KV_F16, 0, 0, 1, 0},
    {"additive", 8, 1, 1, 64, 512, 256, 0, 0, 0, 0, 0.0f, ATTN_KV_F32, 0, 0, 0, 1},
    {"bwd-additive", 8, 1, 1, 64, 512, 256, 0, 0, 0, 1, 0.0f, ATTN_KV_F32, 0, 0, 0, 2},
    /* memory: the broadcasting form would hold 4096 x 4096 x 256 floats (16 GiB) */
    {"additive-4k", 1, 1, 1, 4096, 4096, 256, 0, 0, 1, 0, 0.0f, ATTN_KV_F32, 0, 0, 0, 1},
};
enum { NCASES = sizeof cases / sizeof cases[0] };

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static float *random_buffer(size_t n, uint64_t seed)
{
    float *p = malloc(n * sizeof *p);
    if (!p) {
        fprintf(stderr, "attn-bench: out of memory (%zu floats)\n", n);
        exit(1);
    }
    for (size_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        p[i] = (float)((double)(seed >> 40) * 0x1p-24 - 0.5);
    }
    return p;
}

/* ---- the BLAS in use ---------------------------------------------------------------------- */

static const char *blas_string(const char *fn_name)
{
    void *f = dlsym(RTLD_DEFAULT, fn_name);
    if (!f)
        return NULL;
    char *(*fn)(void);
    memcpy(&fn, &f, sizeof fn);
    return fn();
}

/* OpenBLAS's core type names whose kernels use AVX-512 (0.3.21). */
static int core_is_avx512(const char *core)
{
    static const char *const wide[] = {"skylakex", "cooperlake", "sapphirerapids"};
    for (size_t i = 0; i < sizeof wide / sizeof wide[0]; i++)
        if (strcasecmp(core, wide[i]) == 0)
            return 1;
    return 0;
}

typedef struct blas_info {
    char name[160];        /* openblas_get_config(), "BLIS", or "unknown" */
    char core[48];         /* openblas_get_corename(), or "" */
    char overrides[256];   /* OPENBLAS_* variables that change its choice, or "" */
    char warning[256];     /* "" when the BLAS runs the widest kernel the CPU has */
} blas_info;

static blas_info blas_describe(void)
{
    blas_info b;
    memset(&b, 0, sizeof b);
    const char *cfg = blas_string("openblas_get_config"), *core = blas_string("openblas_get_corename");
    snprintf(b.name, sizeof b.name, "%s",
             cfg ? cfg : dlsym(RTLD_DEFAULT, "bli_info_get_version_str") ? "BLIS" : "unknown");
    snprintf(b.core, sizeof b.core, "%s", core ? core : "");
    static const char *const vars[] = {"OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_VERBOSE"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v) {
            size_t n = strlen(b.overrides);
            snprintf(b.overrides + n, sizeof b.overrides - n, "%s%s=%s", n ? " " : "", vars[i], v);
        }
    }
    __builtin_cpu_init();
    if (core && __builtin_cpu_supports("avx512f") && !core_is_avx512(core))
        snprintf(b.warning, sizeof b.warning,
                 "the CPU has AVX-512 but OpenBLAS runs its %s kernels%s", core,
                 b.overrides[0] ? ", forced by the environment: the figures are not those of a "
                                  "machine without these variables"
                                : "");
    return b;
}

/* ---- ceilings ----------------------------------------------------------------------------- */

/* The BLAS stays single-threaded in this program: threaded BLAS calls leave OpenBLAS workers
 * spinning for a while afterwards, which would disturb whatever is measured next. */
static void serial_blas(void)
{
    void *s = dlsym(RTLD_DEFAULT, "openblas_set_num_threads");
    if (!s)
        s = dlsym(RTLD_DEFAULT, "bli_thread_set_num_threads");
    if (s) {
        void (*fn)(int);
        memcpy(&fn, &s, sizeof fn);
        fn(1);
    }
}

enum { GEMM_N = 1536 };

typedef struct worker {
    pthread_t tid;
    float *a, *b, *c;         /* sgemm operands */
    const uint64_t *p;        /* read slice */
    size_t words;
    uint64_t sink;
} worker;

/* OpenBLAS's OpenMP build takes each calling thread's OpenMP setting, not the global one. */
static void serial_blas_this_thread(void)
{
    void *s = dlsym(RTLD_DEFAULT, "omp_set_num_threads");
    if (s) {
        void (*fn)(int);
        memcpy(&fn, &s, sizeof fn);
        fn(1);
    }
}

static void *gemm_worker(void *arg)
{
    worker *w = arg;
    serial_blas_this_thread();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, GEMM_N, GEMM_N, GEMM_N, 1.0f, w->a,
                GEMM_N, w->b, GEMM_N, 0.0f, w->c, GEMM_N);
    return NULL;
}

/* XOR of every word: integer, so the compiler vectorises it without reassociation concerns. */
static void *read_worker(void *arg)
{
    worker *w = arg;
    uint64_t acc[8] = {0};
    size_t i = 0;
    for (; i + 8 <= w->words; i += 8)
        for (int k = 0; k < 8; k++)
            acc[k] ^= w->p[i + k];
    for (; i < w->words; i++)
        acc[0] ^= w->p[i];
    for (int k = 1; k < 8; k++)
        acc[0] ^= acc[k];
    w->sink = acc[0];
    return NULL;
}

typedef struct machine {
    int threads;
    worker w[256];
    uint64_t *buf;
    size_t buf_words;
} machine;

static void machine_init(machine *m, int threads)
{
    m->threads = threads;
    for (int i = 0; i < threads; i++) {
        m->w[i].a = random_buffer((size_t)GEMM_N * GEMM_N, 1 + (uint64_t)i);
        m->w[i].b = random_buffer((size_t)GEMM_N * GEMM_N, 101 + (uint64_t)i);
        m->w[i].c = random_buffer((size_t)GEMM_N * GEMM_N, 201 + (uint64_t)i);
    }
    size_t bytes = (size_t)512 << 20; /* far beyond any last-level cache */
    m->buf = malloc(bytes);
    if (!m->buf) {
        fprintf(stderr, "attn-bench: out of memory\n");
        exit(1);
    }
    memset(m->buf, 1, bytes);
    m->buf_words = bytes / 8;
}

static void machine_free(machine *m)
{
    for (int i = 0; i < m->threads; i++)
        free(m->w[i].a), free(m->w[i].b), free(m->w[i].c);
    free(m->buf);
}

/* One sample of the sgemm ceiling, GFLOP/s over all threads. */
static double ceiling_sample(machine *m)
{
    double t0 = now();
    for (int i = 0; i < m->threads; i++)
        pthread_create(&m->w[i].tid, NULL, gemm_worker, &m->w[i]);
    for (int i = 0; i < m->threads; i++)
        pthread_join(m->w[i].tid, NULL);
    return 2.0 * GEMM_N * (double)GEMM_N * GEMM_N * m->threads / (now() - t0) / 1e9;
}

/* One sample of the read bandwidth, GB/s over `threads` threads (at most the machine's). */
static double bandwidth_sample(machine *m, int threads)
{
    size_t per = m->buf_words / (size_t)threads;
    double t0 = now();
    for (int i = 0; i < threads; i++) {
        m->w[i].p = m->buf + (size_t)i * per;
        m->w[i].words = per;
        pthread_create(&m->w[i].tid, NULL, read_worker, &m->w[i]);
    }
    for (int i = 0; i < threads; i++)
        pthread_join(m->w[i].tid, NULL);
    return (double)(per * (size_t)threads * 8) / (now() - t0) / 1e9;
}

/* ---- peak resident memory of one case ------------------------------------------------------ */

static void reset_peak_rss(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "w"); /* "5" resets the high-water mark */
    if (f) {
        fputs("5", f);
        fclose(f);
    }
}

/* A field of /proc/self/status in MiB: "VmHWM:" (peak resident) or "VmRSS:" (resident now). */
static double status_mib(const char *field)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kib = 0;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, field, strlen(field)) == 0)
            kib = atof(line + strlen(field));
    if (f)
        fclose(f);
    return kib / 1024.0;
}

/* ---- one case ----------------------------------------------------------------------------- */

/* One case's inputs and outputs in [B, H, S, D] layout, and the calls that use them. */
typedef struct case_data {
    float *q, *k, *v, *out, *lse, *dout, *dq, *dk, *dv;
    size_t nq, nkv;
    attn_args args;
    attn_backward_args bwd;
    float *part_out, *part_lse; /* merge cases: the parts, one after the other */
    attn_merge_part *parts;
    attn_merge_args merge;
    /* layer cases: x [B, L, E] is query, key and value; packed parameters and their gradients */
    float *w_in, *b_in, *w_out, *b_out, *dw_in, *db_in, *dw_out, *db_out;
    void *act, *saved;
    attn_mha_args margs;
    attn_mha_grads mgrads;
    attn_kv_cache *cache;       /* cache cases: B sequences holding k and v */
    uint32_t *seq_ids;
    /* additive cases: q, k, v, out, dout, dq, dk, dv above, and the parameters */
    float *awq, *awk, *ab, *aw, *dawq, *dawk, *dab, *daw;
    attn_additive_args aargs;
    attn_additive_grads agrads;
} case_data;

/* What a case runs on: a context, or a layer object. */
typedef struct bench_obj {
    attn_ctx *ctx;
    attn_mha *mha;
    attn_additive *add;
} bench_obj;

static attn_mha_desc layer_desc(const bench_case *c, uint32_t threads)
{
    attn_mha_desc d;
    attn_mha_desc_init(&d);
    d.embed_dim = c->Hq * c->D, d.heads = c->Hq, d.threads = threads;
    return d;
}

static void layer_data_init(const bench_case *c, case_data *cd)
{
    size_t E = (size_t)c->Hq * c->D, n = (size_t)c->B * c->Lq * E;
    cd->nq = cd->nkv = n;
    cd->q = random_buffer(n, 11), cd->out = random_buffer(n, 14);
    cd->w_in = random_buffer(3 * E * E, 21), cd->b_in = random_buffer(3 * E, 22);
    cd->w_out = random_buffer(E * E, 23), cd->b_out = random_buffer(E, 24);
    for (size_t i = 0; i < 3 * E * E; i++)
        cd->w_in[i] *= 0.05f;
    for (size_t i = 0; i < E * E; i++)
        cd->w_out[i] *= 0.05f;
    attn_mha_desc d = layer_desc(c, 1);
    attn_mha *m;
    if (attn_mha_create(&d, &m) != ATTN_OK) {
        fprintf(stderr, "attn-bench: %s: %s\n", c->name, attn_mha_last_error(NULL));
        exit(1);
    }
    size_t na = attn_mha_activation_size(m, c->B, c->Lq, c->Lk);
    size_t ns = attn_mha_saved_size(m, c->B, c->Lq, c->Lk);
    attn_mha_destroy(m);
    cd->act = random_buffer(na / 4 + 1, 25), cd->saved = random_buffer(ns / 4 + 1, 26);
    attn_mha_args *a = &cd->margs;
    attn_mha_args_init(a);
    a->batch = c->B, a->q_len = c->Lq, a->kv_len = c->Lk;
    a->query = a->key = a->value = cd->q;
    a->out = cd->out;
    a->in_proj_weight = cd->w_in, a->in_proj_bias = cd->b_in;
    a->out_proj_weight = cd->w_out, a->out_proj_bias = cd->b_out;
    a->activations = cd->act, a->activation_size = na;
    if (c->mha == 2)
        a->saved = cd->saved, a->saved_size = ns;
    attn_mha_grads_init(&cd->mgrads);
    if (c->mha != 2)
        return;
    cd->dout = random_buffer(n, 16), cd->dq = random_buffer(n, 17);
    cd->dw_in = random_buffer(3 * E * E, 27), cd->db_in = random_buffer(3 * E, 28);
    cd->dw_out = random_buffer(E * E, 29), cd->db_out = random_buffer(E, 30);
    attn_mha_grads *g = &cd->mgrads;
    g->dout = cd->dout;
    g->d_query = g->d_key = g->d_value = cd->dq;
    g->d_in_proj_weight = cd->dw_in, g->d_in_proj_bias = cd->db_in;
    g->d_out_proj_weight = cd->dw_out, g->d_out_proj_bias = cd->db_out;
}

/* Cache cases: every sequence filled with its K and V (converted on append), and the call's
 * k, v and kv_len left for the cache to supply. */
static void cache_data_init(const bench_case *c, case_data *cd)
{
    attn_kv_cache_desc d;
    attn_kv_cache_desc_init(&d);
    d.kv_heads = c->Hkv, d.qk_dim = d.v_dim = c->D, d.dtype = c->kv_dtype;
    d.max_seqs = c->B, d.capacity = (uint64_t)c->B * c->Lk;
    if (attn_kv_cache_create(&d, &cd->cache) != ATTN_OK) {
        fprintf(stderr, "attn-bench: %s: %s\n", c->name, attn_last_error(NULL));
        exit(1);
    }
    cd->seq_ids = calloc(c->B, sizeof *cd->seq_ids);
    if (!cd->seq_ids) {
        fprintf(stderr, "attn-bench: out of memory\n");
        exit(1);
    }
    attn_strides s = attn_strides_bhsd(c->Hkv, c->Lk, c->D);
    for (uint32_t b = 0; b < c->B; b++) {
        cd->seq_ids[b] = b;
        if (attn_kv_cache_append(cd->cache, b, c->Lk, cd->k + b * s.batch, s, cd->v + b * s.batch,
                                 s) != ATTN_OK) {
            fprintf(stderr, "attn-bench: %s: %s\n", c->name, attn_kv_cache_last_error(cd->cache));
            exit(1);
        }
    }
    cd->args.k = cd->args.v = NULL;
    cd->args.kv_len = 0;
}

static attn_additive_desc additive_desc(const bench_case *c, uint32_t threads)
{
    attn_additive_desc d;
    attn_additive_desc_init(&d);
    d.q_dim = d.k_dim = d.v_dim = d.attn_dim = c->D, d.threads = threads;
    return d;
}

static void additive_data_init(const bench_case *c, case_data *cd)
{
    size_t D = c->D, nq = (size_t)c->B * c->Lq * D, nk = (size_t)c->B * c->Lk * D;
    cd->nq = nq, cd->nkv = nk;
    cd->q = random_buffer(nq, 11), cd->k = random_buffer(nk, 12), cd->v = random_buffer(nk, 13);
    cd->out = random_buffer(nq, 14);
    cd->awq = random_buffer(D * D, 31), cd->awk = random_buffer(D * D, 32);
    cd->ab = random_buffer(D, 33), cd->aw = random_buffer(D, 34);
    for (size_t i = 0; i < D * D; i++)
        cd->awq[i] *= 0.1f, cd->awk[i] *= 0.1f;
    attn_additive_desc d = additive_desc(c, 1);
    attn_additive *m;
    if (attn_additive_create(&d, &m) != ATTN_OK) {
        fprintf(stderr, "attn-bench: %s: %s\n", c->name, attn_additive_last_error(NULL));
        exit(1);
    }
    size_t na = attn_additive_activation_size(m, c->B, c->Lq, c->Lk);
    size_t ns = attn_additive_saved_size(m, c->B, c->Lq, c->Lk);
    attn_additive_destroy(m);
    cd->act = random_buffer(na / 4 + 1, 25);
    attn_additive_args *a = &cd->aargs;
    attn_additive_args_init(a);
    a->batch = c->B, a->q_len = c->Lq, a->kv_len = c->Lk;
    a->query = cd->q, a->key = cd->k, a->value = cd->v, a->out = cd->out;
    a->w_q = cd->awq, a->w_k = cd->awk, a->bias = cd->ab, a->w = cd->aw;
    a->activations = cd->act, a->activation_size = na;
    attn_additive_grads_init(&cd->agrads);
    if (c->additive != 2)
        return;
    cd->saved = random_buffer(ns / 4 + 1, 26);
    a->saved = cd->saved, a->saved_size = ns;
    cd->dout = random_buffer(nq, 16), cd->dq = random_buffer(nq, 17);
    cd->dk = random_buffer(nk, 18), cd->dv = random_buffer(nk, 19);
    cd->dawq = random_buffer(D * D, 35), cd->dawk = random_buffer(D * D, 36);
    cd->dab = random_buffer(D, 37), cd->daw = random_buffer(D, 38);
    attn_additive_grads *g = &cd->agrads;
    g->dout = cd->dout, g->d_query = cd->dq, g->d_key = cd->dk, g->d_value = cd->dv;
    g->d_w_q = cd->dawq, g->d_w_k = cd->dawk, g->d_bias = cd->dab, g->d_w = cd->daw;
}

static void case_data_init(const bench_case *c, case_data *cd)
{
    memset(cd, 0, sizeof *cd);
    if (c->mha) {
        layer_data_init(c, cd);
        return;
    }
    if (c->additive) {
        additive_data_init(c, cd);
        return;
    }
    cd->nq = (size_t)c->B * c->Hq * c->Lq * c->D;
    cd->nkv = (size_t)c->B * c->Hkv * c->Lk * c->D;
    cd->q = random_buffer(cd->nq, 11), cd->k = random_buffer(cd->nkv, 12);
    cd->v = random_buffer(cd->nkv, 13), cd->out = random_buffer(cd->nq, 14);
    attn_args *a = &cd->args;
    attn_args_init(a);
    a->batch = c->B, a->q_len = c->Lq, a->kv_len = c->Lk;
    a->q = cd->q, a->q_strides = attn_strides_bhsd(c->Hq, c->Lq, c->D);
    a->k = cd->k, a->k_strides = attn_strides_bhsd(c->Hkv, c->Lk, c->D);
    a->v = cd->v, a->v_strides = attn_strides_bhsd(c->Hkv, c->Lk, c->D);
    if (c->kv_dtype != ATTN_KV_F32 && !c->cache) { /* 16-bit K and V: the upper halves (bfloat16) or ±1e-3 f16 */
        uint16_t *k16 = (uint16_t *)(void *)cd->k, *v16 = (uint16_t *)(void *)cd->v;
        for (size_t i = 0; i < cd->nkv; i++) { /* in place: element i is read before it is written */
            uint32_t kb, vb;
            memcpy(&kb, &cd->k[i], 4), memcpy(&vb, &cd->v[i], 4);
            k16[i] = c->kv_dtype == ATTN_KV_BF16 ? (uint16_t)(kb >> 16) : (uint16_t)(0x1400u + (kb & 0x3FFu));
            v16[i] = c->kv_dtype == ATTN_KV_BF16 ? (uint16_t)(vb >> 16) : (uint16_t)(0x1400u + (vb & 0x3FFu));
        }
    }
    a->out = cd->out, a->out_strides = attn_strides_bhsd(c->Hq, c->Lq, c->D);
    if (c->cache) {
        cache_data_init(c, cd);
        return;
    }
    cd->lse = cd->dout = cd->dq = cd->dk = cd->dv = NULL;
    cd->part_out = cd->part_lse = NULL;
    cd->parts = NULL;
    attn_backward_args_init(&cd->bwd);
    attn_merge_args_init(&cd->merge);
    if (c->merge) {
        size_t rows = (size_t)c->B * c->Hq * c->Lq;
        cd->part_out = random_buffer(cd->nq * c->merge, 20);
        cd->part_lse = random_buffer(rows * c->merge, 21);
        cd->lse = random_buffer(rows, 15);
        cd->parts = calloc(c->merge, sizeof *cd->parts);
        if (!cd->parts) {
            fprintf(stderr, "attn-bench: out of memory\n");
            exit(1);
        }
        for (uint32_t p = 0; p < c->merge; p++)
            cd->parts[p] = (attn_merge_part){cd->part_out + p * cd->nq, {0, 0, 0},
                                             cd->part_lse + p * rows, {0, 0, 0}};
        attn_merge_args *g = &cd->merge;
        g->n_parts = c->merge, g->batch = c->B, g->heads = c->Hq, g->q_len = c->Lq, g->v_dim = c->D;
        g->parts = cd->parts, g->out = cd->out, g->lse = cd->lse;
        return;
    }
    if (!c->backward)
        return;
    cd->lse = random_buffer((size_t)c->B * c->Hq * c->Lq, 15);
    a->lse = cd->lse;
    cd->dout = random_buffer(cd->nq, 16), cd->dq = random_buffer(cd->nq, 17);
    cd->dk = random_buffer(cd->nkv, 18), cd->dv = random_buffer(cd->nkv, 19);
    attn_backward_args *g = &cd->bwd;
    g->batch = a->batch, g->q_len = a->q_len, g->kv_len = a->kv_len;
    g->q = a->q, g->q_strides = a->q_strides, g->k = a->k, g->k_strides = a->k_strides;
    g->v = a->v, g->v_strides = a->v_strides, g->out = a->out, g->out_strides = a->out_strides;
    g->dout = cd->dout, g->dout_strides = a->out_strides, g->lse = cd->lse;
    g->dq = cd->dq, g->dq_strides = a->q_strides, g->dk = cd->dk, g->dk_strides = a->k_strides;
    g->dv = cd->dv, g->dv_strides = a->v_strides;
}

static void case_data_free(case_data *cd)
{
    free(cd->q), free(cd->k), free(cd->v), free(cd->out);
    free(cd->lse), free(cd->dout), free(cd->dq), free(cd->dk), free(cd->dv);
    free(cd->part_out), free(cd->part_lse), free(cd->parts);
    free(cd->w_in), free(cd->b_in), free(cd->w_out), free(cd->b_out), free(cd->dw_in);
    free(cd->db_in), free(cd->dw_out), free(cd->db_out), free(cd->act), free(cd->saved);
    attn_kv_cache_destroy(cd->cache), free(cd->seq_ids);
    free(cd->awq), free(cd->awk), free(cd->ab), free(cd->aw), free(cd->dawq), free(cd->dawk);
    free(cd->dab), free(cd->daw);
}

/* The timed call of a case: the forward, the merge, the layer, or (backward cases) the backward
 * of the forward that case_call_setup ran once. */
static attn_status case_call(const bench_case *c, const bench_obj *o, const case_data *cd)
{
    if (c->merge)
        return attn_merge(&cd->merge);
    if (c->mha)
        return c->backward ? attn_mha_backward(o->mha, &cd->margs, &cd->mgrads)
                           : attn_mha_forward(o->mha, &cd->margs);
    if (c->cache)
        return attn_forward_cache(o->ctx, &cd->args, cd->cache, cd->seq_ids);
    if (c->additive)
        return c->backward ? attn_additive_backward(o->add, &cd->aargs, &cd->agrads)
                           : attn_additive_forward(o->add, &cd->aargs);
    return c->backward ? attn_backward(o->ctx, &cd->bwd) : attn_forward(o->ctx, &cd->args);
}

static const char *case_error(const bench_obj *o)
{
    return o->mha ? attn_mha_last_error(o->mha)
           : o->add ? attn_additive_last_error(o->add)
                    : attn_last_error(o->ctx);
}

static void case_call_setup(const bench_case *c, const bench_obj *o, const case_data *cd)
{
    attn_status st = ATTN_OK;
    if (c->backward)
        st = c->mha        ? attn_mha_forward(o->mha, &cd->margs)
             : c->additive ? attn_additive_forward(o->add, &cd->aargs)
                           : attn_forward(o->ctx, &cd->args);
    if (st != ATTN_OK) {
        fprintf(stderr, "attn-bench: %s: %s\n", c->name, case_error(o));
        exit(1);
    }
}

/* A context for the case on `threads` threads; exits with the reason if it cannot be made. */
static bench_obj case_context(const bench_case *c, uint32_t threads, size_t *workspace)
{
    bench_obj o = {NULL, NULL, NULL};
    if (c->additive) {
        attn_additive_desc ad = additive_desc(c, threads);
        if (attn_additive_create(&ad, &o.add) != ATTN_OK) {
            fprintf(stderr, "attn-bench: %s: %s\n", c->name, attn_additive_last_error(NULL));
            exit(1);
        }
        if (workspace) { /* its context's workspace and the per-thread tanh tiles */
            attn_desc d;
            attn_desc_init(&d);
            d.q_heads = d.kv_heads = 1, d.qk_dim = d.v_dim = c->D, d.threads = threads;
            *workspace = attn_workspace_size(&d) + (size_t)(threads ? threads : 1) * 256 * c->D * 4;
        }
        return o;
    }
    if (c->mha) {
        attn_mha_desc md = layer_desc(c, threads);
        if (attn_mha_create(&md, &o.mha) != ATTN_OK) {
            fprintf(stderr, "attn-bench: %s: %s\n", c->name, attn_mha_last_error(NULL));
            exit(1);
        }
        if (workspace) { /* the workspace of the layer's context */
            attn_desc d;
            attn_desc_init(&d);
            d.q_heads = d.kv_heads = c->Hq, d.qk_dim = d.v_dim = c->D, d.threads = threads;
            d.ops = ATTN_OP_FORWARD | ATTN_OP_BACKWARD;
            *workspace = attn_workspace_size(&d);
        }
        return o;
    }
    attn_desc d;
    attn_desc_init(&d);
    d.q_heads = c->Hq, d.kv_heads = c->Hkv, d.qk_dim = d.v_dim = c->D;
    d.flags = c->causal ? ATTN_CAUSAL : 0;
    d.threads = threads;
    d.ops = c->backward ? ATTN_OP_FORWARD | ATTN_OP_BACKWARD : ATTN_OP_FORWARD;
    d.dropout = c->dropout;
    d.kv_dtype = c->kv_dtype;
    if (attn_create(&d, &o.ctx) != ATTN_OK) {
        fprintf(stderr, "attn-bench: %s: %s\n", c->name, attn_last_error(NULL));
        exit(1);
    }
    if (workspace)
        *workspace = attn_workspace_size(&d);
    return o;
}

static void case_release(bench_obj *o)
{
    attn_destroy(o->ctx);
    attn_mha_destroy(o->mha);
    attn_additive_destroy(o->add);
}

typedef struct result {
    double ms, gflops, ceiling, ratio, gbps, bandwidth, bw_ratio, rss_mib, data_mib;
    double tokens; /* query tokens per second: B * Lq per call */
    size_t workspace;
} result;

static result run_case(const bench_case *c, uint32_t threads, int reps, machine *m)
{
    result res;
    reset_peak_rss();
    double baseline = status_mib("VmRSS:"); /* the ceiling and bandwidth buffers */
    case_data cd;
    case_data_init(c, &cd);
    res.data_mib = ((double)(2 * cd.nq) * sizeof(float) +
                    (double)(2 * cd.nkv) * (c->kv_dtype == ATTN_KV_F32 ? 4.0 : 2.0)) / (1 << 20);
    if (c->backward) /* + dout, dq, dk, dv and lse */
        res.data_mib += (double)(2 * cd.nq + 2 * cd.nkv + (size_t)c->B * c->Hq * c->Lq) *
                        sizeof(float) / (1 << 20);
    bench_obj ctx = case_context(c, threads, &res.workspace);
    attn_status st;
    case_call_setup(c, &ctx, &cd);
    /* causal: half the square; a chunk at the end of longer keys sees Lk - Lq + i + 1 keys */
    double pairs = c->causal && c->Lq < c->Lk
                       ? (double)c->Lq * c->Lk - 0.5 * (double)c->Lq * (c->Lq - 1)
                       : (double)c->Lq * c->Lk * (c->causal ? 0.5 : 1.0);
    double flops = 4.0 * c->B * c->Hq * pairs * c->D * (c->backward ? 2.5 : 1.0);
    if (c->additive) {
        double D = c->D, B = c->B, Lq = c->Lq, Lk = c->Lk;
        flops = (2.0 * B * (Lq + Lk) * D * D + 2.0 * B * Lq * Lk * D * 2.0) *
                (c->backward ? 2.5 : 1.0);
    }
    if (c->mha) { /* + the projections: four of 2 B L E² flops, twice that backward */
        double E = (double)c->Hq * c->D;
        flops += 8.0 * c->B * c->Lq * E * E * (c->backward ? 2.0 : 1.0);
    }
    double bytes = 2.0 * (double)cd.nkv * (c->kv_dtype == ATTN_KV_F32 ? 4.0 : 2.0);
    int bw_threads = m->threads;
    if (c->merge) { /* the parts read, on the calling thread; no flops to speak of */
        size_t rows = (size_t)c->B * c->Hq * c->Lq;
        res.data_mib = (double)((cd.nq + rows) * (c->merge + 1)) * sizeof(float) / (1 << 20);
        bytes = (double)((cd.nq + rows) * c->merge) * sizeof(float);
        flops = 0.0;
        bw_threads = 1;
    }
    int streams = c->decode || c->merge;
    enum { MAXREPS = 64 };
    double t[MAXREPS], ceil[MAXREPS], ratio[MAXREPS], bw[MAXREPS], bw_ratio[MAXREPS];
    reps = reps > MAXREPS ? MAXREPS : reps;
    /* warm-up: page faults, caches, clock ramp; at least one call and a quarter second */
    double warm_until = now() + 0.25;
    do {
        if ((st = case_call(c, &ctx, &cd)) != ATTN_OK) {
            fprintf(stderr, "attn-bench: %s: %s\n", c->name,
                    c->merge ? attn_last_error(NULL) : case_error(&ctx));
            exit(1);
        }
    } while (now() < warm_until);
    for (int r = 0; r < reps; r++) {
        ceil[r] = ceiling_sample(m);
        if (streams)
            bw[r] = bandwidth_sample(m, bw_threads);
        double t0 = now();
        case_call(c, &ctx, &cd);
        t[r] = now() - t0;
        ratio[r] = flops / t[r] / 1e9 / ceil[r];
        if (streams)
            bw_ratio[r] = bytes / t[r] / 1e9 / bw[r];
        fprintf(stderr, "\r  %-14s run %d/%d", c->name, r + 1, reps);
    }
    fprintf(stderr, "\r%60s\r", "");
    double sec = median(t, reps);
    res.ms = sec * 1e3;
    res.gflops = flops / sec / 1e9;
    res.tokens = (double)c->B * c->Lq / sec;
    res.ceiling = median(ceil, reps);
    res.ratio = median(ratio, reps);
    res.gbps = bytes / sec / 1e9;
    res.bandwidth = streams ? median(bw, reps) : 0.0;
    res.bw_ratio = streams ? median(bw_ratio, reps) : 0.0;
    res.rss_mib = status_mib("VmHWM:") - baseline;
    case_release(&ctx);
    case_data_free(&cd);
    return res;
}

/* Speed-up of `threads` threads over one on a case: two contexts, runs alternated so that both
 * see the same machine, the median of the per-pair ratios. */
static double scaling(const bench_case *c, uint32_t threads, int reps)
{
    case_data cd;
    case_data_init(c, &cd);
    bench_obj ctx[2] = {case_context(c, 1, NULL), case_context(c, threads, NULL)};
    case_call_setup(c, &ctx[0], &cd);
    double ratio[64];
    reps = reps > 64 ? 64 : reps;
    double warm_until = now() + 0.25;
    do {
        case_call(c, &ctx[0], &cd);
        case_call(c, &ctx[1], &cd);
    } while (now() < warm_until);
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        case_call(c, &ctx[0], &cd);
        double t1 = now();
        case_call(c, &ctx[1], &cd);
        ratio[r] = (t1 - t0) / (now() - t1);
        fprintf(stderr, "\r  %-14s pair %d/%d", c->name, r + 1, reps);
    }
    fprintf(stderr, "\r%60s\r", "");
    case_release(&ctx[0]);
    case_release(&ctx[1]);
    case_data_free(&cd);
    return median(ratio, reps);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: attn-bench [--threads N] [--case NAME]... [--reps N] [--json] [--list]\n"
            "  --threads N  threads for libattn and for the ceilings (default 0: all processors)\n"
            "  --case NAME  run only this case (repeatable); long-64k runs only when named\n"
            "  --reps N     timed runs per case, the median is reported (default 7)\n"
            "  --json       one JSON object per case on stdout\n"
            "  --list       list the cases\n"
            "  --scaling    instead: speed-up of --threads threads over one, per case (default\n"
            "               enc-1k), from alternated runs of a 1-thread and an N-thread context\n");
}

int main(int argc, char **argv)
{
    uint32_t threads = 0;
    int reps = 7, json = 0, nselected = 0, want_scaling = 0;
    const char *selected[NCASES * 2];
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = (uint32_t)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--case") && i + 1 < argc && nselected < NCASES * 2)
            selected[nselected++] = argv[++i];
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json"))
            json = 1;
        else if (!strcmp(argv[i], "--scaling"))
            want_scaling = 1;
        else if (!strcmp(argv[i], "--list")) {
            for (int c = 0; c < NCASES; c++)
                printf("%-20s B=%u Hq=%u Hkv=%u Lq=%u Lk=%u D=%u%s%s%s%s%s%s%s\n", cases[c].name,
                       cases[c].B, cases[c].Hq, cases[c].Hkv, cases[c].Lq, cases[c].Lk, cases[c].D,
                       cases[c].mha ? " MHA layer" : cases[c].additive ? " additive (A = D)" : "",
                       cases[c].cache ? " K/V cache" : "",
                       cases[c].causal ? " causal" : "", cases[c].backward ? " backward" : "",
                       cases[c].dropout > 0.0f ? " dropout" : "",
                       cases[c].kv_dtype == ATTN_KV_F16    ? " f16 K/V"
                       : cases[c].kv_dtype == ATTN_KV_BF16 ? " bf16 K/V"
                                                           : "",
                       cases[c].opt_in ? " (opt-in)" : "");
            return 0;
        } else {
            usage();
            return 2;
        }
    }
    if (reps < 1)
        reps = 1;
    for (int s = 0; s < nselected; s++) {
        int known = 0;
        for (int c = 0; c < NCASES; c++)
            known |= !strcmp(selected[s], cases[c].name);
        if (!known) {
            fprintf(stderr, "attn-bench: unknown case '%s' (see --list)\n", selected[s]);
            return 2;
        }
    }
    int nthreads = threads ? (int)threads : 0;
    if (!nthreads) { /* the library's own default: the processors this process may use */
        cpu_set_t set;
        nthreads = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
    }
    if (nthreads > 256) {
        fprintf(stderr, "attn-bench: at most 256 threads\n");
        return 2;
    }
    serial_blas();
    if (want_scaling) {
        if (nselected == 0)
            selected[nselected++] = "enc-1k";
        for (int c = 0; c < NCASES; c++)
            for (int s = 0; s < nselected; s++)
                if (!strcmp(selected[s], cases[c].name)) {
                    double x = scaling(&cases[c], (uint32_t)nthreads, reps);
                    if (json)
                        printf("{\"case\": \"%s\", \"threads\": %d, \"speedup_over_1\": %.3f}\n",
                               cases[c].name, nthreads, x);
                    else
                        printf("%-20s %d threads / 1 thread: %.2fx (median of %d alternated pairs)\n",
                               cases[c].name, nthreads, x, reps);
                }
        return 0;
    }
    machine m;
    machine_init(&m, nthreads);
    fprintf(stderr, "measuring the sgemm ceiling and the read bandwidth on %d threads...\n", nthreads);
    double c0[16], b0[16];
    for (int r = 0; r < 5; r++)
        c0[r] = ceiling_sample(&m), b0[r] = bandwidth_sample(&m, m.threads);
    blas_info blas = blas_describe();
    /* The BLAS report goes to stdout with the table, to stderr with --json (one object a line). */
    FILE *info = json ? stderr : stdout;
    fprintf(info, "BLAS: %s%s%s\n", blas.name, blas.core[0] ? ", core " : "", blas.core);
    if (blas.overrides[0])
        fprintf(info, "BLAS overridden by the environment: %s\n", blas.overrides);
    if (blas.warning[0])
        fprintf(info, "WARNING: %s\n", blas.warning);
    if (!json) {
        printf("libattn %s, %s kernels, %d threads\n", attn_version_string(), attn_kernel_isa(),
               nthreads);
        printf("sgemm ceiling %.1f GFLOP/s, read bandwidth %.1f GB/s (medians of 5; each case\n"
               "also samples them between its runs and reports ratios to those samples)\n\n",
               median(c0, 5), median(b0, 5));
        printf("%-20s %9s %9s %9s %7s %9s %9s %7s %9s %9s %9s\n", "case", "median ms", "GFLOP/s",
               "ceiling", "ratio", "K+V GB/s", "read GB/s", "ratio", "peak MiB", "data MiB",
               "tokens/s");
    }
    for (int c = 0; c < NCASES; c++) {
        int run = nselected == 0 ? !cases[c].opt_in : 0;
        for (int s = 0; s < nselected; s++)
            run |= !strcmp(selected[s], cases[c].name);
        if (!run)
            continue;
        fprintf(stderr, "case %s\n", cases[c].name);
        result r = run_case(&cases[c], threads, reps, &m);
        if (json) {
            printf("{\"case\": \"%s\", \"threads\": %d, \"median_ms\": %.4f, \"gflops\": %.2f, "
                   "\"ceiling_gflops\": %.2f, \"ratio\": %.4f, \"kv_gbps\": %.2f, "
                   "\"read_gbps\": %.2f, \"bandwidth_ratio\": %.4f, \"peak_rss_mib\": %.1f, "
                   "\"data_mib\": %.1f, \"workspace_kib\": %.1f, \"tokens_per_s\": %.1f, "
                   "\"blas_core\": \"%s\", \"kernels\": \"%s\"}\n",
                   cases[c].name, nthreads, r.ms, r.gflops, r.ceiling, r.ratio, r.gbps,
                   r.bandwidth, r.bw_ratio, r.rss_mib, r.data_mib, r.workspace / 1024.0, r.tokens,
                   blas.core[0] ? blas.core : blas.name, attn_kernel_isa());
        } else if (cases[c].merge) {
            printf("%-20s %9.3f %9s %9s %7s %9.1f %9.1f %6.0f%% %9.1f %9.1f\n", cases[c].name, r.ms,
                   "", "", "", r.gbps, r.bandwidth, 100.0 * r.bw_ratio, r.rss_mib, r.data_mib);
        } else if (cases[c].decode) {
            printf("%-20s %9.3f %9.1f %9.1f %6.0f%% %9.1f %9.1f %6.0f%% %9.1f %9.1f %9.0f\n",
                   cases[c].name, r.ms, r.gflops, r.ceiling, 100.0 * r.ratio, r.gbps, r.bandwidth,
                   100.0 * r.bw_ratio, r.rss_mib, r.data_mib, r.tokens);
        } else {
            printf("%-20s %9.3f %9.1f %9.1f %6.0f%% %9s %9s %7s %9.1f %9.1f %9.0f\n", cases[c].name,
                   r.ms, r.gflops, r.ceiling, 100.0 * r.ratio, "", "", "", r.rss_mib, r.data_mib,
                   r.tokens);
        }
        fflush(stdout);
    }
    machine_free(&m);
    return 0;
}
