/*
 * attn_dropout_mask, the public keep-mask, against the pinned formula evaluated by a Philox4x32-10
 * written here independently of src/random/philox.h (16-bit limb products, round keys by
 * multiplication, the threshold through ldexp), itself checked on Random123's known-answer
 * vectors:
 *   - random blocks (p from 0 to just below 1, any seed and offset, q_heads up to 2^31 so that
 *     b * q_heads + h wraps mod 2^32, rows and columns up to position 2^32 - 1, starts at every
 *     residue mod 4, widths 1..300, ld > cols with the gap bytes untouched);
 *   - the wrap of counter word 2 is the formula's: (b, h) and (b', h) with b * q_heads = b' *
 *     q_heads mod 2^32 share a mask;
 *   - p = 0 keeps everything;
 *   - every error status in its documented order, its message, and nothing written.
 * Registered once per kernel variant (ATTN_ISA), since the function runs on the chosen one.
 * With a file name as argument, also writes a few masks for the numpy check of docs/guide.md
 * (tests/dropout_numpy.py).
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <attn/attn.h>

#include "support/util.h"

/* ---- an independent Philox4x32-10 -------------------------------------------------------- */

/* a * b as (hi, lo) from 16-bit limbs, without a 64-bit product. */
static void mul32(uint32_t a, uint32_t b, uint32_t *hi, uint32_t *lo)
{
    uint32_t a0 = a & 0xFFFF, a1 = a >> 16, b0 = b & 0xFFFF, b1 = b >> 16;
    uint32_t ll = a0 * b0, lh = a0 * b1, hl = a1 * b0, hh = a1 * b1;
    uint32_t mid = (ll >> 16) + (lh & 0xFFFF) + (hl & 0xFFFF); /* < 3 * 2^16 */
    *lo = (mid << 16) | (ll & 0xFFFF);
    *hi = hh + (lh >> 16) + (hl >> 16) + (mid >> 16);
}

static void ref_philox(const uint32_t in[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c[4] = {in[0], in[1], in[2], in[3]};
    for (uint32_t r = 0; r < 10; r++) {
        uint32_t k0 = key[0] + r * 0x9E3779B9u, k1 = key[1] + r * 0xBB67AE85u;
        uint32_t hi0, lo0, hi1, lo1;
        mul32(0xD2511F53u, c[0], &hi0, &lo0);
        mul32(0xCD9E8D57u, c[2], &hi1, &lo1);
        uint32_t n[4] = {hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0};
        memcpy(c, n, sizeof c);
    }
    memcpy(out, c, sizeof c);
}

/* 1 if (b, h, i, j) is kept, by the formula of attn.h. */
static int ref_kept(float p, uint64_t seed, uint32_t offset, uint32_t q_heads, uint32_t b,
                    uint32_t h, int64_t i, int64_t j)
{
    uint32_t threshold = (uint32_t)floor(ldexp((double)p, 32));
    uint32_t ctr[4] = {(uint32_t)(j / 4), (uint32_t)i, b * q_heads + h, offset};
    uint32_t key[2] = {(uint32_t)(seed & 0xFFFFFFFFu), (uint32_t)(seed >> 32)};
    uint32_t out[4];
    ref_philox(ctr, key, out);
    return out[j % 4] >= threshold;
}

static void test_reference_known_answers(void **state)
{
    (void)state;
    static const uint32_t kat[3][10] = {
        {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
        {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x408f276d,
         0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
        {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, 0xd16cfe09,
         0x94fdcceb, 0x5001e420, 0x24126ea1},
    };
    for (int t = 0; t < 3; t++) {
        uint32_t out[4];
        ref_philox(kat[t], kat[t] + 4, out);
        for (int w = 0; w < 4; w++)
            assert_int_equal(out[w], kat[t][6 + w]);
    }
}

/* ---- the public function against it ------------------------------------------------------ */

static void test_random_blocks(void **state)
{
    (void)state;
    rng r = {2024};
    enum { MAXR = 5, MAXC = 300, PAD = 13 };
    static uint8_t keep[MAXR * (MAXC + PAD) + 64];
    long checked = 0;
    for (int trial = 0; trial < 600; trial++) {
        static const float ps[] = {0.0f, 0.1f, 0.5f, 0.9f, 1e-6f, 0.99999994f};
        float p = trial % 2 ? ps[rng_below(&r, 6)] : (float)rng_uniform(&r, 0.0, 1.0);
        uint64_t seed = rng_next(&r);
        uint32_t offset = (uint32_t)rng_next(&r);
        uint32_t q_heads = (uint32_t)(1 + rng_below(&r, trial % 3 ? 16 : INT64_C(1) << 31));
        uint32_t b = (uint32_t)rng_below(&r, trial % 3 ? 4 : INT64_C(1) << 32);
        uint32_t h = (uint32_t)rng_below(&r, q_heads);
        int64_t rows = 1 + rng_below(&r, MAXR), cols = 1 + rng_below(&r, MAXC);
        int64_t row0 = trial % 4 ? rng_below(&r, 5000) : (INT64_C(1) << 32) - rows;
        int64_t col0 = trial % 5 ? rng_below(&r, 5000) : (INT64_C(1) << 32) - cols;
        int64_t ld = cols + rng_below(&r, PAD);
        memset(keep, 0xEE, sizeof keep);
        assert_int_equal(attn_dropout_mask(p, seed, offset, q_heads, b, h, row0, rows, col0,
                                           cols, keep, ld),
                         ATTN_OK);
        for (int64_t i = 0; i < rows; i++) {
            for (int64_t j = 0; j < cols; j++) {
                int want = ref_kept(p, seed, offset, q_heads, b, h, row0 + i, col0 + j);
                if (keep[i * ld + j] != want)
                    fail_msg("p %.9g seed %llx offset %u q_heads %u b %u h %u: element (%lld, "
                             "%lld) is %d, the formula says %d",
                             (double)p, (unsigned long long)seed, (unsigned)offset,
                             (unsigned)q_heads, (unsigned)b, (unsigned)h, (long long)(row0 + i),
                             (long long)(col0 + j), keep[i * ld + j], want);
                checked++;
            }
            for (int64_t j = cols; j < ld && i + 1 < rows; j++)
                assert_int_equal(keep[i * ld + j], 0xEE);
        }
        for (size_t k = (size_t)((rows - 1) * ld + cols); k < sizeof keep; k++)
            assert_int_equal(keep[k], 0xEE);
    }
    print_message("%s: %ld mask elements equal to the formula\n", attn_kernel_isa(), checked);
}

/* A larger block: the kept fraction and the formula on a sample. */
static void test_large_block(void **state)
{
    (void)state;
    enum { ROWS = 96, COLS = 4099 };
    uint8_t *keep = xcalloc((size_t)ROWS * COLS, 1);
    float p = 0.3f;
    assert_int_equal(attn_dropout_mask(p, 77, 3, 8, 1, 5, 10, ROWS, 1, COLS, keep, COLS), ATTN_OK);
    rng r = {8};
    for (int s = 0; s < 20000; s++) {
        int64_t i = rng_below(&r, ROWS), j = rng_below(&r, COLS);
        assert_int_equal(keep[i * COLS + j], ref_kept(p, 77, 3, 8, 1, 5, 10 + i, 1 + j));
    }
    double kept = 0, n = (double)ROWS * COLS;
    for (size_t k = 0; k < (size_t)ROWS * COLS; k++)
        kept += keep[k];
    double q = floor(ldexp((double)p, 32)) / 4294967296.0;
    double sigma = sqrt(n * q * (1 - q));
    print_message("kept %.0f of %.0f at p = 0.3: %.2f sigma from the mean\n", kept, n,
                  (kept - n * (1 - q)) / sigma);
    assert_true(fabs(kept - n * (1 - q)) <= 5 * sigma);
    free(keep);
}

/* Counter word 2 is b * q_heads + h mod 2^32: batches 2^31 apart share masks when q_heads is
 * even, and batches differing in nothing else do not. */
static void test_head_word_wraps(void **state)
{
    (void)state;
    uint8_t a[256], b[256], c[256];
    assert_int_equal(attn_dropout_mask(0.5f, 5, 6, 2, 0, 1, 7, 1, 0, 256, a, 256), ATTN_OK);
    assert_int_equal(attn_dropout_mask(0.5f, 5, 6, 2, 1u << 31, 1, 7, 1, 0, 256, b, 256), ATTN_OK);
    assert_int_equal(attn_dropout_mask(0.5f, 5, 6, 2, 1, 1, 7, 1, 0, 256, c, 256), ATTN_OK);
    assert_memory_equal(a, b, sizeof a);
    assert_memory_not_equal(a, c, sizeof a);
    /* and q_heads enters: (b = 1, h = 0) of 3 heads is word 3, of 2 heads word 2 */
    assert_int_equal(attn_dropout_mask(0.5f, 5, 6, 3, 1, 0, 7, 1, 0, 256, b, 256), ATTN_OK);
    assert_int_equal(attn_dropout_mask(0.5f, 5, 6, 4, 0, 3, 7, 1, 0, 256, c, 256), ATTN_OK);
    assert_memory_equal(b, c, sizeof b);
}

static void test_p_zero(void **state)
{
    (void)state;
    uint8_t keep[3 * 50];
    memset(keep, 0, sizeof keep);
    assert_int_equal(attn_dropout_mask(0.0f, 1, 2, 4, 0, 3, 0, 3, 5, 50, keep, 50), ATTN_OK);
    for (size_t k = 0; k < sizeof keep; k++)
        assert_int_equal(keep[k], 1);
}

/* ---- errors ---------------------------------------------------------------------------------- */

typedef struct call {
    float p;
    uint64_t seed;
    uint32_t offset, q_heads, b, h;
    int64_t row0, rows, col0, cols;
    int null_keep;
    int64_t ld;
} call;

static call valid_call(void)
{
    call c = {0.25f, 9, 1, 4, 2, 3, 10, 3, 20, 30, 0, 32};
    return c;
}

static void expect_error(call c, attn_status want, const char *word)
{
    uint8_t keep[4 * 64];
    memset(keep, 0x5A, sizeof keep);
    attn_status st = attn_dropout_mask(c.p, c.seed, c.offset, c.q_heads, c.b, c.h, c.row0, c.rows,
                                       c.col0, c.cols, c.null_keep ? NULL : keep, c.ld);
    if (st != want)
        fail_msg("status %d, expected %d (%s); message: %s", st, want, word,
                 attn_last_error(NULL));
    const char *msg = attn_last_error(NULL);
    if (!strstr(msg, word))
        fail_msg("message \"%s\" does not name \"%s\"", msg, word);
    for (size_t k = 0; k < sizeof keep; k++)
        assert_int_equal(keep[k], 0x5A);
}

static void test_errors(void **state)
{
    (void)state;
    const int64_t P = INT64_C(1) << 32;
    call c;
    c = valid_call(), c.null_keep = 1;
    expect_error(c, ATTN_ERR_NULL_POINTER, "keep");
    c = valid_call(), c.p = -0.01f;
    expect_error(c, ATTN_ERR_BAD_OPTION, "p = ");
    c = valid_call(), c.p = 1.0f;
    expect_error(c, ATTN_ERR_BAD_OPTION, "p = ");
    c = valid_call(), c.p = NAN;
    expect_error(c, ATTN_ERR_BAD_OPTION, "p = ");
    c = valid_call(), c.p = INFINITY;
    expect_error(c, ATTN_ERR_BAD_OPTION, "p = ");
    c = valid_call(), c.q_heads = 0, c.h = 0;
    expect_error(c, ATTN_ERR_ZERO_SIZE, "q_heads");
    c = valid_call(), c.h = 4;
    expect_error(c, ATTN_ERR_LIMIT, "head = 4");
    c = valid_call(), c.rows = 0;
    expect_error(c, ATTN_ERR_ZERO_SIZE, "rows");
    c = valid_call(), c.cols = 0;
    expect_error(c, ATTN_ERR_ZERO_SIZE, "cols");
    c = valid_call(), c.row0 = -1;
    expect_error(c, ATTN_ERR_LIMIT, "row0 = -1");
    c = valid_call(), c.row0 = P;
    expect_error(c, ATTN_ERR_LIMIT, "row0");
    c = valid_call(), c.rows = -2;
    expect_error(c, ATTN_ERR_LIMIT, "rows = -2");
    c = valid_call(), c.row0 = P - 2;
    expect_error(c, ATTN_ERR_LIMIT, "rows = 3"); /* positions P - 2 .. P: one too far */
    c = valid_call(), c.col0 = INT64_MIN;
    expect_error(c, ATTN_ERR_LIMIT, "col0");
    c = valid_call(), c.cols = INT64_MAX;
    expect_error(c, ATTN_ERR_LIMIT, "cols");
    c = valid_call(), c.col0 = P - 29;
    expect_error(c, ATTN_ERR_LIMIT, "cols = 30");
    c = valid_call(), c.ld = 29;
    expect_error(c, ATTN_ERR_STRIDE, "ld = 29");
    c = valid_call(), c.ld = -32;
    expect_error(c, ATTN_ERR_STRIDE, "ld = -32");
    c = valid_call(), c.ld = INT64_MAX / 2;
    expect_error(c, ATTN_ERR_OVERFLOW, "ld");
    c = valid_call(), c.rows = 2, c.ld = INT64_MAX - 10;
    expect_error(c, ATTN_ERR_OVERFLOW, "ld");
    /* the order: several faults report the first one checked */
    c = valid_call(), c.null_keep = 1, c.p = NAN, c.rows = 0;
    expect_error(c, ATTN_ERR_NULL_POINTER, "keep");
    c = valid_call(), c.p = 2.0f, c.q_heads = 0, c.ld = 0;
    expect_error(c, ATTN_ERR_BAD_OPTION, "p = ");
    c = valid_call(), c.h = 9, c.rows = 0;
    expect_error(c, ATTN_ERR_LIMIT, "head");
    c = valid_call(), c.rows = 0, c.cols = 0;
    expect_error(c, ATTN_ERR_ZERO_SIZE, "rows");
    c = valid_call(), c.col0 = -5, c.ld = 0;
    expect_error(c, ATTN_ERR_LIMIT, "col0");

    /* the documented limits themselves are accepted */
    uint8_t keep[8];
    assert_int_equal(attn_dropout_mask(0.5f, 1, 1, 1, UINT32_MAX, 0, P - 1, 1, P - 8, 8, keep, 8),
                     ATTN_OK);
    assert_int_equal(attn_dropout_mask(0.99999994f, UINT64_MAX, UINT32_MAX, UINT32_MAX, 0,
                                       UINT32_MAX - 1, 0, 1, 0, 8, keep, INT64_MAX),
                     ATTN_OK);
    for (int j = 0; j < 8; j++)
        assert_int_equal(keep[j], ref_kept(0.99999994f, UINT64_MAX, UINT32_MAX, UINT32_MAX, 0,
                                           UINT32_MAX - 1, 0, j));
}

/* ---- masks for tests/dropout_numpy.py ----------------------------------------------------- */

/* One line per case: the arguments, then the mask as a string of 0 and 1, row after row. */
static int write_cases(const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return 1;
    rng r = {31337};
    for (int t = 0; t < 40; t++) {
        float p = t == 0 ? 0.0f : (float)rng_uniform(&r, 0.0, 1.0);
        uint64_t seed = t < 20 ? (uint64_t)t : rng_next(&r);
        uint32_t offset = (uint32_t)rng_below(&r, t < 20 ? 4 : INT64_C(1) << 32);
        uint32_t q_heads = (uint32_t)(1 + rng_below(&r, t < 30 ? 16 : INT64_C(1) << 31));
        uint32_t b = (uint32_t)rng_below(&r, t < 30 ? 4 : INT64_C(1) << 32);
        uint32_t h = (uint32_t)rng_below(&r, q_heads);
        int64_t rows = 1 + rng_below(&r, 4), cols = 1 + rng_below(&r, 70);
        int64_t row0 = t % 3 ? rng_below(&r, 3000) : (INT64_C(1) << 32) - rows;
        int64_t col0 = t % 4 ? rng_below(&r, 3000) : (INT64_C(1) << 32) - cols;
        uint8_t keep[4 * 70];
        if (attn_dropout_mask(p, seed, offset, q_heads, b, h, row0, rows, col0, cols, keep,
                              cols) != ATTN_OK) {
            fclose(f);
            return 1;
        }
        fprintf(f, "%.9g %llu %u %u %u %u %lld %lld %lld %lld ", (double)p,
                (unsigned long long)seed, (unsigned)offset, (unsigned)q_heads, (unsigned)b,
                (unsigned)h, (long long)row0, (long long)rows, (long long)col0, (long long)cols);
        for (int64_t k = 0; k < rows * cols; k++)
            fputc('0' + keep[k], f);
        fputc('\n', f);
    }
    return fclose(f) != 0;
}

int main(int argc, char **argv)
{
    if (argc == 2)
        return write_cases(argv[1]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_known_answers),
        cmocka_unit_test(test_random_blocks),
        cmocka_unit_test(test_large_block),
        cmocka_unit_test(test_head_word_wraps),
        cmocka_unit_test(test_p_zero),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests_name("dropout_mask", tests, NULL, NULL);
}
