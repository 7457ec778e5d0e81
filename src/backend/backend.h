/* The backend interface: one forward pass over a batch that mixes prompt chunks and decode
 * tokens, reading and writing a paged KV cache, then sampling. Two implementations compute the
 * same function: cpu/ (the reference, fp32 math with the GPU's FP8 rounding) and cuda/.
 *
 * Paged KV cache: a pool of n_blocks blocks per layer; a block holds block_size consecutive
 * positions of one sequence for every KV head. Layout per layer, for K and for V:
 *   pool (n_blocks, Hkv, block_size, Dh)   in kv_dtype (F8E4M3 with the layer's k/v scale, BF16)
 * A sequence's block table lists its blocks in position order: position p lives in block
 * table[p / block_size], slot p % block_size. The runtime owns block allocation; the backend
 * only reads and writes where the tables say. */
#ifndef KILN_BACKEND_BACKEND_H
#define KILN_BACKEND_BACKEND_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "model/model.h"

#define KILN_MAX_LOGPROBS 20

struct kiln_batch {
    int n_tokens;             /* tokens in this step, all sequences */
    const int32_t *tokens;    /* (n_tokens,) token ids */
    const int32_t *positions; /* (n_tokens,) absolute position of each token */
    int n_seqs;
    const int32_t *seq_start; /* (n_seqs + 1,) token offsets; sequence s owns
                                 tokens [seq_start[s], seq_start[s+1]) with consecutive positions */
    const int32_t *kv_len;    /* (n_seqs,) KV positions valid after this step = last position + 1 */
    const int32_t *block_table; /* (n_seqs, max_blocks) */
    int max_blocks;
    int n_out;               /* rows that need logits */
    const int32_t *out_rows; /* (n_out,) token indices into tokens[] */
};

/* Sampling of one output row. The same parameters give the same token on both backends and
 * whether the row is alone or in a batch: the random draw depends only on (seed, step). */
struct kiln_sampling {
    float temperature; /* 0: greedy */
    int top_k;         /* <= 0: off */
    float top_p;       /* 1: off */
    float min_p;       /* 0: off */
    uint64_t seed;
    uint64_t step; /* index of the token being drawn in its sequence */
    float presence_penalty, frequency_penalty, repetition_penalty; /* 0, 0, 1: off */
    /* Tokens seen so far (unique ids): count in the output, and whether in the prompt. */
    const int32_t *hist_ids;
    const int32_t *hist_out_count;
    const uint8_t *hist_in_prompt;
    int n_hist;
    const int32_t *bias_ids; /* logit_bias */
    const float *bias_vals;
    int n_bias;
    const int32_t *banned_ids; /* set to -inf (eos and stop ids while under min_tokens) */
    int n_banned;
    /* Allowed tokens (structured output), NULL: all. (vocab + 31) / 32 words; token t is
     * allowed when bit (t & 31) of mask[t >> 5] is set; the others are set to -inf like banned
     * ids (the raw logprobs are unaffected). */
    const uint32_t *mask;
    int n_logprobs; /* top alternatives to report, 0..KILN_MAX_LOGPROBS */
};

struct kiln_sample_out {
    int32_t token;
    float logprob; /* of token under the model's raw distribution (log_softmax of logits) */
    int n_top;
    int32_t top_ids[KILN_MAX_LOGPROBS];
    float top_logprobs[KILN_MAX_LOGPROBS];
};

struct kiln_backend_options {
    enum kiln_dtype kv_dtype; /* KILN_DTYPE_F8E4M3, KILN_DTYPE_BF16 (CPU also F32) */
    int block_size;           /* positions per KV block */
    int n_blocks;             /* KV pool size; 0: derive from kv_memory_fraction */
    float kv_memory_fraction; /* CUDA: share of free memory for the KV pool after weights */
    int max_tokens;           /* most tokens per forward (max_num_tokens) */
    int max_seqs;             /* most sequences per forward (max_batch_size) */
    int max_seq_len;          /* longest sequence (sizes block tables and RoPE tables) */
    int n_threads;            /* CPU: 0 = all cores */
    int device;               /* CUDA device ordinal */
    bool cuda_graphs;         /* CUDA: capture decode steps */
    bool profile;             /* CUDA: time every op (no graphs); see ops->report */
    /* CUDA: every row's result independent of the rest of the batch (one GEMM path, and one
     * cuBLASLt algorithm per weight shape, for every step size; no fused decode path, so
     * batch-1 decode is slower). The CPU backend is batch-invariant anyway. */
    bool batch_invariant;
    int n_layers; /* run only the first n layers (0: all, < 0: none): tests */
};

struct kiln_backend;

struct kiln_backend_ops {
    const char *name;
    /* Runs the model over batch, writing its K/V into the cache and keeping the logits of
     * batch->out_rows for sample / read_logits. */
    enum kiln_status (*forward)(struct kiln_backend *b, const struct kiln_batch *batch,
                                struct kiln_error *err);
    /* Copies the last forward's logits to the host: dst (n_out, vocab) f32. */
    enum kiln_status (*read_logits)(struct kiln_backend *b, float *dst, struct kiln_error *err);
    /* Samples one token for each of the last forward's n_out rows. */
    enum kiln_status (*sample)(struct kiln_backend *b, const struct kiln_sampling *params, int n,
                               struct kiln_sample_out *out, struct kiln_error *err);
    void (*free)(struct kiln_backend *b);
    /* Optional (NULL on the CPU): writes the per-op time of the steps run since the last call
     * (needs opt.profile) into buf and starts over. */
    void (*report)(struct kiln_backend *b, char *buf, size_t cap);
};

struct kiln_backend {
    const struct kiln_backend_ops *ops;
    const struct kiln_model *model;
    struct kiln_backend_options opt; /* as resolved: n_blocks is the real pool size */
    uint64_t kv_bytes;               /* KV pool bytes */
    void *impl;
};

void kiln_backend_options_default(struct kiln_backend_options *opt);
/* The checks every backend's forward runs first: token ids in the vocabulary, positions and
 * sizes within the backend's limits, sequences well formed, block ids inside the pool, output
 * rows inside the batch. */
enum kiln_status kiln_batch_check(const struct kiln_backend *b, const struct kiln_batch *batch,
                                  struct kiln_error *err);
enum kiln_status kiln_backend_cpu_create(const struct kiln_model *m,
                                         const struct kiln_backend_options *opt,
                                         struct kiln_backend **out, struct kiln_error *err);
/* Fails with a message when kiln was built without CUDA or no GPU is visible. */
enum kiln_status kiln_backend_cuda_create(const struct kiln_model *m,
                                          const struct kiln_backend_options *opt,
                                          struct kiln_backend **out, struct kiln_error *err);
bool kiln_cuda_available(void);
/* The physical limits of the GPU, measured: read bandwidth of a large buffer (GB/s) and a large
 * cuBLASLt FP8 GEMM (TFLOP/s), for reporting speed as a share of what the chip can do. */
enum kiln_status kiln_cuda_measure_limits(int device, double *read_gbs, double *fp8_tflops,
                                          struct kiln_error *err);
/* Device memory in use (all processes, context included) and total, in bytes. */
enum kiln_status kiln_cuda_memory(int device, uint64_t *used, uint64_t *total,
                                  struct kiln_error *err);

static inline void kiln_backend_free(struct kiln_backend *b)
{
    if (b) b->ops->free(b);
}

#endif
