/*
 * Structs that grow at their end. A caller's struct_size says which fields it knows: the
 * library accepts the size of the struct in any version it knows (listed as the offsets where
 * each version's struct ended) and gives the missing fields their defaults. The init functions
 * write exactly the caller's size, so a caller built against an older header is never written
 * past its struct.
 */
#ifndef ATTN_CORE_ABI_H
#define ATTN_CORE_ABI_H

#include <stdbool.h>
#include <stddef.h>

/* True if `size` is one of the `n` known sizes. */
bool attn_abi_size_known(size_t size, const size_t *known, size_t n);

/* Writes `defaults` (lib_size bytes) into the caller's struct of caller_size bytes: the common
 * prefix, then zeros past lib_size; stores caller_size into the leading size_t. */
void attn_abi_init(void *caller, size_t caller_size, const void *defaults, size_t lib_size);

/* local = defaults, then overwritten by the caller's first caller_size bytes (caller_size is
 * known to be at most lib_size). */
void attn_abi_load(void *local, const void *defaults, const void *caller, size_t caller_size,
                   size_t lib_size);

#endif
