/*
 * libFuzzer target for the attn tool's .npy parser (tools/npy.c). Any input must either be
 * rejected with a one-line message, or be accepted with a shape whose product is the element
 * count and data equal to the input's last bytes read as the dtype the header names (checked
 * here independently of the parser's offsets), and a float array must survive npy_encode_f32
 * and a second parse bit for bit. Anything else aborts.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "npy.h"

long npy_fuzz_outcomes[2]; /* rejected, accepted */

static void expect(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_npy: %s\n", what);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    npy_array a;
    char err[256];
    memset(err, 0, sizeof err);
    if (npy_parse(data, size, &a, err, sizeof err) != 0) {
        expect(err[0] != '\0' && strchr(err, '\n') == NULL, "rejection without a one-line reason");
        expect(a.data == NULL && a.count == 0, "rejection left an array behind");
        npy_fuzz_outcomes[0]++;
        return 0;
    }
    npy_fuzz_outcomes[1]++;
    size_t count = 1;
    for (int d = 0; d < a.ndim; d++)
        count *= (size_t)a.shape[d];
    expect(count == a.count, "element count differs from the shape's product");
    const char *t = a.descr + 1;
    size_t item = strcmp(t, "f8") == 0 ? 8 : strcmp(t, "f4") == 0 ? 4 : strcmp(t, "f2") == 0 ? 2 : 1;
    expect(count <= size / item, "more elements than the input holds");
    const uint8_t *tail = data + size - count * item;
    for (size_t i = 0; i < count; i++) {
        if (a.kind == NPY_UINT8) {
            uint8_t want = t[0] == 'b' ? tail[i] != 0 : tail[i];
            expect(((uint8_t *)a.data)[i] == want, "byte element differs from the input");
            continue;
        }
        float got = ((float *)a.data)[i], want;
        if (item == 4) {
            memcpy(&want, tail + 4 * i, 4);
        } else if (item == 8) {
            double d;
            memcpy(&d, tail + 8 * i, 8);
            want = (float)d;
        } else {
            /* Half precision decoded the long way: (-1)^s * 2^(e-15) * (1 + m/1024). */
            unsigned h = tail[2 * i] | (unsigned)tail[2 * i + 1] << 8;
            unsigned e = h >> 10 & 0x1f, m = h & 0x3ff;
            double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY)
                                                        : ldexp(1024 + m, (int)e - 25);
            want = (float)((h & 0x8000) ? -v : v);
        }
        expect(memcmp(&got, &want, 4) == 0 || (isnan(got) && isnan(want)),
               "float element differs from the input");
    }
    if (a.kind == NPY_FLOAT32) {
        unsigned char *buf;
        size_t len;
        if (npy_encode_f32(a.data, a.ndim, a.shape, &buf, &len, err, sizeof err) == 0) {
            npy_array b;
            expect(npy_parse(buf, len, &b, err, sizeof err) == 0, "re-encoded array rejected");
            expect(b.ndim == a.ndim && memcmp(b.shape, a.shape, sizeof a.shape) == 0 &&
                       b.count == a.count && memcmp(b.data, a.data, 4 * a.count) == 0,
                   "re-encoded array differs");
            npy_free(&b);
            free(buf);
        }
    }
    npy_free(&a);
    return 0;
}
