#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "npy.h"

static int fail(char *err, size_t n, const char *path, const char *why)
{
    snprintf(err, n, "%s: %s", path, why);
    return -1;
}

int npy_load(const char *path, npy_array *a, char *err, size_t err_size)
{
    memset(a, 0, sizeof *a);
    FILE *f = fopen(path, "rb");
    if (!f)
        return fail(err, err_size, path, "cannot open");
    unsigned char pre[10];
    if (fread(pre, 1, 8, f) != 8 || memcmp(pre, "\x93NUMPY", 6) != 0) {
        fclose(f);
        return fail(err, err_size, path, "not a .npy file");
    }
    size_t header_len;
    if (pre[6] == 1) {
        unsigned char b[2];
        if (fread(b, 1, 2, f) != 2) { fclose(f); return fail(err, err_size, path, "short header"); }
        header_len = b[0] | (size_t)b[1] << 8;
    } else {
        unsigned char b[4];
        if (fread(b, 1, 4, f) != 4) { fclose(f); return fail(err, err_size, path, "short header"); }
        header_len = b[0] | (size_t)b[1] << 8 | (size_t)b[2] << 16 | (size_t)b[3] << 24;
    }
    char *header = calloc(header_len + 1, 1);
    if (!header || fread(header, 1, header_len, f) != header_len) {
        free(header);
        fclose(f);
        return fail(err, err_size, path, "short header");
    }
    const char *d = strstr(header, "'descr':");
    const char *fo = strstr(header, "'fortran_order':");
    const char *sh = strstr(header, "'shape':");
    if (!d || !fo || !sh || strstr(fo, "True") == fo + 17) {
        free(header);
        fclose(f);
        return fail(err, err_size, path, "unsupported header");
    }
    sscanf(d + 8, " '%7[^']'", a->descr);
    a->item_size = (size_t)atoi(a->descr + 2);
    const char *c = strchr(sh, '(') + 1;
    a->count = 1;
    while (*c && *c != ')' && a->ndim < 8) {
        char *end;
        long long v = strtoll(c, &end, 10);
        if (end == c)
            break;
        a->shape[a->ndim++] = v;
        a->count *= (size_t)v;
        c = end;
        while (*c == ',' || *c == ' ')
            c++;
    }
    free(header);
    if (a->descr[0] == '>' || a->item_size == 0) {
        fclose(f);
        return fail(err, err_size, path, "unsupported dtype");
    }
    a->data = malloc(a->count * a->item_size + 1);
    if (!a->data || fread(a->data, a->item_size, a->count, f) != a->count) {
        fclose(f);
        npy_free(a);
        return fail(err, err_size, path, "short data");
    }
    fclose(f);
    return 0;
}

void npy_free(npy_array *a)
{
    free(a->data);
    a->data = NULL;
}
