#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "util.h"

double rng_normal(rng *r)
{
    double u1 = rng_uniform(r, 0x1p-53, 1.0), u2 = rng_uniform(r, 0.0, 1.0);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) {
        fprintf(stderr, "test: out of memory\n");
        abort();
    }
    return p;
}

float *random_floats(rng *r, size_t n, double amp)
{
    float *p = xcalloc(n, sizeof(float));
    for (size_t i = 0; i < n; i++)
        p[i] = (float)(rng_normal(r) * amp);
    return p;
}
