/*
 * Fuzz target for attn_create + attn_forward. The input bytes are decoded into a descriptor and
 * the arguments of one call: sizes (including 0 and split-key shapes), strides of every kind
 * (contiguous, padded, broadcast, zero, overlapping, negative, huge), offsets, windows, kv_lens,
 * broadcast masks and biases, flags, policies, optional outputs and thread counts. The harness
 * does not re-implement the validation. Instead:
 *   - if attn_forward accepts the call, every output must match the float64 oracle within the
 *     tolerance of tests/support/reference.c, and output padding must be untouched;
 *   - if it rejects the call, no output byte may have changed.
 * Anything else aborts, which libFuzzer reports as a crash. Buffers are sized from the strides,
 * so reading outside a view is caught by AddressSanitizer.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <attn/attn.h>

#include "support/check.h"
#include "support/reference.h"

typedef struct bytes {
    const uint8_t *p;
    size_t n, at;
} bytes;

static unsigned byte(bytes *b)
{
    return b->at < b->n ? b->p[b->at++] : 0;
}

static unsigned pick(bytes *b, unsigned n)
{
    return byte(b) % n;
}

/* 1 in 16: how often each invalid choice is taken, so that most inputs reach the computation
 * and every error path is still visited often. Never on exhausted input (which reads as 0). */
static int rarely(bytes *b)
{
    return pick(b, 16) == 15;
}

static uint64_t seed_state;
static float value(double amp)
{
    seed_state = seed_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)(((double)(seed_state >> 40) * 0x1p-24 - 0.5) * 2.0 * amp);
}

#define MAX_ELEMS (1u << 22) /* largest buffer the harness will allocate, in elements */

/* Strides for a [B, H, L, W] view chosen by the input; *extent = elements the view spans, or 0
 * when the strides are negative or the extent is too large to allocate. Every choice is either
 * allocatable or certain to be rejected: INT64_MAX overflows whatever the element size when
 * its axis has two or more indices (and is harmless with one); a row stride of 2^31 only for the
 * BLAS operands (Q, K, V), where it exceeds the BLAS index range, since elsewhere it would be
 * valid but unallocatable. (Regressions: out-of-range strides that were in fact valid.) */
static attn_strides decode_strides(bytes *b, int64_t B, int64_t H, int64_t L, int64_t W,
                                   int output, int blas_rows, int64_t *extent)
{
    attn_strides s;
    int64_t pad = pick(b, 4);
    switch (rarely(b) ? 4 + pick(b, 4) : pick(b, 4)) {
    case 0: s = attn_strides_bhsd((uint32_t)H, (uint32_t)L, (uint32_t)W); break;
    case 1: s = attn_strides_bshd((uint32_t)H, (uint32_t)L, (uint32_t)W); break;
    case 2: s.seq = W + pad, s.head = L * s.seq + pad, s.batch = H * s.head + pad; break;
    case 3: s.seq = W, s.head = output ? L * W : 0, s.batch = output ? H * L * W : 0; break;
    case 4: s.seq = pick(b, 2 * (unsigned)W + 1), s.head = pick(b, 64), s.batch = pick(b, 256); break;
    case 5: s = attn_strides_bhsd((uint32_t)H, (uint32_t)L, (uint32_t)W), s.head = -s.head; break;
    case 6: s = attn_strides_bhsd((uint32_t)H, (uint32_t)L, (uint32_t)W), s.batch = INT64_MAX; break;
    default:
        s = attn_strides_bhsd((uint32_t)H, (uint32_t)L, (uint32_t)W);
        if (blas_rows)
            s.seq = (int64_t)1 << 31;
        else
            s.seq = INT64_MAX;
        break;
    }
    *extent = 0;
    if (s.batch < 0 || s.head < 0 || s.seq < 0)
        return s;
    double e = (double)(B - 1) * s.batch + (double)(H - 1) * s.head + (double)(L - 1) * s.seq + W;
    if (e <= MAX_ELEMS)
        *extent = (int64_t)e;
    return s;
}

/* A buffer for a view: the view's extent, or one element when the view cannot be valid. */
static float *view_buffer(int64_t extent, double amp, float fill_padding)
{
    size_t n = extent > 0 ? (size_t)extent : 1;
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = fill_padding == 0.0f ? value(amp) : fill_padding;
    return p;
}

/* Outcome counts, for judging how much of the corpus reaches the computation. */
long fuzz_outcomes[3]; /* create rejected, call rejected, call accepted and checked */

static void fail(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz_forward: %s: %s\n", what, detail);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bytes in = {data, size, 0};
    seed_state = 0x9E3779B97F4A7C15ull ^ size;
    for (size_t i = 0; i < size; i++)
        seed_state = seed_state * 31 + data[i];

    attn_desc d;
    attn_desc_init(&d);
    int64_t Hkv = 1 + pick(&in, 3), group = 1 + pick(&in, 3);
    d.kv_heads = (uint32_t)Hkv;
    d.q_heads = (uint32_t)(Hkv * group + rarely(&in)); /* sometimes not a multiple */
    d.qk_dim = rarely(&in) ? 0 : 1 + pick(&in, 20);
    d.v_dim = 1 + pick(&in, 20);
    static const float scales[] = {0.0f, 0.125f, 1.0f, -0.5f, 3.0f};
    d.scale = rarely(&in) ? (pick(&in, 2) ? NAN : INFINITY) : scales[pick(&in, 5)];
    d.flags = rarely(&in) ? byte(&in) << 1 : 0; /* sometimes unknown bits */
    if (pick(&in, 2))
        d.flags |= ATTN_CAUSAL;
    if (pick(&in, 4) == 0)
        d.flags |= ATTN_BLAS_THREADS_UNTOUCHED;
    static const int64_t windows[] = {-1, -1, -1, 0, 1, 3, 17, 40};
    d.window_left = rarely(&in) ? (pick(&in, 2) ? -2 : INT64_MAX) : windows[pick(&in, 8)];
    d.window_right = rarely(&in) ? ATTN_MAX_DISTANCE + 1 : windows[pick(&in, 8)];
    d.masked_rows = (attn_masked_rows)(rarely(&in) ? 2 : pick(&in, 2));
    d.threads = pick(&in, 4);

    attn_ctx *ctx = NULL;
    attn_status st = attn_create(&d, &ctx);
    if (st != ATTN_OK) {
        if (ctx)
            fail("attn_create", "failed but set the context");
        fuzz_outcomes[0]++;
        if (getenv("FUZZ_VERBOSE"))
            fprintf(stderr, "create rejected: %s\n", attn_last_error(NULL));
        return 0;
    }

    int64_t B = rarely(&in) ? 0 : 1 + pick(&in, 3);
    int64_t Hq = d.q_heads, D = d.qk_dim, Dv = d.v_dim;
    int decode = pick(&in, 4) == 0;
    int64_t Lq = decode ? 1 + pick(&in, 16) : (rarely(&in) ? 0 : 1 + pick(&in, 40));
    int64_t Lk = decode ? 512 + 8 * (int64_t)byte(&in) : 1 + pick(&in, 70);
    static const double amps[] = {1.0, 1.0, 30.0, 1e4};
    double amp = amps[pick(&in, 4)];

    attn_args a;
    attn_args_init(&a);
    a.batch = (uint32_t)B, a.q_len = (uint32_t)Lq, a.kv_len = (uint32_t)Lk;
    int64_t eq, ek, ev, eo, em = 0, eb = 0;
    int64_t Bs = B ? B : 1, Lqs = Lq ? Lq : 1;
    a.q_strides = decode_strides(&in, Bs, Hq, Lqs, D ? D : 1, 0, 1, &eq);
    a.k_strides = decode_strides(&in, Bs, Hkv, Lk, D ? D : 1, 0, 1, &ek);
    a.v_strides = decode_strides(&in, Bs, Hkv, Lk, Dv, 0, 1, &ev);
    a.out_strides = decode_strides(&in, Bs, Hq, Lqs, Dv, 1, 0, &eo);
    float *q = view_buffer(eq, 1.0, 0), *k = view_buffer(ek, 1.0, 0), *v = view_buffer(ev, 1.0, 0);
    for (int64_t i = 0; i < eq; i++) q[i] *= (float)amp;
    a.q = q, a.k = k, a.v = v;
    const float sentinel = -12345.0f;
    size_t out_n = eo > 0 ? (size_t)eo : 1;
    float *out = view_buffer(eo, 0, sentinel);
    a.out = out;
    if (rarely(&in))
        a.out = (float *)q; /* aliasing an input */

    if (rarely(&in))
        a.q_offset = pick(&in, 2) ? INT64_MAX : -ATTN_MAX_DISTANCE - 1;
    else if (pick(&in, 2))
        a.q_offset = (int64_t)pick(&in, 90) - 45;
    int32_t lens[3];
    if (pick(&in, 3) == 0) {
        for (int i = 0; i < 3; i++)
            lens[i] = rarely(&in) ? (int32_t)Lk + 1 : (int32_t)pick(&in, (unsigned)Lk + 1);
        a.kv_lens = lens;
    }
    uint8_t *mask = NULL;
    float *bias = NULL;
    if (pick(&in, 3) == 0) {
        a.mask_strides = decode_strides(&in, Bs, Hq, Lqs, Lk, 0, 0, &em);
        mask = malloc(em > 0 ? (size_t)em : 1);
        for (int64_t i = 0; i < (em > 0 ? em : 1); i++)
            mask[i] = (uint8_t)(value(1.0) > -0.6f);
        a.mask = mask;
    }
    if (pick(&in, 3) == 0) {
        a.bias_strides = decode_strides(&in, Bs, Hq, Lqs, Lk, 0, 0, &eb);
        bias = view_buffer(eb, 3.0, 0);
        if (eb > 0 && pick(&in, 2))
            bias[pick(&in, 256) % (unsigned)eb] = -INFINITY;
        a.bias = bias;
    }
    size_t rows = (size_t)(Bs * Hq * Lqs), wn = rows * (size_t)Lk;
    float *lse = NULL, *ent = NULL, *w = NULL;
    if (pick(&in, 2)) {
        lse = malloc(rows * sizeof *lse);
        for (size_t i = 0; i < rows; i++) lse[i] = sentinel;
        a.lse = lse;
    }
    if (pick(&in, 2)) {
        ent = malloc(rows * sizeof *ent);
        for (size_t i = 0; i < rows; i++) ent[i] = sentinel;
        a.entropy = ent;
    }
    unsigned wm = pick(&in, 3);
    if (wm && wn <= MAX_ELEMS) {
        a.weights_mode = (attn_weights_mode)(rarely(&in) ? 7 : wm);
        w = malloc(wn * sizeof *w);
        for (size_t i = 0; i < wn; i++) w[i] = sentinel;
        a.weights = w;
    }
    if (rarely(&in))
        a.struct_size--;

    if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr,
                "B=%lld Hq=%lld Hkv=%lld Lq=%lld Lk=%lld D=%lld Dv=%lld flags=%x win=(%lld,%lld) "
                "threads=%u off=%lld out strides {%lld,%lld,%lld} extent %lld mask %s {%lld,%lld,%lld} "
                "extent %lld\n",
                (long long)B, (long long)Hq, (long long)Hkv, (long long)Lq, (long long)Lk,
                (long long)D, (long long)Dv, d.flags, (long long)d.window_left,
                (long long)d.window_right, d.threads, (long long)a.q_offset,
                (long long)a.out_strides.batch, (long long)a.out_strides.head,
                (long long)a.out_strides.seq, (long long)eo, a.mask ? "yes" : "no",
                (long long)a.mask_strides.batch, (long long)a.mask_strides.head,
                (long long)a.mask_strides.seq, (long long)em);
    st = attn_forward(ctx, &a);
    if (st != ATTN_OK) {
        for (size_t i = 0; i < out_n; i++)
            if (out[i] != sentinel)
                fail("rejected call wrote out", attn_last_error(ctx));
        for (size_t i = 0; lse && i < rows; i++)
            if (lse[i] != sentinel)
                fail("rejected call wrote lse", attn_last_error(ctx));
        for (size_t i = 0; ent && i < rows; i++)
            if (ent[i] != sentinel)
                fail("rejected call wrote entropy", attn_last_error(ctx));
        for (size_t i = 0; w && i < wn; i++)
            if (w[i] != sentinel)
                fail("rejected call wrote weights", attn_last_error(ctx));
        if (!attn_last_error(ctx)[0])
            fail("rejected call", "no message");
        fuzz_outcomes[1]++;
        if (getenv("FUZZ_VERBOSE"))
            fprintf(stderr, "rejected: %s\n", attn_last_error(ctx));
    } else {
        if (a.out != out || eo <= 0)
            fail("accepted call", "with an aliasing or impossible output view");
        ref_problem p = ref_problem_from(&d, &a);
        ref_result r;
        ref_attention(&p, &r);
        check_stats cs = {0};
        check_outputs(&p, &r, &d, &a, "fuzz", &cs);
        if (cs.failures)
            fail("result out of tolerance", cs.first_failure);
        /* output padding untouched */
        unsigned char *in_view = calloc(out_n, 1);
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < Hq; h++)
                for (int64_t i = 0; i < Lq; i++)
                    memset(in_view + b * a.out_strides.batch + h * a.out_strides.head +
                               i * a.out_strides.seq, 1, (size_t)Dv);
        for (size_t i = 0; i < out_n; i++)
            if (!in_view[i] && out[i] != sentinel)
                fail("accepted call", "wrote output padding");
        free(in_view);
        ref_free(&r);
        fuzz_outcomes[2]++;
    }
    attn_destroy(ctx);
    free(q), free(k), free(v), free(out), free(mask), free(bias), free(lse), free(ent), free(w);
    return 0;
}
