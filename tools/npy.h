/*
 * Reading and writing NumPy .npy files (format versions 1.0 and 2.0), as the attn tool needs
 * them: little-endian float32 (float64 and float16 are converted to float32 on reading),
 * uint8 and bool (for masks), C order only. Everything else is refused with a one-line message.
 */
#ifndef ATTN_TOOLS_NPY_H
#define ATTN_TOOLS_NPY_H

#include <stddef.h>
#include <stdint.h>

#define NPY_MAX_DIMS 32

typedef enum npy_kind {
    NPY_FLOAT32 = 0, /* data is float: read from <f4, <f8 or <f2 */
    NPY_UINT8 = 1    /* data is uint8_t: read from |u1 or |b1 (bool as 0/1) */
} npy_kind;

typedef struct npy_array {
    npy_kind kind;
    int ndim;                     /* 0 .. NPY_MAX_DIMS */
    uint64_t shape[NPY_MAX_DIMS];
    size_t count;                 /* product of the shape */
    void *data;                   /* count floats or count bytes; malloc'ed, npy_free releases */
    char descr[16];               /* the file's dtype string, e.g. "<f8" */
    int converted;                /* 1 if the file's floats were not float32 */
} npy_array;

/*
 * Parses a whole .npy image held in memory. Returns 0 and fills *out (release it with npy_free),
 * or -1 with a one-line reason in err (no file name) and *out empty. Never reads outside
 * [buf, buf + len).
 */
int npy_parse(const unsigned char *buf, size_t len, npy_array *out, char *err, size_t errlen);

/* Reads a file with npy_parse. On failure err holds "PATH: reason". */
int npy_load(const char *path, npy_array *out, char *err, size_t errlen);

void npy_free(npy_array *a);

/*
 * Encodes a float32 C-order array as a version 1.0 .npy image (version 2.0 if the header does
 * not fit 1.0) into a malloc'ed buffer. Returns 0, or -1 (shape too large, out of memory).
 */
int npy_encode_f32(const float *data, int ndim, const uint64_t *shape, unsigned char **out_buf,
                   size_t *out_len, char *err, size_t errlen);

/* Writes a whole file atomically: into a temporary file in the same directory, then renamed.
 * On failure nothing is left at path or in the directory; err holds "PATH: reason". */
int npy_write_file(const char *path, const unsigned char *buf, size_t len, char *err,
                   size_t errlen);

/* A temporary next to path holding buf, not yet renamed: for writing several files at once. */
int npy_write_temp(const char *path, const unsigned char *buf, size_t len, char *tmp_path,
                   size_t tmp_size, char *err, size_t errlen);

/* IEEE half to float, every value including subnormals, infinities and NaN. */
float npy_half_to_float(uint16_t h);

#endif
