/* Prefix-compatible structs: see abi.h. */
#include <string.h>

#include "core/abi.h"

bool attn_abi_size_known(size_t size, const size_t *known, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (size == known[i])
            return true;
    return false;
}

void attn_abi_init(void *caller, size_t caller_size, const void *defaults, size_t lib_size)
{
    if (!caller || caller_size < sizeof(size_t))
        return;
    size_t common = caller_size < lib_size ? caller_size : lib_size;
    memcpy(caller, defaults, common);
    if (caller_size > lib_size)
        memset((char *)caller + lib_size, 0, caller_size - lib_size);
    memcpy(caller, &caller_size, sizeof caller_size);
}

void attn_abi_load(void *local, const void *defaults, const void *caller, size_t caller_size,
                   size_t lib_size)
{
    memcpy(local, defaults, lib_size);
    memcpy(local, caller, caller_size);
}
