#include <math.h>
#include <stdio.h>
#include <string.h>

#include "check.h"

static void compare(double got, double ref, double tol, const char *what, const char *label,
                    check_stats *st)
{
    st->compared++;
    double err = fabs(got - ref);
    int ok = isfinite(got) ? err <= tol : (got == ref); /* inf only where expected */
    if (isnan(ref))
        ok = isnan(got);
    if (ok && tol > 0.0 && isfinite(err) && err / tol > st->worst_ratio)
        st->worst_ratio = err / tol;
    if (!ok) {
        if (st->failures == 0)
            snprintf(st->first_failure, sizeof st->first_failure,
                     "%s: %s got %.9g expected %.9g (|diff| %.3g > tol %.3g)", label, what, got,
                     ref, err, tol);
        st->failures++;
    }
}

void check_outputs(const ref_problem *p, const ref_result *r, const attn_desc *d,
                   const attn_args *a, const char *label, check_stats *st)
{
    int nan_rows = d->masked_rows == ATTN_MASKED_ROWS_NAN;
    double masked_value = nan_rows ? NAN : 0.0;
    char what[128];
    for (int64_t b = 0; b < p->B; b++)
        for (int64_t h = 0; h < p->Hq; h++)
            for (int64_t i = 0; i < p->Lq; i++) {
                size_t row = (size_t)((b * p->Hq + h) * p->Lq + i);
                int masked = r->masked[row];
                const float *out = a->out + b * a->out_strides.batch + h * a->out_strides.head +
                                   i * a->out_strides.seq;
                for (int64_t dd = 0; dd < p->Dv; dd++) {
                    snprintf(what, sizeof what, "out[%lld,%lld,%lld,%lld]", (long long)b,
                             (long long)h, (long long)i, (long long)dd);
                    if (masked)
                        compare(out[dd], masked_value, 0.0, what, label, st);
                    else
                        compare(out[dd], r->out[row * p->Dv + dd], r->out_tol[row * p->Dv + dd],
                                what, label, st);
                }
                if (a->lse) {
                    snprintf(what, sizeof what, "lse[%zu]", row);
                    compare(a->lse[row], r->lse[row], masked ? 0.0 : r->lse_tol[row], what, label, st);
                }
                if (a->entropy) {
                    snprintf(what, sizeof what, "entropy[%zu]", row);
                    compare(a->entropy[row], masked ? masked_value : r->entropy[row],
                            masked ? 0.0 : r->entropy_tol[row], what, label, st);
                }
                if (a->weights_mode == ATTN_WEIGHTS_PER_HEAD)
                    for (int64_t j = 0; j < p->Lk; j++) {
                        snprintf(what, sizeof what, "weights[%zu,%lld]", row, (long long)j);
                        size_t at = row * p->Lk + j;
                        compare(a->weights[at], masked ? masked_value : r->weights[at],
                                masked ? 0.0 : r->weights_tol[at], what, label, st);
                    }
            }
    if (a->weights_mode == ATTN_WEIGHTS_HEAD_MEAN)
        for (int64_t b = 0; b < p->B; b++)
            for (int64_t i = 0; i < p->Lq; i++)
                for (int64_t j = 0; j < p->Lk; j++) {
                    double mean = 0.0, tol = 0.0;
                    int any_nan = 0;
                    for (int64_t h = 0; h < p->Hq; h++) {
                        size_t row = (size_t)((b * p->Hq + h) * p->Lq + i);
                        if (r->masked[row]) {
                            any_nan |= nan_rows;
                            continue;
                        }
                        mean += r->weights[row * p->Lk + j];
                        tol += r->weights_tol[row * p->Lk + j];
                    }
                    mean /= (double)p->Hq;
                    /* the mean adds Hq terms and divides: (Hq + 1) more roundings */
                    tol = tol / (double)p->Hq + 2.0 * (double)(p->Hq + 1) * 0x1p-24 * mean;
                    snprintf(what, sizeof what, "weights_mean[%lld,%lld,%lld]", (long long)b,
                             (long long)i, (long long)j);
                    compare(a->weights[(b * p->Lq + i) * p->Lk + j], any_nan ? NAN : mean, tol,
                            what, label, st);
                }
}
