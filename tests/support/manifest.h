/* Reads one case of tests/data/reference/manifest.json (flat objects, known keys only). */
#ifndef ATTN_TEST_MANIFEST_H
#define ATTN_TEST_MANIFEST_H

#include <stdint.h>

typedef struct manifest_case {
    char name[32];
    int64_t B, Hq, Hkv, Lq, Lk, D, Dv;
    double scale;
    int causal;
    int64_t q_offset, window_left, window_right;
    int has_kv_lens;
    int32_t kv_lens[64];
    int has_bias, has_mask;
    double logit_amp;
} manifest_case;

/* Loads the whole manifest text (caller frees) or NULL. */
char *manifest_read(const char *path);
/* Fills c from the index-th case; returns 0, or -1 if there is no such case. */
int manifest_case_at(const char *text, int index, manifest_case *c);

#endif
