/* A minimal libattn user: one causal GQA attention call, checked against a naive float64
 * computation. Built by each packaging route in tests/package/. Exit status 0 = correct. */
#include <math.h>
#include <stdio.h>

#include <attn/attn.h>

enum { HQ = 2, HKV = 1, LQ = 3, LK = 5, D = 4 };

int main(void)
{
    float q[HQ][LQ][D], k[HKV][LK][D], v[HKV][LK][D], out[HQ][LQ][D];
    for (int i = 0; i < HQ * LQ * D; i++) (&q[0][0][0])[i] = (float)((i * 7) % 11) / 5.0f - 1.0f;
    for (int i = 0; i < HKV * LK * D; i++) (&k[0][0][0])[i] = (float)((i * 5) % 13) / 6.0f - 1.0f;
    for (int i = 0; i < HKV * LK * D; i++) (&v[0][0][0])[i] = (float)((i * 3) % 7) - 3.0f;

    attn_desc desc;
    attn_desc_init(&desc);
    desc.q_heads = HQ, desc.kv_heads = HKV, desc.qk_dim = D, desc.v_dim = D;
    desc.flags = ATTN_CAUSAL;
    attn_ctx *ctx;
    if (attn_create(&desc, &ctx) != ATTN_OK) {
        fprintf(stderr, "attn_create: %s\n", attn_last_error(NULL));
        return 1;
    }
    attn_args a;
    attn_args_init(&a);
    a.batch = 1, a.q_len = LQ, a.kv_len = LK;
    a.q = &q[0][0][0], a.q_strides = attn_strides_bhsd(HQ, LQ, D);
    a.k = &k[0][0][0], a.k_strides = attn_strides_bhsd(HKV, LK, D);
    a.v = &v[0][0][0], a.v_strides = attn_strides_bhsd(HKV, LK, D);
    a.out = &out[0][0][0], a.out_strides = attn_strides_bhsd(HQ, LQ, D);
    attn_status st = attn_forward(ctx, &a);
    attn_destroy(ctx);
    if (st != ATTN_OK) {
        fprintf(stderr, "attn_forward: %s\n", attn_status_str(st));
        return 1;
    }
    double worst = 0.0;
    for (int h = 0; h < HQ; h++)
        for (int i = 0; i < LQ; i++) {
            int last = i + LK - LQ; /* default offset: the last query sees the last key */
            double s[LK], m = -INFINITY, l = 0.0;
            for (int j = 0; j <= last; j++) {
                s[j] = 0.0;
                for (int d = 0; d < D; d++) s[j] += (double)q[h][i][d] * k[0][j][d];
                s[j] /= sqrt((double)D);
                m = s[j] > m ? s[j] : m;
            }
            for (int j = 0; j <= last; j++) l += exp(s[j] - m);
            for (int d = 0; d < D; d++) {
                double o = 0.0;
                for (int j = 0; j <= last; j++) o += exp(s[j] - m) / l * v[0][j][d];
                worst = fmax(worst, fabs(o - out[h][i][d]));
            }
        }
    int ok = worst < 1e-5 && attn_version() == ATTN_VERSION_NUMBER;
    printf("libattn %s (header %s): max error %.2g: %s\n", attn_version_string(),
           ATTN_VERSION_STRING, worst, ok ? "ok" : "WRONG");
    return ok ? 0 : 1;
}
