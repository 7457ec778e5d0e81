/* The CUDA backend's device memory, computed without a GPU: `create` (cuda.c) sizes every
 * allocation from this plan, and `kiln build` prints it and checks it against the GPU (or
 * --gpu-memory), so the plan and the real allocations cannot drift apart.
 *
 * Header-only because it is needed by builds without CUDA too (kiln build on a CPU machine),
 * where none of the .c files of backend/cuda is compiled. */
#ifndef KILN_BACKEND_CUDA_PLAN_H
#define KILN_BACKEND_CUDA_PLAN_H

#include <stdint.h>

#include "backend/backend.h"
#include "kernels.h"
#include "model/model.h"

#define KILN_CUDA_DECODE_MAX_TOKENS 8   /* steps of at most this many tokens take the fused path */
#define KILN_CUDA_SPLIT_LEN         256 /* positions per flash-decoding split */
#define KILN_CUDA_LT_WORKSPACE      (64u << 20) /* cuBLASLt workspace */
/* Left free when the KV pool is sized from free memory: decode graphs, cuBLASLt internals,
 * fragmentation. */
#define KILN_CUDA_RESERVE (256ull << 20)
/* Sampler lists the plan holds per row (the argument buffer grows past them, see cuda_sample):
 * a penalty history of a whole sequence of distinct tokens, the server's 1024 logit_bias
 * entries, and 256 banned ids (eos and stop ids under min_tokens). */
#define KILN_CUDA_SAMPLE_BIAS   1024
#define KILN_CUDA_SAMPLE_BANNED 256
/* The CUDA context, kernel images and cuBLASLt handle (not allocated by create, but not free
 * for it either): measured ~0.5 GiB on H100 with CUDA 12 / 13. */
#define KILN_CUDA_CONTEXT (512ull << 20)

struct kiln_cuda_plan {
    uint64_t weights; /* linears as uploaded (FP8 or bf16), norms and embedding (bf16) */
    /* activations, bytes of each buffer create allocates */
    uint64_t rope;        /* (max_seq_len, Dh) f32 */
    uint64_t x;           /* (T, d) f32 residual */
    uint64_t big;         /* (T, max(qkv, 2f)) f32 linear outputs */
    uint64_t q;           /* (T, H Dh) f32 */
    uint64_t x8;          /* (max(T, S), max(d, f, H Dh)) FP8 / bf16 activations */
    uint64_t logits;      /* (S, vocab) f32 */
    uint64_t part;        /* flash-decoding partials */
    uint64_t meta;        /* batch description, int32 */
    uint64_t sample;      /* sampler: arguments (sample_args), results (S,), first-pass pieces */
    uint64_t activations; /* the sum of the above */
    uint64_t workspace;   /* cuBLASLt */
    uint64_t kv_block;    /* one KV block: K and V of every layer */
    int kv_blocks;        /* as asked, or what max_seqs sequences of max_seq_len need */
    uint64_t kv;
    uint64_t reserve, context;
    uint64_t total;
    /* sizes create needs besides bytes */
    int max_blocks, max_splits, part_rows;
    size_t meta_elems;  /* int32 elements of the batch description */
    size_t sample_args; /* bytes: S rows' sampling parameters and lists (also pinned on the host) */
};

static inline uint64_t kiln_cuda_plan_linear(const struct kiln_linear *l)
{
    return (uint64_t)l->out * (uint64_t)l->in * (l->fp8 ? 1u : 2u);
}

static inline uint64_t kiln_cuda_plan_elems(const struct kiln_tensor *t)
{
    uint64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= (uint64_t)t->shape[i];
    return n;
}

/* opt: limits, kv dtype and block size as create gets them; n_blocks <= 0 plans the minimum
 * KV pool (every sequence at max_seq_len). */
static inline void kiln_cuda_plan(const struct kiln_model *m,
                                  const struct kiln_backend_options *opt, struct kiln_cuda_plan *p)
{
    const struct kiln_config *c = &m->cfg;
    *p = (struct kiln_cuda_plan){0};
    for (int l = 0; l < c->n_layers; l++) {
        const struct kiln_layer_weights *w = &m->layers[l];
        p->weights +=
            2 * (kiln_cuda_plan_elems(&w->attn_norm) + kiln_cuda_plan_elems(&w->mlp_norm));
        p->weights += kiln_cuda_plan_linear(&w->qkv) + kiln_cuda_plan_linear(&w->o) +
                      kiln_cuda_plan_linear(&w->gate_up) + kiln_cuda_plan_linear(&w->down);
    }
    p->weights += 2 * (kiln_cuda_plan_elems(&m->embed) + kiln_cuda_plan_elems(&m->norm));
    p->weights += kiln_cuda_plan_linear(&m->lm_head);

    uint64_t T = (uint64_t)opt->max_tokens, S = (uint64_t)opt->max_seqs;
    uint64_t d = (uint64_t)c->hidden_size, f = (uint64_t)c->intermediate_size;
    uint64_t qdim = (uint64_t)c->n_heads * c->head_dim,
             kvdim = (uint64_t)c->n_kv_heads * c->head_dim;
    uint64_t wide = qdim + 2 * kvdim > 2 * f ? qdim + 2 * kvdim : 2 * f;
    uint64_t widest_in = d > f ? d : f;
    if (qdim > widest_in) widest_in = qdim;
    p->max_blocks = (opt->max_seq_len + opt->block_size - 1) / opt->block_size;
    p->max_splits = (opt->max_seq_len + KILN_CUDA_SPLIT_LEN - 1) / KILN_CUDA_SPLIT_LEN;
    /* partials: S decode tokens, or up to 8 sequences x 8 query tokens in the fused path */
    int fused_rows = KILN_CUDA_DECODE_MAX_TOKENS * KILN_CUDA_DECODE_MAX_TOKENS;
    p->part_rows = opt->max_seqs > fused_rows ? opt->max_seqs : fused_rows;
    p->meta_elems = (size_t)(3 * T + 5 * S + 1 + S * (uint64_t)p->max_blocks);

    p->rope = (uint64_t)opt->max_seq_len * c->head_dim * 4;
    p->x = T * d * 4;
    p->big = T * wide * 4;
    p->q = T * qdim * 4;
    p->x8 = (T > S ? T : S) * widest_in * 2;
    p->logits = S * (uint64_t)c->vocab_size * 4;
    /* (rows, 1 query, H, splits, Dh + 2) f32: kiln_cuda_attention_part_floats */
    p->part = (uint64_t)p->part_rows * c->n_heads * (uint64_t)p->max_splits * (c->head_dim + 2) * 4;
    p->meta = (uint64_t)p->meta_elems * 4;
    uint64_t hist = (uint64_t)(c->vocab_size < opt->max_seq_len ? c->vocab_size : opt->max_seq_len);
    uint64_t row_words = KILN_CUDA_SAMPLE_HIST_WORDS * hist +
                         KILN_CUDA_SAMPLE_BIAS_WORDS * KILN_CUDA_SAMPLE_BIAS +
                         KILN_CUDA_SAMPLE_BANNED_WORDS * KILN_CUDA_SAMPLE_BANNED;
    p->sample_args = (size_t)(S * (sizeof(struct kiln_cuda_sample_row) + 4 * row_words));
    p->sample = p->sample_args + S * sizeof(struct kiln_cuda_sample_out) +
                S * KILN_CUDA_SAMPLE_CHUNKS * sizeof(struct kiln_cuda_sample_part);
    p->activations =
        p->rope + p->x + p->big + p->q + p->x8 + p->logits + p->part + p->meta + p->sample;
    p->workspace = KILN_CUDA_LT_WORKSPACE;

    uint64_t elem = opt->kv_dtype == KILN_DTYPE_F8E4M3 ? 1 : 2;
    p->kv_block = kvdim * (uint64_t)opt->block_size * elem * 2 * (uint64_t)c->n_layers;
    p->kv_blocks = opt->n_blocks > 0 ? opt->n_blocks : opt->max_seqs * p->max_blocks;
    p->kv = p->kv_block * (uint64_t)p->kv_blocks;
    p->reserve = KILN_CUDA_RESERVE;
    p->context = KILN_CUDA_CONTEXT;
    p->total = p->weights + p->activations + p->workspace + p->kv + p->reserve + p->context;
}

#endif
