/*
 * Encoder-decoder cross-attention with libattn: each word of a decoder sentence (the queries)
 * looks over the encoder's states of a source sentence (the keys and values) and the attention
 * weights show which source words it reads. The embeddings are synthetic: every concept gets a
 * random vector, and a word's query/key is its concept's vector plus a little noise, so a
 * translation's words align with their counterparts ("the" reads both "die" and "der").
 * It also draws the weights as an SVG heat map, attention.svg (or the path given as argument).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <attn/attn.h>

#include "heatmap.h" /* tools/heatmap.h: the SVG writer the attn tool uses */

enum { DIM = 32, SRC = 8, TGT = 7 };

/* Concepts shared by both languages. */
enum { THE, BLACK, CAT, SLEEPS, ON, MAT, END, CONCEPTS };

static const char *const src_words[SRC] = {"die", "schwarze", "Katze", "schlaeft",
                                           "auf", "der", "Matte", "<eos>"};
static const int src_concept[SRC] = {THE, BLACK, CAT, SLEEPS, ON, THE, MAT, END};
static const char *const tgt_words[TGT] = {"the", "black", "cat", "sleeps", "on", "the", "mat"};
static const int tgt_concept[TGT] = {THE, BLACK, CAT, SLEEPS, ON, THE, MAT};

static uint64_t seed = 2024;

static float noise(void) /* uniform in [-1, 1), deterministic */
{
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(seed >> 11) * 0x1p-53 * 2.0 - 1.0);
}

static int check(attn_status st, const attn_ctx *ctx, const char *what)
{
    if (st == ATTN_OK)
        return 0;
    fprintf(stderr, "%s failed: %s (%s)\n", what, attn_status_str(st), attn_last_error(ctx));
    return 1;
}

int main(int argc, char **argv)
{
    const char *svg_path = argc > 1 ? argv[1] : "attention.svg";
    float concept[CONCEPTS][DIM];
    for (int c = 0; c < CONCEPTS; c++)
        for (int d = 0; d < DIM; d++)
            concept[c][d] = 1.7f * noise(); /* sharp enough to align, soft enough to share */

    /* Encoder states: keys and values; decoder states: queries. Layout [seq, dim], one head. */
    float keys[SRC][DIM], values[SRC][DIM], queries[TGT][DIM];
    for (int j = 0; j < SRC; j++)
        for (int d = 0; d < DIM; d++) {
            keys[j][d] = concept[src_concept[j]][d] + 0.3f * noise();
            values[j][d] = concept[src_concept[j]][d];
        }
    for (int i = 0; i < TGT; i++)
        for (int d = 0; d < DIM; d++)
            queries[i][d] = concept[tgt_concept[i]][d] + 0.3f * noise();

    attn_desc desc;
    attn_desc_init(&desc);
    desc.qk_dim = desc.v_dim = DIM; /* one head; scale defaults to 1/sqrt(DIM) */
    attn_ctx *ctx;
    if (check(attn_create(&desc, &ctx), NULL, "attn_create"))
        return 1;

    float out[TGT][DIM], weights[TGT][SRC], entropy[TGT];
    attn_args args;
    attn_args_init(&args);
    args.batch = 1;
    args.q_len = TGT;  /* decoder positions */
    args.kv_len = SRC; /* encoder positions: a different length */
    args.q = &queries[0][0], args.q_strides = attn_strides_bhsd(1, TGT, DIM);
    args.k = &keys[0][0], args.k_strides = attn_strides_bhsd(1, SRC, DIM);
    args.v = &values[0][0], args.v_strides = attn_strides_bhsd(1, SRC, DIM);
    args.out = &out[0][0], args.out_strides = attn_strides_bhsd(1, TGT, DIM);
    args.weights_mode = ATTN_WEIGHTS_PER_HEAD;
    args.weights = &weights[0][0];
    args.entropy = entropy;
    if (check(attn_forward(ctx, &args), ctx, "attn_forward")) {
        attn_destroy(ctx);
        return 1;
    }

    printf("libattn %s (%s kernels): cross-attention, %d decoder queries over %d encoder states\n\n",
           attn_version_string(), attn_kernel_isa(), TGT, SRC);
    printf("attention weights (row: decoder word, column: encoder word)\n\n%-8s", "");
    for (int j = 0; j < SRC; j++)
        printf("%9s", src_words[j]);
    printf("   entropy\n");
    static const char shades[] = " .:-=+*#%@";
    for (int i = 0; i < TGT; i++) {
        printf("%-8s", tgt_words[i]);
        for (int j = 0; j < SRC; j++)
            printf("%9.3f", weights[i][j]);
        printf("   %.3f\n", entropy[i]);
    }
    printf("\nas a picture (darker = more weight)\n\n%-8s", "");
    for (int j = 0; j < SRC; j++)
        printf("%9.8s", src_words[j]);
    printf("\n");
    for (int i = 0; i < TGT; i++) {
        printf("%-8s", tgt_words[i]);
        for (int j = 0; j < SRC; j++) {
            int level = (int)(weights[i][j] * 9.0f + 0.5f);
            char cell[10];
            memset(cell, shades[level < 0 ? 0 : level > 9 ? 9 : level], 8);
            cell[8] = '\0';
            printf(" %s", cell);
        }
        printf("\n");
    }

    /* What each decoder word received: the nearest concept to its output vector. */
    printf("\nwhat each decoder word read (nearest source concept to its output):\n");
    for (int i = 0; i < TGT; i++) {
        int best = 0;
        float best_d = INFINITY;
        for (int j = 0; j < SRC; j++) {
            float dist = 0.0f;
            for (int d = 0; d < DIM; d++)
                dist += (out[i][d] - values[j][d]) * (out[i][d] - values[j][d]);
            if (dist < best_d)
                best_d = dist, best = j;
        }
        printf("  %-7s -> %s\n", tgt_words[i], src_words[best]);
    }
    attn_destroy(ctx);

    heatmap map = {.rows = TGT, .cols = SRC, .values = &weights[0][0], .stride = SRC,
                   .row_labels = tgt_words, .col_labels = src_words,
                   .title = "cross-attention: decoder words over encoder words",
                   .row_axis = "decoder (query)", .col_axis = "encoder (key)"};
    FILE *f = fopen(svg_path, "w");
    int bad = !f || heatmap_svg(f, &map) != 0;
    if (f && fclose(f) != 0)
        bad = 1;
    if (bad) {
        fprintf(stderr, "cannot write %s\n", svg_path);
        if (f)
            remove(svg_path);
        return 1;
    }
    printf("\nthe weights as a heat map: %s (open it in a browser)\n", svg_path);
    return 0;
}
