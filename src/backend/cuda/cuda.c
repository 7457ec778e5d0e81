/* The CUDA backend: weights in the kernels' layouts on the GPU, a paged KV pool, and one
 * forward pass per step over a mixed batch.
 *
 * Two paths compute the same function (the CPU backend's, see cpu/ops.h for the rounding
 * points):
 *   - decode path, n_tokens <= 8: five kernels per layer -- skinny tensor-core GEMMs with the
 *     RMSNorm fused in front and RoPE + KV write / SwiGLU / residual add fused behind, and
 *     flash-decoding attention. Pure decode steps are captured once per batch size as CUDA
 *     graphs and replayed, so launch gaps do not eat the weight-streaming time.
 *   - prefill path: cuBLASLt FP8 GEMMs (f32 out, residual added by beta = 1) with RMSNorm,
 *     RoPE/KV, SwiGLU and FlashAttention kernels between them.
 * The host side of a step is one copy of the batch description into a device buffer.
 * Every CUDA and cuBLASLt call is checked; failures become KILN_ERR_CUDA with the call. */
#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/log.h"
#include "core/thread.h"
#include "backend/cpu/ops.h"
#include "kernels.h"
#include "lt_desc.h"
#include "model/format.h"
#include "plan.h"

#define DECODE_MAX_TOKENS KILN_CUDA_DECODE_MAX_TOKENS
/* positions per flash-decoding split: fixed, so a sequence gets the same result in any batch */
#define SPLIT_LEN     KILN_CUDA_SPLIT_LEN
#define SPLIT_BUCKETS 16
#define LT_WORKSPACE  KILN_CUDA_LT_WORKSPACE
#define ALGO_CACHE    128

/* positions per split of the tensor-core decode kernel in steps of more than 8 tokens whose
 * decode rows alone fill the GPU (n_dec * Hkv >= 2 blocks per SM): longer splits mean fewer
 * partials to write and combine */
#define TC_SPLIT_LEN 512

#define CUDA_TRY(call)                                                                             \
    do {                                                                                           \
        cudaError_t e_ = (cudaError_t)(call);                                                      \
        if (e_ != cudaSuccess)                                                                     \
            return kiln_errorf(err, KILN_ERR_CUDA, "%s failed: %s (%s:%d)", #call,                 \
                               cudaGetErrorString(e_), __FILE__, __LINE__);                        \
    } while (0)

#define LT_TRY(call)                                                                               \
    do {                                                                                           \
        cublasStatus_t s_ = (call);                                                                \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                           \
            return kiln_errorf(err, KILN_ERR_CUDA, "%s failed: cuBLAS status %d (%s:%d)", #call,   \
                               (int)s_, __FILE__, __LINE__);                                       \
    } while (0)

struct cuda_linear {
    void *w; /* (M, K) e4m3 or bf16, rows in kernel order */
    int M, K;
    bool fp8;
    bool out_bf16;             /* cuBLASLt writes bf16 (q|k|v, gate|up: RoPE and SwiGLU read it
                                * back at half the bytes of f32), else f32 */
    float in_scale, out_scale; /* out_scale = input_scale * weight_scale (1 for bf16) */
};

struct cuda_layer {
    uint16_t *attn_norm, *mlp_norm; /* (d,) bf16 */
    struct cuda_linear qkv, o, gate_up, down;
    struct kiln_cuda_kv kv;
};

struct algo_entry {
    int M, N, K, bf16, out_bf16, beta1, ldc;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
    bool valid;
};

struct graph_entry {
    cudaGraphExec_t exec;
    bool ready;
};

/* Per-op timing (opt.profile): an event after every op of a step, summed per category. */
enum prof_cat {
    P_EMBED,
    P_NORM,
    P_QKV,
    P_ROPE,
    P_ATTN,
    P_O,
    P_GATE_UP,
    P_SWIGLU,
    P_DOWN,
    P_HEAD,
    P_COUNT
};
static const char *const prof_names[P_COUNT] = {
    "embed",  "rmsnorm+quant", "qkv gemm",     "rope+kv",   "attention",
    "o gemm", "gate_up gemm",  "swiglu+quant", "down gemm", "lm_head"};
#define PROF_MAX 2048

struct prof {
    bool on;
    cudaEvent_t ev[PROF_MAX + 1];
    int cat[PROF_MAX];
    int n, steps;
    double ms[P_COUNT];
};

/* KILN_TRACE=1 (a measurement aid): every decode GEMV and the exact decode attention stamp
 * %globaltimer per block (entry, wait on the previous kernel done, end, and marks inside: the
 * ring GEMV at 3 x staged, 4 first tile done, 5 first stage past the ring arrived; attention at
 * 3 K/V rows and q loaded, 4 scores, 5 softmax, 6 weighted V summed per warp; a ring GEMV's
 * last slot holds its multiprocessor); steps 33 to 64 are read back (a synchronization each)
 * and their means printed on stderr (trace_report), with how the GEMV blocks' ends per tile
 * vary over the multiprocessors. The split-merging combine kernel and the embedding are not
 * stamped. */
#define TRACE_KERNELS 256
#define TRACE_BLOCKS  KILN_TRACE_BLOCKS
#define TRACE_SLOTS   KILN_TRACE_SLOTS
#define TRACE_SMS     256
struct trace {
    unsigned long long *d, *h; /* (TRACE_KERNELS, TRACE_BLOCKS, TRACE_SLOTS) */
    char what[TRACE_KERNELS];  /* q (q|k|v), a (attention), o, g (gate_up), d (down), h */
    double bytes[TRACE_KERNELS];
    int tiles[TRACE_KERNELS]; /* a GEMV's 16-row tiles */
    int n, steps;
    /* per kind, over the steps: span, dep, body, spread, count, entry, then the block means of
     * marks 3 .. TRACE_SLOTS - 1 and of the end, after the block's wait */
    double sum[6][6 + TRACE_SLOTS - 2];
    /* ring GEMVs (q, o, g, d): per multiprocessor (a block's last slot), the sum and count of
     * its block's end after the kernel's first wait, per tile of the block, over even and odd
     * steps apart */
    double sm_end[2][4][TRACE_SMS], sm_n[2][4][TRACE_SMS];
};

/* Which decode GEMVs ask L2 for the next GEMV's weights (kiln_gemv_args' pf_* fields), in
 * ring stages; each KILN_L2_* variable overrides its default (a measurement knob). */
struct l2_policy {
    int o_next;    /* o: the first stages of gate_up's blocks, asked during the attention gap */
    int gu_next;   /* gate_up: down's first stages */
    int down_next; /* down: the next q|k|v's stages past its ring (or lm_head's) */
};

struct cuda_state {
    cudaStream_t stream;
    cublasLtHandle_t lt;
    void *lt_ws;
    struct algo_entry algos[ALGO_CACHE];
    int algo_next;
    const struct kiln_engine_meta *tuned; /* an engine's timed algorithms, when valid here */
    bool batch_invariant;                 /* opt.batch_invariant: one algorithm per shape */
    int max_tokens;                       /* opt.max_tokens: the step size it is chosen at */
    int sms;                              /* the GPU's multiprocessors */

    uint16_t *embed, *final_norm;
    struct cuda_linear head;
    struct cuda_layer *layers;
    float *rope;

    float *x, *big, *q, *logits, *part;
    uint8_t *x8;
    int max_blocks, max_splits;

    int32_t *h_meta, *d_meta; /* batch description, pinned host and device */
    cudaEvent_t meta_copied;  /* the last copy out of h_meta has run: h_meta may be rewritten */
    size_t meta_cap;          /* int32 elements */
    /* sampler (sample.cu): packed arguments, pinned and device (sample_cap bytes each: the
     * plan's, grown for longer lists), and results (max_seqs,) */
    void *h_sample_args, *d_sample_args;
    size_t sample_cap;
    struct kiln_cuda_sample_out *h_sample_out, *d_sample_out;
    struct kiln_cuda_sample_part *d_sample_parts; /* (max_seqs, KILN_CUDA_SAMPLE_CHUNKS) */

    int n_out;
    struct prof prof;
    struct trace trace;
    struct l2_policy l2;
    /* decode graphs by (tokens, split bucket: the split count rounded up to a power of two) */
    struct graph_entry graphs[DECODE_MAX_TOKENS + 1][SPLIT_BUCKETS];
    void *kv_pool;
    uint64_t weight_bytes;
};

/* ---- weight upload ---- */

struct stage_job {
    const struct kiln_linear *l;
    enum kiln_row_order order;
    int head_dim;
    int64_t f, r0;
    uint8_t *dst;
    size_t row_bytes;
    const uint8_t *stored; /* the weights already in this order (engines): copied as they lie */
};

static void stage_rows(void *ctx, size_t i0, size_t i1)
{
    const struct stage_job *j = ctx;
    if (j->stored) {
        memcpy(j->dst + i0 * j->row_bytes, j->stored + ((size_t)j->r0 + i0) * j->row_bytes,
               (i1 - i0) * j->row_bytes);
        return;
    }
    float *tmp = j->l->fp8 ? NULL : malloc((size_t)j->l->in * sizeof(float));
    for (size_t i = i0; i < i1; i++) {
        int64_t nat = kiln_cuda_natural_row(j->order, j->r0 + (int64_t)i, j->head_dim, j->f);
        uint8_t *d = j->dst + i * j->row_bytes;
        if (j->l->fp8) {
            kiln_linear_fp8_rows(j->l, nat, nat + 1, d);
        } else {
            kiln_linear_f32_rows(j->l, nat, nat + 1, tmp);
            for (int64_t k = 0; k < j->l->in; k++) ((uint16_t *)d)[k] = kiln_f32_to_bf16(tmp[k]);
        }
    }
    free(tmp);
}

/* Uploads a linear in kernel row order through a pinned staging buffer filled by the pool. */
static enum kiln_status upload_linear(struct cuda_state *s, struct kiln_pool *pool,
                                      const struct kiln_linear *l, enum kiln_row_order order,
                                      int head_dim, int64_t f, uint8_t *stage, size_t stage_bytes,
                                      struct cuda_linear *out, struct kiln_error *err)
{
    out->M = (int)l->out;
    out->K = (int)l->in;
    out->fp8 = l->fp8;
    out->out_bf16 = order == KILN_ROWS_QKV_PAIRED || order == KILN_ROWS_GU_INTERLEAVED;
    out->in_scale = l->fp8 ? l->input_scale : 1.0f;
    out->out_scale = l->fp8 ? l->input_scale * l->weight_scale : 1.0f;
    size_t row_bytes = (size_t)l->in * (l->fp8 ? 1 : 2);
    CUDA_TRY(cudaMalloc(&out->w, row_bytes * (size_t)l->out));
    s->weight_bytes += row_bytes * (size_t)l->out;
    size_t rows_per = stage_bytes / row_bytes;
    for (int64_t r0 = 0; r0 < l->out; r0 += (int64_t)rows_per) {
        int64_t n = l->out - r0 < (int64_t)rows_per ? l->out - r0 : (int64_t)rows_per;
        struct stage_job j = {l, order, head_dim, f, r0, stage, row_bytes};
        j.stored = kiln_linear_stored(l, order);
        kiln_parallel_for(pool, (size_t)n, stage_rows, &j);
        CUDA_TRY(cudaMemcpy((uint8_t *)out->w + (size_t)r0 * row_bytes, stage,
                            (size_t)n * row_bytes, cudaMemcpyHostToDevice));
    }
    return KILN_OK;
}

static enum kiln_status upload_bf16(struct cuda_state *s, const struct kiln_tensor *t,
                                    const char *what, uint16_t **out, struct kiln_error *err)
{
    if (t->dtype != KILN_DTYPE_BF16)
        return kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                           "cuda backend: %s is %s; the CUDA backend expects BF16 (as ModelOpt "
                           "FP8 checkpoints store it)",
                           what, kiln_dtype_name(t->dtype));
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= (size_t)t->shape[i];
    CUDA_TRY(cudaMalloc((void **)out, n * 2));
    CUDA_TRY(cudaMemcpy(*out, t->data, n * 2, cudaMemcpyHostToDevice));
    s->weight_bytes += n * 2;
    return KILN_OK;
}

/* ---- cuBLASLt ---- */

static void algo_entry_clear(struct algo_entry *e)
{
    if (e->lc) cublasLtMatrixLayoutDestroy(e->lc);
    if (e->lb) cublasLtMatrixLayoutDestroy(e->lb);
    if (e->la) cublasLtMatrixLayoutDestroy(e->la);
    if (e->desc) cublasLtMatmulDescDestroy(e->desc);
    memset(e, 0, sizeof *e);
}

/* Descriptors, layouts and the heuristic's algorithm for one GEMM shape, made once and kept
 * (a prefill step runs 4 GEMMs per layer; rebuilding them cost ~10 us of host time each). */
static enum kiln_status algo_for(struct cuda_state *s, const struct cuda_linear *l, int n, int ldc,
                                 bool accumulate, struct algo_entry **out, struct kiln_error *err)
{
    for (int i = 0; i < ALGO_CACHE; i++) {
        struct algo_entry *e = &s->algos[i];
        if (e->valid && e->M == l->M && e->N == n && e->K == l->K && e->bf16 == !l->fp8 &&
            e->out_bf16 == l->out_bf16 && e->beta1 == accumulate && e->ldc == ldc) {
            *out = e;
            return KILN_OK;
        }
    }
    struct algo_entry *e = &s->algos[s->algo_next];
    s->algo_next = (s->algo_next + 1) % ALGO_CACHE;
    algo_entry_clear(e);
    *e = (struct algo_entry){.M = l->M,
                             .N = n,
                             .K = l->K,
                             .bf16 = !l->fp8,
                             .out_bf16 = l->out_bf16,
                             .beta1 = accumulate,
                             .ldc = ldc};
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    cublasStatus_t st =
        kiln_lt_describe(l->M, n, l->K, l->fp8, l->out_bf16, ldc, &e->desc, &e->la, &e->lb, &e->lc);
    /* an engine's algorithm timed for this shape's token bucket, when cuBLASLt accepts it */
    /* batch-invariant: the algorithm of the largest step for every step size, so a row's sums
     * run in the same order whatever the number of rows (an algorithm that cannot take this
     * size is an error, not a silent change) */
    const int n_algo = s->batch_invariant ? s->max_tokens : n;
    const struct kiln_gemm_algo *rec = kiln_engine_gemm_find(s->tuned, l->M, n_algo, l->K, l->fp8);
    if (!st && rec) {
        memcpy(res.algo.data, rec->algo, sizeof res.algo.data);
        found = kiln_lt_algo_usable(s->lt, e->desc, e->la, e->lb, e->lc, &res.algo);
    }
    if (!st && !found && n_algo != n) {
        cublasLtMatmulDesc_t d2 = NULL;
        cublasLtMatrixLayout_t a2 = NULL, b2 = NULL, c2 = NULL;
        st = kiln_lt_describe(l->M, n_algo, l->K, l->fp8, l->out_bf16, ldc, &d2, &a2, &b2, &c2);
        if (!st) st = kiln_lt_heuristic(s->lt, d2, a2, b2, c2, 1, &res, &found);
        if (!st && found)
            found = kiln_lt_algo_usable(s->lt, e->desc, e->la, e->lb, e->lc, &res.algo);
        if (c2) cublasLtMatrixLayoutDestroy(c2);
        if (b2) cublasLtMatrixLayoutDestroy(b2);
        if (a2) cublasLtMatrixLayoutDestroy(a2);
        if (d2) cublasLtMatmulDescDestroy(d2);
        if (!st && !found) {
            algo_entry_clear(e);
            return kiln_errorf(err, KILN_ERR_CUDA,
                               "batch-invariant: cuBLASLt's algorithm for the %s GEMM M=%d K=%d "
                               "at %d tokens cannot run %d tokens",
                               l->fp8 ? "FP8" : "BF16", l->M, l->K, n_algo, n);
        }
    }
    if (!st && !found) st = kiln_lt_heuristic(s->lt, e->desc, e->la, e->lb, e->lc, 1, &res, &found);
    if (st || !found) {
        algo_entry_clear(e);
        return kiln_errorf(err, KILN_ERR_CUDA,
                           "cuBLASLt has no algorithm for the %s GEMM M=%d N=%d K=%d (status %d)",
                           l->fp8 ? "FP8" : "BF16", l->M, n, l->K, (int)st);
    }
    e->algo = res.algo;
    e->valid = true;
    *out = e;
    return KILN_OK;
}

/* D (n, M; ld ldc) = alpha * x (n, K) . W (M, K)^T + beta * D, alpha = out_scale; D f32, or bf16
 * where l->out_bf16. */
static enum kiln_status lt_gemm(struct cuda_state *s, const struct cuda_linear *l, const void *x,
                                int n, void *d, int ldc, bool accumulate, struct kiln_error *err)
{
    struct algo_entry *e = NULL;
    enum kiln_status st = algo_for(s, l, n, ldc, accumulate, &e, err);
    if (st) return st;
    float alpha = l->out_scale, beta = accumulate ? 1.0f : 0.0f;
    cublasStatus_t cs =
        cublasLtMatmul(s->lt, e->desc, &alpha, l->w, e->la, x, e->lb, &beta, d, e->lc, d, e->lc,
                       &e->algo, s->lt_ws, LT_WORKSPACE, s->stream);
    if (cs)
        return kiln_errorf(err, KILN_ERR_CUDA, "cublasLtMatmul (%s, M=%d N=%d K=%d): status %d",
                           l->fp8 ? "FP8" : "BF16", l->M, n, l->K, (int)cs);
    return KILN_OK;
}

/* ---- the forward pass ---- */

struct step {
    struct kiln_cuda_batch kb;
    const int32_t *out_rows, *dec_list, *pre_list;
    int n_out, n_dec, n_pre, max_q, dec_max_q;
    int n_splits, split_bucket; /* decode attention grid: splits of split_len positions */
    int split_len;              /* SPLIT_LEN, or TC_SPLIT_LEN for big batches of >8-token steps */
};

/* Steps of up to 8 tokens run the fused skinny-GEMM path, unless every row must be computed the
 * same way whatever the batch (opt.batch_invariant): then every step runs the cuBLASLt path. */
static bool fused_path(const struct kiln_backend *b, int n_tokens)
{
    return n_tokens <= DECODE_MAX_TOKENS && !b->opt.batch_invariant;
}

/* Lays out the batch description compactly in the pinned buffer and copies it to the device.
 * The offsets depend only on the counts, so a captured graph stays valid for equal counts. */
#ifdef KILN_CUDA_FAULTS
/* Planted bugs, compiled only into the test binaries built with KILN_CUDA_FAULTS
 * (tests/cuda/CMakeLists.txt: test_cuda_model_faults, kiln_faults), never into kiln: they show
 * that the GPU tests' tolerances catch a broken backend. KILN_CUDA_FAULT selects one:
 *   scale:F       every layer's down-projection output scale multiplied by F (a wrong scale)
 *   rope:P        RoPE row P replaced by row P + 1 (one position rotated as the next)
 *   blocktable    a sequence's last, partly filled KV block dropped from the block table (the
 *                 floor of kv_len / block_size instead of the ceiling: its rows read block 0) */
static const char *fault_arg(const char *name)
{
    const char *f = getenv("KILN_CUDA_FAULT");
    size_t n = strlen(name);
    if (!f || strncmp(f, name, n) || (f[n] && f[n] != ':')) return NULL;
    return f[n] ? f + n + 1 : "";
}
#endif

static enum kiln_status upload_batch(struct kiln_backend *b, const struct kiln_batch *bt,
                                     struct step *st, struct kiln_error *err)
{
    struct cuda_state *s = b->impl;
    int n = bt->n_tokens, ns = bt->n_seqs, mb = s->max_blocks;
    int32_t *h = s->h_meta;
    CUDA_TRY(cudaEventSynchronize(s->meta_copied)); /* a step without sampling does not sync */
    size_t o = 0;
    size_t o_tok = o;
    memcpy(h + o, bt->tokens, (size_t)n * 4), o += (size_t)n;
    size_t o_pos = o;
    memcpy(h + o, bt->positions, (size_t)n * 4), o += (size_t)n;
    size_t o_ts = o;
    for (int q = 0; q < ns; q++)
        for (int t = bt->seq_start[q]; t < bt->seq_start[q + 1]; t++) h[o + (size_t)t] = q;
    o += (size_t)n;
    size_t o_ss = o;
    memcpy(h + o, bt->seq_start, (size_t)(ns + 1) * 4), o += (size_t)ns + 1;
    size_t o_kl = o;
    memcpy(h + o, bt->kv_len, (size_t)ns * 4), o += (size_t)ns;
    size_t o_out = o;
    memcpy(h + o, bt->out_rows, (size_t)bt->n_out * 4), o += (size_t)bt->n_out;
    size_t o_dec = o;
    /* Attention lists: the exact f32 flash-decoding kernel takes single decode tokens, and in
     * the fused path (<= 8 tokens) also short prompt chunks (up to 8 query tokens each); longer
     * chunks go to the FlashAttention kernel. */
    bool fused = fused_path(b, n);
    int n_dec = 0, n_pre = 0, max_q = 0, dec_max_q = 1, max_dec_kv = 1;
    for (int q = 0; q < ns; q++) {
        int len = bt->seq_start[q + 1] - bt->seq_start[q];
        if (len == 1 || fused) {
            h[o + (size_t)n_dec++] = q;
            if (bt->kv_len[q] > max_dec_kv) max_dec_kv = bt->kv_len[q];
            if (len > dec_max_q) dec_max_q = len;
        }
    }
    o += (size_t)n_dec;
    size_t o_pre = o;
    for (int q = 0; q < ns; q++) {
        int len = bt->seq_start[q + 1] - bt->seq_start[q];
        if (len > 1 && !fused) {
            h[o + (size_t)n_pre++] = q;
            if (len > max_q) max_q = len;
        }
    }
    o += (size_t)n_pre;
    size_t o_bt = o;
    for (int q = 0; q < ns; q++) {
        int used = (bt->kv_len[q] + b->opt.block_size - 1) / b->opt.block_size;
#ifdef KILN_CUDA_FAULTS
        if (fault_arg("blocktable")) used = bt->kv_len[q] / b->opt.block_size;
#endif
        memcpy(h + o + (size_t)q * mb, bt->block_table + (size_t)q * bt->max_blocks,
               (size_t)used * 4);
        for (int i = used; i < mb; i++) h[o + (size_t)q * mb + i] = 0;
    }
    o += (size_t)ns * mb;
    KILN_ASSERT(o <= s->meta_cap);
    CUDA_TRY(cudaMemcpyAsync(s->d_meta, h, o * 4, cudaMemcpyHostToDevice, s->stream));
    CUDA_TRY(cudaEventRecord(s->meta_copied, s->stream));
    int32_t *d = s->d_meta;
    st->kb = (struct kiln_cuda_batch){n,        ns,       mb,       d + o_tok, d + o_pos,
                                      d + o_ts, d + o_ss, d + o_kl, d + o_bt};
    st->out_rows = d + o_out;
    st->dec_list = d + o_dec;
    st->pre_list = d + o_pre;
    st->n_out = bt->n_out;
    st->n_dec = n_dec;
    st->n_pre = n_pre;
    st->max_q = max_q;
    st->dec_max_q = dec_max_q;
    /* as few splits as the longest context needs, rounded up to a power of two so that decode
     * graphs come in a handful of shapes */
    int need = (max_dec_kv + SPLIT_LEN - 1) / SPLIT_LEN, bucket = 0;
    while ((1 << bucket) < need) bucket++;
    st->split_bucket = bucket;
    st->n_splits = (1 << bucket) < s->max_splits ? (1 << bucket) : s->max_splits;
    st->split_len = SPLIT_LEN;
    if (!fused && n_dec > 0) {
        /* >8-token steps (the tensor-core kernel, see attention(); no graphs): when the decode
         * rows alone give every SM two blocks, or always when batch-invariant (a split length
         * that depends on the batch would change the sums), as few TC_SPLIT_LEN splits as the
         * longest context needs; they fit `part`, which is sized for SPLIT_LEN splits */
        if ((long)n_dec * b->model->cfg.n_kv_heads >= 2L * s->sms || b->opt.batch_invariant) {
            st->split_len = TC_SPLIT_LEN;
            st->n_splits = (max_dec_kv + TC_SPLIT_LEN - 1) / TC_SPLIT_LEN;
            KILN_ASSERT(st->n_splits <= s->max_splits);
        }
    }
    return KILN_OK;
}

#define K_TRY(call)                                                                                \
    do {                                                                                           \
        int e_ = (call);                                                                           \
        if (e_)                                                                                    \
            return kiln_errorf(err, KILN_ERR_CUDA, "%s failed: %s", #call,                         \
                               cudaGetErrorString((cudaError_t)e_));                               \
    } while (0)

static int layers_to_run(const struct kiln_backend *b)
{
    int n = b->model->cfg.n_layers;
    if (b->opt.n_layers < 0) return 0;
    return b->opt.n_layers > 0 && b->opt.n_layers < n ? b->opt.n_layers : n;
}

/* The next decode GEMV's stamp rows, or NULL when not tracing (or past TRACE_KERNELS). */
static unsigned long long *trace_slot(struct cuda_state *s, char what, const struct cuda_linear *l)
{
    struct trace *t = &s->trace;
    if (!t->d || t->n >= TRACE_KERNELS) return NULL;
    t->what[t->n] = what;
    t->bytes[t->n] = l ? (double)l->M * l->K * (l->fp8 ? 1 : 2) : 0;
    t->tiles[t->n] = l ? l->M / 16 : 0;
    return t->d + (size_t)t->n++ * TRACE_BLOCKS * TRACE_SLOTS;
}

/* Reads the stamps of steps 33..64 back (a synchronization each) and prints, per kind, the mean
 * over layers and steps of: span (this kernel's last block end minus the previous kernel's:
 * its marginal time in the chain), dep (the previous kernel's last end until this one's last
 * block is past its wait), body (from there to its last end), spread (first to last block end)
 * and the GB/s of its weights over the span. */
static enum kiln_status trace_report(struct cuda_state *s, struct kiln_error *err)
{
    static const char kinds[] = "qaogdh";
    struct trace *t = &s->trace;
    if (++t->steps <= 32 || t->steps > 64) return KILN_OK;
    CUDA_TRY(cudaStreamSynchronize(s->stream));
    CUDA_TRY(cudaMemcpy(t->h, t->d, (size_t)t->n * TRACE_BLOCKS * TRACE_SLOTS * sizeof *t->h,
                        cudaMemcpyDeviceToHost));
    double end_max[TRACE_KERNELS], end_min[TRACE_KERNELS], wait_max[TRACE_KERNELS],
        entry_max[TRACE_KERNELS], marks[TRACE_KERNELS][TRACE_SLOTS - 2];
    unsigned long long t0 = ~0ull;
    for (int k = 0; k < t->n; k++) {
        const unsigned long long *r = t->h + (size_t)k * TRACE_BLOCKS * TRACE_SLOTS;
        unsigned long long emin = ~0ull, emax = 0, wmin = ~0ull, wmax = 0, nmax = 0;
        double mark_sum[TRACE_SLOTS - 2] = {0};
        int mark_n[TRACE_SLOTS - 2] = {0}, grid = 0;
        for (int i = 0; i < TRACE_BLOCKS; i++) {
            const unsigned long long *b = r + (size_t)TRACE_SLOTS * i;
            if (!b[0]) continue; /* no such block */
            grid = i + 1;
            if (b[0] < t0) t0 = b[0];
            if (b[0] > nmax) nmax = b[0];
            for (int m = 2; m < TRACE_SLOTS; m++) /* the end (slot 2), then marks 3.. */
                if (b[m] > b[1]) mark_sum[m - 2] += (double)(b[m] - b[1]), mark_n[m - 2]++;
            if (b[1] < wmin) wmin = b[1];
            if (b[1] > wmax) wmax = b[1];
            if (b[2] < emin) emin = b[2];
            if (b[2] > emax) emax = b[2];
        }
        wait_max[k] = (double)wmax;
        entry_max[k] = (double)nmax;
        for (int m = 0; m < TRACE_SLOTS - 2; m++)
            marks[k][m] = mark_n[m] ? mark_sum[m] / mark_n[m] : 0;
        end_min[k] = (double)emin;
        end_max[k] = (double)emax;
        /* a ring GEMV: which multiprocessors end late (its last slot), per tile of the block */
        const char *gk = strchr("qogd", t->what[k]);
        for (int i = 0; gk && i < grid; i++) {
            const unsigned long long *b = r + (size_t)TRACE_SLOTS * i;
            const int mine = (t->tiles[k] - i + grid - 1) / grid; /* the block's tiles */
            if (!b[0] || !b[TRACE_SLOTS - 1] || b[TRACE_SLOTS - 1] > TRACE_SMS || mine < 1)
                continue;
            const int sm = (int)b[TRACE_SLOTS - 1] - 1;
            t->sm_end[t->steps & 1][gk - "qogd"][sm] += (double)(b[2] - wmin) * 1e-3 / mine;
            t->sm_n[t->steps & 1][gk - "qogd"][sm] += 1;
        }
    }
    for (int k = 1; k < t->n; k++) {
        double *m = t->sum[strchr(kinds, t->what[k]) - kinds];
        m[0] += (end_max[k] - end_max[k - 1]) * 1e-3;
        m[1] += (wait_max[k] - end_max[k - 1]) * 1e-3;
        m[2] += (end_max[k] - wait_max[k]) * 1e-3;
        m[3] += (end_max[k] - end_min[k]) * 1e-3;
        m[4] += 1;
        m[5] += (entry_max[k] - end_max[k - 1]) * 1e-3;
        for (int i = 0; i < TRACE_SLOTS - 2; i++) m[6 + i] += marks[k][i] * 1e-3;
    }
    if (t->steps < 64) return KILN_OK;
    fprintf(stderr,
            "trace: %d traced kernels a step, %.1f us from the first entry to the last end\n", t->n,
            (end_max[t->n - 1] - (double)t0) * 1e-3);
    fprintf(stderr, "trace: kind  count   span us   dep us  body us  spread us   GB/s (span)  "
                    "last entry us\n");
    for (int i = 0; kinds[i]; i++) {
        const double *m = t->sum[i];
        if (!m[4]) continue;
        double bytes = 0;
        for (int k = 0; k < t->n; k++)
            if (t->what[k] == kinds[i]) bytes = t->bytes[k];
        fprintf(stderr, "trace: %c     %5.0f  %8.2f %8.2f %8.2f  %9.2f  %9.0f  %12.2f\n", kinds[i],
                m[4] / 32, m[0] / m[4], m[1] / m[4], m[2] / m[4], m[3] / m[4],
                bytes / (m[0] / m[4]) * 1e-3, m[5] / m[4]);
    }
    fprintf(stderr, "trace: kind  block means after the block's wait, us: end, marks 3..%d\n",
            TRACE_SLOTS - 1);
    for (int i = 0; kinds[i]; i++) {
        const double *m = t->sum[i];
        if (!m[4]) continue;
        fprintf(stderr, "trace: %c   ", kinds[i]);
        for (int j = 0; j < TRACE_SLOTS - 2; j++) fprintf(stderr, " %7.2f", m[6 + j] / m[4]);
        fprintf(stderr, "\n");
    }
    /* per multiprocessor: the mean block end per tile over even steps against odd ones; a
     * correlation near 1 says the same SMs are slow every time */
    fprintf(stderr, "trace: kind  SMs  end/tile us  sd across SMs  min  max  even/odd corr\n");
    for (int g = 0; g < 4; g++) {
        double sx = 0, sy = 0, sxx = 0, syy = 0, sxy = 0, svv = 0, lo = 1e30, hi = -1e30;
        int n = 0;
        for (int sm = 0; sm < TRACE_SMS; sm++) {
            if (!t->sm_n[0][g][sm] || !t->sm_n[1][g][sm]) continue;
            const double x = t->sm_end[0][g][sm] / t->sm_n[0][g][sm],
                         y = t->sm_end[1][g][sm] / t->sm_n[1][g][sm], v = (x + y) / 2;
            sx += x, sy += y, sxx += x * x, syy += y * y, sxy += x * y, svv += v * v, n++;
            lo = v < lo ? v : lo, hi = v > hi ? v : hi;
        }
        if (n < 2) continue;
        const double cx = sxx / n - (sx / n) * (sx / n), cy = syy / n - (sy / n) * (sy / n);
        const double corr = (sxy / n - (sx / n) * (sy / n)) / sqrt(cx * cy + 1e-30);
        const double mean = (sx + sy) / (2 * n), var = svv / n - mean * mean;
        fprintf(stderr, "trace: %c     %3d  %11.2f  %13.2f  %5.2f  %5.2f  %6.3f\n", "qogd"[g], n,
                mean, sqrt(var > 0 ? var : 0), lo, hi, corr);
    }
    return KILN_OK;
}

static void mark(struct cuda_state *s, enum prof_cat cat)
{
    if (!s->prof.on || s->prof.n >= PROF_MAX) return;
    cudaEventRecord(s->prof.ev[s->prof.n + 1], s->stream);
    s->prof.cat[s->prof.n++] = cat;
}

static enum kiln_status attention(struct kiln_backend *b, const struct step *st,
                                  const struct cuda_layer *L, struct kiln_error *err)
{
    struct cuda_state *s = b->impl;
    const struct kiln_config *c = &b->model->cfg;
    /* Steps of more than 8 tokens (the cuBLASLt path, already at the FP8 noise level) send
     * their single-token rows to the tensor-core kernel (Q and P rounded to f16 / bf16; the f32
     * kernel is issue-bound at ~1 TB/s on big batches); the exact f32 kernel keeps the fused
     * small steps, whose batch-1 results are compared tightly with the CPU twin. */
    if (st->n_dec) {
        if (!fused_path(b, st->kb.n_tokens))
            K_TRY(kiln_cuda_attention_decode_tc(
                s->q, st->kb, st->dec_list, st->n_dec, st->dec_max_q, L->kv, c->n_heads,
                st->n_splits, st->split_len, s->part, L->o.in_scale, s->x8, s->stream));
        else
            K_TRY(kiln_cuda_attention_decode(s->q, st->kb, st->dec_list, st->n_dec, st->dec_max_q,
                                             L->kv, c->n_heads, st->n_splits, st->split_len,
                                             s->part, L->o.in_scale, s->x8,
                                             trace_slot(s, 'a', NULL), s->stream));
        if (st->n_splits > 1)
            K_TRY(kiln_cuda_attention_combine(s->part, st->kb, st->dec_list, st->n_dec,
                                              st->dec_max_q, c->n_heads, c->head_dim, st->n_splits,
                                              L->kv.v_scale, L->o.in_scale, s->x8, s->stream));
    }
    if (st->n_pre)
        K_TRY(kiln_cuda_attention_prefill(s->q, st->kb, st->pre_list, st->n_pre, st->max_q, L->kv,
                                          c->n_heads, L->o.in_scale, s->x8, s->stream));
    return KILN_OK;
}

/* Whether the step's lm_head runs as the fused GEMV. */
static bool head_by_gemv(const struct kiln_backend *b, const struct step *st)
{
    return st->n_out <= DECODE_MAX_TOKENS && !b->opt.batch_invariant;
}

/* Final RMSNorm and lm_head for the batch's output rows: the fused GEMV (norm prologue) for up
 * to 8 rows -- so decode graphs contain no cuBLASLt call --, else RMSNorm + cuBLASLt. */
static enum kiln_status lm_head(struct kiln_backend *b, const struct step *st,
                                struct kiln_error *err)
{
    struct cuda_state *s = b->impl;
    const struct kiln_config *c = &b->model->cfg;
    if (st->n_out == 0) return KILN_OK;
    if (head_by_gemv(b, st)) {
        struct kiln_gemv_args a = {.trace = trace_slot(s, 'h', &s->head),
                                   .w = s->head.w,
                                   .M = s->head.M,
                                   .K = s->head.K,
                                   .n = st->n_out,
                                   .bf16 = !s->head.fp8,
                                   .x = s->x,
                                   .x_rows = st->out_rows,
                                   .norm_w = s->final_norm,
                                   .eps = c->rms_norm_eps,
                                   .in_scale = s->head.in_scale,
                                   .out_scale = s->head.out_scale,
                                   .epilogue = KILN_EPI_STORE,
                                   .y = s->logits,
                                   .ldy = s->head.M};
        K_TRY(kiln_cuda_gemv(&a, s->stream));
        mark(s, P_HEAD);
        return KILN_OK;
    }
    /* the lm_head input (n_out, d) goes to x8's bytes: FP8 codes, or bf16 (2 bytes each) */
    K_TRY(kiln_cuda_rmsnorm_quant(s->x, st->out_rows, s->final_norm, c->rms_norm_eps, st->n_out,
                                  c->hidden_size, s->head.in_scale, s->head.fp8 ? s->x8 : NULL,
                                  s->head.fp8 ? NULL : (uint16_t *)s->x8, s->stream));
    enum kiln_status e = lt_gemm(s, &s->head, s->x8, st->n_out, s->logits, s->head.M, false, err);
    if (e) return e;
    mark(s, P_HEAD);
    return KILN_OK;
}

/* Sets a's L2 prefetch of `count` stages of the next GEMV `next`, from stage `first` of each of
 * its blocks' streams (or KILN_PF_PAST_RING). */
static void l2_next(struct kiln_gemv_args *a, const struct cuda_linear *next, int first, int count)
{
    if (count <= 0) return;
    a->pf_w = next->w;
    a->pf_M = next->M;
    a->pf_K = next->K;
    a->pf_bf16 = !next->fp8;
    a->pf_first = first;
    a->pf_count = count;
}

/* n_tokens <= 8: fused skinny-GEMM path (graph-capturable: no host sync, no cuBLASLt). */
static enum kiln_status forward_decode(struct kiln_backend *b, const struct step *st,
                                       struct kiln_error *err)
{
    struct cuda_state *s = b->impl;
    const struct kiln_config *c = &b->model->cfg;
    int n = st->kb.n_tokens, d = c->hidden_size;
    s->trace.n = 0;
    K_TRY(kiln_cuda_embed(s->embed, st->kb.tokens, n, d, s->x, s->stream));
    mark(s, P_EMBED);
    for (int l = 0; l < layers_to_run(b); l++) {
        const struct cuda_layer *L = &s->layers[l];
        struct kiln_gemv_args a = {.trace = trace_slot(s, 'q', &L->qkv),
                                   .w = L->qkv.w,
                                   .M = L->qkv.M,
                                   .K = L->qkv.K,
                                   .n = n,
                                   .x = s->x,
                                   .norm_w = L->attn_norm,
                                   .eps = c->rms_norm_eps,
                                   .in_scale = L->qkv.in_scale,
                                   .out_scale = L->qkv.out_scale,
                                   .epilogue = KILN_EPI_ROPE_KV,
                                   .rope = s->rope,
                                   .batch = st->kb,
                                   .kv = L->kv,
                                   .n_heads = c->n_heads,
                                   .q = s->q};
        K_TRY(kiln_cuda_gemv(&a, s->stream));
        mark(s, P_QKV);
        enum kiln_status e = attention(b, st, L, err);
        if (e) return e;
        mark(s, P_ATTN);
        a = (struct kiln_gemv_args){.trace = trace_slot(s, 'o', &L->o),
                                    .w = L->o.w,
                                    .M = L->o.M,
                                    .K = L->o.K,
                                    .n = n,
                                    .xq = s->x8,
                                    .out_scale = L->o.out_scale,
                                    .epilogue = KILN_EPI_RESIDUAL,
                                    .y = s->x,
                                    .ldy = d};
        l2_next(&a, &L->gate_up, 0, s->l2.o_next);
        K_TRY(kiln_cuda_gemv(&a, s->stream));
        mark(s, P_O);
        a = (struct kiln_gemv_args){.trace = trace_slot(s, 'g', &L->gate_up),
                                    .w = L->gate_up.w,
                                    .M = L->gate_up.M,
                                    .K = L->gate_up.K,
                                    .n = n,
                                    .x = s->x,
                                    .norm_w = L->mlp_norm,
                                    .eps = c->rms_norm_eps,
                                    .in_scale = L->gate_up.in_scale,
                                    .out_scale = L->gate_up.out_scale,
                                    .epilogue = KILN_EPI_SWIGLU,
                                    .h8 = s->x8,
                                    .h_scale = L->down.in_scale};
        l2_next(&a, &L->down, 0, s->l2.gu_next);
        K_TRY(kiln_cuda_gemv(&a, s->stream));
        mark(s, P_GATE_UP);
        a = (struct kiln_gemv_args){.trace = trace_slot(s, 'd', &L->down),
                                    .w = L->down.w,
                                    .M = L->down.M,
                                    .K = L->down.K,
                                    .n = n,
                                    .xq = s->x8,
                                    .out_scale = L->down.out_scale,
                                    .epilogue = KILN_EPI_RESIDUAL,
                                    .y = s->x,
                                    .ldy = d};
        /* past the ring the next kernel fills before its wait */
        if (l + 1 < layers_to_run(b))
            l2_next(&a, &s->layers[l + 1].qkv, KILN_PF_PAST_RING, s->l2.down_next);
        else if (st->n_out && head_by_gemv(b, st))
            l2_next(&a, &s->head, KILN_PF_PAST_RING, s->l2.down_next);
        K_TRY(kiln_cuda_gemv(&a, s->stream));
        mark(s, P_DOWN);
    }
    return lm_head(b, st, err);
}

static enum kiln_status forward_prefill(struct kiln_backend *b, const struct step *st,
                                        struct kiln_error *err)
{
    struct cuda_state *s = b->impl;
    const struct kiln_config *c = &b->model->cfg;
    int n = st->kb.n_tokens, d = c->hidden_size, f = c->intermediate_size;
    enum kiln_status e;
    K_TRY(kiln_cuda_embed(s->embed, st->kb.tokens, n, d, s->x, s->stream));
    mark(s, P_EMBED);
    for (int l = 0; l < layers_to_run(b); l++) {
        const struct cuda_layer *L = &s->layers[l];
        K_TRY(kiln_cuda_rmsnorm_quant(s->x, NULL, L->attn_norm, c->rms_norm_eps, n, d,
                                      L->qkv.in_scale, s->x8, NULL, s->stream));
        mark(s, P_NORM);
        if ((e = lt_gemm(s, &L->qkv, s->x8, n, s->big, L->qkv.M, false, err))) return e;
        mark(s, P_QKV);
        K_TRY(kiln_cuda_rope_kv((const uint16_t *)s->big, s->rope, st->kb, L->kv, c->n_heads, s->q,
                                s->stream));
        mark(s, P_ROPE);
        if ((e = attention(b, st, L, err))) return e;
        mark(s, P_ATTN);
        if ((e = lt_gemm(s, &L->o, s->x8, n, s->x, d, true, err))) return e;
        mark(s, P_O);
        K_TRY(kiln_cuda_rmsnorm_quant(s->x, NULL, L->mlp_norm, c->rms_norm_eps, n, d,
                                      L->gate_up.in_scale, s->x8, NULL, s->stream));
        mark(s, P_NORM);
        if ((e = lt_gemm(s, &L->gate_up, s->x8, n, s->big, L->gate_up.M, false, err))) return e;
        mark(s, P_GATE_UP);
        K_TRY(kiln_cuda_swiglu_quant((const uint16_t *)s->big, n, f, L->down.in_scale, s->x8,
                                     s->stream));
        mark(s, P_SWIGLU);
        if ((e = lt_gemm(s, &L->down, s->x8, n, s->x, d, true, err))) return e;
        mark(s, P_DOWN);
    }
    return lm_head(b, st, err);
}

static enum kiln_status cuda_forward(struct kiln_backend *b, const struct kiln_batch *bt,
                                     struct kiln_error *err)
{
    struct cuda_state *s = b->impl;
    enum kiln_status e = kiln_batch_check(b, bt, err);
    if (e) return e;
    struct step st;
    if ((e = upload_batch(b, bt, &st, err))) return e;
    s->n_out = st.n_out;
    int n = bt->n_tokens;
    if (s->prof.on) {
        s->prof.n = 0;
        CUDA_TRY(cudaEventRecord(s->prof.ev[0], s->stream));
        e = fused_path(b, n) ? forward_decode(b, &st, err) : forward_prefill(b, &st, err);
        if (e) return e;
        CUDA_TRY(cudaStreamSynchronize(s->stream));
        for (int i = 0; i < s->prof.n; i++) {
            float ms = 0;
            CUDA_TRY(cudaEventElapsedTime(&ms, s->prof.ev[i], s->prof.ev[i + 1]));
            s->prof.ms[s->prof.cat[i]] += ms;
        }
        s->prof.steps++;
        return KILN_OK;
    }
    bool pure_decode = st.n_dec == n && st.n_out == n && fused_path(b, n);
    if (pure_decode && b->opt.cuda_graphs) {
        struct graph_entry *g = &s->graphs[n][st.split_bucket];
        if (!g->ready) {
            /* first time at this size: run eagerly (sets kernel attributes, warms up), then
             * capture the same launches */
            if ((e = forward_decode(b, &st, err))) return e;
            cudaGraph_t graph;
            CUDA_TRY(cudaStreamBeginCapture(s->stream, cudaStreamCaptureModeThreadLocal));
            e = forward_decode(b, &st, err);
            cudaError_t ce = cudaStreamEndCapture(s->stream, &graph);
            if (e) return e;
            if (ce)
                return kiln_errorf(err, KILN_ERR_CUDA, "graph capture: %s", cudaGetErrorString(ce));
            ce = cudaGraphInstantiate(&g->exec, graph, 0);
            cudaGraphDestroy(graph);
            if (ce)
                return kiln_errorf(err, KILN_ERR_CUDA, "graph instantiate: %s",
                                   cudaGetErrorString(ce));
            g->ready = true;
            return KILN_OK; /* the eager run already computed this step */
        }
        CUDA_TRY(cudaGraphLaunch(g->exec, s->stream));
        return s->trace.d ? trace_report(s, err) : KILN_OK;
    }
    if (fused_path(b, n)) return forward_decode(b, &st, err);
    return forward_prefill(b, &st, err);
}

static enum kiln_status cuda_read_logits(struct kiln_backend *b, float *dst, struct kiln_error *err)
{
    struct cuda_state *s = b->impl;
    size_t bytes = (size_t)s->n_out * b->model->cfg.vocab_size * sizeof(float);
    CUDA_TRY(cudaMemcpyAsync(dst, s->logits, bytes, cudaMemcpyDeviceToHost, s->stream));
    CUDA_TRY(cudaStreamSynchronize(s->stream));
    return KILN_OK;
}

/* Every row is sampled on the GPU (sample.cu): one copy of the packed parameters in, one
 * launch, one copy of the results out. */
static enum kiln_status cuda_sample(struct kiln_backend *b, const struct kiln_sampling *params,
                                    int n, struct kiln_sample_out *out, struct kiln_error *err)
{
    struct cuda_state *s = b->impl;
    int vocab = b->model->cfg.vocab_size;
    if (n != s->n_out)
        return kiln_errorf(err, KILN_ERR_INTERNAL, "sample: %d rows asked, %d computed", n,
                           s->n_out);
    if (n == 0) return KILN_OK;
    size_t bytes = kiln_cuda_sample_args_bytes(params, n, vocab);
    if (bytes > s->sample_cap) {
        /* lists longer than the plan holds (a history beyond max_seq_len, more than 1024 biases
         * or 256 banned ids in one row, allowed-token masks of structured output): grow both
         * buffers; the last step synchronized, so nothing in flight uses them */
        if (bytes > (size_t)INT32_MAX)
            return kiln_errorf(err, KILN_ERR_LIMIT,
                               "sample: the rows' penalty, bias, banned and mask lists take %zu "
                               "bytes "
                               "(at most 2 GiB)",
                               bytes);
        size_t cap = bytes > s->sample_cap * 2 ? bytes : s->sample_cap * 2;
        if (cap > (size_t)INT32_MAX) cap = bytes;
        KILN_INFO("cuda sampler: argument buffer grown to %zu bytes", cap);
        cudaFreeHost(s->h_sample_args);
        cudaFree(s->d_sample_args);
        s->h_sample_args = s->d_sample_args = NULL;
        s->sample_cap = 0;
        CUDA_TRY(cudaMallocHost(&s->h_sample_args, cap));
        CUDA_TRY(cudaMalloc(&s->d_sample_args, cap));
        s->sample_cap = cap;
    }
    kiln_cuda_sample_pack(params, n, vocab, s->h_sample_args);
    CUDA_TRY(cudaMemcpyAsync(s->d_sample_args, s->h_sample_args, bytes, cudaMemcpyHostToDevice,
                             s->stream));
    /* KILN_SAMPLE_SPLIT=0 (a measurement knob): one block reads each row */
    static int split = -1;
    if (split < 0) split = !getenv("KILN_SAMPLE_SPLIT") || atoi(getenv("KILN_SAMPLE_SPLIT")) != 0;
    K_TRY(kiln_cuda_sample(s->logits, n, vocab, s->d_sample_args, split ? s->d_sample_parts : NULL,
                           s->d_sample_out, s->stream));
    CUDA_TRY(cudaMemcpyAsync(s->h_sample_out, s->d_sample_out, (size_t)n * sizeof *s->h_sample_out,
                             cudaMemcpyDeviceToHost, s->stream));
    CUDA_TRY(cudaStreamSynchronize(s->stream));
    memcpy(out, s->h_sample_out, (size_t)n * sizeof *out); /* same layout (sample_pack.c) */
    return KILN_OK;
}

static void cuda_report(struct kiln_backend *b, char *buf, size_t cap)
{
    struct cuda_state *s = b->impl;
    double total = 0;
    for (int c = 0; c < P_COUNT; c++) total += s->prof.ms[c];
    size_t used = 0;
    if (cap) buf[0] = 0;
    for (int c = 0; c < P_COUNT && used < cap; c++) {
        if (s->prof.ms[c] == 0) continue;
        int w = snprintf(buf + used, cap - used, "  %-14s %9.3f ms/step  %5.1f%%\n", prof_names[c],
                         s->prof.steps ? s->prof.ms[c] / s->prof.steps : 0.0,
                         total > 0 ? 100 * s->prof.ms[c] / total : 0.0);
        if (w < 0) break;
        used += (size_t)w;
    }
    memset(s->prof.ms, 0, sizeof s->prof.ms);
    s->prof.steps = 0;
}

static void cuda_free(struct kiln_backend *b)
{
    if (!b) return;
    struct cuda_state *s = b->impl;
    if (s) {
        for (int i = 0; i <= DECODE_MAX_TOKENS; i++)
            for (int j = 0; j < SPLIT_BUCKETS; j++)
                if (s->graphs[i][j].ready) cudaGraphExecDestroy(s->graphs[i][j].exec);
        if (s->prof.on)
            for (int i = 0; i <= PROF_MAX; i++) cudaEventDestroy(s->prof.ev[i]);
        if (s->layers) {
            for (int l = 0; l < b->model->cfg.n_layers; l++) {
                struct cuda_layer *L = &s->layers[l];
                cudaFree(L->attn_norm);
                cudaFree(L->mlp_norm);
                cudaFree(L->qkv.w);
                cudaFree(L->o.w);
                cudaFree(L->gate_up.w);
                cudaFree(L->down.w);
            }
            free(s->layers);
        }
        cudaFree(s->trace.d);
        cudaFreeHost(s->trace.h);
        cudaFree(s->kv_pool);
        cudaFree(s->embed);
        cudaFree(s->final_norm);
        cudaFree(s->head.w);
        cudaFree(s->rope);
        cudaFree(s->x);
        cudaFree(s->big);
        cudaFree(s->q);
        cudaFree(s->logits);
        cudaFree(s->part);
        cudaFree(s->x8);
        cudaFree(s->d_meta);
        cudaFree(s->d_sample_args);
        cudaFree(s->d_sample_out);
        cudaFree(s->d_sample_parts);
        cudaFreeHost(s->h_meta);
        cudaFreeHost(s->h_sample_args);
        cudaFreeHost(s->h_sample_out);
        for (int i = 0; i < ALGO_CACHE; i++) algo_entry_clear(&s->algos[i]);
        cudaFree(s->lt_ws);
        if (s->lt) cublasLtDestroy(s->lt);
        if (s->meta_copied) cudaEventDestroy(s->meta_copied);
        if (s->stream) cudaStreamDestroy(s->stream);
        free(s);
    }
    free(b);
}

static const struct kiln_backend_ops cuda_ops = {
    .name = "cuda",
    .forward = cuda_forward,
    .read_logits = cuda_read_logits,
    .sample = cuda_sample,
    .free = cuda_free,
    .report = cuda_report,
};

bool kiln_cuda_available(void)
{
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

static enum kiln_status check_model(const struct kiln_model *m, struct kiln_error *err)
{
    const struct kiln_config *c = &m->cfg;
    if (c->head_dim != 64 && c->head_dim != 128)
        return kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                           "cuda backend: head_dim %d (supported: 64, 128)", c->head_dim);
    if (c->hidden_size % 64 || c->intermediate_size % 64)
        return kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                           "cuda backend: hidden_size and intermediate_size must be multiples "
                           "of 64 (got %d, %d)",
                           c->hidden_size, c->intermediate_size);
    for (int l = 0; l < c->n_layers; l++) {
        const struct kiln_layer_weights *w = &m->layers[l];
        if (!w->qkv.fp8 || !w->o.fp8 || !w->gate_up.fp8 || !w->down.fp8)
            return kiln_errorf(err, KILN_ERR_UNSUPPORTED,
                               "cuda backend: layer %d has unquantized linears; the CUDA backend "
                               "runs FP8 checkpoints (ModelOpt FP8)",
                               l);
    }
    if (!m->lm_head.fp8 && m->lm_head.part[0].dtype != KILN_DTYPE_BF16)
        return kiln_errorf(err, KILN_ERR_UNSUPPORTED, "cuda backend: lm_head must be BF16 or FP8");
    return KILN_OK;
}

/* A count from the environment (0 to 64), or dflt when unset or not such a number. */
static int env_count(const char *name, int dflt)
{
    const char *e = getenv(name);
    char *end;
    long v = e ? strtol(e, &end, 10) : -1;
    return e && *e && !*end && v >= 0 && v <= 64 ? (int)v : dflt;
}

static enum kiln_status create(struct kiln_backend *b, const struct kiln_backend_options *opt,
                               struct kiln_error *err)
{
    struct cuda_state *s = b->impl;
    const struct kiln_model *m = b->model;
    const struct kiln_config *c = &m->cfg;
    CUDA_TRY(cudaSetDevice(opt->device));
    CUDA_TRY(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
    CUDA_TRY(cudaEventCreateWithFlags(&s->meta_copied, cudaEventDisableTiming));
    CUDA_TRY(cudaEventRecord(s->meta_copied, s->stream));
    if (opt->profile) {
        for (int i = 0; i <= PROF_MAX; i++) CUDA_TRY(cudaEventCreate(&s->prof.ev[i]));
        s->prof.on = true;
    }
    s->l2 = (struct l2_policy){.o_next = env_count("KILN_L2_O", 2),
                               .gu_next = env_count("KILN_L2_GU", 0),
                               .down_next = env_count("KILN_L2_DOWN", 0)};
    const char *tr = getenv("KILN_TRACE");
    if (tr && strcmp(tr, "1") == 0) {
        size_t bytes =
            (size_t)TRACE_KERNELS * TRACE_BLOCKS * TRACE_SLOTS * sizeof(unsigned long long);
        CUDA_TRY(cudaMalloc((void **)&s->trace.d, bytes));
        CUDA_TRY(cudaMemset(s->trace.d, 0, bytes));
        CUDA_TRY(cudaMallocHost((void **)&s->trace.h, bytes));
    }
    LT_TRY(cublasLtCreate(&s->lt));
    s->batch_invariant = opt->batch_invariant;
    s->max_tokens = opt->max_tokens;
    CUDA_TRY(cudaDeviceGetAttribute(&s->sms, cudaDevAttrMultiProcessorCount, opt->device));
    CUDA_TRY(cudaMalloc(&s->lt_ws, LT_WORKSPACE));
    /* every size below comes from the plan kiln build prints and checks */
    struct kiln_cuda_plan p;
    kiln_cuda_plan(m, opt, &p);
    if (m->engine && m->engine->n_gemms) {
        if (m->engine->cublaslt_version == (int)cublasLtGetVersion())
            s->tuned = m->engine;
        else
            KILN_WARN("engine GEMM algorithms were timed with cuBLASLt %d, this is %d: using "
                      "cuBLASLt's heuristic (rebuild the engine to time them here)",
                      m->engine->cublaslt_version, (int)cublasLtGetVersion());
    }

    /* weights, through a pinned staging buffer filled by all cores */
    struct kiln_pool *pool = kiln_pool_create(0);
    size_t stage_bytes = 64u << 20;
    uint8_t *stage = NULL;
    if (!pool) return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    cudaError_t ce = cudaMallocHost((void **)&stage, stage_bytes);
    if (ce) {
        kiln_pool_free(pool);
        return kiln_errorf(err, KILN_ERR_CUDA, "cudaMallocHost: %s", cudaGetErrorString(ce));
    }
    enum kiln_status e = KILN_OK;
    s->layers = calloc((size_t)c->n_layers, sizeof *s->layers);
    if (!s->layers) e = kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    for (int l = 0; !e && l < c->n_layers; l++) {
        const struct kiln_layer_weights *w = &m->layers[l];
        struct cuda_layer *L = &s->layers[l];
        if (!e) e = upload_bf16(s, &w->attn_norm, "input_layernorm", &L->attn_norm, err);
        if (!e) e = upload_bf16(s, &w->mlp_norm, "post_attention_layernorm", &L->mlp_norm, err);
        if (!e)
            e = upload_linear(s, pool, &w->qkv, KILN_ROWS_QKV_PAIRED, c->head_dim, 0, stage,
                              stage_bytes, &L->qkv, err);
        if (!e)
            e = upload_linear(s, pool, &w->o, KILN_ROWS_PLAIN, 0, 0, stage, stage_bytes, &L->o,
                              err);
        if (!e)
            e = upload_linear(s, pool, &w->gate_up, KILN_ROWS_GU_INTERLEAVED, 0,
                              c->intermediate_size, stage, stage_bytes, &L->gate_up, err);
        if (!e)
            e = upload_linear(s, pool, &w->down, KILN_ROWS_PLAIN, 0, 0, stage, stage_bytes,
                              &L->down, err);
    }
    if (!e) e = upload_bf16(s, &m->embed, "model.embed_tokens.weight", &s->embed, err);
    if (!e) e = upload_bf16(s, &m->norm, "model.norm.weight", &s->final_norm, err);
    if (!e)
        e = upload_linear(s, pool, &m->lm_head, KILN_ROWS_PLAIN, 0, 0, stage, stage_bytes, &s->head,
                          err);
    cudaFreeHost(stage);
    kiln_pool_free(pool);
    if (e) return e;
    KILN_ASSERT(s->weight_bytes == p.weights);
#ifdef KILN_CUDA_FAULTS
    const char *fs = fault_arg("scale");
    for (int l = 0; fs && l < c->n_layers; l++) s->layers[l].down.out_scale *= (float)atof(fs);
#endif

    /* RoPE table, computed on the host exactly as the CPU backend does */
    size_t rope_floats = (size_t)opt->max_seq_len * c->head_dim;
    KILN_ASSERT(p.rope == rope_floats * sizeof(float));
    float *rope = malloc(rope_floats * sizeof(float));
    if (!rope) return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    kiln_rope_table(c, opt->max_seq_len, rope);
#ifdef KILN_CUDA_FAULTS
    const char *fr = fault_arg("rope");
    if (fr && atoi(fr) >= 0 && atoi(fr) + 1 < opt->max_seq_len)
        memcpy(rope + (size_t)atoi(fr) * c->head_dim, rope + (size_t)(atoi(fr) + 1) * c->head_dim,
               (size_t)c->head_dim * sizeof(float));
#endif
    ce = cudaMalloc((void **)&s->rope, p.rope);
    if (!ce) ce = cudaMemcpy(s->rope, rope, p.rope, cudaMemcpyHostToDevice);
    free(rope);
    if (ce) return kiln_errorf(err, KILN_ERR_CUDA, "rope table: %s", cudaGetErrorString(ce));

    /* activations */
    int S = opt->max_seqs, kvdim = c->n_kv_heads * c->head_dim;
    s->max_blocks = p.max_blocks;
    s->max_splits = p.max_splits;
    if (s->max_splits > (1 << (SPLIT_BUCKETS - 1)))
        return kiln_errorf(err, KILN_ERR_LIMIT, "max_seq_len %d is beyond %d", opt->max_seq_len,
                           SPLIT_LEN << (SPLIT_BUCKETS - 1));
    CUDA_TRY(cudaMalloc((void **)&s->x, p.x));
    CUDA_TRY(cudaMalloc((void **)&s->big, p.big));
    CUDA_TRY(cudaMalloc((void **)&s->q, p.q));
    CUDA_TRY(cudaMalloc((void **)&s->x8, p.x8));
    CUDA_TRY(cudaMalloc((void **)&s->logits, p.logits));
    /* partials: S decode tokens, or up to 8 sequences x 8 query tokens in the fused path */
    KILN_ASSERT(p.part >= (uint64_t)kiln_cuda_attention_part_floats(p.part_rows, 1, c->n_heads,
                                                                    c->head_dim, s->max_splits) *
                              4);
    CUDA_TRY(cudaMalloc((void **)&s->part, p.part));
    s->meta_cap = p.meta_elems;
    CUDA_TRY(cudaMallocHost((void **)&s->h_meta, s->meta_cap * 4));
    CUDA_TRY(cudaMalloc((void **)&s->d_meta, p.meta));
    size_t sample_out = (size_t)S * sizeof *s->d_sample_out;
    size_t sample_parts = (size_t)S * KILN_CUDA_SAMPLE_CHUNKS * sizeof *s->d_sample_parts;
    KILN_ASSERT(p.sample == p.sample_args + sample_out + sample_parts);
    s->sample_cap = p.sample_args;
    CUDA_TRY(cudaMallocHost(&s->h_sample_args, s->sample_cap));
    CUDA_TRY(cudaMalloc(&s->d_sample_args, s->sample_cap));
    CUDA_TRY(cudaMallocHost((void **)&s->h_sample_out, sample_out));
    CUDA_TRY(cudaMalloc((void **)&s->d_sample_out, sample_out));
    CUDA_TRY(cudaMalloc((void **)&s->d_sample_parts, sample_parts));

    /* KV pool: what is asked, or a fraction of what is left */
    size_t elem = opt->kv_dtype == KILN_DTYPE_F8E4M3 ? 1 : 2;
    size_t per_block_layer = (size_t)kvdim * opt->block_size * elem; /* K or V, one layer */
    size_t per_block = p.kv_block;
    KILN_ASSERT(per_block == per_block_layer * 2 * (size_t)c->n_layers);
    struct kiln_backend_options o = *opt;
    if (o.n_blocks <= 0) {
        size_t free_b = 0, total_b = 0;
        CUDA_TRY(cudaMemGetInfo(&free_b, &total_b));
        size_t reserve = KILN_CUDA_RESERVE; /* graphs, cuBLASLt internals, fragmentation */
        size_t budget =
            free_b > reserve ? (size_t)((double)(free_b - reserve) * o.kv_memory_fraction) : 0;
        o.n_blocks = (int)(budget / per_block);
        int need = (o.max_seq_len + o.block_size - 1) / o.block_size;
        if (o.n_blocks < need)
            return kiln_errorf(err, KILN_ERR_LIMIT,
                               "cuda backend: the KV cache needs %d blocks (%.1f MiB) for one "
                               "sequence of %d tokens but only %.1f MiB are free: lower "
                               "--max-seq-len or free GPU memory",
                               need, need * (double)per_block / 1048576, o.max_seq_len,
                               (double)budget / 1048576);
    }
    CUDA_TRY(cudaMalloc(&s->kv_pool, per_block * (size_t)o.n_blocks));
    CUDA_TRY(cudaMemset(s->kv_pool, 0, per_block * (size_t)o.n_blocks));
    size_t layer_bytes = per_block_layer * (size_t)o.n_blocks;
    for (int l = 0; l < c->n_layers; l++) {
        struct kiln_cuda_kv *kv = &s->layers[l].kv;
        kv->k = (uint8_t *)s->kv_pool + layer_bytes * (size_t)(2 * l);
        kv->v = (uint8_t *)s->kv_pool + layer_bytes * (size_t)(2 * l + 1);
        kv->fp8 = opt->kv_dtype == KILN_DTYPE_F8E4M3;
        kv->k_scale = kv->fp8 ? m->layers[l].k_scale : 1.0f;
        kv->v_scale = kv->fp8 ? m->layers[l].v_scale : 1.0f;
        kv->n_kv_heads = c->n_kv_heads;
        kv->head_dim = c->head_dim;
        kv->block_size = opt->block_size;
    }
    b->kv_bytes = per_block * (size_t)o.n_blocks;
    b->opt = o;
    CUDA_TRY(cudaStreamSynchronize(s->stream));
    KILN_INFO("cuda backend: %.2f GiB of weights, KV cache %d blocks x %d tokens (%.2f GiB, %s), "
              "%s",
              (double)s->weight_bytes / (1u << 30), o.n_blocks, o.block_size,
              (double)b->kv_bytes / (1u << 30), kiln_dtype_name(opt->kv_dtype),
              kiln_cuda_hopper_code() ? "kernels for sm_90: Hopper paths on"
                                      : "kernels for sm_89: no TMA ring, no programmatic launch");
    return KILN_OK;
}

enum kiln_status kiln_backend_cuda_create(const struct kiln_model *m,
                                          const struct kiln_backend_options *opt,
                                          struct kiln_backend **out, struct kiln_error *err)
{
    *out = NULL;
    if (!kiln_cuda_available())
        return kiln_errorf(err, KILN_ERR_UNSUPPORTED, "no CUDA GPU is visible");
    enum kiln_status e = check_model(m, err);
    if (e) return e;
    if (opt->kv_dtype != KILN_DTYPE_F8E4M3 && opt->kv_dtype != KILN_DTYPE_BF16)
        return kiln_errorf(err, KILN_ERR_UNSUPPORTED, "cuda backend: KV cache dtype %s",
                           kiln_dtype_name(opt->kv_dtype));
    if (opt->max_tokens <= 0 || opt->max_seqs <= 0 || opt->max_seq_len <= 0 || opt->block_size <= 0)
        return kiln_errorf(err, KILN_ERR_INVALID, "cuda backend: limits must be positive");
    struct kiln_backend *b = calloc(1, sizeof *b);
    struct cuda_state *s = calloc(1, sizeof *s);
    if (!b || !s) {
        free(b);
        free(s);
        return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    }
    b->ops = &cuda_ops;
    b->model = m;
    b->impl = s;
    b->opt = *opt;
    e = create(b, opt, err);
    if (e) {
        cuda_free(b);
        return kiln_error_prefix(err, "cuda backend");
    }
    *out = b;
    return KILN_OK;
}

enum kiln_status kiln_cuda_memory(int device, uint64_t *used, uint64_t *total,
                                  struct kiln_error *err)
{
    size_t f = 0, t = 0;
    CUDA_TRY(cudaSetDevice(device));
    CUDA_TRY(cudaMemGetInfo(&f, &t));
    *used = t - f;
    *total = t;
    return KILN_OK;
}

/* cuBLASLt FP8 GEMM M = N = K = 8192 (TN, bf16 out) on random codes: the tensor-core ceiling. */
static enum kiln_status measure_gemm(cudaStream_t stream, double *tflops, struct kiln_error *err)
{
    const int n = 8192;
    size_t bytes = (size_t)n * n;
    uint8_t *a = NULL, *bm = NULL;
    uint16_t *d = NULL;
    void *ws = NULL;
    cublasLtHandle_t lt = NULL;
    cublasLtMatmulDesc_t desc = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, ld = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    enum kiln_status st = KILN_OK;
    uint8_t *h = malloc(bytes);
    if (!h) return kiln_errorf(err, KILN_ERR_NOMEM, "out of memory");
    uint64_t r = 1;
    for (size_t i = 0; i < bytes; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        h[i] = (uint8_t)((r >> 40) & 0x77); /* finite codes of moderate size */
    }
#define M_TRY(call)                                                                                \
    do {                                                                                           \
        int e_ = (int)(call);                                                                      \
        if (e_) {                                                                                  \
            st = kiln_errorf(err, KILN_ERR_CUDA, "%s failed (%d)", #call, e_);                     \
            goto done;                                                                             \
        }                                                                                          \
    } while (0)
    M_TRY(cudaMalloc((void **)&a, bytes));
    M_TRY(cudaMalloc((void **)&bm, bytes));
    M_TRY(cudaMalloc((void **)&d, bytes * 2));
    M_TRY(cudaMalloc(&ws, LT_WORKSPACE));
    M_TRY(cudaMemcpy(a, h, bytes, cudaMemcpyHostToDevice));
    M_TRY(cudaMemcpy(bm, h, bytes, cudaMemcpyHostToDevice));
    M_TRY(cublasLtCreate(&lt));
    M_TRY(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    M_TRY(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    M_TRY(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    M_TRY(cublasLtMatrixLayoutCreate(&la, CUDA_R_8F_E4M3, n, n, n));
    M_TRY(cublasLtMatrixLayoutCreate(&lb, CUDA_R_8F_E4M3, n, n, n));
    M_TRY(cublasLtMatrixLayoutCreate(&ld, CUDA_R_16BF, n, n, n));
    M_TRY(cublasLtMatmulPreferenceCreate(&pref));
    size_t wsz = LT_WORKSPACE;
    M_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsz,
                                               sizeof wsz));
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    M_TRY(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, ld, ld, pref, 1, &res, &found));
    if (!found) {
        st = kiln_errorf(err, KILN_ERR_CUDA, "no FP8 GEMM algorithm for the probe");
        goto done;
    }
    float alpha = 1.0f, beta = 0.0f;
    M_TRY(cudaEventCreate(&e0));
    M_TRY(cudaEventCreate(&e1));
    for (int i = 0; i < 3; i++)
        M_TRY(cublasLtMatmul(lt, desc, &alpha, a, la, bm, lb, &beta, d, ld, d, ld, &res.algo, ws,
                             LT_WORKSPACE, stream));
    M_TRY(cudaEventRecord(e0, stream));
    for (int i = 0; i < 20; i++)
        M_TRY(cublasLtMatmul(lt, desc, &alpha, a, la, bm, lb, &beta, d, ld, d, ld, &res.algo, ws,
                             LT_WORKSPACE, stream));
    M_TRY(cudaEventRecord(e1, stream));
    M_TRY(cudaEventSynchronize(e1));
    float ms = 0;
    M_TRY(cudaEventElapsedTime(&ms, e0, e1));
    *tflops = 2.0 * n * (double)n * n * 20 / (ms * 1e-3) / 1e12;
done:
#undef M_TRY
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (ld) cublasLtMatrixLayoutDestroy(ld);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (desc) cublasLtMatmulDescDestroy(desc);
    if (lt) cublasLtDestroy(lt);
    cudaFree(a);
    cudaFree(bm);
    cudaFree(d);
    cudaFree(ws);
    free(h);
    return st;
}

enum kiln_status kiln_cuda_measure_limits(int device, double *read_gbs, double *fp8_tflops,
                                          struct kiln_error *err)
{
    *read_gbs = *fp8_tflops = 0;
    CUDA_TRY(cudaSetDevice(device));
    cudaStream_t stream;
    CUDA_TRY(cudaStreamCreate(&stream));
    struct cudaDeviceProp prop;
    CUDA_TRY(cudaGetDeviceProperties(&prop, device));
    size_t bytes = (size_t)2 << 30;
    void *buf = NULL;
    unsigned *sink = NULL;
    cudaEvent_t e0, e1;
    CUDA_TRY(cudaMalloc(&buf, bytes));
    CUDA_TRY(cudaMalloc((void **)&sink, 4096 * sizeof(unsigned)));
    CUDA_TRY(cudaMemset(buf, 0x5a, bytes));
    CUDA_TRY(cudaEventCreate(&e0));
    CUDA_TRY(cudaEventCreate(&e1));
    int blocks = prop.multiProcessorCount * 4;
    K_TRY(kiln_cuda_read(buf, bytes, sink, blocks, stream));
    CUDA_TRY(cudaEventRecord(e0, stream));
    for (int i = 0; i < 10; i++) K_TRY(kiln_cuda_read(buf, bytes, sink, blocks, stream));
    CUDA_TRY(cudaEventRecord(e1, stream));
    CUDA_TRY(cudaEventSynchronize(e1));
    float ms = 0;
    CUDA_TRY(cudaEventElapsedTime(&ms, e0, e1));
    *read_gbs = (double)bytes * 10 / (ms * 1e-3) / 1e9;
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaFree(buf);
    cudaFree(sink);
    enum kiln_status st = measure_gemm(stream, fp8_tflops, err);
    cudaStreamDestroy(stream);
    return st;
}
