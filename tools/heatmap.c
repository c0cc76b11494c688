#include "heatmap.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* A perceptually uniform sequential colour map (the "viridis" palette), sampled at nine
 * evenly spaced points and interpolated linearly between them. */
static const unsigned char ramp[9][3] = {
    {0x44, 0x01, 0x54}, {0x48, 0x28, 0x78}, {0x3e, 0x49, 0x89}, {0x31, 0x68, 0x8e},
    {0x26, 0x82, 0x8e}, {0x1f, 0x9e, 0x89}, {0x35, 0xb7, 0x79}, {0x6e, 0xce, 0x58},
    {0xfd, 0xe7, 0x25}};

static void colour(double t, unsigned rgb[3])
{
    if (!(t > 0.0))
        t = 0.0;
    if (t > 1.0)
        t = 1.0;
    double x = t * 8.0;
    int i = (int)x;
    if (i > 7)
        i = 7;
    double f = x - i;
    for (int c = 0; c < 3; c++)
        rgb[c] = (unsigned)lround(ramp[i][c] + f * (ramp[i + 1][c] - ramp[i][c]));
}

double heatmap_row_entropy(const float *row, size_t n)
{
    double h = 0.0;
    for (size_t j = 0; j < n; j++) {
        double p = row[j];
        if (isnan(p))
            return NAN;
        if (p > 0.0)
            h -= p * log(p);
    }
    return h == 0.0 ? 0.0 : h; /* no "-0.000" */
}

static double value_max(const heatmap *h)
{
    double m = 0.0;
    for (size_t i = 0; i < h->rows; i++)
        for (size_t j = 0; j < h->cols; j++) {
            double v = h->values[i * h->stride + j];
            if (isfinite(v) && v > m)
                m = v;
        }
    return m > 0.0 ? m : 1.0;
}

/* Label i of a list, or its index; at most `max` characters (UTF-8 sequences count as one). */
enum { LABEL_MAX = 32, TITLE_MAX = 200 };

static const char *label(const char *const *labels, size_t i, char *buf, size_t size)
{
    if (!labels) {
        snprintf(buf, size, "%zu", i);
        return buf;
    }
    return labels[i];
}

/* Characters of a UTF-8 string (continuation bytes not counted), capped at max. */
static size_t text_len(const char *s, size_t max)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xc0) != 0x80;
    return n > max ? max : n;
}

/* Writes s as XML character data: markup characters escaped, control characters and bytes that
 * are not well-formed UTF-8 replaced by '?', cut after max characters with an ellipsis. */
static void put_text(FILE *f, const char *s, size_t max)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t chars = 0;
    while (*p) {
        if (chars == max) {
            fputs("\xe2\x80\xa6", f);
            return;
        }
        unsigned c = *p;
        int n = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3
                                                   : (c & 0xf8) == 0xf0 ? 4 : 0;
        int ok = n > 0;
        uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1f) : n == 3 ? (c & 0x0f) : (c & 0x07);
        for (int k = 1; ok && k < n; k++) {
            if ((p[k] & 0xc0) != 0x80)
                ok = 0;
            else
                cp = cp << 6 | (p[k] & 0x3f);
        }
        /* Overlong forms, surrogates and code points above U+10FFFF are not characters. */
        if (ok && ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
                   (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff || cp == 0xfffe ||
                   cp == 0xffff))
            ok = 0;
        if (!ok) {
            fputc('?', f);
            p++;
        } else if (n > 1) {
            fwrite(p, 1, (size_t)n, f);
            p += n;
        } else {
            switch (c) {
            case '&': fputs("&amp;", f); break;
            case '<': fputs("&lt;", f); break;
            case '>': fputs("&gt;", f); break;
            case '"': fputs("&quot;", f); break;
            case '\'': fputs("&apos;", f); break;
            default: fputc(c < 0x20 || c == 0x7f ? '?' : (int)c, f);
            }
            p++;
        }
        chars++;
    }
}

static void put_value(FILE *f, double v)
{
    if (isnan(v))
        fputs("nan", f);
    else
        fprintf(f, "%.4f", v);
}

int heatmap_svg(FILE *f, const heatmap *h)
{
    if (!h->rows || !h->cols)
        return -1;
    char nb[32];
    size_t maxrow = 0, maxcol = 0;
    for (size_t i = 0; i < h->rows; i++) {
        size_t n = text_len(label(h->row_labels, i, nb, sizeof nb), LABEL_MAX);
        maxrow = n > maxrow ? n : maxrow;
    }
    for (size_t j = 0; j < h->cols; j++) {
        size_t n = text_len(label(h->col_labels, j, nb, sizeof nb), LABEL_MAX);
        maxcol = n > maxcol ? n : maxcol;
    }
    size_t big = h->rows > h->cols ? h->rows : h->cols;
    double cell = big <= 40 ? 28.0 : fmax(3.0, 1120.0 / (double)big);
    double font = cell >= 16.0 ? 12.0 : fmax(3.0, cell * 0.75);
    double cw = 0.62 * font; /* advance of one character, generously */
    double title_h = h->title ? 30.0 : 8.0;
    double left = 10.0 + (h->row_axis ? 20.0 : 0.0) + (double)maxrow * cw + 8.0;
    double top = title_h + (h->col_axis ? 18.0 : 0.0) + (double)maxcol * cw + 10.0;
    double gw = cell * (double)h->cols, gh = cell * (double)h->rows;
    double ent_x = left + gw + 10.0, ent_w = 7.0 * 12.0 * 0.62 + 14.0;
    double bar_x = ent_x + ent_w, bar_h = gh > 120.0 ? gh : 120.0;
    double width = bar_x + 14.0 + 8.0 + 6.0 * 12.0 * 0.62 + 10.0;
    double height = top + bar_h + 18.0;
    if (h->title && width < 20.0 + text_len(h->title, TITLE_MAX) * 14.0 * 0.62)
        width = 20.0 + text_len(h->title, TITLE_MAX) * 14.0 * 0.62;
    double vmax = value_max(h);

    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
               "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"%.0f\" "
               "height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
               "font-family=\"DejaVu Sans Mono, Menlo, Consolas, monospace\" font-size=\"%.1f\">\n",
            ceil(width), ceil(height), ceil(width), ceil(height), font);
    fprintf(f, "<rect x=\"0\" y=\"0\" width=\"100%%\" height=\"100%%\" fill=\"#ffffff\"/>\n");
    if (h->title) {
        fprintf(f, "<text class=\"title\" x=\"10\" y=\"20\" font-size=\"14\">");
        put_text(f, h->title, TITLE_MAX);
        fprintf(f, "</text>\n");
    }
    if (h->col_axis) {
        fprintf(f, "<text class=\"axis\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" "
                   "font-style=\"italic\">", left + gw / 2.0, title_h + 10.0);
        put_text(f, h->col_axis, TITLE_MAX);
        fprintf(f, "</text>\n");
    }
    if (h->row_axis) {
        fprintf(f, "<text class=\"axis\" x=\"16\" y=\"%.1f\" text-anchor=\"middle\" "
                   "font-style=\"italic\" transform=\"rotate(-90 16 %.1f)\">",
                top + gh / 2.0, top + gh / 2.0);
        put_text(f, h->row_axis, TITLE_MAX);
        fprintf(f, "</text>\n");
    }
    /* Column labels, written upwards above their column. */
    for (size_t j = 0; j < h->cols; j++) {
        double x = left + cell * ((double)j + 0.5) + font * 0.35, y = top - 6.0;
        fprintf(f, "<text class=\"collabel\" x=\"%.1f\" y=\"%.1f\" transform=\"rotate(-90 %.1f "
                   "%.1f)\">", x, y, x, y);
        put_text(f, label(h->col_labels, j, nb, sizeof nb), LABEL_MAX);
        fprintf(f, "</text>\n");
    }
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" transform=\"rotate(-90 %.1f %.1f)\" "
               "font-style=\"italic\">entropy</text>\n",
            ent_x + font * 0.35 + 2.0, top - 6.0, ent_x + font * 0.35 + 2.0, top - 6.0);
    for (size_t i = 0; i < h->rows; i++) {
        double y = top + cell * (double)i, ty = y + cell / 2.0 + font * 0.35;
        const float *row = h->values + i * h->stride;
        fprintf(f, "<text class=\"rowlabel\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">",
                left - 6.0, ty);
        put_text(f, label(h->row_labels, i, nb, sizeof nb), LABEL_MAX);
        fprintf(f, "</text>\n");
        for (size_t j = 0; j < h->cols; j++) {
            double v = row[j];
            unsigned rgb[3] = {0xbb, 0xbb, 0xbb};
            if (!isnan(v))
                colour(v / vmax, rgb);
            double x = left + cell * (double)j;
            fprintf(f, "<rect class=\"cell\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" "
                       "fill=\"#%02x%02x%02x\"><title>",
                    x, y, cell, cell, rgb[0], rgb[1], rgb[2]);
            put_text(f, label(h->row_labels, i, nb, sizeof nb), LABEL_MAX);
            fputs(" \xe2\x86\x92 ", f);
            put_text(f, label(h->col_labels, j, nb, sizeof nb), LABEL_MAX);
            fputs(": ", f);
            put_value(f, v);
            fputs("</title></rect>\n", f);
            /* The value in the cell, when it fits; hidden keys (exact zeros) stay blank. */
            if (cell >= 24.0 && isfinite(v) && v != 0.0) {
                double lum = (0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]) / 255.0;
                fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"8\" text-anchor=\"middle\" "
                           "fill=\"%s\" pointer-events=\"none\">%.2f</text>\n",
                        x + cell / 2.0, y + cell / 2.0 + 3.0, lum > 0.5 ? "#000000" : "#ffffff",
                        v);
            }
        }
        fprintf(f, "<text class=\"entropy\" x=\"%.1f\" y=\"%.1f\">", ent_x, ty);
        double e = heatmap_row_entropy(row, h->cols);
        if (isnan(e))
            fputs("nan", f);
        else
            fprintf(f, "%.3f", e);
        fprintf(f, "</text>\n");
    }
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
               "stroke=\"#444444\" stroke-width=\"0.5\"/>\n", left, top, gw, gh);
    /* Colour bar: the ramp from 0 (bottom) to vmax (top), with three ticks. */
    fprintf(f, "<defs><linearGradient id=\"ramp\" x1=\"0\" y1=\"1\" x2=\"0\" y2=\"0\">");
    for (int s = 0; s < 9; s++)
        fprintf(f, "<stop offset=\"%.3f\" stop-color=\"#%02x%02x%02x\"/>", s / 8.0, ramp[s][0],
                ramp[s][1], ramp[s][2]);
    fprintf(f, "</linearGradient></defs>\n");
    fprintf(f, "<rect class=\"colourbar\" x=\"%.1f\" y=\"%.1f\" width=\"14\" height=\"%.1f\" "
               "fill=\"url(#ramp)\" stroke=\"#444444\" stroke-width=\"0.5\"/>\n",
            bar_x, top, bar_h);
    for (int t = 0; t <= 2; t++) {
        double y = top + bar_h * (1.0 - t / 2.0);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#444444\" "
                   "stroke-width=\"0.5\"/>", bar_x + 14.0, y, bar_x + 18.0, y);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\">%.3g</text>\n", bar_x + 20.0,
                y + 3.5, vmax * t / 2.0);
    }
    fprintf(f, "</svg>\n");
    return ferror(f) ? -1 : 0;
}

/* Nearest entry of the terminal's 6x6x6 colour cube. */
static int cube(const unsigned rgb[3])
{
    int idx[3];
    for (int c = 0; c < 3; c++) {
        /* The cube's levels are 0, 95, 135, 175, 215, 255. */
        static const int level[6] = {0, 95, 135, 175, 215, 255};
        int best = 0;
        for (int k = 1; k < 6; k++)
            if (abs(level[k] - (int)rgb[c]) < abs(level[best] - (int)rgb[c]))
                best = k;
        idx[c] = best;
    }
    return 16 + 36 * idx[0] + 6 * idx[1] + idx[2];
}

/* Writes at most width characters of a UTF-8 label, right-aligned in width columns (control
 * characters as '?'; a sequence is never cut). */
static void put_padded(FILE *f, const char *s, size_t width)
{
    size_t chars = 0, bytes = 0;
    while (s[bytes] && chars < width) {
        bytes++;
        while (((unsigned char)s[bytes] & 0xc0) == 0x80)
            bytes++;
        chars++;
    }
    fprintf(f, "%*s", (int)(width - chars), "");
    for (size_t i = 0; i < bytes; i++)
        fputc((unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i], f);
}

int heatmap_terminal(FILE *f, const heatmap *h)
{
    if (!h->rows || !h->cols)
        return -1;
    enum { VERT = 10, ROWW = 16 };
    char nb[32];
    size_t maxcol = 0, width = 0;
    for (size_t j = 0; j < h->cols; j++) {
        size_t n = strlen(label(h->col_labels, j, nb, sizeof nb));
        maxcol = n > maxcol ? n : maxcol;
    }
    for (size_t i = 0; i < h->rows; i++) {
        size_t n = text_len(label(h->row_labels, i, nb, sizeof nb), LABEL_MAX);
        width = n > width ? n : width;
    }
    if (maxcol > VERT)
        maxcol = VERT;
    if (width > ROWW)
        width = ROWW;
    double vmax = value_max(h);
    if (h->title)
        fprintf(f, "%s\n", h->title);
    /* Column labels, one character per line (bytes, so ASCII labels read best). */
    for (size_t k = 0; k < maxcol; k++) {
        fprintf(f, "%*s ", (int)width, "");
        for (size_t j = 0; j < h->cols; j++) {
            const char *s = label(h->col_labels, j, nb, sizeof nb);
            unsigned char ch = k < strlen(s) ? (unsigned char)s[k] : ' ';
            fprintf(f, "%c ", ch >= 0x20 && ch < 0x7f ? ch : ' ');
        }
        fprintf(f, "%s\n", k == 0 ? " entropy" : "");
    }
    for (size_t i = 0; i < h->rows; i++) {
        const float *row = h->values + i * h->stride;
        put_padded(f, label(h->row_labels, i, nb, sizeof nb), width);
        fputc(' ', f);
        for (size_t j = 0; j < h->cols; j++) {
            unsigned rgb[3] = {0xbb, 0xbb, 0xbb};
            if (!isnan(row[j]))
                colour(row[j] / vmax, rgb);
            fprintf(f, "\x1b[48;5;%dm  ", cube(rgb));
        }
        double e = heatmap_row_entropy(row, h->cols);
        fprintf(f, "\x1b[0m ");
        if (isnan(e))
            fprintf(f, "nan\n");
        else
            fprintf(f, "%.3f\n", e);
    }
    fprintf(f, "%*s 0 ", (int)width, "");
    for (int s = 0; s <= 16; s++) {
        unsigned rgb[3];
        colour(s / 16.0, rgb);
        fprintf(f, "\x1b[48;5;%dm ", cube(rgb));
    }
    fprintf(f, "\x1b[0m %.3g\n", vmax);
    return ferror(f) ? -1 : 0;
}
