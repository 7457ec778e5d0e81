/* Can one GPU run a decode step's GEMMs (compute-bound) and its attention (bandwidth-bound) at
 * the same time? The measurement that decides whether overlapping two micro-batches (the GEMMs
 * of one half of the batch beside the attention of the other) is worth building for issue 16:
 * past ~85% of the no-overlap bound (bench/bounds.py), which 1.1x TensorRT-LLM needs on most
 * rows, only such overlap goes further (bench/RESULTS.md).
 *
 * For 32 layers of Llama-3.1-8B's shapes, one micro-batch of SEQS / 2 sequences each side:
 *   gemm  the four GEMMs of a layer (q|k|v, o, gate|up, down: FP8 in, the backend's cuBLASLt
 *         descriptors with bf16 out, the heuristic's first algorithm) for SEQS / 2 tokens;
 *   attn  the tensor-core decode attention (kiln_cuda_attention_decode_tc, splits of 512 and
 *         the combine) of SEQS / 2 sequences at CONTEXT over an FP8 cache;
 * timed alone, one after the other on one stream, and on two streams with no dependency between
 * them: as they are, with the GEMMs told to expect fewer SMs (CUBLASLT_MATMUL_DESC_SM_COUNT_
 * TARGET), and (argument "green") with the SMs split between two green contexts. Prints ms per
 * step and the overlap, (gemm + attn - both) / min(gemm, attn): 0 = none, 1 = the shorter one
 * hidden entirely. Weights and cache are one layer's, reused (each far larger than the L2).
 *   usage: probe_overlap [SEQS [CONTEXT [green]]]   (default 232 2200: the 128/4096 point) */
#include <cublasLt.h>
#include <cuda.h>
#include <cuda_runtime_api.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/kernels.h"
#include "backend/cuda/lt_desc.h"
#include "backend/cuda/plan.h"

#define CK(x)                                                                                      \
    do {                                                                                           \
        int e_ = (int)(x);                                                                         \
        if (e_) {                                                                                  \
            fprintf(stderr, "%s:%d: %s: %d\n", __FILE__, __LINE__, #x, e_);                        \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

enum { LAYERS = 32, H = 32, HKV = 8, DH = 128, D = 4096, F = 14336, BS = 16, SPLIT = 512 };

struct gemm {
    int M, K;
    const void *w;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
};

static cublasLtHandle_t lt;
static void *ws, *x8, *y16;
static const size_t WS = KILN_CUDA_LT_WORKSPACE;

/* D (n, M) bf16 = x (n, K) . W (M, K)^T with the backend's descriptors (lt_desc.h) and the
 * algorithm cuBLASLt's heuristic puts first for sm_target SMs (0: all) */
static void gemm_init(struct gemm *g, int M, int K, const void *w, int n, int sm_target)
{
    g->M = M, g->K = K, g->w = w;
    CK(kiln_lt_describe(M, n, K, true, true, M, &g->desc, &g->la, &g->lb, &g->lc));
    if (sm_target)
        CK(cublasLtMatmulDescSetAttribute(g->desc, CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, &sm_target,
                                          sizeof sm_target));
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    CK(kiln_lt_heuristic(lt, g->desc, g->la, g->lb, g->lc, 1, &res, &found));
    if (!found) {
        fprintf(stderr, "no cuBLASLt algorithm for M=%d N=%d K=%d\n", M, n, K);
        exit(1);
    }
    g->algo = res.algo;
}

static void gemm_free(struct gemm *g)
{
    cublasLtMatrixLayoutDestroy(g->la), cublasLtMatrixLayoutDestroy(g->lb);
    cublasLtMatrixLayoutDestroy(g->lc), cublasLtMatmulDescDestroy(g->desc);
}

static void gemm_run(const struct gemm *g, cudaStream_t st)
{
    float alpha = 1, beta = 0;
    CK(cublasLtMatmul(lt, g->desc, &alpha, g->w, g->la, x8, g->lb, &beta, y16, g->lc, y16, g->lc,
                      &g->algo, ws, WS, st));
}

/* the decode attention of one layer */
struct attn {
    struct kiln_cuda_batch b;
    struct kiln_cuda_kv kv;
    int32_t *seqs;
    float *q, *part;
    uint8_t *out;
    int n, n_splits;
};

static void *dev_copy(const void *src, size_t bytes)
{
    void *d;
    CK(cudaMalloc(&d, bytes));
    if (src) CK(cudaMemcpy(d, src, bytes, cudaMemcpyHostToDevice));
    return d;
}

static void attn_init(struct attn *a, int n, int ctx)
{
    const int max_blocks = (ctx + BS - 1) / BS;
    int32_t *tok = calloc((size_t)n, 4), *pos = malloc((size_t)n * 4), *ts = malloc((size_t)n * 4);
    int32_t *start = malloc((size_t)(n + 1) * 4), *len = malloc((size_t)n * 4);
    int32_t *table = malloc((size_t)n * max_blocks * 4), *seqs = malloc((size_t)n * 4);
    for (int s = 0; s < n; s++) {
        pos[s] = ctx - 1, ts[s] = s, start[s] = s, len[s] = ctx, seqs[s] = s;
        for (int i = 0; i < max_blocks; i++) /* sequences' blocks interleaved, as a busy pool's */
            table[(size_t)s * max_blocks + i] = i * n + s;
    }
    start[n] = n;
    a->b = (struct kiln_cuda_batch){n,
                                    n,
                                    max_blocks,
                                    dev_copy(tok, (size_t)n * 4),
                                    dev_copy(pos, (size_t)n * 4),
                                    dev_copy(ts, (size_t)n * 4),
                                    dev_copy(start, (size_t)(n + 1) * 4),
                                    dev_copy(len, (size_t)n * 4),
                                    dev_copy(table, (size_t)n * max_blocks * 4)};
    a->seqs = dev_copy(seqs, (size_t)n * 4);
    const size_t cache = (size_t)n * max_blocks * HKV * BS * DH;
    void *k = dev_copy(NULL, cache), *v = dev_copy(NULL, cache);
    CK(cudaMemset(k, 0x38, cache));
    CK(cudaMemset(v, 0x30, cache));
    a->kv = (struct kiln_cuda_kv){k, v, 1, 0.3f, 0.2f, HKV, DH, BS};
    float *q = malloc((size_t)n * H * DH * 4);
    for (size_t i = 0; i < (size_t)n * H * DH; i++) q[i] = (float)((i * 2654435761u) % 1000) / 999;
    a->q = dev_copy(q, (size_t)n * H * DH * 4);
    a->n_splits = (ctx + SPLIT - 1) / SPLIT;
    a->part = dev_copy(NULL, (size_t)kiln_cuda_attention_part_floats(n, 1, H, DH, a->n_splits) * 4);
    a->out = dev_copy(NULL, (size_t)n * H * DH);
    a->n = n;
    free(tok), free(pos), free(ts), free(start), free(len), free(table), free(seqs), free(q);
}

static void attn_run(const struct attn *a, cudaStream_t st)
{
    CK(kiln_cuda_attention_decode_tc(a->q, a->b, a->seqs, a->n, 1, a->kv, H, a->n_splits, SPLIT,
                                     a->part, 0.004f, a->out, st));
    if (a->n_splits > 1)
        CK(kiln_cuda_attention_combine(a->part, a->b, a->seqs, a->n, 1, H, DH, a->n_splits,
                                       a->kv.v_scale, 0.004f, a->out, st));
}

/* what a step launches: GEMMs on sg (if any), attention on sa (if any); one stream when equal */
static struct gemm G[4];
static struct attn A;

static void step(cudaStream_t sg, cudaStream_t sa, bool gemms, bool attention)
{
    for (int l = 0; l < LAYERS; l++) {
        if (gemms)
            for (int i = 0; i < 4; i++) gemm_run(&G[i], sg);
        if (attention) attn_run(&A, sa);
    }
}

/* ms per step, best of 5 runs of 3 steps, both streams joined */
static double timed(cudaStream_t sg, cudaStream_t sa, bool gemms, bool attention)
{
    cudaEvent_t e0, e1, j;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    CK(cudaEventCreate(&j));
    double best = 1e30;
    for (int run = -1; run < 5; run++) { /* run -1 warms up */
        CK(cudaDeviceSynchronize());
        CK(cudaEventRecord(e0, sg));
        CK(cudaStreamWaitEvent(sa, e0, 0));
        for (int i = 0; i < 3; i++) step(sg, sa, gemms, attention);
        CK(cudaEventRecord(j, sa));
        CK(cudaStreamWaitEvent(sg, j, 0));
        CK(cudaEventRecord(e1, sg));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (run >= 0 && ms / 3 < best) best = ms / 3;
    }
    cudaEventDestroy(e0), cudaEventDestroy(e1), cudaEventDestroy(j);
    return best;
}

static void gemms_init(int n, int sm_target)
{
    static void *w[4];
    static const int shape[4][2] = {{(H + 2 * HKV) * DH, D}, {D, H * DH}, {2 * F, D}, {D, F}};
    for (int i = 0; i < 4; i++) {
        const size_t bytes = (size_t)shape[i][0] * shape[i][1];
        if (!w[i]) {
            w[i] = dev_copy(NULL, bytes);
            CK(cudaMemset(w[i], 0x31, bytes));
        }
        gemm_init(&G[i], shape[i][0], shape[i][1], w[i], n, sm_target);
    }
}

static void report(const char *what, double gemm, double attn, double both)
{
    const double lo = gemm < attn ? gemm : attn;
    printf("%-44s %8.3f ms  overlap %5.2f\n", what, both, (gemm + attn - both) / lo);
}

/* The SMs split between two green contexts (gemm_sms for the GEMMs, the rest for attention);
 * every launch goes to its context's stream with that context current. */
static void green(int sms, int gemm_sms, int n, double gemm_all, double attn_all)
{
    CUdevice dev;
    CUdevResource all, part[1], rest;
    unsigned groups = 1;
    CUdevResourceDesc dg, da;
    CUgreenCtx gg, ga;
    CUcontext cg, ca, primary;
    CUstream sg, sa;
    if (cuInit(0) || cuDeviceGet(&dev, 0) || cuCtxGetCurrent(&primary) ||
        cuDeviceGetDevResource(dev, &all, CU_DEV_RESOURCE_TYPE_SM) ||
        cuDevSmResourceSplitByCount(part, &groups, &all, &rest, 0, (unsigned)gemm_sms) ||
        cuDevResourceGenerateDesc(&dg, part, 1) || cuDevResourceGenerateDesc(&da, &rest, 1) ||
        cuGreenCtxCreate(&gg, dg, dev, CU_GREEN_CTX_DEFAULT_STREAM) ||
        cuGreenCtxCreate(&ga, da, dev, CU_GREEN_CTX_DEFAULT_STREAM) || cuCtxFromGreenCtx(&cg, gg) ||
        cuCtxFromGreenCtx(&ca, ga) || cuGreenCtxStreamCreate(&sg, gg, CU_STREAM_NON_BLOCKING, 0) ||
        cuGreenCtxStreamCreate(&sa, ga, CU_STREAM_NON_BLOCKING, 0)) {
        printf("green contexts: not available here\n");
        return;
    }
    printf("green contexts: %u SMs for the GEMMs, %u for attention (of %d)\n", part[0].sm.smCount,
           rest.sm.smCount, sms);
    for (int i = 0; i < 4; i++) gemm_free(&G[i]);
    gemms_init(n, (int)part[0].sm.smCount);
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    double best = 1e30;
    for (int run = -1; run < 5; run++) {
        CK(cudaDeviceSynchronize());
        CK(cudaEventRecord(e0, 0));
        for (int i = 0; i < 3; i++)
            for (int l = 0; l < LAYERS; l++) {
                CK(cuCtxSetCurrent(cg));
                for (int k = 0; k < 4; k++) gemm_run(&G[k], (cudaStream_t)sg);
                CK(cuCtxSetCurrent(ca));
                attn_run(&A, (cudaStream_t)sa);
            }
        CK(cuCtxSetCurrent(primary));
        CK(cudaStreamSynchronize((cudaStream_t)sg));
        CK(cudaStreamSynchronize((cudaStream_t)sa));
        CK(cudaEventRecord(e1, 0));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (run >= 0 && ms / 3 < best) best = ms / 3;
    }
    char what[64];
    snprintf(what, sizeof what, "both, green contexts %u + %u SMs", part[0].sm.smCount,
             rest.sm.smCount);
    report(what, gemm_all, attn_all, best);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    int seqs = argc > 1 ? atoi(argv[1]) : 232, ctx = argc > 2 ? atoi(argv[2]) : 2200;
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        printf("no CUDA GPU: skipped\n");
        return 77;
    }
    if (seqs < 2 || ctx < 1) {
        fprintf(stderr, "usage: probe_overlap [SEQS [CONTEXT [green]]]\n");
        return 2;
    }
    int sms = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    const int n = seqs / 2;
    CK(cublasLtCreate(&lt));
    ws = dev_copy(NULL, WS);
    x8 = dev_copy(NULL, (size_t)n * F);
    y16 = dev_copy(NULL, (size_t)n * 2 * F * 2);
    CK(cudaMemset(x8, 0x30, (size_t)n * F));
    attn_init(&A, n, ctx);
    cudaStream_t s1, s2;
    CK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
    CK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
    printf("%d SMs; a micro-batch: %d tokens through the GEMMs, %d sequences at context %d "
           "through attention; %d layers\n",
           sms, n, n, ctx, LAYERS);

    gemms_init(n, 0);
    const double g = timed(s1, s1, true, false), a = timed(s1, s1, false, true);
    const double flops =
        2.0 * n * LAYERS *
        ((double)(H + 2 * HKV) * DH * D + (double)D * H * DH + 2.0 * F * D + (double)D * F);
    const double kv = (double)n * ctx * HKV * DH * 2 * LAYERS;
    printf("%-44s %8.3f ms  (%.0f TFLOP/s)\n", "gemm alone", g, flops / (g * 1e-3) / 1e12);
    printf("%-44s %8.3f ms  (%.0f GB/s of KV)\n", "attn alone", a, kv / (a * 1e-3) / 1e9);
    report("both, one stream", g, a, timed(s1, s1, true, true));
    report("both, two streams", g, a, timed(s1, s2, true, true));
    for (int k = 0; k < 4; k++) gemm_free(&G[k]);
    static const int targets[] = {112, 96, 80, 66};
    for (int t = 0; t < 4; t++) {
        const int target = targets[t] * sms / 132;
        gemms_init(n, target);
        const double gt = timed(s1, s1, true, false);
        char what[64];
        snprintf(what, sizeof what, "both, two streams, GEMMs for %d SMs", target);
        printf("%-44s %8.3f ms  (alone)\n", "  gemm for fewer SMs", gt);
        report(what, g, a, timed(s1, s2, true, true));
        for (int k = 0; k < 4; k++) gemm_free(&G[k]);
    }
    if (argc > 3 && !strcmp(argv[3], "green")) {
        gemms_init(n, 0);
        for (int gs = 96; gs >= 64; gs -= 32) green(sms, gs * sms / 132, n, g, a);
    }
    return 0;
}
