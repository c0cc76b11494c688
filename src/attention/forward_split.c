/*
 * The split-key path of the forward, for decoding-like shapes (few queries, many keys, no
 * weights): the rows of a kv head's whole query group form one task matrix (K and V are read
 * once for the group), the keys are cut into chunks of ATTN_SPLIT_KEYS, chunks run in parallel
 * into partial results, and each group's partials are folded through the online-softmax merge
 * strictly in chunk order, so the result does not depend on the thread count.
 */
#include <string.h>

#include "attention/forward.h"
#include "engine/tiles.h"

typedef struct split_job {
    attn_forward_call *c;
    attn_forward_workspace *fw;
    int64_t group_rows;  /* rows of one kv head's group: group * q_len */
    int64_t row_sets;    /* tasks per (batch, kv head): ceil(group_rows / ATTN_GROUP_ROWS) */
    int64_t chunks;      /* key chunks per row set */
    int64_t first_item;  /* first item of the current wave */
} split_job;

/* Item = (batch, kv head, row set, chunk), chunk fastest. */
typedef struct split_item_at {
    int64_t b, g, rs, chunk, rows;
} split_item_at;

static split_item_at locate(const split_job *job, int64_t item)
{
    int64_t Hkv = job->c->p.ctx->desc.kv_heads;
    split_item_at at;
    int64_t set = item / job->chunks, bg = set / job->row_sets;
    at.chunk = item % job->chunks;
    at.rs = set % job->row_sets;
    at.b = bg / Hkv;
    at.g = bg % Hkv;
    at.rows = job->group_rows - at.rs * ATTN_GROUP_ROWS;
    at.rows = at.rows < ATTN_GROUP_ROWS ? at.rows : ATTN_GROUP_ROWS;
    return at;
}

static void split_item(void *arg, int64_t k, attn_scratch *w)
{
    const split_job *job = arg;
    const attn_problem *p = &job->c->p;
    split_item_at at = locate(job, job->first_item + k);
    attn_task t;
    attn_task_group(p, w, &t, at.b, at.g, at.rs * ATTN_GROUP_ROWS, at.rows);
    attn_partial *slot = &job->fw->slots[k];
    attn_online_range(p, &t, at.chunk * ATTN_SPLIT_KEYS, (at.chunk + 1) * ATTN_SPLIT_KEYS,
                      slot->state, slot->acc);
}

/* carry = carry (+) part for `rows` rows. */
static void fold_partial(attn_partial *carry, const attn_partial *part, int64_t rows, int64_t dv)
{
    for (int64_t r = 0; r < rows; r++) {
        float *ca = carry->acc + r * dv;
        const float *pa = part->acc + r * dv;
        float ac, ap;
        switch (attn_state_merge(&carry->state[r], &part->state[r], &ac, &ap)) {
        case ATTN_MERGE_KEEP:
            break;
        case ATTN_MERGE_TAKE:
            memcpy(ca, pa, (size_t)dv * sizeof *ca);
            break;
        case ATTN_MERGE_BLEND:
            for (int64_t d = 0; d < dv; d++)
                ca[d] = ac * ca[d] + ap * pa[d];
            break;
        }
    }
}

void attn_forward_split(attn_forward_call *c, attn_engine_section *s)
{
    attn_ctx *ctx = s->ctx;
    const attn_problem *p = &c->p;
    int64_t dv = ctx->desc.v_dim;
    split_job job;
    job.c = c;
    job.fw = ctx->op_state[attn_op_slot(ATTN_OP_FORWARD)];
    job.group_rows = (int64_t)ctx->group * p->q_len;
    job.row_sets = attn_tiles(job.group_rows, ATTN_GROUP_ROWS);
    job.chunks = attn_tiles(p->kv_len, ATTN_SPLIT_KEYS);
    int64_t total = p->batch * ctx->desc.kv_heads * job.row_sets * job.chunks;
    int64_t nslots = job.fw->nslots;
    attn_partial *carry = &job.fw->carry;
    attn_scratch *w0 = &ctx->scratch[0];
    /* Waves of as many chunks as there are slots; the fold walks each row set's chunks in
     * order, carrying a row set that spans two waves, so wave boundaries change nothing. */
    for (int64_t first = 0; first < total; first += nslots) {
        int64_t n = total - first < nslots ? total - first : nslots;
        job.first_item = first;
        attn_engine_run(s, split_item, &job, n);
        for (int64_t k = 0; k < n; k++) {
            split_item_at at = locate(&job, first + k);
            if (at.chunk == 0)
                for (int64_t r = 0; r < at.rows; r++)
                    carry->state[r] = attn_state_empty();
            fold_partial(carry, &job.fw->slots[k], at.rows, dv);
            if (at.chunk == job.chunks - 1) {
                attn_task_group_rows(p, w0, at.g, at.rs * ATTN_GROUP_ROWS, at.rows);
                attn_forward_finish_rows(c, at.b, w0, at.rows, carry->state, carry->acc);
            }
        }
    }
}
