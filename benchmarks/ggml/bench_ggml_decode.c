/*
 * bench_ggml_decode: times ggml's ggml_flash_attn_ext (CPU backend) on attn-bench's decode
 * shapes with f16 K/V, so that libattn's decode step can be compared with it on this machine.
 * It is not part of libattn's build: see README.md in this directory.
 *
 * Every case uses the data attn-bench uses for the case of the same name: Q float32 in [-0.5, 0.5)
 * from the same generator and seeds, K and V binary16 with the same bits, laid out as attn-bench
 * lays them out ([B, H, L, D] there is ggml's [D, L, H, B]); the scale is 1/sqrt(d), no mask.
 *
 * As in attn-bench, every timed call is preceded by one sample of the read bandwidth (N threads
 * reading disjoint parts of a 512 MiB buffer), which also evicts K and V from the caches, so that
 * each call reads them from memory; --no-flush times calls back to back instead. A case reports
 * the median, minimum, 10th percentile and maximum time of one call, tokens/s (one token per
 * sequence per call), the bytes of K and V read per second and their median ratio to the
 * read-bandwidth samples, and the largest difference from a float64 reference computed on the
 * same (f16) K and V.
 *
 * Built with -DWITH_LIBATTN (and linked with -lattn), it also times libattn's attn_forward on the
 * very same buffers in the same process, alternating with ggml call by call (which of the two
 * goes first alternates too), each call after its own bandwidth sample, and reports it on a
 * second line per case.
 *
 *   bench_ggml_decode [--threads N] [--case NAME]... [--reps N] [--no-flush] [--json] [--list]
 */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ggml.h"
#include "ggml-cpu.h"
#ifdef WITH_LIBATTN
#include <attn/attn.h>
#endif

typedef struct bench_case {
    const char *name;
    int64_t B, Hq, Hkv, Lk, D; /* one query per sequence and head */
} bench_case;

static const bench_case cases[] = {
    {"decode-4k-f16", 1, 32, 32, 4096, 128},
    {"decode-gqa-8k-f16", 1, 32, 8, 8192, 128},
    {"decode-batch-32k-f16", 8, 32, 8, 4096, 128},
};
enum { NCASES = sizeof cases / sizeof cases[0], MAXREPS = 1000 };

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

/* Sorts v. */
static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* attn-bench's generator: uniform in [-0.5, 0.5), as float32 bit patterns. */
static void fill_random(float *p, size_t n, uint64_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        p[i] = (float)((double)(seed >> 40) * 0x1p-24 - 0.5);
    }
}

/* attn-bench's f16 K/V: 0x1400 plus the low ten bits of the float32 it would have used. */
static void fill_f16(ggml_fp16_t *p, size_t n, uint64_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        float f = (float)((double)(seed >> 40) * 0x1p-24 - 0.5);
        uint32_t bits;
        memcpy(&bits, &f, 4);
        p[i] = (ggml_fp16_t)(0x1400u + (bits & 0x3FFu));
    }
}

/* ---- the read bandwidth, as attn-bench samples it ------------------------------------------ */

typedef struct reader {
    pthread_t tid;
    const uint64_t *p;
    size_t words;
    uint64_t sink;
} reader;

static void *read_worker(void *arg)
{
    reader *w = arg;
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

/* GB/s of `threads` threads reading disjoint parts of buf. */
static double bandwidth_sample(const uint64_t *buf, size_t words, int threads)
{
    reader w[256];
    size_t per = words / (size_t)threads;
    double t0 = now();
    for (int i = 0; i < threads; i++) {
        w[i].p = buf + (size_t)i * per;
        w[i].words = per;
        if (pthread_create(&w[i].tid, NULL, read_worker, &w[i]) != 0) {
            fprintf(stderr, "bench_ggml_decode: cannot start a thread\n");
            exit(1);
        }
    }
    for (int i = 0; i < threads; i++)
        pthread_join(w[i].tid, NULL);
    return (double)(per * (size_t)threads * 8) / (now() - t0) / 1e9;
}

/* ---- one case ------------------------------------------------------------------------------- */

typedef struct result {
    double ms, min_ms, p10_ms, max_ms, tokens_s, kv_gbps, read_gbps, bw_ratio, max_err;
    int reps;
} result;

/* Largest |ggml - float64 reference| over a few (sequence, head) pairs: the first, the last and
 * one in the middle. out is ggml's [D, Hq, 1, B]. */
static double check(const bench_case *c, const float *q, const ggml_fp16_t *k, const ggml_fp16_t *v,
                    const float *out)
{
    const int64_t D = c->D, Lk = c->Lk;
    int64_t picks[3][2] = {{0, 0}, {c->B / 2, c->Hq / 2 + 1}, {c->B - 1, c->Hq - 1}};
    double worst = 0.0, *s = malloc((size_t)Lk * sizeof *s), *o = malloc((size_t)D * sizeof *o);
    if (!s || !o) {
        fprintf(stderr, "bench_ggml_decode: out of memory\n");
        exit(1);
    }
    for (int p = 0; p < 3; p++) {
        int64_t b = picks[p][0], h = picks[p][1], hk = h / (c->Hq / c->Hkv);
        const float *qr = q + (b * c->Hq + h) * D;
        const ggml_fp16_t *kr = k + (b * c->Hkv + hk) * Lk * D;
        const ggml_fp16_t *vr = v + (b * c->Hkv + hk) * Lk * D;
        double m = -INFINITY, sum = 0.0;
        for (int64_t j = 0; j < Lk; j++) {
            double d = 0.0;
            for (int64_t e = 0; e < D; e++)
                d += (double)qr[e] * (double)ggml_fp16_to_fp32(kr[j * D + e]);
            s[j] = d / sqrt((double)D);
            m = s[j] > m ? s[j] : m;
        }
        for (int64_t e = 0; e < D; e++)
            o[e] = 0.0;
        for (int64_t j = 0; j < Lk; j++) {
            double w = exp(s[j] - m);
            sum += w;
            for (int64_t e = 0; e < D; e++)
                o[e] += w * (double)ggml_fp16_to_fp32(vr[j * D + e]);
        }
        const float *got = out + (b * c->Hq + h) * D;
        for (int64_t e = 0; e < D; e++) {
            double err = fabs((double)got[e] - o[e] / sum);
            worst = err > worst ? err : worst;
        }
    }
    free(s), free(o);
    return worst;
}

/* Times the case; fills out_r[0] (ggml) and, built WITH_LIBATTN, out_r[1] (libattn), and returns
 * how many it filled. */
static int run_case(const bench_case *c, int threads, int reps, int flush, const uint64_t *buf,
                    size_t words, result out_r[2])
{
    const int64_t nq = c->B * c->Hq * c->D, nkv = c->B * c->Hkv * c->Lk * c->D;
    struct ggml_init_params ip = {
        .mem_size = (size_t)nq * 8 + (size_t)nkv * 4 + 16 * ggml_tensor_overhead() +
                    ggml_graph_overhead() + (1 << 20),
        .mem_buffer = NULL,
        .no_alloc = false,
    };
    struct ggml_context *ctx = ggml_init(ip);
    if (!ctx) {
        fprintf(stderr, "bench_ggml_decode: ggml_init failed\n");
        exit(1);
    }
    struct ggml_tensor *q = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, c->D, 1, c->Hq, c->B);
    struct ggml_tensor *k = ggml_new_tensor_4d(ctx, GGML_TYPE_F16, c->D, c->Lk, c->Hkv, c->B);
    struct ggml_tensor *v = ggml_new_tensor_4d(ctx, GGML_TYPE_F16, c->D, c->Lk, c->Hkv, c->B);
    fill_random(q->data, (size_t)nq, 11);
    fill_f16(k->data, (size_t)nkv, 12);
    fill_f16(v->data, (size_t)nkv, 13);
    struct ggml_tensor *out =
        ggml_flash_attn_ext(ctx, q, k, v, NULL, 1.0f / sqrtf((float)c->D), 0.0f, 0.0f);
    struct ggml_cgraph *gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, out);

    /* a persistent thread pool and work buffer, as the CPU backend keeps them */
    struct ggml_threadpool_params tpp = ggml_threadpool_params_default(threads);
    struct ggml_threadpool *tp = ggml_threadpool_new(&tpp);
    struct ggml_cplan plan = ggml_graph_plan(gf, threads, tp);
    void *work = plan.work_size ? malloc(plan.work_size) : NULL;
    if (plan.work_size && !work) {
        fprintf(stderr, "bench_ggml_decode: out of memory\n");
        exit(1);
    }
    plan.work_data = work;

    result r[2];
    memset(r, 0, sizeof r);
    if (ggml_graph_compute(gf, &plan) != GGML_STATUS_SUCCESS) {
        fprintf(stderr, "bench_ggml_decode: %s: ggml_graph_compute failed\n", c->name);
        exit(1);
    }
    r[0].max_err = check(c, q->data, k->data, v->data, out->data);
    int impls = 1;
#ifdef WITH_LIBATTN
    attn_desc d;
    attn_desc_init(&d);
    d.q_heads = (uint32_t)c->Hq, d.kv_heads = (uint32_t)c->Hkv;
    d.qk_dim = d.v_dim = (uint32_t)c->D, d.threads = (uint32_t)threads, d.kv_dtype = ATTN_KV_F16;
    attn_ctx *actx;
    float *lout = malloc((size_t)nq * sizeof *lout);
    if (!lout || attn_create(&d, &actx) != ATTN_OK) {
        fprintf(stderr, "bench_ggml_decode: libattn: %s\n", attn_last_error(NULL));
        exit(1);
    }
    attn_args a;
    attn_args_init(&a);
    a.batch = (uint32_t)c->B, a.q_len = 1, a.kv_len = (uint32_t)c->Lk;
    a.q = q->data, a.q_strides = attn_strides_bhsd((uint32_t)c->Hq, 1, (uint32_t)c->D);
    a.k = k->data;
    a.k_strides = attn_strides_bhsd((uint32_t)c->Hkv, (uint32_t)c->Lk, (uint32_t)c->D);
    a.v = v->data, a.v_strides = a.k_strides;
    a.out = lout, a.out_strides = a.q_strides;
    if (attn_forward(actx, &a) != ATTN_OK) {
        fprintf(stderr, "bench_ggml_decode: libattn: %s\n", attn_last_error(actx));
        exit(1);
    }
    r[1].max_err = check(c, q->data, k->data, v->data, lout);
    impls = 2;
#endif

    static double t[2][MAXREPS], bw[2][MAXREPS], ratio[2][MAXREPS];
    double bytes = 2.0 * (double)nkv * 2.0;
    double warm_until = now() + 0.25;
    do {
        ggml_graph_compute(gf, &plan);
#ifdef WITH_LIBATTN
        attn_forward(actx, &a);
#endif
    } while (now() < warm_until);
    for (int i = 0; i < reps; i++)
        for (int n = 0; n < impls; n++) {
            int m = (i + n) % impls; /* who goes first alternates */
            if (flush)
                bw[m][i] = bandwidth_sample(buf, words, threads);
            double t0 = now();
            if (m == 0)
                ggml_graph_compute(gf, &plan);
#ifdef WITH_LIBATTN
            else
                attn_forward(actx, &a);
#endif
            t[m][i] = now() - t0;
            if (flush)
                ratio[m][i] = bytes / t[m][i] / 1e9 / bw[m][i];
        }
    for (int m = 0; m < impls; m++) {
        double sec = median(t[m], reps);
        r[m].reps = reps;
        r[m].ms = sec * 1e3;
        r[m].min_ms = t[m][0] * 1e3;
        r[m].p10_ms = t[m][reps / 10] * 1e3; /* sorted by median() */
        r[m].max_ms = t[m][reps - 1] * 1e3;
        r[m].tokens_s = (double)c->B / sec;
        r[m].kv_gbps = bytes / sec / 1e9;
        if (flush) {
            r[m].read_gbps = median(bw[m], reps);
            r[m].bw_ratio = median(ratio[m], reps);
        }
    }
#ifdef WITH_LIBATTN
    attn_destroy(actx);
    free(lout);
#endif
    ggml_threadpool_free(tp);
    free(work);
    ggml_free(ctx);
    out_r[0] = r[0], out_r[1] = r[1];
    return impls;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: bench_ggml_decode [--threads N] [--case NAME]... [--reps N] [--no-flush]\n"
            "                         [--json] [--list]\n"
            "  --threads N  threads for ggml and for the bandwidth samples (default 2)\n"
            "  --case NAME  run only this case (repeatable; default all)\n"
            "  --reps N     timed calls per case, the median is reported (default 31)\n"
            "  --no-flush   time calls back to back, without a bandwidth sample before each\n"
            "  --json       one JSON object per case on stdout\n"
            "  --list       list the cases\n");
}

int main(int argc, char **argv)
{
    int threads = 2, reps = 31, flush = 1, json = 0, nselected = 0;
    const char *selected[NCASES * 4];
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--case") && i + 1 < argc && nselected < NCASES * 4)
            selected[nselected++] = argv[++i];
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--no-flush"))
            flush = 0;
        else if (!strcmp(argv[i], "--json"))
            json = 1;
        else if (!strcmp(argv[i], "--list")) {
            for (int c = 0; c < NCASES; c++)
                printf("%-20s B=%lld Hq=%lld Hkv=%lld Lq=1 Lk=%lld D=%lld f16 K/V\n", cases[c].name,
                       (long long)cases[c].B, (long long)cases[c].Hq, (long long)cases[c].Hkv,
                       (long long)cases[c].Lk, (long long)cases[c].D);
            return 0;
        } else {
            usage();
            return 2;
        }
    }
    if (threads < 1 || threads > 256 || reps < 1 || reps > MAXREPS) {
        fprintf(stderr, "bench_ggml_decode: --threads must be 1..256 and --reps 1..%d\n", MAXREPS);
        return 2;
    }
    for (int s = 0; s < nselected; s++) {
        int known = 0;
        for (int c = 0; c < NCASES; c++)
            known |= !strcmp(selected[s], cases[c].name);
        if (!known) {
            fprintf(stderr, "bench_ggml_decode: unknown case '%s' (see --list)\n", selected[s]);
            return 2;
        }
    }
    ggml_cpu_init();
    size_t bytes = (size_t)512 << 20, words = bytes / 8;
    uint64_t *buf = malloc(bytes);
    if (!buf) {
        fprintf(stderr, "bench_ggml_decode: out of memory\n");
        return 1;
    }
    memset(buf, 1, bytes);
    double b0[5];
    for (int r = 0; r < 5; r++)
        b0[r] = bandwidth_sample(buf, words, threads);
    FILE *info = json ? stderr : stdout;
    fprintf(info, "ggml %s (commit %s), CPU backend, %d threads; AVX2 %d, F16C %d, AVX-512 %d\n",
            ggml_version(), ggml_commit(), threads, ggml_cpu_has_avx2(), ggml_cpu_has_f16c(),
            ggml_cpu_has_avx512());
#ifdef WITH_LIBATTN
    fprintf(info, "libattn %s, %s kernels, %d threads, alternating with ggml call by call\n",
            attn_version_string(), attn_kernel_isa(), threads);
#endif
    if (!json) {
        printf("read bandwidth %.1f GB/s (median of 5)%s\n\n", median(b0, 5),
               flush ? "; one sample before every timed call" : "; calls timed back to back");
        printf("%-20s %-8s %9s %9s %9s %9s %10s %9s %9s %7s %9s\n", "case", "impl", "median ms",
               "min ms", "p10 ms", "max ms", "tokens/s", "K+V GB/s", "read GB/s", "ratio",
               "max err");
    }
    for (int c = 0; c < NCASES; c++) {
        int run = nselected == 0;
        for (int s = 0; s < nselected; s++)
            run |= !strcmp(selected[s], cases[c].name);
        if (!run)
            continue;
        result rr[2];
        int impls = run_case(&cases[c], threads, reps, flush, buf, words, rr);
        for (int m = 0; m < impls; m++) {
            const result *r = &rr[m];
            const char *impl = m ? "libattn" : "ggml";
            if (json)
                printf("{\"case\": \"%s\", \"impl\": \"%s\", \"threads\": %d, \"reps\": %d, "
                       "\"median_ms\": %.4f, \"min_ms\": %.4f, \"p10_ms\": %.4f, \"max_ms\": %.4f, "
                       "\"tokens_s\": %.1f, \"kv_gbps\": %.2f, \"read_gbps\": %.2f, "
                       "\"bandwidth_ratio\": %.4f, \"max_err\": %.3g, \"flush\": %d}\n",
                       cases[c].name, impl, threads, r->reps, r->ms, r->min_ms, r->p10_ms,
                       r->max_ms, r->tokens_s, r->kv_gbps, r->read_gbps, r->bw_ratio, r->max_err,
                       flush);
            else
                printf("%-20s %-8s %9.3f %9.3f %9.3f %9.3f %10.1f %9.1f %9.1f %6.0f%% %9.2g\n",
                       cases[c].name, impl, r->ms, r->min_ms, r->p10_ms, r->max_ms, r->tokens_s,
                       r->kv_gbps, r->read_gbps, 100.0 * r->bw_ratio, r->max_err);
        }
        fflush(stdout);
    }
    free(buf);
    return 0;
}
