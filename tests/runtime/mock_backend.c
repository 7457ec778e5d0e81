/* The engine's test backend (see mock_backend.h). */
#include "mock_backend.h"

#include <stdlib.h>
#include <string.h>

#include "runtime/sampler.h"

static int find_seq(const struct kiln_batch *b, int row)
{
    for (int s = 0; s < b->n_seqs; s++)
        if (row >= b->seq_start[s] && row < b->seq_start[s + 1]) return s;
    return -1;
}

static enum kiln_status check(struct mock_backend *m, const struct kiln_batch *b,
                              struct kiln_error *err)
{
    const struct kiln_backend_options *o = &m->base.opt;
    if (b->n_tokens <= 0 || b->n_tokens > o->max_tokens || b->n_seqs <= 0 ||
        b->n_seqs > o->max_seqs || b->n_out > b->n_seqs || b->seq_start[0] != 0 ||
        b->seq_start[b->n_seqs] != b->n_tokens)
        return kiln_errorf(err, KILN_ERR_INTERNAL, "mock: malformed batch");
    for (int s = 0; s < b->n_seqs; s++) {
        int first = b->seq_start[s], last = b->seq_start[s + 1] - 1;
        if (last < first || b->kv_len[s] != b->positions[last] + 1 ||
            b->kv_len[s] > b->max_blocks * o->block_size || b->kv_len[s] > o->max_seq_len)
            return kiln_errorf(err, KILN_ERR_INTERNAL, "mock: sequence %d malformed", s);
        for (int t = first; t <= last; t++)
            if (b->positions[t] != b->positions[first] + (t - first) || b->tokens[t] < 0 ||
                b->tokens[t] >= m->model.cfg.vocab_size)
                return kiln_errorf(err, KILN_ERR_INTERNAL, "mock: token %d malformed", t);
        for (int i = 0; i * o->block_size < b->kv_len[s]; i++) {
            int blk = b->block_table[(size_t)s * b->max_blocks + i];
            if (blk < 0 || blk >= o->n_blocks)
                return kiln_errorf(err, KILN_ERR_INTERNAL, "mock: block %d outside the pool", blk);
        }
    }
    for (int i = 0; i < b->n_out; i++) {
        int s = find_seq(b, b->out_rows[i]);
        if (s < 0 || b->out_rows[i] != b->seq_start[s + 1] - 1)
            return kiln_errorf(err, KILN_ERR_INTERNAL, "mock: output row %d is not a last token",
                               b->out_rows[i]);
    }
    return KILN_OK;
}

void mock_logits(const int32_t *ctx, int n, int vocab, float *row)
{
    uint64_t h = 0x1234;
    for (int p = 0; p < n; p++) h = kiln_splitmix64(h ^ (uint64_t)ctx[p]);
    for (int v = 0; v < vocab; v++)
        row[v] = (float)(kiln_splitmix64(h + (uint64_t)v) >> 40) * 0x1p-24f * 8.0f - 4.0f;
}

static size_t slot_of(const struct kiln_batch *b, int s, int pos, int bs)
{
    return (size_t)b->block_table[(size_t)s * b->max_blocks + pos / bs] * bs + pos % bs;
}

static enum kiln_status mock_forward(struct kiln_backend *base, const struct kiln_batch *b,
                                     struct kiln_error *err)
{
    struct mock_backend *m = (struct mock_backend *)base;
    m->forwards++;
    if (b->n_tokens > m->max_tokens_seen) m->max_tokens_seen = b->n_tokens;
    if (b->n_seqs > m->max_seqs_seen) m->max_seqs_seen = b->n_seqs;
    m->multi_seq_forwards += b->n_seqs > 1;
    if (m->fail_at && m->forwards == m->fail_at)
        return kiln_errorf(err, KILN_ERR_CUDA, "mock: injected failure at forward %d", m->forwards);
    enum kiln_status st = check(m, b, err);
    if (st) return st;
    int bs = base->opt.block_size, vocab = m->model.cfg.vocab_size;
    for (int s = 0; s < b->n_seqs; s++)
        for (int t = b->seq_start[s]; t < b->seq_start[s + 1]; t++) {
            size_t slot = slot_of(b, s, b->positions[t], bs);
            m->slot_tok[slot] = b->tokens[t];
            m->slot_pos[slot] = b->positions[t];
        }
    for (int i = 0; i < b->n_out; i++) {
        int s = find_seq(b, b->out_rows[i]);
        for (int p = 0; p < b->kv_len[s]; p++) {
            size_t slot = slot_of(b, s, p, bs);
            if (m->slot_pos[slot] != p)
                return kiln_errorf(err, KILN_ERR_INTERNAL,
                                   "mock: position %d of sequence %d reads a slot holding "
                                   "position %d",
                                   p, s, m->slot_pos[slot]);
            m->ctx[p] = m->slot_tok[slot];
        }
        float *row = m->logits + (size_t)i * vocab;
        mock_logits(m->ctx, b->kv_len[s], vocab, row);
        int32_t t = m->script ? m->script(m->ctx, b->kv_len[s], m->script_arg) : -1;
        if (t >= 0 && t < vocab) row[t] += MOCK_SCRIPT_BOOST;
    }
    m->n_out = b->n_out;
    return KILN_OK;
}

static enum kiln_status mock_read_logits(struct kiln_backend *base, float *dst,
                                         struct kiln_error *err)
{
    struct mock_backend *m = (struct mock_backend *)base;
    (void)err;
    memcpy(dst, m->logits, (size_t)m->n_out * m->model.cfg.vocab_size * sizeof(float));
    return KILN_OK;
}

static enum kiln_status mock_sample(struct kiln_backend *base, const struct kiln_sampling *p, int n,
                                    struct kiln_sample_out *out, struct kiln_error *err)
{
    struct mock_backend *m = (struct mock_backend *)base;
    int vocab = m->model.cfg.vocab_size;
    if (n != m->n_out)
        return kiln_errorf(err, KILN_ERR_INTERNAL, "mock: %d rows sampled, %d computed", n,
                           m->n_out);
    for (int i = 0; i < n; i++)
        kiln_sample_row(m->logits + (size_t)i * vocab, vocab, &p[i], m->scratch, &out[i]);
    return KILN_OK;
}

static void mock_free(struct kiln_backend *base)
{
    struct mock_backend *m = (struct mock_backend *)base;
    free(m->slot_tok);
    free(m->slot_pos);
    free(m->logits);
    free(m->scratch);
    free(m->ctx);
    free(m);
}

static const struct kiln_backend_ops mock_ops = {
    .name = "mock",
    .forward = mock_forward,
    .read_logits = mock_read_logits,
    .sample = mock_sample,
    .free = mock_free,
};

struct mock_backend *mock_create(int vocab, int n_blocks, int block_size, int max_seqs,
                                 int max_tokens, int max_seq_len, const int32_t *eos, int n_eos)
{
    struct mock_backend *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->model.cfg.vocab_size = vocab;
    for (int i = 0; i < n_eos; i++) m->model.cfg.eos_token_ids[i] = eos[i];
    m->model.cfg.n_eos = n_eos;
    m->base.ops = &mock_ops;
    m->base.model = &m->model;
    kiln_backend_options_default(&m->base.opt);
    m->base.opt.n_blocks = n_blocks;
    m->base.opt.block_size = block_size;
    m->base.opt.max_seqs = max_seqs;
    m->base.opt.max_tokens = max_tokens;
    m->base.opt.max_seq_len = max_seq_len;
    size_t slots = (size_t)n_blocks * block_size;
    m->slot_tok = malloc(slots * sizeof *m->slot_tok);
    m->slot_pos = malloc(slots * sizeof *m->slot_pos);
    m->logits = malloc((size_t)max_seqs * vocab * sizeof *m->logits);
    m->scratch = malloc(2 * (size_t)vocab * sizeof *m->scratch);
    m->ctx = malloc((size_t)max_seq_len * sizeof *m->ctx);
    if (!m->slot_tok || !m->slot_pos || !m->logits || !m->scratch || !m->ctx) {
        mock_free(&m->base);
        return NULL;
    }
    memset(m->slot_tok, 0xff, slots * sizeof *m->slot_tok);
    memset(m->slot_pos, 0xff, slots * sizeof *m->slot_pos);
    return m;
}
