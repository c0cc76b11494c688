/* Overflow-checked int64 arithmetic for validating caller sizes and strides. */
#ifndef ATTN_CORE_CHECKED_H
#define ATTN_CORE_CHECKED_H

#include <stdbool.h>
#include <stdint.h>

/* *r = a * b for a, b >= 0; false if the product exceeds INT64_MAX. */
static inline bool attn_mul_i64(int64_t a, int64_t b, int64_t *r)
{
    if (a != 0 && b > INT64_MAX / a)
        return false;
    *r = a * b;
    return true;
}

/* *r = a + b for a, b >= 0; false if the sum exceeds INT64_MAX. */
static inline bool attn_add_i64(int64_t a, int64_t b, int64_t *r)
{
    if (a > INT64_MAX - b)
        return false;
    *r = a + b;
    return true;
}

#endif
