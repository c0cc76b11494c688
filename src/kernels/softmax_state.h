/*
 * The online-softmax state of one query row and its algebra, in one place: the kernels' scalar
 * tails, the split-key fold and every later consumer of partial results (merge, backward) use
 * these functions, so the rescaling rules are written once.
 *
 * A row that has seen scores s_j (after bias and mask) keeps
 *   m = max_j s_j,   l = Σ_j exp(s_j - m),   u = Σ_j exp(s_j - m) (s_j - m),
 * from which lse = m + ln l and entropy = ln l - u / l. When the maximum moves from m to m',
 * l and u rescale by alpha = exp(m - m'), u also shifting by (m - m') l.
 */
#ifndef ATTN_KERNELS_SOFTMAX_STATE_H
#define ATTN_KERNELS_SOFTMAX_STATE_H

#include <math.h>

typedef struct attn_row_state {
    float m; /* running max of the visible scores; -inf while none was seen */
    float l; /* sum of exp(score - m); 0 exactly when no visible score was seen */
    float u; /* sum of exp(score - m) * (score - m): gives the entropy ln(l) - u / l */
} attn_row_state;

static inline attn_row_state attn_state_empty(void)
{
    attn_row_state st = {-INFINITY, 0.0f, 0.0f};
    return st;
}

/*
 * First half of an online step, once the block's maximum is known: *m_new is the new running
 * maximum and *alpha the factor that rescales what was accumulated so far. Returns the shift to
 * subtract from the block's scores before exp. While nothing is visible the shift is 0, not
 * -inf, so hidden keys still give exp(-inf) = 0 and a NaN score still reaches the sum: a row of
 * NaNs is never mistaken for a masked row.
 */
static inline float attn_state_begin(const attn_row_state *st, float block_max, float *m_new,
                                     float *alpha)
{
    float m = st->m > block_max ? st->m : block_max;
    float shift = m == -INFINITY ? 0.0f : m;
    *m_new = m;
    *alpha = expf(st->m - shift);
    return shift;
}

/* Second half: folds the block's Σ exp(s - shift) and Σ exp(s - shift)(s - shift) in. */
static inline void attn_state_end(attn_row_state *st, float m_new, float alpha, float sum,
                                  float usum, int entropy)
{
    if (entropy)
        st->u = (st->l != 0.0f ? alpha * (st->u + (st->m - m_new) * st->l) : 0.0f) + usum;
    st->l = alpha * st->l + sum;
    st->m = m_new;
}

/* What attn_state_merge did, and so what the caller does with the accumulators. */
typedef enum attn_merge_kind {
    ATTN_MERGE_KEEP,  /* the part saw no key: nothing changes */
    ATTN_MERGE_TAKE,  /* the carry saw no key: it became the part; copy the part's accumulator */
    ATTN_MERGE_BLEND  /* acc_carry = *a_carry * acc_carry + *a_part * acc_part */
} attn_merge_kind;

/* carry (+) part: the two-way case of the online update, for results over disjoint keys. */
static inline attn_merge_kind attn_state_merge(attn_row_state *carry, const attn_row_state *part,
                                               float *a_carry, float *a_part)
{
    if (part->l == 0.0f)
        return ATTN_MERGE_KEEP;
    if (carry->l == 0.0f) {
        *carry = *part;
        return ATTN_MERGE_TAKE;
    }
    float m = carry->m > part->m ? carry->m : part->m;
    float ac = expf(carry->m - m), ap = expf(part->m - m);
    carry->u = ac * (carry->u + (carry->m - m) * carry->l) + ap * (part->u + (part->m - m) * part->l);
    carry->l = ac * carry->l + ap * part->l;
    carry->m = m;
    *a_carry = ac;
    *a_part = ap;
    return ATTN_MERGE_BLEND;
}

#endif
