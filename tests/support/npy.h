/* Minimal reader for NumPy .npy files (format 1.0/2.0, little-endian, C order). */
#ifndef ATTN_TEST_NPY_H
#define ATTN_TEST_NPY_H

#include <stddef.h>
#include <stdint.h>

typedef struct npy_array {
    char descr[8];      /* "<f4", "<f8", "|u1", ... */
    int ndim;
    int64_t shape[8];
    size_t count;       /* elements */
    size_t item_size;
    void *data;
} npy_array;

/* Returns 0 on success; on failure -1 with a message in err. */
int npy_load(const char *path, npy_array *a, char *err, size_t err_size);
void npy_free(npy_array *a);

#endif
