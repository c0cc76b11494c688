/* The fuzz targets' input reader: the input's bytes in order, then a fixed generator, so that
 * any input, however short, decodes to a whole problem. */
#ifndef ATTN_FUZZ_BYTES_H
#define ATTN_FUZZ_BYTES_H

#include <stddef.h>
#include <stdint.h>

typedef struct bytes {
    const uint8_t *p;
    size_t n, at;
    uint64_t tail; /* generator for choices past the end of the input */
} bytes;

static inline unsigned byte(bytes *b)
{
    if (b->at < b->n)
        return b->p[b->at++];
    b->tail = b->tail * 6364136223846793005ull + 1442695040888963407ull;
    return (unsigned)(b->tail >> 56);
}

#endif
