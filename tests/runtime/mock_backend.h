/* A backend for testing the engine without a model: its "KV cache" stores the token id and
 * position written into every slot, and the logits of a row are a hash of the whole context
 * read back through the block table. A wrong block table, a block handed to two sequences, a
 * shared block overwritten or a stale slot changes the output or fails the forward, so engine
 * tests that compare outputs across schedules check the paging too. Sampling is
 * kiln_sample_row, as on the CPU backend. */
#ifndef KILN_TESTS_RUNTIME_MOCK_BACKEND_H
#define KILN_TESTS_RUNTIME_MOCK_BACKEND_H

#include <stdbool.h>

#include "backend/backend.h"

struct mock_backend {
    struct kiln_backend base;
    struct kiln_model model;
    int32_t *slot_tok, *slot_pos; /* (n_blocks * block_size,) -1 while never written */
    float *logits;                /* (max_seqs, vocab) */
    float *scratch;               /* (2 vocab) */
    int n_out;
    /* what the engine asked for, for the tests to check */
    int forwards, max_tokens_seen, max_seqs_seen, multi_seq_forwards;
    int fail_at; /* the forward (1-based) that fails; 0: none */
};

struct mock_backend *mock_create(int vocab, int n_blocks, int block_size, int max_seqs,
                                 int max_tokens, int max_seq_len, const int32_t *eos, int n_eos);

#endif
