#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "manifest.h"

char *manifest_read(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)n + 1);
    if (text && fread(text, 1, (size_t)n, f) != (size_t)n) {
        free(text);
        text = NULL;
    }
    if (text)
        text[n] = '\0';
    fclose(f);
    return text;
}

/* The value text after "key": inside [obj, end), or NULL. */
static const char *value_of(const char *obj, const char *end, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(obj, pat);
    if (!p || p >= end)
        return NULL;
    p += strlen(pat);
    while (*p == ' ')
        p++;
    return p;
}

static int64_t int_of(const char *obj, const char *end, const char *key)
{
    const char *v = value_of(obj, end, key);
    return v ? strtoll(v, NULL, 10) : 0;
}

int manifest_case_at(const char *text, int index, manifest_case *c)
{
    const char *p = strstr(text, "\"cases\"");
    if (!p)
        return -1;
    for (int i = 0; i <= index; i++) {
        p = strstr(p + 1, "\"name\":");
        if (!p)
            return -1;
    }
    const char *obj = p, *end = strchr(p, '}');
    if (!end)
        return -1;
    memset(c, 0, sizeof *c);
    sscanf(value_of(obj, end, "name"), "\"%31[^\"]\"", c->name);
    c->B = int_of(obj, end, "B");
    c->Hq = int_of(obj, end, "Hq");
    c->Hkv = int_of(obj, end, "Hkv");
    c->Lq = int_of(obj, end, "Lq");
    c->Lk = int_of(obj, end, "Lk");
    c->D = int_of(obj, end, "D");
    c->Dv = int_of(obj, end, "Dv");
    c->scale = strtod(value_of(obj, end, "scale"), NULL);
    c->causal = strncmp(value_of(obj, end, "causal"), "true", 4) == 0;
    c->q_offset = int_of(obj, end, "q_offset");
    c->window_left = int_of(obj, end, "window_left");
    c->window_right = int_of(obj, end, "window_right");
    c->has_bias = strncmp(value_of(obj, end, "has_bias"), "true", 4) == 0;
    c->has_mask = strncmp(value_of(obj, end, "has_mask"), "true", 4) == 0;
    c->logit_amp = strtod(value_of(obj, end, "logit_amp"), NULL);
    const char *kv = value_of(obj, end, "kv_lens");
    if (kv && *kv == '[') {
        c->has_kv_lens = 1;
        const char *q = kv + 1;
        for (int b = 0; b < c->B && b < 64; b++) {
            char *e;
            c->kv_lens[b] = (int32_t)strtol(q, &e, 10);
            q = e;
            while (*q == ',' || *q == ' ' || *q == '\n')
                q++;
        }
    }
    return 0;
}
