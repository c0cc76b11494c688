/* Small helpers shared by the test suites: deterministic random numbers and buffers. */
#ifndef ATTN_TEST_UTIL_H
#define ATTN_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* splitmix64: a fixed seed gives the same sequence on every machine. */
typedef struct rng {
    uint64_t s;
} rng;

static inline uint64_t rng_next(rng *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, n). */
static inline int64_t rng_below(rng *r, int64_t n)
{
    return (int64_t)(rng_next(r) % (uint64_t)n);
}

/* Uniform in [lo, hi). */
static inline double rng_uniform(rng *r, double lo, double hi)
{
    return lo + (hi - lo) * (double)(rng_next(r) >> 11) * 0x1p-53;
}

/* Standard normal (Box-Muller). */
double rng_normal(rng *r);

/* Buffer of n floats, each normal * amp; aborts on no memory. */
float *random_floats(rng *r, size_t n, double amp);
/* calloc that aborts on no memory. */
void *xcalloc(size_t n, size_t size);

#endif
