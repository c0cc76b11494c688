/*
 * Attention-weight heat maps: a standalone SVG document (token labels, a colour bar, the
 * entropy of every row, a tooltip per cell) or a 256-colour terminal rendering. Used by the
 * attn tool and the cross-attention demo; depends on the C library only.
 */
#ifndef ATTN_TOOLS_HEATMAP_H
#define ATTN_TOOLS_HEATMAP_H

#include <stddef.h>
#include <stdio.h>

typedef struct heatmap {
    size_t rows, cols;
    const float *values;            /* row i is values[i * stride .. i * stride + cols) */
    size_t stride;
    const char *const *row_labels;  /* rows strings, or NULL for 0, 1, ... */
    const char *const *col_labels;  /* cols strings, or NULL for 0, 1, ... */
    const char *title;              /* NULL: no title */
    const char *row_axis;           /* caption of the rows (e.g. "query"), or NULL */
    const char *col_axis;           /* caption of the columns (e.g. "key"), or NULL */
} heatmap;

/* Entropy -sum p ln p of one row of weights, in float64 (0 ln 0 = 0; NaN if any value is). */
double heatmap_row_entropy(const float *row, size_t n);

/* Writes the SVG document. Colours span 0 .. the largest finite value (1 if none is positive);
 * NaN cells are grey. Returns 0, or -1 if rows or cols is 0 or the stream reported an error. */
int heatmap_svg(FILE *f, const heatmap *h);

/* Writes the map with 256-colour background escapes, two columns per cell, the column labels
 * written vertically above, the entropy at the end of each row and a colour bar below. */
int heatmap_terminal(FILE *f, const heatmap *h);

#endif
