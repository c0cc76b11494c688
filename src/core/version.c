/* Run-time version, from the generated header (the version lives only in CMake's project()). */
#include <attn/attn.h>

unsigned attn_version(void)
{
    return ATTN_VERSION_NUMBER;
}

const char *attn_version_string(void)
{
    return ATTN_VERSION_STRING;
}
