/*
 * .npy reader and writer. The format: the magic "\x93NUMPY", a major and a minor version byte,
 * the header length (2 bytes in version 1.0, 4 in 2.0, little-endian), then a Python dict literal
 * with the keys 'descr', 'fortran_order' and 'shape', padded with spaces and a newline, then the
 * raw data. The dict is parsed here by a small recursive-descent reader that accepts what NumPy
 * writes (either quote style, trailing commas, spaces) and nothing that could be ambiguous.
 */
#define _POSIX_C_SOURCE 200809L

#include "npy.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

void npy_free(npy_array *a)
{
    if (!a)
        return;
    free(a->data);
    memset(a, 0, sizeof *a);
}

float npy_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13); /* infinity or NaN (payload kept) */
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13); /* rebias 15 -> 127 */
    } else if (man == 0) {
        bits = sign; /* signed zero */
    } else {
        /* Subnormal half: normalise the mantissa into a float exponent. */
        uint32_t e = 113;
        while (!(man & 0x400)) {
            man <<= 1;
            e--;
        }
        bits = sign | (e << 23) | ((man & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* ---- header dict parser ------------------------------------------------------------------- */

typedef struct cursor {
    const char *p, *end;
} cursor;

static void skip_ws(cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static int peek(const cursor *c)
{
    return c->p < c->end ? (unsigned char)*c->p : -1;
}

/* Copies a quoted string with printable ASCII only; returns 0 or -1. */
static int read_string(cursor *c, char *buf, size_t size)
{
    int q = peek(c);
    if (q != '\'' && q != '"')
        return -1;
    c->p++;
    size_t n = 0;
    while (c->p < c->end && *c->p != q) {
        unsigned char ch = (unsigned char)*c->p;
        if (ch < 0x20 || ch > 0x7e || ch == '\\' || n + 1 >= size)
            return -1;
        buf[n++] = (char)ch;
        c->p++;
    }
    if (c->p >= c->end)
        return -1;
    c->p++;
    buf[n] = '\0';
    return 0;
}

static int read_word(cursor *c, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0)
        return -1;
    c->p += n;
    return 0;
}

static int read_shape(cursor *c, npy_array *a, char *err, size_t errlen)
{
    if (peek(c) != '(')
        return fail(err, errlen, "malformed header: 'shape' is not a tuple");
    c->p++;
    a->ndim = 0;
    for (;;) {
        skip_ws(c);
        if (peek(c) == ')') {
            c->p++;
            return 0;
        }
        if (peek(c) < '0' || peek(c) > '9')
            return fail(err, errlen, "malformed header: 'shape' holds something other than "
                                     "non-negative integers");
        uint64_t v = 0;
        while (peek(c) >= '0' && peek(c) <= '9') {
            unsigned d = (unsigned)(peek(c) - '0');
            if (v > (UINT64_MAX - d) / 10)
                return fail(err, errlen, "shape: a dimension does not fit 64 bits");
            v = v * 10 + d;
            c->p++;
        }
        if (peek(c) == 'L') /* written by Python 2 */
            c->p++;
        if (a->ndim == NPY_MAX_DIMS)
            return fail(err, errlen, "shape: more than %d dimensions", NPY_MAX_DIMS);
        a->shape[a->ndim++] = v;
        skip_ws(c);
        if (peek(c) == ',') {
            c->p++;
            continue;
        }
        if (peek(c) == ')') {
            /* "(5)" is an int in Python, not a tuple: NumPy never writes it. */
            if (a->ndim == 1)
                return fail(err, errlen, "malformed header: 'shape' (n) is not a tuple");
            c->p++;
            return 0;
        }
        return fail(err, errlen, "malformed header: bad 'shape' tuple");
    }
}

static void printable(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
            *s = '?';
}

/* Parses the dict; fills shape, ndim and descr; *fortran receives fortran_order. */
static int parse_dict(const char *text, size_t len, npy_array *a, int *fortran, char *err,
                      size_t errlen)
{
    cursor c = {text, text + len};
    int have_descr = 0, have_fortran = 0, have_shape = 0;
    skip_ws(&c);
    if (peek(&c) != '{')
        return fail(err, errlen, "malformed header: no '{' at its start");
    c.p++;
    for (;;) {
        skip_ws(&c);
        if (peek(&c) == '}') {
            c.p++;
            break;
        }
        char key[32];
        if (read_string(&c, key, sizeof key) != 0)
            return fail(err, errlen, "malformed header: expected a quoted key");
        skip_ws(&c);
        if (peek(&c) != ':')
            return fail(err, errlen, "malformed header: expected ':' after '%s'", key);
        c.p++;
        skip_ws(&c);
        if (strcmp(key, "descr") == 0) {
            if (have_descr++)
                return fail(err, errlen, "malformed header: 'descr' given twice");
            if (peek(&c) == '[')
                return fail(err, errlen, "structured dtypes are not supported");
            if (read_string(&c, a->descr, sizeof a->descr) != 0)
                return fail(err, errlen, "malformed header: 'descr' is not a short string");
        } else if (strcmp(key, "fortran_order") == 0) {
            if (have_fortran++)
                return fail(err, errlen, "malformed header: 'fortran_order' given twice");
            if (read_word(&c, "True") == 0)
                *fortran = 1;
            else if (read_word(&c, "False") == 0)
                *fortran = 0;
            else
                return fail(err, errlen, "malformed header: 'fortran_order' is not True or False");
        } else if (strcmp(key, "shape") == 0) {
            if (have_shape++)
                return fail(err, errlen, "malformed header: 'shape' given twice");
            if (read_shape(&c, a, err, errlen) != 0)
                return -1;
        } else {
            printable(key);
            return fail(err, errlen, "malformed header: unknown key '%s'", key);
        }
        skip_ws(&c);
        if (peek(&c) == ',') {
            c.p++;
            continue;
        }
        if (peek(&c) == '}') {
            c.p++;
            break;
        }
        return fail(err, errlen, "malformed header: expected ',' or '}'");
    }
    skip_ws(&c);
    if (c.p != c.end)
        return fail(err, errlen, "malformed header: text after the closing '}'");
    if (!have_descr || !have_fortran || !have_shape)
        return fail(err, errlen, "malformed header: missing key '%s'",
                    !have_descr ? "descr" : !have_fortran ? "fortran_order" : "shape");
    return 0;
}

/* ---- reading ------------------------------------------------------------------------------ */

enum { SRC_F32, SRC_F64, SRC_F16, SRC_U8, SRC_BOOL };

static int classify(const char *descr, int *src, size_t *itemsize, char *err, size_t errlen)
{
    char bo = descr[0];
    const char *t = descr + (descr[0] ? 1 : 0);
    int one_byte = strcmp(t, "u1") == 0 || strcmp(t, "b1") == 0;
    if (one_byte && (bo == '|' || bo == '<' || bo == '>' || bo == '=')) {
        *src = t[0] == 'u' ? SRC_U8 : SRC_BOOL;
        *itemsize = 1;
        return 0;
    }
    /* x86 and every platform this builds on are little-endian: '=' is '<'. */
    if (bo == '<' || bo == '=') {
        if (strcmp(t, "f4") == 0)
            return *src = SRC_F32, *itemsize = 4, 0;
        if (strcmp(t, "f8") == 0)
            return *src = SRC_F64, *itemsize = 8, 0;
        if (strcmp(t, "f2") == 0)
            return *src = SRC_F16, *itemsize = 2, 0;
    }
    char shown[sizeof ((npy_array *)0)->descr];
    snprintf(shown, sizeof shown, "%s", descr);
    printable(shown);
    if (bo == '>' && (strcmp(t, "f4") == 0 || strcmp(t, "f8") == 0 || strcmp(t, "f2") == 0))
        return fail(err, errlen, "big-endian dtype '%s' is not supported (save with "
                                 "dtype '<%s')", shown, t);
    return fail(err, errlen, "unsupported dtype '%s' (expected float32, float64, float16, "
                             "uint8 or bool)", shown);
}

int npy_parse(const unsigned char *buf, size_t len, npy_array *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    static const unsigned char magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
    if (len < 10 || memcmp(buf, magic, 6) != 0)
        return fail(err, errlen, len < 6 || memcmp(buf, magic, 6) != 0
                                     ? "not a .npy file (no \\x93NUMPY magic)"
                                     : "truncated header");
    unsigned major = buf[6], minor = buf[7];
    size_t hlen, start;
    if (major == 1 && minor == 0) {
        hlen = (size_t)buf[8] | (size_t)buf[9] << 8;
        start = 10;
    } else if (major == 2 && minor == 0) {
        if (len < 12)
            return fail(err, errlen, "truncated header");
        hlen = (size_t)buf[8] | (size_t)buf[9] << 8 | (size_t)buf[10] << 16 |
               (size_t)buf[11] << 24;
        start = 12;
    } else {
        return fail(err, errlen, "unsupported .npy format version %u.%u (1.0 and 2.0 are read)",
                    major, minor);
    }
    if (hlen > len - start)
        return fail(err, errlen, "truncated header: it announces %zu bytes, the file has %zu",
                    hlen, len - start);
    int fortran = 0;
    npy_array a;
    memset(&a, 0, sizeof a);
    if (parse_dict((const char *)buf + start, hlen, &a, &fortran, err, errlen) != 0)
        return -1;
    int src = SRC_F32;
    size_t itemsize = 4;
    if (classify(a.descr, &src, &itemsize, err, errlen) != 0)
        return -1;
    size_t count = 1;
    for (int d = 0; d < a.ndim; d++) {
        if (a.shape[d] > SIZE_MAX || (a.shape[d] && count > SIZE_MAX / a.shape[d]))
            return fail(err, errlen, "shape too large: the element count does not fit");
        count *= (size_t)a.shape[d];
    }
    if (count > SIZE_MAX / 8)
        return fail(err, errlen, "shape too large: the element count does not fit");
    /* A Fortran-ordered array of at most one non-trivial axis has C order too, but NumPy
     * marks those as C order anyway; refuse every Fortran array rather than guess. */
    if (fortran)
        return fail(err, errlen, "Fortran-ordered array: save it with np.ascontiguousarray(a)");
    size_t bytes = count * itemsize, have = len - start - hlen;
    if (have < bytes)
        return fail(err, errlen, "truncated data: the shape needs %zu bytes, the file has %zu",
                    bytes, have);
    if (have > bytes)
        return fail(err, errlen, "%zu bytes after the data the shape describes", have - bytes);
    const unsigned char *data = buf + start + hlen;
    a.count = count;
    a.kind = (src == SRC_U8 || src == SRC_BOOL) ? NPY_UINT8 : NPY_FLOAT32;
    size_t outsize = a.kind == NPY_UINT8 ? count : count * sizeof(float);
    a.data = malloc(outsize ? outsize : 1);
    if (!a.data)
        return fail(err, errlen, "out of memory (%zu bytes)", outsize);
    switch (src) {
    case SRC_F32:
        memcpy(a.data, data, bytes);
        break;
    case SRC_F64:
        for (size_t i = 0; i < count; i++) {
            double d;
            memcpy(&d, data + 8 * i, 8);
            ((float *)a.data)[i] = (float)d;
        }
        a.converted = 1;
        break;
    case SRC_F16:
        for (size_t i = 0; i < count; i++)
            ((float *)a.data)[i] =
                npy_half_to_float((uint16_t)(data[2 * i] | (unsigned)data[2 * i + 1] << 8));
        a.converted = 1;
        break;
    case SRC_U8:
        memcpy(a.data, data, bytes);
        break;
    default: /* bool: NumPy stores 0 and 1; read anything nonzero as true */
        for (size_t i = 0; i < count; i++)
            ((uint8_t *)a.data)[i] = data[i] != 0;
        break;
    }
    *out = a;
    return 0;
}

int npy_load(const char *path, npy_array *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f)
        return fail(err, errlen, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return fail(err, errlen, "%s: not a regular file", path);
    }
    size_t len = (size_t)st.st_size;
    unsigned char *buf = malloc(len ? len : 1);
    if (!buf) {
        fclose(f);
        return fail(err, errlen, "%s: out of memory reading %zu bytes", path, len);
    }
    size_t got = fread(buf, 1, len, f);
    int rerr = ferror(f);
    fclose(f);
    if (rerr || got != len) {
        free(buf);
        return fail(err, errlen, "%s: read error", path);
    }
    char why[256];
    int rc = npy_parse(buf, len, out, why, sizeof why);
    free(buf);
    if (rc != 0)
        return fail(err, errlen, "%s: %s", path, why);
    return 0;
}

/* ---- writing ------------------------------------------------------------------------------ */

int npy_encode_f32(const float *data, int ndim, const uint64_t *shape, unsigned char **out_buf,
                   size_t *out_len, char *err, size_t errlen)
{
    char dict[64 + NPY_MAX_DIMS * 24];
    size_t n = (size_t)snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, "
                                                   "'shape': (");
    size_t count = 1;
    if (ndim < 0 || ndim > NPY_MAX_DIMS)
        return fail(err, errlen, "cannot write %d dimensions", ndim);
    for (int d = 0; d < ndim; d++) {
        n += (size_t)snprintf(dict + n, sizeof dict - n, "%llu%s",
                              (unsigned long long)shape[d], (ndim == 1 || d + 1 < ndim) ? ", " : "");
        if (shape[d] > SIZE_MAX || (shape[d] && count > SIZE_MAX / 4 / shape[d]))
            return fail(err, errlen, "array too large to write");
        count *= (size_t)shape[d];
    }
    if (ndim == 1)
        n -= 1; /* "(5,)" */
    n += (size_t)snprintf(dict + n, sizeof dict - n, "), }");
    /* Pad with spaces and a final newline so that the data starts at a multiple of 64. */
    size_t start = 10, total = start + n + 1;
    total = (total + 63) / 64 * 64;
    int v2 = total - start > 65535;
    if (v2) {
        start = 12;
        total = (start + n + 1 + 63) / 64 * 64;
    }
    size_t hlen = total - start, bytes = count * sizeof(float);
    unsigned char *buf = malloc(total + bytes);
    if (!buf)
        return fail(err, errlen, "out of memory (%zu bytes)", total + bytes);
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = v2 ? 2 : 1;
    buf[7] = 0;
    buf[8] = (unsigned char)(hlen & 0xff);
    buf[9] = (unsigned char)(hlen >> 8 & 0xff);
    if (v2) {
        buf[10] = (unsigned char)(hlen >> 16 & 0xff);
        buf[11] = (unsigned char)(hlen >> 24 & 0xff);
    }
    memcpy(buf + start, dict, n);
    memset(buf + start + n, ' ', hlen - n - 1);
    buf[total - 1] = '\n';
    if (bytes)
        memcpy(buf + total, data, bytes);
    *out_buf = buf;
    *out_len = total + bytes;
    return 0;
}

int npy_write_temp(const char *path, const unsigned char *buf, size_t len, char *tmp_path,
                   size_t tmp_size, char *err, size_t errlen)
{
    if ((size_t)snprintf(tmp_path, tmp_size, "%s.tmp-XXXXXX", path) >= tmp_size)
        return fail(err, errlen, "%s: path too long", path);
    int fd = mkstemp(tmp_path);
    if (fd < 0)
        return fail(err, errlen, "%s: cannot create a file next to it: %s", path,
                    strerror(errno));
    /* mkstemp makes the file 0600: give it the mode a plain open() would have. */
    mode_t mask = umask(0);
    umask(mask);
    int ok = fchmod(fd, 0666 & ~mask) == 0;
    size_t done = 0;
    while (ok && done < len) {
        ssize_t w = write(fd, buf + done, len - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            ok = 0;
            break;
        }
        done += (size_t)w;
    }
    int saved = errno;
    if (close(fd) != 0 && ok) {
        ok = 0;
        saved = errno;
    }
    if (!ok) {
        unlink(tmp_path);
        return fail(err, errlen, "%s: write error: %s", path, strerror(saved));
    }
    return 0;
}

int npy_write_file(const char *path, const unsigned char *buf, size_t len, char *err,
                   size_t errlen)
{
    char tmp[4096 + 16];
    if (npy_write_temp(path, buf, len, tmp, sizeof tmp, err, errlen) != 0)
        return -1;
    if (rename(tmp, path) != 0) {
        int saved = errno;
        unlink(tmp);
        return fail(err, errlen, "%s: %s", path, strerror(saved));
    }
    return 0;
}
