/*
 * Fuzz target for attn_create / attn_create_static + attn_forward. The input bytes are decoded
 * into a descriptor and the arguments of one call. A shape mode chooses what to reach:
 *   - small problems with every kind of stride (contiguous, padded, broadcast, zero,
 *     overlapping, negative, huge), offsets, windows, kv_lens, masks, biases, optional outputs;
 *   - wide heads (qk_dim / v_dim up to 256), several query blocks (q_len up to 200);
 *   - the split-key path with several row sets (GQA groups of up to 9 heads, q_len <= 16,
 *     kv_len >= 512) and with several waves (more key chunks than partial slots, so that row
 *     sets span two waves);
 * and, across modes: up to 8 threads, the static workspace (also too small or misaligned),
 * q_offset and windows at +-ATTN_MAX_DISTANCE and just beyond, NULL pointers, outputs placed
 * inside another buffer (partially aliased), and a multi-threaded BLAS (the harness sets the
 * BLAS's own thread count to 1..4 through dlsym, so libattn's save-and-restore runs).
 * The harness does not re-implement the validation. Instead:
 *   - if attn_forward accepts the call: every output matches the float64 oracle (computed from
 *     copies of the inputs) within the tolerance of tests/support/reference.c, the inputs are
 *     unchanged, output padding is untouched, and the BLAS thread count is what it was;
 *   - if it rejects the call: no byte of any buffer changed, and there is a message.
 * Anything else aborts, which libFuzzer reports as a crash. Buffers are sized from the strides,
 * so reading outside a view is caught by AddressSanitizer.
 *
 * When the input runs out, further choices come from a generator seeded by the input rather
 * than reading as zeros, and no invalid option is chosen from them.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <attn/attn.h>

#include "fuzz_bytes.h"
#include "support/blas_next.h"
#include "support/check.h"
#include "support/reference.h"


static unsigned pick(bytes *b, unsigned n)
{
    return n <= 256 ? byte(b) % n : ((byte(b) << 8) | byte(b)) % n;
}

static unsigned range(bytes *b, unsigned lo, unsigned hi) /* inclusive */
{
    return lo + pick(b, hi - lo + 1);
}

/* 1 in 16: how often each invalid choice is taken, so that most inputs reach the computation
 * and every error path is still visited often. Never once the input is exhausted. */
static int rarely(bytes *b)
{
    if (b->at >= b->n)
        return 0;
    return pick(b, 16) == 15;
}

static uint64_t seed_state;
static float value(double amp)
{
    seed_state = seed_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)(((double)(seed_state >> 40) * 0x1p-24 - 0.5) * 2.0 * amp);
}

#define MAX_ELEMS (1u << 23) /* largest buffer the harness will allocate, in elements */

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

/* ---- buffers and their snapshots --------------------------------------------------------- */

typedef struct buffer {
    void *p;      /* what the harness allocated */
    void *snap;   /* a copy taken just before the call */
    size_t bytes; /* allocated size */
} buffer;

static void *buffer_alloc(buffer *b, size_t size)
{
    b->bytes = size ? size : 1;
    b->p = malloc(b->bytes);
    b->snap = NULL;
    return b->p;
}

static float *float_buffer(buffer *b, int64_t extent, double amp, float fill)
{
    size_t n = extent > 0 ? (size_t)extent : 1;
    float *p = buffer_alloc(b, n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        p[i] = fill == 0.0f ? value(amp) : fill;
    return p;
}

/*
 * Values for the exact-score mode: n 2^a with n an integer in [-127, 127] (7 significant bits),
 * 2^a chosen so that 127 2^a is about amp (1 -> 2^-7, 30 -> 2^-2, 1e4 -> 2^6). Q takes the
 * amplitude, K amplitude 1 (2^-7). Every product is then (n_q n_k) 2^(a_q + a_k) with
 * |n_q n_k| <= 127^2, and a dot product over D <= 256 terms sums at most 256 * 127^2 < 2^24 such
 * units: float32 represents every partial sum exactly, in any order. With the power-of-two scale
 * 2^-ceil(log2 D), |score| <= 127 2^a: up to 8,128 at amplitude 1e4. The harness does not tell
 * the oracle about the mode: the oracle checks exactness on the values it is given.
 * One value() per element, as float_buffer, so the values drawn after these are the same.
 */
static float *exact_buffer(buffer *b, int64_t extent, double amp)
{
    size_t n = extent > 0 ? (size_t)extent : 1;
    float *p = buffer_alloc(b, n * sizeof(float));
    int a = (int)lrint(log2(amp / 128.0));
    for (size_t i = 0; i < n; i++)
        p[i] = ldexpf(rintf(value(1.0) * 127.0f), a);
    return p;
}

static void buffer_snapshot(buffer *b)
{
    if (!b->p)
        return;
    b->snap = malloc(b->bytes);
    memcpy(b->snap, b->p, b->bytes);
}

static int buffer_changed(const buffer *b)
{
    return b->p && memcmp(b->p, b->snap, b->bytes) != 0;
}

static void buffer_free(buffer *b)
{
    free(b->p);
    free(b->snap);
}

/* The same address in the snapshot of the buffer that holds p. */
static const void *in_snapshot(const buffer *b, const void *p)
{
    return (const char *)b->snap + ((const char *)p - (const char *)b->p);
}

/* Whether the view's elements (width w, element size es) are unchanged from the snapshot. */
static int view_unchanged(const buffer *b, const void *base, attn_strides s, int64_t B, int64_t H,
                          int64_t L, int64_t w, size_t es)
{
    const char *now = base, *then = in_snapshot(b, base);
    for (int64_t i = 0; i < B; i++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t r = 0; r < L; r++) {
                size_t at = (size_t)(i * s.batch + h * s.head + r * s.seq) * es;
                if (memcmp(now + at, then + at, (size_t)w * es) != 0)
                    return 0;
            }
    return 1;
}

/* ---- the BLAS's own thread count --------------------------------------------------------- */

static attn_test_threads_get_fn blas_get;
static attn_test_threads_set_fn blas_set;
static int blas_looked_up;

static void find_blas_count(void)
{
    blas_looked_up = 1;
    attn_test_blas_thread_count(1, &blas_get, &blas_set);
}

/* ---- outcomes ---------------------------------------------------------------------------- */

/* create rejected, call rejected, call accepted and checked, oracle failures counted instead of
 * aborting (only with FUZZ_COUNT_FAILURES set: for measuring how the oracle sees a sabotaged
 * library). */
long fuzz_outcomes[4];

static void fail(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz_forward: %s: %s\n", what, detail);
    abort();
}

/* FUZZ_SABOTAGE=out or lse (with FUZZ_COUNT_FAILURES): spoil an accepted call's result before
 * the oracle sees it, out multiplied by 1.01 or lse increased by 0.01, to measure how often the
 * oracle would let such an error through (docs/testing.md). */
static void sabotage(const attn_args *a, int64_t B, int64_t Hq, int64_t Lq, int64_t Dv)
{
    const char *what = getenv("FUZZ_SABOTAGE");
    if (!what || !getenv("FUZZ_COUNT_FAILURES"))
        return;
    if (strcmp(what, "out") == 0) {
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < Hq; h++)
                for (int64_t i = 0; i < Lq; i++) {
                    float *o = a->out + b * a->out_strides.batch + h * a->out_strides.head +
                               i * a->out_strides.seq;
                    for (int64_t d = 0; d < Dv; d++)
                        o[d] *= 1.01f;
                }
    } else if (strcmp(what, "lse") == 0 && a->lse) {
        for (int64_t r = 0; r < B * Hq * Lq; r++)
            a->lse[r] += 0.01f;
    }
}

static const int64_t windows[] = {-1, -1, -1, 0, 1, 3, 17, 40, 300, ATTN_MAX_DISTANCE - 1,
                                  ATTN_MAX_DISTANCE};

static int64_t decode_window(bytes *in, int invalid)
{
    if (invalid) {
        static const int64_t bad[] = {-2, INT64_MAX, ATTN_MAX_DISTANCE + 1, INT64_MIN};
        return bad[pick(in, 4)];
    }
    return windows[pick(in, sizeof windows / sizeof windows[0])];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!blas_looked_up)
        find_blas_count();
    seed_state = 0x9E3779B97F4A7C15ull ^ size;
    for (size_t i = 0; i < size; i++)
        seed_state = seed_state * 31 + data[i];
    bytes in = {data, size, 0, seed_state ^ 0x5851F42D4C957F2Dull};

    /* ---- descriptor ---- */
    attn_desc d;
    attn_desc_init(&d);
    enum { SMALL, WIDE, BLOCKS, SPLIT_SETS, SPLIT_WAVES } mode;
    unsigned m = pick(&in, 16); /* the split-key modes are the most expensive for the oracle */
    mode = m < 8 ? SMALL : m < 11 ? WIDE : m < 13 ? BLOCKS : m < 15 ? SPLIT_SETS : SPLIT_WAVES;
    static const uint32_t wide_dims[] = {21, 24, 32, 33, 48, 64, 80, 96, 128, 200, 256};
    int64_t Hkv, group;
    uint32_t D, Dv;
    switch (mode) {
    case WIDE:
        Hkv = range(&in, 1, 2), group = range(&in, 1, 2);
        D = wide_dims[pick(&in, 11)], Dv = pick(&in, 2) ? wide_dims[pick(&in, 11)] : range(&in, 1, 20);
        break;
    case SPLIT_SETS:
        Hkv = range(&in, 1, 2), group = range(&in, 4, 9);
        D = range(&in, 1, 16), Dv = range(&in, 1, 16);
        break;
    case SPLIT_WAVES: /* see the sizes below */
        Hkv = 4, group = range(&in, 1, 2);
        D = range(&in, 1, 8), Dv = range(&in, 1, 8);
        break;
    default:
        Hkv = range(&in, 1, 3), group = range(&in, 1, 3);
        D = range(&in, 1, 20), Dv = range(&in, 1, 20);
        break;
    }
    /* at most one invalid field (1 in 16), so that most descriptors are valid */
    enum { NONE, HEADS, DIM, SCALE, FLAGS, WLEFT, WRIGHT, ROWS, THREADS, WS_SIZE, WS_ALIGN, WS_NULL };
    int bad = rarely(&in) ? 1 + (int)pick(&in, 11) : NONE;
    d.kv_heads = (uint32_t)Hkv;
    d.q_heads = (uint32_t)(Hkv * group + (bad == HEADS)); /* not a multiple */
    d.qk_dim = bad == DIM ? (pick(&in, 2) ? 0 : ATTN_MAX_HEAD_DIM + 1) : D;
    d.v_dim = Dv;
    static const float scales[] = {0.0f, 0.125f, 1.0f, -0.5f, 3.0f};
    /* Exact scores, 1 in 4: the same byte also picks the scale (byte % 20 % 5 == byte % 5, so
     * inputs written before this mode existed keep their scale choice), replaced here by a
     * power of two. See exact_values below. */
    int exact_mode = 0;
    if (bad == SCALE) {
        d.scale = pick(&in, 2) ? NAN : INFINITY;
    } else {
        unsigned si = pick(&in, 20);
        d.scale = scales[si % 5];
        if (si >= 15 && D >= 1) {
            exact_mode = 1;
            /* 2^-ceil(log2 D), negative for the entry of -0.5: |scale * q . k| <= |q|max |k|max */
            int c = 0;
            while ((1u << c) < D)
                c++;
            d.scale = ldexpf(d.scale < 0.0f ? -1.0f : 1.0f, -c);
        }
    }
    d.flags = bad == FLAGS ? (byte(&in) | 1) << 2 : 0; /* unknown bits */
    if (pick(&in, 2))
        d.flags |= ATTN_CAUSAL;
    if (pick(&in, 6) == 0)
        d.flags |= ATTN_BLAS_THREADS_UNTOUCHED;
    d.window_left = decode_window(&in, bad == WLEFT);
    d.window_right = decode_window(&in, bad == WRIGHT);
    d.masked_rows = (attn_masked_rows)(bad == ROWS ? 2 : pick(&in, 2));
    d.threads = bad == THREADS ? ATTN_MAX_THREADS + 1 : pick(&in, 9);
    if (mode == SPLIT_WAVES && bad != THREADS)
        d.threads = range(&in, 1, 2); /* 64 partial slots per thread */

    /* ---- context: attn_create, or attn_create_static in caller memory ---- */
    attn_ctx *ctx = NULL;
    attn_status st;
    void *workspace = NULL;
    int use_static = pick(&in, 4) == 0 || bad >= WS_SIZE;
    if (use_static) {
        size_t need = attn_workspace_size(&d);
        size_t give = need, shift = 0;
        if (bad == WS_SIZE)
            give = need ? need - 1 : 0;
        if (bad == WS_ALIGN)
            shift = 8; /* misaligned */
        workspace = aligned_alloc(ATTN_WORKSPACE_ALIGN,
                                  (need + shift + ATTN_WORKSPACE_ALIGN) / ATTN_WORKSPACE_ALIGN *
                                      ATTN_WORKSPACE_ALIGN);
        st = attn_create_static(&d, bad == WS_NULL ? NULL : (char *)workspace + shift, give, &ctx);
    } else {
        st = attn_create(&d, &ctx);
    }
    if (st != ATTN_OK) {
        if (ctx)
            fail("attn_create", "failed but set the context");
        if (!attn_last_error(NULL)[0])
            fail("attn_create", "failed without a message");
        fuzz_outcomes[0]++;
        if (getenv("FUZZ_VERBOSE"))
            fprintf(stderr, "create rejected: %s\n", attn_last_error(NULL));
        free(workspace);
        return 0;
    }

    /* ---- sizes ---- */
    int64_t B, Lq, Lk;
    switch (mode) {
    case WIDE: B = range(&in, 1, 2), Lq = range(&in, 1, 20), Lk = range(&in, 1, 80); break;
    case BLOCKS: B = range(&in, 1, 2), Lq = range(&in, 65, 200), Lk = range(&in, 1, 100); break;
    case SPLIT_SETS: B = 1, Lq = range(&in, 4, 16), Lk = range(&in, 512, 1500); break;
    /* 2 batches x 4 kv heads x 9..20 chunks of 1024 keys: 72..160 partials for the 64 or 128
     * slots of 1 or 2 threads, so the partials come in waves and row sets span two waves */
    case SPLIT_WAVES: B = 2, Lq = range(&in, 1, 2), Lk = range(&in, 8193, 20000); break;
    default: {
        int decode = pick(&in, 4) == 0;
        B = range(&in, 1, 3);
        Lq = decode ? range(&in, 1, 16) : range(&in, 1, 40);
        Lk = decode ? 512 + 8 * (int64_t)byte(&in) : range(&in, 1, 70);
    }
    }
    if (rarely(&in))
        B = 0;
    if (rarely(&in))
        Lq = 0;
    static const double amps[] = {1.0, 1.0, 30.0, 1e4};
    double amp = amps[pick(&in, 4)];
    int64_t Hq = d.q_heads;

    attn_args a;
    attn_args_init(&a);
    a.batch = (uint32_t)B, a.q_len = (uint32_t)Lq, a.kv_len = (uint32_t)Lk;
    int64_t eq, ek, ev, eo, em = 0, eb = 0;
    int64_t Bs = B ? B : 1, Lqs = Lq ? Lq : 1;
    a.q_strides = decode_strides(&in, Bs, Hq, Lqs, D, 0, 1, &eq);
    a.k_strides = decode_strides(&in, Bs, Hkv, Lk, D, 0, 1, &ek);
    if (mode == SPLIT_WAVES) { /* one K and V shared by every batch and head: small buffers */
        a.k_strides = (attn_strides){0, 0, D};
        ek = Lk * D;
        a.v_strides = (attn_strides){0, 0, Dv};
        ev = Lk * Dv;
    } else {
        a.v_strides = decode_strides(&in, Bs, Hkv, Lk, Dv, 0, 1, &ev);
    }
    a.out_strides = decode_strides(&in, Bs, Hq, Lqs, Dv, 1, 0, &eo);

    buffer bq = {0}, bk = {0}, bv = {0}, bo = {0}, bm = {0}, bb = {0}, bl = {0}, blse = {0},
           bent = {0}, bw = {0};
    const float sentinel = -12345.0f;
    /* Partial aliasing: the output starts inside Q's buffer (its view overlaps Q's), so Q's
     * buffer is made large enough for both. */
    int out_in_q = rarely(&in) && eq > 0 && eo > 0;
    int64_t shift = out_in_q ? (int64_t)pick(&in, (unsigned)(eq < 65536 ? eq : 65536)) : 0;
    int64_t qn = out_in_q ? shift + eo > eq ? shift + eo : eq : eq;
    float *q = exact_mode ? exact_buffer(&bq, qn, amp) : float_buffer(&bq, qn, amp, 0);
    float *k = exact_mode ? exact_buffer(&bk, ek, 1.0) : float_buffer(&bk, ek, 1.0, 0);
    float *v = float_buffer(&bv, ev, 1.0, 0);
    a.q = q, a.k = k, a.v = v;
    float *out = float_buffer(&bo, eo, 0, sentinel);
    a.out = out_in_q ? q + shift : out;
    if (rarely(&in))
        a.out = q; /* the same base as an input */

    if (rarely(&in)) {
        static const int64_t bad_offsets[] = {INT64_MAX, -ATTN_MAX_DISTANCE - 1, ATTN_MAX_DISTANCE + 1};
        a.q_offset = bad_offsets[pick(&in, 3)];
    } else {
        switch (pick(&in, 10)) {
        case 0: case 1: case 2: case 3: break; /* the default */
        case 4: a.q_offset = ATTN_MAX_DISTANCE; break;
        case 5: a.q_offset = -ATTN_MAX_DISTANCE; break;
        default: a.q_offset = (int64_t)pick(&in, 90) - 45; break;
        }
    }
    int32_t *lens = NULL;
    if (pick(&in, 3) == 0) {
        lens = buffer_alloc(&bl, (size_t)Bs * sizeof *lens);
        for (int64_t i = 0; i < Bs; i++)
            lens[i] = rarely(&in) ? (int32_t)Lk + 1 : (int32_t)pick(&in, (unsigned)Lk + 1);
        a.kv_lens = lens;
    }
    if (pick(&in, 3) == 0) {
        a.mask_strides = decode_strides(&in, Bs, Hq, Lqs, Lk, 0, 0, &em);
        uint8_t *mask = buffer_alloc(&bm, em > 0 ? (size_t)em : 1);
        for (int64_t i = 0; i < (em > 0 ? em : 1); i++)
            mask[i] = (uint8_t)(value(1.0) > -0.6f);
        a.mask = mask;
    }
    if (pick(&in, 3) == 0) {
        a.bias_strides = decode_strides(&in, Bs, Hq, Lqs, Lk, 0, 0, &eb);
        float *bias = float_buffer(&bb, eb, 3.0, 0);
        if (eb > 0 && pick(&in, 2))
            bias[pick(&in, 256) % (unsigned)eb] = -INFINITY;
        a.bias = bias;
    }
    size_t rows = (size_t)(Bs * Hq * Lqs), wn = rows * (size_t)Lk;
    if (pick(&in, 2))
        a.lse = float_buffer(&blse, (int64_t)rows, 0, sentinel);
    if (pick(&in, 2)) {
        a.entropy = float_buffer(&bent, (int64_t)rows, 0, sentinel);
        if (a.lse && rarely(&in))
            a.entropy = a.lse + pick(&in, (unsigned)rows); /* overlapping outputs */
    }
    unsigned wm = pick(&in, 3);
    if (wm && wn <= MAX_ELEMS) {
        a.weights_mode = (attn_weights_mode)(rarely(&in) ? 7 : wm);
        a.weights = float_buffer(&bw, (int64_t)wn, 0, sentinel);
    }
    const attn_args *pass = &a;
    if (rarely(&in)) {
        switch (pick(&in, 6)) { /* a required pointer missing */
        case 0: a.q = NULL; break;
        case 1: a.k = NULL; break;
        case 2: a.v = NULL; break;
        case 3: a.out = NULL; break;
        case 4: a.weights = NULL; a.weights_mode = ATTN_WEIGHTS_PER_HEAD; break;
        default: pass = NULL; break;
        }
    }
    if (rarely(&in))
        a.struct_size--;

    /* The BLAS runs multi-threaded outside attn_forward unless the descriptor asks libattn to
     * leave it alone (then a threaded BLAS inside the tiles would only make the run slow). */
    int blas_threads = 0;
    if (blas_set) {
        blas_threads = (d.flags & ATTN_BLAS_THREADS_UNTOUCHED) ? 1 : (int)range(&in, 1, 4);
        blas_set(blas_threads);
        blas_threads = blas_get();
    }

    if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr,
                "mode=%d B=%lld Hq=%lld Hkv=%lld Lq=%lld Lk=%lld D=%u Dv=%u flags=%x "
                "win=(%lld,%lld) threads=%u static=%d blas=%d off=%lld amp=%g out strides "
                "{%lld,%lld,%lld} extent %lld%s mask %s\n",
                (int)mode, (long long)B, (long long)Hq, (long long)Hkv, (long long)Lq,
                (long long)Lk, D, Dv, d.flags, (long long)d.window_left,
                (long long)d.window_right, d.threads, use_static, blas_threads,
                (long long)a.q_offset, amp, (long long)a.out_strides.batch,
                (long long)a.out_strides.head, (long long)a.out_strides.seq, (long long)eo,
                out_in_q ? " inside q" : "", a.mask ? "yes" : "no");

    buffer *all[] = {&bq, &bk, &bv, &bo, &bm, &bb, &bl, &blse, &bent, &bw};
    const size_t nall = sizeof all / sizeof all[0];
    for (size_t i = 0; i < nall; i++)
        buffer_snapshot(all[i]);
    st = attn_forward(ctx, pass);
    if (blas_set && blas_get() != blas_threads)
        fail("BLAS thread count", "not restored after the call");
    if (st == ATTN_ERR_BUSY || st == ATTN_ERR_FORKED)
        fail("attn_forward", "a single-threaded caller was told the context is busy or forked");
    if (st != ATTN_OK) {
        for (size_t i = 0; i < nall; i++)
            if (buffer_changed(all[i]))
                fail("rejected call wrote memory", attn_last_error(ctx));
        if (!attn_last_error(ctx)[0])
            fail("rejected call", "no message");
        fuzz_outcomes[1]++;
        if (getenv("FUZZ_VERBOSE"))
            fprintf(stderr, "rejected: %s\n", attn_last_error(ctx));
    } else {
        if (!pass || !a.q || !a.k || !a.v || !a.out || eq <= 0 || ek <= 0 || ev <= 0 || eo <= 0)
            fail("accepted call", "with a NULL pointer or an impossible view");
        /* inputs unchanged: every element of every input view */
        if (!view_unchanged(&bq, a.q, a.q_strides, B, Hq, Lq, D, sizeof(float)) ||
            !view_unchanged(&bk, a.k, a.k_strides, B, Hkv, Lk, D, sizeof(float)) ||
            !view_unchanged(&bv, a.v, a.v_strides, B, Hkv, Lk, Dv, sizeof(float)) ||
            (a.mask && !view_unchanged(&bm, a.mask, a.mask_strides, B, Hq, Lq, Lk, 1)) ||
            (a.bias && !view_unchanged(&bb, a.bias, a.bias_strides, B, Hq, Lq, Lk, sizeof(float))) ||
            (lens && memcmp(bl.p, bl.snap, bl.bytes) != 0))
            fail("accepted call", "changed an input");
        /* the oracle reads the inputs as they were before the call */
        attn_args before = a;
        before.q = in_snapshot(&bq, a.q), before.k = in_snapshot(&bk, a.k);
        before.v = in_snapshot(&bv, a.v);
        if (a.mask)
            before.mask = in_snapshot(&bm, a.mask);
        if (a.bias)
            before.bias = in_snapshot(&bb, a.bias);
        if (lens)
            before.kv_lens = bl.snap;
        ref_problem p = ref_problem_from(&d, &before);
        ref_result r;
        ref_attention(&p, &r);
        check_stats cs = {0};
        sabotage(&a, B, Hq, Lq, Dv);
        check_outputs(&p, &r, &d, &a, "fuzz", &cs);
        if (getenv("FUZZ_VERBOSE")) {
            long masked_rows = 0;
            for (int64_t i = 0; i < B * Hq * Lq; i++)
                masked_rows += r.masked[i];
            fprintf(stderr,
                    "oracle: %s amp=%g lse=%d worst=%.3g exact-mode=%d exact-keys=%lld/%lld "
                    "max|lse|=%.4g rows seeing no key %ld of %lld\n",
                    cs.failures ? "fail" : "pass", amp, a.lse != NULL, cs.worst_ratio, exact_mode,
                    (long long)r.exact_keys, (long long)r.visible_keys, r.max_abs_lse,
                    masked_rows, (long long)(B * Hq * Lq));
        }
        if (cs.failures) {
            if (getenv("FUZZ_COUNT_FAILURES"))
                fuzz_outcomes[3]++;
            else
                fail("result out of tolerance", cs.first_failure);
        }
        if (a.out == out) { /* output padding untouched */
            size_t out_n = (size_t)eo;
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
        }
        ref_free(&r);
        fuzz_outcomes[2]++;
    }
    attn_destroy(ctx);
    free(workspace);
    for (size_t i = 0; i < nall; i++)
        buffer_free(all[i]);
    return 0;
}
