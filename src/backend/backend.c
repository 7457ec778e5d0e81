#include "backend.h"

void kiln_backend_options_default(struct kiln_backend_options *opt)
{
    *opt = (struct kiln_backend_options){
        .kv_dtype = KILN_DTYPE_BF16,
        .block_size = 16,
        .n_blocks = 0,
        .kv_memory_fraction = 0.90f,
        .max_tokens = 2048,
        .max_seqs = 8,
        .max_seq_len = 2560,
        .n_threads = 0,
        .device = 0,
        .cuda_graphs = true,
    };
}

enum kiln_status kiln_batch_check(const struct kiln_backend *b, const struct kiln_batch *batch,
                                  struct kiln_error *err)
{
    const struct kiln_config *cfg = &b->model->cfg;
    if (batch->n_tokens <= 0 || batch->n_tokens > b->opt.max_tokens)
        return kiln_errorf(err, KILN_ERR_LIMIT, "batch of %d tokens (limit %d)", batch->n_tokens,
                           b->opt.max_tokens);
    if (batch->n_seqs <= 0 || batch->n_seqs > b->opt.max_seqs || batch->n_out > b->opt.max_seqs)
        return kiln_errorf(err, KILN_ERR_LIMIT, "batch of %d sequences (limit %d)", batch->n_seqs,
                           b->opt.max_seqs);
    for (int t = 0; t < batch->n_tokens; t++) {
        if (batch->tokens[t] < 0 || batch->tokens[t] >= cfg->vocab_size)
            return kiln_errorf(err, KILN_ERR_INVALID, "token id %d outside the vocabulary (%d)",
                               batch->tokens[t], cfg->vocab_size);
        if (batch->positions[t] < 0 || batch->positions[t] >= b->opt.max_seq_len)
            return kiln_errorf(err, KILN_ERR_LIMIT, "position %d beyond max_seq_len %d",
                               batch->positions[t], b->opt.max_seq_len);
    }
    for (int s = 0; s < batch->n_seqs; s++) {
        int last = batch->seq_start[s + 1] - 1;
        if (last < batch->seq_start[s] ||
            batch->kv_len[s] > batch->max_blocks * b->opt.block_size ||
            batch->kv_len[s] != batch->positions[last] + 1)
            return kiln_errorf(err, KILN_ERR_INTERNAL, "sequence %d of the batch is malformed", s);
        for (int i = 0; i < (batch->kv_len[s] + b->opt.block_size - 1) / b->opt.block_size; i++) {
            int blk = batch->block_table[(size_t)s * batch->max_blocks + i];
            if (blk < 0 || blk >= b->opt.n_blocks)
                return kiln_errorf(err, KILN_ERR_INTERNAL, "block %d outside the pool (%d)", blk,
                                   b->opt.n_blocks);
        }
    }
    for (int i = 0; i < batch->n_out; i++)
        if (batch->out_rows[i] < 0 || batch->out_rows[i] >= batch->n_tokens)
            return kiln_errorf(err, KILN_ERR_INTERNAL, "output row %d outside the batch",
                               batch->out_rows[i]);
    return KILN_OK;
}
