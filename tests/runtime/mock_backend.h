/* A backend for testing the engine without a model: its "KV cache" stores the token id and
 * position written into every slot, and the logits of a row are a hash of the whole context
 * read back through the block table. A wrong block table, a block handed to two sequences, a
 * shared block overwritten or a stale slot changes the output or fails the forward, so engine
 * tests that compare outputs across schedules check the paging too. Sampling is
 * kiln_sample_row, as on the CPU backend.
 *
 * A script makes the output exact: script(ctx, n, arg) sees the context read back (n tokens)
 * and returns a token that gets MOCK_SCRIPT_BOOST added to its logit (or -1: none), so every
 * sampler setting that keeps the best token (temperature <= 1, any top_k/top_p/min_p) draws it
 * unless a bias, penalty or ban removes it. */
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
    int32_t (*script)(const int32_t *ctx, int n, void *arg);
    void *script_arg;
    int32_t *ctx; /* (max_seq_len,) the context of the row being computed */
};

#define MOCK_SCRIPT_BOOST 60.0f

/* The mock's logits for a context of n tokens (before any script boost): values in [-4, 4). */
void mock_logits(const int32_t *ctx, int n, int vocab, float *row);

struct mock_backend *mock_create(int vocab, int n_blocks, int block_size, int max_seqs,
                                 int max_tokens, int max_seq_len, const int32_t *eos, int n_eos);

#endif
