/* The C boundary of the CUDA kernels: plain launchers (kiln_cuda_<op>) called by the backend
 * (cuda.c) and the kernel tests. Every launcher enqueues on `stream` and returns the launch's
 * cudaError_t as an int (0 = ok); the caller checks it.
 *
 * Weight layouts the kernels read (made once at upload by the backend):
 *   - "tile-paired" q|k|v: within each head, 16-row tile j holds dims [8j, 8j+8) then
 *     [Dh/2 + 8j, Dh/2 + 8j + 8), so the two halves RoPE rotates together sit in one tile;
 *   - "tile-interleaved" gate|up: 16-row tile j holds gate rows [8j, 8j+8) then up rows
 *     [8j, 8j+8), so SwiGLU can run in the GEMV epilogue.
 * Activations: the residual stream x is f32 (n, d); FP8 activations are (n, K) e4m3 codes. */
#ifndef KILN_BACKEND_CUDA_KERNELS_H
#define KILN_BACKEND_CUDA_KERNELS_H

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct CUstream_st *kiln_stream;

/* Whether the kernels that run were compiled for sm_90 or later (common.cuh says more). */
bool kiln_cuda_hopper_code(void);

enum kiln_row_order { KILN_ROWS_PLAIN, KILN_ROWS_QKV_PAIRED, KILN_ROWS_GU_INTERLEAVED };

/* Kernel row r of a linear in the given order -> its row in the checkpoint's natural order
 * (f: intermediate size, for gate|up). */
static inline int64_t kiln_cuda_natural_row(enum kiln_row_order order, int64_t r, int head_dim,
                                            int64_t f)
{
    if (order == KILN_ROWS_QKV_PAIRED) {
        int64_t head = r / head_dim, i = r % head_dim, tile = i / 16, w = i % 16;
        int64_t dim = w < 8 ? 8 * tile + w : head_dim / 2 + 8 * tile + (w - 8);
        return head * head_dim + dim;
    }
    if (order == KILN_ROWS_GU_INTERLEAVED) {
        int64_t tile = r / 16, w = r % 16;
        return w < 8 ? 8 * tile + w : f + 8 * tile + (w - 8);
    }
    return r;
}

/* Paged KV cache of one layer (see backend.h): k, v (n_blocks, Hkv, block_size, Dh). */
struct kiln_cuda_kv {
    void *k, *v;
    int fp8; /* 1: e4m3 codes with k_scale / v_scale; 0: bf16 */
    float k_scale, v_scale;
    int n_kv_heads, head_dim, block_size;
};

/* The batch as the kernels see it (device pointers). */
struct kiln_cuda_batch {
    int n_tokens, n_seqs, max_blocks;
    const int32_t *tokens;      /* (n_tokens,) */
    const int32_t *positions;   /* (n_tokens,) */
    const int32_t *token_seq;   /* (n_tokens,) sequence of each token */
    const int32_t *seq_start;   /* (n_seqs + 1,) */
    const int32_t *kv_len;      /* (n_seqs,) */
    const int32_t *block_table; /* (n_seqs, max_blocks) */
};

enum kiln_gemv_epilogue {
    KILN_EPI_STORE,    /* y (n, ldy) = v */
    KILN_EPI_RESIDUAL, /* y (n, ldy) += v */
    KILN_EPI_SWIGLU,   /* h8 (n, M/2) = sat_e4m3(silu(gate) * up / h_scale), tile-interleaved W */
    KILN_EPI_ROPE_KV,  /* q (n, H, Dh) f32 rotated; k (rotated), v written to the cache */
};

/* Skinny GEMM for n <= 8 tokens on the tensor cores (m16n8k32 e4m3, or m16n8k16 bf16):
 *   v (n, M) = (xq (n, K) . W (M, K)) * out_scale, then the epilogue.
 * The activations xq come either from `xq` (FP8 codes / bf16, n rows) or, when `x` is set, from
 * RMSNorm of the f32 rows x[x_rows[t]] (or x[t]) with weight norm_w, quantized with in_scale
 * (FP8) or rounded to bf16 -- the CPU twin is kiln_cpu_rmsnorm + kiln_cpu_quant_fp8. */
#define KILN_TRACE_BLOCKS 512
#define KILN_TRACE_SLOTS  8 /* stamps a block: entry, wait done, end, marks 3..7 */
#define KILN_PF_PAST_RING (-1)

struct kiln_gemv_args {
    const void *w; /* (M, K) e4m3 or bf16 */
    int M, K, n;
    int bf16;
    const float *x;        /* prologue: f32 rows to normalize, row stride K */
    const int32_t *x_rows; /* optional gather of those rows (n,) */
    const uint16_t *norm_w;
    float eps;
    const void *xq; /* or: prepared activations (n, K) */
    float in_scale, out_scale;
    int epilogue;
    float *y;
    int ldy;
    uint8_t *h8;
    float h_scale;
    /* ROPE_KV */
    const float *rope; /* (max_pos, Dh/2, 2) */
    struct kiln_cuda_batch batch;
    struct kiln_cuda_kv kv;
    int n_heads;
    float *q; /* (n, H, Dh) */
    /* optional (KILN_TRACE): %globaltimer stamps per block (entry, wait done, end, phase
     * marks), for the first KILN_TRACE_BLOCKS blocks */
    unsigned long long *trace;
    /* optional: an L2 prefetch, a hint for the Hopper ring kernel (ignored elsewhere) that keeps
     * the weight stream going where it would pause. pf_w (pf_M, pf_K, pf_bf16) is the next
     * GEMV of the stream, at the same n: stages [pf_first, pf_first + pf_count) of each of its
     * blocks' streams are asked for once this block's own weights have all arrived;
     * pf_first KILN_PF_PAST_RING: the first stage past the ring that kernel fills before its
     * wait. */
    const void *pf_w;
    int pf_M, pf_K, pf_bf16, pf_first, pf_count;
};
int kiln_cuda_gemv(const struct kiln_gemv_args *a, kiln_stream stream);

/* x (n, d) f32 = embed[tokens] (bf16 rows). */
int kiln_cuda_embed(const uint16_t *embed, const int32_t *tokens, int n, int d, float *x,
                    kiln_stream stream);

/* RMSNorm of rows (gathered by rows when not NULL) -> FP8 codes (x8 with scale) or bf16 (xb). */
int kiln_cuda_rmsnorm_quant(const float *x, const int32_t *rows, const uint16_t *w, float eps,
                            int n, int d, float scale, uint8_t *x8, uint16_t *xb,
                            kiln_stream stream);

/* Prefill path after the q|k|v GEMM: qkv (n, (H + 2 Hkv) Dh) bf16 in tile-paired layout ->
 * q (n, H, Dh) f32 rotated, k rotated and v written to the cache. */
int kiln_cuda_rope_kv(const uint16_t *qkv, const float *rope, struct kiln_cuda_batch b,
                      struct kiln_cuda_kv kv, int n_heads, float *q, kiln_stream stream);

/* Prefill path after the gate|up GEMM: gu (n, 2f) bf16 tile-interleaved -> h8 (n, f). */
int kiln_cuda_swiglu_quant(const uint16_t *gu, int n, int f, float h_scale, uint8_t *h8,
                           kiln_stream stream);

/* Decode attention (flash-decoding) for the sequences listed in seqs (n_list,): each query
 * token of those sequences attends over its KV positions, in n_splits chunks of split_len
 * positions (chunks past a sequence's length are empty); with n_splits > 1 partial results go
 * to part (see attention.cu) and kiln_cuda_attention_combine finishes. A fixed split_len keeps
 * a sequence's result independent of the batch it runs in. Output: FP8 codes out8
 * (n_tokens, H Dh) with scale out_scale. trace: KILN_TRACE stamps, or NULL. */
int kiln_cuda_attention_decode(const float *q, struct kiln_cuda_batch b, const int32_t *seqs,
                               int n_list, int max_q_per_seq, struct kiln_cuda_kv kv, int n_heads,
                               int n_splits, int split_len, float *part, float out_scale,
                               uint8_t *out8, unsigned long long *trace, kiln_stream stream);
int kiln_cuda_attention_combine(const float *part, struct kiln_cuda_batch b, const int32_t *seqs,
                                int n_list, int max_q_per_seq, int n_heads, int head_dim,
                                int n_splits, float v_scale, float out_scale, uint8_t *out8,
                                kiln_stream stream);
/* The same on f16 (FP8 cache) or bf16 (BF16 cache) tensor cores, for steps of more than 8 tokens:
 * Q and the softmax weights are rounded to f16 / bf16 (the prefill kernel's precision), so it is
 * not bit-close to the CPU twin like attention_decode. Single-token rows only (max_q_per_seq 1),
 * n_heads / n_kv_heads <= 16, head_dim 64 or 128, split_len <= 4096; else cudaErrorInvalidValue.
 * Writes out8 or the same `part` layout (finished by attention_combine). */
int kiln_cuda_attention_decode_tc(const float *q, struct kiln_cuda_batch b, const int32_t *seqs,
                                  int n_list, int max_q_per_seq, struct kiln_cuda_kv kv,
                                  int n_heads, int n_splits, int split_len, float *part,
                                  float out_scale, uint8_t *out8, kiln_stream stream);
/* Floats of `part` needed by attention_decode. */
long kiln_cuda_attention_part_floats(int n_list, int max_q_per_seq, int n_heads, int head_dim,
                                     int n_splits);

/* Prefill attention (FlashAttention-2 style on bf16 tensor cores) for the sequences listed in
 * seqs, whose chunks are up to max_q tokens long. Output as attention_decode. */
int kiln_cuda_attention_prefill(const float *q, struct kiln_cuda_batch b, const int32_t *seqs,
                                int n_list, int max_q, struct kiln_cuda_kv kv, int n_heads,
                                float out_scale, uint8_t *out8, kiln_stream stream);

/* ---- sampling (sample.cu; the CPU twin is kiln_sample_row, runtime/sampler.h) ----
 * One block of KILN_CUDA_SAMPLE_THREADS threads per row runs sampler.h's steps 1-8 for every row
 * of a step in one launch. Its arguments are one buffer: n rows of struct kiln_cuda_sample_row,
 * then the rows' lists (and allowed-token masks) as int32 words, packed on the host by
 * kiln_cuda_sample_pack (so a step costs one copy in and one copy of the results out). */
#define KILN_CUDA_SAMPLE_THREADS 1024
#define KILN_CUDA_MAX_LOGPROBS   20 /* = KILN_MAX_LOGPROBS (checked in sample_pack.c) */

/* int32 words per list entry, the kernel's "saved" word included */
#define KILN_CUDA_SAMPLE_HIST_WORDS   4
#define KILN_CUDA_SAMPLE_BIAS_WORDS   3
#define KILN_CUDA_SAMPLE_BANNED_WORDS 2

struct kiln_cuda_sample_row {
    uint64_t seed, step;
    float temperature, top_p, min_p;
    float presence_penalty, frequency_penalty, repetition_penalty;
    int32_t greedy; /* temperature < KILN_GREEDY_TEMPERATURE, decided on the host */
    int32_t top_k, n_logprobs;
    /* word offsets into the list area and entry counts; each entry ends with a word the kernel
     * uses to save the logit it modifies (restored before it returns) */
    int32_t hist, n_hist;     /* (id, out_count, in_prompt, saved) x n_hist */
    int32_t bias, n_bias;     /* (id, value as float bits, saved) x n_bias */
    int32_t banned, n_banned; /* (id, saved) x n_banned */
    int32_t mask;             /* offset of the allowed-token bitmask ((vocab + 31) / 32 words,
                                 as kiln_sampling.mask), -1: every token allowed */
};

/* What the kernel writes per row; the same layout as struct kiln_sample_out (checked). */
struct kiln_cuda_sample_out {
    int32_t token;
    float logprob;
    int32_t n_top;
    int32_t top_ids[KILN_CUDA_MAX_LOGPROBS];
    float top_logprobs[KILN_CUDA_MAX_LOGPROBS];
};

struct kiln_sampling; /* backend/backend.h */

/* Bytes of the argument buffer for params (n,) over a vocabulary of vocab ids. The history list
 * is left out of rows without penalties (it changes nothing there); only rows with a mask carry
 * one. */
size_t kiln_cuda_sample_args_bytes(const struct kiln_sampling *params, int n, int vocab);
/* Writes params (n,) into buf (kiln_cuda_sample_args_bytes(params, n, vocab) bytes). */
void kiln_cuda_sample_pack(const struct kiln_sampling *params, int n, int vocab, void *buf);

/* Step 1 (the raw row's logsumexp and argmax) of a row in KILN_CUDA_SAMPLE_CHUNKS pieces, each
 * read by its own block before the sampler runs (one block reading a whole row took 28 us at
 * 128K logits on an H100) */
#define KILN_CUDA_SAMPLE_CHUNKS     64
#define KILN_CUDA_SAMPLE_SPLIT_ROWS 16 /* steps of more rows read each row in one block */
struct kiln_cuda_sample_part {
    float m, s; /* running max and sum of exp(x - m) */
    float v;    /* the largest logit (NaN as -inf) */
    int32_t i;  /* its first id */
};

/* logits (n, vocab) f32 -> out (n,): token, its log-probability and the top alternatives, as
 * kiln_sample_row. args: the packed buffer, on the device (the kernel writes its "saved" words).
 * parts: n * KILN_CUDA_SAMPLE_CHUNKS of scratch for the split first pass (used for at most
 * KILN_CUDA_SAMPLE_SPLIT_ROWS rows), or NULL (one block reads each row). The logits are modified
 * while the kernel runs (penalties applied in place) and restored bit for bit before it ends. */
int kiln_cuda_sample(float *logits, int n, int vocab, void *args,
                     struct kiln_cuda_sample_part *parts, struct kiln_cuda_sample_out *out,
                     kiln_stream stream);

/* y (n,) = sat_e4m3(x / scale) (computed as x * (1 / scale), as the CPU twin). */
int kiln_cuda_quant_fp8(const float *x, long n, float scale, uint8_t *y, kiln_stream stream);

/* Streams bytes of buf (blocks x 512 threads, 16-byte loads): the read-bandwidth probe. */
int kiln_cuda_read(const void *buf, size_t bytes, unsigned *sink, int blocks, kiln_stream stream);

#ifdef __cplusplus
}
#endif

#endif
