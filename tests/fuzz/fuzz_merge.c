/*
 * Fuzz target for attn_merge. The input bytes choose the number of parts, the sizes (including
 * 0 and values above the limits), the strides of every tensor (contiguous by {0, 0, 0} or
 * explicitly, padded, permuted, small overlapping ones, negative ones, INT64_MAX), the lse
 * values (-inf, NaN, +inf, finite ones from tiny to 1e30 apart), the outs (NaN and Inf in parts
 * that saw no key), the masked-rows policy, an in-place merge into part 0 and outputs that
 * overlap a part (which must be refused). The harness does not re-implement the validation. Instead:
 *   - if attn_merge accepts the call, every output element must match a float64 merge computed
 *     here from copies of the inputs taken before the call (one float rounding allowed, exact
 *     classes for non-finite results), and every byte outside the output views, and every
 *     input not merged into in place, must be unchanged;
 *   - if it rejects the call, no byte of any buffer may have changed and a message is set.
 * Anything else aborts. Buffers are sized from the strides, so AddressSanitizer catches a read
 * or write outside a view.
 *
 * Built three ways: the libFuzzer binary fuzz_merge (clang, ATTN_BUILD_FUZZERS), and with
 * ATTN_FUZZ_MERGE_REPLAY the program fuzz_merge_replay, which runs the committed corpus under
 * ctest with any compiler.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <attn/attn.h>

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

/* 1 in 16, never on exhausted input (which reads as 0). */
static int rarely(bytes *b)
{
    return pick(b, 16) == 15;
}

static uint64_t seed_state;
static double uniform(void) /* [-1, 1) */
{
    seed_state = seed_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(seed_state >> 11) * 0x1p-52 - 1.0;
}

#define MAX_ELEMS (1 << 20) /* largest buffer allocated, in elements */
#define MAX_PARTS 9

static long outcomes[2]; /* rejected, accepted and checked */

static void fail(const char *what)
{
    fprintf(stderr, "fuzz_merge: %s\n", what);
    abort();
}

/* A tensor [B, H, L, W]: the strides given to the call, the strides in use, its buffer. */
typedef struct tensor {
    attn_strides given, real;
    float *buf, *copy; /* copy: the contents before the call */
    size_t n;
    int valid; /* strides nonnegative and the extent allocatable */
} tensor;

static void decode_strides(bytes *b, tensor *t, int64_t B, int64_t H, int64_t L, int64_t W)
{
    int64_t pad = pick(b, 3);
    attn_strides contiguous = {H * L * W, L * W, W};
    switch (rarely(b) ? 4 + pick(b, 4) : pick(b, 4)) {
    case 0: t->given = (attn_strides){0, 0, 0}, t->real = contiguous; return;
    case 1: t->real = contiguous; break;
    case 2: t->real.seq = W + pad, t->real.head = L * t->real.seq + pad, t->real.batch = H * t->real.head + pad; break;
    case 3: t->real = (attn_strides){H * W, W, B * H * W}; break; /* [L, B, H, W] */
    case 4: t->real = (attn_strides){pick(b, 40), pick(b, 20), pick(b, 2 * (unsigned)W + 1)}; break;
    case 5: t->real = contiguous, t->real.head = -1 - (int64_t)pick(b, 4); break;
    case 6: t->real = contiguous, t->real.batch = INT64_MAX; break;
    default: t->real = contiguous, t->real.seq = INT64_MAX; break;
    }
    t->given = t->real;
    if (!t->real.batch && !t->real.head && !t->real.seq) /* {0, 0, 0} is contiguous, not a */
        t->real = contiguous;                            /* broadcast (regression seed-zero-strides) */
}

/* Sizes the buffer from the strides: 1 element when the view cannot be valid (negative, or
 * an axis of 2 or more indices with an INT64_MAX stride, which overflows whatever the rest). */
static void tensor_alloc(tensor *t, int64_t B, int64_t H, int64_t L, int64_t W, float fill)
{
    const attn_strides *s = &t->real;
    int64_t n[3] = {B, H, L}, st[3] = {s->batch, s->head, s->seq};
    double extent = (double)W;
    t->valid = 1;
    for (int a = 0; a < 3; a++) {
        if (st[a] < 0)
            t->valid = 0;
        else if (n[a] > 1)
            extent += (double)(n[a] - 1) * (double)st[a];
    }
    if (extent > MAX_ELEMS)
        t->valid = 0;
    t->n = t->valid ? (size_t)extent : 1;
    t->buf = malloc(t->n * sizeof(float));
    t->copy = malloc(t->n * sizeof(float));
    if (!t->buf || !t->copy)
        fail("out of memory");
    for (size_t e = 0; e < t->n; e++)
        t->buf[e] = fill;
}

static int64_t offset(const tensor *t, int64_t b, int64_t h, int64_t i)
{
    return b * t->real.batch + h * t->real.head + i * t->real.seq;
}

static float lse_value(bytes *b, double amp)
{
    switch (pick(b, 16)) {
    case 0: case 1: case 2: case 3: return -INFINITY;
    case 4: return rarely(b) ? NAN : -INFINITY;
    case 5: return rarely(b) ? INFINITY : 0.0f;
    case 6: return (float)(uniform() * 1e30);
    default: return (float)(uniform() * amp);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bytes in = {data, size, 0};
    seed_state = 0x9E3779B97F4A7C15ull;
    for (size_t e = 0; e < size; e++)
        seed_state = (seed_state ^ data[e]) * 0x100000001B3ull;

    static const int64_t dims[] = {1, 2, 3, 4, 7, 8, 16, 31, 64, 130};
    uint32_t n = 1 + pick(&in, MAX_PARTS);
    int64_t B = 1 + pick(&in, 3), H = 1 + pick(&in, 3), L = 1 + pick(&in, 5);
    int64_t W = dims[pick(&in, 10)];
    if (rarely(&in))
        W = 513 + pick(&in, 100); /* two column chunks */
    uint32_t masked_rows = pick(&in, 2);
    int zero = rarely(&in) ? (int)pick(&in, 5) : -1; /* which size to make 0 */
    if (rarely(&in))
        masked_rows = 2 + pick(&in, 3);
    int over_limit = rarely(&in);
    double amp = pick(&in, 4) == 0 ? 1e4 : 8.0;

    tensor parts_out[MAX_PARTS], parts_lse[MAX_PARTS], out, lse;
    attn_merge_part parts[MAX_PARTS];
    for (uint32_t p = 0; p < n; p++) {
        decode_strides(&in, &parts_out[p], B, H, L, W);
        decode_strides(&in, &parts_lse[p], B, H, L, 1);
        tensor_alloc(&parts_out[p], B, H, L, W, NAN);
        tensor_alloc(&parts_lse[p], B, H, L, 1, NAN);
        if (parts_lse[p].valid && parts_out[p].valid)
            for (int64_t b = 0; b < B; b++)
                for (int64_t h = 0; h < H; h++)
                    for (int64_t i = 0; i < L; i++) {
                        float x = lse_value(&in, amp);
                        parts_lse[p].buf[offset(&parts_lse[p], b, h, i)] = x;
                        float *o = parts_out[p].buf + offset(&parts_out[p], b, h, i);
                        for (int64_t d = 0; d < W; d++)
                            o[d] = x == -INFINITY && d % 3 == 0 ? (d % 2 ? INFINITY : NAN)
                                                                 : (float)(uniform() * 4.0);
                    }
        parts[p] = (attn_merge_part){parts_out[p].buf, parts_out[p].given, parts_lse[p].buf,
                                     parts_lse[p].given};
    }
    /* outputs: their own buffers, part 0's (in place), or overlapping a part */
    int mode = rarely(&in) ? 2 : pick(&in, 6) == 0 ? 1 : 0;
    int with_lse = pick(&in, 4) != 0;
    decode_strides(&in, &out, B, H, L, W);
    decode_strides(&in, &lse, B, H, L, 1);
    tensor_alloc(&out, B, H, L, W, 1234.5f);
    tensor_alloc(&lse, B, H, L, 1, 1234.5f);
    float *out_ptr = out.buf, *lse_ptr = with_lse ? lse.buf : NULL;
    attn_strides out_s = out.given, lse_s = lse.given;
    tensor *out_t = &out, *lse_t = &lse;
    if (mode == 1) { /* in place */
        out_ptr = parts_out[0].buf, out_s = parts_out[0].given, out_t = &parts_out[0];
        if (with_lse)
            lse_ptr = parts_lse[0].buf, lse_s = parts_lse[0].given, lse_t = &parts_lse[0];
    } else if (mode == 2) { /* an output overlapping a part: must be refused */
        if (n > 1) /* exactly the last part's view (only part 0 may be merged into) */
            out_ptr = parts_out[n - 1].buf, out_s = parts_out[n - 1].given, out_t = &parts_out[n - 1];
        else /* lse on part 0's out */
            lse_ptr = parts_out[0].buf, lse_t = &parts_out[0];
    }

    attn_merge_args m;
    attn_merge_args_init(&m);
    m.n_parts = zero == 0 ? 0 : n;
    m.batch = zero == 1 ? 0 : (uint32_t)B;
    m.heads = zero == 2 ? 0 : (uint32_t)H;
    m.q_len = zero == 3 ? 0 : (uint32_t)L;
    m.v_dim = zero == 4 ? 0 : over_limit ? ATTN_MAX_HEAD_DIM + 1 : (uint32_t)W;
    m.masked_rows = masked_rows;
    m.parts = parts, m.out = out_ptr, m.out_strides = out_s, m.lse = lse_ptr, m.lse_strides = lse_s;

    tensor *all[2 * MAX_PARTS + 2];
    int nt = 0;
    for (uint32_t p = 0; p < n; p++)
        all[nt++] = &parts_out[p], all[nt++] = &parts_lse[p];
    all[nt++] = &out, all[nt++] = &lse;
    for (int t = 0; t < nt; t++)
        memcpy(all[t]->copy, all[t]->buf, all[t]->n * sizeof(float));

    attn_status st = attn_merge(&m);
    if (st != ATTN_OK) {
        for (int t = 0; t < nt; t++)
            if (memcmp(all[t]->copy, all[t]->buf, all[t]->n * sizeof(float)) != 0)
                fail("a rejected call wrote into a buffer");
        if (!attn_last_error(NULL)[0])
            fail("a rejected call left no message");
        outcomes[0]++;
    } else {
        if (mode == 2 || zero >= 0 || over_limit || masked_rows > 1)
            fail("an invalid call was accepted");
        /* which elements are outputs */
        unsigned char *is_out[2 * MAX_PARTS + 2];
        for (int t = 0; t < nt; t++)
            is_out[t] = calloc(all[t]->n, 1);
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < H; h++)
                for (int64_t i = 0; i < L; i++) {
                    int64_t at = offset(out_t, b, h, i);
                    for (int t = 0; t < nt; t++) {
                        if (all[t] == out_t)
                            memset(is_out[t] + at, 1, (size_t)W);
                        if (with_lse && all[t] == lse_t)
                            is_out[t][offset(lse_t, b, h, i)] = 1;
                    }
                }
        for (int t = 0; t < nt; t++) {
            for (size_t e = 0; e < all[t]->n; e++)
                if (!is_out[t][e] && memcmp(&all[t]->copy[e], &all[t]->buf[e], sizeof(float)) != 0)
                    fail("a byte outside the outputs changed");
            free(is_out[t]);
        }
        /* the float64 merge, from the copies */
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < H; h++)
                for (int64_t i = 0; i < L; i++) {
                    double M = -INFINITY, x[MAX_PARTS];
                    int any = 0, has_nan = 0;
                    for (uint32_t p = 0; p < n; p++) {
                        x[p] = parts_lse[p].copy[offset(&parts_lse[p], b, h, i)];
                        if (x[p] == -INFINITY)
                            continue;
                        any = 1;
                        if (isnan(x[p]))
                            has_nan = 1;
                        else
                            M = fmax(M, x[p]);
                    }
                    const float *got = out_t->buf + offset(out_t, b, h, i);
                    float got_lse = with_lse ? lse_t->buf[offset(lse_t, b, h, i)] : 0.0f;
                    if (!any || has_nan || M == INFINITY) {
                        double want = !any ? (masked_rows ? NAN : 0.0) : NAN;
                        double want_lse = !any ? -INFINITY : has_nan ? NAN : INFINITY;
                        for (int64_t d = 0; d < W; d++)
                            if (isnan(want) ? !isnan(got[d]) : got[d] != 0.0f || signbit(got[d]))
                                fail("a row without a finite lse holds the wrong value");
                        if (with_lse && (isnan(want_lse) ? !isnan(got_lse) : got_lse != want_lse))
                            fail("a row without a finite lse has the wrong lse");
                        continue;
                    }
                    double l = 0.0;
                    for (uint32_t p = 0; p < n; p++)
                        if (x[p] != -INFINITY)
                            l += exp(x[p] - M);
                    double want_lse = M + log(l);
                    if (with_lse && !(fabs(got_lse - want_lse) <= 0x1p-23 * fabs(want_lse) + 0x1p-140))
                        fail("lse differs from the float64 merge");
                    for (int64_t d = 0; d < W; d++) {
                        double sum = 0.0, mag = 0.0;
                        for (uint32_t p = 0; p < n; p++) {
                            if (x[p] == -INFINITY)
                                continue;
                            double c = exp(x[p] - M) / l;
                            double v = parts_out[p].copy[offset(&parts_out[p], b, h, i) + d];
                            sum += c * v;
                            mag += fabs(c * v);
                        }
                        float g = got[d];
                        int ok = isnan(sum) ? isnan(g) : isinf(sum) ? g == sum
                               : fabs(g - sum) <= 0x1p-23 * mag + 0x1p-140;
                        if (!ok) {
                            fprintf(stderr, "row [%lld,%lld,%lld] col %lld: got %.9g want %.9g\n",
                                    (long long)b, (long long)h, (long long)i, (long long)d, g, sum);
                            fail("out differs from the float64 merge");
                        }
                    }
                }
        outcomes[1]++;
    }
    for (int t = 0; t < nt; t++)
        free(all[t]->buf), free(all[t]->copy);
    return 0;
}

#ifdef ATTN_FUZZ_MERGE_REPLAY
#include "replay.h"

/* The replay summary (the driver is replay.c). */
int replay_summary(int files)
{
    printf("inputs: %ld rejected by attn_merge (nothing written), %ld merged and checked against "
           "the float64 merge\n", outcomes[0], outcomes[1]);
    printf("%d passed, 0 failed\n", files);
    return files > 0 && outcomes[1] > 0 ? 0 : 1;
}
#endif
